//! Parameter words of the multi-dispatch and table-driven kernels: the
//! shared GEMM core (matmul, linear and the three convolutions, with
//! split-K), convolution and pooling geometry, strided reductions, fused
//! elementwise programs and the multi-tensor optimiser tables.

use super::launch::{
    act_code, binary_code, groups_for, rank_ok, Dispatch, Params, PARAM_WORDS, TILE, TK, WG,
};
use super::shaders::{Family, DIRECT_ENTRIES};
use crate::error::{Error, Result};
use crate::graph::kernel::Kernel;
use crate::graph::plan::Launch;
use crate::ops::conv2d::{Conv2dGeom, ConvProduct};
use crate::ops::elementwise::{max_depth, EwInstr, MAX_INPUTS, MAX_STACK};
use crate::tensor::Shape;

/// Which GEMM kernels matmuls and convolutions lower to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmStyle {
    /// gemm.wgsl: 64x64 output tiles staged through workgroup memory,
    /// 16x16 invocations each owning 4x4 outputs; for GPUs, whose
    /// workgroup memory is on-chip and shared by the invocations' loads.
    Tiled,
    /// gemm_direct.wgsl: teams of 8 invocations in one subgroup, each
    /// team 16 or 32 rows x 32 columns (32 x 64 for large matmuls), A
    /// values shared by subgroup broadcast;
    /// for adapters whose workgroup memory is ordinary memory (CPU
    /// adapters such as lavapipe), where staging adds copies and barriers
    /// and saves no traffic, and where a 64x64 tile wastes most of its
    /// work on the narrow GEMMs of batch-1 inference.
    Direct,
}

impl GemmStyle {
    /// Direct on CPU adapters with subgroups of at least a team, tiled
    /// elsewhere.
    pub fn for_adapter(info: &::wgpu::AdapterInfo, features: ::wgpu::Features) -> Self {
        if info.device_type == ::wgpu::DeviceType::Cpu && GemmStyle::direct_runs(info, features) {
            GemmStyle::Direct
        } else {
            GemmStyle::Tiled
        }
    }

    /// Whether the team GEMM runs on an adapter: subgroups, each holding
    /// a whole team.
    pub fn direct_runs(info: &::wgpu::AdapterInfo, features: ::wgpu::Features) -> bool {
        features.contains(::wgpu::Features::SUBGROUP)
            && info.subgroup_min_size >= super::shaders::DIRECT_WG
    }
}

/// Rows of one team's block (twice as many for a tall team) and columns
/// (gemm_direct.wgsl: TEAM lanes of 4 columns).
const TEAM_ROWS: usize = 16;
const TEAM_COLS: usize = 32;
/// Multiply-adds from which a GEMM may take wide teams.
const WIDE_FMAS: usize = 1 << 24;

/// A GEMM on the shared core (gemm.wgsl).
pub(super) struct Gemm {
    pub(super) family: Family,
    pub(super) tiled: &'static str,
    /// The mode of the direct entry points (gemm_direct.wgsl).
    pub(super) direct: usize,
    pub(super) reduce: &'static str,
    pub(super) style: GemmStyle,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) batch: usize,
    pub(super) act: usize,
    /// (1 per row | 2 per column, offset)
    pub(super) bias: Option<(usize, usize)>,
    pub(super) a: usize,
    pub(super) b: usize,
    pub(super) c: usize,
}

