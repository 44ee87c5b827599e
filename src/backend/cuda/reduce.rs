//! CUDA lowering of the reductions (row-wise softmax-like kernels, sums
//! over axes) and the multi-tensor optimiser tables.

use super::args::*;
use super::layout::*;
use super::plan::{operands, Planner, Scratch};
use crate::error::Result;
use crate::graph::kernel::Planes;
use crate::graph::plan::{Launch, Slot};
use crate::ops::Activation;

impl Planner {
    /// Row-wise kernels over the last axis: a warp per row up to 128 or
    /// 1024 elements, else a block per row.
    pub(super) fn rows(
        &self,
        (rows, n): (usize, usize),
        kernels: [&'static str; 3],
        mut args: Vec<Arg>,
        log: i32,
    ) -> Result<Vec<Call>> {
        if rows == 0 || n == 0 {
            return Ok(vec![]);
        }
        let (kernel, grid) = if n <= 1024 {
            let k = if n <= 128 { kernels[0] } else { kernels[1] };
            args.push(Arg::I32(int(rows)?));
            (k, div_up(rows, 8))
        } else {
            (kernels[2], rows)
        };
        args.extend([Arg::I32(int(n)?), Arg::I32(log)]);
        Ok(vec![Call {
            kernel,
            grid: [int(grid)? as u32, 1, 1],
            args,
        }])
    }

    /// `dst = (Σ over the axes of `dims` where `keep` is false of src) / div`,
    /// src contiguous, dst contiguous over the kept axes.
    pub(super) fn reduce(
        &self,
        s: &mut Scratch,
        src: Arg,
        dst: Arg,
        dims: &[usize],
        keep: &[bool],
        div: f32,
    ) -> Result<Vec<Call>> {
        // (dim, stride, kept) with size-1 axes dropped and neighbours of
        // the same kind merged (the source is contiguous, so they merge).
        let mut stride = 1usize;
        let mut axes: Vec<(usize, usize, bool)> = Vec::new();
        for i in (0..dims.len()).rev() {
            let d = dims[i];
            if d != 1 {
                match axes.last_mut() {
                    Some(a) if a.2 == keep[i] => a.0 *= d,
                    _ => axes.push((d, stride, keep[i])),
                }
            }
            stride *= d;
        }
        axes.reverse();
        let kept: Vec<&(usize, usize, bool)> = axes.iter().filter(|a| a.2).collect();
        let red: Vec<&(usize, usize, bool)> = axes.iter().filter(|a| !a.2).collect();
        if kept.len() > MAX_RANK || red.len() > MAX_RANK {
            return Err(unsupported(format!(
                "a reduction of {dims:?} alternates kept and summed axes too often"
            )));
        }
        let ny: usize = kept.iter().map(|a| a.0).product();
        let big_r: usize = red.iter().map(|a| a.0).product();
        if ny == 0 {
            return Ok(vec![]);
        }
        let col = |v: &[&(usize, usize, bool)],
                   f: fn(&(usize, usize, bool)) -> usize|
         -> Result<Vec<i32>> { v.iter().map(|a| int(f(a))).collect() };
        let geom = CStruct::default()
            .i32(kept.len() as i32)
            .i32s(&col(&kept, |a| a.0)?, MAX_RANK)
            .i32s(&col(&kept, |a| a.1)?, MAX_RANK)
            .i32(red.len() as i32)
            .i32s(&col(&red, |a| a.0)?, MAX_RANK)
            .i32s(&col(&red, |a| a.1)?, MAX_RANK)
            .i32(int(big_r)?)
            .arg();
        if big_r <= 64 || (ny >= 32_768 && big_r <= 4096) {
            return Ok(self.elementwise(
                "reduce_small",
                ny,
                vec![src, dst, Arg::I32(int(ny)?), geom, Arg::F32(div)],
            ));
        }
        let splits = self.splits(ny, big_r, 4096, 64);
        let part = if splits > 1 {
            Arg::Ptr(Buf::Work, s.alloc(4 * ny * splits))
        } else {
            Arg::Null
        };
        let mut calls = vec![Call {
            kernel: "reduce_block",
            grid: [int(ny)? as u32, splits as u32, 1],
            args: vec![
                src,
                dst.clone(),
                part.clone(),
                geom,
                Arg::I32(splits as i32),
                Arg::F32(div),
            ],
        }];
        if splits > 1 {
            calls.extend(self.elementwise(
                "reduce_finalize",
                ny,
                vec![
                    part,
                    dst,
                    Arg::I32(int(ny)?),
                    Arg::I32(splits as i32),
                    Arg::F32(div),
                ],
            ));
        }
        Ok(calls)
    }

    /// (grad, param, state...) slots of each tensor of a multi-tensor
    /// optimiser launch with `per` writes per tensor (`Module::validate`
    /// has checked that the counts and sizes agree).
    pub(super) fn groups(&self, l: &Launch, per: usize) -> Vec<(Slot, Vec<Slot>)> {
        l.reads
            .iter()
            .enumerate()
            .map(|(i, g)| (*g, l.writes[i * per..(i + 1) * per].to_vec()))
            .collect()
    }

    /// Write the tensor table (kernels/multi_tensor.cuh `MtEntry`) into the
    /// constant buffer; returns its pointer, entry count and block count.
    pub(super) fn multi_tensor(&mut self, groups: &[(Slot, Vec<Slot>)]) -> Option<(Arg, i32, u32)> {
        let off = self.meta.len().next_multiple_of(16);
        self.meta.resize(off, 0);
        let (mut count, mut blocks) = (0i32, 0usize);
        for (g, w) in groups {
            if g.len == 0 {
                continue;
            }
            let s1 = w.get(1).map_or(0, |s| s.offset);
            let s2 = w.get(2).map_or(0, |s| s.offset);
            let mut offs = vec![g.offset, w[0].offset];
            offs.extend(w[1..].iter().map(|s| s.offset));
            let e = CStruct::default()
                .i64(g.offset as i64)
                .i64(w[0].offset as i64)
                .i64(s1 as i64)
                .i64(s2 as i64)
                .i32(g.len as i32)
                .i32(blocks as i32)
                .i32(all_aligned(&offs, 4) as i32)
                .i32(0);
            self.meta.extend(e.bytes());
            blocks += div_up(g.len, MT_CHUNK);
            count += 1;
        }
        (count > 0).then_some((Arg::Ptr(Buf::Meta, off), count, blocks as u32))
    }

    pub(super) fn cross_entropy(
        &mut self,
        l: &Launch,
        (b, c): (usize, usize),
        s: &mut Scratch,
    ) -> Result<Vec<Call>> {
        let (r, w) = operands(l);
        Ok({
            if b == 0 {
                return Ok(self.elementwise("fill", 1, vec![w(0), Arg::I32(1), Arg::F32(0.0)]));
            }
            let rows = Arg::Ptr(Buf::Work, s.alloc(4 * b));
            let mut calls = vec![Call {
                kernel: "cross_entropy",
                grid: [div_up(b, 8) as u32, 1, 1],
                args: vec![
                    r(0),
                    r(1),
                    rows.clone(),
                    Arg::I32(int(b)?),
                    Arg::I32(int(c)?),
                ],
            }];
            calls.extend(self.reduce(s, rows, w(0), &[b], &[false], b as f32)?);
            calls
        })
    }

    pub(super) fn act_backward_bias(
        &mut self,
        l: &Launch,
        (act, d, axis): (&Activation, &[usize], &usize),
        s: &mut Scratch,
    ) -> Result<Vec<Call>> {
        let (r, w) = operands(l);
        Ok({
            let c = d[*axis];
            let inner: usize = d[axis + 1..].iter().product();
            let outer: usize = d[..*axis].iter().product();
            let splits = self.splits(c, outer * inner, 2048, 64);
            let part = if splits > 1 {
                Arg::Ptr(Buf::Work, s.alloc(4 * c * splits))
            } else {
                Arg::Null
            };
            if c == 0 {
                return Ok(vec![]);
            }
            let mut calls = vec![Call {
                kernel: "act_backward_bias",
                grid: [int(c)? as u32, splits as u32, 1],
                args: vec![
                    r(0),
                    r(1),
                    w(0),
                    w(1),
                    part.clone(),
                    Arg::I32(int(outer)?),
                    Arg::I32(int(c)?),
                    Arg::I32(int(inner)?),
                    Arg::I32(act_code(*act)),
                    Arg::I32(splits as i32),
                ],
            }];
            if splits > 1 {
                calls.extend(self.elementwise(
                    "reduce_finalize",
                    c,
                    vec![
                        part,
                        w(1),
                        Arg::I32(int(c)?),
                        Arg::I32(splits as i32),
                        Arg::F32(1.0),
                    ],
                ));
            }
            calls
        })
    }

    pub(super) fn batch_norm(
        &mut self,
        l: &Launch,
        (planes, eps, momentum, training): (&Planes, &f32, &f32, &bool),
        (act, residual): (Option<Activation>, bool),
        s: &mut Scratch,
    ) -> Result<Vec<Call>> {
        let (r, w) = operands(l);
        Ok({
            let (n, c, hw) = planes.dims();
            let dims = [
                Arg::I32(int(c)?),
                Arg::I32(int(hw)?),
                Arg::I32(int(n * c * hw)?),
            ];
            if !training {
                let mut args = vec![r(0), r(1), r(2), r(3), r(4), w(0)];
                args.extend(dims);
                args.push(Arg::F32(*eps));
                return Ok(self.elementwise("batchnorm2d_infer", n * c * hw, args));
            }
            let splits = self.splits(c, n * hw, 4096, 64);
            let part = Arg::Ptr(Buf::Work, s.alloc(16 * c * splits));
            if c == 0 {
                return Ok(vec![]);
            }
            let mut calls = vec![channel_partials(
                "batchnorm2d_stats",
                vec![r(0), part.clone()],
                (n, c, hw),
                splits,
            )?];
            calls.extend(self.elementwise(
                "batchnorm2d_train_finalize",
                c,
                vec![
                    part,
                    w(1),
                    w(2),
                    w(3),
                    w(4),
                    Arg::I32(int(c)?),
                    Arg::I32(splits as i32),
                    Arg::I32(int(n * hw)?),
                    Arg::F32(*eps),
                    Arg::F32(*momentum),
                ],
            ));
            let res = if residual { r(3) } else { Arg::Null };
            let mut args = vec![r(0), r(1), r(2), w(1), w(2), res, w(0)];
            args.extend(dims);
            args.push(Arg::I32(Activation::code_of(act) as i32));
            calls.extend(self.elementwise("batchnorm2d_normalize", n * c * hw, args));
            calls
        })
    }

    pub(super) fn batch_norm_backward(
        &mut self,
        l: &Launch,
        planes: &Planes,
        act: Option<Activation>,
        s: &mut Scratch,
    ) -> Result<Vec<Call>> {
        let (r, w) = operands(l);
        Ok({
            let (n, c, hw) = planes.dims();
            if c == 0 {
                return Ok(vec![]);
            }
            let splits = self.splits(c, n * hw, 4096, 64);
            let part = Arg::Ptr(Buf::Work, s.alloc(16 * c * splits));
            let sums = Arg::Ptr(Buf::Work, s.alloc(8 * c));
            // The fused activation's saved value, read last.
            let saved = if act.is_some() { r(5) } else { Arg::Null };
            let code = Arg::I32(Activation::code_of(act) as i32);
            let mut calls = vec![channel_partials(
                "batchnorm2d_backward_stats",
                vec![
                    r(0),
                    r(2),
                    r(3),
                    r(4),
                    saved.clone(),
                    code.clone(),
                    part.clone(),
                ],
                (n, c, hw),
                splits,
            )?];
            calls.extend(self.elementwise(
                "batchnorm2d_backward_finalize",
                c,
                vec![
                    part,
                    w(1),
                    w(2),
                    sums.clone(),
                    Arg::I32(int(c)?),
                    Arg::I32(splits as i32),
                ],
            ));
            calls.extend(self.elementwise(
                "batchnorm2d_backward_dx",
                n * c * hw,
                vec![
                    r(0),
                    r(1),
                    r(2),
                    r(3),
                    r(4),
                    saved,
                    code,
                    sums,
                    w(0),
                    Arg::I32(int(c)?),
                    Arg::I32(int(hw)?),
                    Arg::I32(int(n * c * hw)?),
                    Arg::F32((n * hw) as f32),
                ],
            ));
            calls
        })
    }
}

/// A batch-norm partial-sum launch: one block per (channel, split) over
/// `(n, c, hw)` planes; `args` are the kernel's buffers.
fn channel_partials(
    kernel: &'static str,
    mut args: Vec<Arg>,
    (n, c, hw): (usize, usize, usize),
    splits: usize,
) -> Result<Call> {
    args.extend([
        Arg::I32(int(n)?),
        Arg::I32(int(c)?),
        Arg::I32(int(hw)?),
        Arg::I32(splits as i32),
    ]);
    Ok(Call {
        kernel,
        grid: [c as u32, splits as u32, 1],
        args,
    })
}
