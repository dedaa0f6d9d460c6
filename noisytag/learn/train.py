"""Training of one (stage, fold) model with Lightning.

``TrainingModule`` (the Lightning module that trains one fold model or a student) = model + batch
augmentations + the base loss (``train.loss``: BCE-with-logits, LSEP or both) on soft targets +
lwlrap of the validation clips, scored by the window engine (:mod:`noisytag.infer.engine`) as
out-of-fold and test predictions are, following ``infer.mode``.
``fit_fold`` builds the trainer (AdamW + one-cycle, mixed precision on a GPU, DDP when asked), resumes
from the fold's ``last.ckpt`` when one exists, and returns the trained model. Artifacts beyond the
checkpoint (weights, out-of-fold predictions, done-marker) are the pipeline's job.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from noisytag.config import AugmentConfig, RunConfig
from noisytag.fileio import atomic_path, write_csv
from noisytag.infer.engine import clip_mean
from noisytag.infer.members import WindowedHead
from noisytag.learn.augment import build_chain
from noisytag.learn.averaging import build_averaging
from noisytag.learn.loader import ClipSet, EpochSampler, RandomWindowDataset, ValidationBatches
from noisytag.learn.losses import base_loss
from noisytag.learn.treatments import treatment as treatment_entry
from noisytag.metrics import lwlrap
from noisytag.models import build

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_lwlrap", "lr", "seconds"]


class TrainingModule(L.LightningModule):
    """Model + augmentations + loss; validation gathers the window engine's logits and scores whole clips.

    Training targets carry one extra last column, the example's untrusted share w ∈ [0, 1] (see
    :class:`noisytag.learn.loader.RandomWindowDataset`); how it enters the loss is ``noisy.treatment``
    (SPEC §6b): the treatment's entry (:mod:`noisytag.learn.treatments`) gives the loss function and
    whether the model gets a separate noisy-label output layer; the loss applies the base loss
    ``criterion`` (``train.loss``, :mod:`noisytag.learn.losses`). Inference uses the clean output only.
    """

    def __init__(
        self,
        model_spec: dict,
        augment: dict,
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99),
        pct_start: float = 0.3,
        seed: int = 0,
        treatment: str = "drop",
        lsoft_beta: float = 0.7,
        loss: str = "bce",
        lsep_weight: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = build(**model_spec)
        self.augment = build_chain(AugmentConfig(**augment))
        self.seed = seed
        self.treatment = treatment
        entry = treatment_entry(treatment)
        self.treatment_loss = entry.loss
        self.criterion = base_loss(loss, lsep_weight)
        self.lsoft_beta = float(lsoft_beta)
        self.noisy_head = None
        if entry.noisy_head:
            last = self.model.head.classify[-1]
            self.noisy_head = torch.nn.Linear(last.in_features, last.out_features)
            self.reset_noisy_head()
        self._reset_train()
        self._reset_val()
        self.last_val: dict[str, float] = {}

    # -- helpers -----------------------------------------------------------------------------
    def _reset_train(self) -> None:
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_start = time.perf_counter()

    def _reset_val(self) -> None:
        self._val = {"logits": [], "targets": [], "window": [], "row": []}

    def reset_noisy_head(self) -> None:
        """Start the noisy-label layer as a copy of the clean one (after a warm start, too)."""
        if self.noisy_head is not None:
            self.noisy_head.load_state_dict(self.model.head.classify[-1].state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, T) → logits (B, K)."""
        return self.model(x)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch; ``targets`` (B, K + 1) = soft labels ‖ untrusted share."""
        y, w = targets[:, :-1].float(), targets[:, -1:].float()
        return self.treatment_loss(self, x, y, w)

    # -- training ------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._reset_train()

    def training_step(self, batch, batch_idx):
        # Augmentation and dropout draws depend only on (seed, step, rank), all restored from a
        # checkpoint, so a resumed run takes exactly the steps an uninterrupted one would.
        torch.manual_seed(self.seed * 1_000_003 + self.global_step * 101 + self.global_rank)
        x, y = batch
        x, y = self.augment(x, y)
        loss = self.loss(x, y)
        self._loss_sum += float(loss.detach()) * len(x)
        self._loss_count += len(x)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        return loss

    def epoch_train_loss(self) -> float:
        stats = torch.tensor([self._loss_sum, float(self._loss_count)], device=self.device)
        if self.trainer.world_size > 1:
            stats = self.all_gather(stats).sum(0)
        return float(stats[0] / stats[1].clamp(min=1))

    # -- validation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._reset_val()

    def validation_step(self, batch, batch_idx):
        """One batch of :class:`~noisytag.learn.loader.ValidationBatches`: windows, or a whole clip."""
        if batch["whole"]:  # fast mode: the body once over the clip, the head on each window's slice
            logits = WindowedHead(self.model, int(batch["width"])).logits(batch["x"], batch["starts"])
        else:
            logits = self(batch["x"])
        self._val["logits"].append(logits.float())
        self._val["targets"].append(batch["target"].float())
        self._val["window"].append(batch["window"])
        self._val["row"].append(batch["row"])

    def on_validation_epoch_end(self) -> None:
        if not self._val["logits"]:
            return
        parts = {k: torch.cat(v) for k, v in self._val.items()}
        if self.trainer.world_size > 1:
            parts = self._gather(parts)
        val_loss, val_lwlrap = score_validation(
            parts["logits"].cpu(), parts["targets"].cpu(), parts["window"].cpu(), parts["row"].cpu()
        )
        self.last_val = {"val_loss": val_loss, "val_lwlrap": val_lwlrap}
        self.log("val_lwlrap", val_lwlrap, prog_bar=True, rank_zero_only=True)
        self.log("val_loss", val_loss, rank_zero_only=True)
        self._reset_val()

    def _gather(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's windows on every rank. Ranks hold different numbers of windows (batches differ
        in size), so each pads to the longest with window id -1, dropped after the gather; the
        sampler's padding repeats whole batches, which the window ids let ``score_validation`` drop."""
        n = len(parts["window"])
        longest = int(self.all_gather(torch.tensor([n], device=self.device)).max())
        padded = {}
        for k, v in parts.items():
            fill = torch.full(
                (longest - n, *v.shape[1:]), -1 if k == "window" else 0, dtype=v.dtype, device=v.device
            )
            padded[k] = self.all_gather(torch.cat([v, fill])).flatten(0, 1)
        keep = padded["window"] >= 0
        return {k: v[keep] for k, v in padded.items()}

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.lr, total_steps=total, pct_start=hp.pct_start
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def score_validation(
    logits: torch.Tensor, targets: torch.Tensor, window: torch.Tensor, row: torch.Tensor
) -> tuple[float, float]:
    """Loss over unique windows and lwlrap of each clip's engine mean (:func:`clip_mean`) of probabilities.

    Windows are taken once each (a distributed sampler's padding repeats them) in window-id order,
    which puts each clip's windows together in the engine's order.
    """
    _, first = np.unique(window.numpy(), return_index=True)
    first = torch.from_numpy(first)
    logits, targets, row = logits[first], targets[first], row[first].numpy()
    loss = float(F.binary_cross_entropy_with_logits(logits, targets))
    probs = torch.sigmoid(logits).numpy()
    _, starts, counts = np.unique(row, return_index=True, return_counts=True)
    clips = np.stack([clip_mean(probs[s : s + n]) for s, n in zip(starts, counts, strict=True)])
    return loss, float(lwlrap(targets.numpy()[starts] > 0.5, clips))


