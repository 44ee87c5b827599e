// Max and average pooling (floor mode, count-include-pad, as PyTorch's
// defaults) and the backward passes. Backward is a gather: each input
// pixel sums the gradients of the windows that cover it, in the order the
// CPU reference scatters them, so there are no atomics and results are
// reproducible.
#include "common.cuh"

struct PoolGeom {
  // The plane count, then Pool2dGeom::kernel_params (src/ops/pool.rs).
  int planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw;
};

// First and last output index (inclusive) whose window covers input
// coordinate i along one axis; empty when lo > hi.
__device__ __forceinline__ void covering(int i, int pad, int k, int s, int out, int& lo, int& hi) {
  int a = i + pad - k + 1;
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  hi = min(out - 1, (i + pad) / s);
}

// y and the argmax (flat index within the h×w plane, stored as u32 bits).
// A NaN wins and stops the scan, as in the CPU reference.
extern "C" __global__ void __launch_bounds__(BLOCK)
    maxpool2d_forward(const float* x, float* y, u32* argmax, PoolGeom g) {
  GRID_LOOP(i, g.planes * g.oh * g.ow) {
    int ox = i % g.ow, t = i / g.ow, oy = t % g.oh, pl = t / g.oh;
    const float* xp = x + pl * g.h * g.w;
    float best = NEG_INF;
    int bi = 0;
    bool nan = false;
    for (int a = 0; a < g.kh && !nan; a++) {
      int iy = oy * g.sh + a - g.ph;
      if ((unsigned)iy >= (unsigned)g.h) continue;
      for (int b = 0; b < g.kw; b++) {
        int ix = ox * g.sw + b - g.pw;
        if ((unsigned)ix >= (unsigned)g.w) continue;
        float v = xp[iy * g.w + ix];
        if (v > best || v != v) {
          best = v;
          bi = iy * g.w + ix;
          if (v != v) {
            nan = true;
            break;
          }
        }
      }
    }
    y[i] = best;
    argmax[i] = (u32)bi;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    maxpool2d_backward(const float* dy, const u32* argmax, float* dx, PoolGeom g) {
  GRID_LOOP(i, g.planes * g.h * g.w) {
    int ix = i % g.w, t = i / g.w, iy = t % g.h, pl = t / g.h;
    int y0, y1, x0, x1;
    covering(iy, g.ph, g.kh, g.sh, g.oh, y0, y1);
    covering(ix, g.pw, g.kw, g.sw, g.ow, x0, x1);
    u32 me = (u32)(iy * g.w + ix);
    int base = pl * g.oh * g.ow;
    float s = 0.0f;
    for (int oy = y0; oy <= y1; oy++)
      for (int ox = x0; ox <= x1; ox++) {
        int o = base + oy * g.ow + ox;
        if (argmax[o] == me) s += dy[o];
      }
    dx[i] = s;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    avgpool2d_forward(const float* x, float* y, PoolGeom g) {
  float k = (float)(g.kh * g.kw);
  GRID_LOOP(i, g.planes * g.oh * g.ow) {
    int ox = i % g.ow, t = i / g.ow, oy = t % g.oh, pl = t / g.oh;
    const float* xp = x + pl * g.h * g.w;
    float s = 0.0f;
    for (int a = 0; a < g.kh; a++) {
      int iy = oy * g.sh + a - g.ph;
      if ((unsigned)iy >= (unsigned)g.h) continue;
      for (int b = 0; b < g.kw; b++) {
        int ix = ox * g.sw + b - g.pw;
        if ((unsigned)ix < (unsigned)g.w) s += xp[iy * g.w + ix];
      }
    }
    y[i] = s / k;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    avgpool2d_backward(const float* dy, float* dx, PoolGeom g) {
  float k = (float)(g.kh * g.kw);
  GRID_LOOP(i, g.planes * g.h * g.w) {
    int ix = i % g.w, t = i / g.w, iy = t % g.h, pl = t / g.h;
    int y0, y1, x0, x1;
    covering(iy, g.ph, g.kh, g.sh, g.oh, y0, y1);
    covering(ix, g.pw, g.kw, g.sw, g.ow, x0, x1);
    const float* d = dy + pl * g.oh * g.ow;
    float s = 0.0f;
    for (int oy = y0; oy <= y1; oy++)
      for (int ox = x0; ox <= x1; ox++) s += d[oy * g.ow + ox] / k;
    dx[i] = s;
  }
}

// dx[p, :] = dy[p] / hw (the forward pass is a reduction, see reduce.cu).
extern "C" __global__ void __launch_bounds__(BLOCK)
    global_avgpool_backward(const float* dy, float* dx, int planes, int hw) {
  float d = (float)hw;
  GRID_LOOP(i, planes * hw) dx[i] = dy[i / hw] / d;
}

// y[b, c] = mean of x[b, t, c] over t < min(lengths[b], len); 0 when empty.
extern "C" __global__ void __launch_bounds__(BLOCK)
    masked_mean_pool_forward(const float* x, const u32* lengths, float* y, int batch, int len,
                             int dim) {
  GRID_LOOP(e, batch * dim) {
    int b = e / dim, c = e % dim;
    int l = lengths[b] < (u32)len ? (int)lengths[b] : len;
    const float* xb = x + b * len * dim + c;
    float s = 0.0f;
    for (int t = 0; t < l; t++) s += xb[t * dim];
    y[e] = l > 0 ? s / (float)l : 0.0f;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    masked_mean_pool_backward(const float* dy, const u32* lengths, float* dx, int batch, int len,
                              int dim) {
  GRID_LOOP(e, batch * len * dim) {
    int b = e / (len * dim), t = (e / dim) % len;
    int l = lengths[b] < (u32)len ? (int)lengths[b] : len;
    dx[e] = t < l ? dy[b * dim + e % dim] / (float)l : 0.0f;
  }
}
