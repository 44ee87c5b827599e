#!/usr/bin/env bash
# gpurt vs PyTorch (CPU) in one run: alternates the shared peer harness
# (../shared/peers/torch_bench.py, one pass, no MNIST) with
# `gpurt bench --full --json`, ROUNDS times, then prints each case's median
# over the rounds and the ratio. Alternating puts both under the same
# machine conditions; on a shared host the medians over rounds are what to
# quote.
#
#   tools/peer-compare.sh [ROUNDS] [OUT_DIR]      (defaults: 3, target/peer-compare)
#
# Needs the peer venv (../shared/peers/setup.sh makes /tmp/peers-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
out=${2:-target/peer-compare}
peers=${PEERS_DIR:-../shared/peers}
py=${PEERS_PYTHON:-/tmp/peers-venv/bin/python}
mkdir -p "$out"
# REPORT_ONLY=1: just print the table from an earlier run's files.
[ -n "${REPORT_ONLY:-}" ] || cargo build --release --quiet
for r in $(seq 1 "$rounds"); do
    [ -z "${REPORT_ONLY:-}" ] || break
    echo "round $r/$rounds: PyTorch" >&2
    "$py" "$peers/torch_bench.py" --passes 1 --skip-mnist --json "$out/torch-$r.json" > "$out/torch-$r.log"
    echo "round $r/$rounds: gpurt" >&2
    target/release/gpurt bench --full --json > "$out/gpurt-$r.json"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
# (row label, PyTorch summary label, gpurt figure name, kind)
# kind "time": lower is better, ratio = torch time / gpurt time (>1: gpurt faster).
pairs = [
    ("GEMM 1024^3", "GEMM fp32 1024^3", "gemm 1024^3"),
    ("GEMM 2048^3", "GEMM fp32 2048^3", "gemm 2048^3"),
    ("conv2d fwd N64 C32->64 32x32", "conv2d fwd N64_C32to64_32x32", "conv2d fwd N64 C32->64 32x32 3x3 pad1"),
    ("conv2d bwd (dx+dw)", "conv2d bwd(dx+dw) N64_C32to64_32x32", "conv2d bwd (dx + dw) same shape"),
    ("softmax 4096x4096 (torch out=)", "softmax 4096x4096 (out= preallocated)", "softmax 4096x4096"),
    ("Adam 10M (torch fused=True)", "Adam step 10M params (fused=True)", "adam 10M params"),
    ("CNN train step CIFAR b64", "CIFAR CNN train step b64", "cnn train step cifar b64"),
    ("MLP train step b256", "MLP 2048-512-20 train step b256", "mlp 2048-512-20 train step b256"),
    ("CNN batch-1 inference median", "CIFAR CNN infer b1 median", "cnn batch-1 inference median"),
    ("CNN batch-1 inference p99", "CIFAR CNN infer b1 p99", "cnn batch-1 inference p99"),
]
def torch_ms(r, label):
    rows = json.load(open(f"{out}/torch-{r}.json"))
    for s in rows.get("summary", []):
        if s["benchmark"] == label:
            v, unit = s["values"][0], s["unit"]
            return v / 1e3 if unit == "us" else v
    raise KeyError(label)
def gpurt_ms(r, name):
    figs = json.load(open(f"{out}/gpurt-{r}.json"))
    figs = figs["results"]
    for f in figs:
        if f["name"] == name and not f.get("skipped"):
            return f["seconds"] * 1e3
    raise KeyError(name)
print(f"{'case':<34} {'PyTorch':>11} {'gpurt':>11} {'ratio':>7}   (medians over {rounds} rounds, ms; ratio = PyTorch time / gpurt time)")
for row, tl, gl in pairs:
    t = statistics.median(torch_ms(r, tl) for r in range(1, rounds + 1))
    g = statistics.median(gpurt_ms(r, gl) for r in range(1, rounds + 1))
    print(f"{row:<34} {t:>11.4f} {g:>11.4f} {t / g:>6.2f}x")
PY
