//! The text layers' graphs: token and positional embeddings and the
//! transformer encoder, with `nn.TransformerEncoder`'s parameter names
//! (`<prefix>.layers.<i>.self_attn.in_proj_weight`, `...linear1.weight`,
//! `...norm1.weight`, then `<prefix>.norm.weight`).

use super::spec::Init;
use crate::error::Result;
use crate::graph::ir::{Graph, ValueId};
use crate::ops::dropout::hash32;
use crate::ops::Activation;

/// Declares a parameter under the layer's prefix (`suffix`, shape, init).
pub(super) type Declare<'a> = dyn FnMut(&mut Graph, &str, Vec<usize>, Init) -> Result<ValueId> + 'a;

/// The encoder's settings.
pub(super) struct Encoder {
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub dropout: f32,
    pub act: Activation,
    /// Distinguishes this encoder's dropout masks from other layers'.
    pub seed: u32,
}

/// `nn.MultiheadAttention`'s and `nn.Linear`'s initialisations: Xavier-
/// uniform packed projection with zero biases; fan-in uniform elsewhere.
fn xavier(fan_in: usize, fan_out: usize) -> Init {
    Init::Uniform((6.0 / (fan_in + fan_out) as f32).sqrt())
}

impl Encoder {
    /// `x [N, T, D]` through every layer and the final norm.
    pub(super) fn build(
        &self,
        g: &mut Graph,
        declare: &mut Declare,
        x: ValueId,
        lengths: ValueId,
    ) -> Result<ValueId> {
        let d = g.shape(x).0[2];
        let mut x = x;
        for i in 0..self.layers {
            x = self.layer(g, declare, x, lengths, i, d)?;
        }
        let w = declare(g, "norm.weight", vec![d], Init::Ones)?;
        let b = declare(g, "norm.bias", vec![d], Init::Zeros)?;
        g.layer_norm(x, Some(w), Some(b), 1e-5)
    }

    fn dropout(&self, g: &mut Graph, x: ValueId, layer: usize, k: u32) -> Result<ValueId> {
        if self.dropout == 0.0 {
            return Ok(x);
        }
        let seed = hash32(self.seed ^ hash32((layer as u32) << 4 | k));
        g.dropout(x, self.dropout, seed)
    }

    /// `x + drop(attn(norm1(x)))`, then `x + drop(lin2(drop(act(lin1(norm2(x))))))`.
    fn layer(
        &self,
        g: &mut Graph,
        declare: &mut Declare,
        x: ValueId,
        lengths: ValueId,
        i: usize,
        d: usize,
    ) -> Result<ValueId> {
        let p = |s: &str| format!("layers.{i}.{s}");
        let mut param =
            |g: &mut Graph, s: &str, shape: Vec<usize>, init: Init| declare(g, &p(s), shape, init);
        let n1w = param(g, "norm1.weight", vec![d], Init::Ones)?;
        let n1b = param(g, "norm1.bias", vec![d], Init::Zeros)?;
        let in_w = param(
            g,
            "self_attn.in_proj_weight",
            vec![3 * d, d],
            xavier(d, 3 * d),
        )?;
        let in_b = param(g, "self_attn.in_proj_bias", vec![3 * d], Init::Zeros)?;
        let out_w = param(g, "self_attn.out_proj.weight", vec![d, d], Init::FanIn(d))?;
        let out_b = param(g, "self_attn.out_proj.bias", vec![d], Init::Zeros)?;
        let l1w = param(g, "linear1.weight", vec![self.ffn, d], Init::FanIn(d))?;
        let l1b = param(g, "linear1.bias", vec![self.ffn], Init::FanIn(d))?;
        let l2w = param(
            g,
            "linear2.weight",
            vec![d, self.ffn],
            Init::FanIn(self.ffn),
        )?;
        let l2b = param(g, "linear2.bias", vec![d], Init::FanIn(self.ffn))?;
        let n2w = param(g, "norm2.weight", vec![d], Init::Ones)?;
        let n2b = param(g, "norm2.bias", vec![d], Init::Zeros)?;

        let h = g.layer_norm(x, Some(n1w), Some(n1b), 1e-5)?;
        let qkv = g.linear(h, in_w, Some(in_b))?;
        let a = g.attention(qkv, lengths, self.heads)?;
        let a = g.linear(a, out_w, Some(out_b))?;
        let a = self.dropout(g, a, i, 0)?;
        let x = g.add(x, a)?;
        let h = g.layer_norm(x, Some(n2w), Some(n2b), 1e-5)?;
        let f = g.linear(h, l1w, Some(l1b))?;
        let f = g.act(self.act, f)?;
        let f = self.dropout(g, f, i, 1)?;
        let f = g.linear(f, l2w, Some(l2b))?;
        let f = self.dropout(g, f, i, 2)?;
        g.add(x, f)
    }
}
