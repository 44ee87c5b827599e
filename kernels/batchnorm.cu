// Batch normalisation over NCHW, per channel. Statistics accumulate in
// double (as the CPU reference does) in fixed-order block partials: grid
// (C, splits), then one thread per channel finishes. Training writes the
// batch mean and inverse std (saved for backward) and updates the running
// averages (PyTorch's momentum, unbiased running variance).
#include "common.cuh"

// part[(c * splits + s) * 2 + {0, 1}] = (Σ x, Σ x²) over this block's share.
extern "C" __global__ void __launch_bounds__(BLOCK)
    batchnorm2d_stats(const float* x, double* part, int n, int C, int hw, int splits) {
  __shared__ double sh[WARPS];
  int c = blockIdx.x, total = n * hw;
  int per = (total + splits - 1) / splits;
  int beg = blockIdx.y * per, end = min(total, beg + per);
  double s = 0.0, s2 = 0.0;
  for (int e = beg + threadIdx.x; e < end; e += BLOCK) {
    double v = x[((e / hw) * C + c) * hw + e % hw];
    s += v;
    s2 += v * v;
  }
  s = block_sum_d(s, sh);
  s2 = block_sum_d(s2, sh);
  if (threadIdx.x == 0) {
    part[(c * splits + blockIdx.y) * 2] = s;
    part[(c * splits + blockIdx.y) * 2 + 1] = s2;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    batchnorm2d_train_finalize(const double* part, float* mean, float* invstd, float* rmean, float* rvar,
                      int C, int splits, int count, float eps, float momentum) {
  GRID_LOOP(c, C) {
    double s = 0.0, s2 = 0.0;
    for (int k = 0; k < splits; k++) {
      s += part[(c * splits + k) * 2];
      s2 += part[(c * splits + k) * 2 + 1];
    }
    double cnt = (double)count;
    double m = s / cnt;
    double v = fmax(s2 / cnt - m * m, 0.0);
    mean[c] = (float)m;
    invstd[c] = (float)(1.0 / sqrt(v + (double)eps));
    double unbiased = count > 1 ? v * cnt / (cnt - 1.0) : v;
    rmean[c] = (1.0f - momentum) * rmean[c] + momentum * (float)m;
    rvar[c] = (1.0f - momentum) * rvar[c] + momentum * (float)unbiased;
  }
}

// y = act(x · (γ·invstd) + (β − mean·γ·invstd) [+ res]); res may be null
// and act ACT_NONE (a fused epilogue otherwise).
extern "C" __global__ void __launch_bounds__(BLOCK)
    batchnorm2d_normalize(const float* x, const float* gamma, const float* beta, const float* mean,
                 const float* invstd, const float* res, float* y, int C, int hw, int total, int act) {
  GRID_LOOP(i, total) {
    int c = (i / hw) % C;
    float a = gamma[c] * invstd[c];
    float b = beta[c] - mean[c] * a;
    float v = x[i] * a + b;
    if (res) v += res[i];
    y[i] = act_epilogue(act, v);
  }
}

// The gradient reaching the batch norm: dy, or act'(saved)·dy when the
// activation's backward is fused in (saved non-null).
__device__ __forceinline__ float bn_incoming(const float* dy, const float* saved, int act, int i) {
  return saved ? act_backward(act, saved[i], dy[i]) : dy[i];
}

// Inference: the running statistics.
extern "C" __global__ void __launch_bounds__(BLOCK)
    batchnorm2d_infer(const float* x, const float* gamma, const float* beta, const float* rmean,
             const float* rvar, float* y, int C, int hw, int total, float eps) {
  GRID_LOOP(i, total) {
    int c = (i / hw) % C;
    float inv = 1.0f / sqrtf(rvar[c] + eps);
    float a = gamma[c] * inv;
    float b = beta[c] - rmean[c] * a;
    y[i] = x[i] * a + b;
  }
}

// part[(c * splits + s) * 2 + {0, 1}] = (Σ dy, Σ dy·x̂) with x̂ = (x − mean)·invstd.
extern "C" __global__ void __launch_bounds__(BLOCK)
    batchnorm2d_backward_stats(const float* x, const float* mean, const float* invstd, const float* dy,
                 const float* saved, int act, double* part, int n, int C, int hw, int splits) {
  __shared__ double sh[WARPS];
  int c = blockIdx.x, total = n * hw;
  int per = (total + splits - 1) / splits;
  int beg = blockIdx.y * per, end = min(total, beg + per);
  float mu = mean[c], is = invstd[c];
  double s = 0.0, sx = 0.0;
  for (int e = beg + threadIdx.x; e < end; e += BLOCK) {
    int idx = ((e / hw) * C + c) * hw + e % hw;
    float d = bn_incoming(dy, saved, act, idx);
    float xh = (x[idx] - mu) * is;
    s += (double)d;
    sx += (double)(d * xh);
  }
  s = block_sum_d(s, sh);
  sx = block_sum_d(sx, sh);
  if (threadIdx.x == 0) {
    part[(c * splits + blockIdx.y) * 2] = s;
    part[(c * splits + blockIdx.y) * 2 + 1] = sx;
  }
}

// dγ = Σ dy·x̂, dβ = Σ dy; `sums` keeps both as f32 for batchnorm2d_backward_dx.
extern "C" __global__ void __launch_bounds__(BLOCK)
    batchnorm2d_backward_finalize(const double* part, float* dgamma, float* dbeta, float* sums, int C,
                    int splits) {
  GRID_LOOP(c, C) {
    double s = 0.0, sx = 0.0;
    for (int k = 0; k < splits; k++) {
      s += part[(c * splits + k) * 2];
      sx += part[(c * splits + k) * 2 + 1];
    }
    dgamma[c] = (float)sx;
    dbeta[c] = (float)s;
    sums[2 * c] = (float)s;
    sums[2 * c + 1] = (float)sx;
  }
}

// dx = γ·invstd/M · (M·dy − Σdy − x̂·Σ(dy·x̂)).
extern "C" __global__ void __launch_bounds__(BLOCK)
    batchnorm2d_backward_dx(const float* x, const float* gamma, const float* mean, const float* invstd,
              const float* dy, const float* saved, int act, const float* sums, float* dx, int C, int hw,
              int total, float m) {
  GRID_LOOP(i, total) {
    int c = (i / hw) % C;
    float is = invstd[c];
    float k = gamma[c] * is / m;
    float xh = (x[i] - mean[c]) * is;
    dx[i] = k * (m * bn_incoming(dy, saved, act, i) - sums[2 * c] - xh * sums[2 * c + 1]);
  }
}
