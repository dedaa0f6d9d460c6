"""The built-in demo data set: procedurally synthesised multi-label sounds with controlled label noise.

``generate(out_dir)`` writes a data set in the competition layout (SPEC §1) plus the ground truth kept apart::

    OUT/train_curated/*.wav   OUT/train_curated.csv   clean domain, correct labels
    OUT/train_noisy/*.wav     OUT/train_noisy.csv     shifted domain, ≈35 % of clips with wrong label sets
    OUT/test/*.wav            OUT/sample_submission.csv   half clean, half shifted domain ("mixed")
    OUT/truth/test.csv        OUT/truth/noisy.csv     true labels (fname,labels)
    OUT/truth/synth.json      generation parameters (also marks OUT as a synth data set)

or, with ``layout="manifest"``, the same clips in nested folders mixing the subsets, listed by a manifest
(:mod:`noisytag.data.manifest`) that carries the truth in its ``true_labels`` column::

    OUT/audio/<2 characters>/<name>.wav   OUT/manifest.csv   OUT/classes.txt   OUT/truth/synth.json

Everything is pure numpy, seeded: the same arguments give byte-identical WAV/FLAC files. Each clip draws its own
generator from ``(seed, split, index)``, so a clip does not depend on the others. The twelve sound classes and
the two recording domains live in :mod:`noisytag.data.sounds`; this module plans the label sets (25 % multi-label),
corrupts the noisy split's labels (swaps between confusable classes such as whistle/siren, drum/knock,
hi-hat/rain; spurious extra labels; missing labels) and writes the files.

The test clips come from both recording domains by default (``test_domain="mixed"``: exactly half of them in
the noisy split's shifted domain), as real test sets come from sources other than the curated one: a model
that learns only from the curated clips meets conditions there that only the noisy clips show, so the demo
measures what a noisy clip's variety is worth besides what its label costs. ``test_domain="clean"`` gives
the first demo set (version 1, every test clip in the curated domain), on which README's recipe ablation ran.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisytag.data.dataset import SUBMISSION
from noisytag.data.manifest import CLASSES_FILE, write_manifest
from noisytag.data.sounds import SOUNDS, render_clip

log = logging.getLogger(__name__)

# Order = the columns of sample_submission.csv.
CLASSES: list[str] = list(SOUNDS)

# Classes a careless annotator or a keyword-based label would confuse (used for label swaps).
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "Whistle": ("Siren", "Bell"),
    "Rising_sweep": ("Falling_sweep", "Siren"),
    "Falling_sweep": ("Rising_sweep", "Siren"),
    "Bell": ("Whistle", "Knock"),
    "Drum": ("Knock", "Engine"),
    "Hi-hat": ("Rain", "Knock"),
    "Engine": ("Wind", "Babble"),
    "Rain": ("Hi-hat", "Wind"),
    "Babble": ("Engine", "Whistle"),
    "Siren": ("Whistle", "Rising_sweep"),
    "Knock": ("Drum", "Bell"),
    "Wind": ("Rain", "Engine"),
}

MULTI_LABEL_SHARE = 0.25  # clips with 2 or 3 overlapping classes
NOISY_LABEL_RATE = 0.35  # noisy clips whose given label set is wrong
CORRUPTION_KINDS = {"swap": 0.5, "extra": 0.3, "missing": 0.2}  # "missing" needs >= 2 true labels
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}


@dataclass(frozen=True)
class Scale:
    """Clips per class (of the primary label) and duration range (seconds) of each split."""

    curated: int
    noisy: int
    test: int
    min_s: float
    max_s: float
    median_s: float
    noisy_median_s: float


SCALES: dict[str, Scale] = {
    "tiny": Scale(2, 4, 1, 0.5, 4.0, 1.5, 2.0),
    "demo": Scale(15, 60, 8, 0.5, 8.0, 2.0, 2.4),
    "small": Scale(40, 160, 20, 0.5, 12.0, 3.0, 5.0),
    "medium": Scale(75, 300, 40, 0.3, 15.0, 3.5, 8.0),
}
_SPLIT_CODE = {"curated": 1, "noisy": 2, "test": 3}
_FOLDER = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}
LAYOUTS = ("competition", "manifest")
MANIFEST, AUDIO = "manifest.csv", "audio"  # the manifest layout's files
TEST_DOMAINS = ("mixed", "clean")  # recording domains of the test clips (module docstring)


# ---------------------------------------------------------------- label plans and label noise


def _plan_labels(rng: np.random.Generator, per_class: int) -> list[tuple[str, ...]]:
    """Balanced primary classes; exactly round(25 %) of the clips get one or two extra classes."""
    n_classes = len(CLASSES)
    primary = rng.permutation(np.tile(np.arange(n_classes), per_class))
    multi = np.zeros(len(primary), bool)
    multi[rng.permutation(len(primary))[: round(MULTI_LABEL_SHARE * len(primary))]] = True
    plans = []
    for p, m in zip(primary, multi, strict=True):
        chosen = {int(p)}
        if m:
            others = np.setdiff1d(np.arange(n_classes), [p])
            chosen |= set(rng.choice(others, 1 if rng.random() < 0.8 else 2, replace=False).tolist())
        plans.append(tuple(CLASSES[c] for c in sorted(chosen)))
    return plans


def _canonical(labels: set[str]) -> tuple[str, ...]:
    return tuple(c for c in CLASSES if c in labels)


def corrupt_labels(
    rng: np.random.Generator, true: list[tuple[str, ...]], rate: float = NOISY_LABEL_RATE
) -> tuple[list[tuple[str, ...]], list[str]]:
    """Given label sets for the noisy split: exactly round(rate · N) clips get a wrong set.

    Kinds: "swap" (one label replaced by a confusable class), "extra" (a spurious label added), "missing"
    (one of several labels dropped; a single-label clip gets a swap instead). Returns (given, kinds) with
    kind "" for clean clips.
    """
    given, kinds = list(true), [""] * len(true)
    names, probs = list(CORRUPTION_KINDS), list(CORRUPTION_KINDS.values())
    for i in rng.permutation(len(true))[: round(rate * len(true))]:
        labels = set(true[i])
        kind = str(rng.choice(names, p=probs))
        if kind == "missing" and len(labels) < 2:
            kind = "swap"
        absent = [c for c in CLASSES if c not in labels]
        if kind == "swap":
            victim = str(rng.choice(sorted(labels)))
            confusable = [c for c in CONFUSABLE[victim] if c not in labels]
            labels = (labels - {victim}) | {str(rng.choice(confusable or absent))}
        elif kind == "extra":
            labels.add(str(rng.choice(absent)))
        else:
            labels.discard(str(rng.choice(sorted(labels))))
        given[i], kinds[i] = _canonical(labels), kind
    return given, kinds


def _durations(rng: np.random.Generator, n: int, scale: Scale, median: float) -> np.ndarray:
    """Log-normal clip durations (seconds), clipped to the scale's range: mostly short, a few long."""
    return np.clip(np.exp(rng.normal(np.log(median), 0.6, n)), scale.min_s, scale.max_s)


