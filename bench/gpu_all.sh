#!/usr/bin/env bash
# The one script to run on a GPU machine (device time is short; never iterate there). In order, each step
# under its own time limit so that one slow step cannot starve the rest, all within one 10-minute command:
#   1. build the CUDA extension ahead of time (its compile errors print here);
#   2. the performance targets (mobilevitv2 bench --suite targets): every provider's first output is checked
#      against ours eager in fp32 before it is timed, and results are written after every case, so a time
#      limit keeps what ran;
#   3. the GPU tests (pytest -m gpu: kernels on CUDA, the fused model, compile, CUDA graphs);
#   4. kernel timings at the stage shapes against a copy measured in the same run (bench/gpu_check_kernels.py);
#   5. where the time goes (bench/profile_modules.py);
#   6. the full test suite, if time is left.
# The targets' table is printed again last. Results land in $OUT (the device tool's folder) or bench/results/.
# SWEEP=1 adds the kernels' tile sweeps, FULL=1 the full model sweep (much longer: many compilations).
#   GIT_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_all.sh      (the GPU box has no .git)
# Limits (seconds; override by environment): BUILD_S, TARGETS_S, TESTS_S, KERNELS_S, PROFILE_S, TOTAL_S.
# STEPS picks steps (default "build targets tests kernels profile suite"); with 15 minutes of device time,
# run the default once (10 minutes) and, if time is left, STEPS="build tests kernels" TOTAL_S=200 again.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
out="${OUT:-bench/results}"
mkdir -p "$out"
device=$(python -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0).replace(' ', '_'))" 2>/dev/null) || {
  echo "no CUDA device: nothing to do"; exit 0; }
started=$SECONDS
total=${TOTAL_S:-575}
status=0
step() { echo; echo "=== $* ($(date +%T), $((SECONDS - started)) s in)"; }
# run LIMIT LINES LOG CMD...: CMD for at most LIMIT seconds (never past the total budget), its output to LOG,
# then the last LINES lines of it.
run() {
  local limit=$1 lines=$2 log=$3; shift 3
  local left=$((total - (SECONDS - started)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "(skipped: no time left)"; return 0; fi
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  tail -n "$lines" "$log"
  [ $rc -eq 124 ] && echo "(stopped at its ${limit} s limit)"
  [ $rc -ne 0 ] && status=1
  return 0
}
sweep=(--no-sweep); [ "${SWEEP:-0}" = 1 ] && sweep=(--ir-sweep)
steps=" ${STEPS:-build targets tests kernels profile suite} "
want() { [[ "$steps" == *" $1 "* ]]; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
echo "commit ${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"

want build && step "1. build the CUDA extension" && run "${BUILD_S:-150}" 5 "$out/build_$device.txt" python -m mobilevitv2_kernels build

want targets && step "2. performance targets" && run "${TARGETS_S:-400}" 45 "$out/targets_$device.txt" python -m mobilevitv2.cli bench --suite targets --out "$out/targets_$device"

want tests && step "3. GPU tests" && run "${TESTS_S:-90}" 15 "$out/tests_gpu_$device.txt" python -m pytest tests -m gpu -q -p no:cacheprovider

want kernels && step "4. kernel timings at the stage shapes" && run "${KERNELS_S:-40}" 45 "$out/kernels_$device.txt" python bench/gpu_check_kernels.py --skip-tests "${sweep[@]}" --rep 50 --out "$out/kernels_$device.json"

want profile && step "5. where the time goes (width 1.0, batch 256, fp16)" && run "${PROFILE_S:-30}" 12 "$out/profile_$device.txt" python bench/profile_modules.py --batch 256 --dtype fp16

if [ "${FULL:-0}" = 1 ]; then
  step "full model sweep"
  run 3600 60 "$out/full_$device.txt" python bench/run_full.py --out "$out/full_$device"
fi

want suite && step "6. the whole test suite (what time is left)" && run 600 6 "$out/tests_$device.txt" python -m pytest tests -q -p no:cacheprovider

if [ -f "$out/targets_$device.json" ]; then
  step "targets (again, last)"
  python - "$out/targets_$device.json" <<'PY' || status=1
import json, sys
from mobilevitv2.benchmark import Result, format_table
data = json.load(open(sys.argv[1]))
print(data["environment"])
print(format_table([Result(**row) for row in data["results"]]))
PY
fi
echo "status $status; $((SECONDS - started)) s; results in $out"
exit $status
