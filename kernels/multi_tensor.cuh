// The tensor table of a fused multi-tensor optimiser launch. The host
// writes it once, at compile time, into a device buffer: each entry names
// one parameter's gradient, the parameter and up to two state tensors (as
// word offsets from the arena base) and the first block that works on it.
// Block b finds its entry by binary search and updates one chunk of it.
#ifndef GPURT_MULTI_TENSOR_CUH
#define GPURT_MULTI_TENSOR_CUH

#include "common.cuh"

// Elements per block: 256 threads × 2 float4s.
#define MT_CHUNK (BLOCK * 8)

struct MtEntry {
  long long g, p, s1, s2;  // word offsets (s1/s2 unused when the optimiser has no state)
  int n;                   // elements
  int first_block;
  int vec;                 // all four offsets are multiples of 4 words
  int pad;
};

// The entry of this block, shared by the whole block.
__device__ __forceinline__ MtEntry mt_entry(const MtEntry* tab, int count) {
  __shared__ int found;
  if (threadIdx.x == 0) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) / 2;
      if (tab[mid].first_block <= (int)blockIdx.x) lo = mid;
      else hi = mid - 1;
    }
    found = lo;
  }
  __syncthreads();
  return tab[found];
}

#endif
