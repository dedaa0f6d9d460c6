"""ONNX export: export index, parity with PyTorch (exact and fast mode), onnxruntime members, waveform
graph."""

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
    index = export_run(run, run / "onnx", stages=[2, 3])
    return run, index


def _clips(seed=0):
    from noisytag.infer.predict import Clip

    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate([70, 128, 129, 333, 900]):
        db = (rng.standard_normal((128, t)) * 10 - 40).astype(np.float32)
        out.append(Clip(i, db, float(db.min()), float(db.max())))
    return out


@pytest.mark.slow
def test_export_index_and_recorded_parity(exported):
    run, index = exported
    assert [m["name"] for m in index["members"]] == ["cnn1_stage2_fold0", "cnn1_stage3_fold0"]
    assert index["classes"] == CLASSES and index["frontend"]["hop_length"] == 694
    assert index["normalize"] == "minmax" and index["window"] == 128
    on_disk = json.loads((run / "onnx" / "export.json").read_text())
    assert on_disk["members"] == index["members"] and not (run / "onnx" / "manifest.json").exists()
    for m in index["members"]:
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

    run, index = exported
    stamp = (run / "onnx" / "cnn1_stage2_fold0" / "model.onnx").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["export", str(run), "--onnx", str(run / "onnx"), "--stages", "2,3"])
    assert res.exit_code == 0, res.output
    assert "exported 2 member(s)" in res.stdout
    assert (run / "onnx" / "cnn1_stage2_fold0" / "model.onnx").stat().st_mtime_ns == stamp
    res = CliRunner().invoke(app, ["export", str(run), "--onnx", str(run / "x"), "--stages", "7"])
    assert res.exit_code != 0 and "no finished models for stages 7" in " ".join(res.output.split())


@pytest.mark.slow
def test_an_export_from_before_0_4_still_loads(exported, tmp_path):
    """An export folder whose index is still manifest.json (with the waveform graph's entry under
    "tagger") loads and is current; exporting into it again writes only export.json."""
    import shutil

    from noisytag.infer.ensemble import load_ensemble, onnx_current
    from noisytag.infer.export import export_run
    from noisytag.infer.members import OnnxMember
    from noisytag.infer.predict import iter_window_probs

    run, _ = exported
    old = shutil.copytree(run / "onnx", tmp_path / "old")
    index = json.loads((old / "export.json").read_text())
    index["tagger"] = {"file": "graph.onnx", "parity_max_abs_diff": 0.0}
    del index["waveform"]
    (old / "manifest.json").write_text(json.dumps(index))
    (old / "export.json").unlink()
    assert onnx_current(run, sorted(run.glob("cnn1/stage*/fold*")), onnx_dir=old)
    ens = load_ensemble(run, stages=[2, 3], backend="onnx", onnx_dir=old)
    assert all(isinstance(m, OnnxMember) for m in ens.members)
    new = load_ensemble(run, stages=[2, 3], backend="onnx")
    cfg = InferConfig(batch_size=4)
    a = {k: p for k, _, p in iter_window_probs(ens.members, _clips(), cfg)}
    b = {k: p for k, _, p in iter_window_probs(new.members, _clips(), cfg)}
    assert all(np.array_equal(a[k], b[k]) for k in b)
    stamp = (old / "cnn1_stage2_fold0" / "model.onnx").stat().st_mtime_ns
    again = export_run(run, old, stages=[2, 3])
    assert (old / "cnn1_stage2_fold0" / "model.onnx").stat().st_mtime_ns == stamp  # nothing re-exported
    assert sorted(p.name for p in old.glob("*.json")) == ["export.json"]
    assert again["waveform"] == index["tagger"] and "tagger" not in again


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


