"""Core benchmarks: lwlrap, the augmentation chain and model forward+backward on this CPU.

  (a) noisytag.metrics.lwlrap on 20,000 clips × 80 classes vs a per-clip loop like the official
      Kaggle scorer (and vs a plain per-row argsort vectorisation); results are checked equal.
  (b) one pass of build_chain(AugmentConfig()) on a 128 × 1 × 128 × 128 batch vs a per-example Python
      loop doing the same operations with the same random draws; outputs are checked equal.
  (c) forward + backward time per example of cnn1 (width 1 and 0.25) and vgg16, batch 16.

Each comparison runs the contenders interleaved in the same process, repeated, and reports the best
and median times and the ratio of medians, so a machine loaded by other work skews both alike.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--only a,b,c]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from noisytag.config import AugmentConfig

# ------------------------------------------------------------------------------------------ timing


def interleaved(contenders: dict, repeats: int) -> dict[str, list[float]]:
    """Run each callable once per round, round after round; seconds per call for each name."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def row(
    name: str, ts: list[float], ref: float | None, unit: float = 1e3, suffix: str = "ms", ratio=True
) -> str:
    """One table line; the last column is ref / median (the speed-up over the reference)."""
    med = statistics.median(ts)
    ratio = (f"{ref / med:8.1f}×" if ref else f"{'1.0×':>9s}") if ratio else ""
    return f"  {name:38s} best {min(ts) * unit:9.2f} {suffix}  median {med * unit:9.2f} {suffix}  {ratio}"


# ------------------------------------------------------------------------------------- (a) lwlrap


def official_style_lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """The official scorer's structure: one argsort per clip, in a Python loop (stable sort)."""
    n, c = scores.shape
    prec = np.zeros((n, c))
    for i in range(n):
        pos = np.flatnonzero(truth[i] > 0)
        if not len(pos):
            continue
        retrieved = np.argsort(scores[i], kind="stable")[::-1]
        rank_of = np.zeros(c, dtype=int)
        rank_of[retrieved] = range(c)
        hit = np.zeros(c, dtype=bool)
        hit[rank_of[pos]] = True
        cum = np.cumsum(hit)
        prec[i, pos] = cum[rank_of[pos]] / (1 + rank_of[pos].astype(float))
    counts = np.sum(truth > 0, axis=0)
    per_class = prec.sum(axis=0) / np.maximum(1, counts)
    return float(np.sum(per_class * counts / counts.sum()))


def bench_lwlrap(quick: bool) -> None:
    from noisytag.metrics import lwlrap, positive_precisions

    rng = np.random.default_rng(0)
    n, c = 20_000, 80
    truth = np.zeros((n, c), dtype=np.float32)
    truth[np.arange(n), rng.integers(0, c, n)] = 1
    truth[rng.random((n, c)) < 0.2 / c] = 1  # ≈ 1.2 labels per clip, as the real curated set
    scores = rng.random((n, c)).astype(np.float32)

    def sort_path() -> float:
        return float(positive_precisions(truth, scores, method="sort")[2].mean())

    exact = official_style_lwlrap(truth, scores)
    assert abs(lwlrap(truth, scores) - exact) < 1e-12 and abs(sort_path() - exact) < 1e-12
    times = interleaved(
        {
            "per-clip loop (official style)": lambda: official_style_lwlrap(truth, scores),
            "per-row argsort, vectorised": sort_path,
            "noisytag.metrics.lwlrap": lambda: lwlrap(truth, scores),
        },
        3 if quick else 9,
    )
    ref = statistics.median(times["per-clip loop (official style)"])
    print(f"(a) lwlrap, {n:,} clips × {c} classes, {int(truth.sum()):,} labels (equal to 1e-12: yes)")
    for name, ts in times.items():
        print(row(name, ts, ref if name != "per-clip loop (official style)" else None))


# ------------------------------------------------------------------------------- (b) augmentation


