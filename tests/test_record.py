"""The fold record (model.json): one typed record, one writer, older files still load."""

from __future__ import annotations

import dataclasses
import json

import torch

from noisytag.config import FrontendConfig
from noisytag.infer.ensemble import member_name, shared_settings
from noisytag.models import build
from noisytag.models.record import FoldRecord
from noisytag.models.weights import read_meta, save_model
from noisytag.rundir import RunDir
from noisytag.runs import pipeline

FRONTEND = dataclasses.asdict(FrontendConfig())
# The keys (and order) of a pipeline fold's model.json at 3770d69, before the writer's own keys.
PIPELINE_META = {
    "arch": "cnn1",
    "stage": 3,
    "fold": 1,
    "classes": ["a", "b"],
    "frontend": FRONTEND,
    "normalize": "minmax",
    "config_hash": "abc123",
    "n_train": 42,
}


def _model():
    torch.manual_seed(0)
    return build("cnn1", 2, 1, width=0.125).eval()


def test_new_records_write_the_same_json_as_before():
    record = FoldRecord.from_json(PIPELINE_META)
    assert json.dumps(record.to_json()) == json.dumps(PIPELINE_META)  # keys, order and values
    student = dataclasses.replace(record, teacher="/runs/teacher")
    assert json.dumps(student.to_json()) == json.dumps(PIPELINE_META | {"teacher": "/runs/teacher"})
    assert FoldRecord.from_json(student.to_json()) == student
    assert record.name == "cnn1_stage3_fold1" and record.frontend_config() == FrontendConfig()


def test_an_older_model_json_loads_with_defaults(tmp_path):
    """A record from before n_train / normalize / teacher (and the weights' own keys) still loads."""
    old = {"arch": "cnn1", "stage": 2, "fold": 0, "classes": ["a", "b"], "frontend": FRONTEND}
    save_model(tmp_path, _model(), old)
    record = FoldRecord.read(tmp_path)
    assert (record.arch, record.stage, record.fold, record.classes) == ("cnn1", 2, 0, ("a", "b"))
    assert record.normalize == "minmax" and record.n_train is None and record.teacher is None
    assert record.config_hash is None
    assert "n_train" not in record.to_json() and "model" in read_meta(tmp_path)
    bare = FoldRecord.from_json({"classes": ["a"], "future_key": 1})  # a newer release's key: ignored
    assert bare.name is None and bare.frontend == {}
    assert member_name({"classes": ["a"]}, tmp_path / "m7") == "m7"
    classes, frontend, normalize = shared_settings([old, old | {"normalize": "minmax"}], [tmp_path] * 2)
    assert classes == ["a", "b"] and frontend == FrontendConfig() and normalize == "minmax"


def test_one_writer_saves_the_record_then_the_done_marker(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    record = FoldRecord.from_json(PIPELINE_META)
    checkpoint = run.fold_checkpoint("cnn1", 3, 1)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("last epoch")
    monkeypatch.setattr(pipeline, "is_global_zero", lambda: False)
    pipeline.write_fold_outputs(run, record, _model(), started=0.0)
    assert checkpoint.is_file() and not run.fold_done("cnn1", 3, 1).exists()  # only rank zero writes
    monkeypatch.setattr(pipeline, "is_global_zero", lambda: True)
    pipeline.write_fold_outputs(run, record, _model(), started=0.0)
    assert not checkpoint.exists() and float(run.fold_done("cnn1", 3, 1).read_text()) > 0
    meta = read_meta(run.fold_dir("cnn1", 3, 1))
    assert list(meta)[: len(PIPELINE_META)] == list(PIPELINE_META)
    assert FoldRecord.read(run.fold_dir("cnn1", 3, 1)) == record