/// The launches on the GEMM core: matmul, linear and the three
/// convolutions (`r(k)`: operand k's word offset, `w(k)`: output k's).
pub(super) fn dense(
    kernel: &Kernel,
    r: &dyn Fn(usize) -> usize,
    w: &dyn Fn(usize) -> usize,
    scratch: usize,
    style: GemmStyle,
) -> Result<Vec<Dispatch>> {
    match kernel {
        Kernel::MatMul(g) => {
            let (batch, m, k, n, ta, tb) = (g.batch, g.m, g.k, g.n, g.ta, g.tb);
            Gemm {
                family: Family::Matmul,
                tiled: "matmul",
                direct: 0,
                reduce: "gemm_splitk_reduce",
                style,
                m,
                n,
                k,
                batch,
                act: 0,
                bias: None,
                a: r(0),
                b: r(1),
                c: w(0),
            }
            .dispatch(
                &[
                    (16, ta as usize),
                    (17, tb as usize),
                    (18, m * k),
                    (19, k * n),
                    (20, m * n),
                ],
                scratch,
            )
        }
        Kernel::Linear { gemm, bias, act } => Gemm {
            family: Family::Matmul,
            tiled: "matmul",
            direct: 0,
            reduce: "gemm_splitk_reduce",
            style,
            m: gemm.m,
            n: gemm.n,
            k: gemm.k,
            batch: 1,
            act: act_code(*act),
            bias: bias.then(|| (2, r(2))),
            a: r(0),
            b: r(1),
            c: w(0),
        }
        .dispatch(&[(16, 0), (17, 1)], scratch),
        Kernel::Conv2d { pool: true, .. } => Err(super::super::no_fused_pool("wgpu")),
        Kernel::Conv2d {
            geom: g,
            bias,
            act,
            residual,
            pool: false,
        } => {
            let (m, n, k) = g.gemm_dims(ConvProduct::Forward);
            // With a residual the GEMM epilogue adds only the bias; the
            // store adds the residual, then applies the activation.
            let mut own = conv_params(g);
            own.push((31, *residual as usize));
            if *residual {
                own.extend([(32, r(2 + *bias as usize)), (33, act_code(*act))]);
            }
            Gemm {
                family: Family::Conv2d,
                tiled: "conv2d_forward",
                direct: 0,
                reduce: "conv2d_forward_reduce",
                style,
                m,
                n,
                k,
                batch: 1,
                act: if *residual { 0 } else { act_code(*act) },
                bias: bias.then(|| (1, r(2))),
                a: r(1),
                b: r(0),
                c: w(0),
            }
            .dispatch(&own, scratch)
        }
        Kernel::Conv2dGradInput(g) | Kernel::Conv2dGradWeight(g) => {
            let (product, tiled, direct, reduce) = match kernel {
                Kernel::Conv2dGradInput(_) => (
                    ConvProduct::GradInput,
                    "conv2d_grad_input",
                    1,
                    "conv2d_grad_input_reduce",
                ),
                _ => (
                    ConvProduct::GradWeight,
                    "conv2d_grad_weight",
                    2,
                    "conv2d_grad_weight_reduce",
                ),
            };
            let (m, n, k) = g.gemm_dims(product);
            Gemm {
                family: Family::Conv2d,
                tiled,
                direct,
                reduce,
                style,
                m,
                n,
                k,
                batch: 1,
                act: 0,
                bias: None,
                a: r(1),
                b: r(0),
                c: w(0),
            }
            .dispatch(&conv_params(g), scratch)
        }
        other => Err(Error::Usage(format!(
            "wgpu: {other:?} is not a GEMM-core kernel"
        ))),
    }
}

/// Output tiles below which a long K is split across workgroups.
const SPLIT_BELOW_TILES: usize = 64;
/// Shortest K range one split takes.
const MIN_SPLIT_K: usize = 256;

