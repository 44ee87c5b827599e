// Cross-entropy from logits with integer labels. Forward: one warp per
// row computes lse − x[label] in a single online pass over the row, into
// a per-row buffer that reduce.cu then averages in a fixed order.
// Backward recomputes the softmax (cheaper than storing it). A label out
// of range makes that row NaN, so a bad label can never train silently.
#include "common.cuh"

__device__ __forceinline__ void row_stats(const float* r, int c, int lane, float& M, float& S) {
  float m = NEG_INF, s = 0.0f;
  for (int j = lane; j < c; j += 32) {
    float v = r[j];
    if (v > m) {
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else if (m != NEG_INF) {
      s += expf(v - m);
    }
  }
  M = warp_max(m);
  S = warp_sum(m == NEG_INF ? 0.0f : s * expf(m - M));
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    cross_entropy(const float* logits, const u32* labels, float* row_loss, int b, int c) {
  int row = blockIdx.x * WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= b) return;
  const float* r = logits + row * c;
  float M, S;
  row_stats(r, c, lane, M, S);
  if (lane == 0) {
    u32 t = labels[row];
    row_loss[row] = t < (u32)c ? M + logf(S) - r[t] : __int_as_float(0x7fc00000);
  }
}

// dx = (softmax(x) − onehot(label)) · dloss / b; dloss is the constant
// `dloss_const` when `dloss` is null.
extern "C" __global__ void __launch_bounds__(BLOCK)
    cross_entropy_backward(const float* logits, const u32* labels, const float* dloss, float dloss_const,
                float* dx, int b, int c) {
  int row = blockIdx.x * WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= b) return;
  const float* r = logits + row * c;
  float* d = dx + row * c;
  float M, S;
  row_stats(r, c, lane, M, S);
  float scale = (dloss ? dloss[0] : dloss_const) / (float)b;
  float inv = scale / S;
  u32 t = labels[row];
  bool bad = t >= (u32)c;
  for (int j = lane; j < c; j += 32) {
    float v = expf(r[j] - M) * inv;
    if ((u32)j == t) v -= scale;
    d[j] = bad ? __int_as_float(0x7fc00000) : v;
  }
}