def _names(rng: np.random.Generator, n: int, ext: str) -> list[str]:
    """n distinct competition-style file names (8 hex digits)."""
    seen: dict[int, None] = {}
    while len(seen) < n:
        for v in rng.integers(0, 2**32, n).tolist():
            seen.setdefault(v, None)
    return [f"{v:08x}.{ext}" for v in list(seen)[:n]]


# ---------------------------------------------------------------- writing the data set


def _labels_frame(fnames: list[str], labels: list[tuple[str, ...]]):
    import pandas as pd

    return pd.DataFrame({"fname": fnames, "labels": [",".join(x) for x in labels]})


def _marker(out_dir: str | Path) -> Path:
    """The generation parameters of a synth data set; the file also marks the folder as one."""
    return Path(out_dir) / "truth" / "synth.json"


def synth_info(out_dir: str | Path) -> dict | None:
    """The parameters ``out_dir``'s synth data set was generated with (None: not a synth data set)."""
    marker = _marker(out_dir)
    return json.loads(marker.read_text()) if marker.is_file() else None


def _prepare(out: Path) -> None:
    """Make out empty of a previous synth data set; refuse a folder holding anything else."""
    if out.exists() and any(out.iterdir()):
        if not _marker(out).exists():
            raise FileExistsError(f"{out}: not empty and not a noisytag synth data set; choose a new folder")
        for folder in [*_FOLDER.values(), AUDIO, "truth"]:
            shutil.rmtree(out / folder, ignore_errors=True)
        for name in ("train_curated.csv", "train_noisy.csv", SUBMISSION, MANIFEST, CLASSES_FILE):
            (out / name).unlink(missing_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)


def _render_chunk(clips: list[tuple], sample_rate: int, fmt: str) -> int:
    """Render and write clips (path, rng seed, labels, n samples, domain); returns how many."""
    import soundfile as sf

    file_format, subtype = FORMATS[fmt]
    for path, rng_seed, labels, n, domain in clips:
        y = render_clip(np.random.default_rng(list(rng_seed)), labels, n, sample_rate, domain)
        pcm = np.round(y * 32767).astype(np.int16)
        buffer = io.BytesIO()  # soundfile fsyncs real files on close; a buffer avoids that per clip
        sf.write(buffer, pcm, sample_rate, format=file_format, subtype=subtype)
        Path(path).write_bytes(buffer.getvalue())
    return len(clips)


