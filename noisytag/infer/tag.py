"""Apply a trained run to anyone's audio: top-k labels per file (with an optional per-window timeline),
or a submission CSV for a folder of clips.

``Tagger(run_dir).tag(paths)`` returns plain :class:`TagRecord` objects; the CLI prints them as a rich
table, JSON or CSV (:func:`to_json`, :func:`to_csv`, :func:`to_table`). Folders are expanded
recursively to supported audio files; a file that cannot be decoded becomes a record with ``error``
set, and the other files are still tagged. :func:`predict_run` writes the submission of a test folder.
"""

from __future__ import annotations

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
from noisytag.config import InferConfig
from noisytag.data.manifest import is_manifest, load_manifest
from noisytag.infer.ensemble import Ensemble, load_ensemble, run_infer_config, select_model_dirs
from noisytag.infer.export import refresh_onnx
from noisytag.infer.predict import FileResult, iter_files, predict_files
from noisytag.infer.submission import write_submission


@dataclass
class Segment:
    """One inference window: file time span, its top label and probability."""

    start_s: float
    end_s: float
    label: str
    prob: float


@dataclass
class TagRecord:
    """Tags of one file. ``labels``: top-k (label, probability), best first; ``timeline``: per window."""

    file: str
    duration: float | None = None
    labels: list[tuple[str, float]] = field(default_factory=list)
    timeline: list[Segment] | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["labels"] = [{"label": lab, "prob": p} for lab, p in self.labels]
        if self.timeline is None:
            out.pop("timeline")
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


def best_labels(probs: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """(K,) probabilities → the k best (label, probability) pairs, ties broken by class order."""
    order = np.argsort(-probs, kind="stable")[: max(int(k), 0)]
    return [(classes[i], round(float(probs[i]), 6)) for i in order]


def timeline(result: FileResult, classes: Sequence[str], hop_seconds: float, width: int) -> list[Segment]:
    """Per-window (start, end, top label, probability) in file seconds (see ``FileResult.offset``)."""
    segments = []
    for start, probs in zip(result.starts, result.window_probs, strict=True):
        best = int(np.argmax(probs))
        t0 = max(result.offset + start * hop_seconds, 0.0)
        t1 = min(result.offset + (start + width) * hop_seconds, max(result.duration, t0))
        segments.append(Segment(round(t0, 3), round(t1, 3), classes[best], round(float(probs[best]), 6)))
    return segments


def open_ensemble(
    run_dir: str | Path, stages=None, archs=None, device: str = "cpu", backend: str = "torch"
) -> Ensemble:
    """:func:`~noisytag.infer.ensemble.load_ensemble`; with the onnx backend the members are exported to
    ``RUN_DIR/onnx`` first when they are missing there or stale (once per set of weights)."""
    if backend == "onnx":
        refresh_onnx(run_dir, select_model_dirs(run_dir, stages, archs))
    return load_ensemble(run_dir, stages, archs, device, backend)


class Tagger:
    """A run's ensemble ready to tag audio files.

    ``stages``/``archs`` choose the members (default: the run's infer.stages, all architectures);
    ``backend`` torch or onnx; ``mode`` exact (SPEC §7 windows) or fast (body once per clip).
    """

    def __init__(
        self,
        run_dir: str | Path,
        stages: Sequence[int] | None = None,
        backend: str = "torch",
        mode: str = "exact",
        archs: Sequence[str] | None = None,
        device: str = "cpu",
        batch_size: int | None = None,
    ):
        cfg = run_infer_config(run_dir)
        changes = {"backend": backend, "mode": mode}
        if batch_size:
            changes["batch_size"] = int(batch_size)
        self.cfg = dataclasses.replace(cfg, **changes)
        self.device = device
        self.ensemble = open_ensemble(run_dir, stages or cfg.stages, archs, device, backend)
        self.classes = self.ensemble.classes

    def tag(
        self, paths: Sequence[str | Path], top_k: int = 5, frames: bool = False, progress: bool = False
    ) -> list[TagRecord]:
        """Tag files and folders → one record per file (errors included), in input order."""
        ens = self.ensemble
        files = expand_paths(paths)
        hop_seconds = ens.frontend.hop_length / ens.frontend.sample_rate
        records = []
        for res in iter_files(ens.members, files, self.cfg, ens.frontend, ens.normalize, progress):
            if res.error is not None:
                records.append(TagRecord(str(res.path), error=res.error))
                continue
            record = TagRecord(
                str(res.path), round(res.duration, 3), best_labels(res.probs, self.classes, top_k)
            )
            if frames:
                record.timeline = timeline(res, self.classes, hop_seconds, self.cfg.window)
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
):
    """Predict every audio file of ``test_dir`` (or every test clip of a manifest) with the run's
    ensemble and write the submission.

    Returns ``(frame, failures)``. Column order: ``test_dir/../sample_submission.csv`` when present,
    else the models' class order. Unreadable files are reported (logging) and get all-zero rows so the
    submission still lists every file. A manifest's clips are named by their ``path`` as written.
    """
    cfg = cfg or run_infer_config(run_dir)
    ens = open_ensemble(run_dir, stages or cfg.stages, archs, device, cfg.backend)
    test_dir = Path(test_dir)
    sample = test_dir.parent / "sample_submission.csv"
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
    """A JSON list with one object per file (file, duration, labels [{label, prob}], timeline?, error)."""
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
            for s in r.timeline or []:
                writer.writerow([r.file, s.start_s, s.end_s, s.label, s.prob, ""])
        return buf.getvalue()
    writer.writerow(["file", "duration", "rank", "label", "prob", "error"])
    for r in records:
        if r.error is not None:
            writer.writerow([r.file, "", "", "", "", r.error])
        for rank, (label, prob) in enumerate(r.labels, 1):
            writer.writerow([r.file, r.duration, rank, label, prob, ""])
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
            row = [r.file, f"{r.duration:.1f}", "\n".join(f"{p:.3f}  {lab}" for lab, p in r.labels)]
        if frames:
            row.append(
                "\n".join(
                    f"{s.start_s:6.1f}–{s.end_s:6.1f}: {s.label} {s.prob:.2f}" for s in r.timeline or []
                )
            )
        table.add_row(*row)
    return table
