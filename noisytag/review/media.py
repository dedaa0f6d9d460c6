"""The pictures of a review card: the clip's log-mel (the front end of ``noisytag.audio``, as the models see
it) and, under it on the same time axis, the models' timeline; PNGs drawn when first asked and cached under
``RUN/review/pictures/``.

The log-mel comes first and alone (decode + log-mel: ~0.2 s for a 30-s clip beside a training job), so a card
shows at once; the timeline follows lazily, because a full-width model needs seconds for a 30-s clip on two
busy cores (cnn1: ~5 s on one thread). The timeline is what ``noisytag serve`` shows
(``noisytag.infer.tag.timeline``: each window's probability of a few labels), from ONE model: the fold model
of the clip's own fold in the run's last ensemble stage (first architecture, fast mode), which never trained
on the clip, so it is out-of-fold like the card's probabilities and costs one forward. Each kind is drawn in
its own thread with ONE torch thread (beside a training job, two torch threads made a picture ~7x slower:
1.5 s against 0.2 s), so a slow timeline never holds up the next card's log-mel. Without usable models there
is no timeline.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from noisytag.audio.image import MAX_COLUMNS, gray_image
from noisytag.audio.model_input import file_clip
from noisytag.config import FrontendConfig
from noisytag.fileio import write_bytes
from noisytag.infer.ensemble import ensemble_stages, select_model_dirs
from noisytag.infer.predict import iter_files
from noisytag.infer.tag import Label, Tagger, timeline
from noisytag.rundir import RunDir
from noisytag.serve.service import inference_threads

log = logging.getLogger(__name__)

# The serve page's colour map (noisytag/serve/web/app.js VIRIDIS), so both pages read alike.
VIRIDIS = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 74, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [109, 205, 89],
        [180, 222, 44],
        [253, 231, 37],
    ],
    dtype=np.float64,
)
_pos = np.linspace(0, len(VIRIDIS) - 1, 256)
LUT = np.stack([np.interp(_pos, np.arange(len(VIRIDIS)), VIRIDIS[:, c]) for c in range(3)], 1).astype(
    np.uint8
)

LEFT, WIDTH, RIGHT = 130, 600, 8  # label margin, plot width, right margin (pixels)
MEL_H, ROW_H, AXIS_H = 128, 16, 16
INK, MUTED, BG = (29, 36, 48), (102, 112, 133), (255, 255, 255)


def picture_name(fname: str) -> str:
    """Cache file name of a clip's picture: a digest of its name (clip names may hold folders)."""
    return hashlib.sha1(fname.encode("utf-8")).hexdigest()[:20] + ".png"