class EpochMetricsCSV(Callback):
    """Appends one row per finished epoch to metrics.csv (rewriting rows of a resumed epoch)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module: TrainingModule) -> None:
        train_loss = pl_module.epoch_train_loss()
        if not trainer.is_global_zero:
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        row = {
            "epoch": trainer.current_epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(pl_module.last_val.get("val_loss", float("nan")), 6),
            "val_lwlrap": round(pl_module.last_val.get("val_lwlrap", float("nan")), 6),
            "lr": lr,
            "seconds": round(time.perf_counter() - pl_module._epoch_start, 3),
        }
        rows = read_metrics(self.path)
        rows = [r for r in rows if int(r["epoch"]) < row["epoch"]] + [row]
        write_csv(self.path, pd.DataFrame(rows, columns=METRIC_COLUMNS))


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return pd.read_csv(path).to_dict("records")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed, so a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    return "16-mixed" if torch.cuda.is_available() else "32-true"


def inference_device(cfg: RunConfig) -> str:
    """Where a trained fold model predicts its out-of-fold and test clips: the training GPU if any."""
    if cfg.train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _devices(devices: str):
    return int(devices) if str(devices).isdigit() else devices


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (device lines, tips) out of our logs unless debugging."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # a fold without validation clips (distillation trains on every clip) skips validation on purpose
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")


def make_trainer(cfg: RunConfig, max_epochs: int, fold_dir: Path | None, progress: bool, callbacks=()):
    """A Lightning Trainer with the run's device, precision, strategy and our callbacks."""
    quiet_lightning()
    t = cfg.train
    cbs = list(callbacks)
    if fold_dir is not None:
        cbs.append(
            ModelCheckpoint(
                dirpath=fold_dir,
                filename="last",
                save_top_k=1,
                every_n_epochs=1,
                enable_version_counter=False,
            )
        )
        cbs.append(EpochMetricsCSV(fold_dir / "metrics.csv"))
    if progress:
        cbs.append(RichProgressBar(leave=False))
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=t.accelerator,
        devices=_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(t.precision),
        logger=False,
        callbacks=cbs,
        enable_checkpointing=fold_dir is not None,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()] if fold_dir is not None else None,
        default_root_dir=str(fold_dir) if fold_dir is not None else None,
        log_every_n_steps=1,
    )


