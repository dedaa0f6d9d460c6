"""The clips that calibrate int8 members (:mod:`noisytag.infer.quantize`) and the held-out clips that check them.

:func:`calibration_set` picks them for a run: by default from its own data set (run.json ``data_dir``;
features from the feature cache of its config, else decoded), or from another data set or a folder of
audio files (``noisytag export --int8 --calibration DIR``). A data set's test clips with truth are held
out when it has them, so parity comes with lwlrap at both precisions; else curated clips not used for
calibration, or a quarter of an audio folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisytag.audio.cache import CacheError, FeatureCache, cache_folder, default_cache_dir
from noisytag.audio.model_input import Clip, cached_clips, file_clip
from noisytag.config import FrontendConfig, load_config
from noisytag.data.dataset import multi_hot
from noisytag.data.files import audio_files
from noisytag.data.manifest import is_manifest, load_data
from noisytag.infer.members import ExportError
from noisytag.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    """Clips that set the activation ranges, and other clips that check the result.

    ``truth``: (len(heldout), K) multi-hot labels of the held-out clips in the members' class order, or
    None; ``source``/``heldout_source``: one line each saying where the clips came from.
    """

    calibrate: list[Clip]
    heldout: list[Clip]
    source: str
    heldout_source: str
    truth: np.ndarray | None = None


def _is_dataset(path: Path) -> bool:
    return is_manifest(path) or (path / "train_curated.csv").is_file()


def _decoded(paths: Sequence, frontend: FrontendConfig) -> dict[int, Clip]:
    """Position in ``paths`` → its clip; a file that cannot be decoded is reported and left out."""
    out = {}
    for pos, path in enumerate(paths):
        try:
            out[pos] = file_clip(path, frontend, pos)[0]
        except Exception as err:  # AudioError and anything a decoder may raise
            log.warning("calibration: skipped %s (%s)", path, err)
    return out


def _dataset_clips(data_dir: Path, cache_dir: Path, frontend: FrontendConfig, split: str, rows) -> dict:
    """Position in ``rows`` (a split table) → its clip, from the feature cache, else decoded."""
    try:
        cache = FeatureCache.open(cache_dir, frontend, cache_folder(data_dir, split))
        held = set(cache.index["fname"])
    except (CacheError, FileNotFoundError):
        cache, held = None, set()
    cached = [pos for pos, key in enumerate(rows["key"]) if key in held]
    out = {pos: next(cached_clips(cache, [cache.position(rows["key"].iat[pos])])) for pos in cached}
    rest = [pos for pos in range(len(rows)) if pos not in out]
    decoded = _decoded([rows["path"].iat[pos] for pos in rest], frontend)
    out.update({rest[i]: clip for i, clip in decoded.items()})
    return dict(sorted(out.items()))


def calibration_from_dataset(
    data_dir: str | Path,
    frontend: FrontendConfig,
    classes: Sequence[str],
    cache_dir: str | Path | None = None,
    n_clips: int = 128,
    n_heldout: int = 32,
    seed: int = 0,
) -> CalibrationSet:
    """Calibrate on curated + noisy clips of a data set; hold out its test clips with truth (else curated).

    Features come from the data set's feature cache (``cache_dir``, default ``DATA_DIR/.noisytag-cache``),
    or are decoded from the audio files when the cache does not hold them.
    """
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(data_dir)
    data = load_data(data_dir, skip_invalid=True)
    rng = np.random.default_rng(seed)
    curated = data.curated.iloc[rng.permutation(len(data.curated))]
    noisy = data.noisy.iloc[rng.permutation(len(data.noisy))]
    test = data.test
    if "truth" in test.columns and test["truth"].map(len).any():
        test = test[test["truth"].map(len) > 0]
        held = test.iloc[rng.permutation(len(test))[:n_heldout]]
        split, labels, where = "test", held["truth"], "test clips with truth"
    else:
        held = curated.iloc[: min(n_heldout, len(curated) // 2)]
        curated = curated.iloc[len(held) :]
        split, labels, where = "curated", held["labels"], "curated clips not used for calibration"
    n_cur = min(len(curated), max(n_clips - len(noisy), (n_clips + 1) // 2))
    picks = {"curated": curated.iloc[:n_cur], "noisy": noisy.iloc[: n_clips - n_cur]}
    calibrate = [
        c for s in picks for c in _dataset_clips(data_dir, cache_dir, frontend, s, picks[s]).values()
    ]
    if not calibrate:
        raise ExportError(f"{data_dir}: no curated or noisy clips to calibrate the int8 members on")
    got = _dataset_clips(data_dir, cache_dir, frontend, split, held)
    heldout, where = list(got.values()), f"{len(got)} {where} of {data_dir}"
    labelled = bool(got) and set(data.classes) <= set(classes)  # another data set's labels may not fit
    truth = multi_hot([labels.iloc[k] for k in got], classes) if labelled else None
    if not heldout:
        heldout, where = calibrate, f"the calibration clips of {data_dir} (none to hold out)"
    return CalibrationSet(
        calibrate, heldout, f"data set {data_dir}: {len(calibrate)} curated/noisy clips", where, truth
    )


def calibration_from_audio(
    folder: str | Path, frontend: FrontendConfig, n_clips: int = 128, n_heldout: int = 32, seed: int = 0
) -> CalibrationSet:
    """Calibrate on the audio files of ``folder`` (recursive), holding out a quarter (≤ ``n_heldout``)."""
    files = audio_files(folder, recursive=True)
    if not files:
        raise ExportError(f"{folder}: no audio files to calibrate the int8 members on")
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    n_held = max(1, min(n_heldout, len(files) // 4)) if len(files) >= 2 else 0
    calibrate = list(_decoded(files[n_held : n_held + n_clips], frontend).values())
    if not calibrate:
        raise ExportError(f"{folder}: none of its audio files could be decoded for calibration")
    heldout = list(_decoded(files[:n_held], frontend).values())
    where = f"{len(heldout)} other audio files of {folder} (no labels)"
    if not heldout:
        heldout, where = calibrate, f"the calibration clips of {folder} (too few files to hold any out)"
    return CalibrationSet(calibrate, heldout, f"audio folder {folder}: {len(calibrate)} files", where)


def calibration_set(
    run_dir: str | Path,
    frontend: FrontendConfig,
    classes: Sequence[str],
    source: str | Path | None = None,
    n_clips: int = 128,
    n_heldout: int = 32,
) -> CalibrationSet:
    """The clips that calibrate a run's int8 members: ``source`` (a data set or a folder of audio files),
    by default the run's own data set (run.json ``data_dir``, features from the cache of its config)."""
    run = RunDir(run_dir)
    data_dir = run.info().get("data_dir")
    cache_dir = load_config(run.config).data.cache_dir if run.config.is_file() else None
    if source is not None:
        if not Path(source).exists():
            raise FileNotFoundError(f"--calibration: '{source}' does not exist")
        source = Path(source).resolve()  # the same folder gives the same source, however it was named
        if not _is_dataset(source):
            return calibration_from_audio(source, frontend, n_clips, n_heldout)
        if not data_dir or source != Path(data_dir).resolve():
            cache_dir = None  # another data set: its own default cache
        data_dir = source
    elif not data_dir or not Path(data_dir).exists():
        raise ExportError(
            f"{run.root}: int8 calibration needs clips, and the run's data set is not available "
            f"(run.json data_dir: {data_dir or 'none'}); pass --calibration DIR (a data set or audio files)"
        )
    return calibration_from_dataset(data_dir, frontend, classes, cache_dir, n_clips, n_heldout)
