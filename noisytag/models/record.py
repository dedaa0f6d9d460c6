"""The fold record: what a saved fold model is, as ``model.json`` states it beside its weights.

Training writes one :class:`FoldRecord` per fold model (the pipeline's folds and a distilled student
alike, through one writer in :mod:`noisytag.runs.pipeline`); inference, export and serving read it
back with :meth:`FoldRecord.from_json`. :func:`noisytag.models.weights.save_model` adds the weights'
own facts (format, model spec, checksum, parameter count) to the same file.

Older run folders stay readable: a field their ``model.json`` lacks takes its default (a record from
before ``n_train`` has ``n_train=None``; one without ``normalize`` was written for min-max input), and
keys this class does not know are ignored. A field that is ``None`` is not written, so each kind of
run writes exactly the keys it wrote before the record was typed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisytag.config import FrontendConfig
from noisytag.models.weights import read_meta


@dataclass(frozen=True)
class FoldRecord:
    """One fold model: where it sits in its run, what it predicts and what input it reads."""

    arch: str | None = None  # None: a model.json not written by a run (no member name of its own)
    stage: int | None = None
    fold: int | None = None
    classes: tuple[str, ...] = ()  # the output columns, in order
    frontend: dict[str, Any] = field(default_factory=dict)  # FrontendConfig as a dict; {} = defaults
    normalize: str = "minmax"  # the input normalisation (data.normalize) it was trained with
    config_hash: str | None = None  # the hash of the run config that trained it
    n_train: int | None = None  # training clips (None in records older than the count)
    teacher: str | None = None  # a student's teacher run directory; None for the pipeline's folds

    @property
    def name(self) -> str | None:
        """``{arch}_stage{k}_fold{f}``: the member name inference and export use (None when unknown)."""
        if self.arch is None or self.stage is None or self.fold is None:
            return None
        return f"{self.arch}_stage{self.stage}_fold{self.fold}"

    def frontend_config(self) -> FrontendConfig:
        """The front end the model reads, as a config (defaults for a record without one)."""
        return FrontendConfig(**self.frontend)

    def to_json(self) -> dict[str, Any]:
        """The record's ``model.json`` keys, in field order; fields that are None are left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FoldRecord:
        """The record of a parsed ``model.json``: missing fields take their defaults, unknown keys
        (the weights' own, or a newer release's) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        if "classes" in values:
            values["classes"] = tuple(values["classes"])
        if "frontend" in values:
            values["frontend"] = dict(values["frontend"])
        return cls(**values)

    @classmethod
    def read(cls, directory: str | Path) -> FoldRecord:
        """The record of a saved model directory (WeightsError naming the file when it is not one)."""
        return cls.from_json(read_meta(directory))
