// Fused multi-head attention with a padding mask, flash-style: each block
// takes BLOCK query (or key) rows of one (sequence, head), one per thread,
// and streams the other side through shared memory AK rows at a time with
// an online softmax, so no T×T matrix is stored. Layouts and the padding
// rule are in src/ops/attention.rs; shaders/attention.wgsl is the same
// algorithm. Grid: batch·heads·blocks, blocks = ceil(seq / BLOCK).
#include "common.cuh"

#define AK 32
// Largest head size.
#define AD 64
// The lowest finite float: a running max that starts here never makes
// (m - new max) a NaN.
#define LOWEST (-3.4028235e38f)

struct AttnGeom {
  int batch, seq, heads, d, blocks;
};

struct Head {
  int b, h, r0, l, d, dm;
  // The sequence's first qkv row.
  const float* base;
};

__device__ __forceinline__ Head head_of(const float* qkv, const u32* lengths, AttnGeom g) {
  Head hd;
  int bh = blockIdx.x / g.blocks;
  hd.b = bh / g.heads;
  hd.h = bh % g.heads;
  hd.r0 = (blockIdx.x % g.blocks) * BLOCK;
  hd.d = g.d;
  hd.dm = g.heads * g.d;
  hd.l = lengths[hd.b] < (u32)g.seq ? (int)lengths[hd.b] : g.seq;
  hd.base = qkv + hd.b * g.seq * 3 * hd.dm + hd.h * g.d;
  return hd;
}

// Part `part` (0 Q, 1 K, 2 V) of row j of this head.
__device__ __forceinline__ const float* qkv_row(const Head& hd, int j, int part) {
  return hd.base + j * 3 * hd.dm + part * hd.dm;
}

// Rows j0.. (up to AK, zeros past l) of parts pa and pb into the tiles.
__device__ __forceinline__ void load_tiles(const Head& hd, int j0, int pa, int pb, float* ta, float* tb) {
  __syncthreads();
  for (int e = threadIdx.x; e < AK * hd.d; e += BLOCK) {
    int j = j0 + e / hd.d, k = e % hd.d;
    bool in = j < hd.l;
    ta[e] = in ? qkv_row(hd, j, pa)[k] : 0.0f;
    tb[e] = in ? qkv_row(hd, j, pb)[k] : 0.0f;
  }
  __syncthreads();
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    attention_forward(const float* qkv, const u32* lengths, float* out, float* lse, AttnGeom g) {
  __shared__ float tk[AK * AD], tv[AK * AD];
  Head hd = head_of(qkv, lengths, g);
  int r = hd.r0 + threadIdx.x, d = hd.d;
  bool active = r < hd.l;
  float scale = 1.0f / sqrtf((float)d);
  float q[AD], o[AD];
#pragma unroll
  for (int k = 0; k < AD; k++) {
    o[k] = 0.0f;
    q[k] = active && k < d ? qkv_row(hd, r, 0)[k] * scale : 0.0f;
  }
  float m = LOWEST, sum = 0.0f;
  for (int j0 = 0; j0 < hd.l; j0 += AK) {
    load_tiles(hd, j0, 1, 2, tk, tv);
    if (!active) continue;
    int jn = min(AK, hd.l - j0);
    float s[AK], tm = LOWEST;
    for (int jj = 0; jj < jn; jj++) {
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < AD; k++)
        if (k < d) acc += q[k] * tk[jj * d + k];
      s[jj] = acc;
      tm = fmaxf(tm, acc);
    }
    float mn = fmaxf(m, tm), c = expf(m - mn);
    sum *= c;
#pragma unroll
    for (int k = 0; k < AD; k++) o[k] *= c;
    m = mn;
    for (int jj = 0; jj < jn; jj++) {
      float p = expf(s[jj] - m);
      sum += p;
#pragma unroll
      for (int k = 0; k < AD; k++)
        if (k < d) o[k] += p * tv[jj * d + k];
    }
  }
  if (r < g.seq) {
    float inv = active ? 1.0f / sum : 0.0f;
    float* orow = out + (hd.b * g.seq + r) * hd.dm + hd.h * d;
#pragma unroll
    for (int k = 0; k < AD; k++)
      if (k < d) orow[k] = o[k] * inv;
    lse[(hd.b * g.heads + hd.h) * g.seq + r] = active ? m + logf(sum) : 0.0f;
  }
}

