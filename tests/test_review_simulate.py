"""The corrected manifest, the truth-answering reviewer, its cleaning curve and `noisytag review` on the
command line."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from noisytag.cli import app
from noisytag.data.manifest import load_data
from noisytag.review.corrections import write_corrections
from noisytag.review.events import EventLog, events_path
from noisytag.review.queue import ReviewError, ReviewQueue
from noisytag.review.simulate import cleaning_curve, curve_points, random_curve, read_truth_labels, simulate


@pytest.fixture()
def queue(run_copy, tiny_data):
    return ReviewQueue.from_run(run_copy, tiny_data)


def other_labels(queue, given):
    """A label set surely different from ``given``: the first class not in it."""
    return (next(c for c in queue.classes if c not in given),)


def wrong_flags(queue, truth_csv) -> np.ndarray:
    """(N,) bool in queue order: the clip's given label set differs from the truth file's."""
    true = read_truth_labels(truth_csv)
    return np.array(
        [set(true[f]) != set(g) for f, g in zip(queue.clips["fname"], queue.clips["given"], strict=True)]
    )


def write_truth(queue, path, wrong_ids, realdev=False):
    """A truth CSV equal to the given labels except for the clips ``wrong_ids``."""
    rows = []
    for i, (fname, given) in enumerate(zip(queue.clips["fname"], queue.clips["given"], strict=True)):
        true = other_labels(queue, given) if i in wrong_ids else given
        rows.append(
            {"fname": fname, "labels": ",".join(true), "given_labels": ",".join(given), "corruption": ""}
        )
    frame = pd.DataFrame(rows)
    (frame if realdev else frame[["fname", "labels"]]).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------ corrected manifest


def test_corrected_manifest(queue, tiny_data, run_copy):
    order = queue.order()
    fixed, dropped, unsure = (queue.card(i) for i in order[:3])
    new = other_labels(queue, fixed.given)
    log = EventLog(events_path(run_copy))
    log.append({"clip": fixed.fname, "clip_id": fixed.clip_id, "before": list(fixed.given), "after": list(new),
                "action": "set", "reviewer": "ann", "suggested": list(fixed.suggested)})  # fmt: skip
    log.append({"clip": dropped.fname, "action": "drop", "after": None, "reviewer": "ann"})
    log.append({"clip": unsure.fname, "action": "unsure", "after": None, "reviewer": "ann"})
    corrections, manifest = write_corrections(queue, log.state())
    assert manifest == run_copy / "review" / "manifest.csv"

    table = pd.read_csv(corrections, keep_default_na=False)
    assert table["fname"].tolist() == [fixed.fname, dropped.fname, unsure.fname]
    assert table["reviewed"].tolist() == [",".join(new), "", ""]
    assert table["suggested"].iat[0] == ",".join(fixed.suggested)

    rows = pd.read_csv(manifest, keep_default_na=False, dtype=str).set_index("fname")
    assert not {"true_labels", "truth", "correct"} & set(rows.columns)
    folds = pd.read_csv(run_copy / "folds.csv", dtype={"fname": str}).set_index("fname")
    assert dropped.fname not in rows.index
    assert rows.loc[fixed.fname, "subset"] == "curated" and rows.loc[fixed.fname, "labels"] == ",".join(new)
    assert rows.loc[fixed.fname, "fold"] == str(folds.loc[fixed.fname, "fold"])
    assert rows.loc[unsure.fname, "subset"] == "noisy"
    for fname in queue.clips["fname"]:
        if fname != dropped.fname:
            assert rows.loc[fname, "fold"] == str(folds.loc[fname, "fold"])
    curated = set(queue.dataset.curated["fname"])
    assert all(rows.loc[f, "fold"] == str(folds.loc[f, "fold"]) for f in curated)
    assert (rows["subset"] == "test").sum() == len(queue.dataset.test)
    assert (rows.loc[rows["subset"] == "test", "labels"] == "").all()

    data = load_data(manifest)
    assert data.classes == queue.classes
    assert len(data.curated) == len(curated) + 1 and len(data.noisy) == len(queue) - 2
    assert len(data.test) == len(queue.dataset.test)
    check = CliRunner().invoke(app, ["check", str(manifest)])
    assert check.exit_code == 0, check.output


def test_unknown_label_is_refused(queue, run_copy):
    log = EventLog(events_path(run_copy))
    log.append({"clip": queue.clips["fname"].iat[0], "action": "set", "after": ["Nope"], "reviewer": "ann"})
    with pytest.raises(ReviewError, match="unknown label 'Nope'"):
        write_corrections(queue, log.state())
    assert not (run_copy / "review" / "manifest.csv").exists()


# ------------------------------------------------------------------------------------ simulator and curve


def test_simulated_review_counts_the_wrong_labels_it_meets(queue, tmp_path, run_copy):
    order = queue.order("suspect")
    wrong = {order[0], order[3], order[10]}
    truth = write_truth(queue, tmp_path / "truth.csv", wrong)
    frame = simulate(queue, truth, budget=12, policy="top")
    assert frame["clip_id"].tolist() == order[:12]
    assert frame.loc[frame["wrong"], "n_reviewed"].tolist() == [1, 4, 11]
    assert frame["wrong_found"].tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3]
    assert set(frame.loc[~frame["wrong"], "action"]) == {"accept_given"}
    assert set(frame.loc[frame["wrong"], "action"]) <= {"set", "accept_models"}
    events = EventLog(events_path(run_copy)).events()
    assert len(events) == 12 and {e["mode"] for e in events} == {"suspect"}
    assert all(e["reviewer"] == "simulator" and e["suggested"] for e in events)
    curve = cleaning_curve(events, truth)
    assert curve["wrong_found"].tolist() == frame["wrong_found"].tolist() and curve["fixed"].iat[-1] == 3
    assert curve_points(curve, 12)["n_reviewed"].tolist() == [12]
    assert cleaning_curve(frame, truth).equals(curve)
    state = EventLog(events_path(run_copy)).state()
    for i in wrong:
        fname = queue.clips["fname"].iat[i]
        assert tuple(state.decisions[fname]["after"]) == other_labels(queue, queue.clips["given"].iat[i])
    # a second call continues after the clips already decided
    more = simulate(queue, truth, budget=5, policy="top")
    assert more["clip_id"].tolist() == order[12:17]


def test_random_and_disagree_policies_follow_their_orders(queue, tmp_path):
    random_order = queue.order("random", seed=3)
    wrong = set(random_order[:2])
    truth = write_truth(queue, tmp_path / "truth.csv", wrong, realdev=True)  # realdev's columns
    log = EventLog(tmp_path / "random.jsonl")
    frame = simulate(queue, truth, budget=4, policy="random", seed=3, log=log)
    assert frame["clip_id"].tolist() == random_order[:4] and frame["wrong_found"].tolist() == [1, 2, 2, 2]
    other = simulate(queue, truth, budget=4, policy="disagree", log=EventLog(tmp_path / "disagree.jsonl"))
    assert other["clip_id"].tolist() == queue.order("disagree")[:4]
    # the ceiling: exactly the wrong clips, in the suspect order, each fixed
    ceiling = simulate(queue, truth, budget=10, policy="oracle", log=EventLog(tmp_path / "oracle.jsonl"))
    assert ceiling["clip_id"].tolist() == [i for i in queue.order("suspect") if i in wrong]
    assert ceiling["wrong"].all() and set(ceiling["action"]) <= {"set", "accept_models"}


def test_synthetic_truth_file(queue, tiny_data, tmp_path):
    truth = read_truth_labels(tiny_data / "truth" / "noisy.csv")
    frame = simulate(queue, tiny_data / "truth" / "noisy.csv", budget=20, log=EventLog(tmp_path / "e.jsonl"))
    by_hand = [
        set(truth[f]) != set(g) for f, g in zip(queue.clips["fname"], queue.clips["given"], strict=True)
    ]
    expected = sum(by_hand[i] for i in queue.order()[:20])
    assert frame["wrong_found"].iat[-1] == expected and len(frame) == 20


def test_simulator_errors(queue, tmp_path):
    with pytest.raises(ReviewError, match="truth file not found"):
        simulate(queue, tmp_path / "none.csv", 5)
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,tags\na.wav,Bell\n")
    with pytest.raises(ReviewError, match="needs columns"):
        simulate(queue, bad, 5)
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("fname,labels\nzzz.wav,Bell\n")
    with pytest.raises(ReviewError, match="names none"):
        simulate(queue, elsewhere, 5)
    with pytest.raises(ReviewError, match="unknown policy"):
        simulate(queue, tmp_path / "none.csv", 5, policy="best")


# ------------------------------------------------------------------------------------ the command


def test_cli_simulate_end_to_end(run_copy, tiny_data):
    truth = tiny_data / "truth" / "noisy.csv"
    result = CliRunner().invoke(app, ["review", str(run_copy), "--simulate", str(truth), "--budget", "30"])
    assert result.exit_code == 0, result.output
    assert "cleaning curve" in result.output and "25" in result.output
    review = run_copy / "review"
    curve = pd.read_csv(review / "curve.csv")
    assert curve["n_reviewed"].tolist() == list(range(1, 31)) and set(curve["policy"]) == {"top"}
    assert len(EventLog(review / "events.jsonl").events()) == 30
    assert load_data(review / "manifest.csv").classes
    assert len(pd.read_csv(review / "corrections.csv")) == 30


def test_cli_curve_of_every_policy_writes_no_decisions(run_copy, tiny_data, tmp_path):
    truth = tiny_data / "truth" / "noisy.csv"
    args = ["review", str(run_copy), "--simulate", str(truth), "--budget", "10", "--curve"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    curve = pd.read_csv(run_copy / "review" / "curve.csv")
    assert set(curve["policy"]) == {"top", "random", "disagree", "oracle"}
    assert (curve["policy"] != "oracle").sum() == 30
    oracle = curve[curve["policy"] == "oracle"]  # the ceiling: every clip it reviews was wrong
    assert (oracle["wrong_found"] == oracle["n_reviewed"]).all()
    assert not (run_copy / "review" / "events.jsonl").exists()
    # random's curve is its exact expectation: n x the share of the queue's clips whose given labels are wrong
    queue = ReviewQueue.from_run(run_copy)
    wrong = wrong_flags(queue, truth).mean()
    random = curve[curve["policy"] == "random"]
    np.testing.assert_allclose(random["wrong_found"], np.arange(1, 11) * wrong)
    np.testing.assert_allclose(random["found_per_clip"], wrong)


def test_random_curve_is_the_mean_over_every_order(run_copy, tiny_data, tmp_path):
    """The expectation random_curve computes equals the mean over all orders of a small queue (by
    enumeration, not sampling), and the simulated random policy's draws scatter around it."""
    queue = ReviewQueue.from_run(run_copy)
    truth = tiny_data / "truth" / "noisy.csv"
    wrong = wrong_flags(queue, truth)
    small = wrong[:6]  # every order of six clips: 720 permutations
    by_order = np.mean([np.cumsum(small[list(p)]) for p in itertools.permutations(range(6))], axis=0)
    np.testing.assert_allclose(by_order, np.arange(1, 7) * small.mean())
    expected = random_curve(queue, truth, 10)
    np.testing.assert_allclose(expected["wrong_found"], np.arange(1, 11) * wrong.mean())
    assert (expected["fixed"] == expected["wrong_found"]).all()
    draws = [
        simulate(queue, truth, 10, "random", seed=s, log=EventLog(tmp_path / f"{s}.jsonl"))["wrong_found"]
        for s in range(40)
    ]
    assert abs(np.mean(draws, axis=0)[-1] - expected["wrong_found"].iloc[-1]) < 1.0


