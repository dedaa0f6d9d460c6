#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels benchmarks/gpu_check.sh installs on a GPU machine that has
# PyTorch and Lightning but no package registry. Run it here, where pip reaches a registry.
#
#   benchmarks/gpu_wheels.sh [--all]
#
# The GPU machine's Python decides the binary wheels: PY_VERSION (default 3.12, the python3 of this
# workplace's H200 image). By default only what noisytag needs beyond that image (≈ 3 MB: librosa,
# soundfile, soxr, cleanlab, iterative-stratification and their small dependencies); --all adds what
# the image already has (pandas, scipy, scikit-learn, numba, matplotlib, typer, rich, pytest, ...)
# for a machine with PyTorch, Lightning and numpy alone (≈ 150 MB). Versions follow .venv where it
# has the package, so the GPU runs the versions the tests pass with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
PIP=${PIP:-.venv/bin/python -m pip}

NEEDED="librosa soundfile soxr cffi pycparser audioread pooch platformdirs decorator
        iterative-stratification cleanlab termcolor"
IMAGE="pandas tzdata python-dateutil six scipy scikit-learn joblib threadpoolctl numba llvmlite
       lazy-loader msgpack typing-extensions tqdm requests charset-normalizer idna urllib3 certifi
       packaging matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing typer click
       shellingham rich markdown-it-py mdurl pygments pyyaml safetensors pytest pluggy iniconfig
       hypothesis sortedcontainers attrs"
names=$NEEDED
[ "${1:-}" = "--all" ] && names="$NEEDED $IMAGE"

frozen=$($PIP freeze 2>/dev/null || true)
specs=()
for name in $names; do
    pattern="^$(echo "$name" | sed 's/[-_.]/[-_.]/g')=="
    pinned=$(echo "$frozen" | grep -iE "$pattern" | head -n1 || true)
    specs+=("${pinned:-$name}")
done

mkdir -p .whl
$PIP download --quiet --no-deps --only-binary=:all: --dest .whl \
    --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 \
    "${specs[@]}"
echo "$(ls .whl/*.whl | wc -l) wheels in .whl/ ($(du -sh .whl | cut -f1)) for Python $PY_VERSION:"
ls .whl
