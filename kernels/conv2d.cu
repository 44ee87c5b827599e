// 2-D convolution, NCHW activations and OIHW weights, as implicit GEMMs
// on the shared SGEMM core (gemm.cuh). The loaders below gather the
// unfolded (im2col) operand tile by tile, so no workspace is needed and
// every output element is written once, by one thread: no atomics, and the
// same result on every run.
//
//   forward      y[n,co,p]     = W[co, (ci,kh,kw)] · X[(ci,kh,kw), (n,p)]
//   grad input   dx[n,ci,h,w]  = Wᵀ[ci, (co,kh,kw)] · DY[(co,kh,kw), (n,h,w)]
//                (a gather: only taps whose output position exists add in)
//   grad weight  dw[co,(ci,kh,kw)] = DY[co, (n,p)] · Xᵀ[(n,p), (ci,kh,kw)]
//                (k = N·OH·OW is long, so it is split over blocks and the
//                partials summed in order by gemm_splitk_reduce)
//
// Index decompositions (k -> ci, kh, kw ...) are done once per tile and
// then stepped, so the inner loads need no divisions.
#include "gemm.cuh"

struct ConvGeom {
  // Conv2dGeom::kernel_params in src/ops/conv2d.rs.
  int n, ci, h, w, co, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
};

// Forward B: rows are output pixels j = (n, oh, ow), k = (ci, kh, kw).
// Consecutive threads take consecutive pixels, so reads are coalesced.
template <int ROWS>
struct Im2colLoader {
  static constexpr int E = ROWS * BK / BLOCK;
  const float* x;
  ConvGeom g;
  int ih0, iw0, K;
  bool ok;
  float v[E];

  __device__ __forceinline__ void init(const float* x_, const ConvGeom& g_, int col0) {
    g = g_;
    K = g.ci * g.kh * g.kw;
    int P = g.oh * g.ow;
    int j = col0 + threadIdx.x % ROWS;
    ok = j < g.n * P;
    int n = ok ? j / P : 0, p = j % P;
    ih0 = (p / g.ow) * g.sh - g.ph;
    iw0 = (p % g.ow) * g.sw - g.pw;
    x = x_ + n * g.ci * g.h * g.w;
  }

  __device__ __forceinline__ void load(int k0) {
    int k = k0 + (threadIdx.x / ROWS) * E;
    int khw = g.kh * g.kw;
    int ci = k / khw, r = k % khw;
    int kh = r / g.kw, kw = r % g.kw;
#pragma unroll
    for (int e = 0; e < E; e++) {
      int ih = ih0 + kh * g.dh, iw = iw0 + kw * g.dw;
      bool in = ok && k < K && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w;
      v[e] = in ? x[(ci * g.h + ih) * g.w + iw] : 0.0f;
      k++;
      if (++kw == g.kw) {
        kw = 0;
        if (++kh == g.kh) {
          kh = 0;
          ci++;
        }
      }
    }
  }

  __device__ __forceinline__ void store(float* s) {
    int r = threadIdx.x % ROWS, k = (threadIdx.x / ROWS) * E;
#pragma unroll
    for (int e = 0; e < E; e++) s[(k + e) * (ROWS + SPAD) + r] = v[e];
  }
};

// Grad-input A: rows ci, k = (co, kh, kw): W[co][ci][kh][kw].
template <int ROWS>
struct WeightTLoader {
  static constexpr int E = ROWS * BK / BLOCK;
  const float* w;
  int ci_n, khw, K, r;
  float v[E];

  __device__ __forceinline__ void init(const float* w_, const ConvGeom& g, int row0) {
    w = w_;
    ci_n = g.ci;
    khw = g.kh * g.kw;
    K = g.co * khw;
    r = row0 + KMap<ROWS>::row();
  }

  __device__ __forceinline__ void load(int k0) {
    int k = k0 + KMap<ROWS>::k();
    int co = k / khw, t = k % khw;
#pragma unroll
    for (int e = 0; e < E; e++) {
      v[e] = (r < ci_n && k < K) ? w[(co * ci_n + r) * khw + t] : 0.0f;
      k++;
      if (++t == khw) {
        t = 0;
        co++;
      }
    }
  }

  __device__ __forceinline__ void store(float* s) { KMap<ROWS>::store(s, v); }
};

// Grad-input B: rows are input pixels j = (n, h, w), k = (co, kh, kw);
// the tap reads dy[n, co, oh, ow] where oh·sh = h + ph − kh·dh exactly.
template <int ROWS>
struct DyGatherLoader {
  static constexpr int E = ROWS * BK / BLOCK;
  const float* dy;
  ConvGeom g;
  int hh, ww, K;
  bool ok;
  float v[E];

