"""Review at scale: ``noisytag review`` on a copy of a finished run whose noisy set is replicated to 20,000 clips.

    .venv/bin/python benchmarks/bench_review_scale.py [--run runs/demo] [--data DIR] [--noisy 20000]
        [--cards 20] [--decisions 5] [--decided 0] [--in-process] [--out DIR]

The copy (a temporary folder, or ``--out DIR``, kept): ``--run`` (read only; a finished run whose data set is
in the competition layout) with each noisy clip repeated under new names (``{stem}__r{k}{suffix}``) until
there are ``--noisy`` of them. Every file the review reads is extended alike: folds.csv (a copy keeps its
source's fold), each stage's ``oof_noisy.npy`` per fold (the source's out-of-fold row), the per-clip tables of
each architecture (``selections/stage{k}.csv``, ``selections/stage{k}_audit.csv``, ``scores.csv``: the
source's row under the new name), and a data set (``data/``: train_noisy.csv and truth/noisy.csv extended,
every audio file a hard link to the original). run.json names that data set; the rest of the run (config,
plan, models) is copied, its ``review/`` folder left out.

Measured in the copy: ``ReviewQueue.from_run`` (time, RSS, traced peak), ``queue.order`` for every mode, and
through the app of ``noisytag review`` (uvicorn on loopback as ``noisytag.serve.app.running`` starts it, or
with ``--in-process`` a TestClient; corrections rewritten after each decision as the command does): the
queue JSON, ``--cards`` cards spread over the suspect order (their JSON, then their
log-mel drawn into RUN/review/pictures/, then the cached picture), ``--decisions`` decisions and
``POST /api/export``. ``--decided N`` first records N earlier decisions of the reviewer (EventLog.append, one
fsync each), to see a decision late in a long review. Timelines are not asked (bench_review.py: their cost
is per clip, not per queue). Prints a table; no assertions about time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from noisytag.data.dataset import SPLITS, Dataset, format_labels, read_truth
from noisytag.data.manifest import load_data
from noisytag.fileio import write_csv, write_json, write_npy
from noisytag.review.app import DECISIONS, create_review_app
from noisytag.review.events import EventLog, decision_event, events_path
from noisytag.review.queue import MODES, ReviewQueue
from noisytag.review.runfiles import read_folds
from noisytag.rundir import RunDir
from noisytag.serve.app import running

ROOT = Path(__file__).resolve().parent.parent
REVIEWER = "bench"


# ---------------------------------------------------------------- the scaled copy


def link(src: Path, dst: Path) -> None:
    """A hard link (the review never writes audio, and 20,000 copies would be gigabytes); a symbolic one
    across file systems (the competition layout follows it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(Path(src).resolve(), dst)


def replicas(noisy: pd.DataFrame, n: int) -> tuple[np.ndarray, list[str]]:
    """(source row of each clip, its name) for ``n`` noisy clips: the originals first, then round k names
    each one ``{stem}__r{k}{suffix}``, in folds.csv order, so every new name is unique and keeps the suffix."""
    count = len(noisy)
    if n < count:
        raise SystemExit(f"--noisy {n} is below the run's {count} noisy clips")
    source = np.arange(n) % count
    names = list(noisy["fname"])
    for i in range(count, n):
        path = Path(names[source[i]])
        names.append(f"{path.stem}__r{i // count}{path.suffix}")
    return source, names


def extend_rows(frame: pd.DataFrame, sources: list[str], names: list[str]) -> pd.DataFrame:
    """``frame`` plus, for each new name, a copy of its source's row under that name (sources without a
    row, e.g. clips a selection did not keep, add none)."""
    pos = pd.Index(frame["fname"]).get_indexer(sources)
    keep = pos >= 0
    added = frame.iloc[pos[keep]].assign(fname=np.asarray(names, dtype=object)[keep])
    return pd.concat([frame, added], ignore_index=True)


def extend_csv(path: Path, sources: list[str], names: list[str]) -> int:
    """Extend a per-clip CSV in place, read and written as text so the copied rows are the source's verbatim."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = extend_rows(frame, sources, names)
    write_csv(path, out)
    return len(out) - len(frame)


def scale_oof(src: RunDir, dst: RunDir, arch: str, stage: int, fold_of: np.ndarray, source, k: int) -> int:
    """Rewrite a stage's ``oof_noisy.npy`` per fold for the scaled folds.csv (each clip: its source's
    out-of-fold row); 0 when the stage has no noisy OOF (unfinished)."""
    try:
        full = src.stage_oof(arch, stage, "noisy", fold_of, k)
    except (FileNotFoundError, ValueError):
        return 0
    scaled, scaled_fold = full[source], fold_of[source]
    for fold in np.unique(scaled_fold):
        write_npy(dst.fold_oof(arch, stage, int(fold), "noisy"), scaled[scaled_fold == fold])
    return len(np.unique(scaled_fold))


def scale_data(dataset: Dataset, out: Path, sources: list[str], names: list[str]) -> Path:
    """The data set in the competition layout under ``out``: curated and test as they are, the noisy
    split extended (train_noisy.csv, truth/noisy.csv), every audio file a link to the original."""
    root = Path(dataset.root)
    out.mkdir(parents=True)
    for name in ("train_curated.csv", "sample_submission.csv"):
        if (root / name).is_file():
            shutil.copy2(root / name, out / name)
    for split in ("curated", "test"):
        table = dataset.split(split)
        for fname, path in zip(table["fname"], table["path"], strict=True):
            link(Path(path), out / SPLITS[split] / fname)
    noisy = dataset.noisy.drop_duplicates("fname").set_index("fname")
    new = [(s, n) for s, n in zip(sources, names, strict=True) if s in noisy.index]  # the queue skips others
    for fname, path in noisy["path"].items():
        link(Path(path), out / "train_noisy" / fname)
    for source, name in new:
        link(Path(noisy.at[source, "path"]), out / "train_noisy" / name)
    labels = pd.DataFrame({"fname": list(noisy.index), "labels": [format_labels(x) for x in noisy["labels"]]})
    write_csv(out / "train_noisy.csv", extend_rows(labels, [s for s, _ in new], [n for _, n in new]))
    if (root / "truth").is_dir():
        (out / "truth").mkdir()
        for path in (root / "truth").iterdir():
            if path.name == "noisy.csv":
                truth = read_truth(path)
                truth["labels"] = [format_labels(x) for x in truth["labels"]]
                write_csv(out / "truth" / path.name, extend_rows(truth, sources, names))
            elif path.is_file():
                shutil.copy2(path, out / "truth" / path.name)
    return out


def scale_run(run: Path, data: Path | None, out: Path, n: int) -> tuple[Path, dict, int]:
    """The scaled copy of ``run`` under ``out`` (``out/run``, ``out/data``), what was extended, and the
    source's number of noisy clips."""
    src = RunDir(run)
    plan = src.plan()
    info = src.info()
    data = data or info.get("data_dir")
    if not data:
        raise SystemExit(f"{src.run_info} names no data set; pass --data DIR")
    dataset = load_data(data)
    if dataset.manifest is not None:
        raise SystemExit(f"{data}: a manifest; this benchmark copies data sets in the competition layout")
    folds = read_folds(src)
    noisy = folds.loc[folds["split"] == "noisy"].reset_index(drop=True)
    source, names = replicas(noisy, n)
    count = len(noisy)
    sources, new_names = [noisy["fname"].iat[i] for i in source[count:]], names[count:]
    dst = RunDir(out / "run")
    dst.root.mkdir(parents=True)
    done: dict[str, str] = {}
    for path in src.root.iterdir():  # run-level files as they are; the source's review/ is left out
        if path.is_file():
            shutil.copy2(path, dst.root / path.name)
    data_out = scale_data(dataset, out / "data", sources, new_names)
    done["data/"] = (
        f"{len(dataset.curated)} curated + {n} noisy + {len(dataset.test)} test audio links, "
        "train_noisy.csv" + (" + truth/noisy.csv" if (data_out / "truth" / "noisy.csv").is_file() else "")
    )
    info["data_dir"] = str(data_out.resolve())
    info["scaled_from"] = {"run": str(src.root.resolve()), "noisy": n}
    write_json(dst.run_info, info)
    added = extend_rows(noisy, sources, new_names).iloc[count:]
    write_csv(dst.folds, pd.concat([folds, added], ignore_index=True))
    done["folds.csv"] = f"+{len(added)} noisy rows (each with its source's fold)"
    fold_of = noisy["fold"].to_numpy(dtype=int)
    k = len(dataset.classes)
    for arch in plan.architectures:
        if not src.arch_dir(arch).is_dir():
            continue
        shutil.copytree(src.arch_dir(arch), dst.arch_dir(arch))
        for stage in plan.stage_numbers:
            written = scale_oof(src, dst, arch, stage, fold_of, source, k)
            if written:
                done[f"{arch}/stage{stage}/fold*/oof_noisy.npy"] = f"{written} folds, {n} rows in all"
        tables = [dst.scores(arch), *sorted((dst.arch_dir(arch) / "selections").glob("*.csv"))]
        for path in tables:
            if path.is_file():
                rows = extend_csv(path, sources, new_names)
                done[str(path.relative_to(dst.root))] = f"+{rows} rows"
    return dst.root, done, count


