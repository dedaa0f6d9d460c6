"""``noisytag distill RUN -o STUDENT``: a finished run's ensemble → one student run directory.

The student run is a normal run directory whose plan (kind ``student``) has one stage and one member
(``{arch}/stage1/fold0``), so predict, tag, serve, export and report work on it unchanged. Steps, each
kill-safe: the teacher's window probabilities per split (``teacher/{split}.npz``, written once) or,
with ``distill.views`` V > 0, the teacher's probabilities of V augmented views of every training clip
(``teacher/views.npz``, made once, resumable by parts), the student's training (Lightning checkpoint
per epoch, resumed like a fold), then its test predictions and the student-vs-teacher tables
(``test_scores.csv``, ``per_class.csv``, ``stage_table.csv``).

A student run can teach the next student (a second round, ``noisytag distill STUDENT -o STUDENT2``): its one
model was trained on every clip, so it teaches in-sample (``distill.targets: insample``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisytag.audio.cache import build_folder_cache
from noisytag.config import ConfigError, RunConfig, load_config, with_overrides
from noisytag.data.dataset import SUBMISSION, DataError
from noisytag.fileio import write_csv, write_npy, write_text
from noisytag.infer.members import as_members
from noisytag.infer.predict import predict_cache
from noisytag.infer.submission import write_submission
from noisytag.learn.distill import (
    TeacherViewDataset,
    TeacherWindowDataset,
    WindowTargets,
    clip_lengths,
    draw_views,
    make_teacher_views,
    student_targets,
    teach,
    view_targets,
)
from noisytag.learn.loader import ClipSet
from noisytag.learn.train import fit_fold, inference_device
from noisytag.metrics import per_class_lwlrap
from noisytag.models.record import FoldRecord
from noisytag.models.weights import load_model
from noisytag.plan import RunPlan, run_seed
from noisytag.registry import lookup
from noisytag.rundir import RunDir
from noisytag.runs.context import RunContext, feature_cache_dir, is_global_zero, open_run
from noisytag.runs.pipeline import write_fold_outputs
from noisytag.runs.scoring import ensemble_test, test_scores

log = logging.getLogger(__name__)

STAGE, FOLD = 1, 0  # where the student's one model lives in its run directory


def student_config(teacher: RunDir, overrides: RunConfig | None, sets: list[str]) -> RunConfig:
    """The student's config: the teacher's (or ``overrides``) with ``--set``s, as a student run
    (validated by its plan: :func:`~noisytag.runs.validate.checked_plan`, in the command or open_run)."""
    cfg = overrides if overrides is not None else teacher.saved_config()
    d = with_overrides(cfg, sets).distill
    cfg = with_overrides(
        cfg,
        [*sets, "pipeline.mode=student", f"pipeline.architectures=[{d.arch}]", f"model.width={d.width}"]
        + [f"distill.teacher={teacher.root.resolve()}"],
    )
    return cfg


def check_teacher(teacher: RunDir, cfg: RunConfig) -> None:
    """One line for a teacher that cannot teach this student: unfinished, or another front end."""
    if not teacher.config.is_file():
        raise DataError(f"{teacher.root}: not a run directory (no config.yaml)")
    plan, saved = teacher.plan(), teacher.saved_config()
    if plan.kind == "student" and cfg.distill.targets == "oof":  # a second round: the student teaches
        raise ConfigError(
            "config key 'distill.targets': a student teacher is one model trained on every clip, so it "
            "teaches in-sample; use distill.targets=insample"
        )
    missing = [
        f"{a}/stage{s}/fold{f}"
        for a in plan.architectures
        for s in plan.ensemble
        for f in range(plan.folds)
        if not teacher.fold_done(a, s, f).is_file()
    ]
    if missing:
        raise DataError(
            f"{teacher.root}: the run is not finished ({len(missing)} ensemble model(s) missing, e.g. "
            f"{missing[0]}); finish it with noisytag pipeline first"
        )
    frontend = [f"frontend.{f.name}" for f in dataclasses.fields(saved.frontend)]
    for key in (*frontend, "data.normalize", "infer.window"):
        a, b = lookup(saved, key), lookup(cfg, key)
        if a != b:
            raise ConfigError(
                f"config key '{key}': the student must read the teacher's input ({a!r}), got {b!r}"
            )


def _members(teacher: RunDir, plan, folds, device: str) -> dict[int, list]:
    """Fold → the ensemble's models of that fold (every stage and architecture of the ensemble), as
    inference members made once for every split they teach."""
    return {
        f: as_members(
            [load_model(teacher.fold_dir(a, s, f))[0] for a in plan.architectures for s in plan.ensemble],
            device,
        )
        for f in folds
    }


def _teachers(cfg: RunConfig) -> dict[int, list]:
    """Teaching group → its members: fold f → fold f's models (out-of-fold), -1 → every model."""
    teacher = RunDir(cfg.distill.teacher)
    plan = teacher.plan()
    members = _members(teacher, plan, range(plan.folds), inference_device(cfg))
    return {g: members[g] for g in range(plan.folds)} | {-1: [m for ms in members.values() for m in ms]}


