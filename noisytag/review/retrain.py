"""Close the loop: train again on the corrected manifest, as its own ``noisytag`` process, and compare.

:func:`start_retrain` launches ``python -m noisytag pipeline MANIFEST -o RUN/review/retrain-k -c
RUN/config.yaml --keep-stages-from RUN``: stages 1-2 are kept from RUN (their fold models, out-of-fold rows
re-indexed by clip: valid because every clip keeps its fold; see ``noisytag.runs.warmstart``), stages 3-4
train again, warm-started from the kept stage 2. ``whole=True`` trains every stage. The review server
imports no training code: this module only starts a subprocess and reads files.

A retrain directory is an ordinary run directory, plus::

    manifest.csv, classes.txt   the corrected manifest as it was when the retrain started (absolute paths),
                                so later review decisions never change a running retrain's data set
    retrain.json                the request: source run, manifest and its sha256, whole, command, pid,
                                started, and the exit code once the process has ended
    retrain.log                 the process's stdout and stderr
    comparison.json             :func:`write_comparison`: test lwlrap before / after with its interval
    per_class_change.csv        per-class lwlrap before / after

:func:`compare` scores a run before and after against the test truth with a paired bootstrap interval over
the test clips (:mod:`noisytag.bootstrap`), per class, and tabulates what was given versus what the
reviewers set (``RUN/review/corrections.csv``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from noisytag.bootstrap import paired_bootstrap
from noisytag.data.dataset import parse_labels, read_truth
from noisytag.data.manifest import CLASSES_FILE, load_data
from noisytag.fileio import write_csv, write_json
from noisytag.metrics import lwlrap, per_class_lwlrap
from noisytag.rundir import RunDir

__all__ = [
    "RetrainError",
    "compare",
    "label_changes",
    "manifest_hash",
    "retrain_dirs",
    "retrain_status",
    "start_retrain",
    "write_comparison",
]

REVIEW = "review"
RETRAIN_INFO = "retrain.json"
RETRAIN_LOG = "retrain.log"
COMPARISON = "comparison.json"
PER_CLASS_CHANGE = "per_class_change.csv"
_NAME = re.compile(r"^retrain-(\d+)$")
_LOG_TAIL = 20


class RetrainError(ValueError):
    """A retrain cannot start or be compared; the message names the file."""


def manifest_hash(path: str | Path) -> str:
    """sha256 of the manifest's bytes (and of classes.txt beside it): a retrain is resumed only for the
    same corrected data set."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes())
    classes = path.parent / CLASSES_FILE
    if classes.is_file():
        digest.update(b"\0" + classes.read_bytes())
    return digest.hexdigest()


