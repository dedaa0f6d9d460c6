"""distill.views: the teacher scores V augmented views of every clip (the student's exact crop and mix)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

from noisytag.audio.model_input import cache_windows
from noisytag.cli import app
from noisytag.config import load_config
from noisytag.infer.export import export_run
from noisytag.learn.distill import (
    TeacherViewDataset,
    TeacherViews,
    TeacherWindowDataset,
    ViewDraws,
    WindowTargets,
    draw_views,
    make_teacher_views,
    student_targets,
    view_inputs,
    view_targets,
)
from noisytag.learn.loader import ClipSet
from noisytag.learn.train import build_module
from noisytag.models.weights import load_model
from noisytag.rundir import RunDir
from noisytag.runs import distill
from noisytag.runs.context import open_run
from noisytag.runs.distill import load_student_config, run_distill, training_config

SETS = ["distill.epochs=1", "distill.width=0.25", "train.batch_size=16"]


# ----------------------------------------------------------------------------------------------
# the views on their own (fake cache and members: fast)


class FakeCache:
    """Clips whose dB value at frame t of mel bin m is t + 1000·clip + m (4 mel bins)."""

    def __init__(self, lengths):
        n = len(lengths)
        self.index = pd.DataFrame({"n_frames": lengths, "lo": [0.0] * n, "hi": [2000.0 + 1000 * n] * n})

    def __len__(self):
        return len(self.index)

    def windows(self, positions, starts, width):
        return np.stack(
            [
                np.arange(s, s + width, dtype=np.float32)[None, :] + 1000 * p + np.arange(4)[:, None]
                for p, s in zip(positions, starts, strict=True)
            ]
        ).astype(np.float32)


class FakeMember:
    """Probabilities that depend on every input value: sigmoid of weighted means."""

    n_classes = 3

    def __init__(self, scale=1.0):
        self.scale = scale
        self.calls = 0

    def probs(self, x):
        self.calls += 1
        flat = x.reshape(len(x), -1).astype(np.float64)
        weights = np.linspace(-1, 1, flat.shape[1])
        z = np.stack([flat.mean(1), (flat * weights).mean(1) * 10, flat.std(1)], 1) * self.scale
        return (1 / (1 + np.exp(-z))).astype(np.float32)


def fake_set(n=12):
    lengths = [50 + 37 * i for i in range(n)]
    caches = {"c": FakeCache(lengths[: n // 2]), "d": FakeCache(lengths[n // 2 :])}
    split = np.array(["c"] * (n // 2) + ["d"] * (n - n // 2), dtype=object)
    position = np.concatenate([np.arange(n // 2), np.arange(n - n // 2)]).astype(np.int64)
    labels = (np.arange(n * 3).reshape(n, 3) % 4 == 0).astype(np.float32)
    clips = ClipSet(split, position, labels)
    group = np.arange(n) % 3 - 1  # groups -1, 0, 1
    return caches, clips, np.array(lengths), group


def test_views_are_a_function_of_seed_view_and_clip():
    _, _, lengths, group = fake_set()
    a = draw_views(lengths, group, 3, 64, seed=5, mixup_p=0.7, mixup_alpha=0.4)
    b = draw_views(lengths, group, 3, 64, seed=5, mixup_p=0.7, mixup_alpha=0.4)
    c = draw_views(lengths, group, 3, 64, seed=6, mixup_p=0.7, mixup_alpha=0.4)
    for name in ("start", "partner", "partner_start", "lam"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.start, c.start)
    assert a.start.shape == (3, len(lengths)) and a.views == 3 and len(a) == len(lengths)
    mixed = a.partner >= 0
    assert mixed.any() and (~mixed).any()
    assert (a.lam[mixed] >= 0.5).all() and (a.lam[mixed] <= 1).all() and (a.lam[~mixed] == 1).all()
    assert (group[a.partner[mixed]] == np.broadcast_to(group, a.partner.shape)[mixed]).all()
    assert (a.start <= np.maximum(lengths - 64, 0)).all()
    assert (a.partner_start[mixed] <= np.maximum(lengths[a.partner[mixed]] - 64, 0)).all()
    off = draw_views(lengths, group, 2, 64, seed=5, mixup_p=0.0, mixup_alpha=0.4)
    assert (off.partner == -1).all() and (off.lam == 1).all()


def test_a_view_is_the_mix_of_both_crops_and_the_student_reads_the_same_input():
    caches, clips, lengths, group = fake_set()
    draws = draw_views(lengths, group, 2, 64, seed=1, mixup_p=1.0, mixup_alpha=0.4)
    x = view_inputs(caches, clips, draws, 1, np.arange(len(clips)), 64, "minmax")
    for i in range(len(clips)):
        j = draws.partner[1, i]
        own = cache_windows(caches[clips.split[i]], [clips.position[i]], [draws.start[1, i]], 64, "minmax")
        other = cache_windows(
            caches[clips.split[j]], [clips.position[j]], [draws.partner_start[1, i]], 64, "minmax"
        )
        lam = draws.lam[1, i]
        np.testing.assert_allclose(x[i], lam * own[0] + (1 - lam) * other[0], rtol=1e-6)
    views = TeacherViews(draws, np.zeros((2, len(clips), 3), np.float32))
    targets = np.random.default_rng(0).random((2, len(clips), 3)).astype(np.float32)
    data = TeacherViewDataset(caches, clips, views, targets, 64, "minmax")
    for key in (0, 5, len(clips) + 3, 2 * len(clips) + 7, 3 * len(clips) + 1):
        epoch, i = divmod(key, len(clips))
        xi, yi = data[key]
        v = epoch % 2  # view e mod V, the exact array the teacher scored
        assert torch.equal(xi, torch.from_numpy(view_inputs(caches, clips, draws, v, [i], 64, "minmax")))
        np.testing.assert_array_equal(yi.numpy(), [*targets[v, i], 0.0])


def test_the_view_cache_scores_each_view_and_resumes_by_parts(tmp_path, monkeypatch):
    caches, clips, lengths, group = fake_set()
    draws = draw_views(lengths, group, 2, 64, seed=3, mixup_p=0.8, mixup_alpha=0.4)
    members = {-1: [FakeMember(1.0), FakeMember(0.5)], 0: [FakeMember(2.0)], 1: [FakeMember(-1.0)]}
    path = tmp_path / "teacher" / "views.npz"
    calls, kill = [], [True]
    real = distill.make_teacher_views.__globals__["score_views"]

    def failing(*args, **kwargs):
        calls.append(args[5])
        if kill[0] and len(calls) == 3:
            raise RuntimeError("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setitem(distill.make_teacher_views.__globals__, "score_views", failing)
    with pytest.raises(RuntimeError, match="simulated kill"):
        make_teacher_views(path, lambda: members, group, caches, clips, draws, 64, "minmax", 4, chunk=5)
    assert not path.exists() and len(list(tmp_path.glob("teacher/views-*.parts/*.npy"))) == 2
    calls.clear()
    kill[0] = False
    views = make_teacher_views(path, lambda: members, group, caches, clips, draws, 64, "minmax", 4, chunk=5)
    assert len(calls) == 2 * 3 - 2  # 3 parts a view; the two written before the kill are kept
    assert path.is_file() and not list(tmp_path.glob("teacher/views-*.parts"))
    for v in range(2):
        x = view_inputs(caches, clips, draws, v, np.arange(len(clips)), 64, "minmax")
        for i in range(len(clips)):
            ms = members[int(group[i])]
            expected = np.mean([m.probs(x[i : i + 1, None])[0] for m in ms], axis=0)
            np.testing.assert_allclose(views.probs[v, i], expected, atol=1e-6)
    again = make_teacher_views(
        path, lambda: pytest.fail("models loaded"), group, caches, clips, draws, 64, "minmax", 4
    )
    np.testing.assert_array_equal(again.probs, views.probs)
    other = ViewDraws(draws.start[:1], draws.partner[:1], draws.partner_start[:1], draws.lam[:1])
    remade = make_teacher_views(path, lambda: members, group, caches, clips, other, 64, "minmax", 4)
    assert remade.probs.shape == (1, len(clips), 3)  # another make's file is not read as this one


def test_view_targets_mix_the_given_labels_by_the_views_rule():
    draws = ViewDraws(
        start=np.zeros((1, 3), np.int64),
        partner=np.array([[1, -1, 0]]),
        partner_start=np.zeros((1, 3), np.int64),
        lam=np.array([[0.75, 1.0, 0.5]], np.float32),
    )
    probs = np.full((1, 3, 2), 0.5, np.float32)
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    weight = np.array([0.2, 0.1, 0.0], np.float32)  # two curated clips, one noisy
    views = TeacherViews(draws, probs)
    mix = view_targets(views, labels, weight)
    # clip 0 (λ 0.75, partner 1): given part 0.75·0.2·[1,0] + 0.25·0.1·[0,1], w = 0.175
    np.testing.assert_allclose(mix[0, 0], [0.825 * 0.5 + 0.15, 0.825 * 0.5 + 0.025], rtol=1e-6)
    np.testing.assert_allclose(mix[0, 1], [0.45, 0.55], rtol=1e-6)  # not mixed: as student_targets
    np.testing.assert_allclose(mix[0, 2], [0.9 * 0.5 + 0.1, 0.9 * 0.5], rtol=1e-6)  # noisy with curated 0
    union = view_targets(views, labels, weight, union=True)
    np.testing.assert_allclose(union[0, 0], [0.8 * 0.5 + 0.2, 0.8 * 0.5 + 0.1], rtol=1e-6)
    np.testing.assert_allclose(union[0, 2], [0.8 * 0.5 + 0.2, 0.8 * 0.5], rtol=1e-6)


def test_views_switch_the_students_batch_mixup_off_and_nothing_else():
    cfg = load_config(None, ["augment.mixup_p=0.8", "augment.specmix_p=0.5"])
    assert training_config(cfg) is cfg
    views = load_config(None, ["augment.mixup_p=0.8", "augment.specmix_p=0.5", "distill.views=3"])
    fit = training_config(views)
    assert fit.augment.mixup_p == 0 and fit.augment.specmix_p == 0.5
    assert fit.augment.zoom_p == views.augment.zoom_p and fit.train == views.train
    steps = list(build_module(fit, "cnn1", 3, 1e-3, 0).augment.steps)
    assert "mixup" not in steps and "specmix" in steps
    assert "mixup" in list(build_module(training_config(cfg), "cnn1", 3, 1e-3, 0).augment.steps)


def test_negative_views_are_refused_in_one_line():
    result = CliRunner().invoke(app, ["plan", "--set", "distill.views=-1"])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "distill.views" in lines[0], result.output


# ----------------------------------------------------------------------------------------------
# on the tiny run


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def views_student(tiny_run, tmp_path_factory):
    """`noisytag distill --set distill.views=2` (out-of-fold), with what it gave the student's training."""
    out = tmp_path_factory.mktemp("views") / "student"
    seen = {}
    real = distill.fit_fold

    def spy(cfg, **kwargs):
        seen.update(cfg=cfg, **kwargs)
        return real(cfg, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill, "fit_fold", spy)
        args = ["distill", str(tiny_run), "-o", str(out)]
        for s in [*SETS, "distill.views=2", "distill.targets=oof"]:
            args += ["--set", s]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, seen


