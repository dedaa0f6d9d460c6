"""A trained run behind an HTTP API and a web page: ``noisytag serve RUN``.

``POST /api/tag`` takes one audio file (multipart field ``file``, or the raw bytes with an ``audio/*``
content type) and answers the top-k labels, the per-window timeline, a small log-mel image and what
model answered. ``GET /`` is a page (package data in ``noisytag/web/``, nothing loaded from elsewhere)
that uploads files or microphone recordings and draws those answers.

The run's :class:`~noisytag.infer.tag.Tagger` is loaded once and shared by all requests: the members hold no
per-call state, so threads may run them at once. At most ``max_in_flight`` requests decode and infer at
a time; the others wait up to ``wait_seconds`` and then get 503. Uploads are read into memory (the body
is cut off beyond the size limit) and decoded from a temporary file the server names itself. Every bad
upload is a 4xx whose JSON ``detail`` is one sentence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from noisytag import __version__
from noisytag.audio.decode import AudioError
from noisytag.infer.ensemble import select_model_dirs
from noisytag.infer.predict import FileResult, file_clip, iter_window_probs
from noisytag.infer.tag import Tagger, best_labels, timeline
from noisytag.models.weights import read_meta

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers allowed on top of the file limit
LOGMEL_COLUMNS = 600  # the log-mel image is at most this wide (time max-pooled), whatever the length
# Part content types that are certainly not audio; anything else is given to the decoder to judge.
NOT_AUDIO = ("text/", "image/", "application/json", "application/pdf", "application/zip")
RAW_TYPES = ("application/octet-stream", "video/ogg", "video/webm")  # besides audio/*
PAGE_HEADERS = {  # the page may only talk to this server
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class ServeSettings:
    """Limits of one server; the CLI options of ``noisytag serve``."""

    top_k: int = 5
    max_seconds: float = 600.0
    max_mb: float = 100.0
    max_in_flight: int = 4
    wait_seconds: float = 10.0

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


class UploadError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-sentence ``message`` for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------------------------
# response schema (also the OpenAPI documentation)


class LabelProb(BaseModel):
    label: str
    prob: float = Field(description="Clip probability: mean over the ensemble's members and the windows.")


class Window(BaseModel):
    start_s: float = Field(description="Window start in the file, seconds.")
    end_s: float
    label: str = Field(description="The window's most probable label.")
    prob: float


class Timeline(BaseModel):
    classes: list[str] = Field(description="Classes of the `probs` columns: the clip's top-k, best first.")
    windows: list[Window]
    probs: list[list[float]] = Field(description="(windows, classes) probability of each class per window.")


class LogMel(BaseModel):
    png: str = Field(
        description="Base64 8-bit grayscale PNG of the log-mel in dB: row 0 is the highest mel band, "
        "0 = db_min and 255 = db_max; time max-pooled to at most 600 columns."
    )
    width: int
    height: int
    start_s: float = Field(description="File time of column 0 (negative when the clip was padded).")
    seconds_per_column: float
    db_min: float
    db_max: float
    fmin: float
    fmax: float


class ModelInfo(BaseModel):
    run: str = Field(description="Name of the run directory.")
    stages: list[int]
    architectures: list[str]
    members: int
    backend: str
    mode: str
    n_classes: int
    window: int = Field(description="Frames per inference window.")
    sample_rate: int


class TagResponse(BaseModel):
    file: str = Field(description="The uploaded file's name as the client gave it (only echoed).")
    duration: float = Field(description="Seconds of the decoded file.")
    labels: list[LabelProb]
    timeline: Timeline
    logmel: LogMel
    model: ModelInfo
    elapsed_s: float = Field(description="Server time spent decoding and tagging.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="Why the request was refused, in one sentence.")


class Labels(BaseModel):
    classes: list[str]
    count: int


class Health(BaseModel):
    status: str
    version: str
    in_flight: int
    max_in_flight: int
    model: ModelInfo


# ----------------------------------------------------------------------------------------------
# tagging one upload


def png_gray(img: np.ndarray) -> bytes:
    """(H, W) uint8 → an 8-bit grayscale PNG (zlib only: no imaging library needed)."""
    h, w = img.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)  # each row: filter byte 0 ("none"), then the pixels
    raw[:, 1:] = img

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    )


def logmel_image(db: np.ndarray, lo: float, hi: float, max_columns: int = LOGMEL_COLUMNS):
    """(F, T) dB → ((F, C) uint8 image, high bands on top; frames per column), C = ceil(T / frames)."""
    n_mels, n_frames = db.shape
    per = max(math.ceil(n_frames / max_columns), 1)
    cols = math.ceil(n_frames / per)
    padded = np.full((n_mels, cols * per), lo, dtype=np.float32)
    padded[:, :n_frames] = db
    pooled = padded.reshape(n_mels, cols, per).max(axis=2)  # max keeps short events visible
    scaled = (pooled - lo) / max(hi - lo, 1e-6) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)[::-1], per


def undecodable(name: str, reason: str) -> str:
    """The client's sentence for an :class:`~noisytag.audio.decode.AudioError` reason (or an exception name)."""
    if reason.startswith("cannot decode audio"):
        detail = reason.removeprefix("cannot decode audio").strip()
        return f"'{name}' cannot be decoded as WAV, FLAC, OGG or MP3 audio {detail}".strip()
    return f"'{name}' cannot be used as audio: {reason}"


