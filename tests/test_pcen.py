"""PCEN as a front-end kind (``frontend.kind: pcen``): the math on known inputs, the FIR smoother against
the recursive filter, log-mel caches keep their keys, and a PCEN run trains, exports and tags alike in
torch and ONNX."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_SETS
from typer.testing import CliRunner

from noisytag.audio.features import PCEN, PCEN_TAIL, log_mel_frames, pcen_kernel, pcen_smoothing
from noisytag.cli import app
from noisytag.config import FrontendConfig, load_config

PCEN_CFG = FrontendConfig(kind="pcen")
INT8_TOL = 0.05  # tests/test_export.py's bound on |int8 − float| probabilities
# FrontendConfig().key() computed by the code before frontend.kind existed (commit c21f967).
OLD_DEFAULT_KEY = "4cc08fdbc748"
OLD_FIELDS = [
    "sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "top_db", "trim_db", "trim_frame",
    "trim_hop", "min_seconds",
]  # fmt: skip


def steady(e: float, cfg: FrontendConfig = PCEN_CFG) -> float:
    """PCEN of a constant energy e: M = e, so (e / (eps + e)^alpha + delta)^r − delta^r."""
    return (
        e / (cfg.pcen_eps + e) ** cfg.pcen_alpha + cfg.pcen_delta
    ) ** cfg.pcen_r - cfg.pcen_delta**cfg.pcen_r


def test_constant_energy_gives_the_closed_form():
    energies = np.array([1e-4, 1.0, 250.0])
    e = torch.from_numpy(np.broadcast_to(energies, (1, 300, 3)).copy())
    out = PCEN(PCEN_CFG, dtype=torch.float64)(e)[0].numpy()
    want = np.array([steady(v) for v in energies])
    np.testing.assert_allclose(out, np.broadcast_to(want, out.shape), rtol=1e-9)
    assert out.shape == (300, 3) and np.all(np.diff(want) > 0)


def test_a_step_in_loudness_is_normalised_away_after_the_time_constant():
    """Energy × 100 (+20 dB) at frame 400: PCEN jumps (an onset), then settles within a few time
    constants at a value within 10 % of the quiet part's, where dB would stay 20 higher."""
    e = np.ones((1, 900, 1))
    e[:, 400:] = 100.0
    out = PCEN(PCEN_CFG, dtype=torch.float64)(torch.from_numpy(e))[0, :, 0].numpy()
    frames = PCEN_CFG.pcen_time_constant * PCEN_CFG.sample_rate / PCEN_CFG.hop_length  # T ≈ 25.4
    settled = 400 + math.ceil(3 * frames)
    assert out[400] > 5 * steady(100.0)  # the onset stands out
    assert abs(out[settled] - steady(100.0)) < 0.05 * steady(100.0)
    assert abs(steady(100.0) / steady(1.0) - 1) < 0.1  # the level itself is normalised away
    np.testing.assert_allclose(out[:400], steady(1.0), rtol=1e-9)
    np.testing.assert_allclose(out[-1], steady(100.0), rtol=1e-5)  # past the FIR's length: steady
    assert np.all(np.diff(out[401:]) <= 1e-12)  # decays monotonically after the onset


def test_fir_kernel_is_the_truncated_exponential():
    s = pcen_smoothing(PCEN_CFG)
    t = 0.4 * 44100 / 694
    assert s == pytest.approx((math.sqrt(1 + 4 * t * t) - 1) / (2 * t * t)) and 0.03 < s < 0.05
    h = pcen_kernel(PCEN_CFG)
    assert (1 - s) ** len(h) < PCEN_TAIL <= (1 - s) ** (len(h) - 1)  # the shortest such length
    assert h.sum() == pytest.approx(1.0, abs=1e-12) and np.allclose(h[1:] / h[:-1], 1 - s)


def test_fir_smoother_equals_the_recursive_iir():
    """The FIR (first frame repeated before the clip) against M[t] = (1 − s)·M[t − 1] + s·E[t], M[−1] = E[0]."""
    import scipy.signal

    s = pcen_smoothing(PCEN_CFG)
    rng = np.random.default_rng(0)
    e = rng.uniform(0.0, 1.0, size=(2, 700, 5))
    iir = scipy.signal.lfilter([s], [1, s - 1], e, axis=1, zi=(1 - s) * e[:, :1])[0]
    for dtype in (torch.float64, torch.float32):
        fir = PCEN(PCEN_CFG, dtype=dtype).smooth(torch.from_numpy(e).to(dtype)).double().numpy()
        np.testing.assert_allclose(fir, iir, atol=1e-5, rtol=0)


