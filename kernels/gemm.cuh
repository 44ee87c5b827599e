// The tiled SGEMM core shared by matmul/linear and the three convolution
// kernels (which are implicit GEMMs: their loaders gather im2col columns
// on the fly, so no workspace holds the unfolded input).
//
// A block of 256 threads computes a BM x BN tile of C = A·B over k, with
// A seen as [M][K] and B as [N][K] ("rows" of both operands run along M
// and N). Each k-step of BK = 8 is staged in shared memory as [BK][rows]
// (double-buffered: the next tile's global loads are issued before this
// tile's math, so their latency hides behind it). The threads form a
// 16 x 16 grid; each owns a (BM/16) x (BN/16) register block of C made of
// 4 x 4 pieces 64 apart, which it reads from shared memory as float4s that
// a warp fetches without bank conflicts.
#ifndef GPURT_GEMM_CUH
#define GPURT_GEMM_CUH

#include "common.cuh"

#define BK 8
// Padding of each shared row: keeps float4 alignment and makes the
// transposing stores of k-contiguous loaders conflict-free.
#define SPAD 4

// Load E consecutive floats; aligned vector loads when E is 2 or 4.
template <int E>
__device__ __forceinline__ void vload(float* v, const float* q) {
  if constexpr (E == 4) {
    float4 t = *reinterpret_cast<const float4*>(q);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
  } else if constexpr (E == 2) {
    float2 t = *reinterpret_cast<const float2*>(q);
    v[0] = t.x; v[1] = t.y;
  } else {
    v[0] = *q;
  }
}

template <int E>
__device__ __forceinline__ void vstore(float* q, const float* v) {
  if constexpr (E == 4) {
    *reinterpret_cast<float4*>(q) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (E == 2) {
    *reinterpret_cast<float2*>(q) = make_float2(v[0], v[1]);
  } else {
    *q = v[0];
  }
}

// Thread layout of a loader that reads E consecutive k of one row
// ("k-contiguous" operands): 8/E threads per row.
template <int ROWS>
struct KMap {
  static constexpr int E = ROWS * BK / BLOCK;
  static __device__ __forceinline__ int row() { return threadIdx.x / (BK / E); }
  static __device__ __forceinline__ int k() { return (threadIdx.x % (BK / E)) * E; }
  // Transposing store into the [BK][ROWS + SPAD] tile.
  static __device__ __forceinline__ void store(float* s, const float* v) {
    int r = row(), k = KMap::k();
#pragma unroll
    for (int e = 0; e < E; e++) s[(k + e) * (ROWS + SPAD) + r] = v[e];
  }
};

// A dense operand with element (r, k) at p[r * ld + k] (KCONTIG) or
// p[k * ld + r]. `vec`: the host checked alignment of p and ld, so whole
// in-bounds runs load as one vector.
template <int ROWS, bool KCONTIG>
struct StridedLoader {
  static constexpr int E = ROWS * BK / BLOCK;
  const float* q;  // this thread's first element at k = 0
  int ld, K, kq;
  bool row_ok, vec;  // row(s) inside the operand (a whole vector run when !KCONTIG)
  int row_left;      // !KCONTIG: rows left from this thread's first row
  float v[E];

  __device__ __forceinline__ void init(const float* p, int ld_, int rows, int K_, int row0,
                                       bool vec_) {
    ld = ld_; K = K_; vec = vec_;
    if constexpr (KCONTIG) {
      int r = row0 + KMap<ROWS>::row();
      kq = KMap<ROWS>::k();
      row_ok = r < rows;
      q = p + r * ld + kq;
    } else {
      kq = threadIdx.x / (ROWS / E);
      int r = row0 + (threadIdx.x % (ROWS / E)) * E;
      row_left = rows - r;
      q = p + kq * ld + r;
    }
  }

  __device__ __forceinline__ void load(int k0) {
    int k = k0 + kq;
    if constexpr (KCONTIG) {
      const float* s = q + k0;
      if (vec && row_ok && k + E <= K) {
        vload<E>(v, s);
      } else {
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = (row_ok && k + e < K) ? s[e] : 0.0f;
      }
    } else {
      const float* s = q + k0 * ld;
      if (vec && k < K && row_left >= E) {
        vload<E>(v, s);
      } else {
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = (k < K && e < row_left) ? s[e] : 0.0f;
      }
    }
  }

  __device__ __forceinline__ void store(float* s) {
    if constexpr (KCONTIG) {
      KMap<ROWS>::store(s, v);
    } else {
      int lr = (threadIdx.x % (ROWS / E)) * E;
      vstore<E>(s + kq * (ROWS + SPAD) + lr, v);
    }
  }
};

// Accumulate C over k in [kbeg, kend) (kbeg a multiple of BK; loads past
// the operand's own K read zeros).
template <int BM, int BN, class LA, class LB>
__device__ __forceinline__ void gemm_mainloop(LA& la, LB& lb, int kbeg, int kend,
                                              float (&acc)[BM / 16][BN / 16]) {
  constexpr int TM = BM / 16, TN = BN / 16;
  __shared__ __align__(16) float As[2][BK][BM + SPAD];
  __shared__ __align__(16) float Bs[2][BK][BN + SPAD];
  int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < TM; i++)
#pragma unroll
    for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;

  la.load(kbeg);
  lb.load(kbeg);
  la.store(&As[0][0][0]);
  lb.store(&Bs[0][0][0]);
  __syncthreads();
  int buf = 0;
  for (int k0 = kbeg; k0 < kend; k0 += BK) {
    bool more = k0 + BK < kend;
    if (more) {
      la.load(k0 + BK);
      lb.load(k0 + BK);
    }
#pragma unroll
    for (int kk = 0; kk < BK; kk++) {
      // All of a, then b four at a time: four fewer live registers, which
      // keeps the 8x8 tile under 128 (two blocks per SM) without spills.
      float a[TM], b[4];
#pragma unroll
      for (int c = 0; c < TM / 4; c++) vload<4>(a + 4 * c, &As[buf][kk][c * 64 + ty * 4]);
#pragma unroll
      for (int c = 0; c < TN / 4; c++) {
        vload<4>(b, &Bs[buf][kk][c * 64 + tx * 4]);
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) acc[i][4 * c + j] = fmaf(a[i], b[j], acc[i][4 * c + j]);
      }
    }
    if (more) {
      la.store(&As[buf ^ 1][0][0]);
      lb.store(&Bs[buf ^ 1][0][0]);
    }
    __syncthreads();
    buf ^= 1;
  }
}