def model_info(tagger: Tagger, run_dir: Path, stages, archs) -> dict:
    """What the API reports about the ensemble (from the members' model.json files)."""
    metas = [read_meta(d) for d in select_model_dirs(run_dir, stages or tagger.cfg.stages, archs)]
    return {
        "run": Path(run_dir).resolve().name,
        "stages": sorted({int(m["stage"]) for m in metas if "stage" in m}),
        "architectures": sorted({str(m["arch"]) for m in metas if "arch" in m}),
        "members": len(tagger.ensemble.members),
        "backend": tagger.cfg.backend,
        "mode": tagger.cfg.mode,
        "n_classes": len(tagger.classes),
        "window": tagger.cfg.window,
        "sample_rate": tagger.ensemble.frontend.sample_rate,
    }


class TagService:
    """A loaded :class:`Tagger` and the server's limits; :meth:`tag_bytes` is safe to call from threads."""

    def __init__(self, tagger: Tagger, info: dict, settings: ServeSettings = ServeSettings()):
        self.tagger = tagger
        self.info = info
        self.settings = settings

    def tag_file(self, path: str | Path, name: str, top_k: int | None = None) -> dict:
        """Tag one audio file → the :class:`TagResponse` fields; raises :class:`UploadError` for bad audio."""
        started = time.perf_counter()
        ens, cfg = self.tagger.ensemble, self.tagger.cfg
        try:  # the header tells the length before anything is decoded
            seconds = sf.info(str(path)).duration
        except Exception:  # undecodable: file_clip below names the reason
            seconds = 0.0
        self._check_length(seconds)
        try:
            clip, duration, offset = file_clip(path, ens.frontend, key=0)
        except AudioError as err:
            raise UploadError(422, undecodable(name, err.reason)) from None
        except Exception as err:  # a decoder or resampler failing on odd input is still the input's fault
            raise UploadError(422, undecodable(name, type(err).__name__)) from None
        self._check_length(duration)
        _, starts, probs = next(iter_window_probs(ens.members, [clip], cfg, ens.normalize))
        result = FileResult(Path(name), duration, offset, starts, probs)
        k = min(max(int(top_k or self.settings.top_k), 1), len(self.tagger.classes))
        labels = best_labels(result.probs, self.tagger.classes, k)
        hop_s = ens.frontend.hop_length / ens.frontend.sample_rate
        windows = timeline(result, self.tagger.classes, hop_s, cfg.window)
        columns = [self.tagger.classes.index(label) for label, _ in labels]
        image, per = logmel_image(clip.db, clip.lo, clip.hi)
        return {
            "file": name,
            "duration": round(duration, 3),
            "labels": [{"label": lab, "prob": p} for lab, p in labels],
            "timeline": {
                "classes": [label for label, _ in labels],
                "windows": [vars(w) for w in windows],
                "probs": np.round(probs[:, columns], 4).tolist(),
            },
            "logmel": {
                "png": base64.b64encode(png_gray(image)).decode("ascii"),
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "start_s": round(offset, 4),
                "seconds_per_column": per * hop_s,
                "db_min": round(clip.lo, 2),
                "db_max": round(clip.hi, 2),
                "fmin": float(ens.frontend.fmin),
                "fmax": float(ens.frontend.fmax or ens.frontend.sample_rate / 2),
            },
            "model": self.info,
            "elapsed_s": round(time.perf_counter() - started, 4),
        }

    def _check_length(self, seconds: float) -> None:
        if seconds > self.settings.max_seconds:
            limit = self.settings.max_seconds
            raise UploadError(
                413, f"the audio lasts {seconds:.1f} s; this server accepts at most {limit:g} s"
            )

    def tag_bytes(self, data: bytes, name: str, top_k: int | None = None) -> dict:
        """Tag an upload held in memory, through a temporary file named by the server (never by the client)."""
        with tempfile.NamedTemporaryFile(prefix="noisytag-upload-", suffix=".audio") as tmp:
            tmp.write(data)
            tmp.flush()
            return self.tag_file(tmp.name, name, top_k)

    def warm_up(self) -> None:
        """One 4-s clip through the whole path, so the first client does not pay for lazy initialisation."""
        sr = 22050
        t = np.arange(4 * sr) / sr
        noise = np.random.default_rng(0).standard_normal(t.size)
        y = 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.01 * noise
        with tempfile.NamedTemporaryFile(prefix="noisytag-warmup-", suffix=".wav") as tmp:
            sf.write(tmp.name, y.astype(np.float32), sr, format="WAV")
            self.tag_file(tmp.name, "warm-up")


