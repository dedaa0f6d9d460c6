"""Figures and HTML building blocks of the run report.

Each figure function takes plain arrays/frames and returns a matplotlib Figure. Figures are made with ``matplotlib.figure.Figure`` directly (no pyplot), so nothing here touches the
global backend or leaks open figures; :func:`figure_png` renders any figure to base64 PNG for embedding
in the self-contained HTML report (:func:`img_tag`). :func:`html_table` and :data:`CSS` give the report's
tables and look.
"""

from __future__ import annotations

import base64
import html
import io
import sys

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# colour-blind-friendly palette (Okabe-Ito) for stages; tab10 for folds
STAGE_COLORS = {1: "#999999", 2: "#0072B2", 3: "#E69F00", 4: "#009E73"}
ACCENT = "#0072B2"


def figure_png(fig, dpi: int = 96) -> str:
    """Render ``fig`` to PNG and return it base64-encoded (for ``<img src="data:image/png;base64,...">``).

    Closes the figure in pyplot too when it was made there (e.g. by another module), so repeated reports
    do not accumulate open figures.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(fig, alt: str) -> str:
    """``<img>`` holding ``fig`` as an embedded PNG."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{figure_png(fig)}">'


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def cell_text(value, digits: int = 5) -> str:
    """A table cell: "—" for missing numbers, floats with ``digits`` decimals, anything else escaped."""
    if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def seconds_text(value) -> str:
    """Seconds → "12.3 s", "4 min 05 s", "2 h 03 min"; "—" when missing."""
    s = _number(value)
    if s is None or not np.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def html_table(
    frame: pd.DataFrame, numeric: dict[str, int] | None = None, cls: str = "", raw=(), right=()
) -> str:
    """HTML table of ``frame``; ``numeric`` maps column → decimals (right-aligned, formatted); columns
    in ``raw`` hold ready-made HTML (links), ``right`` columns are right-aligned; the rest is escaped."""
    numeric = numeric or {}
    right = set(right) | set(numeric)
    num = ' class="num"'
    head = "".join(f"<th{num if c in right else ''}>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, rec, strict=True):
            if col in raw:
                cells.append(f"<td>{value}</td>")
            elif col in numeric:
                cells.append(f"<td{num}>{cell_text(_number(value), numeric[col])}</td>")
            else:
                cells.append(f"<td{num if col in right else ''}>{cell_text(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


CSS = """
:root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --accent: #0b63b6; --bg: #f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #14213d; color: #fff; padding: 22px 0 18px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600; }
header .meta { color: #c9d3e6; font-size: 13.5px; }
header .meta b { color: #fff; font-weight: 600; }
.wrap { max-width: 1240px; margin: 0 auto; padding: 0 28px; }
nav { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 18px; margin: 20px 0; }
nav ol { margin: 4px 0; padding-left: 22px; columns: 2; }
nav a, a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px 24px 20px;
          margin: 0 0 22px; }
h2 { font-size: 20px; margin: 16px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 8px; color: #344054; }
p { margin: 8px 0; max-width: 100ch; }
.small { font-size: 13px; color: var(--muted); }
.na { color: #8a5a00; background: #fff8e6; border: 1px solid #f5dfa8; border-radius: 6px; padding: 8px 12px;
      font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 11px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f2f4f7; font-weight: 600; color: #344054; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef4fb; }
td.num, th.num { text-align: right; }
table.compact { font-size: 13px; }
table.compact td { padding: 3px 10px; }
table.ref { background: #fbfbf6; }
.pair { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0 14px; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; font-size: 12.5px;
      max-height: 520px; overflow: auto; }
.ok { color: #1a7f37; } .bad { color: #c0362c; font-weight: 600; }
footer { color: var(--muted); font-size: 12.5px; padding: 8px 0 30px; }
"""


def _style(ax) -> None:
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def per_epoch(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch: a logger may write training and validation values on separate rows (NaN
    elsewhere); the mean over each epoch's rows skips the NaNs and merges them."""
    cols = [c for c in ("train_loss", "val_loss", "val_lwlrap", "lr") if c in metrics.columns]
    if "epoch" not in metrics.columns:
        metrics = metrics.assign(epoch=np.arange(len(metrics)))
    frame = metrics[["epoch", *cols]].apply(pd.to_numeric, errors="coerce")
    return frame.groupby("epoch", sort=True).mean().reset_index()


def curves_figure(curves: dict[int, pd.DataFrame]) -> Figure:
    """Training curves of one stage: loss, validation lwlrap and learning rate against epoch.

    ``curves`` maps fold number → metrics frame (epoch, train_loss, val_loss, val_lwlrap, lr); one colour
    per fold, training loss solid and validation loss dashed.
    """
    fig = Figure(figsize=(13, 3.3))
    axes = fig.subplots(1, 3)
    cmap = [f"C{i % 10}" for i in range(max(len(curves), 1))]
    last = 1
    for i, (fold, raw) in enumerate(sorted(curves.items())):
        df = per_epoch(raw)
        x = df["epoch"].to_numpy() + 1
        last = max(last, int(x.max()) if len(x) else 1)
        color = cmap[i]
        dots = {"marker": "o", "ms": 3} if len(x) < 30 else {}  # a 1-epoch run still shows its points
        if "train_loss" in df:
            axes[0].plot(x, df["train_loss"], color=color, lw=1.4, **dots)
        if "val_loss" in df:
            axes[0].plot(x, df["val_loss"], color=color, lw=1.2, ls="--", mfc="white", **dots)
        if "val_lwlrap" in df:
            axes[1].plot(x, df["val_lwlrap"], color=color, lw=1.4, label=f"fold {fold}", **dots)
        if "lr" in df:
            axes[2].plot(x, df["lr"], color=color, lw=1.4, **dots)
    for ax, name in zip(axes, ("loss (— train, -- val)", "validation lwlrap", "learning rate"), strict=True):
        _style(ax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, last + 0.5)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if curves:
        axes[1].legend(fontsize=7, ncol=2 if len(curves) > 5 else 1, frameon=False)
    fig.tight_layout()
    return fig


def per_class_figure(names: list[str], values: np.ndarray, weights: np.ndarray, overall: float) -> Figure:
    """Horizontal bars of per-class lwlrap, worst class at the top; the bar label gives the class's
    share of positive labels (its weight in the overall lwlrap)."""
    order = np.argsort(values, kind="stable")
    n = len(order)
    fig = Figure(figsize=(10, 0.9 + 0.22 * n))
    ax = fig.subplots()
    y = np.arange(n)
    vals = values[order]
    colors = [_ramp(v) for v in vals]
    ax.barh(y, vals, color=colors, height=0.75)
    ax.set_yticks(y, [names[i] for i in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.axvline(overall, color="#333333", lw=1, ls="--")
    ax.text(overall, -0.9, f" overall {overall:.3f}", fontsize=8, va="bottom", ha="left")
    for yi, (v, w) in enumerate(zip(vals, weights[order], strict=True)):
        ax.text(min(v, 1.0) + 0.01, yi, f"{v:.3f}  ({100 * w:.1f} %)", va="center", fontsize=7, color="#444")
    ax.set_xlabel("lwlrap (bar label: value and share of positive labels)")
    ax.set_ylim(n - 0.5, -1.5)
    _style(ax)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def _ramp(v: float) -> tuple:
    """Red (0) → amber (0.5) → green (1) for a score in [0, 1]."""
    v = float(np.clip(v, 0, 1)) if np.isfinite(v) else 0.0
    lo, mid, hi = np.array([0.84, 0.33, 0.26]), np.array([0.93, 0.69, 0.25]), np.array([0.30, 0.65, 0.42])
    rgb = lo + (mid - lo) * (v / 0.5) if v < 0.5 else mid + (hi - mid) * ((v - 0.5) / 0.5)
    return tuple(rgb)


def selection_figure(
    counts: pd.DataFrame, precision: pd.DataFrame | None = None, base_rate: float | None = None
) -> Figure:
    """Clips kept per label by each selection stage (grouped bars; rows = labels, columns = stages).

    With ``precision`` (same shape; fraction of kept clips whose labels are right) a second panel shows
    per-label precision, so labels where the selection admits wrong clips stand out; ``base_rate`` (the
    share of correct clips in the whole noisy set) is drawn as a dashed line for comparison; a cross
    marks a label whose kept clips are all wrong.
    """
    n = len(counts)
    k = max(len(counts.columns), 1)
    panels = 2 if precision is not None else 1
    fig = Figure(figsize=(max(8, 0.16 * n + 2), 3.4 * panels))
    axes = np.atleast_1d(fig.subplots(panels, 1, sharex=True))
    x = np.arange(n)
    width = 0.8 / k
    for j, col in enumerate(counts.columns):
        stage = int(str(col).removeprefix("stage "))
        color = STAGE_COLORS.get(stage, f"C{j}")
        offset = (j - (k - 1) / 2) * width
        axes[0].bar(x + offset, counts[col].to_numpy(), width, color=color, label=str(col))
        if precision is not None:
            values = precision[col].to_numpy(dtype=float)
            axes[1].bar(x + offset, values, width, color=color, label=str(col))
            zero = values == 0  # kept clips, none right: mark it, a zero-height bar is invisible
            axes[1].plot(x[zero] + offset, np.full(zero.sum(), 0.03), "x", color=color, ms=5, mew=1.5)
    axes[0].set_ylabel("clips kept")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes[0].legend(fontsize=8, frameon=False, ncol=k, loc="lower right", bbox_to_anchor=(1, 1))
    if precision is not None:
        axes[1].set_ylabel("precision")
        axes[1].set_ylim(0, 1.05)
        if base_rate is not None and np.isfinite(base_rate):
            axes[1].axhline(base_rate, color="#333333", lw=1, ls="--")
            axes[1].text(
                n - 0.45, base_rate + 0.01, "noisy-set base rate", ha="right", va="bottom", fontsize=8
            )
    for ax in axes:
        _style(ax)
        ax.grid(axis="x", visible=False)
        ax.set_xlim(-0.6, n - 0.4)
    axes[-1].set_xticks(x, [str(i) for i in counts.index], rotation=90, fontsize=7)
    fig.tight_layout()
    return fig


def logmel_figure(items: list[dict], hop_seconds: float) -> Figure:
    """Grid of log-mel spectrograms; each item: ``db`` (n_mels, T) array, ``title`` and ``caption``."""
    cols = 2 if len(items) > 1 else 1
    rows = (len(items) + cols - 1) // cols
    fig = Figure(figsize=(6.5 * cols, 2.9 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, item in zip(axes, items, strict=False):
        db = item["db"]
        extent = (0, db.shape[1] * hop_seconds, 0, db.shape[0])
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", extent=extent, interpolation="nearest")
        ax.set_title(f"{item['title']}\n{item['caption']}", fontsize=8.5, loc="left")
        ax.set_xlabel("time (s)", fontsize=8)
        ax.set_ylabel("mel band", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(items) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