def loop_apply(
    name: str, step, x: torch.Tensor, y: torch.Tensor, p: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmentation step, example by example, with the draws ``p`` of its batched ``sample``."""
    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if name == "mixup":
            lam, j = float(p["lam"][i]), int(p["perm"][i])
            xi, yi = lam * xi + (1 - lam) * x[j], lam * yi + (1 - lam) * y[j]
        elif name == "specmix":
            j = int(p["perm"][i])
            f0, fh, t0, tw = (int(p[k][i]) for k in ("f0", "fh", "t0", "tw"))
            xi = xi.clone()
            xi[..., f0 : f0 + fh, :] = x[j, ..., f0 : f0 + fh, :]
            xi[..., :, t0 : t0 + tw] = x[j, ..., :, t0 : t0 + tw]
            h, w = float(p["h"][i]), float(p["w"][i])
            a = h + w - h * w
            yi = (1 - a) * yi + a * y[j]
        elif name == "zoom" and bool(p["on"][i]):
            inv = 1.0 / float(p["scale"][i])
            cx, cy = float(p["cx"][i]), float(p["cy"][i])
            theta = torch.tensor([[[inv, 0.0, cx * (1 - inv)], [0.0, inv, cy * (1 - inv)]]], dtype=x.dtype)
            grid = F.affine_grid(theta, [1, *xi.shape], align_corners=False)
            xi = F.grid_sample(xi[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        elif name == "lighting" and bool(p["on"][i]):
            xi = torch.sigmoid((torch.logit(xi, eps=1e-6) + float(p["shift"][i])) * float(p["scale"][i]))
        elif name == "masking":
            f0, fh, t0, tw = (int(p[k][i]) for k in ("f0", "fh", "t0", "tw"))
            xi = xi.clone()
            xi[..., f0 : f0 + fh, :] = 0
            xi[..., :, t0 : t0 + tw] = 0
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def bench_augment(quick: bool) -> None:
    from noisytag.learn.augment import build_chain

    cfg = AugmentConfig()
    torch.manual_seed(0)
    x = torch.rand(128, 1, 128, 128)
    y = (torch.rand(128, 80) < 0.02).float()

    def batched(seed: int):
        return build_chain(cfg, torch.Generator().manual_seed(seed))(x, y)

    def looped(seed: int):
        chain = build_chain(cfg, torch.Generator().manual_seed(seed))
        xo, yo = x, y
        for name, step in chain.steps.items():
            xo, yo = loop_apply(name, step, xo, yo, step.sample(xo))  # same draws, same order
        return xo, yo

    with torch.no_grad():
        (xb, yb), (xl, yl) = batched(1), looped(1)
        same = torch.allclose(xb, xl, atol=5e-5) and torch.allclose(yb, yl, atol=1e-6)
        times = interleaved(
            {"per-example loop": lambda: looped(2), "build_chain (batched)": lambda: batched(2)},
            3 if quick else 9,
        )
    ref = statistics.median(times["per-example loop"])
    steps = ", ".join(build_chain(cfg).steps.keys())
    print(f"(b) augmentation chain [{steps}] on 128×1×128×128 (same output: {'yes' if same else 'NO'})")
    for name, ts in times.items():
        print(row(name, ts, ref if name != "per-example loop" else None))


# ------------------------------------------------------------------------------------- (c) models


def bench_models(quick: bool, batch: int = 16) -> None:
    from noisytag.models import build

    iters, warm = (2, 1) if quick else (5, 2)
    print(f"(c) forward+backward, batch {batch} × 1×128×128, 80 classes, {torch.get_num_threads()} threads")
    for label, name, opts in (
        ("cnn1 width 1", "cnn1", {"width": 1.0}),
        ("cnn1 width 0.25", "cnn1", {"width": 0.25}),
        ("vgg16", "vgg16", {}),
    ):
        torch.manual_seed(0)
        model = build(name, 80, 1, **opts).train()
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        x = torch.rand(batch, 1, 128, 128)
        y = (torch.rand(batch, 80) < 0.02).float()

        def step(model=model, x=x, y=y) -> None:
            model.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(x), y).backward()

        for _ in range(warm):
            step()
        ts = interleaved({label: step}, iters)[label]
        per = [t / batch for t in ts]
        print(
            row(f"{label} ({n_params / 1e6:.2f} M params)", per, None, suffix="ms/ex", ratio=False).rstrip()
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", default="a,b,c", help="comma-separated subset of a,b,c")
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",")}
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch threads")
    if "a" in parts:
        bench_lwlrap(args.quick)
    if "b" in parts:
        bench_augment(args.quick)
    if "c" in parts:
        bench_models(args.quick)


if __name__ == "__main__":
    main()
