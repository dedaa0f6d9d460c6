"""Typed run configuration: frozen dataclasses per concern under one RunConfig.

Configs are read from YAML (``configs/*.yaml``), overridden from the command line with
``--set section.key=value`` and saved beside every output. Unknown keys and wrong types raise
:class:`ConfigError` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from noisytag.fileio import write_text


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the reason."""


@dataclass(frozen=True)
class FrontendConfig:
    """Front end of SPEC §2 (exact values of the original code): mel power → dB (``kind`` "logmel") or
    → per-channel energy normalisation (``kind`` "pcen", Wang et al. 2017; :mod:`noisytag.audio.features`).

    The PCEN keys take librosa's defaults (gain 0.98, bias 2, power 0.5, time constant 0.4 s, eps 1e-6)
    applied at this front end's hop; while ``kind`` is "logmel" they are left out of :meth:`identity`, so
    every log-mel cache keeps its key and its ``done`` signature, and older model records still match.
    """

    sample_rate: int = 44100
    n_fft: int = 2560
    hop_length: int = 694
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float = 22050.0
    top_db: float = 80.0
    trim_db: float = 60.0
    trim_frame: int = 2048
    trim_hop: int = 512
    min_seconds: float = 2.0
    kind: str = "logmel"  # "logmel" (dB, SPEC §2) or "pcen" (per-channel energy normalisation)
    pcen_alpha: float = 0.98  # gain: E / (eps + M)^alpha, M = E smoothed along time
    pcen_delta: float = 2.0  # bias: (… + delta)^r − delta^r
    pcen_r: float = 0.5  # power (root compression)
    pcen_time_constant: float = 0.4  # seconds of the smoother M (s from it and the hop, as librosa)
    pcen_eps: float = 1e-6  # floor of M (on float-scale mel power: audio in [−1, 1])

    def identity(self) -> dict[str, Any]:
        """The parameters that decide the features, as a plain dict (the cache key and signature; how a
        cache info or model record is compared): every field, less ``kind`` and the PCEN keys while
        ``kind`` is "logmel" (the dict of the release before PCEN, so its caches and records still match)."""
        out = dataclasses.asdict(self)
        if self.kind == "logmel":
            for name in list(out):
                if name == "kind" or name.startswith("pcen_"):
                    del out[name]
        return out

    def key(self) -> str:
        """Short stable hash of :meth:`identity`: names the feature cache built with these parameters."""
        return stable_hash(self.identity())[:12]

    def same_as(self, recorded: Any) -> bool:
        """Whether a recorded front end (a cache info's dict) is this one, compared by :meth:`identity`: a
        record made before ``kind`` existed has no kind and is the log-mel of the same parameters."""
        names = {f.name for f in dataclasses.fields(self)}
        if not isinstance(recorded, dict) or not set(recorded) <= names:
            return False
        return FrontendConfig(**recorded).identity() == self.identity()


