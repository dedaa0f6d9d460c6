#!/usr/bin/env bash
# The GPU check, in at most 8 minutes, on a machine with a GPU, PyTorch and Lightning but no package
# registry (run benchmarks/gpu_wheels.sh first where one is reachable: it fills .whl/):
#
#   benchmarks/gpu_check.sh [WORK_DIR]        (default /tmp/noisytag-gpu-check; figures in WORK_DIR/gpu_check.json)
#
# 1. installs from .whl/ the wheels whose package the machine lacks (into WORK_DIR/site, on PYTHONPATH);
# 2. runs the tests that need CUDA;
# 3. runs a tiny pipeline (2 folds, 4 stages, 1 epoch) with full-width cnn1 and VGG-16-BN in 16-bit
#    mixed precision through `python3 -m noisytag pipeline`;
# 4. prints training examples/s and inference × real time per architecture, GPU beside CPU
#    (benchmarks/gpu_check.py).
# Without CUDA it still runs, in about a minute: no CUDA tests, a slim 32-bit pipeline of stages 1-2,
# CPU figures only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${1:-/tmp/noisytag-gpu-check}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
started=$SECONDS
step() { echo; echo "== $* ($((SECONDS - started)) s)"; }

step "1. wheels from .whl/ that this machine lacks"
if compgen -G ".whl/*.whl" >/dev/null; then
    missing=$("$PY" - .whl/*.whl <<'EOF'
import re, sys
from importlib import metadata
have = {re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower() for d in metadata.distributions()}
print(" ".join(w for w in sys.argv[1:] if re.sub(r"[-_.]+", "-", w.split("/")[-1].split("-")[0]).lower() not in have))
EOF
)
    for wheel in $missing; do
        "$PY" -m pip install --quiet --no-index --no-deps --target "$WORK/site" "$wheel" \
            || echo "could not install $wheel (built for another Python?)"
    done
    echo "installed: ${missing:-nothing, all present}"
else
    echo "no .whl/ here: using the machine's packages as they are"
fi
"$PY" -c "import torch, lightning, noisytag; print('torch', torch.__version__, '| lightning', lightning.__version__, '| CUDA', torch.cuda.is_available())"
cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")

step "2. tests that need CUDA"
if [ "$cuda" = 1 ]; then
    "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_augment.py -k cuda
else
    echo "no CUDA device: skipped"
fi

step "3. tiny pipeline"
rm -rf "$WORK/run"
"$PY" -m noisytag synth "$WORK/data" --scale tiny >/dev/null
common=(--set pipeline.architectures=[cnn1,vgg16] --set train.folds=2 --set train.epochs=1
        --set train.batch_size=16 --set train.num_workers=0 --set infer.batch_size=64)
if [ "$cuda" = 1 ]; then
    sets=(--set model.width=1.0 --set train.precision=16-mixed)
else
    sets=(--set model.width=0.125 --set train.precision=32-true --set pipeline.stages=[1,2] --set infer.stages=[2])
fi
if ! "$PY" -m noisytag pipeline "$WORK/data" -o "$WORK/run" "${common[@]}" "${sets[@]}" --no-progress \
    --no-report >"$WORK/pipeline.log" 2>&1; then
    tail -n 40 "$WORK/pipeline.log"
    exit 1
fi
"$PY" -c "import pandas as pd; t = pd.read_csv('$WORK/run/stage_table.csv'); \
print(t[['arch', 'stage', 'lwlrap_curated', 'test_lwlrap', 'seconds']].to_string(index=False))"
echo "(full log: $WORK/pipeline.log)"

step "4. speed, full-width models"
"$PY" benchmarks/gpu_check.py --json "$WORK/gpu_check.json"
step "done"
