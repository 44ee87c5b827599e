// Embedding gather and its deterministic scatter-add (see src/ops/embedding.rs).

// params: [n (ids·dim), dim, vocab, weight, ids, out]
@compute @workgroup_size(256)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let e = thread_id(wid, nwg, lid);
    if e >= pu(0u) {
        return;
    }
    let dim = pu(1u);
    let id = arena[pu(4u) + e / dim];
    var v = 0.0;
    if id < pu(2u) {
        v = ld(pu(3u) + id * dim + e % dim);
    }
    st(pu(5u) + e, v);
}

// params: [dim, vocab, ids count, buckets, ids, dy, dweight]
// Thread t owns column t % dim of the rows v with v % buckets == t / dim:
// it zeroes them, then adds the ids' rows in position order. Every
// element has one owner and one summation order: deterministic.
@compute @workgroup_size(256)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let t = thread_id(wid, nwg, lid);
    let dim = pu(0u);
    let vocab = pu(1u);
    let buckets = pu(3u);
    if t >= dim * buckets {
        return;
    }
    let c = t % dim;
    let k = t / dim;
    let dw = pu(6u);
    for (var v = k; v < vocab; v += buckets) {
        st(dw + v * dim + c, 0.0);
    }
    let ids = pu(4u);
    let dy = pu(5u);
    for (var i = 0u; i < pu(2u); i++) {
        let id = arena[ids + i];
        if id < vocab && id % buckets == k {
            st(dw + id * dim + c, ld(dw + id * dim + c) + ld(dy + i * dim + c));
        }
    }
}
