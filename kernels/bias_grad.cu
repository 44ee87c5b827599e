// Activation backward fused with the bias gradient of the layer below:
// one pass over dy writes dx = act'(saved)·dy and sums it per channel.
// dy is [outer, C, inner] around the channel axis. Block (c, split) owns a
// fixed slice of channel c, so every element is written by exactly one
// thread (dx may alias dy: it is read first) and the sums are in a fixed
// order; with several splits the partials go through reduce_finalize.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK)
    act_backward_bias(const float* saved, const float* dy, float* dx, float* db, float* part,
                 int outer, int C, int inner, int act, int splits) {
  __shared__ float sh[WARPS];
  int c = blockIdx.x;
  int total = outer * inner;
  int per = (total + splits - 1) / splits;
  int beg = blockIdx.y * per, end = min(total, beg + per);
  float s = 0.0f;
  for (int e = beg + threadIdx.x; e < end; e += BLOCK) {
    int o = e / inner, i = e % inner;
    int idx = (o * C + c) * inner + i;
    float v = act_backward(act, saved[idx], dy[idx]);
    dx[idx] = v;
    s += v;
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0) {
    if (splits == 1) db[c] = s;
    else part[c * splits + blockIdx.y] = s;
  }
}
