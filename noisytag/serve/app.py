"""The HTTP side of ``noisytag serve``: the FastAPI app around a :class:`~noisytag.serve.service.TagService`.

``POST /api/tag`` takes one audio file (multipart field ``file``, or the raw bytes with an ``audio/*``
content type) and answers the service's :class:`~noisytag.serve.service.TagResponse`: the record of
``noisytag tag`` (top-k labels, per-window timeline, a small log-mel picture) plus the model and the time.
``GET /`` is a page (package data in ``web/``, nothing loaded from elsewhere) that uploads files or
microphone recordings and draws those answers.

At most ``max_in_flight`` requests are admitted at a time (they queue for the service's inference
threads); the others wait up to ``wait_seconds`` and then get 503. Uploads are read into memory (the
body is cut off beyond the size limit). Every bad upload is a 4xx whose JSON ``detail`` is one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from noisytag import __version__
from noisytag.serve.service import ModelInfo, TagResponse, TagService, UploadError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers allowed on top of the file limit
# Part content types that are certainly not audio; anything else is given to the decoder to judge.
NOT_AUDIO = ("text/", "image/", "application/json", "application/pdf", "application/zip")
RAW_TYPES = ("application/octet-stream", "video/ogg", "video/webm")  # besides audio/*
PAGE_HEADERS = {  # the page may only talk to this server
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


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


def one_line_errors(app: FastAPI) -> None:
    """Invalid requests (422) and anything unexpected (500, logged) answer one sentence, never a traceback;
    shared by the tagging and the review servers."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        parts = [f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in err.errors()]
        return JSONResponse({"detail": "invalid request (" + "; ".join(parts) + ")"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("error while answering %s", request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


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

    one_line_errors(app)

    @app.post(
        "/api/tag",
        response_model=TagResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra=REQUEST_BODY,
        summary="Tag one audio file",
    )
    async def tag_audio(
        request: Request,
        top_k: int | None = Query(None, ge=1, description="Labels to return (default: the server's)."),
        timeline: bool = Query(True, description="Include the per-window probabilities of those labels."),
        logmel: bool = Query(True, description="Include the clip's log-mel picture (about 40 KB)."),
    ):
        """Top-k labels, per-window probabilities of those labels, and the clip's log-mel image
        (``timeline=false`` / ``logmel=false`` leave those out: a lighter answer for scripts)."""
        data, name = await read_upload(request, settings.max_bytes)
        async with gate.slot():
            return await asyncio.wrap_future(service.submit(data, name, top_k, timeline, logmel))

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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # see serve_review
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