  __device__ __forceinline__ void init(const float* dy_, const ConvGeom& g_, int col0) {
    g = g_;
    K = g.co * g.kh * g.kw;
    int HW = g.h * g.w;
    int j = col0 + threadIdx.x % ROWS;
    ok = j < g.n * HW;
    int n = ok ? j / HW : 0, p = j % HW;
    hh = p / g.w + g.ph;
    ww = p % g.w + g.pw;
    dy = dy_ + n * g.co * g.oh * g.ow;
  }

  __device__ __forceinline__ void load(int k0) {
    int k = k0 + (threadIdx.x / ROWS) * E;
    int khw = g.kh * g.kw;
    int co = k / khw, r = k % khw;
    int kh = r / g.kw, kw = r % g.kw;
#pragma unroll
    for (int e = 0; e < E; e++) {
      int th = hh - kh * g.dh, tw = ww - kw * g.dw;
      bool in = ok && k < K && th >= 0 && tw >= 0;
      int oh = th, ow = tw;
      if (g.sh != 1) {
        in = in && th % g.sh == 0;
        oh = th / g.sh;
      }
      if (g.sw != 1) {
        in = in && tw % g.sw == 0;
        ow = tw / g.sw;
      }
      in = in && oh < g.oh && ow < g.ow;
      v[e] = in ? dy[(co * g.oh + oh) * g.ow + ow] : 0.0f;
      k++;
      if (++kw == g.kw) {
        kw = 0;
        if (++kh == g.kh) {
          kh = 0;
          co++;
        }
      }
    }
  }

  __device__ __forceinline__ void store(float* s) {
    int r = threadIdx.x % ROWS, k = (threadIdx.x / ROWS) * E;
#pragma unroll
    for (int e = 0; e < E; e++) s[(k + e) * (ROWS + SPAD) + r] = v[e];
  }
};

// Grad-weight A: rows co, k = (n, p): dy[n][co][p], k-contiguous runs.
template <int ROWS>
struct DyRowLoader {
  static constexpr int E = ROWS * BK / BLOCK;
  const float* dy;
  int co_n, P, K, r;
  float v[E];

  __device__ __forceinline__ void init(const float* dy_, const ConvGeom& g, int row0) {
    dy = dy_;
    co_n = g.co;
    P = g.oh * g.ow;
    K = g.n * P;
    r = row0 + KMap<ROWS>::row();
  }

  __device__ __forceinline__ void load(int k0) {
    int k = k0 + KMap<ROWS>::k();
    int n = k / P, p = k % P;
#pragma unroll
    for (int e = 0; e < E; e++) {
      v[e] = (r < co_n && k < K) ? dy[(n * co_n + r) * P + p] : 0.0f;
      k++;
      if (++p == P) {
        p = 0;
        n++;
      }
    }
  }

  __device__ __forceinline__ void store(float* s) { KMap<ROWS>::store(s, v); }
};

// Grad-weight B: rows j = (ci, kh, kw), k = (n, oh, ow): the input tap of
// weight j at output pixel k.
template <int ROWS>
struct XColLoader {
  static constexpr int E = ROWS * BK / BLOCK;
  const float* x;
  ConvGeom g;
  int offh, offw, K;
  bool ok;
  float v[E];

  __device__ __forceinline__ void init(const float* x_, const ConvGeom& g_, int row0) {
    g = g_;
    K = g.n * g.oh * g.ow;
    int khw = g.kh * g.kw;
    int j = row0 + KMap<ROWS>::row();
    ok = j < g.ci * khw;
    int ci = ok ? j / khw : 0, t = j % khw;
    offh = (t / g.kw) * g.dh - g.ph;
    offw = (t % g.kw) * g.dw - g.pw;
    x = x_ + ci * g.h * g.w;
  }

  __device__ __forceinline__ void load(int k0) {
    int k = k0 + KMap<ROWS>::k();
    int P = g.oh * g.ow;
    int n = k / P, p = k % P;
    int oh = p / g.ow, ow = p % g.ow;
    int img = g.ci * g.h * g.w;
#pragma unroll
    for (int e = 0; e < E; e++) {
      int ih = oh * g.sh + offh, iw = ow * g.sw + offw;
      bool in = ok && k < K && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w;
      v[e] = in ? x[n * img + ih * g.w + iw] : 0.0f;
      k++;
      if (++ow == g.ow) {
        ow = 0;
        if (++oh == g.oh) {
          oh = 0;
          n++;
        }
      }
    }
  }

  __device__ __forceinline__ void store(float* s) { KMap<ROWS>::store(s, v); }
};

// Write C(m, j) of an image-major output [n][M][P] (j = n·P + p).
template <int BM, int BN>
__device__ __forceinline__ void store_image_major(float* out, const float (&acc)[BM / 16][BN / 16],
                                                  int m0, int n0, int M, int NP, int P) {
#pragma unroll
  for (int j = 0; j < BN / 16; j++) {
    int c = tile_col<BN>(n0, j);
    if (c >= NP) continue;
    int n = c / P, p = c % P;
    float* o = out + n * M * P + p;
#pragma unroll
    for (int i = 0; i < BM / 16; i++) {
      int m = tile_row<BM>(m0, i);
      if (m < M) o[m * P] = acc[i][j];
    }
  }
}

