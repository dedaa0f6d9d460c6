"""RunDir: every path inside a run directory and the rules for its config and run.json, in one place.

A run directory is what users keep and share; everything needed to tag new audio is in it::

    config.yaml                      resolved RunConfig of the run
    plan.json                        the run plan (noisytag.plan): stages, result keys, ensemble
    .prepared                        rank zero's note that config, caches and folds are ready (others wait)
    .prepare-failed                  under a multi-rank launch: rank zero's one-line error, so no rank hangs
    teacher/{split}.npz              student runs: the teacher's window probabilities (noisytag distill)
    teacher/views.npz                student runs with distill.views > 0: the teacher's views and their scores
    run.json                         software versions, data set, start/resume times, per-fold timings
    folds.csv                        fname, split (curated|noisy), fold
    stage_table.csv                  model (stage k), arch, stage, lwlrap_noisy, lwlrap_curated,
                                     lwlrap_noisy_truth, test_lwlrap, n_train, seconds
    test_scores.csv                  model (stage k | ensemble ...), arch, test_lwlrap (with test truth)
    selection.csv                    arch, stage, selected, precision, base_rate, detector agreement,
                                     precision / recall of each detector on wrong label sets (with truth)
    per_class.csv                    label, lwlrap, weight, source: the final ensemble per class
    submission.csv                   fname + one probability column per class
    report.html                      the run report
    {arch}/scores.csv                noisy clips: fname, fold, labels, s1..s4 (+ true_labels, correct)
    {arch}/selections/stage{k}.csv   the selected clips: fname, fold, labels, score, verdicts (+ correct)
    {arch}/selections/stage{k}_audit.csv   every noisy clip: both detectors' scores and verdicts
    {arch}/stage{k}/fold{f}/weights.safetensors, model.json   the fold model (noisytag.models.weights)
    {arch}/stage{k}/fold{f}/metrics.csv      epoch, train_loss, val_loss, val_lwlrap, lr, seconds
    {arch}/stage{k}/fold{f}/oof_curated.npy  probabilities of the curated clips of fold f (folds.csv order)
    {arch}/stage{k}/fold{f}/oof_noisy.npy    probabilities of the noisy clips of fold f (folds.csv order)
    {arch}/stage{k}/fold{f}/test.npy         probabilities of the test clips (data-set order)
    {arch}/stage{k}/fold{f}/last.ckpt        Lightning checkpoint while training (removed when done)
    {arch}/stage{k}/fold{f}/done             written last: the fold is complete
    onnx/                            ``noisytag export`` output (models + manifest.json)
    .executor-token                  while Ray tasks run: proves to each task that it sees this directory
    executor.json                    with --executor ray: Ray's start-up and each task's wall, start-up and
                                     training seconds (the overhead per task)

Only global rank zero writes run-level files; callers decide that (``noisytag.runs.context.is_global_zero``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from noisytag import plan as run_plan
from noisytag.config import RunConfig, config_from_dict, save_config
from noisytag.fileio import software_versions, write_json
from noisytag.plan import RunPlan, plan_from_saved, resume_conflicts


class RunConfigMismatch(RuntimeError):
    """The run directory was made with a config that changes results."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # run level ---------------------------------------------------------------------------------
    def _file(name: str):  # noqa: N805 - a small property factory for the fixed run-level files
        return property(lambda self: self.root / name)

    config = _file("config.yaml")
    plan_file = _file("plan.json")
    run_info = _file("run.json")
    folds = _file("folds.csv")
    stage_table = _file("stage_table.csv")
    test_scores = _file("test_scores.csv")
    selection_table = _file("selection.csv")
    per_class = _file("per_class.csv")
    submission = _file("submission.csv")
    report = _file("report.html")
    least_trusted = _file("least_trusted.csv")
    onnx_dir = _file("onnx")
    executor_token = _file(".executor-token")
    executor_log = _file("executor.json")
    del _file

    # architecture and stage level ----------------------------------------------------------------
    def arch_dir(self, arch: str) -> Path:
        return self.root / arch

    def scores(self, arch: str) -> Path:
        return self.arch_dir(arch) / "scores.csv"

    def selection(self, arch: str, stage: int) -> Path:
        return self.arch_dir(arch) / "selections" / f"stage{stage}.csv"

    def audit(self, arch: str, stage: int) -> Path:
        return self.arch_dir(arch) / "selections" / f"stage{stage}_audit.csv"

    def stage_dir(self, arch: str, stage: int) -> Path:
        return self.arch_dir(arch) / f"stage{stage}"

    # fold level ----------------------------------------------------------------------------------
    def fold_dir(self, arch: str, stage: int, fold: int) -> Path:
        return self.stage_dir(arch, stage) / f"fold{fold}"

    def fold_done(self, arch: str, stage: int, fold: int) -> Path:
        return self.fold_dir(arch, stage, fold) / "done"

    def fold_metrics(self, arch: str, stage: int, fold: int) -> Path:
        return self.fold_dir(arch, stage, fold) / "metrics.csv"

    def fold_checkpoint(self, arch: str, stage: int, fold: int) -> Path:
        return self.fold_dir(arch, stage, fold) / "last.ckpt"

    def fold_oof(self, arch: str, stage: int, fold: int, split: str) -> Path:
        return self.fold_dir(arch, stage, fold) / f"oof_{split}.npy"

    def stage_oof(self, arch: str, stage: int, split: str, fold_of: np.ndarray, n_classes: int) -> np.ndarray:
        """(N, K) out-of-fold probabilities of a split's clips (``fold_of``: each clip's fold, folds.csv
        order) from every fold's ``oof_{split}.npy``: FileNotFoundError naming a missing file, ValueError
        naming a file whose rows do not match folds.csv."""
        fold_of = np.asarray(fold_of)
        out = np.full((len(fold_of), n_classes), np.nan, dtype=np.float32)
        for fold in np.unique(fold_of):
            path = self.fold_oof(arch, stage, int(fold), split)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found (stage {stage} of {arch} is not finished)")
            rows = np.load(path, allow_pickle=False)
            expected = (int((fold_of == fold).sum()), n_classes)
            if rows.shape != expected:
                raise ValueError(f"{path}: shape {rows.shape}, expected {expected} from folds.csv")
            out[fold_of == fold] = rows
        return out

    def fold_test(self, arch: str, stage: int, fold: int) -> Path:
        return self.fold_dir(arch, stage, fold) / "test.npy"

    # discovery -----------------------------------------------------------------------------------
    def model_dirs(self, stages=None, archs=None) -> list[Path]:
        """Finished fold-model directories, filtered by stage numbers and architecture names."""
        out = []
        for done in sorted(self.root.glob("*/stage*/fold*/done")):
            fold_dir = done.parent
            stage = int(fold_dir.parent.name.removeprefix("stage"))
            arch = fold_dir.parent.parent.name
            if (stages is None or stage in stages) and (archs is None or arch in archs):
                out.append(fold_dir)
        return out

    def architectures(self) -> list[str]:
        """Architectures that have at least one finished fold, in name order."""
        return sorted({d.parent.parent.name for d in self.model_dirs()})

    # config and run.json rules -------------------------------------------------------------------
    def saved_config(self) -> RunConfig | None:
        if not self.config.is_file():
            return None
        return config_from_dict(yaml.safe_load(self.config.read_text()))

    def adopt_config(self, cfg: RunConfig, force: bool = False, plan: RunPlan | None = None) -> None:
        """Save ``cfg`` and its plan (``plan``: built by the caller; default: built here) as the run's;
        refuse a config that changes results unless ``force``."""
        plan = plan or run_plan.build_plan(cfg)
        self.check_config(cfg, force, plan)
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)
        write_json(self.plan_file, plan.to_dict())

    def plan(self) -> RunPlan:
        """The run's plan (``plan.json``; rebuilt from ``config.yaml`` for runs made before plans)."""
        if self.plan_file.is_file():
            return plan_from_saved(json.loads(self.plan_file.read_text()), None)
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.root}: not a run directory (no config.yaml)")
        return plan_from_saved(None, yaml.safe_load(self.config.read_text()))

    def check_config(self, cfg: RunConfig, force: bool = False, plan: RunPlan | None = None) -> None:
        """Raise :class:`RunConfigMismatch` when ``cfg`` (whose plan is ``plan``, when the caller has it)
        would change the results of the saved config (the check without the save: for processes that
        must not write, e.g. DDP ranks, Ray tasks)."""
        saved = self.saved_config()
        if saved is not None and not force:
            diffs = resume_conflicts(saved, cfg, plan)  # the run plan's rule: no stage may change its result
            if diffs:
                raise RunConfigMismatch(
                    f"{self.root} was made with another config ({'; '.join(diffs)}); "
                    "use --force to continue it anyway, or another output directory"
                )

    def info(self) -> dict:
        return json.loads(self.run_info.read_text()) if self.run_info.is_file() else {}

    def update_info(self, data_dir: Path | None = None, **update) -> None:
        """Merge ``update`` into run.json: ``timings`` add up per key, a second ``started`` is a resume."""
        info = self.info()
        if data_dir is not None:
            info.setdefault("data_dir", str(Path(data_dir).resolve()))
        info.setdefault("versions", software_versions())
        info.setdefault("timings", {})
        for key, value in update.items():
            if key == "timings":
                info["timings"].update(value)
            elif key == "started" and "started" in info:
                info.setdefault("resumed", []).append(value)
            else:
                info[key] = value
        write_json(self.run_info, info)

    def mark_started(self, data_dir: Path) -> None:
        self.update_info(data_dir, started=time.strftime("%Y-%m-%d %H:%M:%S"))
