"""The flag table: each command-line flag that shadows a config key means exactly ``--set KEY=VALUE``."""

from __future__ import annotations

import pytest

from noisytag.cli import load_cfg
from noisytag.cli.flags import FLAGS, apply_flags, flag_overrides, flags_of, with_flags
from noisytag.config import ConfigError, RunConfig

# flag → (the value the command's parameter receives, the same value as typed after --set KEY=)
EXAMPLES = {
    "--devices": ("2", "2"),
    "--num-nodes": (3, "3"),
    "--cache-dir": ("/tmp/noisytag cache: x", "'/tmp/noisytag cache: x'"),
    "--workers": (1, "1"),
    "--mode": ("fast", "fast"),
    "--backend": ("onnx", "onnx"),
    "--batch-size": (8, "8"),
    "--stages": ("3, 4", "[3, 4]"),
}
ROWS = [(command, flag) for flag in FLAGS for command in flag.commands]


def test_every_flag_has_an_example():
    assert {f.flag for f in FLAGS} == set(EXAMPLES)


@pytest.mark.parametrize("command, flag", ROWS, ids=[f"{c}{f.flag}" for c, f in ROWS])
def test_a_flag_is_its_set_override(command, flag):
    value, text = EXAMPLES[flag.flag]
    by_flag = load_cfg(None, with_flags([], command, **{flag.param: value}))  # as the commands load
    by_set = load_cfg(None, [f"{flag.key}={text}"])
    assert by_flag == by_set
    assert by_flag != RunConfig(), f"{flag.flag}: the example must change {flag.key}"
    assert apply_flags(RunConfig(), command, **{flag.param: value}) == by_set  # a run's saved config


def test_flags_left_out_change_nothing_and_win_over_set():
    assert flag_overrides("train", devices=None, num_nodes=None) == []
    cfg = load_cfg(None, with_flags(["train.num_nodes=2"], "train", num_nodes=4))
    assert cfg.train.num_nodes == 4
    assert {f.flag for f in flags_of("features")} == {"--cache-dir", "--workers"}
    with pytest.raises(TypeError, match="no flag table row for devices"):
        flag_overrides("features", devices="2")


def test_a_bad_stage_list_names_the_flag():
    with pytest.raises(ConfigError, match="--stages"):
        flag_overrides("predict", stages="3,x")


@pytest.mark.parametrize("command", ["predict", "tag", "serve", "info"])
def test_inference_flags_over_a_run_config_are_the_set_overrides(command):
    """What tag/serve/predict/info lay over a run's saved config is what ``--set infer.*`` gives."""
    from noisytag.cli.flags import given_fields
    from noisytag.settings import resolve_infer

    flags = {"stages": "3, 4", "mode": "fast", "backend": "onnx", "batch_size": 8}
    resolved = resolve_infer(RunConfig().infer, given_fields(command, "infer", **flags))
    by_set = load_cfg(None, [f"{f.key}={EXAMPLES[f.flag][1]}" for f in flags_of(command)])
    assert resolved.cfg == by_set.infer
    assert {k for k, v in resolved.sources.items() if v == "flag"} == set(flags)