def _groups(ctx: RunContext, cfg: RunConfig, split: str, n: int) -> np.ndarray:
    """(n,) teaching group of each clip of ``split``: its fold for a labelled clip under out-of-fold
    teaching, else -1 (every model)."""
    if split in ctx.splits and split != "test" and cfg.distill.targets == "oof":
        return np.asarray(ctx.splits[split].fold, dtype=np.int64)
    return np.full(n, -1, dtype=np.int64)


def teacher_targets(
    ctx: RunContext, student: RunDir, cfg: RunConfig, extra: dict
) -> dict[str, WindowTargets]:
    """Per split: the teacher's window probabilities (out-of-fold or in-sample), computed once."""
    out, by_group = {}, None
    for split in ("curated", "noisy", "test", *extra):
        path = student.root / "teacher" / f"{split}.npz"
        if path.is_file():
            out[split] = WindowTargets.load(path)
            continue
        if by_group is None:
            by_group = _teachers(cfg)
        if split in extra:
            cache, positions = extra[split], np.arange(len(extra[split]))
        else:
            cache, positions = ctx.caches[split], ctx.splits[split].clips.position
        group = _groups(ctx, cfg, split, len(positions))
        log.info("teacher: scoring %d %s clips", len(positions), split)
        with torch.no_grad():
            out[split] = teach(by_group, group, cache, positions, cfg.infer, cfg.data.normalize)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        out[split].save(tmp)
        tmp.replace(path)  # whole or absent: a kill never leaves half a file
    return out


def _training_clips(ctx: RunContext, cfg: RunConfig, extra: dict) -> list[tuple[str, ClipSet, np.ndarray]]:
    """(split, clips, label weight per clip) of every curated, noisy (and unlabelled) clip, in order."""
    out = []
    for split in ("curated", "noisy", *extra):
        if split in extra:
            n = len(extra[split])
            clips = ClipSet(
                np.full(n, split, dtype=object),
                np.arange(n, dtype=np.int64),
                np.zeros((n, len(ctx.classes)), np.float32),
            )
        else:
            clips = ctx.splits[split].clips
        w = np.full(len(clips), cfg.distill.label_weight if split == "curated" else 0.0, np.float32)
        out.append((split, clips, w))
    return out


def _training_set(ctx: RunContext, cfg: RunConfig, teacher: dict, extra: dict):
    """Every curated, noisy (and unlabelled) clip, with per-window targets mixed as configured."""
    parts, windows, targets = [], [], []
    for split, clips, w in _training_clips(ctx, cfg, extra):
        parts.append(clips)
        windows.append(teacher[split])
        targets.append(student_targets(teacher[split], clips.targets, w))
    return ClipSet.concat(parts), WindowTargets.concat(windows), np.concatenate(targets)


def training_config(cfg: RunConfig) -> RunConfig:
    """The config the student's training runs with: ``cfg``, but with views (``distill.views`` > 0) its
    batch mixup off, since each view already carries its mix (the other augmentations stay on)."""
    if cfg.distill.views <= 0:
        return cfg
    return dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, mixup_p=0.0))


