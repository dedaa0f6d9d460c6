"""Apply a trained run to anyone's audio: top-k labels per file (with an optional per-window timeline and
log-mel picture), or a submission CSV for a folder of clips.

``Tagger(run_dir).tag(paths)`` is the one tagging entry: it returns a :class:`TagRecord` per file, which the
CLI prints as a rich table, JSON or CSV (:func:`to_json`, :func:`to_csv`, :func:`to_table`) and ``noisytag
serve`` answers as JSON (the same record, plus the model and the time taken). Folders are expanded
recursively to supported audio files; a file that cannot be decoded becomes a record with ``error`` set,
and the other files are still tagged. :func:`predict_run` writes the submission of a test folder.

The Tagger only reads: its settings are the run's ``infer`` config with the arguments given in their place
(:func:`noisytag.infer.ensemble.resolved_infer`), and with an onnxruntime backend it loads members that
``noisytag.infer.build.ensure_onnx`` (a build step the commands run first) left current.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from noisytag.audio.decode import audio_files
from noisytag.audio.image import gray_image, png_gray
from noisytag.audio.model_input import check_normalize
from noisytag.config import FrontendConfig, InferConfig
from noisytag.data.dataset import SUBMISSION
from noisytag.data.manifest import is_manifest, load_manifest
from noisytag.infer.ensemble import load_ensemble, resolved_infer, run_infer_config
from noisytag.infer.predict import FileResult, iter_files, predict_files
from noisytag.infer.submission import write_submission

# The records below are also the HTTP API's schema (noisytag serve): field descriptions come from the
# docstrings under the fields.
_SCHEMA = {"use_attribute_docstrings": True}


@dataclass
class Label:
    """One of a file's top labels."""

    __pydantic_config__ = _SCHEMA
    label: str
    prob: float
    """Clip probability: mean over the ensemble's members and the clip's windows."""


@dataclass
class Segment:
    """One inference window: file time span, its top label and probability."""

    __pydantic_config__ = _SCHEMA
    start_s: float
    """Window start in the file, seconds."""
    end_s: float
    label: str
    """The window's most probable label."""
    prob: float


@dataclass
class Timeline:
    """A file window by window: each window's span and top label, and each top label's probability."""

    __pydantic_config__ = _SCHEMA
    classes: list[str]
    """Classes of the ``probs`` columns: the file's top labels, best first."""
    windows: list[Segment]
    probs: list[list[float]]
    """(windows, classes) probability of each class per window."""


@dataclass
class LogMelImage:
    """The clip's log-mel as a picture, placed in file time."""

    __pydantic_config__ = _SCHEMA
    png: str
    """Base64 8-bit grayscale PNG of the log-mel in dB: row 0 is the highest mel band, 0 = db_min and
    255 = db_max; time max-pooled to at most 600 columns."""
    width: int
    height: int
    start_s: float
    """File time of column 0 (negative when the clip was padded)."""
    seconds_per_column: float
    db_min: float
    db_max: float
    fmin: float
    fmax: float


@dataclass
class TagRecord:
    """Tags of one file: ``labels`` best first; ``timeline`` and ``logmel`` only when asked for."""

    __pydantic_config__ = _SCHEMA
    file: str
    """The file as given (the API: the uploaded file's name as the client gave it, only echoed)."""
    duration: float | None = None
    """Seconds of the decoded file."""
    labels: list[Label] = field(default_factory=list)
    timeline: Timeline | None = None
    logmel: LogMelImage | None = None
    error: str | None = None
    """Why the file could not be tagged (one line, starting with the file)."""

    def to_dict(self) -> dict:
        """JSON-ready fields; ``timeline`` and ``logmel`` are left out when they were not asked for."""
        out = dataclasses.asdict(self)
        for key in ("timeline", "logmel"):
            if out[key] is None:
                out.pop(key)
        return out


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders → their supported audio files (recursive, sorted). Order kept, no repeats."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        for f in audio_files(p, recursive=True) if p.is_dir() else [p]:
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


def best_labels(probs: np.ndarray, classes: Sequence[str], k: int) -> list[Label]:
    """(K,) probabilities → the k best labels with their probabilities, ties broken by class order."""
    order = np.argsort(-probs, kind="stable")[: max(int(k), 0)]
    return [Label(classes[i], round(float(probs[i]), 6)) for i in order]


