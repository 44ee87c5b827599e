// A fused chain of elementwise ops: one kernel runs a short stack program
// over every element. The program is a kernel parameter (constant memory;
// every thread takes the same branch), so a new chain needs no new code.
//
// The host resolves the stack to fixed slots: instruction i writes slot
// d(i), and binary-like instructions read slots d and d + 1. Slots are
// registers: they are only ever indexed by unrolled constants, selected by
// d with predicated moves.
#include "common.cuh"

#define EW_MAX_INSTR 32
#define EW_SLOTS 8
#define EW_INPUTS 6

// code = op | slot << 8 | arg << 16.
#define EW_INPUT 0     // slot = input[arg] at this element (or its only element)
#define EW_ACT 1       // slot = act_arg(slot)
#define EW_ACT_BWD 2   // slot = act_arg'(slot) · slot+1
#define EW_BINARY 3    // slot = slot ∘_arg slot+1
#define EW_SCALE 4     // slot = slot · imm

struct EwProgram {
  int len;
  int code[EW_MAX_INSTR];
  float imm[EW_MAX_INSTR];
};

__device__ __forceinline__ float slot_get(const float (&r)[EW_SLOTS], int d) {
  float v = r[0];
#pragma unroll
  for (int s = 1; s < EW_SLOTS; s++)
    if (d == s) v = r[s];
  return v;
}

// `scalar_mask` bit i: input i has one element, broadcast to all.
extern "C" __global__ void __launch_bounds__(BLOCK)
    elementwise(const float* in0, const float* in1, const float* in2, const float* in3,
               const float* in4, const float* in5, float* y, int n, int scalar_mask,
               EwProgram prog) {
  GRID_LOOP(i, n) {
    float r[EW_SLOTS];
#pragma unroll
    for (int s = 0; s < EW_SLOTS; s++) r[s] = 0.0f;
    for (int ip = 0; ip < prog.len; ip++) {
      int code = prog.code[ip];
      int op = code & 0xff, d = (code >> 8) & 0xff, arg = code >> 16;
      float a = slot_get(r, d), v;
      if (op == EW_INPUT) {
        const float* p = arg == 0 ? in0 : arg == 1 ? in1 : arg == 2 ? in2
                       : arg == 3 ? in3 : arg == 4 ? in4 : in5;
        v = p[(scalar_mask >> arg) & 1 ? 0 : i];
      } else if (op == EW_ACT) {
        v = act_forward(arg, a);
      } else if (op == EW_SCALE) {
        v = a * prog.imm[ip];
      } else {
        float b = slot_get(r, d + 1);
        v = op == EW_ACT_BWD ? act_backward(arg, a, b) : binary_apply(arg, a, b);
      }
#pragma unroll
      for (int s = 0; s < EW_SLOTS; s++)
        if (d == s) r[s] = v;
    }
    y[i] = r[0];
  }
}