def test_the_front_end_equals_librosa_pcen_with_the_first_frame_as_initial_state():
    """log_mel_frames(kind=pcen) = librosa.pcen(mel power, its defaults at our hop, zi from the first frame)."""
    import librosa
    import scipy.signal

    rng = np.random.default_rng(1)
    sr = PCEN_CFG.sample_rate
    t = np.arange(3 * sr) / sr
    y = (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 1.2) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    got = log_mel_frames(y, PCEN_CFG)
    mel = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=2560, hop_length=694, n_mels=128, fmin=20, fmax=22050, pad_mode="reflect"
    )
    b = pcen_smoothing(PCEN_CFG)
    zi = scipy.signal.lfilter_zi([b], [1, b - 1])[None, :] * mel[:, :1]
    want = librosa.pcen(mel, sr=sr, hop_length=694, zi=zi).T
    assert got.shape == want.shape and got.dtype == np.float32 and got.min() >= 0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_logmel_cache_key_and_identity_are_unchanged():
    default = FrontendConfig()
    assert default.key() == OLD_DEFAULT_KEY
    assert list(default.identity()) == OLD_FIELDS
    assert FrontendConfig(pcen_alpha=0.5, pcen_r=0.25).key() == OLD_DEFAULT_KEY  # unused by log-mel
    keys = {PCEN_CFG.key(), dataclasses.replace(PCEN_CFG, pcen_alpha=0.9).key(), OLD_DEFAULT_KEY}
    assert len(keys) == 3  # a PCEN cache is a cache of its own, per parameter
    assert PCEN_CFG.identity()["kind"] == "pcen" and "pcen_eps" in PCEN_CFG.identity()
    assert load_config(None, ["frontend.kind=pcen"]).frontend == PCEN_CFG


def test_a_cache_recorded_without_kind_opens_as_logmel():
    """A log-mel cache built before frontend.kind (its cache.json lists the old keys) still opens."""
    old = {k: v for k, v in dataclasses.asdict(FrontendConfig()).items() if k in OLD_FIELDS}
    assert FrontendConfig().same_as(old)
    assert not PCEN_CFG.same_as(old)
    assert not FrontendConfig().same_as({**old, "colour": 1})


def test_check_refuses_an_unknown_kind_in_one_line(tiny_data):
    for sets, words in (
        (["frontend.kind=cqt"], ["frontend.kind", "'cqt'", "logmel or pcen"]),
        (["frontend.kind=pcen", "frontend.pcen_time_constant=0"], ["frontend.pcen_time_constant", "> 0"]),
    ):
        args = ["check", str(tiny_data)] + [a for s in sets for a in ("--set", s)]
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert all(w in lines[0] for w in words), lines[0]


# ----------------------------------------------------------------------------------------------
# a PCEN run: trains, exports (members and waveform graph), tags the same in torch and ONNX


@pytest.fixture(scope="module")
def pcen_run(tiny_data, tmp_path_factory):
    """A one-stage tiny pipeline with ``--set frontend.kind=pcen`` (its own PCEN cache), exported
    with the waveform graph and int8 copies (calibrated on its PCEN cache) into RUN/onnx."""
    from noisytag.infer.export import export_run

    root = tmp_path_factory.mktemp("pcen_run")
    run, cache = root / "run", root / "cache"
    sets = {
        **TINY_SETS,
        "frontend.kind": "pcen",
        "pipeline.stages": "[1]",
        "infer.stages": "[1]",
        "data.workers": 1,
        "data.cache_dir": str(cache),
    }
    args = ["pipeline", str(tiny_data), "-o", str(run), "--no-report", "--no-progress"]
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    index = export_run(run, run / "onnx", stages=[1], with_frontend=True, int8=True)
    return run, cache, index