def teacher_views(ctx: RunContext, student: RunDir, cfg: RunConfig, extra: dict, caches: dict):
    """The training clips, their view cache (``teacher/views.npz``, made once) and the views' targets."""
    parts = _training_clips(ctx, cfg, extra)
    clips = ClipSet.concat([c for _, c, _ in parts])
    weight = np.concatenate([w for _, _, w in parts])
    group = np.concatenate([_groups(ctx, cfg, split, len(c)) for split, c, _ in parts])
    width, a = cfg.train.window, cfg.augment
    seed = run_seed(cfg.train.seed, ctx.plan.kind, STAGE, FOLD)
    draws = draw_views(
        clip_lengths(caches, clips), group, cfg.distill.views, width, seed, a.mixup_p, a.mixup_alpha
    )
    key = f"{RunDir(cfg.distill.teacher).root.resolve()} {cfg.distill.targets}"
    started = time.perf_counter()
    views = make_teacher_views(
        student.root / "teacher" / "views.npz", lambda: _teachers(cfg), group, caches, clips, draws, width,
        cfg.data.normalize, cfg.infer.batch_size, key=key,
    )  # fmt: skip
    log.info(
        "teacher: %d views of %d clips ready in %.1f s",
        draws.views,
        len(clips),
        time.perf_counter() - started,
    )
    targets = view_targets(views, clips.targets, weight, union=a.mixup_target == "union")
    return clips, views, targets


def run_distill(
    teacher_dir: str | Path,
    student_dir: str | Path,
    cfg: RunConfig,
    force: bool = False,
    progress: bool = True,
    callbacks=(),
    plan: RunPlan | None = None,
) -> dict:
    """Distil the finished run ``teacher_dir`` into one model in ``student_dir``; resumable.

    ``callbacks``: extra Lightning callbacks of the student's training (tests interrupt it with one).
    ``plan``: the validated plan of ``cfg`` when the command built it (once per command); default:
    built by :func:`open_run`.
    """
    teacher = RunDir(teacher_dir)
    check_teacher(teacher, cfg)
    data_dir = Path(teacher.info().get("data_dir", ""))
    if not data_dir.exists():
        raise DataError(f"{teacher.root}: its data set {str(data_dir)!r} is not there (run.json data_dir)")
    student = RunDir(student_dir)
    if not student.folds.is_file():  # out-of-fold teaching needs the teacher's folds, not new ones
        student.root.mkdir(parents=True, exist_ok=True)
        write_text(student.folds, teacher.folds.read_text())
    ctx = open_run(data_dir, student.root, cfg, force=force, progress=progress, plan=plan)
    extra = {}
    if cfg.distill.unlabelled:
        cache_dir = feature_cache_dir(data_dir, cfg)  # where `features` caches (beside a manifest)
        extra["unlabelled"] = build_folder_cache(
            cfg.distill.unlabelled, cache_dir, cfg.frontend, "unlabelled", cfg.data.workers
        )
    caches = {**ctx.caches, **extra}
    views = cfg.distill.views > 0  # the teacher scores views of the training clips, not grid windows
    teacher_probs = {} if views else teacher_targets(ctx, student, cfg, extra)
    arch, fold_dir = cfg.distill.arch, student.fold_dir(cfg.distill.arch, STAGE, FOLD)
    if not student.fold_done(arch, STAGE, FOLD).is_file():
        seed = run_seed(cfg.train.seed, ctx.plan.kind, STAGE, FOLD)
        if views:
            clips, cached, targets = teacher_views(ctx, student, cfg, extra, caches)
            data = TeacherViewDataset(caches, clips, cached, targets, cfg.train.window, cfg.data.normalize)
        else:
            clips, windows, targets = _training_set(ctx, cfg, teacher_probs, extra)
            data = TeacherWindowDataset(
                caches, clips, windows, targets, cfg.train.window, seed, cfg.data.normalize, cfg.distill.crop
            )
        started = time.perf_counter()
        module = fit_fold(
            training_config(cfg), arch=arch, n_classes=len(ctx.classes), caches=caches, train=clips,
            val=clips.subset(np.zeros(len(clips), bool)), fold_dir=fold_dir, epochs=cfg.distill.epochs,
            lr=cfg.distill.lr, seed=seed, progress=progress, train_data=data, callbacks=callbacks,
        )  # fmt: skip
        model = module.model.eval().cpu()
        if is_global_zero():
            test = predict_cache(
                [model], ctx.caches["test"], ctx.test.clips.position, cfg.infer, cfg.data.normalize
            )
            write_npy(student.fold_test(arch, STAGE, FOLD), test.astype(np.float32))
        record = FoldRecord(
            arch=arch, stage=STAGE, fold=FOLD, classes=tuple(ctx.classes), frontend=cfg.to_dict()["frontend"],
            normalize=cfg.data.normalize, config_hash=cfg.hash(), n_train=len(clips),
            teacher=str(teacher.root.resolve()),
        )  # fmt: skip
        write_fold_outputs(student, record, model, started)
    n_unlabelled = len(extra["unlabelled"]) if "unlabelled" in extra else 0
    return finish_student(ctx, teacher, student, cfg, n_unlabelled)


