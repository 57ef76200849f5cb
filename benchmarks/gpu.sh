#!/usr/bin/env bash
# The GPU benchmark of issue 26 (benchmarks/gpu.py), in one command for one GPU machine, under 8
# minutes on an H200 (each part is time-boxed): (A) a real maskopt trial's training images/s against
# a timm-style loop for two backbones of spaces/full.yaml at batch 64 and 128, and the worth of bf16
# and channels-last; (B) trials per hour with 1, 2 and 4 workers per GPU at demo and full.yaml size;
# (C) host memory of two workers sharing the decoded-image cache. Random weights, nothing downloaded.
#
#   benchmarks/gpu.sh OUT               # on the GPU: OUT/gpu.json (figures) and OUT/gpu.log (what it printed)
#   benchmarks/gpu.sh OUT --dry-run     # anywhere: every part on the CPU with a few tiny images
#   benchmarks/gpu.sh OUT -v            # also maskopt's per-trial lines
#
# Python: $PYTHON, else .venv/bin/python, else python3, with maskopt's dependencies (torch, timm,
# optuna, ...); maskopt itself is installed from this checkout (editable, without dependencies) if
# it is not yet.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: benchmarks/gpu.sh OUT [--dry-run] [-v]   (OUT: the folder for gpu.json and gpu.log)" >&2
    exit 2
fi
out=$1
shift
mkdir -p "$out"
export HF_HUB_OFFLINE=1
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import maskopt.search.study.workers" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >&2
fi
if ! missing=$("$PY" -c "import maskopt.search.study.runner, timm" 2>&1); then
    echo "gpu.sh: $PY cannot run maskopt: ${missing##*$'\n'}; install its dependencies (pip install -e .) or set PYTHON" >&2
    exit 2
fi
device=cuda
for arg in "$@"; do [ "$arg" = --dry-run ] && device=auto; done
"$PY" -m benchmarks gpu --device "$device" --threads "${THREADS:-1}" --results "$out" "$@" 2>&1 | tee "$out/gpu.log"