def timeline(
    result: FileResult, classes: Sequence[str], labels: Sequence[Label], hop_seconds: float, width: int
) -> Timeline:
    """Per-window span in file seconds (see ``FileResult.offset``), top label, and the probabilities of
    the file's top ``labels``."""
    segments = []
    for start, probs in zip(result.starts, result.window_probs, strict=True):
        best = int(np.argmax(probs))
        t0 = max(result.offset + start * hop_seconds, 0.0)
        t1 = min(result.offset + (start + width) * hop_seconds, max(result.duration, t0))
        segments.append(Segment(round(t0, 3), round(t1, 3), classes[best], round(float(probs[best]), 6)))
    columns = [list(classes).index(lab.label) for lab in labels]
    probs = np.round(result.window_probs[:, columns], 4).tolist()
    return Timeline([lab.label for lab in labels], segments, probs)


def logmel_image(result: FileResult, frontend: FrontendConfig) -> LogMelImage:
    """The picture of a result's clip (``iter_files(…, keep_clips=True)``)."""
    clip = result.clip
    image, per = gray_image(clip.db, clip.lo, clip.hi)
    return LogMelImage(
        png=base64.b64encode(png_gray(image)).decode("ascii"),
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        start_s=round(result.offset, 4),
        seconds_per_column=per * frontend.hop_length / frontend.sample_rate,
        db_min=round(clip.lo, 2),
        db_max=round(clip.hi, 2),
        fmin=float(frontend.fmin),
        fmax=float(frontend.fmax or frontend.sample_rate / 2),
    )


class Tagger:
    """A run's ensemble ready to tag audio files.

    ``stages``/``archs`` choose the members (default: the run's ensemble, all architectures);
    ``backend`` torch, onnx or onnx-int8; ``mode`` exact (SPEC §7 windows) or fast (body once per clip);
    ``batch_size`` windows per forward. None (the default) means the run's config; ``settings`` says
    where each value came from. ``onnx_dir``: where the onnx backends read the members (default
    ``RUN_DIR/onnx``); missing or stale members are an error naming the command that exports them.
    """

    def __init__(
        self,
        run_dir: str | Path,
        stages: Sequence[int] | None = None,
        backend: str | None = None,
        mode: str | None = None,
        archs: Sequence[str] | None = None,
        device: str = "cpu",
        batch_size: int | None = None,
        onnx_dir: str | Path | None = None,
    ):
        given = {"stages": stages or None, "backend": backend, "mode": mode, "batch_size": batch_size or None}
        self.settings = resolved_infer(run_dir, given)
        self.cfg = self.settings.cfg
        self.device = device
        self.ensemble = load_ensemble(run_dir, stages, archs, device, self.cfg.backend, onnx_dir)
        check_normalize(self.ensemble.normalize)
        self.classes = self.ensemble.classes

    def tag(
        self,
        paths: Sequence[str | Path],
        top_k: int = 5,
        frames: bool = False,
        progress: bool = False,
        logmel: bool = False,
        max_seconds: float | None = None,
    ) -> list[TagRecord]:
        """Tag files and folders → one record per file (errors included), in input order.

        ``frames``: fill each record's ``timeline``; ``logmel``: its log-mel picture. ``max_seconds``:
        longer files are decoded but not tagged (their record has the duration and an error).
        """
        ens = self.ensemble
        files = expand_paths(paths)
        hop_seconds = ens.frontend.hop_length / ens.frontend.sample_rate
        results = iter_files(
            ens.members,
            files,
            self.cfg,
            ens.frontend,
            ens.normalize,
            progress,
            keep_clips=logmel,
            max_seconds=max_seconds,
        )
        records = []
        for res in results:
            if res.error is not None:
                duration = round(res.duration, 3) if res.duration else None
                records.append(TagRecord(str(res.path), duration, error=res.error))
                continue
            labels = best_labels(res.probs, self.classes, top_k)
            record = TagRecord(str(res.path), round(res.duration, 3), labels)
            if frames:
                record.timeline = timeline(res, self.classes, labels, hop_seconds, self.cfg.window)
            if logmel:
                record.logmel = logmel_image(res, ens.frontend)
            records.append(record)
        return records


