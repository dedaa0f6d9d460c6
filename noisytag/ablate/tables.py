"""The tables of ``noisytag ablate``: one summary per run, then per variant the mean and spread over seeds.

Metrics (per run, in ablate.json; ``s<k>`` = stage k, prefixed by the architecture when a run has several):

* ``test_ensemble``, ``test_s<k>``: test lwlrap of the ensemble and of each stage (needs the data set's
  test truth);
* ``cv_curated_s<k>``: out-of-fold lwlrap on the curated clips;
* ``selected_s<k>``, ``precision_s<k>``: noisy clips selected for stages 3-4 and the share whose given
  labels are right (needs the noisy truth); any other column of the run's selection table (the two
  detectors' ``agreement``, ``lwlrap_precision``, ``cleanlab_recall``, ...) likewise, ``<column>_s<k>``;
* ``train_seconds`` (the stage table's training seconds, reused stages included: the cost of the
  config), ``wall_seconds`` (this run's wall time).

Per variant the spread is the sample standard deviation over the seeds that finished (ddof = 1, the
usual estimate of seed-to-seed variation; NaN with one seed, since one run shows no spread), beside
min and max.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from noisytag.fileio import write_csv, write_text
from noisytag.report.plots import figure_png

__all__ = ["run_summary", "collect_runs", "summarise", "write_outputs"]

LEGEND = (
    "mean ± sample std (ddof 1) over the seeds that finished; test = test lwlrap; CV = out-of-fold lwlrap; "
    "precision = share of the noisy clips selected for stage k whose given labels are right."
)
# column order of the tables: these first (exact name or prefix), the rest (detector audit) next, seconds last
_FIRST = ("test_ensemble", "test_", "cv_curated_", "selected_", "precision_")
_LAST = ("train_seconds", "wall_seconds")


def _num(value) -> float | None:
    """A JSON-safe number: NaN and missing become None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def run_summary(results: dict, wall_seconds: float) -> dict:
    """The ablate.json summary of one finished pipeline run, from what ``run_pipeline`` returns."""
    stages = results.get("stage_table", pd.DataFrame())
    selection = results.get("selection", pd.DataFrame())
    test = results.get("test", pd.DataFrame())
    archs = sorted(set(stages.get("arch", [])) | set(selection.get("arch", [])))

    def tag(arch, stage) -> str:
        return f"{arch}_s{int(stage)}" if len(archs) > 1 else f"s{int(stage)}"

    metrics: dict[str, float | None] = {}
    if len(test) and "model" in test:
        ensemble = test[test["model"].astype(str).str.startswith("ensemble")]
        metrics["test_ensemble"] = _num(ensemble["test_lwlrap"].iloc[0]) if len(ensemble) else None
    for _, row in stages.iterrows():
        metrics[f"test_{tag(row['arch'], row['stage'])}"] = _num(row.get("test_lwlrap"))
        metrics[f"cv_curated_{tag(row['arch'], row['stage'])}"] = _num(row.get("lwlrap_curated"))
    if len(stages):  # the last trained stage's curated CV: comparable between warm-up and joint runs
        metrics["cv_curated_last"] = _num(stages.sort_values("stage")["lwlrap_curated"].iloc[-1])
    audit = [c for c in selection.columns if c not in ("arch", "stage", "base_rate", "method")]
    for _, row in selection.iterrows():  # selected, precision and the detectors' audit, when there
        for col in audit:
            metrics[f"{col}_{tag(row['arch'], row['stage'])}"] = _num(row.get(col))
    seconds = stages["seconds"].sum() if "seconds" in stages else float("nan")
    metrics["train_seconds"] = _num(seconds)
    metrics["wall_seconds"] = round(float(wall_seconds), 2)
    return {"status": "ok", "error": None, "metrics": metrics}


def _metric_order(columns) -> list[str]:
    def rank(name: str) -> tuple[int, str]:
        if name in _LAST:
            return len(_FIRST) + 1 + _LAST.index(name), name
        for i, prefix in enumerate(_FIRST):
            if name == prefix or (prefix.endswith("_") and name.startswith(prefix)):
                return i, name
        return len(_FIRST), name

    return sorted(columns, key=rank)


def collect_runs(out_dir: str | Path) -> pd.DataFrame:
    """One row per run directory with an ablate.json: variant, seed, status, error, then the metrics."""
    rows = []
    for path in sorted(Path(out_dir).glob("runs/*/seed*/ablate.json")):
        record = json.loads(path.read_text())
        rows.append(
            {"variant": record["variant"], "seed": record["seed"], "status": record["status"],
             "error": record.get("error"), **record.get("metrics", {})}
        )  # fmt: skip
    frame = pd.DataFrame(rows, columns=["variant", "seed", "status", "error"] if not rows else None)
    metrics = _metric_order([c for c in frame.columns if c not in ("variant", "seed", "status", "error")])
    return frame[["variant", "seed", "status", "error", *metrics]]


