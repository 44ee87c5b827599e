#!/usr/bin/env bash
# Checks the committed PTX (tests/cuda/ptx.rs runs this; CI needs no GPU):
#  1. every kernels/*.ptx assembles with the pinned ptxas for sm_80 and
#     sm_90 with no error and no spill stores or loads;
#  2. regenerating the PTX from kernels/*.cu reproduces every committed
#     file byte for byte (and no .cu lacks its .ptx).
# Prints one line per kernel and architecture: registers, shared memory,
# stack and spills. Exit status 0 only when everything holds.
#
# usage: tools/verify-ptx.sh [--no-rebuild]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rebuild=1
[ "${1:-}" = "--no-rebuild" ] && rebuild=0

env_file="${GPURT_PTX_TOOLS:-$root/target/ptx-tools}/env"
if [ ! -f "$env_file" ]; then
  echo "verify-ptx: no PTX tools ($env_file): run tools/ci-setup-cuda.sh first" >&2
  exit 3
fi
# shellcheck source=/dev/null
. "$env_file"

fail=0
for ptx in "$root"/kernels/*.ptx; do
  name=$(basename "$ptx" .ptx)
  if ! grep -q '^\.version 8\.0$' "$ptx"; then
    echo "FAIL $name.ptx: expected .version 8.0 (NVRTC 12.0), found $(grep -m1 '^\.version' "$ptx")"
    fail=1
  fi
  for arch in sm_80 sm_90; do
    if ! log=$("$PTXAS" -arch="$arch" -v "$ptx" -o /dev/null 2>&1); then
      echo "FAIL $name.ptx $arch: ptxas failed"
      echo "$log"
      fail=1
      continue
    fi
    # One summary line per entry; a non-zero spill or any error fails.
    if ! echo "$log" | awk -v file="$name" -v arch="$arch" '
      /error/ { print "FAIL " file " " arch ": " $0; bad = 1 }
      /Compiling entry function/ { fn = $0; sub(/.*function \047/, "", fn); sub(/\047.*/, "", fn) }
      /Function properties for/ { fn = $NF }
      /bytes stack frame/ {
        stack = $1; st = $5; ld = $9
        if (st + 0 > 0 || ld + 0 > 0) { print "FAIL " file " " arch " " fn ": " st " bytes spill stores, " ld " bytes spill loads"; bad = 1 }
      }
      /Used [0-9]+ registers/ {
        regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
        smem = 0
        if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ .*/, "", smem) }
        printf "%-8s %-5s %-22s %3d registers %6d bytes smem %3d bytes stack, spills %d/%d\n", file, arch, fn, regs, smem, stack, st, ld
      }
      END { exit bad }'; then
      fail=1
    fi
  done
done

for cu in "$root"/kernels/*.cu; do
  [ -f "${cu%.cu}.ptx" ] || { echo "FAIL $(basename "$cu"): no committed .ptx"; fail=1; }
done

if [ "$rebuild" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if bash "$root/tools/build-ptx.sh" --out "$tmp" 2>/dev/null; then
    for ptx in "$root"/kernels/*.ptx; do
      if ! cmp -s "$ptx" "$tmp/$(basename "$ptx")"; then
        echo "FAIL $(basename "$ptx"): differs from a rebuild of its .cu (run tools/build-ptx.sh)"
        fail=1
      fi
    done
    for ptx in "$tmp"/*.ptx; do
      [ -f "$root/kernels/$(basename "$ptx")" ] || { echo "FAIL $(basename "$ptx"): not committed"; fail=1; }
    done
    [ "$fail" = 0 ] && echo "rebuild: all $(find "$tmp" -name '*.ptx' | wc -l) PTX files reproduced byte for byte"
  else
    echo "FAIL: tools/build-ptx.sh could not rebuild the PTX"
    fail=1
  fi
fi

if [ "$fail" = 0 ]; then echo "verify-ptx: OK"; else echo "verify-ptx: FAILED"; fi
exit "$fail"
