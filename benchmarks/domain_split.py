"""Test lwlrap on each recording domain of the version-2 demo set, per ablation variant, stage and ensemble.

    .venv/bin/python benchmarks/domain_split.py [ABLATION_DIR] [DATA_DIR]

Half the test clips of ``noisytag synth --test-domain mixed`` are in the curated clips' (clean) recording
domain and half in the noisy clips' (shifted) one; this splits every run's test score by that half, so one
sees what the noisy clips' variety is worth where the curated clips cannot teach it. Prints a Markdown
table (mean ± std over seeds) and writes it to ABLATION_DIR/domain_split.md. Defaults: runs/ablation_mixed,
data/demo_mixed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.config import load_config
from noisytag.data.synth import plan, synth_info
from noisytag.metrics import lwlrap
from noisytag.runs.context import open_run
from noisytag.runs.scoring import ensemble_test, stage_test


def test_domains(data_dir: Path) -> dict[str, str] | None:
    """Test clip name → its recording domain ("clean": the curated clips', "noisy": the noisy clips') for a
    ``noisytag synth --test-domain mixed`` data set, re-planned from its synth info; None for other data."""
    made = synth_info(data_dir) or {}
    if made.get("test_domain") != "mixed":
        return None
    p = plan(made["scale"], made["seed"], made["sample_rate"], made["format"], "mixed")
    return dict(zip(p.fnames["test"], p.domains["test"], strict=True))


def domain_scores(truth: np.ndarray, probs: np.ndarray, shifted: np.ndarray) -> tuple[float, float]:
    """(lwlrap of the clean-domain rows, lwlrap of the shifted ones): ``truth`` (N, K) bool, ``shifted`` (N,)."""
    return lwlrap(truth[~shifted], probs[~shifted]), lwlrap(truth[shifted], probs[shifted])


def split_scores(data_dir: Path, run_dir: Path, domains: dict[str, str]) -> dict[str, float]:
    """{"s1 clean": …, "s1 shifted": …, …, "ens clean": …} for one finished run, read as the pipeline
    reads it (same test order, fold means and ensemble), without writing to the run."""
    ctx = open_run(data_dir, run_dir, load_config(run_dir / "config.yaml"), progress=False, writer=False)
    truth = ctx.truth_test > 0.5
    shifted = np.array([domains[f] == "noisy" for f in ctx.test.fnames])
    preds = {"ens": ensemble_test(ctx)[0]}
    preds.update({f"s{k}": stage_test(ctx, "cnn1", k) for k in ctx.plan.stage_numbers})
    out = {}
    for key, p in preds.items():
        out[f"{key} clean"], out[f"{key} shifted"] = domain_scores(truth, p, shifted)
    return out


def main(ablation_dir: Path, data_dir: Path) -> pd.DataFrame:
    domains = test_domains(data_dir)
    if domains is None:
        raise SystemExit(f"{data_dir}: not a mixed-test-domain synth data set")
    logging.getLogger("noisytag").setLevel(logging.WARNING)
    rows = []
    for run_dir in sorted(ablation_dir.glob("runs/*/seed*")):
        if (run_dir / "submission.csv").is_file():
            rows.append({"variant": run_dir.parent.name, **split_scores(data_dir, run_dir, domains)})
    frame = pd.DataFrame(rows)
    groups = frame.groupby("variant", sort=False)
    mean, std = groups.mean(), groups.std(ddof=1)
    cell = mean.map("{:.3f}".format) + (" ± " + std.map("{:.3f}".format)).where(std.notna(), "")
    cell = cell.where(mean.notna(), "—")
    cell.insert(0, "seeds", groups.size())
    return cell


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    ablation = args[0] if args else Path("runs/ablation_mixed")
    data = args[1] if len(args) > 1 else Path("data/demo_mixed")
    table = main(ablation, data)
    header = ["variant", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(map(str, [name, *row])) + " |"
        for name, row in zip(table.index, table.values, strict=True)
    ]
    text = "\n".join(lines)
    print(text)
    (ablation / "domain_split.md").write_text(
        text + "\n\ntest lwlrap (mean ± sample std over seeds) on the 48 test clips in the curated clips' "
        "recording domain (clean) and the 48 in the noisy clips' (shifted); sK = stage K's fold mean, "
        "ens = the run's ensemble (its submission).\n"
    )