def open_service(
    run_dir: str | Path,
    backend: str = "torch",
    mode: str = "exact",
    stages: Sequence[int] | None = None,
    archs: Sequence[str] | None = None,
    device: str = "cpu",
    settings: ServeSettings = ServeSettings(),
    warm_up: bool = True,
) -> TagService:
    """Load the run's ensemble once (exporting ONNX first when the backend needs it) → a :class:`TagService`."""
    if backend not in ("torch", "onnx"):
        raise ValueError(f"unknown backend '{backend}' (expected torch or onnx)")
    if mode not in ("exact", "fast"):
        raise ValueError(f"unknown inference mode '{mode}' (expected exact or fast)")
    tagger = Tagger(run_dir, stages, backend=backend, mode=mode, archs=archs, device=device)
    service = TagService(tagger, model_info(tagger, Path(run_dir), stages, archs), settings)
    if warm_up:
        service.warm_up()
    return service


# ----------------------------------------------------------------------------------------------
# the HTTP layer


class BodyTooLarge(Exception):
    """Raised from the ASGI receive channel once a request body passes the limit (answered as 413)."""


class BodyLimit:
    """ASGI middleware: count request body bytes; past ``max_bytes`` drain up to as much again (so the
    client gets to read the 413 instead of a reset connection) and raise :class:`BodyTooLarge`."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    drained = 0
                    while message.get("more_body") and drained < self.max_bytes:
                        message = await receive()
                        drained += len(message.get("body", b""))
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


class Gate:
    """At most ``limit`` requests tagging at once; a request that cannot start within ``wait_s`` gets 503."""

    def __init__(self, limit: int, wait_s: float):
        self.limit = max(int(limit), 1)
        self.wait_s = max(float(wait_s), 0.0)
        self.in_flight = 0
        self._sem = asyncio.Semaphore(self.limit)

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._sem.locked():
            try:
                await asyncio.wait_for(self._sem.acquire(), self.wait_s)
            except asyncio.TimeoutError:
                busy = f"the server is busy ({self.limit} requests in flight); retry in a moment"
                raise UploadError(503, busy) from None
        else:
            await self._sem.acquire()  # free: returns without suspending, so no other task slips in
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._sem.release()


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and client-given name, from a multipart form or a raw audio body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise UploadError(400, "the form has no file field named 'file'")
            name = Path(upload.filename or "upload").name[:200] or "upload"
            part_type = (upload.content_type or "").split(";")[0].strip().lower()
            if part_type.startswith(NOT_AUDIO):
                raise UploadError(
                    415, f"'{name}' is not an audio file ({part_type}); send WAV, FLAC, OGG or MP3"
                )
            data = await upload.read()
        finally:
            await form.close()
    elif ctype.startswith("audio/") or ctype in RAW_TYPES:
        data = await request.body()
        name = Path(request.query_params.get("filename") or "upload").name[:200] or "upload"
    elif not ctype and not await request.body():
        raise UploadError(400, "the request has no body; send an audio file")
    else:
        raise UploadError(
            415,
            f"content type '{ctype or 'none'}' is not accepted; send a multipart form with the field "
            "'file', or the raw bytes with an audio/* content type",
        )
    if not data:
        raise UploadError(400, f"the upload '{name}' is empty (0 bytes)")
    if len(data) > max_bytes:
        raise UploadError(
            413, f"the upload is {_mb(len(data))}; this server accepts at most {_mb(max_bytes)}"
        )
    return data, name


BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "One audio file (WAV, FLAC, OGG or MP3): a multipart form field `file`, or the raw "
        "bytes with an `audio/*` (or application/octet-stream) content type and an optional `filename` query.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "audio/*": BINARY,
            "application/octet-stream": BINARY,
        },
    }
}
ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Empty upload, or no field 'file'.",
        413: "Upload too large, or audio too long.",
        415: "Not audio.",
        422: "Undecodable audio, or invalid parameters.",
        503: "Too many requests in flight; retry.",
    }.items()
}


def create_app(service: TagService) -> FastAPI:
    """The FastAPI application around a loaded :class:`TagService` (one per server process)."""
    settings = service.settings
    gate = Gate(settings.max_in_flight, settings.wait_seconds)
    app = FastAPI(
        title="noisytag",
        version=__version__,
        description="Multi-label audio tagging with a trained noisytag run. The page at / uses this API.",
    )
    app.state.service, app.state.gate = service, gate
    app.add_middleware(BodyLimit, max_bytes=settings.max_bytes + FORM_OVERHEAD)

    @app.exception_handler(UploadError)
    async def _refused(request: Request, err: UploadError):
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse({"detail": err.message}, status_code=err.status, headers=headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, err: BodyTooLarge):
        detail = f"the upload is over {_mb(settings.max_bytes)}, the most this server accepts"
        return JSONResponse({"detail": detail}, status_code=413)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        parts = [f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in err.errors()]
        return JSONResponse({"detail": "invalid request (" + "; ".join(parts) + ")"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("error while answering %s", request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    @app.post(
        "/api/tag",
        response_model=TagResponse,
        responses=ERRORS,
        openapi_extra=REQUEST_BODY,
        summary="Tag one audio file",
    )
    async def tag_audio(
        request: Request,
        top_k: int | None = Query(None, ge=1, description="Labels to return (default: the server's)."),
    ):
        """Top-k labels, per-window probabilities of those labels, and the clip's log-mel image."""
        data, name = await read_upload(request, settings.max_bytes)
        async with gate.slot():
            return await run_in_threadpool(service.tag_bytes, data, name, top_k)

    @app.get("/api/labels", response_model=Labels, summary="The classes the model knows")
    async def labels():
        return {"classes": service.tagger.classes, "count": len(service.tagger.classes)}

    @app.get("/api/health", response_model=Health, summary="Liveness, load and model")
    async def health():
        busy = {"in_flight": gate.in_flight, "max_in_flight": gate.limit}
        return {"status": "ok", "version": __version__, **busy, "model": service.info}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread (tests, benchmarks); yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
