// Elementwise activations and their gradients. `vec`: every pointer is
// 16-byte aligned, so the body runs on float4s (the tail element-wise).
// Outputs may alias an input (in-place launches): each element is read
// before it is written, by the same thread.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK)
    act_forward(const float* x, float* y, int n, int act, int vec) {
  int n4 = vec ? n / 4 : 0;
  GRID_LOOP(i, n4) {
    float4 v = reinterpret_cast<const float4*>(x)[i];
    v.x = act_forward(act, v.x);
    v.y = act_forward(act, v.y);
    v.z = act_forward(act, v.z);
    v.w = act_forward(act, v.w);
    reinterpret_cast<float4*>(y)[i] = v;
  }
  GRID_LOOP(i, n - 4 * n4) y[4 * n4 + i] = act_forward(act, x[4 * n4 + i]);
}

// dx = act'(saved) · dy.
extern "C" __global__ void __launch_bounds__(BLOCK)
    act_backward(const float* saved, const float* dy, float* dx, int n, int act, int vec) {
  int n4 = vec ? n / 4 : 0;
  GRID_LOOP(i, n4) {
    float4 s = reinterpret_cast<const float4*>(saved)[i];
    float4 d = reinterpret_cast<const float4*>(dy)[i];
    d.x = act_backward(act, s.x, d.x);
    d.y = act_backward(act, s.y, d.y);
    d.z = act_backward(act, s.z, d.z);
    d.w = act_backward(act, s.w, d.w);
    reinterpret_cast<float4*>(dx)[i] = d;
  }
  GRID_LOOP(i, n - 4 * n4) {
    int j = 4 * n4 + i;
    dx[j] = act_backward(act, saved[j], dy[j]);
  }
}
