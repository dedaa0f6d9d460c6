"""noisytag serve: a real uvicorn server on loopback, a real HTTP client, and headless Chromium on the page."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import headless_chromium, torch_calls, write_model_run

from noisytag.data.synth import CLASSES
from noisytag.serve import service as service_mod
from noisytag.serve.app import WEB_DIR, create_app, running
from noisytag.serve.service import ServeSettings, TagService, UploadError, open_service


def tone(seconds: float, sr: int = 44100, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A warbling tone with a little noise: loud from end to end, so trimming keeps it all."""
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t + 3 * np.sin(2 * np.pi * 0.5 * t))
    y += 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    return y.astype(np.float32)


def encoded(y: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt)
    return buf.getvalue()


def post_file(client, name: str, data: bytes, ctype: str = "audio/wav", **params):
    return client.post("/api/tag", files={"file": (name, data, ctype)}, params=params)


def one_sentence(response) -> str:
    """The refusal's reason: a JSON string of one line, no traceback."""
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail
    return detail


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    return write_model_run(tmp_path_factory.mktemp("serve_run"), CLASSES, bn_stats=True)


@pytest.fixture(scope="module")
def onnx_dir(model_run, tmp_path_factory):
    """model_run's members exported outside the run (as the build step ``noisytag serve`` runs first)."""
    from noisytag.infer.export import export_run

    folder = tmp_path_factory.mktemp("serve_onnx")
    export_run(model_run, folder)
    assert not (model_run / "onnx").exists()
    return folder


@pytest.fixture(scope="module")
def service(model_run):
    return open_service(model_run)  # the CLI's defaults: 600 s, 100 MB, 4 in flight