def summarise(runs: pd.DataFrame, variants: dict[str, list[str]]) -> pd.DataFrame:
    """Per variant (in ``variants`` order): overrides, runs ok / failed, first error, metric statistics."""
    metrics = [c for c in runs.columns if c not in ("variant", "seed", "status", "error")]
    rows = []
    for name, overrides in variants.items():
        mine = runs[runs["variant"] == name]
        ok = mine[mine["status"] == "ok"]
        failed = mine[mine["status"] != "ok"]
        row = {
            "variant": name,
            "overrides": "; ".join(overrides),
            "n_ok": len(ok),
            "n_failed": len(failed),
            "error": failed["error"].iloc[0] if len(failed) else "",
        }
        for metric in metrics:
            values = pd.to_numeric(ok[metric], errors="coerce").dropna()
            row[f"{metric}_mean"] = values.mean() if len(values) else np.nan
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{metric}_min"] = values.min() if len(values) else np.nan
            row[f"{metric}_max"] = values.max() if len(values) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Markdown and HTML


def _pm(row: pd.Series, metric: str, digits: int = 4) -> str:
    mean, std = row.get(f"{metric}_mean", np.nan), row.get(f"{metric}_std", np.nan)
    if pd.isna(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The readable columns: variant, overrides, runs, ensemble test mean ± std, per-stage test, the last
    stage's curated CV, selection precision, wall minutes; absent metrics are left out."""
    means = [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]
    stage_tests = [m for m in means if m.startswith("test_") and m != "test_ensemble"]
    curated = [m for m in means if m == "cv_curated_last"]
    precision = [m for m in means if m.startswith("precision_")]
    out = pd.DataFrame({"variant": table["variant"], "overrides": table["overrides"].replace("", "(base)")})
    out["runs ok"] = [f"{r.n_ok}/{r.n_ok + r.n_failed}" for r in table.itertuples()]
    columns = [("ensemble test", "test_ensemble", 4)] if "test_ensemble" in means else []
    columns += [(f"test {m.removeprefix('test_')}", m, 4) for m in stage_tests]
    columns += [("CV curated, last stage", m, 4) for m in curated]
    columns += [(f"precision {m.removeprefix('precision_')}", m, 3) for m in precision]
    for header, metric, digits in columns:
        out[header] = [_pm(row, metric, digits) for _, row in table.iterrows()]
    if "wall_seconds_mean" in table:
        out["wall min"] = ["—" if pd.isna(m) else f"{m / 60:.1f}" for m in table["wall_seconds_mean"]]
    return out


def to_markdown(table: pd.DataFrame) -> str:
    shown = display_table(table)

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    failed = table[table["n_failed"] > 0]
    notes = [f"- {r.variant}: {r.n_failed} run(s) failed, e.g. {r.error}" for r in failed.itertuples()]
    footer = f"\n{LEGEND}\n"
    return "\n".join(lines) + "\n" + footer + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _chart(runs: pd.DataFrame, table: pd.DataFrame) -> str:
    """Ensemble test lwlrap per variant: bar = mean, whisker = std, dots = seeds (base64 PNG)."""
    if "test_ensemble_mean" not in table or table["test_ensemble_mean"].isna().all():
        return "<p>No ensemble test lwlrap (the data set has no test truth).</p>"
    fig = Figure(figsize=(max(4.0, 1.1 * len(table) + 1.5), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.bar(x, table["test_ensemble_mean"], yerr=table["test_ensemble_std"].fillna(0), color="#0072B2",
           alpha=0.8, capsize=4)  # fmt: skip
    for i, name in enumerate(table["variant"]):
        seeds = runs[(runs["variant"] == name) & (runs["status"] == "ok")].get("test_ensemble")
        if seeds is not None:
            ax.scatter(np.full(len(seeds), i), seeds, color="black", s=12, zorder=3)
    low = np.nanmin(table["test_ensemble_min"])
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, np.nanmax(table["test_ensemble_max"]) + 0.02))
    ax.set_xticks(x, table["variant"], rotation=30, ha="right")
    ax.set_ylabel("ensemble test lwlrap")
    ax.grid(True, axis="y", color="#e5e5e5")
    ax.set_axisbelow(True)
    return f'<img alt="ensemble test lwlrap per variant" src="data:image/png;base64,{figure_png(fig)}">'


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if pd.isna(v) else str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(table: pd.DataFrame, runs: pd.DataFrame, title: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "font-size:14px;margin:1em 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}td:first-child,td:nth-child(2){text-align:left}"
    )
    run_cols = [
        c for c in ("variant", "seed", "status", "test_ensemble", "wall_seconds", "error") if c in runs
    ]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(LEGEND)}</p>"
        f"{_html_table(display_table(table))}{_chart(runs, table)}"
        f"<h2>Runs</h2>{_html_table(runs[run_cols])}</body></html>\n"
    )


def write_outputs(out_dir: str | Path) -> pd.DataFrame:
    """ablation_runs.csv, ablation.csv, ablation.md, ablation.html from the runs' ablate.json files."""
    out_dir = Path(out_dir)
    saved = yaml.safe_load((out_dir / "ablation.yaml").read_text()) or {}
    variants = {k: list(v) for k, v in (saved.get("variants") or {}).items()}
    runs = collect_runs(out_dir)
    runs = runs[runs["variant"].isin(variants)].reset_index(drop=True)
    table = summarise(runs, variants)
    write_csv(out_dir / "ablation_runs.csv", runs)
    write_csv(out_dir / "ablation.csv", table)
    write_text(out_dir / "ablation.md", to_markdown(table))
    write_text(out_dir / "ablation.html", to_html(table, runs, f"Ablation {out_dir.name}"))
    return table
