import pytest

from noisytag.config import ConfigError, RunConfig, load_config, save_config, with_overrides


def test_defaults_follow_the_spec():
    cfg = RunConfig()
    assert (cfg.frontend.n_fft, cfg.frontend.hop_length, cfg.frontend.n_mels) == (2560, 694, 128)
    assert cfg.train.batch_size == 128 and cfg.train.folds == 10
    assert cfg.infer.stages == (2, 3, 4) and cfg.infer.max_stride == 48
    assert cfg.selection.stage3_cap == 5


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\nmodel:\n  width: 0.5\npipeline:\n  architectures: [cnn1, vgg16]\n")
    cfg = load_config(path, ["train.epochs=3", "augment.mixup_p=0", "pipeline.stage_epochs=[1, 2, 3, 4]"])
    assert cfg.train.epochs == 3
    assert cfg.model.width == 0.5
    assert cfg.augment.mixup_p == 0.0 and isinstance(cfg.augment.mixup_p, float)
    assert cfg.pipeline.architectures == ("cnn1", "vgg16")
    assert cfg.pipeline.stage_epochs == (1, 2, 3, 4)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "data.cache_dir=/tmp/x"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.hash() == cfg.hash()
    assert with_overrides(cfg, ["train.epochs=3"]).hash() != cfg.hash()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], "unknown config key 'train.epoch'"),
        (["trian.epochs=3"], "unknown config key 'trian'"),
        (["train.epochs=many"], "config key 'train.epochs': expected an integer"),
        (["train.epochs=2.5"], "config key 'train.epochs': expected an integer"),
        (["augment.mixup_p=yes please"], "config key 'augment.mixup_p': expected a number"),
        (["data.skip_invalid=3"], "config key 'data.skip_invalid': expected true/false"),
        (["pipeline.stages={a: 1}"], "config key 'pipeline.stages': expected a list"),
        (["train=5"], "config section 'train': expected a mapping"),
        (["train.epochs"], "expected section.key=value"),
    ],
)
def test_bad_keys_and_types_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, overrides)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml' is not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    demo = load_config(root / "demo.yaml")
    full = load_config(root / "fat2019.yaml")
    assert demo.train.folds == 3 and demo.model.width < 1
    assert full.train.folds == 10 and full.pipeline.architectures == ("cnn1", "vgg16")
    assert demo.selection.method == full.selection.method == "cleanlab"
    real = load_config(root / "realdev.yaml")  # the demo's pipeline plus the levers chosen on realdev
    assert (real.frontend.kind, real.train.loss, real.train.average) == ("pcen", "bce+lsep", "swa")
    assert real.distill.views > 0 and real.distill.epochs > demo.distill.epochs
    assert (real.pipeline, real.model, real.selection) == (demo.pipeline, demo.model, demo.selection)
