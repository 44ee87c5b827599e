// A fused chain of elementwise ops: a stack program held in the params,
// run for every element. Every thread runs the same instructions, so the
// branches are uniform and one pipeline serves every chain.
//
// params: [0] n, [1] y, [2] instruction count, [3..9] input offsets,
// [9..15] 1 where that input has one element (broadcast), [16..] the
// instructions as (opcode, argument) pairs:
//   0 push input `arg` at this element (in place: the input's offset is y,
//     read before y is written)
//   1 top = act(top), arg the act code
//   2 pop dy, pop saved, push act'(saved) dy
//   3 pop b, pop a, push a op b, arg the binary kind (add, sub, mul, div)
//   4 top = top * arg (f32 bits)

const STACK: u32 = 8u;

fn binop(kind: u32, a: f32, b: f32) -> f32 {
    switch kind {
        case 0u: {
            return a + b;
        }
        case 1u: {
            return a - b;
        }
        case 2u: {
            return a * b;
        }
        default: {
            return a / b;
        }
    }
}

@compute @workgroup_size(256)
fn elementwise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    var stk: array<f32, STACK>;
    var sp = 0u;
    for (var pc = 0u; pc < pu(2u); pc++) {
        let op = pu(16u + 2u * pc);
        let arg = pu(17u + 2u * pc);
        switch op {
            case 0u: {
                let at = select(i, 0u, pu(9u + arg) == 1u);
                stk[sp] = ld(pu(3u + arg) + at);
                sp++;
            }
            case 1u: {
                stk[sp - 1u] = act_fwd(arg, stk[sp - 1u]);
            }
            case 2u: {
                stk[sp - 2u] = act_bwd(arg, stk[sp - 2u], stk[sp - 1u]);
                sp--;
            }
            case 3u: {
                stk[sp - 2u] = binop(arg, stk[sp - 2u], stk[sp - 1u]);
                sp--;
            }
            default: {
                stk[sp - 1u] = stk[sp - 1u] * bitcast<f32>(arg);
            }
        }
    }
    st(pu(1u) + i, stk[0]);
}
