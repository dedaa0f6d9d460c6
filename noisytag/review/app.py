"""The HTTP side of ``noisytag review``: the FastAPI app around a :class:`ReviewQueue` and an :class:`EventLog`.

The page (``web/``, nothing loaded from elsewhere) shows one card at a time; every decision is a POST that
is answered only after its event line is written and fsynced (``EventLog.append``), so an answered decision
survives a killed server. Clips are addressed by their queue id, never by a path. POSTs need the token the
page got from ``GET /api/session`` (new at every server start), so another site cannot post decisions.
Every refusal is a 4xx whose JSON ``detail`` is one sentence. Nothing is done per clip at start-up beyond
what the queue needs: cards, pictures and orders are made when first asked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
import threading
import webbrowser
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from noisytag import __version__
from noisytag.review import retrain
from noisytag.review.corrections import CorrectionsWriter, LiveState
from noisytag.review.events import ACTIONS, EventLog, decision_event
from noisytag.review.media import Pictures
from noisytag.review.queue import MODES, ReviewQueue
from noisytag.serve.app import PAGE_HEADERS, one_line_errors

WEB_DIR = Path(__file__).resolve().parent / "web"
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}
DECISIONS = tuple(a for a in ACTIONS if a != "undo")


class ReviewError(Exception):
    """A refused request: HTTP status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Decision(BaseModel):
    clip_id: int
    action: str = Field(description=f"one of {', '.join(DECISIONS)}")
    labels: list[str] | None = Field(None, description="the reviewer's labels (action 'set' only)")
    seconds: float = Field(0.0, ge=0, description="time spent on the card")
    mode: str = "suspect"
    rank: int = Field(-1, description="the card's position in the queue (-1: unknown)")


class Bulk(BaseModel):
    given: str
    heard: str
    action: str = "accept_models"
    seconds: float = Field(0.0, ge=0)


