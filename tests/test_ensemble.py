"""A run's ensemble: model selection, members that must agree, names, the onnx backend's freshness check."""

from __future__ import annotations

import json

import pytest
from conftest import write_model_run

from noisytag.infer.ensemble import (
    load_ensemble,
    member_name,
    onnx_current,
    select_model_dirs,
    shared_settings,
)
from noisytag.infer.members import ExportError, TorchMember

CLASSES = ["bark", "meow", "chirp"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_model_run(tmp_path_factory.mktemp("run"), CLASSES, members=((2, 0), (2, 1), (3, 0)))


def test_select_and_load_torch_members(run):
    assert [d.relative_to(run).as_posix() for d in select_model_dirs(run, stages=[2])] == [
        "cnn1/stage2/fold0",
        "cnn1/stage2/fold1",
    ]
    ens = load_ensemble(run, stages=[2, 3])
    assert [m.name for m in ens.members] == ["cnn1_stage2_fold0", "cnn1_stage2_fold1", "cnn1_stage3_fold0"]
    assert all(isinstance(m, TorchMember) for m in ens.members)
    assert ens.classes == CLASSES and ens.normalize == "minmax" and ens.frontend.hop_length == 694
    with pytest.raises(FileNotFoundError, match="no finished models for stages 4"):
        select_model_dirs(run, stages=[4])
    with pytest.raises(ValueError, match="unknown inference backend"):
        load_ensemble(run, stages=[2], backend="tflite")


def test_members_must_agree(tmp_path):
    metas = [{"classes": ["a", "b"], "normalize": "minmax"}, {"classes": ["b", "a"], "normalize": "minmax"}]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    with pytest.raises(ValueError, match="m1/model.json: 'classes' differs from .*m0/model.json"):
        shared_settings(metas, dirs)
    with pytest.raises(ValueError, match="no 'classes'"):
        shared_settings([{}], dirs[:1])
    classes, frontend, normalize = shared_settings(metas[:1], dirs[:1])
    assert classes == ["a", "b"] and frontend.sample_rate == 44100 and normalize == "minmax"


def test_member_names():
    assert member_name({"arch": "vgg16", "stage": 3, "fold": 2}, "x") == "vgg16_stage3_fold2"
    assert member_name({"arch": "vgg16"}, "some/dir") == "dir"


def test_onnx_backend_needs_a_current_export(run):
    dirs = select_model_dirs(run, stages=[2])
    assert not onnx_current(run, dirs)
    with pytest.raises(ExportError, match="missing or stale; run `noisytag export"):
        load_ensemble(run, stages=[2], backend="onnx")
    # an export index of other weights is stale too
    onnx_dir = run / "onnx"
    onnx_dir.mkdir()
    members = [{"name": f"cnn1_stage2_fold{f}", "weights_sha256": "0" * 64} for f in (0, 1)]
    (onnx_dir / "export.json").write_text(json.dumps({"window": 128, "members": members}))
    assert not onnx_current(run, dirs)


def test_an_export_index_from_before_0_4_is_read(run, tmp_path):
    """An export folder made before 0.4 names its index manifest.json: still read; export.json wins
    when both are there, and writing the index leaves only export.json."""
    from noisytag.infer.ensemble import read_export_index, read_metas, write_export_index

    dirs = select_model_dirs(run, stages=[2])
    metas = read_metas(dirs)
    members = [
        {"name": member_name(m, d), "weights_sha256": m["weights_sha256"]}
        for m, d in zip(metas, dirs, strict=True)
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"window": 128, "members": members}))
    assert read_export_index(tmp_path)["members"] == members
    assert onnx_current(run, dirs, onnx_dir=tmp_path)
    stale = [{**m, "weights_sha256": "0" * 64} for m in members]
    (tmp_path / "export.json").write_text(json.dumps({"window": 128, "members": stale}))
    assert not onnx_current(run, dirs, onnx_dir=tmp_path)
    write_export_index(tmp_path, {"window": 128, "members": members})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json"]
    assert onnx_current(run, dirs, onnx_dir=tmp_path)
