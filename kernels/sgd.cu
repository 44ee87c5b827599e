// SGD with momentum, Nesterov and (coupled) weight decay, as PyTorch's
// torch.optim.SGD with dampening 0, over every parameter tensor in one
// launch. The learning rate is read from device memory (graph replay).
#include "multi_tensor.cuh"

__device__ __forceinline__ void sgd_one(float lr, float mom, float wd, int nesterov, float g,
                                        float& p, float& vel) {
  g = g + wd * p;
  if (mom != 0.0f) {
    float v = mom * vel + g;
    vel = v;
    g = nesterov ? g + mom * v : v;
  }
  p -= lr * g;
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    sgd_update(float* base, const MtEntry* tab, int count, const float* scalars, int lr_idx,
               float momentum, float weight_decay, int nesterov) {
  MtEntry e = mt_entry(tab, count);
  float lr = scalars[lr_idx];
  const float* g = base + e.g;
  float *p = base + e.p, *v = base + e.s1;
  int beg = (blockIdx.x - e.first_block) * MT_CHUNK, end = min(e.n, beg + MT_CHUNK);
  int vend = e.vec ? beg + (end - beg) / 4 * 4 : beg;
  for (int i = beg + 4 * threadIdx.x; i < vend; i += 4 * BLOCK) {
    float4 gv = *reinterpret_cast<const float4*>(g + i);
    float4 pv = *reinterpret_cast<float4*>(p + i);
    float4 vv = momentum != 0.0f ? *reinterpret_cast<float4*>(v + i) : make_float4(0, 0, 0, 0);
    sgd_one(lr, momentum, weight_decay, nesterov, gv.x, pv.x, vv.x);
    sgd_one(lr, momentum, weight_decay, nesterov, gv.y, pv.y, vv.y);
    sgd_one(lr, momentum, weight_decay, nesterov, gv.z, pv.z, vv.z);
    sgd_one(lr, momentum, weight_decay, nesterov, gv.w, pv.w, vv.w);
    *reinterpret_cast<float4*>(p + i) = pv;
    if (momentum != 0.0f) *reinterpret_cast<float4*>(v + i) = vv;
  }
  for (int i = vend + threadIdx.x; i < end; i += BLOCK) {
    float vel = momentum != 0.0f ? v[i] : 0.0f;
    sgd_one(lr, momentum, weight_decay, nesterov, g[i], p[i], vel);
    if (momentum != 0.0f) v[i] = vel;
  }
}