// dQ: per query row, keys and values streamed through the tiles.
extern "C" __global__ void __launch_bounds__(BLOCK)
    attention_backward_q(const float* qkv, const u32* lengths, const float* out, const float* lse,
                         const float* dout, float* dqkv, AttnGeom g) {
  __shared__ float tk[AK * AD], tv[AK * AD];
  Head hd = head_of(qkv, lengths, g);
  int r = hd.r0 + threadIdx.x, d = hd.d;
  bool active = r < hd.l;
  float scale = 1.0f / sqrtf((float)d);
  float q[AD], go[AD], dq[AD];
  float di = 0.0f, lr = 0.0f;
  const float* orow = out + (hd.b * g.seq + r) * hd.dm + hd.h * d;
  const float* grow = dout + (hd.b * g.seq + r) * hd.dm + hd.h * d;
#pragma unroll
  for (int k = 0; k < AD; k++) {
    bool in = active && k < d;
    q[k] = in ? qkv_row(hd, r, 0)[k] * scale : 0.0f;
    go[k] = in ? grow[k] : 0.0f;
    di += in ? go[k] * orow[k] : 0.0f;
    dq[k] = 0.0f;
  }
  if (active) lr = lse[(hd.b * g.heads + hd.h) * g.seq + r];
  for (int j0 = 0; j0 < hd.l; j0 += AK) {
    load_tiles(hd, j0, 1, 2, tk, tv);
    if (!active) continue;
    int jn = min(AK, hd.l - j0);
    for (int jj = 0; jj < jn; jj++) {
      float s = 0.0f, dp = 0.0f;
#pragma unroll
      for (int k = 0; k < AD; k++)
        if (k < d) {
          s += q[k] * tk[jj * d + k];
          dp += go[k] * tv[jj * d + k];
        }
      float ds = expf(fminf(s - lr, 0.0f)) * (dp - di);
#pragma unroll
      for (int k = 0; k < AD; k++)
        if (k < d) dq[k] += ds * tk[jj * d + k];
    }
  }
  if (r < g.seq) {
    float* at = dqkv + (hd.b * g.seq + r) * 3 * hd.dm + hd.h * d;
#pragma unroll
    for (int k = 0; k < AD; k++)
      if (k < d) at[k] = active ? dq[k] * scale : 0.0f;
  }
}

// dK and dV: two threads per key row (the pair shares a warp; each holds
// the interleaved half k = 2·kk + half of the row, so four head-sized
// arrays fit in registers), with query rows, dO, lse and rowsum(dO∘O)
// streamed through the tiles. Grid: batch·heads·ceil(seq / (BLOCK/2)).
#define KV_ROWS (BLOCK / 2)
#define HALF (AD / 2)
extern "C" __global__ void __launch_bounds__(BLOCK)
    attention_backward_kv(const float* qkv, const u32* lengths, const float* out, const float* lse,
                          const float* dout, float* dqkv, AttnGeom g) {
  __shared__ float tq[AK * AD], tg[AK * AD], ts[2 * AK];
  Head hd = head_of(qkv, lengths, g);
  int half = threadIdx.x & 1;
  int j = (blockIdx.x % g.blocks) * KV_ROWS + threadIdx.x / 2, d = hd.d;
  bool active = j < hd.l;
  float scale = 1.0f / sqrtf((float)d);
  float kr[HALF], vr[HALF], dk[HALF], dv[HALF];
#pragma unroll
  for (int kk = 0; kk < HALF; kk++) {
    int k = 2 * kk + half;
    bool in = active && k < d;
    kr[kk] = in ? qkv_row(hd, j, 1)[k] : 0.0f;
    vr[kk] = in ? qkv_row(hd, j, 2)[k] : 0.0f;
    dk[kk] = 0.0f;
    dv[kk] = 0.0f;
  }
  for (int i0 = 0; i0 < hd.l; i0 += AK) {
    __syncthreads();
    for (int e = threadIdx.x; e < AK * d; e += BLOCK) {
      int i = i0 + e / d, k = e % d;
      bool in = i < hd.l;
      tq[e] = in ? qkv_row(hd, i, 0)[k] * scale : 0.0f;
      tg[e] = in ? dout[(hd.b * g.seq + i) * hd.dm + hd.h * d + k] : 0.0f;
    }
    if (threadIdx.x < AK) {
      int i = i0 + threadIdx.x;
      float di = 0.0f, lr = 0.0f;
      if (i < hd.l) {
        const float* orow = out + (hd.b * g.seq + i) * hd.dm + hd.h * d;
        const float* grow = dout + (hd.b * g.seq + i) * hd.dm + hd.h * d;
        for (int k = 0; k < d; k++) di += grow[k] * orow[k];
        lr = lse[(hd.b * g.heads + hd.h) * g.seq + i];
      }
      ts[threadIdx.x] = lr;
      ts[AK + threadIdx.x] = di;
    }
    __syncthreads();
    // Every lane runs the loop (the pair sums through a shuffle); rows
    // past the length compute on zeros and are not stored.
    int n = min(AK, hd.l - i0);
    for (int ii = 0; ii < n; ii++) {
      float s = 0.0f, dp = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HALF; kk++) {
        int k = 2 * kk + half;
        if (k < d) {
          s += tq[ii * d + k] * kr[kk];
          dp += tg[ii * d + k] * vr[kk];
        }
      }
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      dp += __shfl_xor_sync(0xffffffffu, dp, 1);
      float p = expf(fminf(s - ts[ii], 0.0f));
      float ds = p * (dp - ts[AK + ii]);
#pragma unroll
      for (int kk = 0; kk < HALF; kk++) {
        int k = 2 * kk + half;
        if (k < d) {
          dv[kk] += p * tg[ii * d + k];
          dk[kk] += ds * tq[ii * d + k];
        }
      }
    }
  }
  if (j < g.seq) {
    float* at = dqkv + (hd.b * g.seq + j) * 3 * hd.dm + hd.h * d;
#pragma unroll
    for (int kk = 0; kk < HALF; kk++) {
      int k = 2 * kk + half;
      if (k < d) {
        at[hd.dm + k] = active ? dk[kk] : 0.0f;
        at[2 * hd.dm + k] = active ? dv[kk] : 0.0f;
      }
    }
  }
}