def colour(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 → (H, W, 3) viridis."""
    return LUT[gray]


def time_span(start_s: float, end_s: float, duration: float) -> tuple[float, float]:
    """File-time span both pictures share: the file, and the processed (padded) clip around it."""
    span0 = min(0.0, start_s)
    return span0, max(duration, end_s, span0 + 1e-3)


def _x(span: tuple[float, float]):
    return lambda t: LEFT + int(round((t - span[0]) / (span[1] - span[0]) * WIDTH))


def _finish(canvas: np.ndarray, span: tuple[float, float], labels: Sequence[tuple[int, str, tuple]]) -> bytes:
    """Row labels (y, text, colour) in the left margin and the time axis at the bottom; PNG bytes."""
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for y, text, fill in labels:
        draw.text((LEFT - 6, y), text, fill=fill, font=font, anchor="rm")
    x = _x(span)
    axis = canvas.shape[0] - AXIS_H
    step = next(
        (s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if (span[1] - span[0]) / s <= 10), 1200
    )
    t = np.ceil(span[0] / step) * step
    while t <= span[1] + 1e-9:
        draw.line([(x(t), axis), (x(t), axis + 3)], fill=MUTED)
        draw.text((x(t), axis + 3), f"{t + 0.0:g} s", fill=MUTED, font=font, anchor="ma")
        t += step
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=3)
    return out.getvalue()


def draw_logmel(db_image: np.ndarray, start_s: float, seconds_per_column: float, duration: float) -> bytes:
    """The (F, C) uint8 log-mel image (``noisytag.audio.image.gray_image``) coloured, in file time."""
    end_s = start_s + db_image.shape[1] * seconds_per_column
    span = time_span(start_s, end_s, duration)
    x = _x(span)
    canvas = np.full((MEL_H + AXIS_H, LEFT + WIDTH + RIGHT, 3), BG, dtype=np.uint8)
    mel = colour(db_image)
    x0, x1 = x(start_s), max(x(end_s), x(start_s) + 1)
    cols = np.minimum(((np.arange(x1 - x0) + 0.5) * mel.shape[1] / (x1 - x0)).astype(int), mel.shape[1] - 1)
    rows = np.minimum((np.arange(MEL_H) * mel.shape[0] / MEL_H).astype(int), mel.shape[0] - 1)
    canvas[:MEL_H, x0:x1] = mel[rows][:, cols]
    return _finish(canvas, span, [(8, "log-mel", MUTED)])


def draw_timeline(
    span: tuple[float, float],
    rows: Sequence[str],
    windows: Sequence[tuple[float, float]],
    probs: np.ndarray,
    marks: dict[str, str] | None = None,
) -> bytes:
    """One row per label of ``rows``: its probability window by window (``probs``: (windows, rows)), on the
    log-mel's time axis; ``marks``: a short note after a row's label."""
    x = _x(span)
    canvas = np.full((len(rows) * ROW_H + AXIS_H + 2, LEFT + WIDTH + RIGHT, 3), BG, dtype=np.uint8)
    mids = [(a + b) / 2 for a, b in windows]
    for w, (a, b) in enumerate(windows):  # each window owns the span between its neighbours' centres
        a = a if w == 0 else (mids[w - 1] + mids[w]) / 2
        b = b if w == len(windows) - 1 else (mids[w] + mids[w + 1]) / 2
        xa, xb = x(a), max(x(b), x(a) + 1)
        for r in range(len(rows)):
            canvas[2 + r * ROW_H : 2 + (r + 1) * ROW_H - 2, xa:xb] = LUT[
                int(round(float(np.clip(probs[w, r], 0, 1)) * 255))
            ]
    labels = [
        (
            2 + r * ROW_H + ROW_H // 2 - 1,
            f"{label[:18]}{' ' + marks[label] if label in (marks or {}) else ''}",
            INK,
        )
        for r, label in enumerate(rows)
    ]
    return _finish(canvas, span, labels)


class Pictures:
    """Card pictures of one run, drawn on first request and cached: :meth:`logmel` and :meth:`timeline`
    (each in its own thread: ``submit_*`` return futures). The models load on the first timeline."""

    def __init__(self, run: str | Path, cache_dir: str | Path | None = None, models: bool = True):
        self.run = Path(run)
        self.cache_dir = Path(cache_dir) if cache_dir else self.run / "review" / "pictures"
        saved = RunDir(self.run).saved_config()
        self.frontend = saved.frontend if saved is not None else FrontendConfig()
        self._tagger: Tagger | None = None
        self._tagger_failed = not models
        self._lock = threading.Lock()
        self._logmel_pool = inference_threads(torch_models=False, max_in_flight=1)
        self._timeline_pool = inference_threads(torch_models=False, max_in_flight=1)

    def _cache(self, fname: str, kind: str) -> Path:
        return self.cache_dir / picture_name(fname).replace(".png", f".{kind}.png")

    def submit_logmel(self, fname: str, audio: Path) -> Future:
        return self._logmel_pool.submit(self.logmel, fname, audio)

    def submit_timeline(self, fname: str, audio: Path, fold: int, rows: Sequence[str], marks: dict) -> Future:
        return self._timeline_pool.submit(self.timeline, fname, audio, fold, rows, marks)

    def logmel(self, fname: str, audio: Path) -> bytes:
        """The clip's log-mel picture (the cached one when there is one)."""
        path = self._cache(fname, "logmel")
        if path.is_file():
            return path.read_bytes()
        clip, duration, offset = file_clip(audio, self.frontend)
        image, per = gray_image(clip.db, clip.lo, clip.hi)
        data = draw_logmel(
            image, offset, per * self.frontend.hop_length / self.frontend.sample_rate, duration
        )
        write_bytes(path, data)
        return data

    def timeline(
        self, fname: str, audio: Path, fold: int = 0, rows: Sequence[str] = (), marks: dict | None = None
    ) -> bytes | None:
        """The timeline picture of ``rows`` (the cached one when there is one); None without models."""
        path = self._cache(fname, "timeline")
        if path.is_file():
            return path.read_bytes()
        tagger = self.tagger()
        if tagger is None:
            return None
        ens = tagger.ensemble
        member = self.member(tagger, fold)
        (res,) = iter_files([member], [audio], tagger.cfg, ens.frontend, ens.normalize, keep_clips=True)
        if res.error is not None:
            raise ValueError(res.error)
        rows = [r for r in rows if r in tagger.classes]
        hop = ens.frontend.hop_length / ens.frontend.sample_rate
        tl = timeline(res, tagger.classes, [Label(r, 0.0) for r in rows], hop, tagger.cfg.window)
        n_frames = res.clip.db.shape[1]  # the log-mel picture's span: its columns cover these frames
        per = max(-(-n_frames // MAX_COLUMNS), 1)
        span = time_span(res.offset, res.offset + -(-n_frames // per) * per * hop, res.duration)
        probs = np.asarray(tl.probs, dtype=np.float64).reshape(len(tl.windows), len(rows))
        data = draw_timeline(span, rows, [(w.start_s, w.end_s) for w in tl.windows], probs, marks)
        write_bytes(path, data)
        return data

    def tagger(self) -> Tagger | None:
        """One member set of the run (last ensemble stage, first architecture, fast mode), or None."""
        with self._lock:
            if self._tagger is None and not self._tagger_failed:
                try:
                    stage = max(ensemble_stages(self.run))
                    arch = select_model_dirs(self.run, [stage])[0].parent.parent.name
                    self._tagger = Tagger(
                        self.run, stages=[stage], archs=[arch], mode="fast", backend="torch"
                    )
                except Exception as err:  # a run without usable models: pictures of the log-mel alone
                    log.warning("review pictures without a timeline: %s", err)
                    self._tagger_failed = True
            return self._tagger

    def member(self, tagger: Tagger, fold: int):
        """The fold model that held out ``fold`` (the first one when the run has no such fold)."""
        ens = tagger.ensemble
        names = [d.name for d in ens.dirs]
        return ens.members[names.index(f"fold{fold}")] if f"fold{fold}" in names else ens.members[0]

    def close(self) -> None:
        self._logmel_pool.shutdown(wait=False, cancel_futures=True)
        self._timeline_pool.shutdown(wait=False, cancel_futures=True)
