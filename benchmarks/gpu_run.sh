#!/usr/bin/env bash
# The GPU checks in one command, from the repository root (the device machine has torch, no Ray):
#   OUT=/some/dir bash benchmarks/gpu_run.sh            # CUDA: benchmarks.gpu_check, precision_check, paper_projection
#   DEVICE=cpu MODE=--quick bash benchmarks/gpu_run.sh  # a dry run of this script on a CPU machine
#   CHECKS=precision_check ...                          # only the named checks (gpu_check's dry run alone takes minutes on 2 cores)
# Each check has its own time limit (seconds), so one that hangs cannot starve the other; each
# writes $OUT/<check>.log and $OUT/<check>.json, and $OUT/machine.txt says what ran where.
set -uo pipefail
OUT=${OUT:-/tmp/lrbs-bench}
DEVICE=${DEVICE:-cuda}
MODE=${MODE:-}
PY=${PY:-python3}
CHECKS=${CHECKS:-gpu_check precision_check paper_projection}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit \
    --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0), '| cuDNN', torch.backends.cudnn.version())"
  lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)"
} 2>&1 | tee "$OUT/machine.txt"
rc=0
for check in $CHECKS; do
  case $check in
    gpu_check) limit=${GPU_CHECK_LIMIT_S:-${LIMIT_S:-240}} ;;
    precision_check) limit=${PRECISION_LIMIT_S:-200} ;;
    paper_projection) limit=${PROJECTION_LIMIT_S:-300} ;;
    *) echo "CHECKS: unknown check $check (gpu_check, precision_check, paper_projection)"; exit 2 ;;
  esac
  start=$SECONDS
  timeout "$limit" $PY -m "benchmarks.$check" --device "$DEVICE" $MODE --out "$OUT/$check.json" 2>&1 | tee "$OUT/$check.log"
  status=${PIPESTATUS[0]}
  echo "$check: exit $status after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/machine.txt"
  [ "$status" -ne 0 ] && rc=$status
done
exit "$rc"
