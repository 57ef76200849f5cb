#!/usr/bin/env bash
# GPU throughput per backbone of spaces/full.yaml at 224 px: training and inference images per
# second and peak GPU memory, through maskopt's own train_fold (bf16, channels-last, random
# weights: nothing is downloaded), then what bf16 and channels-last are worth. One command for a
# GPU machine (about 4 minutes on an H200, mostly model builds and cuDNN autotuning);
# results in benchmarks/results/gpu.json.
#
#   benchmarks/gpu.sh                 # on the GPU
#   benchmarks/gpu.sh --dry-run       # anywhere: the same code on the CPU, 2 images per batch
#
# Python: $PYTHON, else .venv/bin/python, else python3. It needs torch, torchvision, timm, numpy, PyYAML;
# maskopt is installed from this checkout (editable, without dependencies) if it is not yet.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch, torchvision, timm, numpy, yaml" 2>/dev/null; then
    echo "gpu.sh: $PY lacks torch, torchvision, timm, numpy or PyYAML; install them (pip install torch torchvision timm pyyaml) or set PYTHON" >&2
    exit 2
fi
if ! "$PY" -c "import maskopt.search.train.loop" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >&2
fi
device=cuda
for arg in "$@"; do [ "$arg" = --dry-run ] && device=auto; done
exec "$PY" -m benchmarks gpu --device "$device" --threads "${THREADS:-1}" "$@"
