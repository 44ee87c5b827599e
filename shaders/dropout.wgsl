// Inverted dropout. The keep mask is the same integer hash of
// (seed, step, index) as src/ops/dropout.rs, in u32 arithmetic (which
// wraps), so every backend drops the same elements.

fn hash32(x: u32) -> u32 {
    let s = x * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

fn keep(seed: u32, step: u32, idx: u32, p: f32) -> bool {
    let h = hash32(idx ^ hash32(seed ^ hash32(step)));
    return f32(h >> 8u) * (1.0 / 16777216.0) >= p;
}

// params: [0] n, [1] x (= y in place), [2] y, [3] p (f32 bits), [4] seed,
// [5] index of the step scalar, [6] 1 / (1 - p) (f32 bits)
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    let step = u32(max(scalar(pu(5u)), 0.0));
    let v = ld(pu(1u) + i);
    st(pu(2u) + i, select(0.0, v * pf(6u), keep(pu(4u), step, i, pf(3u))));
}
