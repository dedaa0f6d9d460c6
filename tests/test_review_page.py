"""The review server and page (``noisytag review``): the API on the tiny run, the page driven by the
keyboard in headless Chromium, and a decision that survives a SIGKILL of the server."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import headless_chromium
from fastapi.testclient import TestClient
from PIL import Image

from noisytag.review.app import create_review_app
from noisytag.review.events import EventLog
from noisytag.review.queue import ReviewQueue
from noisytag.serve.app import running

ROOT = Path(__file__).resolve().parent.parent


def one_sentence(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail
    return detail


def events_of(run: Path) -> list[dict]:
    path = run / "review" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture()
def review(run_copy):
    """(run, queue, client, token) of a fresh review of a private copy of the tiny run."""
    queue = ReviewQueue.from_run(run_copy)
    app = create_review_app(queue, EventLog(run_copy / "review" / "events.jsonl"), "ann", write_files=False)
    client = TestClient(app)
    token = client.get("/api/session").json()["token"]
    return run_copy, queue, client, {"X-Review-Token": token}


def test_session_queue_and_card(review):
    run, queue, client, _ = review
    session = client.get("/api/session").json()
    assert session["reviewer"] == "ann" and session["classes"] == queue.classes and len(session["token"]) > 20
    body = client.get("/api/queue").json()
    assert body["ids"] == queue.order("suspect") and body["start"] == 0
    assert sorted(client.get("/api/queue", params={"mode": "random"}).json()["ids"]) == list(
        range(len(queue))
    )
    label = queue.classes[0]
    assert client.get("/api/queue", params={"mode": "class", "label": label}).json()["ids"] == queue.order(
        "class", label=label
    )
    card = client.get(f"/api/card/{body['ids'][0]}").json()
    expected = queue.card(body["ids"][0])
    assert card["fname"] == expected.fname and card["given"] == list(expected.given)
    assert card["suggested"] == list(expected.suggested) and card["decision"] is None
    assert card["audio"] == f"api/audio/{expected.clip_id}" and "path" not in card
    assert client.get("/api/progress").json()["total"] == len(queue)


def test_refusals_are_one_line(review):
    run, queue, client, token = review
    cases = [
        (client.get(f"/api/card/{len(queue) + 5}"), 404),
        (client.get("/api/card/nine"), 422),
        (client.get(f"/api/audio/{len(queue)}"), 404),
        (client.get("/api/picture/-1.png"), 404),
        (client.get(f"/api/timeline/{len(queue)}.png"), 404),
        (client.get("/api/example/NoSuchClass"), 422),
        (client.get("/api/queue", params={"mode": "loudest"}), 422),
        (client.get("/api/queue", params={"mode": "class", "label": "NoSuchClass"}), 422),
        (client.get("/api/queue", params={"mode": "pair", "pair": "onlyone"}), 422),
        (client.post("/api/decision", json={"clip_id": 0, "action": "accept_given"}), 403),
        (
            client.post(
                "/api/decision",
                json={"clip_id": 0, "action": "accept_given"},
                headers={"X-Review-Token": "old"},
            ),
            403,
        ),
        (client.post("/api/undo"), 403),
        (client.post("/api/decision", json={"clip_id": 10**6, "action": "drop"}, headers=token), 404),
        (client.post("/api/decision", json={"clip_id": 0, "action": "burn"}, headers=token), 422),
        (
            client.post(
                "/api/decision", json={"clip_id": 0, "action": "set", "labels": ["Nope"]}, headers=token
            ),
            422,
        ),
        (
            client.post("/api/decision", json={"clip_id": 0, "action": "set", "labels": []}, headers=token),
            422,
        ),
        (
            client.post("/api/decision", json={"clip_id": 0, "action": "drop", "seconds": -1}, headers=token),
            422,
        ),
        (client.post("/api/undo", headers=token), 409),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        one_sentence(response)
    assert "NoSuchClass" in client.get("/api/example/NoSuchClass").json()["detail"]
    assert events_of(run) == []  # nothing refused was written


def test_decisions_append_events_and_undo(review):
    run, queue, client, token = review
    ids = client.get("/api/queue").json()["ids"]
    cards = [queue.card(i) for i in ids[:4]]
    extra = next(c for c in queue.classes if c not in cards[2].given)
    posts = [
        {"clip_id": ids[0], "action": "accept_given", "seconds": 2.5, "mode": "suspect", "rank": 0},
        {"clip_id": ids[1], "action": "accept_models", "seconds": 1.0, "mode": "suspect", "rank": 1},
        {
            "clip_id": ids[2],
            "action": "set",
            "labels": [extra, *cards[2].given],
            "mode": "suspect",
            "rank": 2,
        },
        {"clip_id": ids[3], "action": "drop", "mode": "suspect", "rank": 3},
    ]
    for body in posts:
        response = client.post("/api/decision", json=body, headers=token)
        assert response.status_code == 200, response.text
        assert len(events_of(run)) == posts.index(body) + 1  # written before the answer
    events = events_of(run)
    assert [e["clip"] for e in events] == [c.fname for c in cards]
    assert [e["action"] for e in events] == ["accept_given", "accept_models", "set", "drop"]
    assert events[0]["after"] == list(cards[0].given) and events[1]["after"] == list(cards[1].suggested)
    assert events[2]["after"] == [c for c in queue.classes if c in {extra, *cards[2].given}]
    assert events[3]["after"] is None
    for event, card in zip(events, cards, strict=True):
        assert event["before"] == list(card.given) and event["suggested"] == list(card.suggested)
        assert event["scores"] == card.scores and event["reviewer"] == "ann" and event["time"]
    assert events[0]["seconds"] == 2.5 and events[2]["rank"] == 2
    assert client.get("/api/queue").json()["start"] == 4
    assert client.get(f"/api/card/{ids[1]}").json()["decision"]["action"] == "accept_models"
    undone = client.post("/api/undo", headers=token).json()["event"]
    assert undone["action"] == "undo" and undone["clip_id"] == ids[3] and undone["undoes"] == 3
    assert events_of(run)[-1]["action"] == "undo" and len(events_of(run)) == 5
    assert client.get("/api/queue").json()["start"] == 3  # resumes at the undone card
    progress = client.get("/api/progress").json()
    assert progress["decided"] == 3 and progress["mine"] == 3


def test_a_second_reviewer_with_no_clip_in_common_is_answered(review):
    """Agreement over no shared clip has no share (None, not NaN, which JSON cannot carry)."""
    run, queue, client, token = review
    ids = queue.order("suspect")
    assert (
        client.post("/api/decision", json={"clip_id": ids[0], "action": "drop"}, headers=token).status_code
        == 200
    )
    bob = TestClient(
        create_review_app(queue, EventLog(run / "review" / "events.jsonl"), "bob", write_files=False)
    )
    bob_token = {"X-Review-Token": bob.get("/api/session").json()["token"]}
    answer = bob.post("/api/decision", json={"clip_id": ids[1], "action": "drop"}, headers=bob_token)
    assert answer.status_code == 200, answer.text
    progress = bob.get("/api/progress")
    assert progress.status_code == 200
    assert progress.json()["agreement"]["ann|bob"] == {
        "reviewers": ["ann", "bob"],
        "n": 0,
        "agree": 0,
        "share": None,
    }


def test_audio_answers_range_requests(review):
    run, queue, client, _ = review
    path = queue.audio_path(0)
    data = path.read_bytes()
    whole = client.get("/api/audio/0")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"].startswith("audio/") and whole.headers["accept-ranges"] == "bytes"
    part = client.get("/api/audio/0", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    label = next(c for c in queue.classes if queue.example_path(c) is not None)
    example = client.get(f"/api/example/{label}")
    assert example.status_code == 200 and example.content == queue.example_path(label).read_bytes()


def test_pictures_are_drawn_once_and_cached(review):
    run, queue, client, _ = review
    card = client.get("/api/card/3").json()
    assert card["picture"] == "api/picture/3.png" and card["timeline"] == "api/timeline/3.png"
    assert set(card["given"]) <= set(card["timeline_rows"])
    logmel, timeline = client.get("/api/picture/3.png"), client.get("/api/timeline/3.png")
    for response in (logmel, timeline):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    cached = sorted((run / "review" / "pictures").glob("*.png"))
    assert len(cached) == 2 and {p.read_bytes() for p in cached} == {logmel.content, timeline.content}
    assert client.get("/api/picture/3.png").content == logmel.content
    with Image.open(io.BytesIO(logmel.content)) as a, Image.open(io.BytesIO(timeline.content)) as b:
        assert a.width == b.width and b.height > 16 * len(card["timeline_rows"])  # one row per label


def test_the_page_opens_with_the_default_mode(tiny_run):
    queue = ReviewQueue.from_run(tiny_run)
    log_ = EventLog(tiny_run / "review" / "events.jsonl")
    app = create_review_app(queue, log_, "ann", write_files=False, default_mode="random")
    assert TestClient(app).get("/api/session").json()["mode"] == "random"
    with pytest.raises(ValueError, match="unknown queue mode 'loud'"):
        create_review_app(queue, log_, "ann", write_files=False, default_mode="loud")
    assert not (tiny_run / "review").exists()


def test_no_timeline_without_models(run_copy):
    for done in run_copy.glob("*/stage*/fold*/done"):
        done.unlink()
    queue = ReviewQueue.from_run(run_copy)
    app = create_review_app(queue, EventLog(run_copy / "review" / "events.jsonl"), "ann", write_files=False)
    client = TestClient(app)
    assert client.get("/api/picture/0.png").status_code == 200
    assert "no usable models" in one_sentence(client.get("/api/timeline/0.png"))


def test_bulk_action_on_a_pair(review):
    run, queue, client, token = review
    pairs = client.get("/api/pairs").json()
    assert [(p["given"], p["heard"], p["count"]) for p in pairs] == queue.pairs()[:50]
    if not pairs:
        pytest.skip("the tiny run has no label pair")
    given, heard = pairs[0]["given"], pairs[0]["heard"]
    ids = client.get("/api/queue", params={"mode": "pair", "pair": f"{given}|{heard}"}).json()["ids"]
    assert ids == queue.order("pair", pair=(given, heard)) and ids
    body = client.post("/api/bulk", json={"given": given, "heard": heard}, headers=token).json()
    assert body["count"] == len(ids)
    events = events_of(run)
    assert [e["clip_id"] for e in events] == ids
    assert all(e["action"] == "accept_models" and e["mode"] == "pair" for e in events)
    assert all(e["after"] == list(queue.card(e["clip_id"]).suggested) for e in events)
    assert client.post("/api/bulk", json={"given": given, "heard": heard}, headers=token).json()["count"] == 0


def test_export_writes_the_corrections(review):
    run, queue, client, token = review
    ids = queue.order("suspect")
    client.post("/api/decision", json={"clip_id": ids[0], "action": "accept_models"}, headers=token)
    client.post("/api/decision", json={"clip_id": ids[1], "action": "drop"}, headers=token)
    body = client.post("/api/export", headers=token).json()
    corrections, manifest = Path(body["corrections"]), Path(body["manifest"])
    assert corrections.is_file() and manifest.is_file() and corrections.parent == run / "review"
    text = corrections.read_text()
    assert queue.card(ids[0]).fname in text and queue.card(ids[1]).fname in text


def test_the_retrain_button_starts_a_retrain_and_shows_before_and_after(review, monkeypatch):
    """POST /api/retrain writes the corrected manifest and starts a retrain of it (a separate process,
    not awaited); GET /api/retrain shows its state and, once done, test lwlrap before and after."""
    from noisytag.review import retrain

    run, queue, client, token = review
    started, status = [], {"state": "running", "stages_done": ["cnn1/stage3"]}
    out = run / "review" / "retrain-1"

    def start(run_dir, manifest, whole=False, wait=True):
        started.append((Path(run_dir), Path(manifest).name, whole, wait))
        out.mkdir(parents=True)
        return out

    monkeypatch.setattr(retrain, "start_retrain", start)
    monkeypatch.setattr(retrain, "retrain_status", lambda d: {"run": str(d), **status})
    assert client.get("/api/retrain").json() == {"state": "none", "comparison": None}
    assert client.post("/api/retrain").status_code == 403 and not started
    client.post("/api/decision", json={"clip_id": queue.order("suspect")[0], "action": "drop"}, headers=token)
    body = client.post("/api/retrain", headers=token).json()
    assert started == [(run, "manifest.csv", False, False)] and (run / "review" / "manifest.csv").is_file()
    assert body["state"] == "running" and body["comparison"] is None
    assert body["review_next"] == f"noisytag review {out}"
    c = {"before": 0.5, "after": 0.6, "delta": 0.1, "lo": 0.05, "hi": 0.15, "n_test": 12}
    status.update(state="done", comparison={**c, "per_class": "not shown"})
    assert client.get("/api/retrain").json()["comparison"] == c


def test_page_loads_nothing_from_elsewhere(review):
    run, queue, client, _ = review
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("review.js", "review.css"):
        text = client.get(f"/static/{name}").text
        assert "http://" not in text and "https://" not in text, name


def test_page_in_headless_chromium(run_copy, tmp_path):
    run = run_copy
    queue = ReviewQueue.from_run(run)
    ids = queue.order("suspect")
    app = create_review_app(queue, EventLog(run / "review" / "events.jsonl"), "ann", write_files=False)
    third = queue.card(ids[2])
    key = next(i for i, c in enumerate(third.candidates[:9]) if c not in third.given)
    requests, errors, audio = [], [], []
    with running(app) as server, headless_chromium("--autoplay-policy=no-user-gesture-required") as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda req: requests.append(req.url))
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("response", lambda r: audio.append(r.status) if "/api/audio/" in r.url else None)

        def shown(clip_id: int) -> None:
            page.wait_for_selector(f"#card[data-state=ready][data-clip-id='{clip_id}']", timeout=30_000)

        page.goto(f"{server}/")
        shown(ids[0])
        deadline = time.monotonic() + 30  # wait_for_function would need eval, which the page's CSP forbids
        while not page.evaluate("() => document.querySelector('#picture').naturalWidth > 0"):
            assert time.monotonic() < deadline, "the log-mel picture did not load"
            time.sleep(0.1)
        page.locator("#timeline").wait_for(state="visible", timeout=60_000)  # shown once it has loaded
        assert page.is_visible("#timeline") and not page.is_visible("#bulk")
        page.focus("#search")  # keys do not fire while typing
        page.keyboard.type("dau")
        page.keyboard.press("Escape")
        assert events_of(run) == []
        page.keyboard.press("Enter")  # accept the given labels
        shown(ids[1])
        page.keyboard.press("a")  # accept the models' labels
        shown(ids[2])
        page.keyboard.press(str(key + 1))  # toggle a candidate, then save
        assert (
            page.locator("#candidates li.on").count()
            == len([c for c in third.candidates[:9] if c in third.given]) + 1
        )
        page.keyboard.press("s")
        shown(ids[3])
        events = events_of(run)
        assert [e["clip_id"] for e in events] == ids[:3]
        assert [e["action"] for e in events] == ["accept_given", "accept_models", "set"]
        assert events[0]["after"] == list(queue.card(ids[0]).given)
        assert events[1]["after"] == list(queue.card(ids[1]).suggested)
        chosen = {*third.given, third.candidates[key]}
        assert events[2]["after"] == [c for c in queue.classes if c in chosen]
        page.keyboard.press("z")  # undo: the third decision, and back to its card
        shown(ids[2])
        assert events_of(run)[-1]["action"] == "undo" and events_of(run)[-1]["undoes"] == 2
        page.keyboard.press("j")
        shown(ids[3])
        page.keyboard.press("?")
        assert page.is_visible("#help")
        page.keyboard.press("Escape")
        page.reload()
        shown(ids[2])  # resumes at the first undecided card of the queue
        status = page.evaluate(
            "async () => (await fetch('api/decision', {method: 'POST', headers: {'Content-Type': "
            "'application/json'}, body: JSON.stringify({clip_id: 0, action: 'drop'})})).status"
        )
        assert status == 403
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        assert len(events_of(run)) == 4
        if queue.pairs():  # the pair queue and its bulk action (a second click confirms)
            given, heard, _ = queue.pairs()[0]
            todo = [i for i in queue.order("pair", pair=(given, heard)) if i not in ids[:2]]
            page.select_option("#mode", "pair")
            page.wait_for_selector("#card[data-state=ready]")
            assert page.input_value("#mode-pair") == f"{given}|{heard}" and "mode=pair" in page.url
            page.click("#bulk")
            page.click("#bulk")
            page.locator("#status", has_text="models' labels set on").wait_for()
            bulk = events_of(run)[4:]
            assert [e["clip_id"] for e in bulk] == todo and {e["action"] for e in bulk} == {"accept_models"}
        got = httpx.get(f"{server}/api/audio/{ids[0]}", headers={"Range": "bytes=0-99"})
        assert got.status_code == 206 and len(got.content) == 100
    assert (tmp_path / "review.png").stat().st_size > 10_000
    assert not errors, errors
    assert 206 in audio or 200 in audio, audio
    outside = [u for u in requests if not u.startswith((server, "data:", "blob:"))]
    assert not outside, outside


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_decision_survives_sigkill(run_copy):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "noisytag",
            "review",
            str(run_copy),
            "--no-browser",
            "--port",
            str(port),
            "--reviewer",
            "kim",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                session = httpx.get(f"{url}/api/session", timeout=2).json()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the server did not start: {proc.stderr.read().decode()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        clip = httpx.get(f"{url}/api/queue").json()["ids"][0]
        answer = httpx.post(
            f"{url}/api/decision",
            json={"clip_id": clip, "action": "drop"},
            headers={"X-Review-Token": session["token"]},
        )
        os.kill(proc.pid, signal.SIGKILL)
        assert answer.status_code == 200
    finally:
        proc.kill()
        proc.wait(10)
    events = events_of(run_copy)
    assert len(events) == 1 and events[0]["clip_id"] == clip and events[0]["action"] == "drop"
    assert events[0]["reviewer"] == "kim"
