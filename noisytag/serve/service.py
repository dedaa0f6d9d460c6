"""The tagging service behind ``noisytag serve``: a run's :class:`~noisytag.infer.tag.Tagger`, loaded once,
tags uploads through ``Tagger.tag``, the entry point of ``noisytag tag``, within the server's limits.

The answer is the :class:`~noisytag.infer.tag.TagRecord` that ``noisytag tag --frames`` makes for the file
(with its log-mel picture), plus the model that answered and the time taken (:class:`TagResponse`).
Uploads are decoded from a temporary file the service names itself; every refusal is an
:class:`UploadError` with an HTTP status and one sentence.

Everything that runs the models (loading them, the warm-up, every request) runs on the service's
inference threads (:func:`inference_threads`). torch gives each thread that calls it its own OpenMP
pool, and once the pools' threads outnumber the cores no pool spin-waits between ops, which makes
every small op several times slower (figures in benchmarks/README.md). So with torch models there is
one inference thread, with all the cores to itself, and requests queue for it. With onnxruntime models (which have their own
thread pool) torch only makes the log-mel: then each of ``max_in_flight`` threads runs torch on
itself alone, with no pool, and requests overlap. The HTTP app (:mod:`noisytag.serve.app`) bounds how
many requests wait.

The service only reads: its settings are the run's ``infer`` config with the arguments given in their
place, and with an onnxruntime backend it loads members that are already exported and current (in
``RUN/onnx``, or the ``onnx_dir`` that ``noisytag serve`` exported them to first; exporting is a build
step this package's runtime never imports).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from noisytag.infer.ensemble import BACKENDS, resolved_infer
from noisytag.infer.tag import Tagger, TagRecord

log = logging.getLogger(__name__)


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


_SCHEMA = {"use_attribute_docstrings": True}  # the API schema's field descriptions: the docstrings below


@dataclass
class ModelInfo:
    """What answered: the run and its ensemble."""

    __pydantic_config__ = _SCHEMA
    run: str
    """Name of the run directory."""
    stages: list[int]
    architectures: list[str]
    members: int
    backend: str
    mode: str
    n_classes: int
    window: int
    """Frames per inference window."""
    sample_rate: int


@dataclass
class TagResponse(TagRecord):
    """The answer of ``POST /api/tag``: the file's record as ``noisytag tag`` makes it, with its timeline
    and log-mel picture, plus the model and the time taken."""

    __pydantic_config__ = _SCHEMA
    model: ModelInfo | None = None
    elapsed_s: float | None = None
    """Server time spent decoding and tagging."""


def undecodable(name: str, reason: str) -> str:
    """The client's sentence for a file that cannot be tagged, from the reason its record gives."""
    if reason.startswith("cannot decode audio"):
        detail = reason.removeprefix("cannot decode audio").strip()
        return f"'{name}' cannot be decoded as WAV, FLAC, OGG or MP3 audio {detail}".strip()
    return f"'{name}' cannot be used as audio: {reason}"


def model_info(tagger: Tagger, run_dir: str | Path) -> ModelInfo:
    """What the API reports about the ensemble (from the members' model.json records the Tagger read)."""
    metas = tagger.ensemble.metas
    return ModelInfo(
        run=Path(run_dir).resolve().name,
        stages=sorted({int(m["stage"]) for m in metas if "stage" in m}),
        architectures=sorted({str(m["arch"]) for m in metas if "arch" in m}),
        members=len(tagger.ensemble.members),
        backend=tagger.cfg.backend,
        mode=tagger.cfg.mode,
        n_classes=len(tagger.classes),
        window=tagger.cfg.window,
        sample_rate=tagger.ensemble.frontend.sample_rate,
    )


def inference_threads(torch_models: bool = True, max_in_flight: int = 1) -> ThreadPoolExecutor:
    """The threads a service runs its models on (see the module's docstring): one with all of torch's
    threads for torch models; ``max_in_flight`` with one torch thread each when torch only makes the
    log-mel (requests then overlap: see benchmarks/README.md for the measured gain).

    The pool's threads are all started here, and torch's default thread count, which setting theirs
    changes, is restored: threads the caller starts later are not affected.
    """
    if torch_models:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="noisytag-infer")
    count, default = max(int(max_in_flight), 1), torch.get_num_threads()
    pool = ThreadPoolExecutor(count, thread_name_prefix="noisytag-infer", initializer=_one_torch_thread)
    everyone = threading.Barrier(count)  # one task per thread: each submit starts a new thread
    for started in [pool.submit(everyone.wait, 60) for _ in range(count)]:
        started.result()
    torch.set_num_threads(default)
    return pool


def _one_torch_thread() -> None:
    torch.get_num_threads()  # torch's per-thread set-up first: it would later reset the count to the default
    torch.set_num_threads(1)


