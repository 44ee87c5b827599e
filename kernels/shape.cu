// Strided copy: y[i] = x[offset of i in a strided view of x]. Transpose
// (permuted strides) and broadcast_to (zero strides on broadcast axes)
// are both this one kernel.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK)
    strided_copy(const float* x, float* y, int n, Strided g) {
  GRID_LOOP(i, n) {
    int o, unused;
    strided_offsets(g, i, o, unused);
    y[i] = x[o];
  }
}
