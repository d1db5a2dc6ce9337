#!/usr/bin/env bash
# Every GPU check of the performance issue in one run (<= 8 minutes on an H100/H200; file names end in $TAG), JSON in
# $OUT (the device tool's output folder) or bench/results/. Run on the device machine:
#   bash bench/gpu_session.sh            # with the project's venv carried, or torch installed
# Each step has its own time budget (timeout) so one slow part cannot eat the others; a part
# that fails writes its error to <name>.err and the rest go on.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
PY="${PY:-python}"
TAG="${TAG:-gpu}"  # file suffix, e.g. TAG=h200
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu_info.csv" 2>&1
step() {  # step <name> <seconds> <command...>
  local name=$1 secs=$2; shift 2
  echo "[gpu_session] $name (<= ${secs}s)"
  timeout "$secs" "$@" > "$OUT/$name.log" 2> "$OUT/$name.err" || echo "[gpu_session] $name failed or timed out ($?)"
}
# 1. CUDA tests: graphs of the rollout step and of the whole update step, asymmetric storage
step pytest_cuda 120 $PY -m pytest -q -x tests/test_fast.py tests/test_asymmetric.py -k "cuda or graph"
# 2. the update at the ShadowHand shapes vs its memory floor (goal <= 3x), incl. whole-step graphs
step gpu_update 150 $PY bench/gpu.py --device cuda --parts update --reps 3 --out "$OUT/gpu_update_${TAG}.json"
# 3. the fast-path rows end to end
step gpu_fast 90 $PY bench/gpu.py --device cuda --parts fast --iters 15 --out "$OUT/gpu_fast_${TAG}.json"
# 4. SAPG/CPO vs PPO per-iteration cost on the GPU (the per-row machinery)
step overhead 60 $PY bench/overhead.py --device cuda --num-envs 24576 --iters 6 --rounds 2 --out "$OUT/overhead_${TAG}.json"
# 5. vs rsl_rl at equal learning (needs rsl-rl-lib; skipped with a line when absent)
if $PY -c "import rsl_rl" 2>/dev/null; then
  step peers 90 $PY bench/peers.py --device cuda --out "$OUT/peers_${TAG}.json"
else
  echo "rsl_rl not installed on the device machine" > "$OUT/peers.skipped"
fi
# 6. mjlab Go1: training SPS vs step-only SPS at N = 4096 ... 24576 (needs mjlab)
if $PY -c "import mjlab" 2>/dev/null; then
  step backends 90 $PY bench/backends.py --device cuda --backends mjlab --out "$OUT/backends_mjlab_${TAG}.json"
else
  echo "mjlab not installed on the device machine" > "$OUT/backends.skipped"
fi
echo "[gpu_session] done"