def _pair(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    parts = value.split("|")
    if len(parts) != 2:
        raise ReviewError(422, f"pair '{value}' is not 'GIVEN|HEARD'")
    return parts[0], parts[1]


def create_review_app(
    queue: ReviewQueue,
    log_: EventLog,
    reviewer: str,
    pictures: Pictures | None = None,
    token: str | None = None,
    write_files: bool = True,
    default_mode: str = "suspect",
    test_truth: str | Path | None = None,
) -> FastAPI:
    """The review app of one reviewer. ``pictures``: the card pictures (default: drawn from the queue's
    run); ``token``: the session token (default: random); ``write_files``: rewrite corrections.csv and
    the corrected manifest after every decision (in the background; ``POST /api/export`` writes at once);
    ``default_mode``: the queue the page opens with; ``test_truth``: the test clips' true labels
    (``fname,labels``) for a retrain's before/after comparison (default: the data set's own test truth)."""
    app = FastAPI(
        title="noisytag review", version=__version__, description="Review the labels of a run's noisy clips."
    )
    if default_mode not in MODES:
        raise ValueError(f"unknown queue mode '{default_mode}'; one of {', '.join(MODES)}")
    token = token or secrets.token_urlsafe(24)
    pictures = pictures or Pictures(queue.run)
    state = LiveState(log_)
    writer = CorrectionsWriter(queue, state) if write_files else None
    classes = list(queue.classes)
    known = set(classes)
    orders: dict[tuple, list[int]] = {}
    app.state.queue, app.state.log, app.state.pictures, app.state.token = queue, log_, pictures, token

    @app.exception_handler(ReviewError)
    async def _refused(request: Request, err: ReviewError):
        return JSONResponse({"detail": err.message}, status_code=err.status)

    one_line_errors(app)

    def need_token(x_review_token: str | None = Header(None)) -> None:
        if not x_review_token:
            raise ReviewError(403, "missing X-Review-Token header; reload the page to get a session token")
        if not secrets.compare_digest(x_review_token, token):
            raise ReviewError(403, "stale or wrong X-Review-Token (the server restarted?); reload the page")

    def card_of(clip_id: int):
        try:
            return queue.card(clip_id)
        except (KeyError, IndexError):
            raise ReviewError(404, f"no clip with id {clip_id} in this review's queue") from None

    def check_label(label: str) -> str:
        if label not in known:
            raise ReviewError(422, f"unknown label '{label}': not one of the run's {len(classes)} classes")
        return label

    def order(mode: str, label: str | None, pair: tuple[str, str] | None) -> list[int]:
        if mode not in MODES:
            raise ReviewError(422, f"unknown queue mode '{mode}'; one of {', '.join(MODES)}")
        if mode == "class" and not label:
            raise ReviewError(422, "queue mode 'class' needs a label")
        if mode == "pair" and not pair:
            raise ReviewError(422, "queue mode 'pair' needs pair=GIVEN|HEARD")
        for lab in ([label] if label else []) + list(pair or ()):
            check_label(lab)
        key = (mode, label if mode == "class" else None, pair if mode == "pair" else None)
        if key not in orders:
            orders[key] = list(queue.order(mode, label=key[1], pair=key[2]))
        return orders[key]

    def decided_ids() -> set[int]:
        out = set()
        for fname in state.get().decided():
            try:
                out.add(queue.clip_id(fname))
            except KeyError:
                continue
        return out

    def progress() -> dict:
        st = state.get()
        mine = st.by_reviewer.get(reviewer, {})
        counts: dict[str, int] = {}
        for event in st.decisions.values():
            counts[event["action"]] = counts.get(event["action"], 0) + 1
        return {
            "decided": len(st.decided()),
            "total": len(queue),
            "mine": len(mine),
            "actions": counts,
            "reviewers": sorted(st.by_reviewer),
            "agreement": st.agreement(),
        }

    def card_json(clip_id: int) -> dict:
        card = card_of(clip_id)
        out = dataclasses.asdict(card)
        out["probs"] = {k: round(float(v), 4) for k, v in card.probs.items()}
        event = state.get().decisions.get(card.fname)
        out["decision"] = (
            None if event is None else {k: event.get(k) for k in ("action", "after", "reviewer", "time")}
        )
        out["audio"] = f"api/audio/{clip_id}"
        out["picture"] = f"api/picture/{clip_id}.png"
        out["timeline"] = f"api/timeline/{clip_id}.png"
        out["timeline_rows"] = timeline_rows(card)
        return out

    def timeline_rows(card) -> list[str]:
        """The picture's timeline rows: the given labels, then what the models hear (at most 6)."""
        rows = list(dict.fromkeys([*card.given, *card.suggested, *card.likely_missing, *card.candidates[:2]]))
        return rows[:6]

    def append(card, action: str, after, seconds: float, mode: str, rank: int) -> dict:
        event = decision_event(card, action, after, reviewer, seconds, mode, rank)
        return log_.append(event)

    def after_of(card, action: str, labels: list[str] | None):
        if action not in DECISIONS:
            raise ReviewError(422, f"unknown action '{action}'; one of {', '.join(DECISIONS)}")
        if action != "set" and labels:
            raise ReviewError(422, f"action '{action}' takes no labels (use 'set')")
        if action == "accept_given":
            return list(card.given)
        if action == "accept_models":
            return list(card.suggested)
        if action == "set":
            if not labels:
                raise ReviewError(422, "action 'set' needs at least one label (drop a clip with no label)")
            chosen = {check_label(lab) for lab in labels}
            return [c for c in classes if c in chosen]
        return None  # drop, unsure

    @app.get("/api/session", summary="Session token, reviewer, classes and queue modes")
    async def session():
        return {
            "token": token,
            "reviewer": reviewer,
            "run": queue.run.name,
            "classes": classes,
            "modes": list(MODES),
            "mode": default_mode,
            "actions": list(DECISIONS),
            "version": __version__,
        }

    @app.get("/api/queue", summary="Clip ids in queue order, and the first undecided position")
    def queue_ids(
        mode: str = Query("suspect"),
        label: str | None = Query(None),
        pair: str | None = Query(None, description="GIVEN|HEARD"),
    ):
        ids = order(mode, label, _pair(pair))
        done = decided_ids()
        start = next((i for i, c in enumerate(ids) if c not in done), len(ids))
        return {"mode": mode, "label": label, "pair": pair, "ids": ids, "start": start, "decided": len(done)}

    @app.get("/api/pairs", summary="Label pairs: given X, the models hear Y (most common first)")
    def pairs(limit: int = Query(50, ge=1, le=1000)):
        return [{"given": g, "heard": h, "count": n} for g, h, n in queue.pairs()[:limit]]

    @app.get("/api/card/{clip_id}", summary="One card")
    def card(clip_id: int):
        return card_json(clip_id)

    @app.get("/api/audio/{clip_id}", summary="The clip's audio (HTTP Range)")
    def audio(clip_id: int):
        card_of(clip_id)
        path = Path(queue.audio_path(clip_id))
        if not path.is_file():
            raise ReviewError(404, f"the audio of clip {clip_id} is missing ({path.name})")
        return FileResponse(path, media_type=AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    async def png(future, clip_id: int, what: str) -> Response:
        try:
            data = await asyncio.wrap_future(future)
        except Exception as err:
            raise ReviewError(
                422, f"cannot draw the {what} of clip {clip_id}: {str(err).splitlines()[0]}"
            ) from None
        if data is None:
            raise ReviewError(404, f"no {what} of clip {clip_id}: the run has no usable models")
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/picture/{clip_id}.png", summary="The clip's log-mel picture (cached)")
    async def picture(clip_id: int):
        card = card_of(clip_id)
        return await png(
            pictures.submit_logmel(card.fname, Path(queue.audio_path(clip_id))), clip_id, "log-mel"
        )

    @app.get("/api/timeline/{clip_id}.png", summary="The models' timeline under the log-mel (cached; slower)")
    async def timeline_picture(clip_id: int):
        card = card_of(clip_id)
        marks = {lab: "(wrong?)" for lab in card.likely_wrong}
        marks.update({lab: "(missing?)" for lab in card.likely_missing})
        audio = Path(queue.audio_path(clip_id))
        future = pictures.submit_timeline(card.fname, audio, card.fold, timeline_rows(card), marks)
        return await png(future, clip_id, "timeline")

    @app.get("/api/example/{label}", summary="A trusted curated clip of a class (audio)")
    def example(label: str):
        check_label(label)
        path = queue.example_path(label)
        if path is None or not Path(path).is_file():
            raise ReviewError(404, f"no trusted curated example of '{label}'")
        path = Path(path)
        return FileResponse(path, media_type=AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    @app.get("/api/progress", summary="Decisions so far, by action and reviewer; agreement")
    def get_progress():
        return progress()

    @app.post("/api/decision", dependencies=[Depends(need_token)], summary="Record one decision")
    def decision(body: Decision):
        card = card_of(body.clip_id)
        after = after_of(card, body.action, body.labels)
        if body.mode not in MODES:
            raise ReviewError(422, f"unknown queue mode '{body.mode}'; one of {', '.join(MODES)}")
        event = append(card, body.action, after, body.seconds, body.mode, body.rank)
        if writer:
            writer.mark()
        return {"event": event, "progress": progress()}

    @app.post("/api/undo", dependencies=[Depends(need_token)], summary="Undo this reviewer's latest decision")
    def undo():
        event = log_.undo(reviewer)
        if event is None:
            raise ReviewError(409, f"reviewer '{reviewer}' has no decision left to undo")
        if writer:
            writer.mark()
        return {"event": event, "progress": progress()}

    @app.post("/api/bulk", dependencies=[Depends(need_token)], summary="One action on every clip of a pair")
    def bulk(body: Bulk):
        if body.action not in ("accept_models", "accept_given", "unsure"):
            raise ReviewError(
                422, f"bulk action '{body.action}' is not one of accept_models, accept_given, unsure"
            )
        pair = (check_label(body.given), check_label(body.heard))
        ids = order("pair", None, pair)
        done = decided_ids()
        events = []
        for rank, clip_id in enumerate(ids):
            if clip_id in done:
                continue
            card = card_of(clip_id)
            after = after_of(card, body.action, None)
            events.append(append(card, body.action, after, body.seconds / max(len(ids), 1), "pair", rank))
        if writer and events:
            writer.mark()
        return {"count": len(events), "progress": progress()}

    @app.post(
        "/api/export",
        dependencies=[Depends(need_token)],
        summary="Write corrections.csv and the manifest now",
    )
    def export():
        corrections, manifest = (writer or CorrectionsWriter(queue, state)).write()
        return {"corrections": str(corrections), "manifest": str(manifest)}

    def retrain_info(out: Path) -> dict:
        """A retrain's state and, once it is done, its test lwlrap against the run's (computed once)."""
        status = retrain.retrain_status(out)
        info = {k: status.get(k) for k in ("run", "state", "stages_done", "error", "whole")}
        info["review_next"] = f"noisytag review {out}"
        if status["state"] == "done" and "comparison" not in status:
            try:
                retrain.write_comparison(retrain.compare(queue.run, out, truth_csv=test_truth))
            except (retrain.RetrainError, OSError, ValueError) as err:
                info["comparison_error"] = str(err)
            status = retrain.retrain_status(out)
        c = status.get("comparison") or {}
        info["comparison"] = (
            {k: c.get(k) for k in ("before", "after", "delta", "lo", "hi", "n_test")} if c else None
        )
        return info

    @app.post(
        "/api/retrain",
        dependencies=[Depends(need_token)],
        summary="Train again on the corrected manifest, in a separate noisytag process (stages 3-4)",
    )
    def retrain_start():
        _, manifest = (writer or CorrectionsWriter(queue, state)).write()
        try:
            out = retrain.start_retrain(queue.run, manifest, wait=False)
        except (ValueError, OSError) as err:
            raise ReviewError(409, str(err)) from None
        return retrain_info(out)

    @app.get(
        "/api/retrain", summary="The latest retrain: its state and, once done, test lwlrap before and after"
    )
    def retrain_latest():
        dirs = retrain.retrain_dirs(queue.run)
        return retrain_info(dirs[-1]) if dirs else {"state": "none", "comparison": None}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "review.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def serve_review(
    run: str | Path,
    data: str | Path | None = None,
    reviewer: str = "me",
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = False,
    mode: str = "suspect",
    test_truth: str | Path | None = None,
) -> None:
    """Serve the review of ``run`` until interrupted (blocking); ``port`` 0 takes a free one; ``mode``: the
    queue the page opens with; ``test_truth``: see :func:`create_review_app`. The queue is built from the run's audits once; the rest when first asked."""
    run = Path(run)
    queue = ReviewQueue.from_run(run, data)
    log_ = EventLog(run / "review" / "events.jsonl")
    app = create_review_app(queue, log_, reviewer, default_mode=mode, test_truth=test_truth)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle's delay off (TCP_NODELAY) only on such sockets; without it every
    # keep-alive answer sent in two writes waited for the client's delayed ACK (~40 ms on loopback)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host if family == socket.AF_INET else f'[{host}]'}:{sock.getsockname()[1]}/"
    print(f"noisytag review of {run} for reviewer '{reviewer}': {url}  (Ctrl-C stops)", flush=True)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
