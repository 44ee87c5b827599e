// Inverted dropout. The keep mask is a hash of (seed, step, index), the
// same PCG-style hash as the CPU reference, so every backend drops the
// same elements and backward recomputes the mask instead of storing it.
// The step is a runtime scalar read from device memory, so a captured
// CUDA graph replays with the current step.
#include "common.cuh"

__device__ __forceinline__ u32 hash32(u32 x) {
  u32 s = x * 747796405u + 2891336453u;
  u32 w = ((s >> ((s >> 28) + 4u)) ^ s) * 277803737u;
  return (w >> 22) ^ w;
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    dropout(const float* x, float* y, int n, const float* scalars, int step_idx, u32 seed, float p,
            float scale) {
  u32 step = __float2uint_rz(scalars[step_idx]);
  u32 key = hash32(seed ^ hash32(step));
  GRID_LOOP(i, n) {
    u32 h = hash32((u32)i ^ key);
    bool keep = (float)(h >> 8) * (1.0f / 16777216.0f) >= p;
    float v = x[i];
    y[i] = keep ? v * scale : 0.0f;
  }
}
