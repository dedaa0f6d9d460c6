"""Submissions: column and row order, the predict and evaluate commands on the tiny synthetic data set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import write_model_run

from noisytag.infer.submission import write_submission


def test_submission_columns_follow_sample_submission(tmp_path):
    classes = ["dog", "cat", "bird"]
    probs = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"fname": ["b.wav", "a.wav"], "bird": 0, "dog": 0, "cat": 0}).to_csv(sample, index=False)
    out = tmp_path / "sub" / "submission.csv"
    write_submission(out, ["a.wav", "b.wav"], probs, classes, sample_submission=sample)
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["fname", "bird", "dog", "cat"]
    assert frame["fname"].tolist() == ["b.wav", "a.wav"]
    np.testing.assert_allclose(frame.loc[1, ["dog", "cat", "bird"]].to_numpy(float), probs[0])
    # without a sample submission: the models' class order
    write_submission(out, ["a.wav", "b.wav"], probs, classes)
    assert list(pd.read_csv(out).columns) == ["fname", *classes]
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temporary file left
    pd.DataFrame({"fname": ["a.wav"], "owl": 0, "dog": 0, "cat": 0}).to_csv(sample, index=False)
    with pytest.raises(ValueError, match="sample_submission.csv: class columns differ"):
        write_submission(out, ["a.wav", "b.wav"], probs, classes, sample_submission=sample)


def test_predict_and_evaluate_commands(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app
    from noisytag.data.dataset import read_truth
    from noisytag.metrics import lwlrap

    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    classes = list(sample.columns[1:])[::-1]  # the models' order differs from the sample's
    run = write_model_run(tmp_path / "run", classes, members=((2, 0), (4, 0)))
    out = tmp_path / "submission.csv"
    runner = CliRunner()
    res = runner.invoke(
        app, ["predict", str(run), str(tiny_data / "test"), "-o", str(out), "--no-progress", "--mode", "fast"]
    )
    assert res.exit_code == 0, res.output
    sub = pd.read_csv(out)
    assert list(sub.columns) == list(sample.columns)
    assert sub["fname"].tolist() == sample["fname"].tolist()
    probs = sub.iloc[:, 1:].to_numpy()
    assert np.all((probs > 0) & (probs < 1))

    per_class = tmp_path / "per_class.csv"
    res = runner.invoke(
        app, ["evaluate", str(out), str(tiny_data / "truth" / "test.csv"), "--csv", str(per_class)]
    )
    assert res.exit_code == 0, res.output
    truth = read_truth(tiny_data / "truth" / "test.csv").set_index("fname").loc[sub["fname"]]
    y = np.array([[c in labels for c in sample.columns[1:]] for labels in truth["labels"]])
    assert f"overall lwlrap: {lwlrap(y, probs):.5f}" in res.stdout
    table = pd.read_csv(per_class)
    assert table["lwlrap"].is_monotonic_increasing and set(table["class"]) <= set(classes)

    res = runner.invoke(app, ["evaluate", str(out), str(tmp_path / "nope.csv")])
    assert res.exit_code != 0 and "nope.csv" in res.output
    res = runner.invoke(app, ["predict", str(run), str(tiny_data / "test"), "--stages", "3", "--no-progress"])
    assert res.exit_code != 0 and "no finished models for stages 3" in " ".join(res.output.split())
