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
# ISA=avx2 restricts both sides to AVX2 on an AVX-512 host, for a
# like-for-like AVX2 run: PyTorch through ATEN_CPU_CAPABILITY,
# MKL_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA (each checked below: the
# run stops if one did not take effect), gpurt through GPURT_CPU_ISA and a
# build without the gemm crate's AVX-512 kernels (`--no-default-features`).
#
# Needs the peer venv (../shared/peers/setup.sh makes /tmp/peers-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
out=${2:-target/peer-compare}
peers=${PEERS_DIR:-../shared/peers}
py=${PEERS_PYTHON:-/tmp/peers-venv/bin/python}
isa=${ISA:-}
mkdir -p "$out"
gpurt=target/release/gpurt
if [ -z "${REPORT_ONLY:-}" ]; then
    case "$isa" in
    "")
        cargo build --release --quiet
        ;;
    avx2)
        export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
        export GPURT_CPU_ISA=avx2
        # Its own target folder: switching the default build's features
        # back and forth would rebuild everything each time.
        cargo build --release --quiet --no-default-features --features wgpu,cuda,serve \
            --target-dir target/avx2
        cp target/avx2/release/gpurt "$out/gpurt-avx2"
        gpurt=$out/gpurt-avx2
        ;;
    *)
        echo "ISA=$isa: only avx2 can be forced on both sides" >&2
        exit 2
        ;;
    esac
    # The host, and what each side will run on, recorded with the figures.
    {
        echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cpus"
        echo "host vector sets: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512bw|avx512vl)$' | tr '\n' ' ')"
        echo "gpurt: $("$gpurt" devices | grep '^cpu')"
        "$py" - <<'PYCHECK'
import os, subprocess, sys
import torch
cap = torch.backends.cpu.get_cpu_capability()
env = dict(os.environ, ONEDNN_VERBOSE="1", MKL_VERBOSE="1")
probe = "import torch; torch.nn.functional.conv2d(torch.randn(2,3,8,8), torch.randn(4,3,3,3)); torch.randn(64,64) @ torch.randn(64,64)"
log = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
onednn = next((l.split("isa:")[1] for l in log.splitlines() if "isa:" in l), "?")
mkl = "AVX-512" if "AVX-512" in log else ("AVX2" if "AVX2" in log else "?")
print(f"PyTorch {torch.__version__}: ATen {cap}, oneDNN {onednn}, MKL {mkl}")
want = os.environ.get("GPURT_CPU_ISA")
if want == "avx2" and (cap != "AVX2" or "AVX2" not in onednn or mkl != "AVX2"):
    sys.exit("PyTorch did not take the AVX2 restriction")
PYCHECK
    } | tee "$out/host.txt"
fi
for r in $(seq 1 "$rounds"); do
    [ -z "${REPORT_ONLY:-}" ] || break
    echo "round $r/$rounds: PyTorch" >&2
    if [ "$isa" = avx2 ]; then
        # Restricted to AVX2, oneDNN has no bf16 GEMM kernel and the
        # harness's extra bf16 section takes about a minute per call (13
        # minutes a round); no row here uses it, so it is left out.
        "$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ["torch_bench.py"] + sys.argv[2:]
import torch_bench as t; t.bench_gemm_bf16 = lambda: {}; t.main()' \
            "$peers" --passes 1 --skip-mnist --json "$out/torch-$r.json" > "$out/torch-$r.log"
    else
        "$py" "$peers/torch_bench.py" --passes 1 --skip-mnist --json "$out/torch-$r.json" > "$out/torch-$r.log"
    fi
    echo "round $r/$rounds: gpurt" >&2
    "$gpurt" bench --full --json > "$out/gpurt-$r.json"
done
[ ! -f "$out/host.txt" ] || cat "$out/host.txt"
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
    ("  same, gpurt on 1 thread: median", "CIFAR CNN infer b1 median", "cnn batch-1 inference median (1 thread)"),
    ("  same, gpurt on 1 thread: p99", "CIFAR CNN infer b1 p99", "cnn batch-1 inference p99 (1 thread)"),
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
runs = [json.load(open(f"{out}/gpurt-{r}.json")) for r in range(1, rounds + 1)]
p = runs[0]["peaks"]
print(f"gpurt FMA peak (round 1): {p['fma_gflops']:.1f} GFLOP/s on {p['isa']} ({p['threads']} threads), "
      f"{100 * p['fma_gflops'] / p['theoretical_gflops']:.0f}% of {p['flops_per_cycle']} FLOP/cycle/core "
      f"at the measured {p['clock_ghz']:.2f} GHz; gemm crate on {p['gemm_isa']}")
for name in ("gemm 1024^3", "gemm 2048^3"):
    pct = [f["percent_of_peak"] for run in runs for f in run["results"] if f["name"] == name and f.get("percent_of_peak")]
    if pct:
        print(f"gpurt {name}: {statistics.median(pct):.0f}% of the FMA peak measured in the same run (median over rounds)")
PY