@pytest.fixture(scope="module")
def server(service):
    with running(create_app(service)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def wav_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "warble.wav"
    sf.write(path, tone(5.0), 44100)
    return path


def test_tag_wav_answers_labels_timeline_logmel_and_model(client, service, wav_file):
    r = post_file(client, "warble.wav", wav_file.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["file"] == "warble.wav" and body["duration"] == pytest.approx(5.0, abs=1e-3)
    probs = [lab["prob"] for lab in body["labels"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    # the same labels as `noisytag tag` on the file
    record = service.tagger.tag([wav_file], top_k=5, frames=True)[0]
    assert body["labels"] == record.to_dict()["labels"]
    assert body["timeline"] == record.to_dict()["timeline"]
    assert "error" not in body
    tl = body["timeline"]
    assert tl["classes"] == [lab["label"] for lab in body["labels"]]
    assert np.asarray(tl["probs"]).shape == (len(tl["windows"]), 5) and len(tl["windows"]) >= 3
    assert 0 <= tl["windows"][0]["start_s"] < tl["windows"][-1]["end_s"] <= 5.0
    # per-window probabilities average to the clip's probabilities (the engine's per-clip mean)
    np.testing.assert_allclose(np.mean(tl["probs"], axis=0), probs, atol=1e-3)
    lm = body["logmel"]
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(lm["png"])))
    assert image.mode == "L" and image.size == (lm["width"], lm["height"]) and lm["height"] == 128
    assert lm["width"] * lm["seconds_per_column"] == pytest.approx(5.0, abs=0.1)
    assert np.asarray(image).std() > 5  # not a blank image
    model = body["model"]
    assert model["backend"] == "torch" and model["mode"] == "exact" and model["n_classes"] == len(CLASSES)
    assert model["stages"] == [2, 3] and model["architectures"] == ["cnn1"] and model["members"] == 2
    # the raw body form of the same upload; a client's path is only echoed, as a bare name
    params = {"top_k": 2, "filename": "../../etc/warble.wav"}
    raw = client.post(
        "/api/tag", content=wav_file.read_bytes(), headers={"content-type": "audio/wav"}, params=params
    )
    assert raw.status_code == 200 and raw.json()["labels"] == body["labels"][:2]
    assert raw.json()["file"] == "warble.wav"
    # labels only: no timeline, no picture
    light = client.post(
        "/api/tag",
        content=wav_file.read_bytes(),
        headers={"content-type": "audio/wav"},
        params={"timeline": "false", "logmel": "false"},
    )
    assert light.status_code == 200 and light.json()["labels"] == body["labels"]
    assert "timeline" not in light.json() and "logmel" not in light.json()
    assert len(light.content) < len(r.content) / 10


def test_tag_mp3(client):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3 (needs libsndfile >= 1.1)")
    r = post_file(client, "clip.mp3", encoded(tone(3.0), 44100, "MP3"), "audio/mpeg")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(3.0, abs=0.1)


def test_tag_ten_minute_flac(client):
    sr = 8000  # low rate: cheap to make and to send; the server resamples to 44.1 kHz
    data = encoded(tone(600.0, sr, 700.0), sr, "FLAC")
    started = time.perf_counter()
    r = post_file(client, "long.flac", data, "audio/flac")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration"] == pytest.approx(600.0, abs=0.01)
    assert body["timeline"]["windows"][-1]["end_s"] == pytest.approx(600.0, abs=0.1)
    assert len(body["timeline"]["windows"]) > 700 and body["logmel"]["width"] <= 600
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize(
    "kind, status, words",
    [
        ("text file", 415, "not an audio file"),
        ("text as octet-stream", 422, "cannot be decoded"),
        ("corrupt wav", 422, "cannot be decoded"),
        ("empty file", 400, "empty"),
        ("empty body", 400, "no body"),
        ("form without file", 400, "no file field"),
        ("json body", 415, "not accepted"),
        ("bad top_k", 422, "top_k"),
    ],
)
def test_bad_input_is_a_4xx_with_one_sentence(client, kind, status, words):
    text = b"these are notes, not sound\n" * 20
    r = {
        "text file": lambda: post_file(client, "notes.txt", text, "text/plain"),
        "text as octet-stream": lambda: post_file(client, "notes.wav", text, "application/octet-stream"),
        "corrupt wav": lambda: post_file(client, "broken.wav", b"RIFF....WAVEfmt garbage" * 10),
        "empty file": lambda: post_file(client, "empty.wav", b""),
        "empty body": lambda: client.post("/api/tag", content=b""),
        "form without file": lambda: client.post("/api/tag", files={"other": ("a.wav", b"RIFF")}),
        "json body": lambda: client.post("/api/tag", json={"file": "a.wav"}),
        "bad top_k": lambda: post_file(client, "a.wav", encoded(tone(1.0), 44100, "WAV"), top_k=0),
    }[kind]()
    assert r.status_code == status, r.text
    assert words in one_sentence(r)


def test_too_large_and_too_long_uploads(service):
    strict = TagService(service.tagger, service.info, ServeSettings(max_mb=0.25, max_seconds=2.0))
    big = encoded(tone(6.0), 44100, "WAV")  # 0.5 MB
    with running(create_app(strict)) as url, httpx.Client(base_url=url, timeout=60) as client:
        for r in (
            post_file(client, "big.wav", big),
            client.post("/api/tag", content=big, headers={"content-type": "audio/wav"}),
            # no Content-Length: the body is cut off while it streams in
            client.post("/api/tag", content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)])),
        ):
            assert r.status_code == 413, r.text
            assert "0.2 MB" in one_sentence(r)
        r = post_file(client, "long.flac", encoded(tone(3.0, 8000), 8000, "FLAC"), "audio/flac")
        assert r.status_code == 413 and "lasts 3.0 s" in one_sentence(r)
        assert client.get("/api/health").json()["status"] == "ok"  # still serving


def test_too_long_audio_whose_header_does_not_say_so(service, monkeypatch, tmp_path):
    """When the header gives no length, the decoded length is checked before any model runs."""
    strict = TagService(service.tagger, service.info, ServeSettings(max_seconds=2.0))
    path = tmp_path / "long.flac"
    sf.write(path, tone(3.0, 8000), 8000)
    monkeypatch.setattr(service_mod.sf, "info", lambda *a, **k: 1 / 0)
    with pytest.raises(UploadError) as refused:
        strict.tag_file(path, "long.flac")
    assert refused.value.status == 413 and "lasts 3.0 s" in refused.value.message