def _render_all(
    clips: list[tuple], sample_rate: int, fmt: str, workers: int | None, progress: bool, title: str
):
    """Render clips in chunks, in this process or in a spawn pool (each clip has its own seed, so the
    bytes do not depend on the split into chunks or processes)."""
    from rich.progress import Progress

    if workers is None:
        workers = 1 if len(clips) < 200 else max(1, min(4, os.cpu_count() or 1))
    chunks = [clips[i : i + 16] for i in range(0, len(clips), 16)]
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task(title, total=len(clips))
        if workers <= 1:
            for chunk in chunks:
                bar.advance(task, _render_chunk(chunk, sample_rate, fmt))
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_render_chunk, chunk, sample_rate, fmt) for chunk in chunks]
            for future in as_completed(futures):
                bar.advance(task, future.result())


@dataclass(frozen=True)
class Plan:
    """Everything about a synthetic data set except its audio: per split the file names, true label sets,
    given label sets (= true except for the noisy split), corruption kinds ("" = correct), durations and
    recording domains ("clean" or "noisy")."""

    scale: str
    seed: int
    sample_rate: int
    fmt: str
    fnames: dict[str, list[str]]
    truth: dict[str, list[tuple[str, ...]]]
    given: dict[str, list[tuple[str, ...]]]
    kinds: list[str]
    durations: dict[str, np.ndarray]
    domains: dict[str, list[str]]
    test_domain: str = "mixed"

    def summary(self) -> dict:
        """Parameters, counts, hours, multi-label share per split and the actual noisy-label rate."""
        multi = {split: float(np.mean([len(x) > 1 for x in self.truth[split]])) for split in _SPLIT_CODE}
        all_true = [x for split in _SPLIT_CODE for x in self.truth[split]]
        wrong = [g != t for g, t in zip(self.given["noisy"], self.truth["noisy"], strict=True)]
        return {
            "scale": self.scale,
            "seed": self.seed,
            "sample_rate": self.sample_rate,
            "format": self.fmt,
            "classes": len(CLASSES),
            "clips": {split: len(self.truth[split]) for split in _SPLIT_CODE},
            "hours": {split: round(float(self.durations[split].sum()) / 3600, 4) for split in _SPLIT_CODE},
            "multi_label_share": {**multi, "all": float(np.mean([len(x) > 1 for x in all_true]))},
            "noisy_label_rate": float(np.mean(wrong)),
            "corruptions": {k: self.kinds.count(k) for k in CORRUPTION_KINDS},
            "test_domain": self.test_domain,
            "domains": {
                split: {d: self.domains[split].count(d) for d in ("clean", "noisy")} for split in _SPLIT_CODE
            },
        }