def predict_run(
    run_dir: str | Path,
    test_dir: str | Path,
    out_csv: str | Path,
    stages=None,
    archs=None,
    cfg: InferConfig | None = None,
    device: str = "cpu",
    progress: bool = False,
    onnx_dir: str | Path | None = None,
):
    """Predict every audio file of ``test_dir`` (or every test clip of a manifest) with the run's
    ensemble and write the submission.

    Returns ``(frame, failures)``. Column order: ``test_dir/../sample_submission.csv`` when present,
    else the models' class order. Unreadable files are reported (logging) and get all-zero rows so the
    submission still lists every file. A manifest's clips are named by their ``path`` as written.
    ``onnx_dir``: where an onnx backend reads the members (default ``RUN_DIR/onnx``).
    """
    cfg = cfg or run_infer_config(run_dir)
    ens = load_ensemble(run_dir, stages, archs, device, cfg.backend, onnx_dir)
    test_dir = Path(test_dir)
    sample = test_dir.parent / SUBMISSION
    if is_manifest(test_dir) and test_dir.suffix.lower() == ".csv":
        table = load_manifest(test_dir, skip_invalid=True, splits=("test",)).test
        paths, fnames, sample = [Path(p) for p in table["path"]], list(table["fname"]), None
    else:
        paths = audio_files(test_dir, recursive=True)
        fnames = [str(p.relative_to(test_dir)) if test_dir.is_dir() else p.name for p in paths]
    if not paths:
        raise FileNotFoundError(f"{test_dir}: no audio files")
    result = predict_files(ens.members, paths, cfg, ens.frontend, ens.normalize, device, progress)
    probs = np.nan_to_num(result.probs, nan=0.0)
    frame = write_submission(
        out_csv, fnames, probs, ens.classes, sample if sample and sample.is_file() else None
    )
    return frame, result.failures


# ----------------------------------------------------------------------------------------------
# output formats


def to_json(records: Sequence[TagRecord]) -> str:
    """A JSON list with one object per file (file, duration, labels [{label, prob}], timeline?, logmel?,
    error): :meth:`TagRecord.to_dict`."""
    return json.dumps([r.to_dict() for r in records], indent=2)


def to_csv(records: Sequence[TagRecord], frames: bool = False) -> str:
    """Long CSV: ``file,duration,rank,label,prob,error`` (one row per top label; failed files one row).

    With ``frames``: ``file,start_s,end_s,label,prob`` per window instead.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if frames:
        writer.writerow(["file", "start_s", "end_s", "label", "prob", "error"])
        for r in records:
            if r.error is not None:
                writer.writerow([r.file, "", "", "", "", r.error])
            for s in r.timeline.windows if r.timeline else []:
                writer.writerow([r.file, s.start_s, s.end_s, s.label, s.prob, ""])
        return buf.getvalue()
    writer.writerow(["file", "duration", "rank", "label", "prob", "error"])
    for r in records:
        if r.error is not None:
            writer.writerow([r.file, "", "", "", "", r.error])
        for rank, lab in enumerate(r.labels, 1):
            writer.writerow([r.file, r.duration, rank, lab.label, lab.prob, ""])
    return buf.getvalue()


def to_table(records: Sequence[TagRecord], frames: bool = False):
    """A rich Table: file, duration, top labels with probabilities (and the timeline when asked)."""
    table = Table(show_lines=frames, title="noisytag")
    table.add_column("file", overflow="fold")
    table.add_column("seconds", justify="right")
    table.add_column("top labels")
    if frames:
        table.add_column("timeline (start–end s: label p)")
    for r in records:
        if r.error is not None:
            row = [r.file, "", f"[red]error:[/] {r.error}"]
        else:
            row = [r.file, f"{r.duration:.1f}", "\n".join(f"{lab.prob:.3f}  {lab.label}" for lab in r.labels)]
        if frames:
            row.append(
                "\n".join(
                    f"{s.start_s:6.1f}–{s.end_s:6.1f}: {s.label} {s.prob:.2f}"
                    for s in (r.timeline.windows if r.timeline else [])
                )
            )
        table.add_row(*row)
    return table