def train_loader(cfg: RunConfig, caches: Mapping, clips: ClipSet, seed: int, data=None) -> DataLoader:
    """Seeded epochs over ``data`` (default: one random window of each clip per epoch)."""
    data = (
        data
        if data is not None
        else RandomWindowDataset(caches, clips, cfg.train.window, seed, cfg.data.normalize)
    )
    return DataLoader(
        data,
        batch_size=cfg.train.batch_size,
        sampler=EpochSampler(len(clips), seed),
        num_workers=cfg.train.num_workers,
        drop_last=len(clips) > cfg.train.batch_size,
    )


def val_loader(cfg: RunConfig, caches: Mapping, clips: ClipSet) -> DataLoader:
    """The window engine's batches of the validation clips (``infer`` windows and mode,
    ``train.val_batch_size`` windows a batch); each item is already a batch."""
    data = ValidationBatches(caches, clips, cfg.infer, cfg.train.val_batch_size, cfg.data.normalize)
    return DataLoader(data, batch_size=None, num_workers=cfg.train.num_workers)


def build_module(cfg: RunConfig, arch: str, n_classes: int, lr: float, seed: int) -> TrainingModule:
    spec = {
        "name": arch,
        "n_classes": n_classes,
        "in_channels": cfg.model.in_channels,
        "width": cfg.model.width,
        "freq_channel": cfg.model.freq_channel,
        "pool": cfg.model.pool,
    }
    t = cfg.train
    return TrainingModule(
        spec,
        asdict(cfg.augment),
        lr=lr,
        weight_decay=t.weight_decay,
        betas=(t.beta1, t.beta2),
        pct_start=t.pct_start,
        seed=seed,
        treatment=cfg.noisy.treatment,
        lsoft_beta=cfg.noisy.lsoft_beta,
        loss=t.loss,
        lsep_weight=t.lsep_weight,
    )


def fit_fold(
    cfg: RunConfig,
    *,
    arch: str,
    n_classes: int,
    caches: Mapping,
    train: ClipSet,
    val: ClipSet,
    fold_dir: Path,
    epochs: int,
    lr: float,
    seed: int,
    init_state: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    train_data=None,
) -> TrainingModule:
    """Train one fold model, resuming from ``fold_dir/last.ckpt`` when it exists.

    ``init_state``: weights of the previous stage's model of the same fold (warm start); ignored
    when resuming, since the checkpoint already holds the weights. ``train_data``: a dataset of the
    training loader's kind (keys ``epoch * N + i``) instead of random windows of ``train`` (distillation).
    With ``train.average`` the returned model holds the averaged weights (:mod:`noisytag.learn.averaging`).
    """
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, verbose=False)
    module = build_module(cfg, arch, n_classes, lr, seed)
    ckpt = fold_dir / "last.ckpt"
    resume = ckpt if ckpt.is_file() else None
    if resume is None and init_state is not None:
        module.model.load_state_dict(init_state)
        module.reset_noisy_head()
    averaging = build_averaging(cfg)
    extra = [averaging] if averaging is not None else []
    trainer = make_trainer(cfg, epochs, fold_dir, progress, [*callbacks, *extra])
    if resume is not None:
        log.info("resuming %s from %s", fold_dir, resume)
    batches = train_loader(cfg, caches, train, seed, train_data)
    trainer.fit(
        module,
        train_dataloaders=batches,
        val_dataloaders=val_loader(cfg, caches, val) if len(val) else None,
        ckpt_path=str(resume) if resume is not None else None,
    )
    if averaging is not None:  # batch-norm statistics (SWA) from the epoch after the last
        batches.sampler.set_epoch(epochs)
        averaging.finish(module, batches, inference_device(cfg), seed)
    return module