@pytest.mark.parametrize("backend, mode", [("onnx", "exact"), ("torch", "fast")])
def test_onnx_backend_and_fast_mode_agree_with_torch(model_run, onnx_dir, client, wav_file, backend, mode):
    reference = post_file(client, "warble.wav", wav_file.read_bytes()).json()
    other = open_service(model_run, backend=backend, mode=mode, onnx_dir=onnx_dir)
    with running(create_app(other)) as url, httpx.Client(base_url=url, timeout=60) as c:
        body = post_file(c, "warble.wav", wav_file.read_bytes()).json()
    other.close()
    assert body["model"]["backend"] == backend and body["model"]["mode"] == mode
    assert body["labels"][0]["label"] == reference["labels"][0]["label"]
    tol = 1e-4 if mode == "exact" else 0.05  # fast mode: windows see their neighbours at the edges
    ref = {lab["label"]: lab["prob"] for lab in reference["labels"]}
    for lab in body["labels"][:3]:
        assert lab["prob"] == pytest.approx(ref.get(lab["label"], lab["prob"]), abs=tol)


def listing(root):
    """Every file under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_service_only_reads_the_run(model_run, onnx_dir, wav_file, tmp_path):
    """Exporting is a build step the service never runs: without current ONNX members it refuses in one
    line naming the command; it reads them from ``onnx_dir`` (where ``noisytag serve`` exported them) or
    from a current RUN/onnx. Either way the run directory's files stay as they were."""
    from noisytag.infer.members import ExportError

    before = listing(model_run)
    with pytest.raises(ExportError, match="missing or stale; run `noisytag export") as refused:
        open_service(model_run, backend="onnx", warm_up=False)
    assert "\n" not in str(refused.value) and listing(model_run) == before
    service = open_service(model_run, backend="onnx", warm_up=False, onnx_dir=onnx_dir)
    try:
        assert {type(m).__name__ for m in service.tagger.ensemble.members} == {"OnnxMember"}
        assert service.tag_file(wav_file, "warble.wav").labels
    finally:
        service.close()
    assert listing(model_run) == before
    exported = tmp_path / "run"
    shutil.copytree(model_run, exported)
    shutil.copytree(onnx_dir, exported / "onnx")  # as `noisytag export RUN --onnx RUN/onnx` leaves it
    kept = listing(exported)
    again = open_service(exported, backend="onnx", warm_up=False)
    assert listing(exported) == kept  # read from RUN/onnx, nothing exported
    assert {type(m).__name__ for m in again.tagger.ensemble.members} == {"OnnxMember"}
    again.close()


def test_the_run_config_chooses_backend_and_mode(model_run, onnx_dir, tmp_path):
    """A run whose config says infer.backend onnx and infer.mode fast is served that way without
    arguments; an argument given still overrides its setting (and only that one)."""
    from noisytag.config import load_config, save_config

    run = shutil.copytree(model_run, tmp_path / "run")
    shutil.copytree(onnx_dir, run / "onnx")
    save_config(load_config(None, ["infer.backend=onnx", "infer.mode=fast"]), run / "config.yaml")
    served = open_service(run, warm_up=False)
    try:
        assert (served.info.backend, served.info.mode) == ("onnx", "fast")
        assert {type(m).__name__ for m in served.tagger.ensemble.members} == {"OnnxMember"}
    finally:
        served.close()
    flagged = open_service(run, backend="torch", warm_up=False)
    try:
        assert (flagged.info.backend, flagged.info.mode) == ("torch", "fast")
        assert {type(m).__name__ for m in flagged.tagger.ensemble.members} == {"TorchMember"}
        assert flagged.tagger.settings.sources["backend"] == "flag"
    finally:
        flagged.close()


