//! Batch normalisation over NCHW (per channel). Training uses the batch
//! statistics and updates the running averages in place (PyTorch's
//! momentum convention, unbiased running variance); inference uses the
//! running averages.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

pub struct BatchNormParams {
    pub gamma: ValueId,
    pub beta: ValueId,
    pub running_mean: ValueId,
    pub running_var: ValueId,
}

impl Graph {
    pub fn batch_norm2d(
        &mut self,
        x: ValueId,
        p: &BatchNormParams,
        eps: f32,
        momentum: f32,
    ) -> Result<ValueId> {
        let s = self.shape(x).clone();
        if s.rank() != 4 {
            return Err(Error::shape(
                "batch_norm2d",
                format!("input {s} is not [N,C,H,W]"),
            ));
        }
        let c = Shape(vec![s.0[1]]);
        for (name, v) in [
            ("weight", p.gamma),
            ("bias", p.beta),
            ("running_mean", p.running_mean),
            ("running_var", p.running_var),
        ] {
            if self.shape(v) != &c {
                return Err(Error::shape(
                    "batch_norm2d",
                    format!("{name} {} for input {s} (expected {c})", self.shape(v)),
                ));
            }
        }
        let training = self.training;
        let op = Op::BatchNorm2d {
            eps,
            momentum,
            training,
            act: None,
            residual: false,
        };
        if training {
            let outs = self.push_node(
                op,
                vec![x, p.gamma, p.beta],
                vec![(s, DType::F32), (c.clone(), DType::F32), (c, DType::F32)],
                vec![p.running_mean, p.running_var],
            )?;
            Ok(outs[0])
        } else {
            self.push1(
                op,
                vec![x, p.gamma, p.beta, p.running_mean, p.running_var],
                s,
            )
        }
    }
}

pub fn backward(
    g: &mut Graph,
    inputs: &[ValueId],
    outputs: &[ValueId],
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>> {
    let (x, gamma) = (inputs[0], inputs[1]);
    let (sx, sc) = (g.shape(x).clone(), g.shape(gamma).clone());
    let outs = g.push_node(
        Op::BatchNorm2dBackward { act: None },
        vec![x, gamma, outputs[1], outputs[2], dy],
        vec![(sx, DType::F32), (sc.clone(), DType::F32), (sc, DType::F32)],
        vec![],
    )?;
    Ok(vec![Some(outs[0]), Some(outs[1]), Some(outs[2])])
}