def with_frontend(run, fe: FrontendConfig):
    """``run``'s model records rewritten to name the front end ``fe``."""
    import dataclasses

    for path in run.glob("cnn1/stage*/fold*/model.json"):
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "frontend": dataclasses.asdict(fe)}))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logmel", "pcen"])
def test_waveform_graph_matches_torch_path(tmp_path, kind):
    """waveform.onnx: waveform → probabilities equals decode-free torch path (trim, pad, log-mel or PCEN,
    windows)."""
    from noisytag.audio.decode import prepare
    from noisytag.audio.features import log_mel
    from noisytag.infer.ensemble import load_ensemble
    from noisytag.infer.export import export_waveform
    from noisytag.infer.members import session
    from noisytag.infer.predict import Clip, iter_window_probs

    fe = FrontendConfig(kind=kind)
    run = with_frontend(make_run(tmp_path / "run", members=((2, 0),)), fe)
    entry = export_waveform(sorted(run.glob("cnn1/stage*/fold*")), tmp_path)
    assert entry["parity_max_abs_diff"] <= 1e-4 and entry["file"] == "waveform.onnx"
    ens = load_ensemble(run, stages=[2])
    assert ens.frontend == fe
    sess = session(tmp_path / entry["file"])
    rng = np.random.default_rng(3)
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
def test_export_is_a_build_step_the_tagger_never_runs(tmp_path):
    """Tagger(backend="onnx") only reads: without a current export it names the command to run;
    ensure_onnx (what tag/serve/predict run first) exports to RUN/onnx once, then the Tagger reads it."""
    import soundfile as sf

    from noisytag.infer.build import ensure_onnx
    from noisytag.infer.members import ExportError, OnnxMember
    from noisytag.infer.tag import Tagger

    run = make_run(tmp_path / "run", members=((2, 0),))
    with pytest.raises(ExportError, match=r"missing or stale; run `noisytag export") as missing:
        Tagger(run, stages=[2], backend="onnx")
    assert "\n" not in str(missing.value) and not (run / "onnx").exists()
    assert ensure_onnx(run, [2], backend="torch").folder is None  # torch needs no build
    built = ensure_onnx(run, [2], backend="onnx")
    assert (built.folder, built.exported, built.quantised, built.temporary) == (run / "onnx", 1, 0, False)
    tagger = Tagger(run, stages=[2], backend="onnx", mode="fast")
    assert [type(m) for m in tagger.ensemble.members] == [OnnxMember]
    model_file = run / "onnx" / "cnn1_stage2_fold0" / "model.onnx"
    stamp = model_file.stat().st_mtime_ns
    assert ensure_onnx(run, [2], backend="onnx").exported == 0  # current: no second export
    assert model_file.stat().st_mtime_ns == stamp
    wave = np.random.default_rng(0).standard_normal(44100 * 3).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", wave, 44100)
    (record,) = tagger.tag([tmp_path / "a.wav"], top_k=2)
    assert record.error is None and len(record.labels) == 2


@pytest.mark.slow
def test_read_only_run_exports_to_a_temporary_folder(tmp_path, monkeypatch):
    """A run directory that cannot be written gets its export in a new temporary folder (the command
    removes it); the run's files stay as they were, and the Tagger reads the members from there."""
    import shutil

    from noisytag.infer import build
    from noisytag.infer.members import OnnxMember
    from noisytag.infer.tag import Tagger

    run = make_run(tmp_path / "run", members=((2, 0),))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    monkeypatch.setattr(build, "writable", lambda folder: False)
    made = build.ensure_onnx(run, [2], backend="onnx")
    try:
        assert made.temporary and made.exported == 1 and run not in made.folder.parents
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
        tagger = Tagger(run, stages=[2], backend="onnx", onnx_dir=made.folder)
        assert [type(m) for m in tagger.ensemble.members] == [OnnxMember]
    finally:
        shutil.rmtree(made.folder)


# ----------------------------------------------------------------------------------------------
# int8: members for the tiny data set's classes, calibrated on its curated/noisy clips, checked on its
# test clips