def test_page_header_reads_well_for_a_run_named_run(model_run, tmp_path):
    """The page's header line names the run once, as a label: "run: run · …", not "run run · …"."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH to run the page's script")
    run = shutil.copytree(model_run, tmp_path / "run")
    info = open_service(run, warm_up=False).info
    assert info.run == "run"
    script = (
        "const fs = require('fs'), vm = require('vm');"
        "const ctx = vm.createContext({document: {addEventListener() {}}, window: {}});"
        "vm.runInContext(fs.readFileSync(process.argv[1], 'utf8'), ctx);"
        "process.stdout.write(ctx.describeModel(JSON.parse(process.argv[2])));"
    )
    args = [node, "-e", script, str(WEB_DIR / "app.js"), json.dumps(dataclasses.asdict(info))]
    header = subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout
    assert header.startswith("run: run · cnn1 · stages 2, 3 · 2 models") and "run run" not in header


def test_models_load_and_run_on_the_one_inference_thread(model_run, monkeypatch):
    """Loading, the warm-up and every request run torch on the service's one thread, never in the event
    loop's or a request pool's: each thread that runs torch gets its own OpenMP pool, and more pool
    threads than cores stop every pool's spin-waiting (a 10-s log-mel 3.4 → 11 ms on 2 cores)."""
    from noisytag.audio import features
    from noisytag.infer import members

    calls = torch_calls(
        monkeypatch,
        (features.LogMel, "frames_db"),
        (members.TorchMember, "__init__"),
        (members.TorchMember, "probs"),
    )
    fresh = open_service(model_run)
    try:
        loaded = {thread for thread, _ in calls}
        data = encoded(tone(3.0), 44100, "WAV")
        with running(create_app(fresh)) as url, httpx.Client(base_url=url, timeout=60) as c:
            assert all(post_file(c, f"{i}.wav", data).status_code == 200 for i in range(3))
        worker = fresh.worker.submit(threading.get_ident).result()
    finally:
        fresh.close()
    assert loaded == {worker} and {thread for thread, _ in calls} == {worker}
    assert worker != threading.get_ident()


