"""The review report: what a label review found and what the fixes bought, one self-contained HTML file.

``write_review_report(run)`` reads what the review wrote under ``RUN/review/`` and writes
``RUN/review/report.html`` with these sections (each a ``<section id=...>``, each rendering on its own:
a missing input gives "not available: reason"):

- ``retrain``     test lwlrap before → after of each retrain with its paired bootstrap 95 % interval
                  (``retrain-k/comparison.json``), and "stages 1-2 kept from RUN" where they were
                  (``retrain-k/kept_stages.json``); the retrain's wall and training time;
- ``per-class``   per-class lwlrap change of the latest compared retrain (``per_class_change.csv``);
- ``corrections`` given versus reviewed labels (``corrections.csv``; ``label_changes.csv`` per label);
- ``curve``       the cleaning curve: wrong label sets found against clips reviewed, per policy
                  (``curve.csv``: n_reviewed, wrong_found, policy).

The numbers come from ``noisytag.review.retrain.compare`` / ``write_comparison`` (which the review command
runs after a retrain); nothing here re-scores predictions. :func:`review_sections` returns the sections for a
caller that wants them inside another page.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from noisytag import __version__
from noisytag.fileio import write_bytes
from noisytag.report import plots

logger = logging.getLogger(__name__)

__all__ = ["curve_figure", "review_sections", "render_review_report", "write_review_report", "kept_sentence"]

CORRECTION_ROWS = 200  # clips listed in the given-vs-reviewed table (the CSV has them all)
CURVE_POINTS = (25, 50, 100, 200)
_RETRAIN = re.compile(r"^retrain-(\d+)$")


class _Unavailable(Exception):
    """A section's input is missing; the message says which."""