# Largest |int8 - float| probability accepted. uint8 activations have 256 levels over each tensor's
# calibrated range, so each quantised layer adds up to half a step of error; after 7 int8 convolutions and
# the head this member differs by ~0.005 (random weights with batch-norm statistics), a tiny cnn1 trained
# for 5 epochs by 0.04 (the sigmoid's slope is <= 0.25). A broken quantisation (wrong input scale, ranges
# from other data) is off by > 0.1, and one that left the float graph unchanged by 0 (hence 0 < diff).
INT8_TOL = 0.05


@pytest.fixture(scope="module")
def int8_run(tiny_data, tiny_cache, tmp_path_factory):
    """A one-member run for the tiny data set's classes whose config.yaml and run.json name that data set
    and its cache (as a pipeline run's do), exported with --int8 into RUN/onnx (where --backend onnx looks):
    calibrated on its curated/noisy clips, checked on its 12 test clips."""
    from conftest import tiny_config

    from noisytag.config import save_config
    from noisytag.data.dataset import load_dataset
    from noisytag.infer.export import export_run

    run = tmp_path_factory.mktemp("int8_run")
    write_model_run(run, load_dataset(tiny_data).classes, ((2, 0),), bn_stats=True)
    save_config(tiny_config(**{"data.cache_dir": str(tiny_cache)}), run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"data_dir": str(tiny_data)}))
    return run, export_run(run, run / "onnx", stages=[2], int8=True)


def _op_types(path):
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_int8_graphs_are_qdq_with_int8_weights(int8_run):
    import onnx
    from onnx import numpy_helper

    run, index = int8_run
    (member,) = index["members"]
    for kind in ("model", "fast"):
        path = run / "onnx" / member["int8"][kind]
        assert path.name == f"{kind}.int8.onnx"
        graph = onnx.load(str(path)).graph
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        produced = {o: n for n in graph.node for o in n.output}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        assert len(convs) == 8  # cnn1: 4 blocks x 2 convolutions, batch norms folded in
        assert convs[0].input[1] in inits  # the first stays float (it sees the log-mel itself)
        for conv in convs[1:]:
            dq = produced[conv.input[1]]  # weights reach the convolution dequantised from int8, per channel
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
            assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[0],)
        assert _op_types(run / "onnx" / member[kind]).isdisjoint({"QuantizeLinear", "DequantizeLinear"})


@pytest.mark.slow
def test_int8_export_index_records_parity(int8_run):
    run, index = int8_run
    assert json.loads((run / "onnx" / "export.json").read_text()) == index
    info = index["int8"]
    assert info["activations"] == "uint8" and "QDQ" in info["format"]
    assert info["calibration"]["source"].startswith("data set ") and 0 < info["calibration"]["windows"] <= 256
    assert "test clips with truth" in info["heldout"]["source"] and info["heldout"]["clips"] == 12
    (member,) = index["members"]
    p = member["int8"]["parity"]
    assert member["int8"]["weights_sha256"] == member["weights_sha256"]
    assert p["clips"] == 12 and p["windows"] >= 12
    for key in ("max_abs_diff", "clip_max_abs_diff", "fast_max_abs_diff"):
        assert 0 < p[key] < INT8_TOL, (key, p)
    assert p["mean_abs_diff"] <= p["max_abs_diff"]
    assert 0 < p["lwlrap_float"] <= 1 and abs(p["lwlrap_int8"] - p["lwlrap_float"]) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_int8_members_load_and_match_float(int8_run, tiny_data, tiny_cache, mode):
    from noisytag.audio.cache import FeatureCache
    from noisytag.audio.model_input import cached_clips
    from noisytag.config import FrontendConfig
    from noisytag.infer.build import refresh_onnx
    from noisytag.infer.ensemble import load_members, onnx_current, onnx_members
    from noisytag.infer.predict import iter_window_probs

    run, _ = int8_run
    dirs = sorted(run.glob("cnn1/stage*/fold*"))
    assert onnx_current(run, dirs) and onnx_current(run, dirs, precision="int8")
    stamp = (run / "onnx" / "cnn1_stage2_fold0" / "model.int8.onnx").stat().st_mtime_ns
    assert refresh_onnx(run, dirs, precision="int8") == (0, 0)  # current: nothing to do
    assert (run / "onnx" / "cnn1_stage2_fold0" / "model.int8.onnx").stat().st_mtime_ns == stamp
    (int8,) = onnx_members(run, dirs, precision="int8")
    (flt,) = load_members(run / "onnx")
    assert int8.precision == "int8" and flt.precision == "float32" and int8.name == flt.name
    cache = FeatureCache.open(tiny_cache, FrontendConfig(), "curated")
    cfg = InferConfig(batch_size=8, mode=mode)
    clips = list(cached_clips(cache, range(len(cache))))
    a = {k: p for k, _, p in iter_window_probs([flt], clips, cfg)}
    b = {k: p for k, _, p in iter_window_probs([int8], clips, cfg)}
    diff = max(np.abs(a[k] - b[k]).max() for k in a)
    assert 0 < diff < INT8_TOL


