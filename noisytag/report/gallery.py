"""Augmentation gallery: a grid of a few clips' log-mel windows and each batch augmentation applied.

Also the example test clips of the run report (:func:`example_clips`): log-mels of a few test clips with
the ensemble's top labels. Rows of the gallery are clips, columns are :func:`gallery_columns`: the
original, each entry of the augmentation registry (``noisytag.learn.augment.AUGMENTATIONS``: mixup,
SpecMix, zoom, lighting, band gains, Freq-MixStyle, masking) alone, then the full chain; under each panel the target it trains
on, written as a label mixture ("0.62 bell + 0.38 siren"). Each entry's meta gives its column title,
the fields that force it on and its corner note (given one example's draws as Python values, a
list for a per-bin draw), so the gallery names no augmentation itself. Drawn with matplotlib's object API (no pyplot state), so it is safe in
tests, servers and the run report.
"""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from noisytag.audio.decode import AudioError, load
from noisytag.audio.features import log_mel, normalize
from noisytag.audio.windows import random_offsets
from noisytag.config import AugmentConfig, FrontendConfig, RunConfig
from noisytag.data.dataset import multi_hot
from noisytag.data.manifest import load_data
from noisytag.learn.augment import AUGMENTATIONS, Params, build_chain, build_steps

log = logging.getLogger(__name__)


def mixture_text(weights: np.ndarray, classes: Sequence[str], max_terms: int = 3, width: int = 34) -> str:
    """(K,) soft target → "0.62 bell + 0.38 siren" (largest first; "+ n more" beyond max_terms).

    Weights below 0.005 are left out; an all-zero target reads "(no label)". Underscores of class
    names are shown as spaces and the text is wrapped at ``width`` characters to fit under a panel.
    """
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(-weights, kind="stable")
    terms = [f"{weights[k]:.2f} {classes[k].replace('_', ' ')}" for k in order if weights[k] >= 0.005]
    if not terms:
        return "(no label)"
    text = " + ".join(terms[:max_terms])
    if len(terms) > max_terms:
        text += f" + {len(terms) - max_terms} more"
    return "\n".join(textwrap.wrap(text, width=width)) or text


def _title(name: str) -> str:
    return AUGMENTATIONS.get(name).meta.get("title", name)


def gallery_columns() -> tuple[str, ...]:
    """Column titles: ``original``, each registered augmentation (registration order), ``full chain``."""
    return ("original", *map(_title, AUGMENTATIONS.names()), "full chain")


def forced_on(cfg: AugmentConfig) -> AugmentConfig:
    """``cfg`` with each augmentation's ``forced`` fields (its probabilities 1), so every panel shows it."""
    forced: dict = {}
    for name in AUGMENTATIONS.names():
        forced |= AUGMENTATIONS.get(name).meta.get("forced", {})
    return dataclasses.replace(cfg, **forced)


@torch.no_grad()
def gallery(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig | None = None, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor, Params]]:
    """Each augmentation alone, then the full chain, applied to one batch: column → (x, y, params).

    For the single-augmentation columns the config is :func:`forced_on` (masking is shown even when
    the config leaves it off) so every panel shows the effect; partners (a ``perm`` draw, as in mixup
    and SpecMix) are a cyclic shift of the batch so no clip mixes with itself. ``params`` are the
    draws of that column (empty for ``original`` and ``full chain``). ``full chain`` is
    :func:`~noisytag.learn.augment.build_chain` with the config exactly as given (self-partners
    possible, as in training).
    """
    cfg = cfg or AugmentConfig()
    gen = torch.Generator().manual_seed(seed)
    steps = build_steps(forced_on(cfg), gen)
    n = x.shape[0]
    shifted = torch.roll(torch.arange(n), 1) if n > 1 else torch.zeros(1, dtype=torch.long)
    out: dict[str, tuple[torch.Tensor, torch.Tensor, Params]] = {"original": (x, y, {})}
    for name, step in steps.items():
        params = step.sample(x)
        if "perm" in params:
            params["perm"] = shifted
        params = {k: v.to(x.device) for k, v in params.items()}
        out[_title(name)] = (*step.apply(x, y, params), params)
    out["full chain"] = (*build_chain(cfg, gen)(x, y), {})
    return out


