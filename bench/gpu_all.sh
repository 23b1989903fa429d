#!/usr/bin/env bash
# The one script to run on a GPU machine (device time is short; never iterate there):
#   1. build the CUDA extension ahead of time,
#   2. run the whole test suite on the GPU (kernels, fused model, compile, CUDA graphs),
#   3. time the kernels at the stage shapes against a copy (bench/gpu_check_kernels.py),
#   4. the default model benchmark (mobilevitv2 bench) and the attention-scaling sweep,
# and print a short table last. Results land in $OUT (the device tool's folder) or bench/results/.
#   bash bench/gpu_all.sh            # about 8 minutes on an H100/H200
#   FULL=1 bash bench/gpu_all.sh     # also the full model sweep (much longer: many compilations)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
out="${OUT:-bench/results}"
mkdir -p "$out"
device=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))" 2>/dev/null) || {
  echo "no CUDA device: nothing to do"; exit 0; }
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
git rev-parse --short HEAD 2>/dev/null || true

step "build the CUDA extension"
python -m mobilevitv2_kernels build 2>&1 | tail -20 || status=1

step "tests on the GPU"
python -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -25 || status=1

step "kernel timings at the stage shapes"
python bench/gpu_check_kernels.py --skip-tests --out "$out/kernels_$device.json" 2>&1 | tail -40 || status=1

step "model benchmark (mobilevitv2 bench)"
python -c "from mobilevitv2.benchmark import main; main()" --out "$out/bench_$device" 2>&1 | tail -30 || status=1

step "separable vs multi-head attention over N"
python bench/run_full.py --attention-only --out "$out/attention_$device" 2>&1 | tail -30 || status=1

step "where the time goes (per-part forward, width 1.0, batch 256, fp16)"
python bench/profile_modules.py --batch 256 --dtype fp16 2>&1 | tee "$out/profile_$device.txt" | tail -12 || status=1

if [ "${FULL:-0}" = 1 ]; then
  step "full model sweep"
  python bench/run_full.py --out "$out/full_$device" 2>&1 | tail -60 || status=1
fi
step "done (status $status); results in $out"
exit $status