/// The host's cores, which a CPU adapter's workgroups run on.
fn host() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl Gemm {
    /// Splits of K: enough workgroups to occupy a device when the output
    /// has few tiles (a convolution's weight gradient sums over the whole
    /// batch into a small tensor), each split at least `MIN_SPLIT_K` long.
    /// A CPU adapter (the direct style) runs workgroups on the host's
    /// cores, so one per core occupies it; more splits only add the reduce
    /// dispatch and its traffic (batch-1 CIFAR inference on lavapipe: 1.19
    /// ms with two per core, 1.02 ms with one).
    fn splits(&self, tiles: usize) -> (usize, usize) {
        let k = self.k.max(1);
        let occupy = match self.style {
            GemmStyle::Tiled => SPLIT_BELOW_TILES,
            GemmStyle::Direct => host(),
        };
        let want = occupy.div_ceil(tiles.max(1));
        let s = want.min(k / MIN_SPLIT_K).max(1);
        let per = k.div_ceil(s).div_ceil(TK) * TK;
        (k.div_ceil(per), per)
    }

    pub(super) fn dispatch(&self, own: &[(usize, usize)], scratch: usize) -> Result<Vec<Dispatch>> {
        if self.m == 0 || self.n == 0 || self.batch == 0 {
            return Ok(vec![]);
        }
        // Tall teams wherever their extra rows are not all past the edge:
        // on lavapipe they are 1.7x faster on a 1024^3 GEMM and take
        // batch-1 inference from 1.5 to 1.25 ms.
        let tall = self.style == GemmStyle::Direct && self.m > TEAM_ROWS;
        // Wide teams (twice the columns) on large matmuls that still give
        // every host core several teams: 1.4x on a 1024^3 GEMM. Not for
        // convolutions: lavapipe takes about a second to compile each wide
        // pipeline, which would triple the CNN's cold start.
        let wide = tall
            && self.family == Family::Matmul
            && self.m * self.n * self.k >= WIDE_FMAS
            && self.m.div_ceil(2 * TEAM_ROWS) * self.n.div_ceil(2 * TEAM_COLS) * self.batch
                >= 4 * host();
        // Output tiles (tiled) or blocks (direct) along N and per batch.
        let (rows, cols) = match self.style {
            GemmStyle::Tiled => (TILE, TILE),
            GemmStyle::Direct if wide => (2 * TEAM_ROWS, 2 * TEAM_COLS),
            GemmStyle::Direct if tall => (2 * TEAM_ROWS, TEAM_COLS),
            GemmStyle::Direct => (TEAM_ROWS, TEAM_COLS),
        };
        let tiles_n = self.n.div_ceil(cols);
        let per_batch = self.m.div_ceil(rows) * tiles_n;
        let tiles = per_batch * self.batch;
        let (splits, per_split) = self.splits(tiles);
        let outputs = self.m * self.n * self.batch;
        let mut p = Params::new(16);
        p.list(0, &[self.m, self.n, self.k, tiles_n, per_batch, self.batch])
            .u(6, self.act)
            .u(7, self.bias.map_or(0, |b| b.0))
            .u(8, self.bias.map_or(0, |b| b.1))
            .list(9, &[self.a, self.b, self.c, tiles * splits])
            .list(13, &[splits, per_split, scratch]);
        for &(i, v) in own {
            p.u(i, v);
        }
        let entry = match self.style {
            GemmStyle::Tiled => self.tiled,
            GemmStyle::Direct => {
                // Short, tall (3 + mode) or wide (6, matmul only).
                DIRECT_ENTRIES[self.direct + 3 * (tall as usize + wide as usize)]
            }
        };
        let mut gemm = p.dispatch(self.family, entry, tiles * splits)?;
        if splits == 1 {
            return Ok(vec![gemm]);
        }
        gemm.scratch = splits * outputs;
        p.u(12, outputs);
        Ok(vec![
            gemm,
            p.dispatch(self.family, self.reduce, groups_for(outputs))?,
        ])
    }
}

pub(super) fn conv_params(g: &Conv2dGeom) -> Vec<(usize, usize)> {
    g.kernel_params()
        .expect("checked by geom")
        .iter()
        .enumerate()
        .map(|(i, &v)| (16 + i, v))
        .collect()
}

pub(super) fn pool_params(
    g: &crate::backend::cpu::pool::Pool2dGeom,
    count: usize,
    src: usize,
    dst: usize,
    argmax: usize,
) -> Params {
    let window = g.kernel_params().expect("checked by geom");
    let mut p = Params::new(14);
    p.list(0, &[&[count][..], &window, &[src, dst, argmax]].concat());
    p
}

