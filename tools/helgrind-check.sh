#!/usr/bin/env bash
# Runs the 8-thread embedding stress test under valgrind's helgrind and
# classifies every reported race by where its two accesses happen. Exits
# non-zero if either access of any race is in gpurt's own code.
#
#   tools/helgrind-check.sh [seconds]      (default 30; valgrind runs ~50x slower)
#
# Helgrind only understands pthread primitives. Races it reports inside the
# Rust standard library (its stack-overflow handler's thread map and the
# test harness's channels, both guarded by atomics) or rayon's registry
# start-up are listed by origin but do not fail the check: they are
# synchronised by atomics helgrind cannot see, and none is in gpurt.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
log=${HELGRIND_LOG:-target/helgrind.log}
cargo test --release --test model --no-run 2>&1 | tail -1
bin=$(ls -t target/release/deps/model-* | grep -v '\.d$' | head -1)
GPURT_STRESS_SECS=$secs valgrind --tool=helgrind --log-file="$log" "$bin" stress:: --test-threads=1
python3 - "$log" src <<'PY'
import os, re, sys
log, src = sys.argv[1], sys.argv[2]
ambiguous = {"mod.rs", "lib.rs", "main.rs", "error.rs"}
ours = {f for _, _, fs in os.walk(src) for f in fs if f.endswith(".rs")} - ambiguous
frame = re.compile(r"(?:at|by) 0x[0-9A-F]+: (.*)")

def in_gpurt(fr):
    if "gpurt::" in fr:
        return True
    m = re.search(r"\(([\w.]+\.rs):\d+\)", fr)
    return bool(m and m.group(1) in ours and not re.search(r"\b(std|core|alloc)::", fr))

def origin(stack):
    text = " ".join(stack)
    for key, name in (("stack_overflow", "std: stack-overflow thread map"),
                      ("mpmc", "std: test harness channel"),
                      ("set_output_capture", "std: test output capture"),
                      ("rayon_core", "rayon: registry"),
                      ("gemm", "gemm crate")):
        if key in text:
            return name
    return "other: " + (stack[0] if stack else "?")

races, counts, bad = 0, {}, []
lines = open(log).read().splitlines()
i = 0
while i < len(lines):
    if "Possible data race" in lines[i]:
        races += 1
        stacks, cur = [], None
        j = i + 1
        while j < len(lines) and "Possible data race" not in lines[j]:
            m = frame.search(lines[j])
            if "Possible data race" in lines[j - 1] or "This conflicts with" in lines[j]:
                cur = []
                stacks.append(cur)
            if m and cur is not None:
                cur.append(m.group(1))
            j += 1
        tops = [s[0] for s in stacks if s]
        if any(in_gpurt(t) for t in tops):
            bad.append(tops)
        o = origin(stacks[0] if stacks else [])
        counts[o] = counts.get(o, 0) + 1
        i = j
    else:
        i += 1
print(f"helgrind: {races} race contexts")
for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"  {v:4}  {k}")
if bad:
    print(f"FAIL: {len(bad)} race(s) with an access in gpurt's own code:")
    for t in bad[:10]:
        print("   ", " | ".join(t))
    sys.exit(1)
print("no race with an access in gpurt's own code")
PY