def plan(
    scale: str = "demo", seed: int = 0, sample_rate: int = 44100, fmt: str = "wav", test_domain: str = "mixed"
) -> Plan:
    """The label sets, corruptions, durations, domains and names of a data set, without rendering audio."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if sample_rate < 8000:
        raise ValueError(f"sample rate {sample_rate} Hz is too low (at least 8000)")
    if test_domain not in TEST_DOMAINS:
        raise ValueError(f"unknown test domain {test_domain!r}; choose from {', '.join(TEST_DOMAINS)}")
    sc = SCALES[scale]
    scale_code = list(SCALES).index(scale)
    plan_rng = np.random.default_rng([seed, 1000 + scale_code])
    # Names depend on every parameter, so a cache keyed by file name never mixes two variants.
    # (A clean test domain keeps version 1's names and files.)
    name_key = [seed, 2000 + scale_code, sample_rate, list(FORMATS).index(fmt)]
    name_rng = np.random.default_rng(
        name_key + ([] if test_domain == "clean" else [TEST_DOMAINS.index(test_domain)])
    )
    truth = {split: _plan_labels(plan_rng, getattr(sc, split)) for split in _SPLIT_CODE}
    given_noisy, kinds = corrupt_labels(plan_rng, truth["noisy"])
    durations = {
        split: _durations(
            plan_rng, len(truth[split]), sc, sc.noisy_median_s if split == "noisy" else sc.median_s
        )
        for split in _SPLIT_CODE
    }
    names = iter(_names(name_rng, sum(len(v) for v in truth.values()), fmt))
    fnames = {split: [next(names) for _ in truth[split]] for split in _SPLIT_CODE}
    given = {**truth, "noisy": given_noisy}
    domains = {"curated": ["clean"] * len(truth["curated"]), "noisy": ["noisy"] * len(truth["noisy"])}
    n_test = len(truth["test"])
    shifted = np.zeros(n_test, bool)
    if test_domain == "mixed":  # exactly half, drawn apart from the plan's other draws (they stay as in v1)
        shifted[np.random.default_rng([seed, 3000 + scale_code]).permutation(n_test)[: n_test // 2]] = True
    domains["test"] = ["noisy" if s else "clean" for s in shifted]
    return Plan(scale, seed, sample_rate, fmt, fnames, truth, given, kinds, durations, domains, test_domain)


def generate(
    out_dir: str | Path,
    scale: str = "demo",
    seed: int = 0,
    sample_rate: int = 44100,
    fmt: str = "wav",
    progress: bool = False,
    workers: int | None = None,
    layout: str = "competition",
    test_domain: str = "mixed",
) -> dict:
    """Write the synthetic data set to ``out_dir`` (layout in the module docstring) and return a summary.

    The summary (:meth:`Plan.summary` + ``out_dir`` and ``seconds``) holds clip counts and hours per split,
    the multi-label share per split and the actual noisy-label rate (share of noisy clips whose given label
    set differs from the truth) with counts per corruption kind. Deterministic: same arguments →
    byte-identical WAV/FLAC files (Ogg Vorbis streams carry a random serial number), whatever the number of
    ``workers`` (processes; default: 1 below 200 clips, else up to 4 by the CPU count). ``layout``:
    ``competition`` or ``manifest`` (same clips and bytes, see the module docstring); ``test_domain``:
    ``mixed`` (half the test clips in the noisy split's recording domain) or ``clean`` (version 1).
    """
    import pandas as pd

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    started = time.perf_counter()
    p = plan(scale, seed, sample_rate, fmt, test_domain)
    out = Path(out_dir)
    _prepare(out)
    paths = {
        split: [
            out / AUDIO / name[:2] / name if layout == "manifest" else out / _FOLDER[split] / name
            for name in p.fnames[split]
        ]
        for split in _SPLIT_CODE
    }
    for folder in {path.parent for split in paths.values() for path in split}:
        folder.mkdir(parents=True, exist_ok=True)
    clips = [
        (
            str(paths[split][i]),
            (seed, _SPLIT_CODE[split], i),
            p.truth[split][i],
            int(round(p.durations[split][i] * sample_rate)),
            p.domains[split][i],
        )
        for split in _SPLIT_CODE
        for i in range(len(p.truth[split]))
    ]
    _render_all(clips, sample_rate, fmt, workers, progress, f"synthesising {scale} data set")

    summary = p.summary()
    if layout == "manifest":
        rows = pd.DataFrame(
            [
                {
                    "path": paths[split][i],
                    "labels": () if split == "test" else p.given[split][i],
                    "subset": split,
                    "true_labels": p.truth[split][i] if split != "curated" else (),
                }
                for split in _SPLIT_CODE
                for i in range(len(p.fnames[split]))
            ]
        )
        write_manifest(out / MANIFEST, rows, CLASSES)
    else:
        _write_competition_csvs(out, p)
    _marker(out).write_text(json.dumps(summary | {"layout": layout}, indent=2) + "\n")
    summary["out_dir"] = str(out)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    log.debug("synth %s: %s", scale, summary)
    return summary


def synth_mismatch(out_dir: str | Path, **wanted) -> str:
    """Why the synth data set in ``out_dir`` differs from the wanted parameters ("" = it does not, or
    ``out_dir`` holds no synth data set); a data set without ``test_domain`` is version 1 ("clean")."""
    info = synth_info(out_dir)
    if info is None:
        return ""
    made = {"test_domain": "clean", **info}
    return ", ".join(f"{k} {made.get(k)} -> {v}" for k, v in wanted.items() if made.get(k) != v)


def _write_competition_csvs(out: Path, p: Plan) -> None:
    import pandas as pd

    csv = {"index": False, "lineterminator": "\n"}
    _labels_frame(p.fnames["curated"], p.given["curated"]).to_csv(out / "train_curated.csv", **csv)
    _labels_frame(p.fnames["noisy"], p.given["noisy"]).to_csv(out / "train_noisy.csv", **csv)
    _labels_frame(p.fnames["noisy"], p.truth["noisy"]).to_csv(out / "truth" / "noisy.csv", **csv)
    _labels_frame(p.fnames["test"], p.truth["test"]).to_csv(out / "truth" / "test.csv", **csv)
    submission = pd.DataFrame(0, index=range(len(p.fnames["test"])), columns=CLASSES)
    submission.insert(0, "fname", p.fnames["test"])
    submission.to_csv(out / SUBMISSION, **csv)
