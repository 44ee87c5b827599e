#!/usr/bin/env bash
# Compiles every kernels/*.cu to PTX with the pinned NVRTC (see
# tools/ci-setup-cuda.sh) and writes kernels/<name>.ptx, which is committed:
# building gpurt needs no CUDA toolkit, the PTX is embedded with include_str!.
#
# usage: tools/build-ptx.sh [--out DIR]     (default: kernels/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/kernels"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "build-ptx: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

env_file="${GPURT_PTX_TOOLS:-$root/target/ptx-tools}/env"
if [ ! -f "$env_file" ]; then
  echo "build-ptx: no PTX tools ($env_file): run tools/ci-setup-cuda.sh first" >&2
  exit 1
fi
# shellcheck source=/dev/null
. "$env_file"
"$PYTHON" "$root/tools/nvrtc_ptx.py" --lib "$NVRTC_LIB" --out "$out" "$root"/kernels/*.cu
