#!/usr/bin/env bash
# The benchmark's GPU mode in one command, for a lent GPU machine with no network (README: Performance).
#
#   bash benchmarks/gpu_run.sh           # GPU machine: builds random-weight SDXL (fp16), FLOPs, per-step overhead,
#                                        # paired timing, memory; report in $OUT/gpu-report.md (~7 min on an H100)
#   bash benchmarks/gpu_run.sh --smoke   # here: the same steps on a tiny model (on the CPU when there is no GPU)
#
# Needs torch. When diffusers is missing, installs the wheels carried in .whl/ (benchmarks/fetch_wheels.sh).
# Files written to $OUT: gpu-report.md, gpu-raw.json, gpu-log.txt, gpu-env.txt, worker-logs.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
WORKDIR="${WORKDIR:-/tmp/instantstyle-bench}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
extra=()
if [[ "${1:-}" == "--smoke" ]]; then
  extra=(--smoke)
  WORKDIR="$WORKDIR-smoke"
fi

if ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: diffusers is not installed and .whl/ has no wheels (run benchmarks/fetch_wheels.sh first)" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  nproc; free -g | head -2; df -h /tmp | tail -1
} > "$OUT/gpu-env.txt" 2>&1
cat "$OUT/gpu-env.txt"

status=0
timeout "${BENCH_TIMEOUT:-500}" "$PY" benchmarks/bench.py --gpu "${extra[@]}" --workdir "$WORKDIR" \
  --out "$OUT/gpu-report.md" --json "$OUT/gpu-raw.json" 2> >(tee "$OUT/gpu-log.txt" >&2) || status=$?
tail -n 40 "$WORKDIR"/logs/*.log > "$OUT/worker-logs.txt" 2>/dev/null || true
if [[ $status -ne 0 ]]; then
  echo "bench.py exited with $status; the report so far is in $OUT/gpu-report.md" >&2
  cat "$OUT/gpu-report.md" 2>/dev/null || true
fi
exit $status
