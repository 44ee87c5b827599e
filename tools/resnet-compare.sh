#!/usr/bin/env bash
# ResNet-20 on Fashion-MNIST, gpurt vs PyTorch (CPU), in one run: one
# training epoch each, alternated ROUNDS times, same data, same model
# (tools/resnet_fashion_torch.py is the PyTorch side), same settings (SGD
# momentum 0.9, lr 0.1 cosine, weight decay 5e-4, batch 128, crop pad 2,
# horizontal flips, 10% held out), same thread count. Prints each epoch's
# training seconds, each round's ratio, the medians and the ratio
# gpurt / PyTorch. This machine's speed drifts by ~15% over minutes, so
# only rounds of one run compare, and 5 are the default.
#
# With CONCURRENT=1 the two epochs of a round run at the same time, one
# thread each, each pinned to its own core (swapped every round): both
# see the same machine at the same moment, so its drift cancels within
# each round.
#
#   tools/resnet-compare.sh [ROUNDS] [THREADS]     (defaults: 5, 2)
#   CONCURRENT=1 tools/resnet-compare.sh [ROUNDS]  (one thread each)
#
# Needs the peer venv (../shared/peers/setup.sh makes /tmp/peers-venv) and
# Fashion-MNIST (tools/ci-setup-data.sh, or FASHION_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
threads=${2:-2}
py=${PEERS_PYTHON:-/tmp/peers-venv/bin/python}
data=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo build --release --quiet
concurrent=${CONCURRENT:-0}
if [ "$concurrent" = 1 ]; then
    threads=1
fi
g=()
t=()
for r in $(seq 1 "$rounds"); do
    pin_g=() pin_t=()
    if [ "$concurrent" = 1 ]; then
        pin_g=(taskset -c $((r % 2))) pin_t=(taskset -c $(((r + 1) % 2)))
    fi
    RAYON_NUM_THREADS=$threads "${pin_g[@]}" target/release/gpurt train --data "fashion-mnist:$data" \
        --model resnet20 --epochs 1 --batch 128 --optimizer sgd --lr 0.1 \
        --lr-schedule cosine --weight-decay 5e-4 --crop-pad 2 --hflip \
        --out "$out/run$r" --quiet > /dev/null &
    gpid=$!
    if [ "$concurrent" != 1 ]; then
        wait "$gpid"
    fi
    "${pin_t[@]}" "$py" tools/resnet_fashion_torch.py --data "$data" --epochs 1 --threads "$threads" \
        > "$out/torch$r.txt"
    wait "$gpid"
    s=$(awk -F, 'NR==2 {print $7}' "$out/run$r/metrics.csv")
    g+=("$s")
    echo "round $r: gpurt   $s s" >&2
    s=$(tail -1 "$out/torch$r.txt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["epochs"][0]["train_s"])')
    t+=("$s")
    echo "round $r: PyTorch $s s" >&2
done
python3 - "${g[*]}" "${t[*]}" "$threads" "$concurrent" <<'PY'
import statistics, sys
g = [float(v) for v in sys.argv[1].split()]
t = [float(v) for v in sys.argv[2].split()]
mg, mt = statistics.median(g), statistics.median(t)
how = ", both at once on separate cores" if sys.argv[4] == "1" else ", one after the other"
print(f"ResNet-20 Fashion-MNIST, {sys.argv[3]} threads each{how}, one epoch of 54,000 images")
print(f"  gpurt   {' '.join(f'{v:.1f}' for v in g)} s, median {mg:.1f} s")
print(f"  PyTorch {' '.join(f'{v:.1f}' for v in t)} s, median {mt:.1f} s")
ratios = [a / b for a, b in zip(g, t)]
print(f"  per round {' '.join(f'{v:.3f}' for v in ratios)}, median {statistics.median(ratios):.3f}")
print(f"  gpurt / PyTorch = {mg / mt:.3f}")
PY
