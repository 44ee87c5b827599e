//! Matrix multiply: 2-D and batched, either operand transposed.
//!
//! The CPU kernel is a thin, checked wrapper over the `gemm` crate (with its
//! AVX-512 path enabled), which is as fast as MKL on these machines.
use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::Shape;

/// (batch, m, k, n) of a matmul over operands of the given shapes.
pub fn matmul_dims(
    sa: &Shape,
    ta: bool,
    sb: &Shape,
    tb: bool,
) -> Result<(usize, usize, usize, usize)> {
    let bad = |why: &str| {
        Error::shape(
            "matmul",
            format!(
                "a {sa}{} and b {sb}{}: {why}",
                if ta { "ᵀ" } else { "" },
                if tb { "ᵀ" } else { "" }
            ),
        )
    };
    if sa.rank() < 2 || sb.rank() < 2 {
        return Err(bad("both operands need rank >= 2"));
    }
    if sa.rank() != sb.rank() || sa.0[..sa.rank() - 2] != sb.0[..sb.rank() - 2] {
        return Err(bad("batch dimensions differ"));
    }
    let r = sa.rank();
    let batch: usize = sa.0[..r - 2].iter().product();
    let (m, ka) = if ta {
        (sa.0[r - 1], sa.0[r - 2])
    } else {
        (sa.0[r - 2], sa.0[r - 1])
    };
    let (kb, n) = if tb {
        (sb.0[r - 1], sb.0[r - 2])
    } else {
        (sb.0[r - 2], sb.0[r - 1])
    };
    if ka != kb {
        return Err(bad(&format!("inner dimensions {ka} and {kb} differ")));
    }
    Ok((batch, m, ka, n))
}

impl Graph {
    /// `op(a) · op(b)`. Batched when both have the same leading dims; a
    /// batched `a` (not transposed) times a 2-D `b` is folded into one 2-D
    /// product.
    pub fn matmul_t(&mut self, a: ValueId, ta: bool, b: ValueId, tb: bool) -> Result<ValueId> {
        self.expect_f32("matmul", a)?;
        self.expect_f32("matmul", b)?;
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        if sa.rank() > 2 && sb.rank() == 2 && !ta {
            let k = sa.last();
            let rows = sa.numel() / k.max(1);
            let a2 = self.reshape(a, [rows, k])?;
            let y = self.matmul_t(a2, false, b, tb)?;
            let mut out = sa.0.clone();
            *out.last_mut().unwrap() = self.shape(y).last();
            return self.reshape(y, out);
        }
        let (_, m, _, n) = matmul_dims(&sa, ta, &sb, tb)?;
        let mut out = sa.0[..sa.rank() - 2].to_vec();
        out.extend([m, n]);
        self.push1(Op::MatMul { ta, tb }, vec![a, b], Shape(out))
    }
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.matmul_t(a, false, b, false)
    }
}

/// Gradient rule: with C = op(A)·op(B), dA and dB are again matmuls with
/// transpose flags, so no transpose is ever materialised.
pub fn backward(
    g: &mut Graph,
    ta: bool,
    tb: bool,
    a: ValueId,
    b: ValueId,
    dc: ValueId,
) -> Result<[Option<ValueId>; 2]> {
    let da = if !ta {
        g.matmul_t(dc, false, b, !tb)?
    } else {
        g.matmul_t(b, tb, dc, true)?
    };
    let db = if !tb {
        g.matmul_t(a, !ta, dc, false)?
    } else {
        g.matmul_t(dc, true, a, ta)?
    };
    Ok([Some(da), Some(db)])
}
