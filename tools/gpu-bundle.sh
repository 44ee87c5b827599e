#!/usr/bin/env bash
# Gathers everything tools/gpu-check.sh needs into one folder (default
# gpu-bundle/, git-ignored) for a GPU machine with no Rust toolchain: the
# release gpurt binary, the prebuilt CUDA test executables (parity tests
# and the kernel benchmark, from `cargo test --release --no-run`), the
# check script, the PyTorch benchmark and the bundled MNIST. Debug info is
# stripped; the folder must stay under 64 MiB.
#
# usage: tools/gpu-bundle.sh [OUTDIR]      then copy OUTDIR to the GPU
#        machine and run OUTDIR/gpu-check.sh RESULTS_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="${1:-$root/gpu-bundle}"
limit_mib=64
cd "$root"

# Executables of the given cargo JSON messages, by target name.
executables() {
  python3 -c '
import json, sys
want = set(sys.argv[1:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        print(m["target"]["name"], m["executable"])
' "$@"
}

echo "gpu-bundle: building (release)"
# With NCCL: the parity run includes its world-of-one all-reduce.
gpurt=$(cargo build --release --features nccl --bin gpurt --message-format=json | executables gpurt)
tests=$(cargo test --release --features nccl --no-run --message-format=json --test cuda \
  | executables cuda)

rm -rf "$out"
mkdir -p "$out/bin" "$out/data"
while read -r name path; do
  [ -n "$name" ] || continue
  cp "$path" "$out/bin/$name"
done <<<"$gpurt
$tests"
for b in gpurt cuda; do
  [ -x "$out/bin/$b" ] || { echo "gpu-bundle: $b was not built" >&2; exit 1; }
  if command -v strip >/dev/null; then strip --strip-debug "$out/bin/$b"; fi
done
cp tools/gpu-check.sh tools/torch_gpu_bench.py "$out/"
cp -r data/mnist "$out/data/"
{
  echo "gpurt GPU bundle"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "built:  $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  echo "run:    ./gpu-check.sh RESULTS_DIR   (or --dry-run RESULTS_DIR)"
} >"$out/MANIFEST"

size_kib=$(du -sk "$out" | cut -f1)
echo "gpu-bundle: $out is $((size_kib / 1024)) MiB"
ls -l "$out" "$out/bin"
if [ "$size_kib" -ge $((limit_mib * 1024)) ]; then
  echo "gpu-bundle: over the ${limit_mib} MiB limit" >&2
  exit 1
fi
