"""The run plan: the one owner of what a config means (SPEC §6 as data).

Every question of the kind "which stages does this run train", "what does stage k of fold f train on,
where does it start, how long", "which stages form the ensemble" and "does this config change a
finished result" is answered here, once, from the config, never re-derived elsewhere. The plan is
saved in the run directory (``plan.json``) so inference, serving and reports read a run without the
training driver; ``noisytag plan -c CONFIG`` prints it as the article's stage table.

A stage's result key is a hash of exactly the inputs that stage reads (its config keys, resolved, and
the key of the stage it starts from), so two runs whose keys match share identical fold models there
(``noisytag ablate`` reuses them) and a resume that changes any of those inputs is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from noisytag.config import ConfigError, RunConfig, config_from_dict, stable_hash
from noisytag.settings import check_mode

KINDS = ("warmup", "joint", "student")
STAGES = (1, 2, 3, 4)
# Stage k of the warm-up selects its trusted noisy clips from these earlier stages' OOF (SPEC §6).
# The one owner of that meaning: StagePlan.selects_from, the detectors, the stages a run must train
# together (needed_stages) and the run's selection tables all follow it.
SELECTS_FROM = {3: (1, 2), 4: (3,)}
# The selection settings each selecting stage reads.
SELECTION_INPUTS = {
    3: ("selection.method", "selection.stage3_threshold", "selection.stage3_cap"),
    4: ("selection.method", "selection.stage4_threshold"),
}
# train.* keys that do not change results: a run may resume with other values.
VOLATILE_TRAIN = frozenset(
    {"num_workers", "devices", "accelerator", "num_nodes", "strategy", "val_batch_size"}
)
# Inputs every stage reads: the front end, the input normalisation, the recipe and how its
# out-of-fold predictions are computed (windowed inference of SPEC §7).
COMMON_INPUTS = (
    "frontend",
    "data.normalize",
    "augment",
    "model",
    "train",
    "infer.window",
    "infer.max_stride",
    "infer.mode",
    "pipeline.mode",
)
# The inputs a student reads instead of the pipeline's stages (its model, recipe and teacher).
STUDENT_INPUTS = ("frontend", "data.normalize", "augment", "model.in_channels", "model.freq_channel",
                  "model.pool", "train", "infer.window", "infer.max_stride", "pipeline.mode")  # fmt: skip
# What the parts of a training set mean (the "trains on" column).
PART_TEXT = {
    "noisy": "noisy (given labels)",
    "curated": "curated",
    "selected": "selected noisy",
    "untrusted": "other noisy",
    "teacher": "every clip (teacher targets)",
    "unlabelled": "unlabelled audio (teacher)",
}


def needed_stages(stage: int) -> tuple[int, ...]:
    """The stages a warm-up ``stage`` cannot run without: those it selects from, and theirs."""
    needed: set[int] = set()
    for source in SELECTS_FROM.get(stage, ()):
        needed |= {source, *needed_stages(source)}
    return tuple(sorted(needed))


def run_seed(seed: int, kind: str, stage: int, fold: int) -> int:
    """The training seed of fold ``fold`` of ``stage`` in a run of ``kind``, from ``train.seed``.

    The one seed rule of every run kind; each keeps the seeds its results were made with (a fold:
    seed + 1000 · stage + fold; the student: seed + 7919, apart from every fold's).
    """
    if kind == "student":
        return seed + 7919
    return seed + 1000 * stage + fold


@dataclass(frozen=True)
class StagePlan:
    """One stage, for every fold f: what it trains on (clips of folds ≠ f), where it starts, how long."""

    stage: int
    trains_on: tuple[str, ...]  # parts of PART_TEXT, in training-set order
    starts_from: int | None  # the stage whose fold-f weights it starts from; None = scratch
    epochs: int  # 0 = the joint baseline's budget, resolved per fold from the clip counts
    lr: float
    treatment: str  # how the "untrusted" part trains (noisy.treatment); "drop" when it has none
    selects_from: tuple[int, ...]  # stages whose out-of-fold predictions select its noisy clips
    inputs: tuple[str, ...]  # the config keys it reads besides COMMON_INPUTS
    keys: dict[str, str] = field(default_factory=dict)  # architecture → result key

    def describe(self) -> str:
        parts = [PART_TEXT[p] for p in self.trains_on]
        if "untrusted" in self.trains_on:
            parts[self.trains_on.index("untrusted")] += f" via {self.treatment}"
        return " + ".join(parts)


@dataclass(frozen=True)
class RunPlan:
    """The stages of a run, its ensemble and the facts every reader of the run needs."""

    kind: str
    architectures: tuple[str, ...]
    folds: int
    stages: tuple[StagePlan, ...]
    ensemble: tuple[int, ...]  # stages averaged for the submission, tag, serve and export

    @property
    def stage_numbers(self) -> tuple[int, ...]:
        return tuple(s.stage for s in self.stages)

    def stage(self, number: int) -> StagePlan:
        for s in self.stages:
            if s.stage == number:
                return s
        raise ValueError(f"stage {number} is not trained in this run (stages: {self.stage_numbers})")

    def key(self, arch: str, stage: int) -> str:
        return self.stage(stage).keys[arch]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        stages = tuple(
            StagePlan(**{**s, "trains_on": tuple(s["trains_on"]), "selects_from": tuple(s["selects_from"]),
                         "inputs": tuple(s["inputs"])})
            for s in data["stages"]
        )  # fmt: skip
        return cls(
            data["kind"], tuple(data["architectures"]), int(data["folds"]), stages, tuple(data["ensemble"])
        )

    def table(self) -> list[dict[str, Any]]:
        """The SPEC §6 table of this run: one row per stage (each trains on the clips of folds ≠ f and
        starts from fold f of the stage it names)."""
        return [
            {
                "stage": s.stage,
                "trains on": s.describe(),
                "starts from": f"stage {s.starts_from}" if s.starts_from else "scratch",
                "epochs": s.epochs or "warm-up budget",
                "lr": s.lr,
                "selects by": ("OOF of " + "+".join(map(str, s.selects_from))) if s.selects_from else "",
                "ensemble": "yes" if s.stage in self.ensemble else "",
            }
            for s in self.stages
        ]


# ----------------------------------------------------------------------------------------------
# validation: every range of the core sections, before any work starts


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {why}")


def validate(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the key of a setting that cannot run (core sections; the
    plug-in axes validate their own options through their registries)."""
    p, t, i = cfg.pipeline, cfg.train, cfg.infer
    _check(p.mode in KINDS, "pipeline.mode", f"one of {', '.join(KINDS)}, got {p.mode!r}")
    _check(bool(p.architectures), "pipeline.architectures", "name at least one architecture")
    _check(bool(p.stages) and set(p.stages) <= set(STAGES), "pipeline.stages", f"stages among {STAGES}")
    for stage in p.stages:
        needs = needed_stages(stage)
        _check(
            p.mode == "joint" or all(n in p.stages for n in needs),
            "pipeline.stages",
            f"stage {stage} needs stages {needs} in the same run",
        )
    _check(all(e >= 1 for e in p.stage_epochs), "pipeline.stage_epochs", "every stage needs ≥ 1 epoch")
    _check(all(lr > 0 for lr in p.stage_lr), "pipeline.stage_lr", "learning rates must be > 0")
    _check(p.joint_epochs >= 0, "pipeline.joint_epochs", "must be ≥ 0 (0 = the warm-up's budget)")
    _check(t.epochs >= 1, "train.epochs", "must be ≥ 1")
    _check(t.batch_size >= 1, "train.batch_size", "must be ≥ 1")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(0 < t.pct_start < 1, "train.pct_start", "must be in (0, 1)")
    _check(t.folds >= 2, "train.folds", "k-fold training needs ≥ 2 folds")
    d = cfg.distill
    _check(d.epochs >= 1, "distill.epochs", "must be ≥ 1")
    _check(d.lr > 0, "distill.lr", "must be > 0")
    _check(d.width > 0, "distill.width", "must be > 0")
    _check(0 <= d.label_weight <= 1, "distill.label_weight", "must be in [0, 1]")
    _check(d.targets in ("oof", "insample"), "distill.targets", f"'oof' or 'insample', got {d.targets!r}")
    _check(d.crop in ("random", "grid"), "distill.crop", f"'random' or 'grid', got {d.crop!r}")
    _check(d.views >= 0, "distill.views", "must be ≥ 0 (0 = the teacher's grid windows)")
    _check(t.window >= 1, "train.window", "must be ≥ 1 frame")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be ≥ 0")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1", "Adam betas must be in [0, 1)")
    _check(cfg.model.width > 0, "model.width", "must be > 0")
    _check(cfg.model.in_channels >= 1, "model.in_channels", "must be ≥ 1")
    _check(set(i.stages) <= set(STAGES), "infer.stages", f"stages among {STAGES}")
    _check(i.window >= 1, "infer.window", "must be ≥ 1 frame")
    _check(i.max_stride >= 1, "infer.max_stride", "must be ≥ 1 frame")
    _check(i.batch_size >= 1, "infer.batch_size", "must be ≥ 1")
    check_mode(i.mode)  # noisytag.settings owns the inference modes
    _check(all(s in STAGES for s in cfg.noisy.stages), "noisy.stages", f"stages among {STAGES}")