def check_copy(queue: ReviewQueue, count: int) -> None:
    """The copy is consistent: each copied clip has its source's out-of-fold probabilities and suspicion
    in the queue (folds.csv, the OOF files and the audits were extended in the same order)."""
    source = np.arange(len(queue)) % count
    same = np.array_equal(queue.probs, queue.probs[source], equal_nan=True) and np.array_equal(
        queue.clips["suspicion"].to_numpy(), queue.clips["suspicion"].to_numpy()[source]
    )
    if not same:
        raise SystemExit("the copy is inconsistent: a copied clip differs from its source")


# ---------------------------------------------------------------- measuring


def rss_mb() -> float:
    """Resident set size now (Linux /proc), NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ms(fn: Callable[[], object]) -> tuple[float, object]:
    """(milliseconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t0) * 1000, result


def load_queue(run: Path) -> tuple[ReviewQueue, dict]:
    """The queue, timed; then built again under tracemalloc for its peak allocation (numpy and pandas
    buffers included), apart so tracing does not slow the timed build."""
    before, peak_before = rss_mb(), peak_rss_mb()
    took, queue = ms(lambda: ReviewQueue.from_run(run))
    figures = {"ms": took, "rss_before": before, "rss_after": rss_mb(), "peak_before": peak_before}
    figures["peak_after"] = peak_rss_mb()
    tracemalloc.start()
    ReviewQueue.from_run(run)
    figures["traced_peak"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return queue, figures


def time_orders(queue: ReviewQueue, repeats: int = 5) -> list[tuple[str, float, int]]:
    """(mode, median ms, clips) of ``queue.order`` for every mode; class and pair modes on the most common
    pair (given X the models do not hear, Y heard), the page's first suggestion."""
    pairs = queue.pairs()
    given, heard = pairs[0][:2] if pairs else (queue.classes[0], queue.classes[1])
    args = {"class": {"label": given}, "pair": {"pair": (given, heard)}}
    out = []
    for mode in MODES:
        times, ids = [], []
        for _ in range(repeats):
            took, ids = ms(lambda mode=mode: queue.order(mode, **args.get(mode, {})))
            times.append(took)
        name = mode + (f" {given}" if mode == "class" else f" {given}|{heard}" if mode == "pair" else "")
        out.append((name, statistics.median(times), len(ids)))
    return out


def record_earlier(queue: ReviewQueue, n: int) -> float:
    """Record ``n`` earlier decisions of the same reviewer (the least suspect clips) before the server
    starts, through the review's own writer; returns seconds. The same reviewer: with a second one who
    shares no clip, every decision answers 500 (agreement share NaN in the progress JSON)."""
    log_ = EventLog(events_path(queue.run))
    order = queue.order("suspect")
    t0 = time.perf_counter()
    for rank in range(len(order) - 1, len(order) - 1 - n, -1):
        card = queue.card(order[rank])
        log_.append(decision_event(card, "accept_given", card.given, REVIEWER, 1.0, "suspect", rank))
    return time.perf_counter() - t0


def decision_body(card: dict, action: str, rank: int) -> dict:
    body = {"clip_id": card["clip_id"], "action": action, "seconds": 1.0, "mode": "suspect", "rank": rank}
    if action == "set":
        body["labels"] = card["candidates"][:1]
    return body


@contextlib.contextmanager
def client_of(app, in_process: bool):
    """A client of ``app``: a real server on loopback (what the page talks to), or in process (the app's
    own cost, without the TCP round trips)."""
    if in_process:
        from fastapi.testclient import TestClient  # only here: importing it warns about httpx

        with TestClient(app) as client:
            yield client
    else:
        with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
            yield client


def serve(queue: ReviewQueue, cards: int, decisions: int, in_process: bool) -> dict[str, list[float]]:
    """The page's requests, each timed (ms): the queue JSON, the first card apart (its log-mel warms the
    front end), ``cards`` more cards spread over the suspect order (replicas tie in suspicion, so the first
    ``cards`` would be copies of one clip), the session JSON (no work: the floor of every request),
    decisions on the first cards, and two exports (the first may wait for the background rewrite that the
    decisions started)."""
    order = queue.order("suspect")
    rank = {c: r for r, c in enumerate(order)}
    ids = [order[int(i)] for i in np.linspace(0, len(order) - 1, cards + 1)]
    app = create_review_app(queue, EventLog(events_path(queue.run)), REVIEWER)
    times: dict[str, list[float]] = {}
    with client_of(app, in_process) as client:
        token = {"X-Review-Token": client.get("/api/session").json()["token"]}

        def get(name: str, path: str) -> httpx.Response:
            took, response = ms(lambda: client.get(path).raise_for_status())
            times.setdefault(name, []).append(took)
            return response

        get("queue JSON (suspect)", "/api/queue")
        t0 = time.perf_counter()
        client.get(f"/api/card/{ids[0]}").raise_for_status()
        client.get(f"/api/picture/{ids[0]}.png").raise_for_status()
        times["first card (JSON + log-mel)"] = [(time.perf_counter() - t0) * 1000]
        shown = [get("card JSON", f"/api/card/{c}").json() for c in ids[1:]]
        for c in ids[1:]:
            get("log-mel, drawn", f"/api/picture/{c}.png")
        for c in ids[1:]:
            get("log-mel, cached", f"/api/picture/{c}.png")
        for _ in ids[1:]:
            get("session JSON (floor)", "/api/session")
        for i, card in enumerate(shown[:decisions]):
            body = decision_body(card, DECISIONS[i % len(DECISIONS)], rank[card["clip_id"]])
            took, response = ms(lambda body=body: client.post("/api/decision", json=body, headers=token))
            response.raise_for_status()
            times.setdefault("decision POST", []).append(took)
        for name in ("export (first)", "export (again)"):
            took, response = ms(lambda: client.post("/api/export", headers=token))
            response.raise_for_status()
            times[name] = [took]
    app.state.pictures.close()
    return times


def folder_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def report(args, build_s: float, done: dict, run: Path, queue: ReviewQueue, loaded: dict, orders, times):
    """The table: the copy, the queue, the orders, the requests (median / p95 / max where there are
    several), the pictures folder."""
    print(f"scaled copy of {args.run} in {run.parent} ({build_s:.1f} s to build); {os.cpu_count()} CPUs")
    for name, what in done.items():
        print(f"  extended {name:38s} {what}")
    print(f"\nReviewQueue.from_run: {len(queue)} noisy clips, {len(queue.classes)} classes")
    print(f"  time                 {loaded['ms']:9.0f} ms")
    print(f"  RSS                  {loaded['rss_before']:9.0f} -> {loaded['rss_after']:.0f} MB")
    print(f"  process peak RSS     {loaded['peak_before']:9.0f} -> {loaded['peak_after']:.0f} MB")
    print(f"  traced peak (again)  {loaded['traced_peak']:9.1f} MB")
    print("\nqueue.order (median of 5)")
    for name, took, count in orders:
        print(f"  {name:32s} {took:8.2f} ms  {count:6d} clips")
    how = "in process (TestClient)" if args.in_process else "uvicorn on loopback"
    print(f"\nthrough the app ({how}; {args.decided} earlier decisions in the log)")
    print(f"  {'request':28s} {'n':>3s} {'median':>9s} {'p95':>9s} {'max':>9s}")
    for name, values in times.items():
        print(
            f"  {name:28s} {len(values):3d} {statistics.median(values):6.1f} ms"
            f" {percentile(values, 95):6.1f} ms {max(values):6.1f} ms"
        )
    files, size = folder_size(run / "review" / "pictures")
    print(f"\nRUN/review/pictures/: {files} files, {size / 1024:.0f} KiB ({args.cards + 1} cards asked)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="a finished run (read only)")
    parser.add_argument("--data", type=Path, help="its data set (default: the one in RUN/run.json)")
    parser.add_argument("--noisy", type=int, default=20_000, help="noisy clips in the copy")
    parser.add_argument("--cards", type=int, default=20)
    parser.add_argument("--decisions", type=int, default=5)
    parser.add_argument("--decided", type=int, default=0, help="earlier decisions recorded first")
    parser.add_argument(
        "--in-process", action="store_true", help="ask the app in process (TestClient), not over loopback"
    )
    parser.add_argument("--out", type=Path, help="build the copy here and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.out and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    with tempfile.TemporaryDirectory(prefix="bench_review_scale_") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        build_s, (run, done, count) = ms(lambda: scale_run(args.run, args.data, out, args.noisy))
        queue, loaded = load_queue(run)
        if len(queue) != args.noisy:
            raise SystemExit(f"the copy's queue has {len(queue)} clips, not {args.noisy}")
        check_copy(queue, count)
        orders = time_orders(queue)
        earlier_s = record_earlier(queue, args.decided) if args.decided else 0.0
        times = serve(queue, args.cards, args.decisions, args.in_process)
        report(args, build_s / 1000, done, run, queue, loaded, orders, times)
        if args.decided:
            print(f"({args.decided} earlier decisions recorded in {earlier_s:.1f} s)")
        if args.out:
            print(f"kept: noisytag review {run}")


if __name__ == "__main__":
    main()
