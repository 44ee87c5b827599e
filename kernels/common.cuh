// Shared by every kernel file: block size, activations, warp/block sums and
// the small by-value geometry structs. Kernels take raw pointers into one
// arena (plus scalar parameters); no CUDA headers are needed, so NVRTC
// compiles these files with no toolkit installed.
//
// Index arithmetic is 32-bit: the host refuses tensors of 2^30 or more
// elements before anything is launched, so grid-stride loops cannot wrap.
#ifndef GPURT_COMMON_CUH
#define GPURT_COMMON_CUH

#define BLOCK 256
#define WARPS (BLOCK / 32)
#define MAX_RANK 6

typedef unsigned int u32;

// -inf without math.h (NVRTC has no standard headers).
#define NEG_INF __int_as_float(0xff800000)

// Activation codes: Activation::code in src/ops/activation.rs.
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_GELU 2
#define ACT_SIGMOID 3
#define ACT_TANH 4
#define ACT_RSQRT 5

// Binary op codes: BinaryKind::code in src/ops/binary.rs.
#define BIN_ADD 0
#define BIN_SUB 1
#define BIN_MUL 2
#define BIN_DIV 3

// Output dims of a (collapsed) strided view plus the strides of up to two
// operands, 0 on broadcast axes.
struct Strided {
  int rank;
  int dims[MAX_RANK];
  int s0[MAX_RANK];
  int s1[MAX_RANK];
};

// NaN propagates, as in PyTorch (fmaxf would turn it into 0).
__device__ __forceinline__ float relu(float x) { return x < 0.0f ? 0.0f : x; }

__device__ __forceinline__ float act_forward(int act, float x) {
  switch (act) {
    case ACT_RELU: return relu(x);
    case ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case ACT_TANH: return tanhf(x);
    case ACT_RSQRT: return 1.0f / sqrtf(x);
    default: return x;
  }
}

// For GEMM epilogues, which apply an activation to every accumulator: the
// common cases inline, the transcendental ones through one out-of-line
// copy (inlining erf/exp/tanh 64 times per thread bloats the PTX tenfold).
static __device__ __noinline__ float act_forward_call(int act, float x) { return act_forward(act, x); }
__device__ __forceinline__ float act_epilogue(int act, float x) {
  if (act == ACT_NONE) return x;
  if (act == ACT_RELU) return relu(x);
  return act_forward_call(act, x);
}

// dx from the saved value (y for relu/sigmoid/tanh, x for gelu) and dy.
__device__ __forceinline__ float act_backward(int act, float saved, float dy) {
  switch (act) {
    case ACT_RELU: return saved > 0.0f ? dy : 0.0f;
    case ACT_GELU: {
      float cdf = 0.5f * (1.0f + erff(saved * 0.7071067811865476f));
      float pdf = expf(-0.5f * saved * saved) * 0.3989423f;
      return dy * (cdf + saved * pdf);
    }
    case ACT_SIGMOID: return dy * saved * (1.0f - saved);
    case ACT_TANH: return dy * (1.0f - saved * saved);
    case ACT_RSQRT: return dy * -0.5f * saved * saved * saved;
    default: return dy;
  }
}

__device__ __forceinline__ float binary_apply(int kind, float a, float b) {
  switch (kind) {
    case BIN_ADD: return a + b;
    case BIN_SUB: return a - b;
    case BIN_MUL: return a * b;
    default: return a / b;
  }
}

// Element offset of output index i in operand 0 and 1 of a strided view.
__device__ __forceinline__ void strided_offsets(const Strided& g, int i, int& o0, int& o1) {
  o0 = 0;
  o1 = 0;
#pragma unroll
  for (int a = MAX_RANK - 1; a >= 0; a--) {
    if (a < g.rank) {
      int d = g.dims[a];
      int c = i % d;
      i /= d;
      o0 += c * g.s0[a];
      o1 += c * g.s1[a];
    }
  }
}

// Butterfly sums: every lane ends with the total, in a fixed order, so
// results are reproducible run to run.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of BLOCK threads; every thread gets the total. `sh`
// holds WARPS floats. Ends with a barrier, so `sh` may be reused at once.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  v = warp_sum(v);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float t = lane < WARPS ? sh[lane] : 0.0f;
  t = warp_sum(t);
  __syncthreads();
  return t;
}

__device__ __forceinline__ double block_sum_d(double v, double* sh) {
  v = warp_sum_d(v);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  double t = lane < WARPS ? sh[lane] : 0.0;
  t = warp_sum_d(t);
  __syncthreads();
  return t;
}

__device__ __forceinline__ float block_max(float v, float* sh) {
  v = warp_max(v);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float t = lane < WARPS ? sh[lane] : NEG_INF;
  t = warp_max(t);
  __syncthreads();
  return t;
}

// Grid-stride loop over [0, n).
#define GRID_LOOP(i, n) \
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

#endif
