// Layer normalisation over the last axis (src/ops/layer_norm.rs): one
// thread per row for y and dx; one thread per column for the weight and
// bias gradients, summing the rows in order (reproducible).
#include "common.cuh"

// With a residual `r` (non-null), the row is x + r, first written to `sum`.
extern "C" __global__ void __launch_bounds__(BLOCK)
    layer_norm_forward(const float* x, const float* w, const float* b, float* y, float* mean,
                       float* rstd, const float* r, float* sum, int rows, int n, float eps) {
  GRID_LOOP(row, rows) {
    const float* xr = x + row * n;
    if (r) {
      for (int k = 0; k < n; k++) sum[row * n + k] = xr[k] + r[row * n + k];
      xr = sum + row * n;
    }
    float m = 0.0f, v = 0.0f;
    for (int k = 0; k < n; k++) m += xr[k];
    m /= (float)n;
    for (int k = 0; k < n; k++) v += (xr[k] - m) * (xr[k] - m);
    float s = 1.0f / sqrtf(v / (float)n + eps);
    for (int k = 0; k < n; k++) y[row * n + k] = (xr[k] - m) * s * w[k] + b[k];
    mean[row] = m;
    rstd[row] = s;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    layer_norm_backward_dx(const float* x, const float* w, const float* mean, const float* rstd,
                           const float* dy, float* dx, int rows, int n) {
  GRID_LOOP(row, rows) {
    const float *xr = x + row * n, *gr = dy + row * n;
    float m = mean[row], s = rstd[row], mg = 0.0f, mgx = 0.0f;
    for (int k = 0; k < n; k++) {
      float g = gr[k] * w[k];
      mg += g;
      mgx += g * (xr[k] - m) * s;
    }
    mg /= (float)n;
    mgx /= (float)n;
    for (int k = 0; k < n; k++) dx[row * n + k] = s * (gr[k] * w[k] - mg - (xr[k] - m) * s * mgx);
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    layer_norm_backward_params(const float* x, const float* mean, const float* rstd, const float* dy,
                               float* dw, float* db, int rows, int n) {
  GRID_LOOP(k, n) {
    float a = 0.0f, c = 0.0f;
    for (int row = 0; row < rows; row++) {
      float g = dy[row * n + k];
      a += g * (x[row * n + k] - mean[row]) * rstd[row];
      c += g;
    }
    dw[k] = a;
    db[k] = c;
  }
}
