// Copies without arithmetic. Strided copy: y[i] = x[offset of i in a
// strided view of x]; transpose (permuted strides) and broadcast_to (zero
// strides on broadcast axes) are both this one kernel. Row copy: concat
// and slice, as row blocks between tensors of different row lengths.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK)
    strided_copy(const float* x, float* y, int n, Strided g) {
  GRID_LOOP(i, n) {
    int o, unused;
    strided_offsets(g, i, o, unused);
    y[i] = x[o];
  }
}

// y[r * y_stride + c] = x[r * x_stride + c] for r < rows, c < len. The
// launch offsets x and y to the block's first column: concat is one
// launch per input, slice one launch.
extern "C" __global__ void __launch_bounds__(BLOCK)
    copy_rows(const float* x, float* y, int rows, int len, int x_stride, int y_stride) {
  GRID_LOOP(i, rows * len) {
    int r = i / len;
    int c = i - r * len;
    y[r * y_stride + c] = x[r * x_stride + c];
  }
}
