#!/usr/bin/env bash
# The GPU benchmark in one command, from the repository root (or a copy of its packages):
#   OUT=/some/dir bash benchmarks/gpu_run.sh            # CUDA, full mode, table in $OUT/cuda_full.md
#   DEVICE=cpu MODE=--quick bash benchmarks/gpu_run.sh  # a dry run of this script on a CPU machine
# Ray is not needed (the sweep row is left out: the GPU image here has no Ray).
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
timeout ${LIMIT_S:-400} $PY -m benchmarks.run --device "$DEVICE" $MODE --skip-sweep --out "$OUT/${DEVICE}_bench.md" 2>&1 \
  | grep -v "^\s*$" | tee "$OUT/${DEVICE}_bench.log"
exit "${PIPESTATUS[0]}"