def _notes() -> dict[str, Callable[[dict], str]]:
    """Column title → its entry's ``note`` (one example's draws → the panel's corner text)."""
    entries = [AUGMENTATIONS.get(name) for name in AUGMENTATIONS.names()]
    return {_title(e.name): e.meta["note"] for e in entries if "note" in e.meta}


def gallery_figure(
    x,
    y,
    classes: Sequence[str],
    cfg: AugmentConfig | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
):
    """Draw the gallery of one batch; returns a matplotlib ``Figure``.

    ``x``: (N, F, T) or (N, 1, F, T) log-mel windows scaled to [0, 1] (numpy or torch); ``y``: (N, K)
    multi-hot targets; ``classes``: the K class names; ``names``: optional row titles (file names).
    Augmentations come from :func:`gallery` with ``cfg`` and ``seed``; each single-augmentation panel
    notes its random draw in the corner (its entry's ``note``).
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if x.dim() == 3:
        x = x[:, None]
    y = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    if x.dim() != 4 or y.dim() != 2 or x.shape[0] != y.shape[0] or y.shape[1] != len(classes):
        raise ValueError(
            f"gallery: expected x (N, F, T), y (N, {len(classes)}); got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    panels, notes = gallery(x, y, cfg or AugmentConfig(), seed=seed), _notes()
    n_rows, n_cols = x.shape[0], len(panels)
    fig = Figure(figsize=(1.95 * n_cols, 2.35 * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for col, (title, (xs, ys, params)) in enumerate(panels.items()):
        images, targets = xs[:, 0].numpy(), ys.numpy()
        for row in range(n_rows):
            ax = axes[row, col]
            ax.imshow(
                images[row],
                origin="lower",
                aspect="auto",
                cmap="magma",
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(mixture_text(targets[row], classes), fontsize=7, labelpad=3)
            note = notes[title]({k: v[row].tolist() for k, v in params.items()}) if title in notes else ""
            if note:
                ax.text(
                    0.02,
                    0.97,
                    note,
                    transform=ax.transAxes,
                    fontsize=6.5,
                    va="top",
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "linewidth": 0},
                )
            if row == 0:
                ax.set_title(title, fontsize=10, fontweight="bold")
            if col == 0:
                label = names[row] if names is not None else f"clip {row + 1}"
                ax.set_ylabel(f"{label}\nmel ↑  time →", fontsize=7)
    fig.suptitle(
        f"Batch augmentations (SPEC §4), seed {seed}: each alone (forced on), then the configured chain; "
        "training target under each panel",
        fontsize=9,
    )
    return fig


def _pick_clips(table, n_clips: int, rng: np.random.Generator) -> list[int]:
    """Row positions of up to ``n_clips`` clips, preferring clips whose labels differ from those taken."""
    order = rng.permutation(len(table))
    taken: list[int] = []
    seen: set[str] = set()
    for i in order:
        labels = set(table.iloc[i]["labels"])
        if labels and not labels & seen:
            taken.append(int(i))
            seen |= labels
        if len(taken) == n_clips:
            return taken
    rest = [int(i) for i in order if int(i) not in taken]
    return taken + rest[: n_clips - len(taken)]


def load_windows(
    data_dir: str | Path, n_clips: int = 4, seed: int = 0, cfg: RunConfig | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """A random ``train.window``-frame window of ``n_clips`` curated clips (noisy if there are none).

    Returns x (N, n_mels, window) scaled to [0, 1] per clip (min-max of the whole clip's dB values),
    y (N, K) multi-hot, the class names and the file names. Unreadable clips are skipped with a
    warning and replaced by others.
    """
    cfg = cfg or RunConfig()
    width = cfg.train.window
    dataset = load_data(data_dir, skip_invalid=True, splits=("curated", "noisy"))
    table = dataset.curated if len(dataset.curated) else dataset.noisy
    if not len(table):
        raise ValueError(f"{data_dir}: no labelled clips in train_curated.csv or train_noisy.csv")
    rng = np.random.default_rng(seed)
    candidates = _pick_clips(table, len(table), rng)
    windows, labels, names = [], [], []
    for i in candidates:
        row = table.iloc[i]
        try:
            db = log_mel(load(row["path"], cfg.frontend), cfg.frontend)
        except AudioError as err:
            log.warning("skipping %s", err)
            continue
        scaled = normalize(db, db.min(), db.max())
        if scaled.shape[1] < width:  # right-pad with the clip's floor, as the feature cache does
            scaled = np.pad(scaled, ((0, 0), (0, width - scaled.shape[1])))
        start = int(random_offsets(np.array([scaled.shape[1]]), width, rng)[0])
        windows.append(scaled[:, start : start + width].astype(np.float32))
        labels.append(tuple(row["labels"]))
        names.append(str(row["fname"]))
        if len(windows) == n_clips:
            break
    if not windows:
        raise ValueError(f"{data_dir}: none of the clips could be read")
    return np.stack(windows), multi_hot(labels, dataset.classes), list(dataset.classes), names


def save_gallery(
    data_dir: str | Path,
    out_png: str | Path,
    n_clips: int = 4,
    seed: int = 0,
    cfg: RunConfig | AugmentConfig | None = None,
) -> Path:
    """Load ``n_clips`` clips of ``data_dir``, draw :func:`gallery_figure` and write it as a PNG."""
    if isinstance(cfg, AugmentConfig):
        cfg = RunConfig(augment=cfg)
    cfg = cfg or RunConfig()
    x, y, classes, names = load_windows(data_dir, n_clips, seed, cfg)
    fig = gallery_figure(x, y, classes, cfg.augment, seed, names=names)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


def example_clips(
    submission: pd.DataFrame, data_dir: str | Path, frontend: FrontendConfig, n: int = 6
) -> tuple[list[dict], list[str]]:
    """Log-mels of ``n`` test clips spread over ``submission`` (fname + one column per class), each with
    the ensemble's top 3 labels and, when the data set knows them (truth/test.csv), the true ones.

    Returns (items, skipped): items are dicts ``db`` (n_mels, T) dB, ``title`` (file name) and
    ``caption``; skipped lists the clips that could not be read, with the reason. Raises ValueError
    when none could be read.
    """
    test = load_data(data_dir, skip_invalid=True, splits=("test",)).test.set_index("fname")
    classes = list(submission.columns[1:])
    known = test["truth"].to_dict() if "truth" in test.columns else {}
    picks = np.unique(np.linspace(0, len(submission) - 1, min(n, len(submission))).round().astype(int))
    probs = submission[classes].to_numpy(dtype=np.float64)[picks]
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    items, skipped = [], []
    for row, i in enumerate(picks):
        fname = str(submission["fname"].iloc[i])
        caption = "predicted: " + ", ".join(f"{classes[j]} {probs[row, j]:.2f}" for j in top[row])
        if fname in known:
            caption += f"\ntrue: {', '.join(known[fname]) or '—'}"
        try:
            if fname not in test.index:
                raise OSError("not in the data set's test clips")
            db = log_mel(load(test.at[fname, "path"], frontend), frontend)
        except (AudioError, OSError) as err:
            skipped.append(f"{fname} ({err})")
            continue
        items.append({"db": db, "title": fname, "caption": caption})
    if not items:
        raise ValueError("no example clip could be read: " + "; ".join(skipped))
    return items, skipped
