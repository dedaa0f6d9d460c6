"""The run report: one self-contained HTML file (inline CSS, base64 PNG plots, no network).

``write_report(run_dir)`` reads a run directory (layout in :mod:`noisytag.rundir`) and writes
``report.html`` with these sections, each a ``<section id=...>``:

- ``stage-table``   the article's table for this run (CV lwlrap noisy / curated, test lwlrap) beside SPEC §6;
- ``curves``        training curves per stage and fold (loss, validation lwlrap, learning rate);
- ``per-class``     per-class lwlrap of the final ensemble, worst first (test truth, else curated OOF);
- ``selections``    stage 3 and 4 selections: clips kept per label, precision vs the noisy set's base rate;
- ``least-trusted`` the noisy clips with the lowest scores (also written as ``least_trusted.csv``);
- ``gallery``       the augmentation gallery and example test log-mels with their predicted labels;
- ``config``        resolved config, software versions, timings.

Every section renders on its own: a missing input gives "not available: reason", so a partial run
(or a run whose data set has moved) still gets a report.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag import runstats as rs
from noisytag.rundir import RunDir
from noisytag.runstats import Unavailable

logger = logging.getLogger(__name__)

LEAST_TRUSTED_ROWS = 30
EXAMPLE_CLIPS = 6


@dataclass
class Context:
    """Everything the sections share: the run directory, its config and info, the data set (if any)."""

    run: RunDir
    out: Path
    data_dir: Path | None
    info: dict = field(default_factory=dict)
    cfg: object | None = None
    classes: list[str] = field(default_factory=list)

    def link(self, path: Path) -> str:
        """Relative href from the report to ``path`` (works offline while both stay together)."""
        return html.escape(os.path.relpath(path, self.out.parent).replace(os.sep, "/"))

    def infer_stages(self) -> tuple[int, ...]:
        return tuple(getattr(getattr(self.cfg, "infer", None), "stages", (2, 3, 4)))


def _fmt(value, digits: int = 5) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _seconds(value) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return "—"
    if not np.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _table(
    frame: pd.DataFrame, numeric: dict[str, int] | None = None, cls: str = "", raw=(), right=()
) -> str:
    """HTML table of ``frame``; ``numeric`` maps column → decimals (right-aligned, formatted); columns
    in ``raw`` hold ready-made HTML (links), ``right`` columns are right-aligned; the rest is escaped."""
    numeric = numeric or {}
    right = set(right) | set(numeric)
    head = "".join(
        f'<th class="num">{html.escape(str(c))}</th>' if c in right else f"<th>{html.escape(str(c))}</th>"
        for c in frame.columns
    )
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, rec, strict=True):
            if col in raw:
                cells.append(f"<td>{value}</td>")
            elif col in numeric:
                cells.append(f'<td class="num">{_fmt(_num(value), numeric[col])}</td>')
            elif col in right:
                cells.append(f'<td class="num">{_fmt(value)}</td>')
            else:
                cells.append(f"<td>{_fmt(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(value) -> bool:
    v = _num(value)
    return v is not None and bool(np.isfinite(v))


def _img(fig, alt: str) -> str:
    from noisytag.plots import figure_png

    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{figure_png(fig)}">'


def _na(reason: str) -> str:
    return f'<p class="na">not available: {html.escape(reason)}</p>'


def _p(text: str) -> str:
    return f"<p>{text}</p>"


# ----------------------------------------------------------------------------------------------
# sections (each returns inner HTML or raises Unavailable)


def section_stage_table(ctx: Context) -> str:
    ours = rs.stage_rows(ctx.run).rename(columns={
        "lwlrap_noisy": "CV lwlrap noisy", "lwlrap_curated": "CV lwlrap curated", "test_lwlrap": "test lwlrap",
        "lwlrap_noisy_truth": "CV lwlrap noisy (true labels)",
        "n_train": "clips trained"})  # fmt: skip
    ours["clips trained"] = [f"{int(v):,}" if _finite(v) else "—" for v in ours["clips trained"]]
    ours["seconds"] = [_seconds(v) for v in ours["seconds"]]
    ours = ours.rename(columns={"seconds": "time"})
    from noisytag.summary import ARTICLE_TABLE  # SPEC §6, the article's numbers on the real data

    article = ARTICLE_TABLE.set_axis(["model", "lwlrap noisy", "lwlrap curated", "public LB"], axis=1)
    digits = {
        "CV lwlrap noisy": 5,
        "CV lwlrap curated": 5,
        "CV lwlrap noisy (true labels)": 5,
        "test lwlrap": 5,
    }
    return (
        '<div class="pair"><div><h3>This run</h3>'
        + _table(ours, digits, right=("clips trained", "time"))
        + "</div><div><h3>The article (real data, CNN-model-1)</h3>"
        + _table(article, {"lwlrap noisy": 5, "lwlrap curated": 5, "public LB": 3}, cls="ref")
        + "</div></div>"
        + _p(
            "CV lwlrap: out-of-fold predictions of each stage's fold models on the noisy and curated sets. "
            "Test lwlrap: against the test truth when the data set has one (synthetic data). The article's "
            "figures come from FSDKaggle2019 (public LB: the 1,120 public test clips; 0.738 was 8th of "
            "881), so they are a reference for the shape of the table (stage 1 fits the noisy set, stage 2 "
            "the curated set, stages 3–4 gain on both), not a target for other data."
        )
    )


def section_curves(ctx: Context) -> str:
    from noisytag.plots import curves_figure

    parts = []
    for arch in rs.architectures(ctx.run):
        for stage in rs.stages(ctx.run, arch):
            curves, bad = {}, []
            for fold in rs.folds(ctx.run, arch, stage):
                path = ctx.run.fold_metrics(arch, stage, fold)
                try:
                    curves[fold] = rs.read_csv(path, "metrics.csv")
                except Unavailable as err:
                    bad.append(f"fold {fold}: {err}")
            title = f"<h3>{html.escape(arch)} · stage {stage}</h3>"
            if curves:
                fig = curves_figure(curves)
                parts.append(title + _img(fig, f"{arch} stage {stage} training curves"))
            else:
                parts.append(title + _na("no metrics.csv yet"))
            if bad and curves:
                parts.append(f'<p class="small">missing: {html.escape("; ".join(bad))}</p>')
    if not parts:
        raise Unavailable("no stage directories in the run yet")
    return _p(
        "One colour per fold. Validation: the curated clips of the held-out fold (every stage)."
    ) + "".join(parts)


def section_per_class(ctx: Context) -> str:
    from noisytag.metrics import per_class_lwlrap
    from noisytag.plots import per_class_figure

    labels, scores, source = rs.ensemble_predictions(ctx.run, ctx.classes, ctx.data_dir, ctx.infer_stages())
    values, weights = per_class_lwlrap(_multi_hot(labels, ctx.classes), scores)
    present = weights > 0
    if not present.any():
        raise Unavailable(f"no true labels among the {len(labels)} clips of the {source}")
    overall = float(np.sum(values * weights))
    names = [c for c, p in zip(ctx.classes, present, strict=True) if p]
    fig = per_class_figure(names, values[present], weights[present], overall)
    missing = len(ctx.classes) - int(present.sum())
    note = f" {missing} class(es) without any true label are left out." if missing else ""
    text = (f"Source: {html.escape(source)}; {len(labels):,} clips; overall lwlrap <b>{overall:.4f}</b>. "
            f"Worst classes first; the bar label gives the class's share of all true labels.{note}")  # fmt: skip
    return _p(text) + _img(fig, "per-class lwlrap")


def _multi_hot(label_sets, classes: list[str]) -> np.ndarray:
    from noisytag.data import multi_hot

    return multi_hot(label_sets, classes)


def section_selections(ctx: Context) -> str:
    from noisytag.plots import selection_figure

    parts, known, missing = [], False, []
    for arch in rs.architectures(ctx.run):
        try:
            stats = rs.selection_stats(ctx.run, arch, ctx.classes, ctx.data_dir)
        except Unavailable as err:
            missing.append(str(err))
            continue
        rows = []
        for r in stats["summary"].to_dict("records"):
            known |= r["precision"] is not None
            gain = (
                r["precision"] - r["base_rate"]
                if r["precision"] is not None and r["base_rate"] is not None
                else None
            )
            rows.append({"selection": f'<a href="{ctx.link(r["path"])}">stage {r["stage"]}</a>',
                         "clips kept": f"{r['kept']:,}" + (f" of {r['of']:,}" if r["of"] else ""),
                         "labels covered": f"{r['labels']}" + (f" of {len(ctx.classes)}" if ctx.classes else ""),
                         "precision": r["precision"], "noisy-set base rate": r["base_rate"], "gain": gain})  # fmt: skip
        table = _table(
            pd.DataFrame(rows), {"precision": 3, "noisy-set base rate": 3, "gain": 3}, raw=("selection",)
        )
        fig = selection_figure(
            stats["counts"], stats["precision"], _num(stats["summary"]["base_rate"].iloc[0])
        )
        parts.append(f"<h3>{html.escape(arch)}</h3>" + table + _img(fig, f"{arch} selections per label"))
    if not parts:
        raise Unavailable("; ".join(missing) or "no architecture directories yet")
    note = "Counts: kept clips per label (a clip with two labels counts for both). "
    if known:
        note += ("Precision: share of kept clips whose noisy labels equal their true labels; base rate: the "
                 "same share over the whole noisy set.")  # fmt: skip
    else:
        note += "Precision: unknown (no ground truth for the noisy set)."
    return _p(note) + "".join(parts) + "".join(_p(html.escape(m)) for m in missing)


def section_least_trusted(ctx: Context) -> str:
    table = rs.least_trusted(ctx.run, ctx.data_dir)
    out = ctx.run.root / "least_trusted.csv"
    table.to_csv(out, index=False, float_format="%.5f")
    head = table.head(LEAST_TRUSTED_ROWS).copy()
    head.insert(0, "rank", np.arange(1, len(head) + 1))
    if "correct" in head:
        head["correct"] = head["correct"].map(
            {True: '<span class="ok">✓</span>', False: '<span class="bad">✗ wrong</span>'}
        )
    s_cols = [c for c in head.columns if re.fullmatch(r"s\d+", c)]
    text = (f"The {len(table):,} noisy clips ranked by trust — score = mean of the per-stage scores "
            f"{', '.join(s_cols)} (each the clip's own lwlrap of its out-of-fold prediction). The least "
            f'trusted are the clips to re-label first. Full list: <a href="{ctx.link(out)}">least_trusted.csv</a>.')  # fmt: skip
    if "correct" in table:
        n = len(head)
        wrong, rate = int((~table["correct"].head(n)).sum()), float(1 - table["correct"].mean())
        text += (f" Of these {n}, <b>{wrong}</b> really are mislabelled "
                 f"(noise rate of the whole noisy set: {100 * rate:.1f} %).")  # fmt: skip
    return _p(text) + _table(head, {c: 3 for c in ["score", *s_cols]}, cls="compact", raw=("correct",))


def section_gallery(ctx: Context) -> str:
    parts = []
    for title, make in (("Augmentation gallery", _augment_gallery), ("Example test clips", _examples)):
        try:
            parts.append(f"<h3>{title}</h3>" + make(ctx))
        except Unavailable as err:
            parts.append(f"<h3>{title}</h3>" + _na(str(err)))
    return "".join(parts)


def _augment_gallery(ctx: Context) -> str:
    if ctx.data_dir is None or not ctx.data_dir.is_dir():
        raise Unavailable("data set not found (pass data_dir or record it in run.json)")
    from noisytag.config import RunConfig
    from noisytag.gallery import gallery_figure, load_windows

    cfg = ctx.cfg if isinstance(ctx.cfg, RunConfig) else RunConfig()
    try:
        x, y, classes, names = load_windows(ctx.data_dir, n_clips=4, seed=0, cfg=cfg)
    except (ValueError, OSError) as err:
        raise Unavailable(str(err)) from None
    fig = gallery_figure(x, y, classes, cfg.augment, seed=0)
    text = (f"Random training windows of {', '.join(map(html.escape, names))} (rows) before and after each "
            "augmentation of the run's config (SPEC §4); the label mixture it trains on under each panel.")  # fmt: skip
    return _p(text) + _img(fig, "augmentation gallery")


def _examples(ctx: Context) -> str:
    from noisytag.config import FrontendConfig
    from noisytag.plots import logmel_figure

    frontend = getattr(ctx.cfg, "frontend", None) or FrontendConfig()
    items, skipped = rs.example_clips(ctx.run, ctx.data_dir, ctx.classes, frontend, EXAMPLE_CLIPS)
    fig = logmel_figure(items, frontend.hop_length / frontend.sample_rate)
    text = _p("Log-mel spectrograms (dB) of test clips, with the ensemble's top 3 labels.")
    if skipped:
        text += f'<p class="small">skipped: {html.escape("; ".join(skipped))}</p>'
    return text + _img(fig, "example log-mels")


def section_config(ctx: Context) -> str:
    parts = []
    if ctx.run.config.is_file():
        text = ctx.run.config.read_text(errors="replace")
        parts.append(f'<h3>Resolved config</h3><p class="small"><a href="{ctx.link(ctx.run.config)}">'
                     f"config.yaml</a></p><pre>{html.escape(text)}</pre>")  # fmt: skip
    else:
        parts.append("<h3>Resolved config</h3>" + _na("config.yaml not found"))
    flat = rs.flatten({k: v for k, v in ctx.info.items() if k != "timings"})
    recorded = {k: v for k, v in flat.items() if re.search(r"version", k, re.I)}
    other = {k: v for k, v in flat.items() if k not in recorded}
    now = rs.software_versions()
    run_versions = {k.rsplit(".", 1)[-1]: v for k, v in recorded.items()}
    names = [*now, *sorted(set(run_versions) - set(now))]
    versions = pd.DataFrame({"package": names, "run (run.json)": [run_versions.get(n, "—") for n in names],
                             "report": [now.get(n, "—") for n in names]})  # fmt: skip
    parts.append("<h3>Software versions</h3>" + _table(versions, cls="compact"))
    parts.append("<h3>Timings</h3>" + _timings(ctx))
    if other:
        info = pd.DataFrame({"key": list(other), "value": [str(v) for v in other.values()]})
        parts.append("<h3>Run information (run.json)</h3>" + _table(info, cls="compact"))
    return "".join(parts)


def _timings(ctx: Context) -> str:
    """Seconds per stage and fold (run.json), else per stage (stage_table.csv)."""
    grid = rs.fold_timings(ctx.info)
    if grid.empty and ctx.run.stage_table.is_file():
        stage = pd.read_csv(ctx.run.stage_table)
        if {"arch", "stage", "seconds"} <= set(stage.columns):
            grid = stage.set_index(["arch", "stage"])[["seconds"]].rename(columns={"seconds": "all folds"})
    if grid.empty:
        return _na("no timings recorded (run.json timings, stage_table.csv seconds)")
    grid = grid.assign(total=grid.sum(axis=1)) if grid.shape[1] > 1 else grid
    shown = grid.apply(lambda col: col.map(_seconds)).reset_index()
    shown.columns = [c if isinstance(c, str) else f"fold {c}" for c in shown.columns]
    total = _seconds(float(np.nansum(grid.iloc[:, -1].to_numpy(dtype=float))))
    span = " → ".join(str(ctx.info[k]) for k in ("started", "finished") if k in ctx.info)
    return _table(shown, cls="compact", right=shown.columns[2:]) + _p(f"Training time of all stages and folds: <b>{total}</b>"
                                             + (f" (run {html.escape(span)})" if span else "") + ".")  # fmt: skip


SECTIONS = [
    ("stage-table", "Stage table", section_stage_table),
    ("curves", "Training curves", section_curves),
    ("per-class", "Per-class lwlrap of the final ensemble", section_per_class),
    ("selections", "Selections of noisy clips (stages 3 and 4)", section_selections),
    ("least-trusted", "Least-trusted noisy clips", section_least_trusted),
    ("gallery", "Augmentation gallery and example log-mels", section_gallery),
    ("config", "Config, versions and timings", section_config),
]

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


def _section(ctx: Context, number: int, sid: str, title: str, build) -> str:
    """One section; a missing input (Unavailable) or an unexpected error becomes a 'not available' note."""
    try:
        body = build(ctx)
    except Unavailable as err:
        body = _na(str(err))
    except ImportError as err:
        body = _na(f"a module is missing ({err})")
    except Exception as err:  # noqa: BLE001 - one broken input must not cost the whole report
        logger.warning("report section %s failed: %s: %s", sid, type(err).__name__, err, exc_info=True)
        body = _na(f"failed to build: {type(err).__name__}: {err}")
    return f'<section id="{sid}"><h2>{number}. {html.escape(title)}</h2>{body}</section>'


def _run_date(ctx: Context) -> str:
    for key in ("finished", "ended", "started", "created", "date"):
        if isinstance(ctx.info.get(key), str | int | float):
            return str(ctx.info[key])
    candidates = [p for p in (ctx.run.stage_table, ctx.run.submission, ctx.run.config) if p.is_file()]
    if not candidates:
        return "unknown"
    stamp = max(p.stat().st_mtime for p in candidates)
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _load_context(run_dir: Path, out: Path, data_dir: Path | None) -> Context:
    run = RunDir(run_dir)
    info: dict = {}
    if run.run_info.is_file():
        try:
            loaded = json.loads(run.run_info.read_text())
            info = loaded if isinstance(loaded, dict) else {}
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("%s: unreadable (%s); run information left out", run.run_info, err)
    if data_dir is None and info.get("data_dir"):
        recorded = Path(str(info["data_dir"]))
        data_dir = recorded if recorded.is_absolute() or recorded.exists() else run.root / recorded
    cfg = None
    if run.config.is_file():
        from noisytag.config import ConfigError, load_config

        try:
            cfg = load_config(run.config)
        except ConfigError as err:
            logger.warning("%s; the report uses default settings where it needs them", err)
    ctx = Context(
        run=run, out=out, data_dir=Path(data_dir) if data_dir is not None else None, info=info, cfg=cfg
    )
    ctx.classes = rs.find_classes(run, ctx.data_dir)
    return ctx


def render_report(
    run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None
) -> str:
    """The report of ``run_dir`` as one HTML string (see the module docstring for the sections)."""
    from noisytag import __version__

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else RunDir(run_dir).report
    ctx = _load_context(run_dir, out, Path(data_dir) if data_dir is not None else None)
    name = ctx.info.get("name") or run_dir.resolve().name
    archs = ", ".join(rs.architectures(ctx.run)) or "none yet"
    data = html.escape(str(ctx.data_dir)) if ctx.data_dir is not None else "not given"
    sections = "".join(
        _section(ctx, i + 1, sid, title, build) for i, (sid, title, build) in enumerate(SECTIONS)
    )
    toc = "".join(f'<li><a href="#{sid}">{html.escape(title)}</a></li>' for sid, title, _ in SECTIONS)
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>noisytag report · {html.escape(str(name))}</title><style>{CSS}</style></head>
<body><header><div class="wrap"><h1>noisytag run report · {html.escape(str(name))}</h1>
<div class="meta">run <b>{html.escape(str(run_dir.resolve()))}</b> · date <b>{html.escape(_run_date(ctx))}</b>
· architectures <b>{html.escape(archs)}</b> · {len(ctx.classes)} classes · data set <b>{data}</b></div></div></header>
<div class="wrap"><nav><b>Contents</b><ol>{toc}</ol></nav>
<main>{sections}</main>
<footer>Generated by noisytag {__version__} on {generated}. Self-contained: plots are embedded, links point
to files of the run directory.</footer></div></body></html>
"""


def write_report(
    run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None
) -> Path:
    """Write the self-contained HTML report of ``run_dir`` (default ``RUN_DIR/report.html``).

    ``data_dir`` (or ``data_dir`` recorded in run.json) gives the data set for the gallery, example
    log-mels and ground truth (``data_dir/truth/``). Also writes ``RUN_DIR/least_trusted.csv`` when
    noisy-clip scores exist. Sections whose inputs are missing say so; the report is always written.
    Returns the path of the report.
    """
    out = Path(out) if out is not None else RunDir(run_dir).report
    page = render_report(run_dir, out, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
