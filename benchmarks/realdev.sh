#!/usr/bin/env bash
# The real-recording benchmark of issue 27 (benchmarks/README.md "Real recordings (realdev)"): makes
# data/realdev if missing, trains a config's teacher and student for training seeds 0 and 1, scores them
# and compares them with a reference run. Resumable: run the same command again and finished runs are skipped.
#
#   benchmarks/realdev.sh NAME [CONFIG] [options of benchmarks/realdev.py ...]
#   benchmarks/realdev.sh default configs/demo.yaml                       # the reference rows
#   benchmarks/realdev.sh mine configs/demo.yaml --set KEY=VALUE --reference default
#
# Not part of make test or CI: it installs Debian packages and writes ~1.1 GB; ~90 min per pipeline and
# 20-30 min per distillation on 2 cores. PYTHON overrides the interpreter (default: the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: benchmarks/realdev.sh NAME [CONFIG] [options]}
shift
CONFIG=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  CONFIG=(--config "$1")
  shift
fi
exec "${PYTHON:-.venv/bin/python}" benchmarks/realdev.py --name "$NAME" "${CONFIG[@]}" "$@"
