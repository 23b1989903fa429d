#!/usr/bin/env bash
# The one script to run on a GPU machine (device time is short; never iterate there). In order:
#   1. build the CUDA extension ahead of time;
#   2. the whole test suite on the GPU (kernels, fused model, compile, CUDA graphs);
#   3. kernel timings at the stage shapes against a copy measured in the same run (bench/gpu_check_kernels.py);
#   4. where the time goes (bench/profile_modules.py);
#   5. separable vs multi-head attention over N (bench/run_full.py --attention-only, with a log-log plot);
#   6. the default model benchmark (mobilevitv2 bench), whose table is printed last.
# Results land in $OUT (the device tool's folder) or bench/results/. Planned to fit one 10-minute command;
# SWEEP=1 adds the kernels' tile sweeps, FULL=1 the full model sweep (much longer: many compilations).
#   GIT_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_all.sh      (the GPU box has no .git)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
out="${OUT:-bench/results}"
mkdir -p "$out"
device=$(python -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0).replace(' ', '_'))" 2>/dev/null) || {
  echo "no CUDA device: nothing to do"; exit 0; }
status=0
step() { echo; echo "=== $* ($(date +%T))"; }
sweep=(--no-sweep); [ "${SWEEP:-0}" = 1 ] && sweep=(--ir-sweep)

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
echo "commit ${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"

step "1. build the CUDA extension"
python -m mobilevitv2_kernels build 2>&1 | tail -5 || status=1

step "2. tests on the GPU"
python -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$out/tests_$device.txt" | tail -15 || status=1

step "3. kernel timings at the stage shapes"
python bench/gpu_check_kernels.py --skip-tests "${sweep[@]}" --rep 100 --out "$out/kernels_$device.json" 2>&1 | tail -45 || status=1

step "4. where the time goes (width 1.0, batch 256, fp16)"
python bench/profile_modules.py --batch 256 --dtype fp16 2>&1 | tee "$out/profile_$device.txt" | tail -10 || status=1

step "5. separable vs multi-head attention over N"
python bench/run_full.py --attention-only --reps 10 --out "$out/attention_$device" 2>&1 | tail -28 || status=1

if [ "${FULL:-0}" = 1 ]; then
  step "full model sweep"
  python bench/run_full.py --out "$out/full_$device" 2>&1 | tail -60 || status=1
fi

step "6. model benchmark (mobilevitv2 bench)"
python -m mobilevitv2.cli bench --out "$out/bench_$device" 2>&1 | tail -30 || status=1
echo "status $status; results in $out"
exit $status
