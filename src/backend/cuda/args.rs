//! Kernel calls as data: which kernel, the grid, and the arguments in the
//! kernels' C layouts. The planner produces these without a device, so the
//! whole lowering can be checked (against the PTX signatures, and by
//! running the kernels' C++ on the host) with no GPU.

/// The device buffers a pointer argument can point into. The executable
/// owns one of each; the plan only knows byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The module's arena (every tensor; u32 values stored as bits).
    Arena,
    /// Scratch shared by every launch of every program (split-K and
    /// reduction partials); sized to the largest need.
    Work,
    /// Constant tables written once at compile (multi-tensor tables).
    Meta,
    /// The runtime scalars (`lr`, `step`), written before every run so a
    /// captured graph replays with current values.
    Scalars,
}

/// One kernel argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A device pointer: buffer and byte offset.
    Ptr(Buf, usize),
    /// A null pointer (an absent optional operand).
    Null,
    I32(i32),
    U32(u32),
    F32(f32),
    /// A struct passed by value, in its C layout (4-byte fields).
    Bytes(Vec<u8>),
}

impl Arg {
    /// A pointer to the arena slot starting at word `offset`.
    pub fn arena(offset: usize) -> Arg {
        Arg::Ptr(Buf::Arena, offset * 4)
    }
    /// Bytes this argument occupies in the kernel's parameter block.
    pub fn size(&self) -> usize {
        match self {
            Arg::Ptr(..) | Arg::Null => 8,
            Arg::I32(_) | Arg::U32(_) | Arg::F32(_) => 4,
            Arg::Bytes(b) => b.len(),
        }
    }
}

/// One kernel launch with blocks of [`BLOCK`] threads.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub kernel: &'static str,
    pub grid: [u32; 3],
    pub args: Vec<Arg>,
}

/// Threads per block of every kernel (`BLOCK` in kernels/common.cuh).
pub const BLOCK: u32 = 256;
/// Axes of a strided view after merging (`MAX_RANK` in common.cuh).
pub const MAX_RANK: usize = 6;
/// Instructions of a fused elementwise program (`EW_MAX_INSTR`).
pub const EW_MAX_INSTR: usize = 32;
/// Stack slots of a fused elementwise program (`EW_SLOTS`).
pub const EW_SLOTS: usize = 8;
/// Elements per block of the multi-tensor optimiser kernels (`MT_CHUNK`).
pub const MT_CHUNK: usize = BLOCK as usize * 8;

/// Little-endian C-struct writer for by-value kernel parameters.
#[derive(Default)]
pub struct CStruct(Vec<u8>);

impl CStruct {
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    /// `N` i32s from `v`, zero-padded.
    pub fn i32s(mut self, v: &[i32], n: usize) -> Self {
        for i in 0..n {
            self.0.extend(v.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        self
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0
    }
    pub fn arg(self) -> Arg {
        Arg::Bytes(self.0)
    }
}

/// [`Activation::code`](crate::ops::Activation::code), as a kernel argument.
pub fn act_code(a: crate::ops::Activation) -> i32 {
    a.code() as i32
}

/// `ACT_NONE`.
pub const ACT_NONE: i32 = 0;

/// [`BinaryKind::code`](crate::ops::BinaryKind::code), as a kernel argument.
pub fn binary_code(k: crate::ops::BinaryKind) -> i32 {
    k.code() as i32
}