def retrain_dirs(run: str | Path) -> list[Path]:
    """``RUN/review/retrain-k`` directories, k ascending."""
    review = Path(run) / REVIEW
    found = [
        (int(m.group(1)), p) for p in review.glob("retrain-*") if (m := _NAME.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (and, where /proc tells, is a noisytag process, not a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{int(pid)}/cmdline")
    with contextlib.suppress(OSError):
        text = cmdline.read_bytes()
        if b"noisytag" not in text:
            return False
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has ended
    return True


def _finished(out: Path) -> bool:
    return (out / "submission.csv").is_file() and "finished" in RunDir(out).info()


def retrain_status(out: str | Path) -> dict:
    """Where a retrain stands: ``state`` running | done | failed | not started, from retrain.json, the
    process and the run files; with the exit code, the stages finished, the run's test lwlrap when it
    has one, the log's last lines and (failed) its last error line."""
    out = Path(out)
    info = _read_json(out / RETRAIN_INFO)
    log_path = out / RETRAIN_LOG
    tail = log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL:] if log_path.is_file() else []
    code = info.get("returncode")
    if not info:
        state = "not started"
    elif code is None and _alive(info.get("pid")):
        state = "running"
    elif (code == 0 or code is None) and _finished(out):
        state = "done"
    else:
        state = "failed"
    stages = sorted(
        f"{d.parent.name}/{d.name}"
        for d in out.glob("*/stage*")
        if (folds := list(d.glob("fold*"))) and all((f / "done").is_file() for f in folds)
    )  # every fold of the stage finished
    status = {"run": str(out), "state": state, "returncode": code, "pid": info.get("pid"),
              "whole": info.get("whole"), "started": info.get("started"), "ended": info.get("ended"),
              "stages_done": stages, "log_tail": tail}  # fmt: skip
    if state == "failed":
        errors = [line for line in tail if "error" in line.lower() or line.startswith("Traceback")]
        status["error"] = (errors or tail or ["no log"])[-1].strip()
    comparison = _read_json(out / COMPARISON)
    if comparison:
        status["comparison"] = comparison
    return status


def _snapshot(manifest: Path, out: Path) -> Path:
    """Copy the manifest into the retrain directory with absolute paths (and classes.txt beside it)."""
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        raise RetrainError(f"{manifest}: not a manifest (no 'path' column)")
    base = manifest.parent
    frame["path"] = [
        str(p if Path(p).is_absolute() else (base / p).resolve()) if p else p for p in frame["path"]
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "manifest.csv", frame)
    classes = base / CLASSES_FILE
    if classes.is_file():
        shutil.copyfile(classes, out / CLASSES_FILE)
    return out / "manifest.csv"


def _pick(run: Path, digest: str, whole: bool) -> tuple[Path, bool]:
    """(retrain directory, already running): an unfinished one of the same manifest and kind, else the next k."""
    dirs = retrain_dirs(run)
    for out in dirs:
        info = _read_json(out / RETRAIN_INFO)
        if info.get("manifest_sha256") == digest and bool(info.get("whole")) == whole:
            state = retrain_status(out)["state"]
            if state in ("running", "failed", "not started"):
                return out, state == "running"
    k = max((int(_NAME.match(p.name).group(1)) for p in dirs), default=0) + 1
    return run / REVIEW / f"retrain-{k}", False


def _command(run: Path, manifest: Path, out: Path, whole: bool) -> list[str]:
    cmd = [sys.executable, "-m", "noisytag", "pipeline", str(manifest), "-o", str(out),
           "-c", str(run / "config.yaml"), "--no-progress"]  # fmt: skip
    saved = yaml.safe_load((run / "config.yaml").read_text()) or {}
    if not (saved.get("data") or {}).get("cache_dir"):  # one feature cache for every retrain of this review
        cmd += ["--set", f"data.cache_dir={run.resolve() / REVIEW / '.noisytag-cache'}"]
    if not whole:
        cmd += ["--keep-stages-from", str(run)]
    return cmd


def _record_end(out: Path, proc: subprocess.Popen) -> int:
    code = proc.wait()
    info = _read_json(out / RETRAIN_INFO)
    info.update(returncode=code, ended=time.strftime("%Y-%m-%d %H:%M:%S"), ended_s=time.time())
    write_json(out / RETRAIN_INFO, info)
    return code


def start_retrain(run: str | Path, manifest: str | Path, whole: bool = False, wait: bool = True) -> Path:
    """Train on the corrected ``manifest`` in ``RUN/review/retrain-k`` as a separate process → that directory.

    Picks the next k, or resumes an unfinished retrain of the same manifest (sha256) and kind (a running one
    is returned as it is). Stages 1-2 are kept from ``run`` and stages 3-4 trained, unless ``whole``.
    ``wait``: return once the process has ended (else at once; a thread records its exit code in
    retrain.json). Read the outcome with :func:`retrain_status`.
    """
    run, manifest = Path(run).resolve(), Path(manifest).resolve()
    if not (run / "config.yaml").is_file():
        raise RetrainError(f"{run}: not a run directory (no config.yaml)")
    if not manifest.is_file():
        raise RetrainError(f"{manifest}: no corrected manifest (review some clips first)")
    digest = manifest_hash(manifest)
    out, running = _pick(run, digest, whole)
    if running:
        return out
    info = _read_json(out / RETRAIN_INFO)
    snapshot = out / "manifest.csv"
    if not snapshot.is_file():
        snapshot = _snapshot(manifest, out)
    cmd = _command(run, snapshot, out, whole)
    info.update(source=str(run), manifest=str(manifest), manifest_sha256=digest, whole=whole, command=cmd,
                started=time.strftime("%Y-%m-%d %H:%M:%S"), started_s=time.time(), pid=None, returncode=None,
                ended=None, ended_s=None)  # fmt: skip
    write_json(out / RETRAIN_INFO, info)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out / RETRAIN_LOG, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    info["pid"] = proc.pid
    write_json(out / RETRAIN_INFO, info)
    if wait:
        _record_end(out, proc)
    else:
        threading.Thread(
            target=_record_end, args=(out, proc), daemon=True, name=f"retrain {out.name}"
        ).start()
    return out


# ----------------------------------------------------------------------------------------------
# before / after


def _test_paths(run: RunDir) -> tuple[dict[str, str], pd.DataFrame]:
    """A run's test clips: fname → resolved audio path, and its data set's test table (with ``truth``
    when the data set has it)."""
    data_dir = run.info().get("data_dir")
    if not data_dir or not Path(data_dir).exists():
        raise RetrainError(f"{run.run_info}: the run's data set {data_dir} is not there (data_dir)")
    test = load_data(data_dir, skip_invalid=True, splits=("test",)).test
    paths = [str(Path(p).resolve()) for p in test["path"]]
    return dict(zip(test["fname"].astype(str), paths, strict=True)), test.assign(resolved=paths)


def _scores(run: RunDir, paths: dict[str, str]) -> pd.DataFrame:
    """A run's submission indexed by resolved test path (class columns as written)."""
    if not run.submission.is_file():
        raise RetrainError(f"{run.submission}: no submission (the run has not finished)")
    sub = pd.read_csv(run.submission, dtype={"fname": str}).drop_duplicates("fname")
    unknown = [f for f in sub["fname"] if f not in paths]
    if unknown:
        raise RetrainError(f"{run.submission}: test clip {unknown[0]} is not in the run's data set")
    return sub.assign(fname=[paths[f] for f in sub["fname"]]).set_index("fname")


def _truth(truth_csv: Path | None, before: tuple, after: tuple) -> dict[str, tuple[str, ...]]:
    """Resolved test path → true labels: from ``truth_csv`` (clips named as either run names them, or by
    path), else the before run's data set (its truth/test.csv, or a manifest's test labels)."""
    if truth_csv is None:
        test = before[1]
        if "truth" not in test.columns:
            raise RetrainError(
                "no test truth in the run's data set: pass one (truth_csv; --test-truth CSV on the command line)"
            )
        return {p: tuple(t) for p, t in zip(test["resolved"], test["truth"], strict=True) if len(t)}
    truth = read_truth(truth_csv)
    out, unknown = {}, []
    for fname, labels in zip(truth["fname"], truth["labels"], strict=True):
        path = before[0].get(fname) or after[0].get(fname)
        if path is None and Path(fname).is_file():
            path = str(Path(fname).resolve())
        if path is None:
            unknown.append(fname)
        elif labels:
            out[path] = tuple(labels)
    if unknown:
        raise RetrainError(
            f"{truth_csv}: {len(unknown)} clip(s) in neither run's test set, e.g. {unknown[0]}"
        )
    return out


def label_changes(corrections: pd.DataFrame) -> pd.DataFrame:
    """Per label over the reviewed clips: how often it was given, kept, removed, added by the reviewers,
    and dropped with its clip; most changed first."""
    rows: dict[str, dict[str, int]] = {}
    for given, reviewed, action in zip(
        corrections["given"], corrections["reviewed"], corrections["action"], strict=True
    ):
        g, r = set(parse_labels(given)), set(parse_labels(reviewed))
        dropped = str(action) == "drop"
        for label in g | r:
            row = rows.setdefault(label, dict.fromkeys(("given", "kept", "removed", "added", "dropped"), 0))
            row["given"] += label in g
            if dropped:
                row["dropped"] += label in g
            else:
                row["kept"] += label in g and label in r
                row["removed"] += label in g and label not in r
                row["added"] += label in r and label not in g
    table = pd.DataFrame([{"label": k, **v} for k, v in rows.items()],
                         columns=["label", "given", "kept", "removed", "added", "dropped"])  # fmt: skip
    table["changed"] = table["removed"] + table["added"]
    return table.sort_values(["changed", "label"], ascending=[False, True]).reset_index(drop=True)


def read_corrections(run: str | Path) -> pd.DataFrame | None:
    """``RUN/review/corrections.csv`` with a ``changed`` column (reviewed ≠ given, or dropped), or None."""
    path = Path(run) / REVIEW / "corrections.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"fname", "given", "reviewed", "action"} - set(frame.columns)
    if missing:
        raise RetrainError(f"{path}: column(s) {', '.join(sorted(missing))} missing")
    frame["changed"] = [
        a == "drop" or set(parse_labels(g)) != set(parse_labels(r))
        for g, r, a in zip(frame["given"], frame["reviewed"], frame["action"], strict=True)
    ]
    return frame


def compare(
    before_run: str | Path,
    after_run: str | Path,
    truth_csv: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    corrections_run: str | Path | None = None,
) -> dict:
    """Test lwlrap of ``after_run`` against ``before_run`` with a paired bootstrap 95 % interval over the
    test clips both scored, per-class change, and the given-vs-reviewed tables.

    Clips are matched by resolved audio path (a run on the competition layout names them by file name, a
    retrain on a manifest by path). ``truth_csv``: ``fname,labels`` (fnames as either run names them);
    default the before run's data set's test truth. ``corrections_run``: whose ``review/corrections.csv``
    (default ``before_run``).

    Returns ``{"before", "after", "delta", "lo", "hi", "n_test", "n_boot", "before_run", "after_run",
    "kept_stages", "wall_seconds", "per_class": DataFrame(label, before, after, change, positives),
    "corrections": DataFrame | None, "label_changes": DataFrame | None}``.
    """
    a, b = RunDir(before_run), RunDir(after_run)
    before, after = _test_paths(a), _test_paths(b)
    truth = _truth(None if truth_csv is None else Path(truth_csv), before, after)
    sa, sb = _scores(a, before[0]), _scores(b, after[0])
    classes = list(sa.columns)
    if sorted(classes) != sorted(sb.columns):
        raise RetrainError(f"{b.submission}: class columns differ from {a.submission}'s")
    clips = [p for p in truth if p in sa.index and p in sb.index]
    if not clips:
        raise RetrainError("no test clip with true labels is scored by both runs")
    col = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(clips), len(classes)), dtype=bool)
    for i, p in enumerate(clips):
        y[i, [col[c] for c in truth[p] if c in col]] = True
    pa = sa.loc[clips, classes].to_numpy(np.float64)
    pb = sb.loc[clips, classes].to_numpy(np.float64)
    delta, lo, hi = paired_bootstrap(y, pa, pb, n_boot=n_boot, seed=seed)
    va, wa = per_class_lwlrap(y, pa)
    vb, _ = per_class_lwlrap(y, pb)
    positives = y.sum(axis=0)
    per_class = pd.DataFrame({"label": classes, "before": va, "after": vb, "change": vb - va,
                              "positives": positives, "weight": wa})  # fmt: skip
    per_class = per_class[positives > 0].sort_values(["change", "label"]).reset_index(drop=True)
    corrections = read_corrections(corrections_run or before_run)
    kept = _read_json(b.root / "kept_stages.json")
    info = b.info()
    trained = sum(v for k, v in info.get("timings", {}).items() if not _kept_timing(k, kept))
    return {
        "before_run": str(a.root),
        "after_run": str(b.root),
        "before": float(lwlrap(y, pa)),
        "after": float(lwlrap(y, pb)),
        "delta": float(delta),
        "lo": float(lo),
        "hi": float(hi),
        "n_test": len(clips),
        "n_boot": n_boot,
        "kept_stages": {"source": kept.get("source"), "stages": kept.get("stages")} if kept else None,
        "train_seconds": round(float(trained), 1),
        "wall_seconds": _wall_seconds(b.root),
        "per_class": per_class,
        "corrections": corrections,
        "label_changes": None if corrections is None else label_changes(corrections[corrections["changed"]]),
    }