@pytest.mark.slow
def test_the_views_student_trains_on_views_without_mixup_and_exports(views_student, tmp_path):
    out, seen = views_student
    views = TeacherViews.load(out / "teacher" / "views.npz")
    n = len(seen["train"])
    assert views.probs.shape[:2] == (2, n) and np.isfinite(views.probs).all()
    assert not list((out / "teacher").glob("curated.npz"))  # no grid windows in views mode
    assert isinstance(seen["train_data"], TeacherViewDataset)
    assert seen["cfg"].augment.mixup_p == 0 and RunDir(out).saved_config().augment.mixup_p > 0
    assert RunDir(out).fold_done("mobilenet", 1, 0).is_file()
    assert len(export_run(out, tmp_path / "onnx")["members"]) == 1


@pytest.mark.slow
def test_a_views_target_is_the_teachers_ensemble_on_the_exact_mixed_input(views_student, tiny_run, tiny_data):
    out, seen = views_student
    views = TeacherViews.load(out / "teacher" / "views.npz")
    data, clips = seen["train_data"], seen["train"]
    ctx = open_run(tiny_data, out, RunDir(out).saved_config(), progress=False, writer=False)
    fold = np.concatenate([ctx.splits["curated"].fold, ctx.splits["noisy"].fold])
    assert len(fold) == len(clips)
    mixed = views.draws.partner >= 0
    assert (
        mixed.any() and (fold[views.draws.partner[mixed]] == np.broadcast_to(fold, mixed.shape)[mixed]).all()
    )
    teacher = RunDir(tiny_run)
    plan = teacher.plan()
    models = {
        f: [
            load_model(teacher.fold_dir(a, s, f))[0].eval() for a in plan.architectures for s in plan.ensemble
        ]
        for f in range(plan.folds)
    }
    n = len(clips)
    rows = [(v, i) for v in range(2) for i in np.flatnonzero(mixed[v])[:3]]
    rows += [(v, i) for v in range(2) for i in np.flatnonzero(~mixed[v])[:1]]
    for v, i in rows:
        x, _ = data[v * n + i]  # epoch v shows view v: the student's own input
        with torch.no_grad():
            expected = torch.stack([torch.sigmoid(m(x[None]))[0] for m in models[int(fold[i])]]).mean(0)
        np.testing.assert_allclose(views.probs[v, i], expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_views_are_the_same_when_made_again(views_student, tiny_data, tmp_path):
    out, _ = views_student
    cfg = RunDir(out).saved_config()
    ctx = open_run(tiny_data, out, cfg, progress=False, writer=False)
    clips, again, _ = distill.teacher_views(ctx, RunDir(tmp_path / "again"), cfg, {}, ctx.caches)
    first = TeacherViews.load(out / "teacher" / "views.npz")
    for name in ("start", "partner", "partner_start", "lam"):
        np.testing.assert_array_equal(getattr(again.draws, name), getattr(first.draws, name))
    np.testing.assert_allclose(again.probs, first.probs, atol=1e-6)
    assert again.signature == first.signature


class StopAtEpoch(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated interruption")


@pytest.mark.slow
def test_a_killed_views_distillation_reuses_its_views(tiny_run, tmp_path, caplog, monkeypatch):
    out = tmp_path / "student"
    cfg = load_student_config(tiny_run, out, None, [*SETS, "distill.epochs=2", "distill.views=2"])
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_distill(tiny_run, out, cfg, progress=False, callbacks=[StopAtEpoch()])
    path = out / "teacher" / "views.npz"
    made = path.stat().st_mtime_ns
    monkeypatch.setattr(distill, "_teachers", lambda cfg: pytest.fail("the teacher scored again"))
    with caplog.at_level("INFO"):
        run_distill(tiny_run, out, load_student_config(tiny_run, out, None, []), progress=False)
    assert any("resuming" in r.message for r in caplog.records)
    run = RunDir(out)
    assert run.fold_done("mobilenet", 1, 0).is_file() and path.stat().st_mtime_ns == made


@pytest.mark.slow
def test_without_views_the_student_gets_the_window_targets_as_before(tiny_run, tmp_path, monkeypatch):
    seen = {}

    def stop(cfg, **kwargs):
        seen.update(cfg=cfg, **kwargs)
        raise Stop

    monkeypatch.setattr(distill, "fit_fold", stop)
    out = tmp_path / "student"
    cfg = load_student_config(tiny_run, out, None, SETS)
    assert cfg.distill.views == 0
    with pytest.raises(Stop):
        run_distill(tiny_run, out, cfg, progress=False)
    assert seen["cfg"] is cfg and not (out / "teacher" / "views.npz").exists()
    data = seen["train_data"]
    assert type(data) is TeacherWindowDataset and data.crop == "random"
    ctx = open_run(RunDir(tiny_run).info()["data_dir"], out, cfg, progress=False, writer=False)
    parts = [ctx.splits[s].clips for s in ("curated", "noisy")]
    windows = [WindowTargets.load(out / "teacher" / f"{s}.npz") for s in ("curated", "noisy")]
    weights = [np.full(len(parts[0]), 0.1, np.float32), np.zeros(len(parts[1]), np.float32)]
    expected = np.concatenate(
        [student_targets(w, p.targets, k) for w, p, k in zip(windows, parts, weights, strict=True)]
    )
    np.testing.assert_array_equal(data.targets[:, :-1], expected)
    np.testing.assert_array_equal(data.teacher.starts, WindowTargets.concat(windows).starts)