def _tail(graph):
    """Op types from the graph output back to (and including) its last Gemm."""
    produced = {o: n for n in graph.node for o in n.output}
    node, ops = produced[graph.output[0].name], []
    while True:
        ops.append(node.op_type)
        if node.op_type == "Gemm":
            return node, ops
        node = produced[node.input[0]]


@pytest.mark.slow
def test_int8_output_layer_stays_float_so_scores_do_not_tie(int8_run, tiny_cache):
    """The last linear layer and the sigmoid run in float: no QuantizeLinear/DequantizeLinear after the
    last Gemm, and the probabilities are not on a 256-level grid (a quantised output tied most rows)."""
    import onnx

    from noisytag.audio.cache import FeatureCache
    from noisytag.audio.model_input import cached_clips
    from noisytag.config import FrontendConfig
    from noisytag.infer.ensemble import load_members
    from noisytag.infer.predict import iter_window_probs

    run, index = int8_run
    (member,) = index["members"]
    for kind in ("model", "fast"):
        graph = onnx.load(str(run / "onnx" / member["int8"][kind])).graph
        gemm, ops = _tail(graph)
        assert ops == ["Sigmoid", "Gemm"], ops  # nothing quantised between the output and the Gemm
        assert gemm.input[1] in {i.name for i in graph.initializer}  # its weights float, not dequantised
    (int8,) = load_members(run / "onnx", precision="int8")
    cache = FeatureCache.open(tiny_cache, FrontendConfig(), "curated")
    clips = list(cached_clips(cache, range(len(cache))))
    for mode in ("exact", "fast"):
        cfg = InferConfig(batch_size=8, mode=mode)
        probs = np.concatenate([p for _, _, p in iter_window_probs([int8], clips, cfg)])
        assert probs.size > 300 and len(np.unique(probs)) > 256  # more values than 8 bits can hold
        distinct = np.array([len(np.unique(row)) for row in probs])
        assert (distinct == probs.shape[1]).all(), np.mean(distinct < probs.shape[1])  # no tied row


def test_int8_graphs_of_the_quantised_output_recipe_are_stale():
    from noisytag.infer.members import int8_current

    entry = {"weights_sha256": "w", "int8": {"weights_sha256": "w", "method": "percentile 99.999"}}
    assert not int8_current(entry)  # made before the output layer stayed float: remade


@pytest.mark.slow
@pytest.mark.parametrize(
    "stale", [{"weights_sha256": "of other weights"}, {"method": "minmax"}], ids=["weights", "recipe"]
)
def test_refresh_quantises_stale_int8_members(int8_run, tmp_path, stale):
    """What tag/serve call for int8 members: quantise those whose int8 graphs are missing or stale (made
    from other weights, or by an older calibration recipe)."""
    import shutil

    from noisytag.infer.build import refresh_onnx
    from noisytag.infer.ensemble import onnx_current

    run = shutil.copytree(int8_run[0], tmp_path / "run")
    dirs = sorted(run.glob("cnn1/stage*/fold*"))
    index = json.loads((run / "onnx" / "export.json").read_text())
    index["members"][0]["int8"] |= stale
    (run / "onnx" / "export.json").write_text(json.dumps(index))
    assert onnx_current(run, dirs) and not onnx_current(run, dirs, precision="int8")
    assert refresh_onnx(run, dirs, precision="int8") == (0, 1)  # float graphs kept, one member quantised
    assert onnx_current(run, dirs, precision="int8")