@dataclass(frozen=True)
class DataConfig:
    """Where features are cached and how data problems are handled."""

    cache_dir: str | None = None  # default: DATA_DIR/.noisytag-cache
    skip_invalid: bool = False  # skip bad CSV rows instead of failing
    workers: int = 0  # feature-extraction processes; 0 = all cores
    normalize: str = "minmax"  # per-clip min-max of the dB values to [0, 1] (SPEC §2.6) or "none"


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentations of SPEC §4, in this order; a probability of 0 switches one off."""

    mixup_p: float = 1.0
    mixup_alpha: float = 0.4
    mixup_target: str = "mix"  # mixup's target: "mix" (λ-weighted) or "union" (element-wise max of both)
    specmix_p: float = 1.0
    specmix_max: float = 0.25  # h, w ~ U[0, specmix_max)
    zoom_p: float = 0.75
    zoom_max: float = 1.05
    brightness_p: float = 0.75
    brightness: float = 0.2
    contrast_p: float = 0.75
    contrast: float = 0.2
    bandgain_p: float = 0.0  # random band gains (FilterAugment), per example; 0 = off
    bandgain_db: float = 6.0  # each band's gain ~ U[-bandgain_db, bandgain_db] dB
    bandgain_bands: int = 6  # n ~ U{ceil(m/2) … m} bands at random boundaries (m = 6: FilterAugment's 3–6)
    freqmix_p: float = 0.0  # Freq-MixStyle: per-frequency mean/std mixed with a partner's; 0 = off
    freqmix_alpha: float = 0.3  # own share of the statistics ~ Beta(alpha, alpha)
    mask_p: float = 0.0  # SpecAugment-style zero bands (extra, off by default)
    mask_freq: int = 16
    mask_time: int = 16


@dataclass(frozen=True)
class ModelConfig:
    """Options shared by the architectures (which ones: ``pipeline.architectures``)."""

    width: float = 1.0  # channel-width multiplier; 1.0 = the paper's model
    in_channels: int = 1
    freq_channel: bool = False  # add a mel-position input channel (0 … 1 over mel bins) inside the model
    pool: str = "default"  # head pooling: "default" (max ‖ mean over both axes) or "maxtime_meanfreq"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one stage and fold (SPEC §5)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3  # peak learning rate of the one-cycle schedule
    pct_start: float = 0.3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    folds: int = 10
    seed: int = 42
    window: int = 128  # frames per training example
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # "auto": 16-mixed on a GPU, 32 on the CPU
    val_batch_size: int = 256
    loss: str = "bce"  # base loss (noisytag.learn.losses): "bce", "lsep" (pairwise ranking) or "bce+lsep"
    lsep_weight: float = 1.0  # weight of LSEP in "bce+lsep"
    average: str = "none"  # weight averaging (noisytag.learn.averaging): "none", "ema" or "swa"
    ema_decay: float = 0.999  # "ema": a ← d·a + (1 − d)·w after each step, d warmed up (learn.averaging)
    swa_start: float = 0.75  # "swa": mean of the weights after each step past this fraction of the run


@dataclass(frozen=True)
class SelectionConfig:
    """Semi-supervised selection of noisy clips (SPEC §6)."""

    stage3_threshold: float = 0.5  # sqrt(s1 * s2) >= threshold
    stage3_cap: int = 5  # at most this many clips per (fold, label)
    stage4_threshold: float = 1.0  # s3 >= threshold (1.0 = all true labels ranked first)
    method: str = "oof_lwlrap"  # stage-3 detector: "oof_lwlrap" (SPEC §6) or "cleanlab" (confident learning)


@dataclass(frozen=True)
class NoisyConfig:
    """How the noisy clips that the selection does not trust still train (SPEC §6b).

    ``treatment``: "drop" (the seed: only selected clips train), "given" (their given labels, as if
    trusted), "head" (a separate noisy-label output head), "lsoft" (soft bootstrapping with
    ``lsoft_beta``) or "relabel" (soft targets between the given labels and the out-of-fold
    ensemble of the earlier stages, weight ``relabel_alpha`` on the given labels).
    ``stages``: the stages in which the untrusted noisy clips (folds ≠ f) join training.
    """

    treatment: str = "drop"
    stages: tuple[int, ...] = (3, 4)
    lsoft_beta: float = 0.7
    relabel_alpha: float = 0.5


@dataclass(frozen=True)
class PipelineConfig:
    """Stages and architectures of the warm-up pipeline."""

    architectures: tuple[str, ...] = ("cnn1",)
    stages: tuple[int, ...] = (1, 2, 3, 4)
    stage_epochs: tuple[int, ...] = ()  # per stage; empty = train.epochs for every stage
    stage_lr: tuple[float, ...] = ()  # per stage; empty = train.lr for every stage
    mode: str = "warmup"  # "warmup" (SPEC §6) or "joint": one stage on curated + all noisy clips
    joint_epochs: int = 0  # joint mode; 0 = as many training examples as the warm-up stages see


@dataclass(frozen=True)
class InferConfig:
    """Windowed inference and ensembling (SPEC §7)."""

    stages: tuple[int, ...] = (2, 3, 4)
    window: int = 128
    max_stride: int = 48
    batch_size: int = 256
    mode: str = "exact"  # "exact": one forward per window; "fast": conv body once per clip
    backend: str = "torch"  # or "onnx"


@dataclass(frozen=True)
class DistillConfig:
    """One student trained on a finished run's ensemble (``noisytag distill``): every clip, soft targets.

    ``targets``: "insample" — every ensemble model scores every clip; "oof" — a labelled clip of fold f
    gets only fold f's models, which did not train on it. ``label_weight``: share of a curated clip's target that
    is its given labels (the rest is the teacher's). ``unlabelled``: a folder of audio without labels
    that only the student learns from (teacher targets), or "" for none.
    ``views``: 0 — the teacher scores every grid window once and the student's targets are
    interpolated between windows (and mixed linearly by its own batch mixup); V > 0 — the teacher
    scores V augmented views of each clip (a random crop of ``train.window`` frames and, by
    ``augment.mixup_p``/``mixup_alpha``, a partner clip of the same teaching group mixed in), cached once
    in ``teacher/views.npz``; the student trains in epoch e on view e mod V against the teacher's
    probability of exactly that input, with its own batch mixup off (``distill.crop`` is not used).
    """

    arch: str = "mobilenet"
    width: float = 1.0
    epochs: int = 30
    lr: float = 3e-3
    label_weight: float = 0.1
    targets: str = "insample"  # chosen on the demo set (benchmarks/README.md)
    crop: str = "random"  # "random" start frames (targets interpolated) or the teacher's "grid" windows
    unlabelled: str = ""
    views: int = 0  # augmented views per clip scored by the teacher; 0 = grid windows (see above)
    teacher: str = ""  # the teacher run directory (set by noisytag distill)


@dataclass(frozen=True)
class RunConfig:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    noisy: NoisyConfig = field(default_factory=NoisyConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def hash(self) -> str:
        return stable_hash(self.to_dict())[:12]


# ----------------------------------------------------------------------------------------------
# building from plain data


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(obj), sort_keys=True).encode()).hexdigest()


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint (int, float, bool, str, X | None, tuple[X, ...])."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {hint}")  # pragma: no cover


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, full)
        else:
            kwargs[key] = _coerce(value, hint, full)
    return cls(**kwargs)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``"train.epochs=5"`` → ``{"train": {"epochs": 5}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected section.key=value")
    path, raw = text.split("=", 1)
    parts = [p for p in path.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from None
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def config_from_dict(data: dict | None) -> RunConfig:
    return _build(RunConfig, data or {}, "")


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Defaults ← YAML file ← ``--set`` overrides, validated into a :class:`RunConfig`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
        data = loaded or {}
    for text in overrides:
        data = _deep_merge(data, parse_override(text))
    return config_from_dict(data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def with_overrides(cfg: RunConfig, overrides: typing.Sequence[str]) -> RunConfig:
    data = cfg.to_dict()
    for text in overrides:
        data = _deep_merge(data, parse_override(text))
    return config_from_dict(data)