@pytest.mark.slow
def test_pcen_run_uses_its_own_cache_and_records_the_front_end(pcen_run, tiny_data):
    from noisytag.audio.cache import FeatureCache
    from noisytag.audio.model_input import file_clip

    run, cache_dir, index = pcen_run
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == [PCEN_CFG.key()]
    cache = FeatureCache.open(cache_dir, PCEN_CFG, "test")
    assert cache.info["frontend"]["kind"] == "pcen" and cache.index["lo"].min() >= 0
    name = cache.index["fname"].iat[0]
    clip, _, _ = file_clip(tiny_data / "test" / name, PCEN_CFG)
    assert np.array_equal(clip.db, cache.clip(0))
    assert (clip.lo, clip.hi) == (cache.index["lo"].iat[0], cache.index["hi"].iat[0])
    meta = json.loads(next(run.glob("cnn1/stage1/fold*/model.json")).read_text())
    assert meta["frontend"]["kind"] == "pcen" and index["frontend"]["kind"] == "pcen"
    assert index["waveform"]["parity_max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_pcen_onnx_and_int8_tags_match_torch_tags(pcen_run, tiny_data):
    from noisytag.infer.tag import Tagger
    from noisytag.serve.service import open_service

    run, _, _ = pcen_run
    files = sorted((tiny_data / "test").glob("*.wav"))[:4]
    torch_tagger = Tagger(run, stages=[1])
    every = len(torch_tagger.classes)  # every label, so the three backends' lists compare by name
    by_torch = torch_tagger.tag(files, top_k=every)
    by_onnx = Tagger(run, stages=[1], backend="onnx").tag(files, top_k=every)
    by_int8 = Tagger(run, stages=[1], backend="onnx-int8").tag(files, top_k=every)
    for a, b, c in zip(by_torch, by_onnx, by_int8, strict=True):
        assert a.error is None and b.error is None and c.error is None
        want = {x.label: x.prob for x in a.labels}
        onnx, int8 = ({x.label: x.prob for x in r.labels} for r in (b, c))
        assert sorted(onnx) == sorted(int8) == sorted(want)
        assert max(abs(onnx[k] - want[k]) for k in want) <= 1e-4
        assert max(abs(int8[k] - want[k]) for k in want) < INT8_TOL
    service = open_service(run, stages=[1], warm_up=False)  # serve: the timeline and picture of a PCEN run
    try:
        answer = service.tag_file(files[0], "a.wav", top_k=every)
        assert {x.label: x.prob for x in answer.labels} == {x.label: x.prob for x in by_torch[0].labels}
        assert answer.timeline is not None and answer.logmel is not None
    finally:
        service.close()


@pytest.mark.slow
def test_pcen_waveform_graph_matches_the_torch_path(pcen_run):
    """waveform.onnx of a PCEN run: waveform → probabilities equals the torch path (trim, pad, PCEN, windows)."""
    from noisytag.audio.decode import prepare
    from noisytag.audio.features import log_mel
    from noisytag.config import InferConfig
    from noisytag.infer.ensemble import load_ensemble
    from noisytag.infer.members import session
    from noisytag.infer.predict import Clip, iter_window_probs

    run, _, index = pcen_run
    ens = load_ensemble(run, stages=[1])
    assert ens.frontend == PCEN_CFG
    sess = session(run / "onnx" / index["waveform"]["file"])
    rng = np.random.default_rng(5)
    sr = PCEN_CFG.sample_rate
    for seconds in (1.1, 4.6):
        t = np.arange(int(seconds * sr)) / sr
        wave = (0.2 * np.sin(2 * np.pi * 660 * t) * (t > 0.4) + 0.02 * rng.standard_normal(t.size)).astype(
            np.float32
        )
        probs, window_probs, starts = sess.run(None, {"waveform": wave[None]})
        x = log_mel(prepare(wave, sr, PCEN_CFG), PCEN_CFG)
        ((_, ref_starts, ref),) = iter_window_probs(
            ens.members, [Clip(0, x, float(x.min()), float(x.max()))], InferConfig()
        )
        assert starts.tolist() == ref_starts.tolist()
        np.testing.assert_allclose(window_probs, ref, atol=1e-4)
        np.testing.assert_allclose(probs[0], ref.mean(axis=0), atol=1e-4)