def test_int8_members_missing_is_one_clear_error(tmp_path):
    from noisytag.infer.calibration import calibration_set
    from noisytag.infer.ensemble import load_members
    from noisytag.infer.members import ExportError

    entry = {"name": "cnn1_stage2_fold0", "n_classes": 3, "model": "a/model.onnx", "fast": "a/fast.onnx"}
    (tmp_path / "export.json").write_text(json.dumps({"window": 128, "members": [entry]}))
    with pytest.raises(ExportError, match=r"no int8 graphs for cnn1_stage2_fold0 \(run `noisytag export"):
        load_members(tmp_path, precision="int8")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        load_members(tmp_path, precision="int4")
    (tmp_path / "run.json").write_text(json.dumps({"data_dir": str(tmp_path / "gone")}))
    with pytest.raises(ExportError, match="data set is not available .* pass --calibration DIR"):
        calibration_set(tmp_path, FrontendConfig(), CLASSES)


@pytest.mark.slow
def test_int8_cli_with_calibration_folder(int8_run, tiny_data, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from noisytag.cli import app

    run, before = int8_run
    out = shutil.copytree(run / "onnx", tmp_path / "onnx")
    stamps = {k: (out / before["members"][0][k]).stat().st_mtime_ns for k in ("model", "fast")}
    res = CliRunner().invoke(app, ["export", str(run), "--onnx", str(out), "--calibration", str(tiny_data)])
    assert res.exit_code != 0 and "--calibration only applies with --int8" in res.output
    args = ["export", str(run), "--onnx", str(out), "--stages", "2", "--int8"]
    res = CliRunner().invoke(app, [*args, "--calibration", str(tiny_data / "test")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "exported 1 member(s)" in text and "calibrated on audio folder" in text
    assert "cnn1_stage2_fold0: max |int8 - float|" in text
    assert "histogram" not in text  # onnxruntime's calibrator prints its progress; the user sees ours
    index = json.loads((out / "export.json").read_text())
    (member,) = index["members"]
    assert (
        member["int8"]["calibration"].startswith("audio folder")
        and "lwlrap_float" not in member["int8"]["parity"]
    )
    assert member["int8"]["parity"]["max_abs_diff"] < INT8_TOL
    assert {k: (out / member[k]).stat().st_mtime_ns for k in ("model", "fast")} == stamps  # float kept


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_tagger_and_service_with_the_int8_backend(int8_run, tiny_data, mode):
    """--backend onnx-int8: tag reads the int8 graphs of RUN/onnx, within INT8_TOL of the float ones."""
    from noisytag.infer.tag import Tagger
    from noisytag.serve.service import open_service

    run, _ = int8_run
    wavs = sorted((tiny_data / "test").glob("*.wav"))[:3]
    int8 = Tagger(run, stages=[2], backend="onnx-int8", mode=mode)
    assert {m.precision for m in int8.ensemble.members} == {"int8"}
    floats = Tagger(run, stages=[2], backend="onnx", mode=mode).tag(wavs, top_k=3)
    for a, b in zip(int8.tag(wavs, top_k=3), floats, strict=True):
        assert a.error is None
        assert max(abs(x.prob - y.prob) for x, y in zip(a.labels, b.labels, strict=True)) < INT8_TOL
    service = open_service(run, backend="onnx-int8", mode=mode, stages=[2], warm_up=False)
    try:
        assert service.tagger.cfg.backend == "onnx-int8"
    finally:
        service.close()
