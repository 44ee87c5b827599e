// Adam and AdamW (PyTorch's torch.optim.Adam / AdamW, with bias
// correction) over every parameter tensor in one launch. lr and the step
// count are read from device memory, so a captured CUDA graph replays with
// the current values.
#include "multi_tensor.cuh"

struct AdamStep {
  float b1, b2, eps, l2, decay, step_size, inv_sqrt_bc2;
};

__device__ __forceinline__ void adam_one(const AdamStep& a, float g, float& p, float& m, float& v) {
  g = g + a.l2 * p;
  m = a.b1 * m + (1.0f - a.b1) * g;
  v = a.b2 * v + (1.0f - a.b2) * g * g;
  float denom = sqrtf(v) * a.inv_sqrt_bc2 + a.eps;
  p = p * a.decay - a.step_size * m / denom;
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    adam_update(float* base, const MtEntry* tab, int count, const float* scalars, int lr_idx,
                int step_idx, float beta1, float beta2, float eps, float weight_decay,
                int decoupled) {
  MtEntry e = mt_entry(tab, count);
  float lr = scalars[lr_idx], step = scalars[step_idx];
  AdamStep a;
  a.b1 = beta1;
  a.b2 = beta2;
  a.eps = eps;
  a.l2 = decoupled ? 0.0f : weight_decay;
  a.decay = decoupled ? 1.0f - lr * weight_decay : 1.0f;
  a.step_size = lr / (1.0f - powf(beta1, step));
  a.inv_sqrt_bc2 = 1.0f / sqrtf(1.0f - powf(beta2, step));
  const float* g = base + e.g;
  float *p = base + e.p, *m = base + e.s1, *v = base + e.s2;
  int beg = (blockIdx.x - e.first_block) * MT_CHUNK, end = min(e.n, beg + MT_CHUNK);
  int vend = e.vec ? beg + (end - beg) / 4 * 4 : beg;
  for (int i = beg + 4 * threadIdx.x; i < vend; i += 4 * BLOCK) {
    float4 gv = *reinterpret_cast<const float4*>(g + i);
    float4 pv = *reinterpret_cast<float4*>(p + i);
    float4 mv = *reinterpret_cast<float4*>(m + i);
    float4 vv = *reinterpret_cast<float4*>(v + i);
    adam_one(a, gv.x, pv.x, mv.x, vv.x);
    adam_one(a, gv.y, pv.y, mv.y, vv.y);
    adam_one(a, gv.z, pv.z, mv.z, vv.z);
    adam_one(a, gv.w, pv.w, mv.w, vv.w);
    *reinterpret_cast<float4*>(p + i) = pv;
    *reinterpret_cast<float4*>(m + i) = mv;
    *reinterpret_cast<float4*>(v + i) = vv;
  }
  for (int i = vend + threadIdx.x; i < end; i += BLOCK) adam_one(a, g[i], p[i], m[i], v[i]);
}
