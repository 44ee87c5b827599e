#!/usr/bin/env bash
# gpurt vs burn on one wgpu adapter (lavapipe here), in one run: alternates
# burn's harness (../shared/peers/burn-bench, its `cnn` section: CIFAR CNN
# train step at batch 64, batch-1 inference median and p99) with
# `gpurt bench --device wgpu --json`, ROUNDS times, and prints each case's
# median over the rounds and the ratio, under a host line. With
# OLD_GPURT=path/to/an/older/gpurt it also runs that binary's bench and
# prints GEMM 1024^3 and the CIFAR conv layer against it.
#
#   tools/wgpu-compare.sh [ROUNDS] [OUT_DIR]      (defaults: 2, target/wgpu-compare)
#
# burn's harness is built once (about 27 minutes on 2 cores):
#   cd ../shared/peers/burn-bench && CARGO_TARGET_DIR=/tmp/burn-bench-target cargo build --release
# BURN_BENCH names the binary (default /tmp/burn-bench-target/release/burn-bench).
# Its first wgpu run autotunes for minutes; later runs reuse the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
out=${2:-target/wgpu-compare}
burn=${BURN_BENCH:-/tmp/burn-bench-target/release/burn-bench}
old=${OLD_GPURT:-}
mkdir -p "$out"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
if [ ! -x "$burn" ]; then
    echo "wgpu-compare: no burn harness at $burn (see the header for how to build it)" >&2
    exit 1
fi
if [ -z "${REPORT_ONLY:-}" ]; then
    cargo build --release --quiet
    for r in $(seq 1 "$rounds"); do
        echo "round $r/$rounds: burn" >&2
        BENCH_SECTIONS=cnn WGPU_BACKEND=vulkan "$burn" wgpu >"$out/burn-$r.txt"
        echo "round $r/$rounds: gpurt" >&2
        target/release/gpurt bench --device wgpu --json >"$out/gpurt-$r.json"
        if [ -n "$old" ]; then
            echo "round $r/$rounds: $old" >&2
            "$old" bench --device wgpu --json >"$out/old-$r.json"
        fi
    done
fi
python3 - "$out" "$rounds" "$old" <<'EOF'
import json, re, statistics, subprocess, sys
out, rounds, old = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def burn(r):
    v = {}
    for line in open(f"{out}/burn-{r}.txt"):
        m = re.match(r"RESULT (\S+) (\S+) (\S+)", line)
        if m:
            v[m.group(1)] = float(m.group(2))
    return v

def bench(path):
    d = json.load(open(path))
    return d["device"], {f["name"]: f for f in d["results"] if not f.get("skipped")}

def med(xs):
    return statistics.median(xs)

cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"],
                     capture_output=True, text=True).stdout.strip()
device, _ = bench(f"{out}/gpurt-1.json")
print(f"host: {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores; adapter: {device}; {rounds} rounds, medians")
rows = [
    ("CIFAR CNN train step, batch 64 (ms)", "train_b64_ms", "cnn train step cifar b64", lambda f: f["seconds"] * 1e3),
    ("batch-1 inference, median (us)", "infer_b1_median_us", "cnn batch-1 inference median", lambda f: f["value"]),
    ("batch-1 inference, p99 (us)", "infer_b1_p99_us", "cnn batch-1 inference p99", lambda f: f["value"]),
]
print(f"{'case':40} {'burn':>10} {'gpurt':>10} {'gpurt/burn':>11}")
for label, bkey, gname, get in rows:
    b = med([burn(r)[bkey] for r in range(1, rounds + 1)])
    g = med([get(bench(f"{out}/gpurt-{r}.json")[1][gname]) for r in range(1, rounds + 1)])
    print(f"{label:40} {b:10.1f} {g:10.1f} {g / b:11.2f}")
if old:
    print()
    print(f"{'case (GFLOP/s)':40} {'old':>10} {'gpurt':>10} {'gpurt/old':>11}")
    for name in ["gemm 1024^3", "conv2d fwd N64 C32->64 32x32 3x3 pad1"]:
        o = med([bench(f"{out}/old-{r}.json")[1][name]["value"] for r in range(1, rounds + 1)])
        g = med([bench(f"{out}/gpurt-{r}.json")[1][name]["value"] for r in range(1, rounds + 1)])
        print(f"{name:40} {o:10.1f} {g:10.1f} {g / o:11.2f}")
    cold = [bench(f"{out}/gpurt-{r}.json")[1]["cold start to first train step (cnn, mnist shape)"]["value"] for r in range(1, rounds + 1)]
    print(f"{'gpurt cold start (ms)':40} {'':10} {med(cold):10.1f}")
EOF
