#!/usr/bin/env bash
# `gpurt serve` vs FastAPI + uvicorn around the same CNN in PyTorch, on
# this machine, loopback only: the same run's weights, the same requests
# (MNIST test images as UINT8 KServe v2 JSON, examples/serve_load.rs), the
# same request counts at concurrency 1, 8 and 64, servers alternated
# ROUNDS times. Prints each level's throughput and p50/p99, the embedding
# API's batch-1 latency (the floor), and the ratios the serving issue asks
# for. Both servers get every core: gpurt one worker per core, uvicorn one
# process per core with one torch thread each.
#
#   tools/serve-compare.sh [ROUNDS] [REQUESTS]      (defaults: 2, 20000)
#
# 20000 requests a level: with 8000 (a third of a second at concurrency
# 64) the batching ratio per round spread from 2.56 to 3.43 on a 2-core
# VM; with 20000 from 3.05 to 3.31.
#
# RUN=DIR serves an existing cnn run; otherwise one is trained (1 epoch on
# the bundled MNIST). Needs the peer venv (../shared/peers/setup.sh makes
# /tmp/peers-venv) with `pip install fastapi "uvicorn[standard]" safetensors`
# (uvicorn's production install: httptools and uvloop; without them its
# pure-Python HTTP layer adds a 40 ms delayed-ACK stall to every response).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
requests=${2:-20000}
py=${PEERS_PYTHON:-/tmp/peers-venv/bin/python}
cores=$(nproc)
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
cargo build --release --quiet --bin gpurt --example serve_load
run=${RUN:-}
if [ -z "$run" ]; then
    run=$out/run
    target/release/gpurt train --model cnn --epochs 1 --out "$run" --quiet >/dev/null
fi
wait_up() {
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "server on port $1 did not start" >&2
    exit 1
}
embed=--embed-run
for r in $(seq 1 "$rounds"); do
    target/release/gpurt serve --run "cnn=$run" --addr 127.0.0.1:18431 --quiet &
    pid=$!
    wait_up 18431 /v2/health/ready
    target/release/examples/serve_load --url http://127.0.0.1:18431 --model cnn \
        --requests "$requests" --label gpurt ${embed:+$embed "$run"} | tee -a "$out/results"
    embed=
    # Whether batching happened: the round's batches and their mean size
    # (all levels together), from the server's own metrics.
    curl -sf http://127.0.0.1:18431/metrics | awk '
        /^gpurt_batch_size_sum/ { s = $2 } /^gpurt_batch_size_count/ { c = $2 }
        END { if (c > 0) printf "gpurt batches this round: %d, %.1f examples each\n", c, s / c }'
    kill -TERM $pid
    wait $pid
    GPURT_RUN=$run "$py" -m uvicorn --app-dir tools serve_torch:app --workers "$cores" \
        --port 18432 --log-level warning &
    pid=$!
    wait_up 18432 /docs
    target/release/examples/serve_load --url http://127.0.0.1:18432 --model cnn \
        --requests "$requests" --label fastapi | tee -a "$out/results"
    kill -TERM $pid
    wait $pid || true
done
python3 - "$out/results" <<'PY'
import statistics, sys
rows = {}
embed = None
for line in open(sys.argv[1]):
    f = dict(kv.split("=") for kv in line.split()[1:])
    if line.startswith("embed"):
        embed = float(f["p50_us"])
        continue
    key = (line.split()[0], int(f["concurrency"]))
    rows.setdefault(key, []).append(f)
med = lambda key, field: statistics.median(float(f[field]) for f in rows[key])
print("\nmedians over rounds")
print("| server | concurrency | throughput/s | p50 us | p99 us |")
print("|---|---|---|---|---|")
for (s, c) in sorted(rows):
    print(f"| {s} | {c} | {med((s, c), 'throughput_per_s'):.0f} | {med((s, c), 'p50_us'):.0f} | {med((s, c), 'p99_us'):.0f} |")
# The batching ratio per round (its two levels a few seconds apart, under
# the same machine conditions), then the median over rounds: the host's
# speed drifts between rounds by more than the margins measured here.
per_round = [float(b["throughput_per_s"]) / float(a["throughput_per_s"])
             for a, b in zip(rows[("gpurt", 1)], rows[("gpurt", 64)])]
print(f"\ngpurt throughput c64 / c1: {statistics.median(per_round):.2f}x (target >= 3; "
      f"per round: {', '.join(f'{r:.2f}' for r in per_round)})")
if embed is not None:
    print(f"gpurt p50 at c1 minus embedding API batch-1 p50: {med(('gpurt', 1), 'p50_us') - embed:.0f} us (target <= 150)")
f64 = med(("fastapi", 64), "throughput_per_s")
g64 = med(("gpurt", 64), "throughput_per_s")
print(f"throughput at c64, gpurt / FastAPI: {g64 / f64:.2f}x (target >= 2)")
print(f"p99 at c8, gpurt / FastAPI: {med(('gpurt', 8), 'p99_us') / med(('fastapi', 8), 'p99_us'):.2f} (target <= 0.5)")
PY
