#!/usr/bin/env bash
# The GPU checks in one command, from the repository root (the device machine has torch, no Ray):
#   OUT=/some/dir bash benchmarks/gpu_run.sh          # CUDA: benchmarks.gpu_check, figures in $OUT
#   DEVICE=cpu MODE=--quick bash benchmarks/gpu_run.sh  # a dry run of this script on a CPU machine
set -uo pipefail
OUT=${OUT:-/tmp/lrbs-bench}
DEVICE=${DEVICE:-cuda}
MODE=${MODE:-}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)"
} 2>&1 | tee "$OUT/machine.txt"
timeout ${LIMIT_S:-420} $PY -m benchmarks.gpu_check --device "$DEVICE" $MODE --out "$OUT/gpu_check.json" 2>&1 \
  | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