# ----------------------------------------------------------------------------------------------
# building the plan


def stage_epochs_lr(cfg: RunConfig, stage: int) -> tuple[int, float]:
    """Epochs and peak learning rate of warm-up stage ``stage`` (per-stage lists, else train.*)."""
    p = cfg.pipeline
    epochs = p.stage_epochs[stage - 1] if len(p.stage_epochs) >= stage else cfg.train.epochs
    lr = p.stage_lr[stage - 1] if len(p.stage_lr) >= stage else cfg.train.lr
    return int(epochs), float(lr)


def treated(cfg: RunConfig, stage: int) -> bool:
    """Whether the untrusted noisy clips train in this stage (SPEC §6b)."""
    return cfg.noisy.treatment != "drop" and stage in cfg.noisy.stages


def _warmup_stage(cfg: RunConfig, stage: int) -> StagePlan:
    treat = treated(cfg, stage)
    if stage == 1 and not treat:
        parts: tuple[str, ...] = ("noisy",)  # the seed's stage 1: noisy clips, given labels
    else:
        parts = ("curated",) + (("selected",) if stage >= 3 else ()) + (("untrusted",) if treat else ())
    epochs, lr = stage_epochs_lr(cfg, stage)
    inputs = []  # its epochs and learning rate enter the key resolved, not as the per-stage lists
    if stage in SELECTION_INPUTS:
        inputs.extend(SELECTION_INPUTS[stage])
    if treat:
        inputs.append("noisy")
    return StagePlan(
        stage=stage,
        trains_on=parts,
        starts_from=stage - 1 if stage > 1 and (stage - 1) in cfg.pipeline.stages else None,
        epochs=epochs,
        lr=lr,
        treatment=cfg.noisy.treatment if treat else "drop",
        selects_from=SELECTS_FROM.get(stage, ()),
        inputs=tuple(inputs),
    )


