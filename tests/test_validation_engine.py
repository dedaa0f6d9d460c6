"""One windowed-evaluation engine: validation during training scores the same windows, batches and
per-clip mean as out-of-fold prediction, so metrics.csv and the stage table measure the same thing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from noisytag.data.dataset import load_dataset, multi_hot
from noisytag.metrics import lwlrap


def test_fast_mode_last_validation_lwlrap_is_the_out_of_fold_lwlrap(tiny_data, tiny_cache, tmp_path):
    """Under ``infer.mode: fast`` a fold's last val_lwlrap equals the lwlrap of its oof_curated.npy.

    Not to the bit: prediction runs a batch-norm-folded copy of the model (~4e-7 in probability);
    metrics.csv keeps 6 decimals."""
    from noisytag.runs.pipeline import run_pipeline

    cfg = tiny_config(
        **{
            "data.cache_dir": str(tiny_cache),
            "pipeline.stages": "[1]",
            "infer.stages": "[1]",
            "infer.mode": "fast",
        }
    )
    run_pipeline(tiny_data, tmp_path, cfg, progress=False)
    data = load_dataset(tiny_data)
    truth = pd.Series(
        list(multi_hot(data.curated["labels"], data.classes) > 0.5), index=data.curated["fname"]
    )
    folds = pd.read_csv(tmp_path / "folds.csv")
    curated = folds[folds["split"] == "curated"]
    for fold in range(cfg.train.folds):
        fold_dir = tmp_path / "cnn1" / "stage1" / f"fold{fold}"
        oof = np.load(fold_dir / "oof_curated.npy")
        names = curated.loc[curated["fold"] == fold, "fname"]
        oof_lwlrap = lwlrap(np.stack(truth[names].to_list()), oof)
        last = pd.read_csv(fold_dir / "metrics.csv").iloc[-1]
        assert last["val_lwlrap"] == pytest.approx(oof_lwlrap, abs=1e-6), fold


class Recorder:
    """An ensemble member that keeps every input it is given (and answers zeros)."""

    name = "recorder"
    n_classes = 3

    def __init__(self):
        self.seen: list[tuple[np.ndarray, np.ndarray | None]] = []

    def probs(self, x: np.ndarray) -> np.ndarray:
        self.seen.append((np.array(x), None))
        return np.zeros((len(x), self.n_classes), np.float32)

    def fast_probs(self, x: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
        self.seen.append((np.array(x), np.array(starts)))
        return np.zeros((len(starts), self.n_classes), np.float32)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_validation_batches_are_the_batches_prediction_runs(tiny_cache, mode):
    """Same windows, same batches (in order), same inputs to the bit: validation and predict_cache."""
    from noisytag.audio.cache import FeatureCache
    from noisytag.config import FrontendConfig, InferConfig
    from noisytag.infer.predict import predict_cache
    from noisytag.learn.loader import ClipSet, ValidationBatches

    cache = FeatureCache.open(tiny_cache, FrontendConfig(), "curated")
    positions = np.argsort(-cache.index["n_frames"].to_numpy(), kind="stable")[[0, 5, 1, 9, 2, 3, 4]]
    cfg = InferConfig(batch_size=4, mode=mode)
    member = Recorder()
    predict_cache([member], cache, positions, cfg)
    clips = ClipSet(
        np.full(len(positions), "curated", dtype=object), positions, np.zeros((len(positions), 3))
    )
    data = ValidationBatches({"curated": cache}, clips, cfg, batch_size=4)
    assert len(data) == len(member.seen) and any(s is not None for _, s in member.seen) == (mode == "fast")
    for k, (x, starts) in enumerate(member.seen):
        item = data[k]
        assert item["whole"] == (starts is not None)
        assert np.array_equal(item["x"].numpy(), x)
        if starts is not None:
            assert np.array_equal(item["starts"].numpy(), starts)
