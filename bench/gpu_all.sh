#!/usr/bin/env bash
# The GPU checks in two stages, each one command that ends well inside a 9-minute window on a bare H100/H200
# machine. Correctness before speed; every result is written as it comes, so a time limit keeps what ran.
#
#   bash bench/gpu_all.sh verify    build the CUDA extension for the visible GPU; the first-use check of every
#                                   backend x op x dtype with its cost; the GPU tests (every op x backend x
#                                   dtype, forward and backward, fused-vs-eager models) in parallel with a
#                                   per-test time limit, every failure's name and traceback in one log
#   bash bench/gpu_all.sh measure   the performance targets (each against the baseline it names, a row
#                                   written as soon as it is measured); then the kernel timings, the
#                                   inverted-residual variant comparison first
#
# Measured on an H200 (commit f37c05c): verify 233 s (the build 22 s, the 190 tests 147 s on 8
# workers), measure 177 s (targets 126 s, kernels 51 s), the machine's start about 30 s. Call measure right
# after verify, while the machine is still warm (30 s): both, a start and a rerun fit in 15 minutes.
#
# Results: at most 8 files per stage in $OUT (default bench/results/gpu-<stage>). The exit status is
# non-zero if any step failed or ran out of time, and the last line says which.
# Environment: PYTHON (default python3), GIT_COMMIT (the GPU machine's copy has no .git), TOTAL_S (the
# stage's time budget, seconds), JOBS (test workers), and DRY_RUN=1: the same stages on a CPU-only machine
# (Triton interpreter, tiny shapes, nothing compiled that need not be), which the test suite runs.
set -uo pipefail
cd "$(dirname "$0")/.."

stage="${1:-}"
# Budgets: both stages and a machine start fit a 15-minute lease (the step limits below add up to them).
case "$stage" in
  verify) budget=${TOTAL_S:-400}; files=(environment.txt build.txt check.txt check.json tests.txt tests.xml failures.txt) ;;
  measure) budget=${TOTAL_S:-400}; files=(environment.txt targets_log.txt targets.json targets.csv targets.txt kernels_log.txt kernels.json) ;;
  *) echo "usage: bash bench/gpu_all.sh verify|measure   (DRY_RUN=1 for a CPU dry run)" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
dry=${DRY_RUN:-0}
out="${OUT:-bench/results/gpu-$stage}"
mkdir -p "$out" || { echo "error: cannot create the results folder $out" >&2; exit 2; }
(cd "$out" && rm -f -- "${files[@]}")  # a previous run's results must not pass for this one's
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GIT_COMMIT="${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
else
  unset TRITON_INTERPRET
  unset TORCH_CUDA_ARCH_LIST  # build for the visible GPU's architecture only
fi

started=$SECONDS
failed=()
say() { echo; echo "=== $* ($(date +%T), $((SECONDS - started)) s in)"; }
# step NAME LIMIT LOG CMD...: CMD for at most LIMIT seconds (never past the stage's budget), its output both
# shown and written to LOG as it comes. A failure or a time-out is recorded by NAME.
step() {
  local name=$1 limit=$2 log=$3; shift 3
  local left=$((budget - (SECONDS - started)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 10 ]; then echo "(skipped: the stage's ${budget} s are spent)"; failed+=("$name (no time left)"); return; fi
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "(stopped at its ${limit} s limit)"; failed+=("$name (time limit)")
  elif [ "$rc" -ne 0 ]; then
    failed+=("$name (exit $rc)")
  fi
}

say "environment"
if [ "$dry" = 1 ]; then
  echo "DRY_RUN=1: CPU only, Triton interpreter, tiny shapes; nothing here is a GPU result"
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || failed+=("nvidia-smi")
fi
"$python" - "$dry" <<'PY' 2>&1 | tee "$out/environment.txt"
import os, sys
import torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "not installed"
dry = sys.argv[1] == "1"
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton_version, "python", sys.version.split()[0])
print("commit", os.environ["GIT_COMMIT"])
if not dry:
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device is visible (DRY_RUN=1 runs the stages on a CPU)")
    print("device", torch.cuda.get_device_name(0), "capability", "%d.%d" % torch.cuda.get_device_capability(0))
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "error: the environment probe failed (above); nothing was run" >&2; exit 1; }

if [ "$stage" = verify ]; then
  say "1. build the CUDA extension (the visible GPU's architecture)"
  if [ "$dry" = 1 ]; then
    echo "(skipped under DRY_RUN: no GPU to build for; the test suite compiles it for sm_80/sm_90 anyway)"
  else
    step build "${BUILD_S:-100}" "$out/build.txt" "$python" -m mobilevitv2_kernels build -q
  fi

  say "2. the first-use check of every backend x op x dtype, and its cost"
  step check "${CHECK_S:-60}" "$out/check.txt" "$python" -m mobilevitv2_kernels check --out "$out/check.json"

  say "3. the GPU tests, in parallel, each under a time limit"
  # -m gpu selects every CUDA case: the ops on every backend and dtype (forward, backward, opcheck, compile),
  # the CUDA extension, and the fused-vs-eager models. On a dry run they all skip, which tests the plumbing.
  jobs=${JOBS:-$([ "$dry" = 1 ] && echo 2 || echo 8)}
  # Each failure's name and traceback go to failures.txt the moment it happens (tests/conftest.py), so a
  # run stopped at its limit keeps them; tests.txt has every test's outcome as it comes.
  : > "$out/failures.txt"
  export MOBILEVITV2_FAILURE_LOG="$out/failures.txt"
  step tests "${TESTS_S:-240}" "$out/tests.txt" \
    "$python" -m pytest tests -m gpu -p no:cacheprovider -n "$jobs" --timeout "${TEST_TIMEOUT_S:-180}" \
    -v -rfEs --tb=short --junitxml "$out/tests.xml"
  [ -s "$out/failures.txt" ] && { echo "--- failures (also in failures.txt):"; cat "$out/failures.txt"; }
else
  say "1. the performance targets"
  if [ "$dry" = 1 ]; then targets=(--quick --device cpu); else targets=(); fi
  step targets "${TARGETS_S:-260}" "$out/targets_log.txt" "$python" -m mobilevitv2.cli bench --suite targets "${targets[@]}" --out "$out/targets"

  say "2. kernel timings at the stage shapes (the inverted-residual variants first)"
  if [ "$dry" = 1 ]; then kernels=(--smoke); else kernels=(--rep 50); fi
  step kernels "${KERNELS_S:-140}" "$out/kernels_log.txt" "$python" bench/gpu_check_kernels.py "${kernels[@]}" --out "$out/kernels.json"
fi

say "done"
count=$(find "$out" -maxdepth 1 -type f | wc -l)
echo "$count result files in $out:"; ls -1 "$out"
[ "$count" -le 8 ] || failed+=("more than 8 result files")
if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu_all.sh $stage: FAILED: ${failed[*]} ($((SECONDS - started)) s)"
  exit 1
fi
echo "gpu_all.sh $stage: all steps passed ($((SECONDS - started)) s)"