class TagService:
    """A loaded :class:`Tagger` and the server's limits; :meth:`submit` tags an upload on the service's
    inference threads (``worker``; one new thread when not given)."""

    def __init__(
        self,
        tagger: Tagger,
        info: ModelInfo,
        settings: ServeSettings = ServeSettings(),
        worker: ThreadPoolExecutor | None = None,
    ):
        self.tagger = tagger
        self.info = info
        self.settings = settings
        self.worker = worker or inference_threads()

    def submit(
        self, data: bytes, name: str, top_k: int | None = None, timeline: bool = True, logmel: bool = True
    ) -> Future:
        """:meth:`tag_bytes` on an inference thread → a future of its :class:`TagResponse`."""
        return self.worker.submit(self.tag_bytes, data, name, top_k, timeline, logmel)

    def tag_file(
        self,
        path: str | Path,
        name: str,
        top_k: int | None = None,
        timeline: bool = True,
        logmel: bool = True,
    ) -> TagResponse:
        """Tag one audio file (``name``: what the client called it) → the answer, with its per-window
        ``timeline`` and ``logmel`` picture unless switched off; raises :class:`UploadError` for audio
        that is too long or cannot be used."""
        started = time.perf_counter()
        try:  # the header tells the length before anything is decoded
            seconds = sf.info(str(path)).duration
        except Exception:  # undecodable: the record below names the reason
            seconds = 0.0
        if seconds > self.settings.max_seconds:
            raise UploadError(413, self._too_long(seconds))
        k = min(max(int(top_k or self.settings.top_k), 1), len(self.tagger.classes))
        limit = self.settings.max_seconds
        (record,) = self.tagger.tag([path], k, frames=timeline, logmel=logmel, max_seconds=limit)
        if record.error is not None and record.duration is not None:  # decoded, but too long to tag
            raise UploadError(413, self._too_long(record.duration))
        if record.error is not None:
            raise UploadError(422, undecodable(name, record.error.removeprefix(f"{path}: ")))
        fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        elapsed = round(time.perf_counter() - started, 4)
        return TagResponse(**{**fields, "file": name}, model=self.info, elapsed_s=elapsed)

    def _too_long(self, seconds: float) -> str:
        limit = self.settings.max_seconds
        return f"the audio lasts {seconds:.1f} s; this server accepts at most {limit:g} s"

    def tag_bytes(
        self, data: bytes, name: str, top_k: int | None = None, timeline: bool = True, logmel: bool = True
    ) -> TagResponse:
        """Tag an upload held in memory, through a temporary file named by the server (never by the client)."""
        with tempfile.NamedTemporaryFile(prefix="noisytag-upload-", suffix=".audio") as tmp:
            tmp.write(data)
            tmp.flush()
            return self.tag_file(tmp.name, name, top_k, timeline, logmel)

    def warm_up(self) -> None:
        """One 4-s clip through the whole path, so the first client does not pay for lazy initialisation."""
        sr = 22050
        t = np.arange(4 * sr) / sr
        noise = np.random.default_rng(0).standard_normal(t.size)
        y = 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.01 * noise
        with tempfile.NamedTemporaryFile(prefix="noisytag-warmup-", suffix=".wav") as tmp:
            sf.write(tmp.name, y.astype(np.float32), sr, format="WAV")
            self.worker.submit(self.tag_file, tmp.name, "warm-up").result()

    def close(self) -> None:
        """Stop the inference threads (after the queued requests)."""
        self.worker.shutdown()


def open_service(
    run_dir: str | Path,
    backend: str | None = None,
    mode: str | None = None,
    stages: Sequence[int] | None = None,
    archs: Sequence[str] | None = None,
    device: str = "cpu",
    settings: ServeSettings = ServeSettings(),
    warm_up: bool = True,
    batch_size: int | None = None,
    onnx_dir: str | Path | None = None,
) -> TagService:
    """Load the run's ensemble once → a :class:`TagService`; the run directory is only read.

    ``backend``, ``mode``, ``batch_size``: None means the run's config (as for :class:`Tagger`). The
    onnx backends read members exported and current in ``onnx_dir`` (default ``RUN/onnx``): an error
    naming the command otherwise (``noisytag serve`` exports them first).
    """
    given = {"backend": backend, "mode": mode, "batch_size": batch_size}
    chosen = resolved_infer(run_dir, given).cfg.backend  # ConfigError naming the known backends
    onnx = BACKENDS.get(chosen).meta["precision"] is not None
    worker = inference_threads(not onnx, settings.max_in_flight)
    try:  # loaded on an inference thread too: no torch pool is left behind in this one
        tagger = worker.submit(
            Tagger, run_dir, stages, backend, mode, archs, device, batch_size, onnx_dir
        ).result()
    except BaseException:
        worker.shutdown()
        raise
    service = TagService(tagger, model_info(tagger, run_dir), settings, worker)
    if warm_up:
        service.warm_up()
    return service
