"""Weights round trip (safetensors + model.json) and clear errors for bad model directories."""

from __future__ import annotations

import json

import pytest
import torch

from noisytag.models import build
from noisytag.models.weights import WeightsError, load_model, read_meta, save_model


def _tiny(n_classes=5, in_channels=1, seed=0):
    torch.manual_seed(seed)
    model = build("cnn1", n_classes, in_channels, width=0.125)
    # make BN statistics non-trivial so the round trip covers buffers too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, in_channels, 128, 64))
    return model.eval()


META = {"arch": "cnn1", "stage": 2, "fold": 0, "classes": list("abcde"), "normalize": "minmax"}


def test_round_trip_same_outputs(tmp_path):
    model = _tiny()
    save_model(tmp_path / "m", model, META)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]
    loaded, meta = load_model(tmp_path / "m")
    assert not loaded.training
    assert meta["classes"] == list("abcde") and meta["stage"] == 2
    assert meta["model"] == model.spec
    x = torch.rand(3, 1, 128, 150)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    save_model(tmp_path, _tiny(seed=0), META)
    save_model(tmp_path, _tiny(seed=1), {**META, "fold": 3})
    assert read_meta(tmp_path)["fold"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    load_model(tmp_path)


def test_missing_files_named(tmp_path):
    with pytest.raises(WeightsError, match="model.json: missing"):
        load_model(tmp_path)
    save_model(tmp_path, _tiny(), META)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(WeightsError, match="weights.safetensors: missing"):
        load_model(tmp_path)


def test_corrupt_files_named(tmp_path):
    save_model(tmp_path, _tiny(), META)
    path = tmp_path / "weights.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="weights.safetensors: checksum"):
        load_model(tmp_path)
    with pytest.raises(WeightsError, match="weights.safetensors: corrupt"):
        load_model(tmp_path, verify=False)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(WeightsError, match="model.json: corrupt JSON"):
        load_model(tmp_path)


def test_mismatched_spec_named(tmp_path):
    save_model(tmp_path, _tiny(n_classes=5), META)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["model"]["n_classes"] = 7
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=r"weights.safetensors: does not match .*shapes"):
        load_model(tmp_path)
    meta["model"] = {"name": "nope", "n_classes": 5}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="model.json: cannot rebuild"):
        load_model(tmp_path)
