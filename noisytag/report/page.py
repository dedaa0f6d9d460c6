"""The run report: one self-contained HTML file (inline CSS, base64 PNG plots, no network).

``write_report(run_dir)`` reads the files the pipeline wrote into a run directory (layout in
:mod:`noisytag.rundir`; the tables through :mod:`noisytag.runs.runstats`) and writes ``report.html`` with
these sections, each a ``<section id=...>``:

- ``stage-table``   the article's table for this run (stage_table.csv, test_scores.csv) beside SPEC §6;
- ``curves``        training curves per stage and fold (each fold's metrics.csv);
- ``per-class``     per-class lwlrap of the final ensemble, worst first (per_class.csv);
- ``selections``    stage 3 and 4 selections per label, precision vs base rate, the two detectors
                    of wrong label sets (selections/stage{k}.csv, selection.csv);
- ``least-trusted`` the noisy clips with the lowest scores ({arch}/scores.csv; also least_trusted.csv);
- ``gallery``       the augmentation gallery and example test log-mels (the data set's audio);
- ``config``        resolved config, software versions recorded in run.json, timings.

Nothing is re-derived from predictions. Every section renders on its own: a missing input gives "not
available: reason", so a partial run (or a run whose data set has moved) still gets a report.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag import __version__
from noisytag.config import ConfigError, RunConfig, load_config
from noisytag.fileio import software_versions, write_bytes, write_csv
from noisytag.report import plots
from noisytag.report.gallery import example_clips, gallery_figure, load_windows
from noisytag.report.summary import ARTICLE_TABLE
from noisytag.rundir import RunDir
from noisytag.runs import runstats as rs
from noisytag.runs.runstats import Unavailable

logger = logging.getLogger(__name__)

LEAST_TRUSTED_ROWS = 30
EXAMPLE_CLIPS = 6
DETECTORS = {"agreement": "agreement", "lwlrap_precision": "OOF lwlrap precision", "lwlrap_recall":
             "OOF lwlrap recall", "cleanlab_precision": "cleanlab precision", "cleanlab_recall": "cleanlab recall", "kappa": "Cohen's κ"}  # fmt: skip


@dataclass
class ReportInputs:
    """What every section reads: the run directory, its config and run.json, the data set (if any)."""

    run: RunDir
    out: Path
    data_dir: Path | None
    info: dict = field(default_factory=dict)
    cfg: RunConfig | None = None
    classes: list[str] = field(default_factory=list)

    def link(self, path: Path) -> str:
        """Relative href from the report to ``path`` (works offline while both stay together)."""
        return html.escape(os.path.relpath(path, self.out.parent).replace(os.sep, "/"))


def _na(reason: str) -> str:
    return f'<p class="na">not available: {html.escape(reason)}</p>'


def _p(text: str) -> str:
    return f"<p>{text}</p>"


def _finite(value) -> bool:
    return isinstance(value, int | float | np.number) and bool(np.isfinite(value))


# ----------------------------------------------------------------------------------------------
# sections (each returns inner HTML or raises Unavailable)


def section_stage_table(ins: ReportInputs) -> str:
    ours = rs.stage_rows(ins.run).rename(columns={
        "lwlrap_noisy": "CV lwlrap noisy", "lwlrap_curated": "CV lwlrap curated", "test_lwlrap": "test lwlrap",
        "lwlrap_noisy_truth": "CV lwlrap noisy (true labels)", "n_train": "clips trained", "seconds": "time",
        "test_lwlrap_public": "test lwlrap public", "test_lwlrap_private": "test lwlrap private"})  # fmt: skip
    if "clips trained" in ours:
        ours["clips trained"] = [f"{int(v):,}" if _finite(v) else "—" for v in ours["clips trained"]]
    if "time" in ours:
        ours["time"] = [plots.seconds_text(v) for v in ours["time"]]
    article = ARTICLE_TABLE.set_axis(["model", "lwlrap noisy", "lwlrap curated", "public LB"], axis=1)
    digits = {c: 5 for c in ours.columns if "lwlrap" in c}
    return (
        '<div class="pair"><div><h3>This run</h3>'
        + plots.html_table(ours, digits, right=("clips trained", "time"))
        + "</div><div><h3>The article (real data, CNN-model-1)</h3>"
        + plots.html_table(article, {"lwlrap noisy": 5, "lwlrap curated": 5, "public LB": 3}, cls="ref")
        + "</div></div>"
        + _p(
            "CV lwlrap: out-of-fold predictions of each stage's fold models on the noisy and curated sets. "
            "Test lwlrap: against the test truth when the data set has one (synthetic data, or FSDKaggle2019 "
            "as fetched, whose public and private leaderboard parts are also scored apart). The article's "
            "figures come from FSDKaggle2019 (public LB: the 1,120 public test clips; 0.738 was 8th of "
            "881), so they are a reference for the shape of the table (stage 1 fits the noisy set, stage 2 "
            "the curated set, stages 3–4 gain on both), not a target for other data."
        )
    )


def section_curves(ins: ReportInputs) -> str:
    parts = []
    for (arch, stage), paths in rs.metrics_paths(ins.run, ins.cfg).items():
        curves, bad = {}, []
        for fold, path in paths.items():
            try:
                curves[fold] = rs.read_csv(path)
            except Unavailable as err:
                bad.append(f"fold {fold}: {err}")
        parts.append(f"<h3>{html.escape(arch)} · stage {stage}</h3>")
        parts.append(
            plots.img_tag(plots.curves_figure(curves), f"{arch} stage {stage} training curves")
            if curves
            else _na(bad[0])
        )
        if bad and curves:
            parts.append(f'<p class="small">missing: {html.escape("; ".join(bad))}</p>')
    if not parts:
        raise Unavailable("no metrics.csv of any fold in the run yet")
    return _p(
        "One colour per fold. Validation: the curated clips of the held-out fold (every stage)."
    ) + "".join(parts)


def section_per_class(ins: ReportInputs) -> str:
    table = rs.per_class(ins.run)
    present = table[table["weight"] > 0]
    if present.empty:
        raise Unavailable("per_class.csv: no class has a true label")
    overall = float((present["lwlrap"] * present["weight"]).sum())
    fig = plots.per_class_figure(
        list(present["label"]), present["lwlrap"].to_numpy(), present["weight"].to_numpy(), overall
    )
    missing = len(table) - len(present)
    note = f" {missing} class(es) without any true label are left out." if missing else ""
    text = (f"Source: {html.escape(str(table['source'].iloc[0]))} "
            f'(<a href="{ins.link(ins.run.per_class)}">per_class.csv</a>); overall lwlrap <b>{overall:.4f}</b>. '
            f"Worst classes first; the bar label gives the class's share of all true labels.{note}")  # fmt: skip
    return _p(text) + plots.img_tag(fig, "per-class lwlrap")


def section_selections(ins: ReportInputs) -> str:
    try:
        summary, summary_na = rs.selection_summary(ins.run), None
    except Unavailable as err:
        summary, summary_na = pd.DataFrame(columns=["arch", "stage"]), str(err)
    parts, missing, known = [], [], False
    for arch in ins.run.architectures():
        try:
            stats = rs.selection_counts(ins.run, arch, ins.classes)
        except Unavailable as err:
            missing.append(str(err))
            continue
        rows = []
        for k, path in stats["paths"].items():
            rec = summary[(summary["arch"] == arch) & (summary["stage"] == k)].to_dict("records")
            rec = rec[0] if rec else {}
            prec, base = rec.get("precision", np.nan), rec.get("base_rate", np.nan)
            known |= _finite(prec)
            rows.append({"selection": f'<a href="{ins.link(path)}">stage {k}</a>', "selected by": rec.get("method", "—"),
                         "clips kept": stats["kept"][k],
                         "labels covered": f"{stats['covered'][k]}" + (f" of {len(ins.classes)}" if ins.classes else ""),
                         "precision": prec, "noisy-set base rate": base, "gain": prec - base})  # fmt: skip
        three = {"precision": 3, "noisy-set base rate": 3, "gain": 3}
        table = plots.html_table(pd.DataFrame(rows), three, raw=("selection",), right=("clips kept",))
        base = rows[0]["noisy-set base rate"]
        fig = plots.selection_figure(stats["counts"], stats["precision"], base if _finite(base) else None)
        parts.append(
            f"<h3>{html.escape(arch)}</h3>" + table + plots.img_tag(fig, f"{arch} selections per label")
        )
    if not parts:
        raise Unavailable("; ".join(missing) or "no architecture with finished folds yet")
    note = "Counts: kept clips per label (a clip with two labels counts for both). "
    note += ("Precision: share of kept clips whose noisy labels equal their true labels; base rate: the same share "
             "over the whole noisy set." if known else "Precision: unknown (no ground truth for the noisy set).")  # fmt: skip
    notes = [*missing, *([f"selection.csv: {summary_na}"] if summary_na else [])]
    return _p(note) + "".join(parts) + _detectors(ins, summary) + "".join(_p(html.escape(m)) for m in notes)


def _detectors(ins: ReportInputs, summary: pd.DataFrame) -> str:
    """The audit of selection.csv: how often the two detectors agree and, with truth, how well each
    finds the clips whose given label set is wrong."""
    cols = [c for c in DETECTORS if c in summary and summary[c].notna().any()]
    if not cols:
        return ""
    table = summary[["arch", "stage", *cols]].rename(columns=DETECTORS)
    return (
        "<h3>Detectors of wrong label sets: OOF lwlrap vs cleanlab</h3>"
        + plots.html_table(table, {DETECTORS[c]: 3 for c in cols}, cls="compact")
        + _p(
            f"Both detectors judge every noisy clip (selections/stage<i>k</i>_audit.csv); "
            f"<code>selection.method</code> decides which one selects. Agreement: share of clips with the "
            f"same verdict. Precision: share of flagged clips whose labels are wrong; recall: share of wrong "
            f'clips flagged. Summary: <a href="{ins.link(ins.run.selection_table)}">selection.csv</a>.'
        )  # fmt: skip
    )


def section_least_trusted(ins: ReportInputs) -> str:
    table = rs.least_trusted(ins.run)
    write_csv(ins.run.least_trusted, table, float_format="%.5f")
    head = table.head(LEAST_TRUSTED_ROWS).copy()
    head.insert(0, "rank", np.arange(1, len(head) + 1))
    if "correct" in head:
        head["correct"] = head["correct"].map(
            {True: '<span class="ok">✓</span>', False: '<span class="bad">✗ wrong</span>'}
        )
    s_cols = [c for c in head.columns if re.fullmatch(r"s\d+", c)]
    text = (f"The {len(table):,} noisy clips ranked by trust — score = mean of the per-stage scores "
            f"{', '.join(s_cols)} (each the clip's own lwlrap of its out-of-fold prediction). The least trusted "
            f'are the clips to re-label first. Full list: <a href="{ins.link(ins.run.least_trusted)}">least_trusted.csv</a>.')  # fmt: skip
    if "correct" in table:
        correct = table["correct"].astype(bool)
        wrong, rate = int((~correct.head(len(head))).sum()), float(1 - correct.mean())
        text += (f" Of these {len(head)}, <b>{wrong}</b> really are mislabelled "
                 f"(noise rate of the whole noisy set: {100 * rate:.1f} %).")  # fmt: skip
    return _p(text) + plots.html_table(
        head, {c: 3 for c in ["score", *s_cols]}, cls="compact", raw=("correct",)
    )


def section_gallery(ins: ReportInputs) -> str:
    parts = []
    for title, make in (("Augmentation gallery", _augment_gallery), ("Example test clips", _examples)):
        try:
            parts.append(f"<h3>{title}</h3>" + make(ins))
        except Unavailable as err:
            parts.append(f"<h3>{title}</h3>" + _na(str(err)))
    return "".join(parts)


def _augment_gallery(ins: ReportInputs) -> str:
    if ins.data_dir is None or not ins.data_dir.exists():
        raise Unavailable("data set not found (pass data_dir or record it in run.json)")
    cfg = ins.cfg or RunConfig()
    try:
        x, y, classes, names = load_windows(ins.data_dir, n_clips=4, seed=0, cfg=cfg)
    except (ValueError, OSError) as err:
        raise Unavailable(str(err)) from None
    fig = gallery_figure(x, y, classes, cfg.augment, seed=0)
    text = (f"Random training windows of {', '.join(map(html.escape, names))} (rows) before and after each "
            "augmentation of the run's config (SPEC §4); the label mixture it trains on under each panel.")  # fmt: skip
    return _p(text) + plots.img_tag(fig, "augmentation gallery")


def _examples(ins: ReportInputs) -> str:
    submission = rs.read_csv(ins.run.submission, "test predictions")
    if ins.data_dir is None or not ((ins.data_dir / "test").is_dir() or ins.data_dir.is_file()):
        raise Unavailable("test audio not found (pass data_dir or record it in run.json)")
    frontend = (ins.cfg or RunConfig()).frontend
    try:
        items, skipped = example_clips(submission, ins.data_dir, frontend, EXAMPLE_CLIPS)
    except ValueError as err:
        raise Unavailable(str(err)) from None
    fig = plots.logmel_figure(items, frontend.hop_length / frontend.sample_rate)
    text = _p("Log-mel spectrograms (dB) of test clips, with the ensemble's top 3 labels.")
    if skipped:
        text += f'<p class="small">skipped: {html.escape("; ".join(skipped))}</p>'
    return text + plots.img_tag(fig, "example log-mels")


def section_config(ins: ReportInputs) -> str:
    parts = ["<h3>Resolved config</h3>"]
    if ins.run.config.is_file():
        text = ins.run.config.read_text(errors="replace")
        parts.append(f'<p class="small"><a href="{ins.link(ins.run.config)}">config.yaml</a></p>'
                     f"<pre>{html.escape(text)}</pre>")  # fmt: skip
    else:
        parts.append(_na("config.yaml not found"))
    recorded = ins.info.get("versions") if isinstance(ins.info.get("versions"), dict) else {}
    now = software_versions()
    names = [*recorded, *(n for n in now if n not in recorded)]
    versions = pd.DataFrame({"package": names, "run (run.json)": [recorded.get(n, "—") for n in names],
                             "this report": [now.get(n, "—") for n in names]})  # fmt: skip
    parts.append("<h3>Software versions</h3>" + plots.html_table(versions, cls="compact"))
    parts.append("<h3>Timings</h3>" + _timings(ins))
    other = rs.flatten({k: v for k, v in ins.info.items() if k not in ("timings", "versions")})
    if other:
        info = pd.DataFrame({"key": list(other), "value": [str(v) for v in other.values()]})
        parts.append("<h3>Run information (run.json)</h3>" + plots.html_table(info, cls="compact"))
    return "".join(parts)


def _timings(ins: ReportInputs) -> str:
    """Seconds per stage and fold (run.json timings)."""
    grid = rs.fold_timings(ins.info)
    if grid.empty:
        return _na("no timings recorded in run.json")
    grid = grid.assign(total=grid.sum(axis=1)) if grid.shape[1] > 1 else grid
    shown = grid.apply(lambda col: col.map(plots.seconds_text)).reset_index()
    shown.columns = [c if isinstance(c, str) else f"fold {c}" for c in shown.columns]
    total = plots.seconds_text(float(np.nansum(grid.iloc[:, -1].to_numpy(dtype=float))))
    span = " → ".join(str(ins.info[k]) for k in ("started", "finished") if k in ins.info)
    span = f" (run {html.escape(span)})" if span else ""
    return plots.html_table(shown, cls="compact", right=shown.columns[2:]) + _p(
        f"Training time of all stages and folds: <b>{total}</b>{span}."
    )


SECTIONS = [
    ("stage-table", "Stage table", section_stage_table),
    ("curves", "Training curves", section_curves),
    ("per-class", "Per-class lwlrap of the final ensemble", section_per_class),
    ("selections", "Selections of noisy clips (stages 3 and 4)", section_selections),
    ("least-trusted", "Least-trusted noisy clips", section_least_trusted),
    ("gallery", "Augmentation gallery and example log-mels", section_gallery),
    ("config", "Config, versions and timings", section_config),
]


def _section(ins: ReportInputs, number: int, sid: str, title: str, build) -> str:
    """One section; a missing input (Unavailable) or an unexpected error becomes a 'not available' note."""
    try:
        body = build(ins)
    except Unavailable as err:
        body = _na(str(err))
    except Exception as err:  # noqa: BLE001 - one broken input must not cost the whole report
        logger.warning("report section %s failed: %s: %s", sid, type(err).__name__, err, exc_info=True)
        body = _na(f"failed to build: {type(err).__name__}: {err}")
    return f'<section id="{sid}"><h2>{number}. {html.escape(title)}</h2>{body}</section>'


def _load_inputs(run_dir: Path, out: Path, data_dir: Path | None) -> ReportInputs:
    run = RunDir(run_dir)
    try:
        info = run.info()
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); run information left out", run.run_info, err)
        info = {}
    if data_dir is None and info.get("data_dir"):
        data_dir = Path(str(info["data_dir"]))
    cfg = None
    if run.config.is_file():
        try:
            cfg = load_config(run.config)
        except ConfigError as err:
            logger.warning("%s; the report uses default settings where it needs them", err)
    ins = ReportInputs(run=run, out=out, data_dir=Path(data_dir) if data_dir else None, info=info, cfg=cfg)
    ins.classes = rs.find_classes(run)
    return ins


def render_report(
    run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None
) -> str:
    """The report of ``run_dir`` as one HTML string (see the module docstring for the sections)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else RunDir(run_dir).report
    ins = _load_inputs(run_dir, out, Path(data_dir) if data_dir is not None else None)
    name = html.escape(str(ins.info.get("name") or run_dir.resolve().name))
    archs = html.escape(", ".join(ins.run.architectures()) or "none finished yet")
    data = html.escape(str(ins.data_dir)) if ins.data_dir is not None else "not given"
    sections = "".join(
        _section(ins, i + 1, sid, title, build) for i, (sid, title, build) in enumerate(SECTIONS)
    )
    toc = "".join(f'<li><a href="#{sid}">{html.escape(title)}</a></li>' for sid, title, _ in SECTIONS)
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>noisytag report · {name}</title><style>{plots.CSS}</style></head>
<body><header><div class="wrap"><h1>noisytag run report · {name}</h1>
<div class="meta">run <b>{html.escape(str(run_dir.resolve()))}</b> · date <b>{html.escape(str(ins.info.get("finished") or ins.info.get("started") or "unknown"))}</b>
· architectures <b>{archs}</b> · {len(ins.classes)} classes · data set <b>{data}</b></div></div></header>
<div class="wrap"><nav><b>Contents</b><ol>{toc}</ol></nav>
<main>{sections}</main>
<footer>Generated by noisytag {__version__} on {generated}. Self-contained: plots are embedded, links point
to files of the run directory.</footer></div></body></html>
"""


def write_report(
    run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None
) -> Path:
    """Write the self-contained HTML report of ``run_dir`` (default ``RUN_DIR/report.html``).

    ``data_dir`` (default: the one recorded in run.json) gives the audio of the gallery and example
    log-mels. Also writes ``RUN_DIR/least_trusted.csv`` when noisy-clip scores exist. Sections whose
    inputs are missing say so; the report is always written. Returns the path of the report.
    """
    out = Path(out) if out is not None else RunDir(run_dir).report
    write_bytes(out, render_report(run_dir, out, data_dir).encode("utf-8"))
    return out