def test_onnx_services_overlap_requests_with_one_torch_thread_each(model_run, onnx_dir, monkeypatch):
    """With onnxruntime members torch only makes the log-mel: each of the ``max_in_flight`` inference
    threads runs it with one torch thread (no OpenMP pool), so concurrent requests overlap."""
    import torch

    from noisytag.audio import features

    seen = torch_calls(monkeypatch, (features.LogMel, "frames_db"))  # (thread, torch threads) per log-mel
    default = torch.get_num_threads()
    fresh = open_service(
        model_run, backend="onnx", settings=ServeSettings(max_in_flight=3), onnx_dir=onnx_dir
    )
    later = ThreadPoolExecutor(1)  # a thread of the caller's, started after the service
    data = encoded(tone(3.0), 44100, "WAV")
    statuses: list[int] = []
    try:
        with running(create_app(fresh)) as url:

            def one_client() -> None:
                with httpx.Client(base_url=url, timeout=60) as c:
                    statuses.extend(post_file(c, "a.wav", data).status_code for _ in range(3))

            clients = [threading.Thread(target=one_client) for _ in range(3)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
        assert later.submit(torch.get_num_threads).result() == default == torch.get_num_threads()
    finally:
        fresh.close()
        later.shutdown()
    assert statuses == [200] * 9 and len(seen) == 10  # the warm-up and 9 requests
    assert {n for _, n in seen} == {1}
    assert threading.get_ident() not in {t for t, _ in seen}


def test_concurrency_eight_clients_none_fails(service):
    queued = TagService(service.tagger, service.info, ServeSettings(max_in_flight=2, wait_seconds=60))
    data = encoded(tone(4.0, 22050), 22050, "WAV")
    results: list = []
    with running(create_app(queued)) as url:

        def one_client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                for _ in range(2):
                    r = post_file(c, f"c{i}.wav", data)
                    results.append(
                        (r.status_code, r.json()["labels"][0]["label"] if r.is_success else r.text)
                    )

        threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert httpx.get(f"{url}/api/health").json()["in_flight"] == 0
    assert len(results) == 16 and {s for s, _ in results} == {200}
    assert len({label for _, label in results}) == 1


class SlowService(TagService):
    def tag_bytes(self, data, name, *args):
        time.sleep(1.0)
        return super().tag_bytes(data, name, *args)


def test_busy_server_answers_503(service):
    slow = SlowService(service.tagger, service.info, ServeSettings(max_in_flight=1, wait_seconds=0.1))
    data = encoded(tone(1.0), 44100, "WAV")
    statuses: list = []
    with running(create_app(slow)) as url:

        def one() -> None:
            r = httpx.post(f"{url}/api/tag", files={"file": ("a.wav", data, "audio/wav")}, timeout=30)
            statuses.append((r.status_code, r.headers.get("retry-after"), r.json()))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join()
    assert sorted(s for s, _, _ in statuses) == [200, 503]
    busy = next(x for x in statuses if x[0] == 503)
    assert busy[1] == "1" and "busy" in busy[2]["detail"]


def test_labels_health_docs_and_openapi(client):
    assert client.get("/api/labels").json() == {"classes": CLASSES, "count": len(CLASSES)}
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["max_in_flight"] == 4 and health["model"]["members"] == 2
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/tag"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "audio/*"} <= set(body)
    assert "PNG" in spec["components"]["schemas"]["LogMelImage"]["properties"]["png"]["description"]
    assert spec["paths"]["/api/tag"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TagResponse"
    }
    assert {"413", "415", "503"} <= set(spec["paths"]["/api/tag"]["post"]["responses"])


def test_page_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("index.html", "app.js", "style.css"):
        text = (WEB_DIR / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert not re.search(r"(url\(|import |fetch\()\s*[\"']?(https?:)?//", text), name
        assert client.get(f"/static/{name}").status_code == 200


def test_cli_help_and_refusals(tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["serve", "--help"], terminal_width=200).output
    for option in ("--host", "--port", "--backend", "--mode", "--top-k", "--max-seconds", "--max-mb"):
        assert option in out
    r = runner.invoke(app, ["serve", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["serve", str(tmp_path), "--backend", "tf"])
    assert r.exit_code == 2 and "--backend" in r.output
    r = runner.invoke(app, ["serve", str(tmp_path)])  # a directory without models
    assert r.exit_code == 2 and "no finished models" in r.output


def test_cli_serves_a_run(model_run, tmp_path):
    cmd = [sys.executable, "-m", "noisytag", "serve", str(model_run), "--port", "0", "--mode", "fast"]
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            found = re.search(r"running on (http://[\d.]+:\d+)", log.read_text(), re.I)
            url = found and found.group(1)
        assert url, f"the server did not report its address: {log.read_text()[-500:]}"
        health = httpx.get(f"{url}/api/health", timeout=10).json()
        assert health["model"]["mode"] == "fast" and health["model"]["run"] == model_run.name
    finally:
        proc.terminate()
        proc.wait(10)


def test_page_in_headless_chromium(server, client, wav_file, tmp_path):
    api_top = post_file(client, "warble.wav", wav_file.read_bytes()).json()["labels"][0]["label"]
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n")
    requests, errors = [], []
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.on("request", lambda req: requests.append(req.url))
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{server}/")
        page.locator("#model-info", has_text="classes").wait_for()  # the page's CSP forbids eval
        page.set_input_files("#file-input", str(wav_file))
        page.wait_for_selector(".card[data-state=done]", timeout=30_000)
        assert page.text_content(".card[data-state=done] .top-label") == api_top
        assert page.locator(".card[data-state=done] .bars rect").count() == 10  # 5 tracks + 5 bars
        drawn = page.evaluate(
            """() => Object.fromEntries(['timeline', 'logmel'].map((cls) => {
                const c = document.querySelector('.card[data-state=done] canvas.' + cls);
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let ink = 0; const colours = new Set();
                for (let i = 0; i < d.length; i += 4) {
                  if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) ink++;
                  colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
                }
                return [cls, {ink: ink / (d.length / 4), colours: colours.size}];
            }))"""
        )
        for cls, stats in drawn.items():
            assert stats["ink"] > 0.3 and stats["colours"] > 20, (cls, stats)
        page.set_input_files("#file-input", str(notes))
        page.wait_for_selector(".card[data-state=error]", timeout=30_000)
        assert "not an audio file" in page.text_content(".card[data-state=error] .status")
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    assert not errors, errors
    outside = [u for u in requests if not u.startswith((server, "data:", "blob:"))]
    assert not outside, outside
