"""RunDir: every path inside a run directory, in one place.

A run directory is what users keep and share; everything needed to tag new audio is in it::

    config.yaml                      resolved RunConfig of the run
    run.json                         software versions, data set, timings
    folds.csv                        fname, split (curated|noisy), fold
    stage_table.csv                  arch, stage, lwlrap_noisy, lwlrap_curated, test_lwlrap, n_train, seconds
    test_scores.csv                  model (stage k | ensemble), arch, test_lwlrap   (when test truth is known)
    submission.csv                   fname + one probability column per class
    report.html                      the run report
    {arch}/scores.csv                noisy clips: fname, fold, labels, s1..s4 (+ true_labels, correct)
    {arch}/selections/stage{k}.csv   fname, fold, labels, score (+ correct)
    {arch}/stage{k}/test.npy         test-set probabilities of the stage (mean over folds), rows = test order
    {arch}/stage{k}/fold{f}/weights.safetensors, model.json   the fold model (noisytag.weights)
    {arch}/stage{k}/fold{f}/metrics.csv      epoch, train_loss, val_loss, val_lwlrap, lr
    {arch}/stage{k}/fold{f}/oof_curated.npy  probabilities of the curated clips of fold f (folds.csv order)
    {arch}/stage{k}/fold{f}/oof_noisy.npy    probabilities of the noisy clips of fold f (folds.csv order)
    {arch}/stage{k}/fold{f}/last.ckpt        Lightning checkpoint while training (removed when done)
    {arch}/stage{k}/fold{f}/done             written last: the fold is complete
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # run level
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def stage_table(self) -> Path:
        return self.root / "stage_table.csv"

    @property
    def test_scores(self) -> Path:
        return self.root / "test_scores.csv"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # architecture level
    def arch_dir(self, arch: str) -> Path:
        return self.root / arch

    def scores(self, arch: str) -> Path:
        return self.arch_dir(arch) / "scores.csv"

    def selection(self, arch: str, stage: int) -> Path:
        return self.arch_dir(arch) / "selections" / f"stage{stage}.csv"

    def stage_dir(self, arch: str, stage: int) -> Path:
        return self.arch_dir(arch) / f"stage{stage}"

    def stage_test(self, arch: str, stage: int) -> Path:
        return self.stage_dir(arch, stage) / "test.npy"

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

    def architectures(self) -> list[str]:
        """Architectures that have at least one finished fold, in name order."""
        return sorted(p.parent.parent.parent.name for p in self.root.glob("*/stage*/fold*/done"))

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