def _kept_timing(key: str, kept: dict) -> bool:
    """Whether a run.json timing key (``arch/stage{k}/fold{f}``) is of a stage kept from another run."""
    parts = key.split("/")
    return bool(kept) and len(parts) > 1 and parts[1] in {f"stage{s}" for s in kept.get("stages", [])}


def _wall_seconds(out: Path) -> float | None:
    """Seconds from the retrain's start to the end of its process (retrain.json), when both are known."""
    info = _read_json(out / RETRAIN_INFO)
    start, end = info.get("started_s"), info.get("ended_s")
    return round(end - start, 1) if isinstance(start, float) and isinstance(end, float) else None


def write_comparison(comparison: dict, out: str | Path | None = None) -> Path:
    """Write a :func:`compare` result into the after run (or ``out``): comparison.json (the numbers) and
    per_class_change.csv → the JSON's path. The review report reads them."""
    out = Path(out or comparison["after_run"])
    tables = ("per_class", "corrections", "label_changes")
    scalars = {k: v for k, v in comparison.items() if k not in tables}
    write_json(out / COMPARISON, scalars)
    write_csv(out / PER_CLASS_CHANGE, comparison["per_class"])
    if comparison.get("label_changes") is not None:
        write_csv(out / "label_changes.csv", comparison["label_changes"])
    return out / COMPARISON
