#!/usr/bin/env bash
# The one-call GPU check, for a machine with an NVIDIA GPU, its driver,
# Python with PyTorch, and no Rust toolchain and no network. Run it from a
# bundle made by tools/gpu-bundle.sh (prebuilt gpurt and CUDA test
# executables beside this script):
#
#   ./gpu-check.sh [--dry-run] RESULTS_DIR
#
# 1. the CUDA parity tests (every op and whole train steps against the CPU
#    backend); they must pass, and must not skip, before anything is timed;
# 2. a one-epoch `gpurt train --device cuda` on a slice of MNIST;
# 3. gpurt's kernel timings (tests/cuda/bench.rs) and PyTorch's on the same shapes
#    (torch_gpu_bench.py: cuBLAS/cuDNN, fp32 with TF32 off);
# 4. the table, printed last: op, gpurt ms, gpurt GFLOP/s or GB/s,
#    PyTorch ms, and gpurt's speed as a percentage of PyTorch's.
#
# Every step has a timeout (435 s in all, plus a few seconds of kill
# grace), so the whole run stays under 8 minutes. The full
# log and each step's output go to RESULTS_DIR. Exit status: 0 when the
# parity tests passed and the timings ran, 1 otherwise.
set -uo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  shift
fi
if [ $# -ne 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: $0 [--dry-run] RESULTS_DIR" >&2
  exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
bin="$here/bin"
python=${PYTHON:-python3}

# step NAME SECONDS COMMAND...: run with a timeout, output to NAME.log.
declare -a plan_lines=()
plan() { plan_lines+=("$(printf '%-14s %4ss  %s' "$1" "$2" "${*:3}")"); }
plan nvidia-smi 20 nvidia-smi
plan devices 30 "$bin/gpurt" devices
plan parity 180 "$bin/cuda" parity:: --test-threads=1 --nocapture
plan train 45 "$bin/gpurt" train --device cuda --epochs 1 --limit 8192 --quiet --data "mnist:$here/data/mnist" --out "$out/run"
plan gpurt-bench 80 "$bin/cuda" bench:: --ignored --nocapture
plan torch-bench 80 "$python" "$here/torch_gpu_bench.py"

if [ "$dry" = 1 ]; then
  echo "gpu-check plan (results into $out; at most 435 s of timeouts):"
  printf '  %s\n' "${plan_lines[@]}"
  for f in "$bin/gpurt" "$bin/cuda" "$here/torch_gpu_bench.py" "$here/data/mnist"; do
    [ -e "$f" ] || echo "  missing: $f (make the bundle with tools/gpu-bundle.sh)"
  done
  exit 0
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu-check.log"
: >"$log"
exec > >(tee -a "$log") 2>&1
echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
[ -f "$here/MANIFEST" ] && cat "$here/MANIFEST"
start=$SECONDS

# run NAME SECONDS COMMAND...: the command's output goes to NAME.log (and
# this log); returns its status (124 on timeout).
run() {
  local name=$1 secs=$2
  shift 2
  echo
  echo "== $name (limit ${secs}s): $*"
  timeout --kill-after=5 "$secs" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start))s total"
  return "$rc"
}

# NCCL for the world-of-one all-reduce in the parity run: PyTorch's wheel
# ships libnccl.so.2 outside the loader's default path.
nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(os.path.dirname(nvidia.nccl.__file__), "lib"))' 2>/dev/null || true)
if [ -n "$nccl_lib" ] && [ -d "$nccl_lib" ]; then
  export LD_LIBRARY_PATH="$nccl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "NCCL from $nccl_lib"
fi

status=0
run nvidia-smi 20 nvidia-smi || true
run devices 30 "$bin/gpurt" devices || status=1

parity_ok=1
if ! run parity 180 "$bin/cuda" parity:: --test-threads=1 --nocapture; then
  parity_ok=0
elif grep -q 'SKIPPED:' "$out/parity.log"; then
  echo "parity: the tests skipped, so CUDA is not usable here (see devices.log)"
  parity_ok=0
fi
if [ "$parity_ok" = 0 ]; then
  echo "gpu-check: parity FAILED; not timing anything (details in $out/parity.log)"
  exit 1
fi

run train 45 "$bin/gpurt" train --device cuda --epochs 1 --limit 8192 --quiet \
  --data "mnist:$here/data/mnist" --out "$out/run" || status=1
run gpurt-bench 80 "$bin/cuda" bench:: --ignored --nocapture || status=1
run torch-bench 80 "$python" "$here/torch_gpu_bench.py" || status=1

# The table: BENCH <key> <ms> <work> <unit> from gpurt, TORCH <key> <ms>
# from PyTorch, joined by key.
table=$(awk -F'\t' '
  FNR == NR && $1 == "TORCH" { torch[$2] = $3; next }
  $1 == "BENCH" { key[++n] = $2; ms[$2] = $3; work[$2] = $4; unit[$2] = $5 }
  END {
    printf "%-16s %10s %16s %10s %11s\n", "op", "gpurt ms", "gpurt rate", "torch ms", "% of torch"
    for (i = 1; i <= n; i++) {
      k = key[i]
      rate = (ms[k] > 0) ? work[k] / (ms[k] * 1e6) : 0
      t = (k in torch) ? sprintf("%10.3f", torch[k]) : sprintf("%10s", "-")
      pct = (k in torch && ms[k] > 0) ? sprintf("%10.0f%%", 100 * torch[k] / ms[k]) : sprintf("%11s", "-")
      printf "%-16s %10.3f %8.1f %-7s %s %s\n", k, ms[k], rate, unit[k], t, pct
    }
    if (n == 0) print "(no gpurt timings: see gpurt-bench.log)"
  }' "$out/torch-bench.log" "$out/gpurt-bench.log" 2>/dev/null)
echo "$table" >"$out/table.txt"

echo
echo "gpu-check: parity passed; finished in $((SECONDS - start))s; full log $log"
echo "% of torch = PyTorch time / gpurt time (above 100% means gpurt is faster)"
echo
echo "$table"
exit "$status"