// Add an image-major residual [n][M][P] (same indexing as the store) to
// the tile: a fused skip connection, before the activation.
template <int BM, int BN>
__device__ __forceinline__ void tile_residual(float (&acc)[BM / 16][BN / 16], const float* res,
                                              int m0, int n0, int M, int NP, int P) {
  if (!res) return;
#pragma unroll
  for (int j = 0; j < BN / 16; j++) {
    int c = tile_col<BN>(n0, j);
    if (c >= NP) continue;
    int n = c / P, p = c % P;
    const float* r = res + n * M * P + p;
#pragma unroll
    for (int i = 0; i < BM / 16; i++) {
      int m = tile_row<BM>(m0, i);
      if (m < M) acc[i][j] += r[m * P];
    }
  }
}

template <int BM, int BN>
__device__ __forceinline__ void conv_fwd(const float* x, const float* w, const float* bias,
                                         const float* res, float* y, const ConvGeom& g, int act,
                                         int vec_w) {
  int K = g.ci * g.kh * g.kw, P = g.oh * g.ow;
  int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  StridedLoader<BM, true> la;
  Im2colLoader<BN> lb;
  la.init(w, K, g.co, K, m0, vec_w);
  lb.init(x, g, n0);
  float acc[BM / 16][BN / 16];
  gemm_mainloop<BM, BN>(la, lb, 0, K, acc);
  tile_bias<BM, BN>(acc, bias, nullptr, m0, n0, g.co, g.n * P);
  tile_residual<BM, BN>(acc, res, m0, n0, g.co, g.n * P, P);
  tile_activate(acc, act);
  store_image_major<BM, BN>(y, acc, m0, n0, g.co, g.n * P, P);
}

template <int BM, int BN>
__device__ __forceinline__ void conv_dgrad(const float* dy, const float* w, float* dx,
                                           const ConvGeom& g) {
  int K = g.co * g.kh * g.kw, HW = g.h * g.w;
  int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  WeightTLoader<BM> la;
  DyGatherLoader<BN> lb;
  la.init(w, g, m0);
  lb.init(dy, g, n0);
  float acc[BM / 16][BN / 16];
  gemm_mainloop<BM, BN>(la, lb, 0, K, acc);
  store_image_major<BM, BN>(dx, acc, m0, n0, g.ci, g.n * HW, HW);
}

template <int BM, int BN>
__device__ __forceinline__ void conv_wgrad(const float* x, const float* dy, float* dw, float* work,
                                           const ConvGeom& g, int splits) {
  int M = g.co, N = g.ci * g.kh * g.kw, K = g.n * g.oh * g.ow;
  int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  DyRowLoader<BM> la;
  XColLoader<BN> lb;
  la.init(dy, g, m0);
  lb.init(x, g, n0);
  int kbeg, kend;
  split_range(K, splits, blockIdx.z, kbeg, kend);
  float acc[BM / 16][BN / 16];
  gemm_mainloop<BM, BN>(la, lb, kbeg, kend, acc);
  float* out = splits > 1 ? work + blockIdx.z * (M * N) : dw;
#pragma unroll
  for (int i = 0; i < BM / 16; i++) {
    int m = tile_row<BM>(m0, i);
#pragma unroll
    for (int j = 0; j < BN / 16; j++) {
      int n = tile_col<BN>(n0, j);
      if (m < M && n < N) out[m * N + n] = acc[i][j];
    }
  }
}

#define CONV_ENTRIES(t, BM, BN)                                                                  \
  extern "C" __global__ void __launch_bounds__(BLOCK, BN == 128 ? 2 : 4)                      \
      conv2d_fwd_##t(const float* x, const float* w, const float* bias, const float* res,       \
                     float* y, ConvGeom g, int act, int vec_w) {                                \
    conv_fwd<BM, BN>(x, w, bias, res, y, g, act, vec_w);                                        \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(BLOCK, BN == 128 ? 2 : 4)                      \
      conv2d_dgrad_##t(const float* dy, const float* w, float* dx, ConvGeom g) {                \
    conv_dgrad<BM, BN>(dy, w, dx, g);                                                           \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(BLOCK, BN == 128 ? 2 : 4)                      \
      conv2d_wgrad_##t(const float* x, const float* dy, float* dw, float* work, ConvGeom g,     \
                       int splits) {                                                            \
    conv_wgrad<BM, BN>(x, dy, dw, work, g, splits);                                             \
  }

CONV_ENTRIES(l, 128, 128)
CONV_ENTRIES(m, 64, 128)
CONV_ENTRIES(s, 64, 64)
