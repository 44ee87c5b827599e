// SGEMM for matmul (2-D and batched, either operand transposed) and the
// linear layer (x · wᵀ + bias, then an activation, in the epilogue).
//
// Entry names: sgemm_<tile>_<a><b>, tile l = 128x128 (8x8 per thread),
// m = 64x128 (4x8, for M around 64, e.g. a batch of 64 rows) or s = 64x64
// (4x4, for products too small to fill the GPU with bigger tiles);
// a = k when A is stored [M][K] (k contiguous) or m when stored [K][M];
// b = k when B is stored [N][K] or n when stored [K][N].
//
// Split-K: with splits > 1, blockIdx.z = batch * splits + split and each
// block writes its raw partial tile to `work`; gemm_splitk_reduce then sums
// the partials in split order (deterministic) and applies the epilogue.
#include "gemm.cuh"

#define BIAS_NONE 0
#define BIAS_COL 1
#define BIAS_ROW 2

// flags: bit 0 vector loads of A, bit 1 of B, bit 2 vector stores of C.
#define F_VEC_A 1
#define F_VEC_B 2
#define F_VEC_C 4

__device__ __forceinline__ float epilogue(float v, const float* bias, int bias_mode, int act,
                                          int m, int n) {
  if (bias_mode == BIAS_COL) v += bias[n];
  else if (bias_mode == BIAS_ROW) v += bias[m];
  return act_epilogue(act, v);
}

template <int BM, int BN, bool AK, bool BKC>
__device__ __forceinline__ void sgemm(const float* A, const float* B, float* C, const float* bias,
                                      float* work, int M, int N, int K, int lda, int ldb, int ldc,
                                      int sA, int sB, int sC, int splits, int bias_mode, int act,
                                      int flags) {
  constexpr int TM = BM / 16, TN = BN / 16;
  int z = blockIdx.z / splits, s = blockIdx.z % splits;
  int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  StridedLoader<BM, AK> la;
  StridedLoader<BN, BKC> lb;
  la.init(A + z * sA, lda, M, K, m0, flags & F_VEC_A);
  lb.init(B + z * sB, ldb, N, K, n0, flags & F_VEC_B);
  int kbeg, kend;
  split_range(K, splits, s, kbeg, kend);
  float acc[TM][TN];
  gemm_mainloop<BM, BN>(la, lb, kbeg, kend, acc);

  if (splits > 1) {
    float* P = work + blockIdx.z * (M * N);
#pragma unroll
    for (int i = 0; i < TM; i++) {
      int m = tile_row<BM>(m0, i);
#pragma unroll
      for (int j = 0; j < TN; j++) {
        int n = tile_col<BN>(n0, j);
        if (m < M && n < N) P[m * N + n] = acc[i][j];
      }
    }
    return;
  }
  C += z * sC;
  tile_bias<BM, BN>(acc, bias_mode == BIAS_ROW ? bias : nullptr,
                    bias_mode == BIAS_COL ? bias : nullptr, m0, n0, M, N);
  tile_activate(acc, act);
#pragma unroll
  for (int i = 0; i < TM; i++) {
    int m = tile_row<BM>(m0, i);
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; j += 4) {
      int n = tile_col<BN>(n0, j);
      float* c = C + m * ldc + n;
      if ((flags & F_VEC_C) && n + 3 < N) {
        vstore<4>(c, &acc[i][j]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; e++)
          if (n + e < N) c[e] = acc[i][j + e];
      }
    }
  }
}

// 128-wide tiles are capped at 128 registers so two blocks share an SM.
#define SGEMM_ENTRY(name, BM, BN, AK, BKC)                                                        \
  extern "C" __global__ void __launch_bounds__(BLOCK, BN == 128 ? 2 : 4)                         \
      name(const float* A, const float* B, float* C, const float* bias, float* work, int M,      \
           int N, int K, int lda, int ldb, int ldc, int sA, int sB, int sC, int splits,          \
           int bias_mode, int act, int flags) {                                                  \
    sgemm<BM, BN, AK, BKC>(A, B, C, bias, work, M, N, K, lda, ldb, ldc, sA, sB, sC, splits,      \
                           bias_mode, act, flags);                                               \
  }

SGEMM_ENTRY(sgemm_l_kk, 128, 128, true, true)
SGEMM_ENTRY(sgemm_l_kn, 128, 128, true, false)
SGEMM_ENTRY(sgemm_l_mk, 128, 128, false, true)
SGEMM_ENTRY(sgemm_l_mn, 128, 128, false, false)
SGEMM_ENTRY(sgemm_m_kk, 64, 128, true, true)
SGEMM_ENTRY(sgemm_m_kn, 64, 128, true, false)
SGEMM_ENTRY(sgemm_m_mk, 64, 128, false, true)
SGEMM_ENTRY(sgemm_m_mn, 64, 128, false, false)
SGEMM_ENTRY(sgemm_s_kk, 64, 64, true, true)
SGEMM_ENTRY(sgemm_s_kn, 64, 64, true, false)
SGEMM_ENTRY(sgemm_s_mk, 64, 64, false, true)
SGEMM_ENTRY(sgemm_s_mn, 64, 64, false, false)

// C[z] = epilogue(sum over splits of work[z * splits + s]), for every z.
extern "C" __global__ void __launch_bounds__(BLOCK)
    gemm_splitk_reduce(const float* work, float* C, const float* bias, int M, int N, int batch,
                       int splits, int ldc, int sC, int bias_mode, int act) {
  int mn = M * N;
  GRID_LOOP(i, batch * mn) {
    int z = i / mn, r = i % mn, m = r / N, n = r % N;
    const float* p = work + z * splits * mn + r;
    float v = 0.0f;
    for (int s = 0; s < splits; s++) v += p[s * mn];
    C[z * sC + m * ldc + n] = epilogue(v, bias, bias_mode, act, m, n);
  }
}
