"""ONNX export: manifest, parity with PyTorch (exact and fast mode), onnxruntime members, waveform graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_model_run

from noisytag.config import FrontendConfig, InferConfig

CLASSES = ["bark", "meow", "chirp"]


def make_run(root, members=((2, 0), (3, 0)), width=0.125, in_channels=1):
    return write_model_run(root, CLASSES, members, width, in_channels, bn_stats=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-member run exported into RUN/onnx (where --backend onnx looks for it)."""
    from noisytag.infer.export import export_run

    run = make_run(tmp_path_factory.mktemp("run"), in_channels=3)
    manifest = export_run(run, run / "onnx", stages=[2, 3])
    return run, manifest


def _clips(seed=0):
    from noisytag.infer.predict import Clip

    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate([70, 128, 129, 333, 900]):
        db = (rng.standard_normal((128, t)) * 10 - 40).astype(np.float32)
        out.append(Clip(i, db, float(db.min()), float(db.max())))
    return out


@pytest.mark.slow
def test_manifest_and_recorded_parity(exported):
    run, manifest = exported
    assert [m["name"] for m in manifest["members"]] == ["cnn1_stage2_fold0", "cnn1_stage3_fold0"]
    assert manifest["classes"] == CLASSES and manifest["frontend"]["hop_length"] == 694
    assert manifest["normalize"] == "minmax" and manifest["window"] == 128
    on_disk = json.loads((run / "onnx" / "manifest.json").read_text())
    assert on_disk["members"] == manifest["members"]
    for m in manifest["members"]:
        assert m["parity_max_abs_diff"] <= 1e-4 and m["in_channels"] == 3
        assert (run / "onnx" / m["model"]).is_file() and (run / "onnx" / m["fast"]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_onnx_matches_torch_on_clips(exported, mode):
    from noisytag.infer.ensemble import load_ensemble
    from noisytag.infer.predict import iter_window_probs

    run, _ = exported
    cfg = InferConfig(batch_size=4, mode=mode)
    torch_ens = load_ensemble(run, stages=[2, 3])
    onnx_ens = load_ensemble(run, stages=[2, 3], backend="onnx")  # finds RUN/onnx fresh: no re-export
    a = {k: p for k, _, p in iter_window_probs(torch_ens.members, _clips(), cfg)}
    b = {k: p for k, _, p in iter_window_probs(onnx_ens.members, _clips(), cfg)}
    assert sorted(a) == sorted(b) == list(range(5))
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_reexport_is_a_no_op_and_cli(exported):
    from typer.testing import CliRunner

    from noisytag.cli import app

    run, manifest = exported
    stamp = (run / "onnx" / "cnn1_stage2_fold0" / "model.onnx").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["export", str(run), "--onnx", str(run / "onnx"), "--stages", "2,3"])
    assert res.exit_code == 0, res.output
    assert "exported 2 member(s)" in res.stdout
    assert (run / "onnx" / "cnn1_stage2_fold0" / "model.onnx").stat().st_mtime_ns == stamp
    res = CliRunner().invoke(app, ["export", str(run), "--onnx", str(run / "x"), "--stages", "7"])
    assert res.exit_code != 0 and "no finished models for stages 7" in " ".join(res.output.split())


def test_weight_swap_checks_names():
    from noisytag.infer.export import with_weights
    from noisytag.infer.members import ExportError

    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    init = numpy_helper.from_array(np.zeros((2, 2), np.float32), "model.w")
    graph = helper.make_graph([helper.make_node("Identity", ["model.w"], ["y"])], "g", [], [], [init])
    graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2]))
    proto = helper.make_model(graph)
    swapped = with_weights(proto, {"w": np.ones((2, 2), np.float32)})
    assert numpy_helper.to_array(swapped.graph.initializer[0]).sum() == 4
    with pytest.raises(ExportError, match="shape"):
        with_weights(proto, {"w": np.ones((3, 2), np.float32)})
    with pytest.raises(ExportError, match="absent from the ONNX graph"):
        with_weights(proto, {"w": np.ones((2, 2), np.float32), "v": np.ones(2, np.float32)})


@pytest.mark.slow
def test_waveform_graph_matches_torch_path(tmp_path):
    """tagger.onnx: waveform → probabilities equals decode-free torch path (trim, pad, log-mel, windows)."""
    from noisytag.audio.decode import prepare
    from noisytag.audio.features import log_mel
    from noisytag.infer.ensemble import load_ensemble
    from noisytag.infer.export import export_tagger
    from noisytag.infer.members import session
    from noisytag.infer.predict import Clip, iter_window_probs

    run = make_run(tmp_path / "run", members=((2, 0),))
    entry = export_tagger(sorted(run.glob("cnn1/stage*/fold*")), tmp_path)
    assert entry["parity_max_abs_diff"] <= 1e-4
    ens = load_ensemble(run, stages=[2])
    sess = session(tmp_path / entry["file"])
    rng = np.random.default_rng(3)
    fe = FrontendConfig()
    for seconds in (1.1, 4.6):
        t = np.arange(int(seconds * fe.sample_rate)) / fe.sample_rate
        wave = (0.2 * np.sin(2 * np.pi * 660 * t) * (t > 0.4) + 0.02 * rng.standard_normal(t.size)).astype(
            np.float32
        )
        probs, window_probs, starts = sess.run(None, {"waveform": wave[None]})
        db = log_mel(prepare(wave, fe.sample_rate, fe), fe)
        ((_, ref_starts, ref),) = iter_window_probs(
            ens.members, [Clip(0, db, float(db.min()), float(db.max()))], InferConfig()
        )
        assert starts.tolist() == ref_starts.tolist()
        np.testing.assert_allclose(window_probs, ref, atol=1e-4)
        np.testing.assert_allclose(probs[0], ref.mean(axis=0), atol=1e-4)


@pytest.mark.slow
def test_onnx_backend_exports_on_first_use(tmp_path):
    """Tagger(backend="onnx") exports a run's members to RUN/onnx once, then reads them."""
    import soundfile as sf

    from noisytag.infer.members import OnnxMember
    from noisytag.infer.tag import Tagger

    run = make_run(tmp_path / "run", members=((2, 0),))
    tagger = Tagger(run, stages=[2], backend="onnx", mode="fast")
    assert [type(m) for m in tagger.ensemble.members] == [OnnxMember]
    model_file = run / "onnx" / "cnn1_stage2_fold0" / "model.onnx"
    stamp = model_file.stat().st_mtime_ns
    Tagger(run, stages=[2], backend="onnx")  # current: no second export
    assert model_file.stat().st_mtime_ns == stamp
    wave = np.random.default_rng(0).standard_normal(44100 * 3).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", wave, 44100)
    (record,) = tagger.tag([tmp_path / "a.wav"], top_k=2)
    assert record.error is None and len(record.labels) == 2
