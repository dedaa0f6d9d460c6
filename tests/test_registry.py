"""The plug-in registry (noisytag.registry): names, build, one-line errors naming the key, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from noisytag.config import ConfigError, RunConfig, SelectionConfig, load_config
from noisytag.registry import Registry, in_range, lookup, option_error
from noisytag.runs.validate import CONFIG_REGISTRIES, validate_plugins

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def toy() -> Registry:
    """Two detectors chosen by ``selection.method``, one with options and a two-key check."""
    reg = Registry("detector", "selection.method")

    def not_both_one(cfg) -> None:
        s = cfg.selection
        if s.stage3_threshold == s.stage4_threshold == 1:
            raise option_error("selection.stage4_threshold", "must differ from stage3_threshold", 1)

    @reg.register(
        "strict",
        options={"selection.stage3_threshold": in_range(0, 1), "selection.stage3_cap": in_range(1)},
        validate=not_both_one,
        note="picky",
    )
    class Strict:
        def __init__(self, scale: float = 1.0):
            self.scale = scale

    @reg.register("lenient")
    def lenient(scale: float = 1.0) -> str:
        return f"lenient x{scale:g}"

    return reg


def cfg(**selection) -> RunConfig:
    return RunConfig(selection=SelectionConfig(**selection))


def test_names_build_and_meta():
    reg = toy()
    assert reg.names() == ("strict", "lenient")  # registration order
    assert reg.build("strict", scale=2.0).scale == 2.0
    assert reg.build("lenient", 3) == "lenient x3"
    assert reg.get("strict").meta == {"note": "picky"}
    assert set(reg.get("strict").options) == {"selection.stage3_threshold", "selection.stage3_cap"}


def test_unknown_name_is_one_line_naming_key_and_known_names():
    reg = toy()
    for call in (
        lambda: reg.get("vote"),
        lambda: reg.build("vote"),
        lambda: reg.validate(cfg(method="vote")),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        message = str(err.value)
        assert message == "config key 'selection.method': unknown detector 'vote' (known: strict, lenient)"
        assert "\n" not in message


def test_validate_checks_the_chosen_entry_only():
    reg = toy()
    reg.validate(cfg(method="strict"))
    with pytest.raises(
        ConfigError, match=r"^config key 'selection.stage3_threshold': must be in \[0, 1\], got 1.5$"
    ):
        reg.validate(cfg(method="strict", stage3_threshold=1.5))
    with pytest.raises(ConfigError, match=r"'selection.stage3_cap': must be ≥ 1, got 0"):
        reg.validate(cfg(method="strict", stage3_cap=0))
    with pytest.raises(ConfigError, match="'selection.stage4_threshold': must differ"):
        reg.validate(cfg(method="strict", stage3_threshold=1.0, stage4_threshold=1.0))
    reg.validate(cfg(method="lenient", stage3_threshold=1.5, stage3_cap=0))  # not lenient's options
    with pytest.raises(ConfigError, match="stage3_threshold"):
        reg.validate(cfg(method="lenient", stage3_threshold=1.5), name="strict")  # a name given wins


def test_duplicate_name_is_refused():
    reg = toy()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("lenient")(lambda: None)


def test_chain_validates_every_entry_and_option_axis_only_a_given_name():
    chain = Registry("step", "selection", chain=True)
    chain.register("a", options={"selection.stage3_threshold": in_range(0, 1)})(lambda: "a")
    chain.register("b", options={"selection.stage4_threshold": in_range(0, 1)})(lambda: "b")
    assert chain.chosen(RunConfig()) == ("a", "b")
    with pytest.raises(ConfigError, match="stage4_threshold"):
        chain.validate(cfg(stage4_threshold=2.0))
    cli = Registry("executor", "--executor")
    cli.register("local", options={"selection.stage3_cap": in_range(1)})(lambda: None)
    cli.validate(cfg(stage3_cap=0))  # the config chooses no executor: nothing to check
    with pytest.raises(ConfigError, match="stage3_cap"):
        cli.validate(cfg(stage3_cap=0), name="local")
    with pytest.raises(ConfigError, match=r"^--executor: unknown executor 'slurm' \(known: local\)$"):
        cli.get("slurm")


@pytest.mark.parametrize(
    "check, good, bad, text",
    [
        (in_range(0, 1), [0, 0.5, 1], [-0.1, 1.01, float("nan")], "in [0, 1]"),
        (in_range(0, 1, open_high=True), [0, 0.99], [1.0], "in [0, 1)"),
        (in_range(1), [1, 1e9], [0.99], "≥ 1"),
        (in_range(0, open_low=True), [1e-9], [0, -1], "> 0"),
        (in_range(high=3, open_high=True), [2.9, -5], [3], "< 3"),
    ],
)
def test_in_range(check, good, bad, text):
    assert all(check(v) is None for v in good)
    assert all(check(v) == f"must be {text}" for v in bad)


def test_lookup_reads_dataclasses_and_dicts():
    c = cfg(method="cleanlab")
    assert lookup(c, "selection.method") == "cleanlab"
    assert lookup(c.to_dict(), "selection.method") == "cleanlab"


# ----------------------------------------------------------------------------------------------
# the package's registries together


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_pass_every_registry(path):
    validate_plugins(load_config(path))


def test_every_config_registry_checks_its_options_on_defaults():
    assert CONFIG_REGISTRIES and len({r.axis for r in CONFIG_REGISTRIES}) == len(CONFIG_REGISTRIES)
    for registry in CONFIG_REGISTRIES:
        registry.validate(RunConfig())
        for name in registry.names():  # every declared option key exists in the config
            for key in registry.get(name).options:
                lookup(RunConfig(), key)


@pytest.mark.parametrize(
    "override, key",
    [
        ("selection.method=vote", "selection.method"),
        ("selection.stage3_threshold=1.5", "selection.stage3_threshold"),
        ("augment.zoom_max=0.5", "augment.zoom_max"),
        ("augment.mixup_p=-1", "augment.mixup_p"),
    ],
)
def test_validate_plugins_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate_plugins(load_config(None, [override]))
