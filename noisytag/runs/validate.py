"""One check of a whole config before any work starts: the run plan's ranges, then each plug-in axis.

The plan (:mod:`noisytag.plan`, base layer) validates the core sections; each registry (augmentations,
detectors, treatments, losses, backends, models) validates the options of the entry a config chooses, and the
normalisation table (:func:`noisytag.audio.model_input.check_normalize`) the value of ``data.normalize``.
All raise :class:`noisytag.config.ConfigError` naming the key, so a wrong value never waits until the
first fold starts, after the feature cache is built.

A command builds its plan once, here, and passes it down (``open_run(plan=...)``); the plan is looked
up through its module (``run_plan.build_plan``), so one test spy sees every build.
"""

from __future__ import annotations

from noisytag import plan as run_plan
from noisytag.audio.features import check_frontend
from noisytag.audio.model_input import check_normalize
from noisytag.config import ConfigError, RunConfig
from noisytag.infer.ensemble import BACKENDS
from noisytag.learn.augment import AUGMENTATIONS
from noisytag.learn.averaging import AVERAGINGS
from noisytag.learn.detectors import DETECTORS
from noisytag.learn.losses import LOSSES
from noisytag.learn.treatments import TREATMENTS
from noisytag.models import available as model_names
from noisytag.models.heads import POOLS
from noisytag.plan import RunPlan
from noisytag.registry import Registry

# The axes a config chooses from (executors are a command-line choice, checked by the CLI).
CONFIG_REGISTRIES: tuple[Registry, ...] = (
    AUGMENTATIONS,
    DETECTORS,
    TREATMENTS,
    LOSSES,
    BACKENDS,
    POOLS,
    AVERAGINGS,
)


def validate_plugins(cfg: RunConfig) -> None:
    """Each plug-in axis checks the entry the config names and its options."""
    for registry in CONFIG_REGISTRIES:
        registry.validate(cfg)
    check_normalize(cfg.data.normalize)
    check_frontend(cfg.frontend)
    known = model_names()
    chosen = [("distill.arch", cfg.distill.arch)] if cfg.pipeline.mode == "student" else []
    chosen += [("pipeline.architectures", a) for a in cfg.pipeline.architectures]
    for key, arch in chosen:
        if arch not in known:
            raise ConfigError(f"config key '{key}': unknown model '{arch}' (known: {', '.join(known)})")


def checked_plan(cfg: RunConfig) -> RunPlan:
    """The run plan of ``cfg``, with every range and plug-in option validated."""
    plan = run_plan.build_plan(cfg)
    validate_plugins(cfg)
    return plan