def finish_student(
    ctx: RunContext, teacher: RunDir, student: RunDir, cfg: RunConfig, n_unlabelled: int
) -> dict:
    """Student vs teacher on the test set (overall, per class), the student's submission."""
    arch = cfg.distill.arch
    test = np.load(student.fold_test(arch, STAGE, FOLD), allow_pickle=False)
    tctx = dataclasses.replace(ctx, cfg=teacher.saved_config(), plan=teacher.plan(), run=teacher)
    teacher_test, members = ensemble_test(tctx)
    seconds = float(student.fold_done(arch, STAGE, FOLD).read_text())
    n_train = int(len(ctx.curated.fnames) + len(ctx.noisy.fnames) + n_unlabelled)
    rows = [
        {"model": f"teacher: ensemble {'+'.join(members)} ({len(members) * teacher.plan().folds} models)",
         "arch": "+".join(teacher.plan().architectures), "stage": 0} | test_scores(ctx, teacher_test),
        {"model": f"student: {arch}", "arch": arch, "stage": STAGE} | test_scores(ctx, test)
        | {"n_train": n_train, "seconds": seconds},
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    # How closely the student follows its teacher on test clips it never trained on: the share of clips
    # whose top tag is the teacher's, and the mean absolute difference of the probabilities.
    table["top1_agreement"] = [1.0, float(np.mean(test.argmax(1) == teacher_test.argmax(1)))]
    table["mean_abs_diff"] = [0.0, float(np.abs(test - teacher_test).mean())]
    per_class = []
    truth = ctx.truth_test
    if truth is not None:
        for name, p in (("teacher", teacher_test), ("student", test)):
            scores, weights = per_class_lwlrap(truth > 0.5, p)
            per_class.append(
                pd.DataFrame({"label": ctx.classes, "lwlrap": scores, "weight": weights, "source": name})
            )
    write_csv(student.stage_table, table)
    write_csv(
        student.test_scores,
        table[[c for c in table.columns if c in ("model", "arch") or c.startswith("test_lwlrap")]],
    )
    write_csv(
        student.per_class,
        pd.concat(per_class) if per_class else pd.DataFrame(columns=["label", "lwlrap", "weight", "source"]),
    )
    sample = ctx.data_dir / SUBMISSION
    write_submission(
        student.submission, ctx.test.fnames, test, ctx.classes, sample if sample.is_file() else None
    )
    student.update_info(
        finished=time.strftime("%Y-%m-%d %H:%M:%S"), ensemble_stages=[STAGE], teacher=str(teacher.root)
    )
    return {"stage_table": table, "test": table, "selection": pd.DataFrame()}


def load_student_config(
    teacher_dir: str | Path, student_dir: str | Path, config: str | Path | None, sets: list[str]
) -> RunConfig:
    """The config a distillation runs with: a resumed student keeps its own unless given another."""
    student, teacher = RunDir(student_dir), RunDir(teacher_dir)
    if config is None and student.config.is_file():
        return with_overrides(student.saved_config(), sets)
    base = load_config(config) if config is not None else None
    if not teacher.config.is_file():
        raise DataError(f"{teacher.root}: not a run directory (no config.yaml)")
    return student_config(teacher, base, sets)
