// Embedding gather and its deterministic scatter-add (src/ops/embedding.rs).
#include "common.cuh"

// out[e] = weight[ids[e / dim], e % dim], zeros for an id past the vocabulary.
extern "C" __global__ void __launch_bounds__(BLOCK)
    embedding_forward(const float* weight, const u32* ids, float* out, int n, int dim, int vocab) {
  GRID_LOOP(e, n) {
    u32 id = ids[e / dim];
    out[e] = id < (u32)vocab ? weight[(int)id * dim + e % dim] : 0.0f;
  }
}

// Thread t owns column t % dim of the rows v with v % buckets == t / dim:
// it zeroes them, then adds the ids' rows in position order. Every element
// has one owner and one summation order, so the result is the same every
// run (float atomics would not be).
extern "C" __global__ void __launch_bounds__(BLOCK)
    embedding_backward(const u32* ids, const float* dy, float* dweight, int dim, int vocab,
                       int n_ids, int buckets) {
  GRID_LOOP(t, dim * buckets) {
    int c = t % dim, k = t / dim;
    for (int v = k; v < vocab; v += buckets) dweight[v * dim + c] = 0.0f;
    for (int i = 0; i < n_ids; i++) {
      u32 id = ids[i];
      if (id < (u32)vocab && (int)(id % (u32)buckets) == k) dweight[(int)id * dim + c] += dy[i * dim + c];
    }
  }
}
