//! The embedded PTX (kernels/*.ptx, built from kernels/*.cu by
//! tools/build-ptx.sh and committed, so building gpurt needs no CUDA
//! toolkit) and what the host reads from it: which file holds a kernel and
//! the kernel's parameter list, which every call is checked against before
//! anything is launched.

use std::collections::HashMap;
use std::sync::OnceLock;

/// One embedded PTX module.
pub struct PtxFile {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(PtxFile {
            name: $name,
            text: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/", $name, ".ptx")),
        }),*]
    };
}

pub const FILES: &[PtxFile] = embed![
    "activation",
    "adam",
    "attention",
    "batchnorm",
    "bias_grad",
    "binary",
    "conv2d",
    "cross_entropy",
    "dropout",
    "elementwise",
    "embedding",
    "layer_norm",
    "matmul",
    "pool",
    "reduce",
    "sgd",
    "shape",
    "softmax",
];

/// The PTX ISA the files declare (NVRTC 12.0 emits 8.0) and the oldest
/// driver that can JIT it: CUDA 12.0, driver R525 (525.60.13 on Linux).
pub const PTX_ISA: &str = "8.0";
pub const MIN_DRIVER_VERSION: i32 = 12000;
/// The files target sm_80: Ampere and newer.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// A kernel parameter as PTX declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `.u64` (every pointer).
    U64,
    /// `.u32`, `.s32`, `.f32` or `.b32`.
    B32,
    /// `.align N .b8 name[SIZE]`: a struct by value.
    Bytes(usize),
    /// Anything else (the kernels use none).
    Other,
}

impl Param {
    pub fn size(self) -> usize {
        match self {
            Param::U64 => 8,
            Param::B32 => 4,
            Param::Bytes(n) => n,
            Param::Other => 0,
        }
    }
}

/// Every `.entry` of a PTX text with its parameters, in order.
pub fn entries(ptx: &str) -> Vec<(&str, Vec<Param>)> {
    let mut out = Vec::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(".visible .entry ") else {
            continue;
        };
        let name = rest.split('(').next().unwrap_or("").trim();
        let mut params = Vec::new();
        for l in lines.by_ref() {
            let l = l.trim();
            if l.starts_with(')') {
                break;
            }
            if let Some(p) = l.strip_prefix(".param ") {
                params.push(parse_param(p));
            }
        }
        out.push((name, params));
    }
    out
}

fn parse_param(p: &str) -> Param {
    let p = p.trim_end_matches(',');
    let words: Vec<&str> = p.split_whitespace().collect();
    match words.first().copied() {
        Some(".u64") | Some(".s64") | Some(".b64") => Param::U64,
        Some(".u32") | Some(".s32") | Some(".f32") | Some(".b32") => Param::B32,
        Some(".align") => {
            let size = words
                .last()
                .and_then(|w| w.split('[').nth(1))
                .and_then(|s| s.trim_end_matches(']').parse().ok());
            size.map_or(Param::Other, Param::Bytes)
        }
        _ => Param::Other,
    }
}

/// The file that defines `kernel` and its parameters (the PTX is parsed
/// once per process).
pub fn find(kernel: &str) -> Option<(&'static PtxFile, Vec<Param>)> {
    type Index = HashMap<&'static str, (&'static PtxFile, Vec<Param>)>;
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            FILES
                .iter()
                .flat_map(|f| entries(f.text).into_iter().map(move |(n, p)| (n, (f, p))))
                .collect()
        })
        .get(kernel)
        .cloned()
}

/// Whether `args` fit the kernel's PTX parameter list (count and sizes).
pub fn check_args(kernel: &str, params: &[Param], args: &[super::args::Arg]) -> Result<(), String> {
    if params.len() != args.len() {
        return Err(format!(
            "{kernel} takes {} parameters, the call passes {}",
            params.len(),
            args.len()
        ));
    }
    for (i, (p, a)) in params.iter().zip(args).enumerate() {
        if p.size() != a.size() || *p == Param::Other {
            return Err(format!(
                "{kernel} parameter {i} is {p:?} but the call passes {a:?}"
            ));
        }
    }
    Ok(())
}
