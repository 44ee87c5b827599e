// Sums over axes: sum_to (the gradient of broadcasting), the conv bias
// gradient, global average pooling and the batch mean of the loss are all
// "reduce a strided view to its kept axes". Every sum runs in a fixed order
// (per-thread strided partials, then a fixed tree), so results are the same
// on every run.
//
// Kept axes k and reduced axes r of x: out[o] = (Σ_r x[off_k(o) + off_r(r)]) / div.
#include "common.cuh"
#include "multi_tensor.cuh"

struct ReduceGeom {
  int kept_rank;
  int kd[MAX_RANK];
  int ks[MAX_RANK];
  int red_rank;
  int rd[MAX_RANK];
  int rs[MAX_RANK];
  int R;  // product of rd
};

__device__ __forceinline__ int axes_offset(int rank, const int* d, const int* s, int i) {
  int o = 0;
#pragma unroll
  for (int a = MAX_RANK - 1; a >= 0; a--) {
    if (a < rank) {
      o += (i % d[a]) * s[a];
      i /= d[a];
    }
  }
  return o;
}

// One thread per output, serial over R (small R).
extern "C" __global__ void __launch_bounds__(BLOCK)
    reduce_small(const float* x, float* y, int ny, ReduceGeom g, float div) {
  GRID_LOOP(o, ny) {
    const float* p = x + axes_offset(g.kept_rank, g.kd, g.ks, o);
    float s = 0.0f;
    for (int r = 0; r < g.R; r++) s += p[axes_offset(g.red_rank, g.rd, g.rs, r)];
    y[o] = s / div;
  }
}

// One block per (output, split): blockIdx.x = output, blockIdx.y = split.
// With one split the block writes y[o] = sum / div; otherwise it writes a
// partial to part[o * splits + split] for reduce_finalize.
extern "C" __global__ void __launch_bounds__(BLOCK)
    reduce_block(const float* x, float* y, float* part, ReduceGeom g, int splits, float div) {
  __shared__ float sh[WARPS];
  int o = blockIdx.x;
  const float* p = x + axes_offset(g.kept_rank, g.kd, g.ks, o);
  int per = (g.R + splits - 1) / splits;
  int beg = blockIdx.y * per, end = min(g.R, beg + per);
  float s = 0.0f;
  for (int r = beg + threadIdx.x; r < end; r += BLOCK) s += p[axes_offset(g.red_rank, g.rd, g.rs, r)];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) {
    if (splits == 1) y[o] = s / div;
    else part[o * splits + blockIdx.y] = s;
  }
}

// y[o] = (Σ_s part[o * splits + s]) / div, in split order.
extern "C" __global__ void __launch_bounds__(BLOCK)
    reduce_finalize(const float* part, float* y, int ny, int splits, float div) {
  GRID_LOOP(o, ny) {
    float s = 0.0f;
    for (int k = 0; k < splits; k++) s += part[o * splits + k];
    y[o] = s / div;
  }
}

// Clipping by global norm over every gradient in one launch of ONE block
// (so no grid-wide sync is needed): the block sums all squares (in double,
// per-thread strided then a fixed tree), then writes each tensor scaled by
// min(1, max_norm / sqrt(sum + 1e-12)); a NaN gradient makes every output
// NaN, as in PyTorch. Entry e reads e.g and writes e.p.
extern "C" __global__ void __launch_bounds__(BLOCK)
    clip_grad_norm(float* base, const MtEntry* tab, int count, float max_norm) {
  __shared__ double sh[WARPS];
  double s = 0.0;
  for (int t = 0; t < count; t++) {
    const float* g = base + tab[t].g;
    for (int i = threadIdx.x; i < tab[t].n; i += BLOCK) s += (double)g[i] * g[i];
  }
  double total = block_sum_d(s, sh);
  double coef = (double)max_norm / sqrt(total + 1e-12);
  // Not fmin, which would turn a NaN coefficient (a NaN gradient) into 1.
  float factor = (float)(coef < 1.0 || coef != coef ? coef : 1.0);
  for (int t = 0; t < count; t++) {
    const float* g = base + tab[t].g;
    float* y = base + tab[t].p;
    for (int i = threadIdx.x; i < tab[t].n; i += BLOCK) y[i] = g[i] * factor;
  }
}