/// Split x's axes into kept (y's own, in order) and reduced ones; pick one
/// workgroup per output for long sums and one thread per output for short.
pub(super) fn sum_to(sx: &Shape, sy: &Shape, x: usize, y: usize) -> Result<Vec<Dispatch>> {
    rank_ok("sum_to", sx)?;
    let r = sx.rank();
    let pad = r.saturating_sub(sy.rank());
    let xs = sx.strides();
    let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
    for (ax, (&d, &stride)) in sx.0.iter().zip(&xs).enumerate() {
        let ydim = if ax < pad { 1 } else { sy.0[ax - pad] };
        if ydim == d {
            kd.push(d);
            ks.push(stride);
        } else {
            rd.push(d);
            rs.push(stride);
        }
    }
    let outputs = sy.numel();
    let reduced: usize = rd.iter().product();
    let mut p = Params::new(40);
    p.list(0, &[outputs, x, y, kd.len(), rd.len(), reduced])
        .list(8, &kd)
        .list(16, &ks)
        .list(24, &rd)
        .list(32, &rs);
    if outputs == 0 {
        return Ok(vec![]);
    }
    if reduced >= 512 || outputs < WG {
        Ok(vec![p.dispatch(Family::Reduce, "sum_to", outputs)?])
    } else {
        Ok(vec![p.dispatch(
            Family::Reduce,
            "sum_to_serial",
            groups_for(outputs),
        )?])
    }
}

pub(super) fn elementwise(
    prog: &[EwInstr],
    l: &Launch,
    r: &dyn Fn(usize) -> usize,
) -> Result<Vec<Dispatch>> {
    let bad = |why: String| Error::Device {
        device: "wgpu".into(),
        detail: format!("elementwise: {why}"),
    };
    if l.reads.len() > MAX_INPUTS {
        return Err(bad(format!(
            "{} inputs (at most {MAX_INPUTS})",
            l.reads.len()
        )));
    }
    if max_depth(prog).is_none_or(|d| d > MAX_STACK) {
        return Err(bad(format!("malformed or too deep program {prog:?}")));
    }
    let n = l.write_shapes[0].numel();
    let mut p = Params::new(16 + 2 * prog.len());
    p.list(0, &[n, l.writes[0].offset, prog.len()]);
    for k in 0..l.reads.len() {
        p.u(3 + k, r(k))
            .u(9 + k, (l.read_shapes[k].numel() == 1) as usize);
    }
    for (i, ins) in prog.iter().enumerate() {
        let (op, arg) = match *ins {
            EwInstr::Input(k) => (0, k as usize),
            EwInstr::Act(a) => (1, act_code(Some(a))),
            EwInstr::ActBackward(a) => (2, act_code(Some(a))),
            EwInstr::Binary(k) => (3, binary_code(k)),
            EwInstr::Scale(s) => (4, s.to_bits() as usize),
        };
        p.u(16 + 2 * i, op).u(17 + 2 * i, arg);
    }
    if n == 0 {
        return Ok(vec![]);
    }
    Ok(vec![p.dispatch(
        Family::Elementwise,
        "elementwise",
        groups_for(n),
    )?])
}

/// Rows of an optimiser's tensor table: (first workgroup, length, grad,
/// param, state...). `per` is the writes per tensor; `state` fills the
/// remaining columns.
pub(super) fn tensor_table(
    l: &Launch,
    per: usize,
    cols: usize,
    state: impl Fn(usize, &mut Vec<usize>),
) -> Vec<Vec<usize>> {
    let mut first = 0;
    (0..l.reads.len())
        .map(|t| {
            let param = l.writes[t * per];
            let mut row = vec![first, param.len, l.reads[t].offset, param.offset];
            row.resize(cols, 0);
            state(t, &mut row);
            first += groups_for(param.len);
            row
        })
        .collect()
}

