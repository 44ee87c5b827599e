// NumPy-broadcasting binary ops, scale and fill. Same-shape operands take
// the contiguous (optionally float4) path; broadcasting ones walk a
// collapsed strided view (at most 6 axes after merging). Outputs may alias
// an operand of the output's shape (in-place launches).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK)
    binary_same(const float* a, const float* b, float* y, int n, int kind, int vec) {
  int n4 = vec ? n / 4 : 0;
  GRID_LOOP(i, n4) {
    float4 u = reinterpret_cast<const float4*>(a)[i];
    float4 v = reinterpret_cast<const float4*>(b)[i];
    u.x = binary_apply(kind, u.x, v.x);
    u.y = binary_apply(kind, u.y, v.y);
    u.z = binary_apply(kind, u.z, v.z);
    u.w = binary_apply(kind, u.w, v.w);
    reinterpret_cast<float4*>(y)[i] = u;
  }
  GRID_LOOP(i, n - 4 * n4) {
    int j = 4 * n4 + i;
    y[j] = binary_apply(kind, a[j], b[j]);
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    binary_strided(const float* a, const float* b, float* y, int n, int kind, Strided g) {
  GRID_LOOP(i, n) {
    int oa, ob;
    strided_offsets(g, i, oa, ob);
    y[i] = binary_apply(kind, a[oa], b[ob]);
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    scale(const float* x, float* y, int n, float alpha) {
  GRID_LOOP(i, n) y[i] = x[i] * alpha;
}

extern "C" __global__ void __launch_bounds__(BLOCK) fill(float* y, int n, float v) {
  GRID_LOOP(i, n) y[i] = v;
}