def test_cli_retrain_and_serve_hand_over(run_copy, tiny_data, monkeypatch, tmp_path):
    from noisytag.review import app as review_app
    from noisytag.review import retrain

    calls = []
    monkeypatch.setattr(
        retrain, "start_retrain", lambda run, manifest, whole=False: calls.append((manifest, whole)) or run
    )
    monkeypatch.setattr(retrain, "retrain_status", lambda out: {"state": "done"})
    truth = tiny_data / "truth" / "noisy.csv"
    args = ["review", str(run_copy), "--simulate", str(truth), "--budget", "3", "--retrain", "--whole"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [(run_copy / "review" / "manifest.csv", True)] and "retrain done" in result.output
    # a finished retrain is compared with the run (here: itself) and reported
    assert "test lwlrap" in result.output and "+0.0000" in result.output
    assert (run_copy / "review" / "report.html").is_file()
    # --test-truth: the comparison scores the clips of that file (realdev keeps its truth beside the data)
    subset = tmp_path / "test_subset.csv"
    pd.read_csv(tiny_data / "truth" / "test.csv").head(5).to_csv(subset, index=False)
    result = CliRunner().invoke(app, [*args, "--test-truth", str(subset)])
    assert result.exit_code == 0, result.output
    assert "5 test clips" in " ".join(result.output.split())
    result = CliRunner().invoke(app, [*args, "--test-truth", str(tiny_data / "nope.csv")])
    assert result.exit_code == 2 and "nope.csv: truth file not found" in result.output

    served = {}
    monkeypatch.setattr(review_app, "serve_review", lambda run, **kw: served.update(run=run, **kw))
    result = CliRunner().invoke(
        app,
        [
            "review",
            str(run_copy),
            "--reviewer",
            "ann",
            "--no-browser",
            "--port",
            "0",
            "--test-truth",
            str(subset),
        ],
    )
    assert result.exit_code == 0, result.output
    assert served["run"] == run_copy and served["reviewer"] == "ann" and served["port"] == 0
    assert served["test_truth"] == subset


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no run", "run directory not found"),
        ("no audits", "no selection audits"),
        ("bad policy", "unknown policy"),
        ("no truth", "truth file not found"),
    ],
)
def test_cli_errors_are_one_line(case, needle, run_copy, tiny_data, tmp_path):
    truth = str(tiny_data / "truth" / "noisy.csv")
    run = str(run_copy)
    if case == "no run":
        args = ["review", str(tmp_path / "nope"), "--simulate", truth]
    elif case == "no audits":
        for audit in run_copy.glob("*/selections/*_audit.csv"):
            audit.unlink()
        args = ["review", run, "--simulate", truth]
    elif case == "bad policy":
        args = ["review", run, "--simulate", truth, "--policy", "best"]
    else:
        args = ["review", run, "--simulate", str(tmp_path / "none.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error:"), result.output
