"""The built-in demo data set: procedurally synthesised multi-label sounds with controlled label noise.

``generate(out_dir)`` writes a data set in the competition layout (SPEC §1) plus the ground truth kept apart::

    OUT/train_curated/*.wav   OUT/train_curated.csv   clean domain, correct labels
    OUT/train_noisy/*.wav     OUT/train_noisy.csv     shifted domain, ≈35 % of clips with wrong label sets
    OUT/test/*.wav            OUT/sample_submission.csv
    OUT/truth/test.csv        OUT/truth/noisy.csv     true labels (fname,labels)
    OUT/truth/synth.json      generation parameters (also marks OUT as a synth data set)

Everything is pure numpy, seeded: the same arguments give byte-identical WAV/FLAC files. Each clip draws its own
generator from ``(seed, split, index)``, so a clip does not depend on the others. The twelve sound classes and
the two recording domains live in :mod:`noisytag.sounds`; this module plans the label sets (25 % multi-label),
corrupts the noisy split's labels (swaps between confusable classes such as whistle/siren, drum/knock,
hi-hat/rain; spurious extra labels; missing labels) and writes the files.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisytag.sounds import SOUNDS, render_clip

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
    "demo": Scale(15, 60, 8, 0.5, 8.0, 2.2, 2.8),
    "small": Scale(40, 160, 20, 0.5, 12.0, 3.0, 5.0),
    "medium": Scale(75, 300, 40, 0.3, 15.0, 3.5, 8.0),
}
_SPLIT_CODE = {"curated": 1, "noisy": 2, "test": 3}
_FOLDER = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}


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


def _prepare(out: Path) -> None:
    """Make out empty of a previous synth data set; refuse a folder holding anything else."""
    marker = out / "truth" / "synth.json"
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise FileExistsError(f"{out}: not empty and not a noisytag synth data set; choose a new folder")
        for folder in [*_FOLDER.values(), "truth"]:
            shutil.rmtree(out / folder, ignore_errors=True)
        for name in ("train_curated.csv", "train_noisy.csv", "sample_submission.csv"):
            (out / name).unlink(missing_ok=True)
    for folder in [*_FOLDER.values(), "truth"]:
        (out / folder).mkdir(parents=True, exist_ok=True)


def generate(
    out_dir: str | Path,
    scale: str = "demo",
    seed: int = 0,
    sample_rate: int = 44100,
    fmt: str = "wav",
    progress: bool = False,
) -> dict:
    """Write the synthetic data set to ``out_dir`` (layout in the module docstring) and return a summary.

    The summary holds the parameters, clip counts and hours per split, the multi-label share per split, the
    actual noisy-label rate (share of noisy clips whose given label set differs from the truth), counts per
    corruption kind and the seconds taken. Deterministic: same arguments → byte-identical WAV/FLAC files
    (Ogg Vorbis streams carry a random serial number).
    """
    import pandas as pd
    import soundfile as sf

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if sample_rate < 8000:
        raise ValueError(f"sample rate {sample_rate} Hz is too low (at least 8000)")
    started = time.perf_counter()
    out = Path(out_dir)
    _prepare(out)
    sc = SCALES[scale]
    scale_code = list(SCALES).index(scale)
    plan_rng = np.random.default_rng([seed, 1000 + scale_code])
    name_rng = np.random.default_rng([seed, 2000 + scale_code, sample_rate, list(FORMATS).index(fmt)])

    truth = {split: _plan_labels(plan_rng, getattr(sc, split)) for split in _SPLIT_CODE}
    given_noisy, kinds = corrupt_labels(plan_rng, truth["noisy"])
    durations = {
        split: _durations(
            plan_rng, len(truth[split]), sc, sc.noisy_median_s if split == "noisy" else sc.median_s
        )
        for split in _SPLIT_CODE
    }
    all_names = iter(_names(name_rng, sum(len(v) for v in truth.values()), fmt))
    fnames = {split: [next(all_names) for _ in truth[split]] for split in _SPLIT_CODE}

    jobs = [(split, i) for split in _SPLIT_CODE for i in range(len(truth[split]))]
    if progress:
        from rich.progress import track

        jobs = track(jobs, description=f"synthesising {scale} data set")
    file_format, subtype = FORMATS[fmt]
    for split, i in jobs:
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        n = int(round(durations[split][i] * sample_rate))
        y = render_clip(rng, truth[split][i], n, sample_rate, "noisy" if split == "noisy" else "clean")
        pcm = np.round(y * 32767).astype(np.int16)
        sf.write(
            out / _FOLDER[split] / fnames[split][i], pcm, sample_rate, format=file_format, subtype=subtype
        )

    csv = {"index": False, "lineterminator": "\n"}
    _labels_frame(fnames["curated"], truth["curated"]).to_csv(out / "train_curated.csv", **csv)
    _labels_frame(fnames["noisy"], given_noisy).to_csv(out / "train_noisy.csv", **csv)
    _labels_frame(fnames["noisy"], truth["noisy"]).to_csv(out / "truth" / "noisy.csv", **csv)
    _labels_frame(fnames["test"], truth["test"]).to_csv(out / "truth" / "test.csv", **csv)
    submission = pd.DataFrame(0, index=range(len(fnames["test"])), columns=CLASSES)
    submission.insert(0, "fname", fnames["test"])
    submission.to_csv(out / "sample_submission.csv", **csv)

    wrong = [g != t for g, t in zip(given_noisy, truth["noisy"], strict=True)]
    all_true = [x for split in _SPLIT_CODE for x in truth[split]]
    summary = {
        "scale": scale,
        "seed": seed,
        "sample_rate": sample_rate,
        "format": fmt,
        "classes": len(CLASSES),
        "clips": {split: len(truth[split]) for split in _SPLIT_CODE},
        "hours": {split: round(float(durations[split].sum()) / 3600, 4) for split in _SPLIT_CODE},
        "multi_label_share": {
            **{split: float(np.mean([len(x) > 1 for x in truth[split]])) for split in _SPLIT_CODE},
            "all": float(np.mean([len(x) > 1 for x in all_true])),
        },
        "noisy_label_rate": float(np.mean(wrong)),
        "corruptions": {k: kinds.count(k) for k in CORRUPTION_KINDS},
    }
    (out / "truth" / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["out_dir"] = str(out)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    log.debug("synth %s: %s", scale, summary)
    return summary