def _joint_stage(cfg: RunConfig) -> StagePlan:
    """One stage on curated + every noisy clip of the other folds: the baseline to beat (through the
    treatment when it treats stage 1; relabelling has no earlier stage there and keeps the given labels)."""
    through_treatment = treated(cfg, 1)
    return StagePlan(
        stage=1,
        trains_on=("curated", "untrusted" if through_treatment else "noisy"),
        starts_from=None,
        epochs=cfg.pipeline.joint_epochs,
        lr=stage_epochs_lr(cfg, 1)[1],
        treatment=cfg.noisy.treatment if through_treatment else "drop",
        selects_from=(),
        inputs=(
            "pipeline.stages",
            "pipeline.stage_epochs",
            "pipeline.stage_lr",
            "pipeline.joint_epochs",
            "noisy",
        ),
    )


def _value(data: dict, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    value = data[section]
    if key:
        return value[key]
    if section == "train":
        return {k: v for k, v in value.items() if k not in VOLATILE_TRAIN}
    return value


def _result_keys(cfg: RunConfig, stages: list[StagePlan], arch: str) -> list[str]:
    data = cfg.to_dict()
    inputs = STUDENT_INPUTS if cfg.pipeline.mode == "student" else COMMON_INPUTS
    common = {k: _value(data, k) for k in inputs} | {"arch": arch}
    key, keys = stable_hash(common), []
    for s in stages:
        own = {k: _value(data, k) for k in s.inputs} | {"stage": s.stage, "epochs_lr": [s.epochs, s.lr]}
        key = stable_hash([key, own])  # includes the key of the stage it starts from
        keys.append(key[:16])
    return keys


def _student_stage(cfg: RunConfig) -> StagePlan:
    """One model on every clip of the teacher's data set (and unlabelled audio), teacher targets."""
    d = cfg.distill
    return StagePlan(
        stage=1,
        trains_on=("teacher",) + (("unlabelled",) if d.unlabelled else ()),
        starts_from=None,
        epochs=d.epochs,
        lr=d.lr,
        treatment="drop",
        selects_from=(),
        inputs=("distill",),
    )


def build_plan(cfg: RunConfig) -> RunPlan:
    """Validate ``cfg`` and turn it into the plan of its run."""
    validate(cfg)
    if cfg.pipeline.mode == "student":
        stage = _student_stage(cfg)
        keys = _result_keys(cfg, [stage], cfg.distill.arch)
        stage = dataclasses.replace(stage, keys={cfg.distill.arch: keys[0]})
        return RunPlan("student", (cfg.distill.arch,), 1, (stage,), (1,))
    if cfg.pipeline.mode == "joint":
        stages = [_joint_stage(cfg)]
    else:
        stages = [_warmup_stage(cfg, k) for k in sorted(cfg.pipeline.stages)]
    keys = {arch: _result_keys(cfg, stages, arch) for arch in cfg.pipeline.architectures}
    stages = [dataclasses.replace(s, keys={a: keys[a][n] for a in keys}) for n, s in enumerate(stages)]
    trained = tuple(s.stage for s in stages)
    ensemble = tuple(s for s in cfg.infer.stages if s in trained) or trained[-1:]
    return RunPlan(
        cfg.pipeline.mode, tuple(cfg.pipeline.architectures), cfg.train.folds, tuple(stages), ensemble
    )


def joint_epochs(cfg: RunConfig, n_curated: int, n_noisy: int) -> int:
    """Epochs of the joint baseline: ``pipeline.joint_epochs``, or as many training examples as the
    warm-up's stages would see (stages 3–4 counted without their selected clips)."""
    if cfg.pipeline.joint_epochs > 0:
        return cfg.pipeline.joint_epochs
    budget = 0
    for stage in cfg.pipeline.stages:
        size = n_noisy if stage == 1 else n_curated + (n_noisy if treated(cfg, stage) else 0)
        budget += stage_epochs_lr(cfg, stage)[0] * size
    return max(1, round(budget / max(n_curated + n_noisy, 1)))


# ----------------------------------------------------------------------------------------------
# the resume rule


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: RunConfig, new: RunConfig, new_plan: RunPlan | None = None) -> list[str]:
    """``key: old → new`` for every changed config key that a stage of both runs reads.

    A run may continue with a new config when every stage the two share keeps its result key:
    the ensemble, the inference batch, devices and workers may change; anything that changes a
    stage's fold models or out-of-fold predictions may not. ``new_plan``: the plan of ``new``, built
    once by the command; the saved config's plan is only built when the two configs differ.
    """
    if saved == new:
        return []  # the same config: every stage keeps its key
    old_plan, new_plan = build_plan(saved), new_plan or build_plan(new)
    shared = [s for s in old_plan.stage_numbers if s in new_plan.stage_numbers]
    changed = [
        (s, a)
        for s in shared
        for a in set(old_plan.architectures) & set(new_plan.architectures)
        if old_plan.key(a, s) != new_plan.key(a, s)
    ]
    if not changed:
        return []
    inputs = set(COMMON_INPUTS) | {"pipeline.stage_epochs", "pipeline.stage_lr"}
    inputs |= {k for s, _ in changed for k in old_plan.stage(s).inputs}
    a, b = _flat(saved.to_dict()), _flat(new.to_dict())
    read = [
        k
        for k in sorted(set(a) | set(b))
        if any(k == i or k.startswith(i + ".") for i in inputs)
        and not (k.startswith("train.") and k.removeprefix("train.") in VOLATILE_TRAIN)
    ]
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in read if a.get(k) != b.get(k)] or [
        f"stage {s} of {arch}" for s, arch in changed
    ]


def plan_from_saved(plan: dict | None, config: dict | None) -> RunPlan:
    """A run's plan from its ``plan.json``, or from its ``config.yaml`` for runs made before plans."""
    if plan is not None:
        return RunPlan.from_dict(plan)
    return build_plan(config_from_dict(config))
