"""``noisytag ablate``: the pipeline once per (variant, seed), stage reuse, and the per-variant tables.

:mod:`noisytag.ablate.runs` plans, reuses and runs; :mod:`noisytag.ablate.tables` summarises each run and
writes ablation.csv / .md / .html.
"""

from noisytag.ablate.runs import (
    PlannedRun,
    describe_plan,
    parse_variant,
    plan_ablation,
    reuse_stages,
    run_ablation,
)
from noisytag.ablate.tables import collect_runs, run_summary, summarise, write_outputs

__all__ = [
    "PlannedRun",
    "collect_runs",
    "describe_plan",
    "parse_variant",
    "plan_ablation",
    "reuse_stages",
    "run_ablation",
    "run_summary",
    "summarise",
    "write_outputs",
]