// Row (in M) and column (in N) of accumulator element (i, j) of this thread.
template <int BM>
__device__ __forceinline__ int tile_row(int m0, int i) {
  return m0 + (i / 4) * 64 + (threadIdx.x / 16) * 4 + (i % 4);
}
template <int BN>
__device__ __forceinline__ int tile_col(int n0, int j) {
  return n0 + (j / 4) * 64 + (threadIdx.x % 16) * 4 + (j % 4);
}

// Bias (per row of C, i.e. per M index, or per column) then the activation,
// on the register tile. Each loop is uniform across the block; only the
// transcendental activations go through the out-of-line call.
template <int BM, int BN>
__device__ __forceinline__ void tile_bias(float (&acc)[BM / 16][BN / 16], const float* row_bias,
                                          const float* col_bias, int m0, int n0, int M, int N) {
  if (row_bias) {
#pragma unroll
    for (int i = 0; i < BM / 16; i++) {
      int m = tile_row<BM>(m0, i);
      float b = m < M ? row_bias[m] : 0.0f;
#pragma unroll
      for (int j = 0; j < BN / 16; j++) acc[i][j] += b;
    }
  }
  if (col_bias) {
#pragma unroll
    for (int j = 0; j < BN / 16; j++) {
      int n = tile_col<BN>(n0, j);
      float b = n < N ? col_bias[n] : 0.0f;
#pragma unroll
      for (int i = 0; i < BM / 16; i++) acc[i][j] += b;
    }
  }
}

template <int TM, int TN>
__device__ __forceinline__ void tile_activate(float (&acc)[TM][TN], int act) {
  if (act == ACT_NONE) return;
  if (act == ACT_RELU) {
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
      for (int j = 0; j < TN; j++) acc[i][j] = relu(acc[i][j]);
    return;
  }
#pragma unroll
  for (int i = 0; i < TM; i++)
#pragma unroll
    for (int j = 0; j < TN; j++) acc[i][j] = act_forward_call(act, acc[i][j]);
}

// The k range of split `s` of `splits`: whole BK steps, the last one short.
__device__ __forceinline__ void split_range(int K, int splits, int s, int& kbeg, int& kend) {
  int per = ((K + splits - 1) / splits + BK - 1) / BK * BK;
  kbeg = s * per;
  kend = min(K, kbeg + per);
}

#endif