def _na(reason: str) -> str:
    return f'<p class="na">not available: {html.escape(reason)}</p>'


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _retrains(review: Path) -> list[Path]:
    found = [
        (int(m.group(1)), p) for p in review.glob("retrain-*") if (m := _RETRAIN.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def kept_sentence(retrain: str | Path) -> str | None:
    """ "stages 1-2 kept from RUN" for a retrain that kept stages (its kept_stages.json), else None."""
    kept = _read_json(Path(retrain) / "kept_stages.json")
    stages = kept.get("stages") or []
    if not stages:
        return None
    span = (
        f"{stages[0]}-{stages[-1]}"
        if len(stages) > 1 and stages == list(range(stages[0], stages[-1] + 1))
        else ", ".join(map(str, stages))
    )
    return f"stages {span} kept from {kept.get('source')}"


def _interval(c: dict) -> str:
    return f"{c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def section_retrain(review: Path, latest: dict | None) -> str:
    rows, notes = [], []
    for out in _retrains(review):
        c = _read_json(out / "comparison.json")
        if latest is not None and Path(latest.get("after_run", "")).resolve() == out.resolve():
            c = latest
        info = _read_json(out / "retrain.json")
        kept = kept_sentence(out)
        state = (
            "compared"
            if c
            else (
                "ended, exit code " + str(info["returncode"])
                if info.get("returncode") is not None
                else "not compared"
            )
        )
        rows.append({
            "retrain": out.name,
            "kind": "whole pipeline" if info.get("whole") else "stages 3-4",
            "test lwlrap before": c.get("before", np.nan),
            "test lwlrap after": c.get("after", np.nan),
            "change [95 % interval]": _interval(c) if c else state,
            "test clips": c.get("n_test", ""),
            "wall time": plots.seconds_text(c.get("wall_seconds")),
            "training time": plots.seconds_text(c.get("train_seconds")),
        })  # fmt: skip
        if kept:
            notes.append(f"{out.name}: {kept}.")
    if not rows:
        raise _Unavailable(f"no retrain in {review} yet (noisytag review RUN --retrain)")
    table = pd.DataFrame(rows)
    text = (
        "Test lwlrap of the run before the review and of each retrain on the corrected manifest; the change "
        "is after − before with a paired bootstrap 95 % interval over the test clips (the same resamples "
        "for both). An interval that excludes 0 is a change the test set can tell apart."
    )
    kept_html = "".join(f"<p><b>{html.escape(n)}</b></p>" for n in notes)
    return (
        f"<p>{text}</p>"
        + plots.html_table(table, {"test lwlrap before": 4, "test lwlrap after": 4}, right=("test clips",))
        + kept_html
    )


def _latest_compared(review: Path, latest: dict | None) -> tuple[str, pd.DataFrame]:
    if latest is not None and isinstance(latest.get("per_class"), pd.DataFrame):
        return Path(latest["after_run"]).name, latest["per_class"]
    for out in reversed(_retrains(review)):
        path = out / "per_class_change.csv"
        if path.is_file():
            return out.name, pd.read_csv(path)
    raise _Unavailable("no compared retrain yet (per_class_change.csv)")


def change_figure(table: pd.DataFrame) -> Figure:
    """Horizontal bars of each class's lwlrap change (after − before), largest loss at the top."""
    table = table.sort_values("change", kind="stable")
    n = len(table)
    fig = Figure(figsize=(9, 0.9 + 0.22 * n))
    ax = fig.subplots()
    y = np.arange(n)
    change = table["change"].to_numpy(float)
    ax.barh(y, change, color=["#c0362c" if v < 0 else "#1a7f37" for v in change], height=0.75)
    ax.set_yticks(y, list(table["label"]), fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#333333", lw=1)
    ax.set_xlabel("per-class test lwlrap change (after − before)")
    plots._style(ax)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def section_per_class(review: Path, latest: dict | None) -> str:
    name, table = _latest_compared(review, latest)
    if table.empty:
        raise _Unavailable("no class with a true test label")
    shown = table[["label", "before", "after", "change", "positives"]]
    return (
        f"<p>Per-class test lwlrap before and after {html.escape(name)}, largest loss first.</p>"
        + plots.img_tag(change_figure(table), "per-class change")
        + plots.html_table(shown, {"before": 4, "after": 4, "change": 4}, cls="compact", right=("positives",))
    )


def section_corrections(review: Path) -> str:
    path = review / "corrections.csv"
    if not path.is_file():
        raise _Unavailable(f"{path.name}: no decision yet")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if frame.empty:
        raise _Unavailable(f"{path.name}: no decision yet")
    given = frame["given"].map(lambda s: set(filter(None, s.split(","))))
    reviewed = frame["reviewed"].map(lambda s: set(filter(None, s.split(","))))
    changed = (frame["action"] == "drop") | (given != reviewed)
    counts = frame["action"].value_counts()
    summary = ", ".join(f"{html.escape(k)} {int(v)}" for k, v in counts.items())
    parts = [
        f"<p>{len(frame)} clip(s) decided, {int(changed.sum())} changed (labels set differently, or dropped): "
        f"{summary}. The full list is <code>review/corrections.csv</code>.</p>"
    ]
    for out in reversed(_retrains(review)):
        if (out / "label_changes.csv").is_file():
            labels = pd.read_csv(out / "label_changes.csv")
            labels = labels[labels["changed"] + labels["dropped"] > 0] if "dropped" in labels else labels
            parts.append(
                "<h3>Per label</h3>"
                + plots.html_table(labels, cls="compact", right=tuple(labels.columns[1:]))
            )
            break
    shown = frame[changed][
        ["fname", "given", "reviewed", "action"] + [c for c in ("reviewer",) if c in frame]
    ]
    if len(shown) > CORRECTION_ROWS:
        parts.append(f'<p class="small">first {CORRECTION_ROWS} of {len(shown)} changed clips</p>')
    parts.append(
        "<h3>Given versus reviewed</h3>" + plots.html_table(shown.head(CORRECTION_ROWS), cls="compact")
    )
    return "".join(parts)


def curve_figure(curve: pd.DataFrame) -> Figure:
    """Wrong label sets found against clips reviewed, one line per policy, with the line every reviewed clip
    being wrong would draw (the most a review could find)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    top = float(curve["n_reviewed"].max()) if len(curve) else 1.0
    ax.plot([0, top], [0, top], color="#bbbbbb", lw=1, ls=":", label="every reviewed clip wrong")
    policies = list(dict.fromkeys(curve["policy"])) if "policy" in curve else ["review"]
    for i, policy in enumerate(policies):
        part = curve[curve["policy"] == policy] if "policy" in curve else curve
        part = part.sort_values("n_reviewed")
        if len(part) and part["n_reviewed"].iloc[0] > 0:  # every curve starts at nothing reviewed
            part = pd.concat([pd.DataFrame({"n_reviewed": [0], "wrong_found": [0]}), part], ignore_index=True)
        name = "random (expected)" if policy == "random" else str(policy)  # simulate.random_curve
        ax.plot(part["n_reviewed"], part["wrong_found"], lw=1.8, color=f"C{i}", label=name,
                marker="o" if len(part) < 30 else None, ms=3)  # fmt: skip
    ax.set_xlabel("clips reviewed")
    ax.set_ylabel("wrong label sets found")
    ax.set_xlim(0, top * 1.02)
    ax.set_ylim(0, None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, frameon=False)
    plots._style(ax)
    fig.tight_layout()
    return fig


def curve_table(curve: pd.DataFrame) -> pd.DataFrame:
    """Wrong label sets found at N = 25, 50, 100, 200 reviewed (where reached), one column per policy, and
    found per clip reviewed."""
    rows = []
    for n in CURVE_POINTS:
        row: dict = {"clips reviewed": n}
        for policy, part in curve.groupby("policy", sort=False) if "policy" in curve else [("review", curve)]:
            reached = part[part["n_reviewed"] <= n]
            if len(reached) and part["n_reviewed"].max() >= n:
                found = float(reached.sort_values("n_reviewed")["wrong_found"].iloc[-1])
                row[f"{policy}: found"] = found
                row[f"{policy}: per clip"] = found / n
        if len(row) > 1:
            rows.append(row)
    return pd.DataFrame(rows)


def section_curve(review: Path) -> str:
    path = review / "curve.csv"
    if not path.is_file():
        raise _Unavailable(f"{path.name}: no simulated review yet (noisytag review RUN --simulate TRUTH.csv)")
    curve = pd.read_csv(path)
    missing = {"n_reviewed", "wrong_found"} - set(curve.columns)
    if missing:
        raise _Unavailable(f"{path.name}: column(s) {', '.join(sorted(missing))} missing")
    table = curve_table(curve)
    digits = {c: (3 if c.endswith("per clip") else 0) for c in table.columns if c != "clips reviewed"}
    return (
        "<p>Wrong label sets found against noisy clips reviewed (the simulator answers from the truth), per "
        "queue policy. The dotted line is the most any order could find.</p>"
        + plots.img_tag(curve_figure(curve), "cleaning curve")
        + (plots.html_table(table, digits, right=("clips reviewed",)) if len(table) else "")
    )


def review_sections(run: str | Path, comparison: dict | None = None) -> list[tuple[str, str, str]]:
    """(id, title, inner HTML) of each review section of ``run`` (``comparison``: a fresh
    ``noisytag.review.retrain.compare`` result, used for its retrain instead of the saved files)."""
    review = Path(run) / "review"
    builders: list[tuple[str, str, Callable[[], str]]] = [
        ("retrain", "Before and after the retrain", lambda: section_retrain(review, comparison)),
        ("per-class", "Per-class change", lambda: section_per_class(review, comparison)),
        ("corrections", "Given versus reviewed labels", lambda: section_corrections(review)),
        ("curve", "Cleaning curve", lambda: section_curve(review)),
    ]
    out = []
    for sid, title, build in builders:
        try:
            body = build()
        except _Unavailable as err:
            body = _na(str(err))
        except Exception as err:  # noqa: BLE001 - one broken input must not cost the whole report
            logger.warning(
                "review report section %s failed: %s: %s", sid, type(err).__name__, err, exc_info=True
            )
            body = _na(f"failed to build: {type(err).__name__}: {err}")
        out.append((sid, title, body))
    return out


def render_review_report(run: str | Path, comparison: dict | None = None) -> str:
    """The review report of ``run`` as one HTML string (sections in the module docstring)."""
    run = Path(run)
    sections = review_sections(run, comparison)
    body = "".join(
        f'<section id="{sid}"><h2>{i + 1}. {html.escape(title)}</h2>{inner}</section>'
        for i, (sid, title, inner) in enumerate(sections)
    )
    toc = "".join(f'<li><a href="#{sid}">{html.escape(title)}</a></li>' for sid, title, _ in sections)
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    name = html.escape(run.resolve().name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>noisytag review · {name}</title><style>{plots.CSS}</style></head>
<body><header><div class="wrap"><h1>noisytag review report · {name}</h1>
<div class="meta">run <b>{html.escape(str(run.resolve()))}</b></div></div></header>
<div class="wrap"><nav><b>Contents</b><ol>{toc}</ol></nav>
<main>{body}</main>
<footer>Generated by noisytag {__version__} on {generated}. Self-contained: plots are embedded.</footer></div></body></html>
"""


def write_review_report(
    run: str | Path, comparison: dict | None = None, out: str | Path | None = None
) -> Path:
    """Write ``RUN/review/report.html`` (or ``out``); always written, missing inputs say so → its path."""
    out = Path(out) if out is not None else Path(run) / "review" / "report.html"
    write_bytes(out, render_review_report(run, comparison).encode("utf-8"))
    return out
