// Softmax and log-softmax over the last axis, and their gradients.
// Numerically stable (the row max is subtracted). Rows of up to 1024
// elements take a warp each and stay in registers (one read, one write);
// longer rows take a block each, in registers up to 4096 elements, else
// streamed with an online max/sum (two reads).
#include "common.cuh"

// Online (max, sum of exp(v - max)) update and cross-thread merge.
__device__ __forceinline__ void online_add(float& m, float& s, float v) {
  if (v > m) {
    s = s * expf(m - v) + 1.0f;
    m = v;
  } else if (m != NEG_INF) {
    s += expf(v - m);
  }
}
__device__ __forceinline__ float rescale(float m, float s, float total_max) {
  return m == NEG_INF ? 0.0f : s * expf(m - total_max);
}

template <int CACHE>
__device__ __forceinline__ void softmax_warp(const float* x, float* y, int rows, int n, int log) {
  int row = blockIdx.x * WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* xr = x + row * n;
  float* yr = y + row * n;
  float v[CACHE], m = NEG_INF, s = 0.0f;
#pragma unroll
  for (int j = 0; j < CACHE; j++) {
    int c = j * 32 + lane;
    v[j] = c < n ? xr[c] : NEG_INF;
    m = fmaxf(m, v[j]);
  }
  m = warp_max(m);
#pragma unroll
  for (int j = 0; j < CACHE; j++) {
    if (j * 32 + lane < n) {
      float e = expf(v[j] - m);
      s += e;
      if (!log) v[j] = e;
    }
  }
  s = warp_sum(s);
  float ls = logf(s), inv = 1.0f / s;
#pragma unroll
  for (int j = 0; j < CACHE; j++) {
    int c = j * 32 + lane;
    if (c < n) yr[c] = log ? v[j] - m - ls : v[j] * inv;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    softmax_warp4(const float* x, float* y, int rows, int n, int log) {
  softmax_warp<4>(x, y, rows, n, log);
}
extern "C" __global__ void __launch_bounds__(BLOCK)
    softmax_warp32(const float* x, float* y, int rows, int n, int log) {
  softmax_warp<32>(x, y, rows, n, log);
}

#define BLOCK_CACHE 16

extern "C" __global__ void __launch_bounds__(BLOCK)
    softmax_block(const float* x, float* y, int n, int log) {
  __shared__ float sh[WARPS];
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  int t = threadIdx.x;
  if (n <= BLOCK * BLOCK_CACHE) {
    float v[BLOCK_CACHE], m = NEG_INF, s = 0.0f;
#pragma unroll
    for (int j = 0; j < BLOCK_CACHE; j++) {
      int c = j * BLOCK + t;
      v[j] = c < n ? xr[c] : NEG_INF;
      m = fmaxf(m, v[j]);
    }
    m = block_max(m, sh);
#pragma unroll
    for (int j = 0; j < BLOCK_CACHE; j++) {
      if (j * BLOCK + t < n) {
        float e = expf(v[j] - m);
        s += e;
        if (!log) v[j] = e;
      }
    }
    s = block_sum(s, sh);
    float ls = logf(s), inv = 1.0f / s;
#pragma unroll
    for (int j = 0; j < BLOCK_CACHE; j++) {
      int c = j * BLOCK + t;
      if (c < n) yr[c] = log ? v[j] - m - ls : v[j] * inv;
    }
  } else {
    float m = NEG_INF, s = 0.0f;
    for (int c = t; c < n; c += BLOCK) online_add(m, s, xr[c]);
    float M = block_max(m, sh);
    float S = block_sum(rescale(m, s, M), sh);
    float ls = logf(S), inv = 1.0f / S;
    for (int c = t; c < n; c += BLOCK) {
      float v = xr[c];
      yr[c] = log ? v - M - ls : expf(v - M) * inv;
    }
  }
}

// softmax: dx = y ⊙ (dy − Σ dy⊙y); log-softmax: dx = dy − exp(y) Σ dy.
template <int CACHE>
__device__ __forceinline__ void softmax_bwd_warp(const float* y, const float* dy, float* dx,
                                                 int rows, int n, int log) {
  int row = blockIdx.x * WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* yr = y + row * n;
  const float* dr = dy + row * n;
  float* xr = dx + row * n;
  float yv[CACHE], dv[CACHE], s = 0.0f;
#pragma unroll
  for (int j = 0; j < CACHE; j++) {
    int c = j * 32 + lane;
    yv[j] = c < n ? yr[c] : 0.0f;
    dv[j] = c < n ? dr[c] : 0.0f;
    s += log ? dv[j] : dv[j] * yv[j];
  }
  s = warp_sum(s);
#pragma unroll
  for (int j = 0; j < CACHE; j++) {
    int c = j * 32 + lane;
    if (c < n) xr[c] = log ? dv[j] - expf(yv[j]) * s : yv[j] * (dv[j] - s);
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    softmax_backward_warp4(const float* y, const float* dy, float* dx, int rows, int n, int log) {
  softmax_bwd_warp<4>(y, dy, dx, rows, n, log);
}
extern "C" __global__ void __launch_bounds__(BLOCK)
    softmax_backward_warp32(const float* y, const float* dy, float* dx, int rows, int n, int log) {
  softmax_bwd_warp<32>(y, dy, dx, rows, n, log);
}

// Block per row; the row is read twice (sum, then write).
extern "C" __global__ void __launch_bounds__(BLOCK)
    softmax_backward_block(const float* y, const float* dy, float* dx, int n, int log) {
  __shared__ float sh[WARPS];
  const float* yr = y + blockIdx.x * n;
  const float* dr = dy + blockIdx.x * n;
  float* xr = dx + blockIdx.x * n;
  float s = 0.0f;
  for (int c = threadIdx.x; c < n; c += BLOCK) s += log ? dr[c] : dr[c] * yr[c];
  s = block_sum(s, sh);
  for (int c = threadIdx.x; c < n; c += BLOCK) {
    float yv = yr[c], d = dr[c];
    xr[c] = log ? d - expf(yv) * s : yv * (d - s);
  }
}