pub(super) fn multi_tensor(
    p: Params,
    rows: Vec<Vec<usize>>,
    family: Family,
    entry: &'static str,
) -> Result<Vec<Dispatch>> {
    // As many tensors per dispatch as one parameter window holds.
    let cols = rows.first().map_or(1, Vec::len).max(1);
    let per = (PARAM_WORDS - 8) / cols;
    let mut out = Vec::new();
    for chunk in rows.chunks(per) {
        let mut p = p.clone();
        let base = chunk[0][0];
        let total: usize = chunk.iter().map(|r| groups_for(r[1])).sum();
        p.u(0, chunk.len()).u(1, total);
        let mut at = 8;
        for row in chunk {
            p.u(at, row[0] - base).list(at + 1, &row[1..]);
            at += row.len();
        }
        if total > 0 {
            out.push(p.dispatch(family, entry, total)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::wgpu::{AdapterInfo, Backend, DeviceType, Features};

    fn adapter(device_type: DeviceType, subgroup_min_size: u32) -> AdapterInfo {
        AdapterInfo {
            name: "test".into(),
            vendor: 0,
            device: 0,
            device_type,
            device_pci_bus_id: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            backend: Backend::Vulkan,
            subgroup_min_size,
            subgroup_max_size: subgroup_min_size.max(8),
            transient_saves_memory: None,
            limit_bucket: None,
        }
    }

    #[test]
    fn the_team_gemm_needs_a_cpu_adapter_with_whole_teams_per_subgroup() {
        let cpu = adapter(DeviceType::Cpu, 8);
        assert_eq!(
            GemmStyle::for_adapter(&cpu, Features::SUBGROUP),
            GemmStyle::Direct
        );
        // No subgroups, or subgroups narrower than a team: tiled.
        assert_eq!(
            GemmStyle::for_adapter(&cpu, Features::empty()),
            GemmStyle::Tiled
        );
        let narrow = adapter(DeviceType::Cpu, 4);
        assert!(!GemmStyle::direct_runs(&narrow, Features::SUBGROUP));
        assert_eq!(
            GemmStyle::for_adapter(&narrow, Features::SUBGROUP),
            GemmStyle::Tiled
        );
        // A GPU keeps the tiled core even where the team one could run.
        let gpu = adapter(DeviceType::DiscreteGpu, 32);
        assert!(GemmStyle::direct_runs(&gpu, Features::SUBGROUP));
        assert_eq!(
            GemmStyle::for_adapter(&gpu, Features::SUBGROUP),
            GemmStyle::Tiled
        );
    }

    #[test]
    fn a_launch_past_the_parameter_window_is_a_limit_error() {
        let mut p = Params::new(8);
        p.u(PARAM_WORDS, 1);
        match p.dispatch(Family::Adam, "adam_update", 1) {
            Err(Error::Limit(msg)) => assert!(msg.contains("adam_update"), "{msg}"),
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn multi_tensor_tables_are_chunked_with_workgroups_counted_per_chunk() {
        // 400 tensors of 300 elements (2 workgroups each), 6 words a row.
        let mut first = 0;
        let rows: Vec<Vec<usize>> = (0..400)
            .map(|t| {
                let row = vec![first, 300, 10 * t, 10 * t + 1, 0, 0];
                first += groups_for(300);
                row
            })
            .collect();
        let d = multi_tensor(Params::new(8), rows, Family::Adam, "adam_update").unwrap();
        let per = (PARAM_WORDS - 8) / 6;
        assert_eq!(d.len(), 400usize.div_ceil(per));
        let mut tensors = 0;
        for chunk in &d {
            assert!(chunk.params.len() <= PARAM_WORDS);
            let n = chunk.params[0] as usize;
            assert_eq!(chunk.groups, 2 * n);
            assert_eq!(chunk.params[1] as usize, 2 * n);
            // Each chunk's first workgroups start at 0 and advance by 2.
            for r in 0..n {
                assert_eq!(chunk.params[8 + 6 * r] as usize, 2 * r);
                assert_eq!(chunk.params[8 + 6 * r + 2] as usize, 10 * (tensors + r));
            }
            tensors += n;
        }
        assert_eq!(tensors, 400);
    }
}
