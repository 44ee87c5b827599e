//! Lowering: graph -> scheduled launches with arena slots.
//!
//! Persistent values (parameters, optimiser state, running statistics) get
//! fixed slots at the front of the arena, shared by every program of a
//! module. Each program's transient values are placed by a liveness-based
//! best-fit allocator in the region after them; programs never run at the
//! same time, so they share that region and the arena is the persistent
//! size plus the largest program's peak. All sizes use checked arithmetic.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, Role, ScalarId, ValueId};
use crate::ops::Op;
use crate::tensor::{DType, Shape};
use std::collections::BTreeMap;

/// A range of the arena, in 4-byte words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub offset: usize,
    pub len: usize,
}

impl Slot {
    pub fn end(&self) -> usize {
        self.offset + self.len
    }
    pub fn overlaps(&self, o: &Slot) -> bool {
        self.len > 0 && o.len > 0 && self.offset < o.end() && o.offset < self.end()
    }
}

/// A named tensor the host reads or writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub name: String,
    pub slot: Slot,
    pub shape: Shape,
    pub dtype: DType,
}

/// One kernel launch: reads are inputs; writes are the outputs followed by
/// the persistent values the op updates in place.
#[derive(Clone, Debug)]
pub struct Launch {
    pub op: Op,
    pub reads: Vec<Slot>,
    pub writes: Vec<Slot>,
    pub read_shapes: Vec<Shape>,
    pub write_shapes: Vec<Shape>,
}

#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub launches: Vec<Launch>,
    pub inputs: Vec<Binding>,
    pub outputs: Vec<Binding>,
    /// Peak transient words of this program.
    pub transient_words: usize,
    /// Sum of the sizes of every transient tensor (what a naive allocator
    /// would need), for the planner's report.
    pub naive_words: usize,
}

impl Program {
    pub fn input(&self, name: &str) -> Option<&Binding> {
        self.inputs.iter().find(|b| b.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&Binding> {
        self.outputs.iter().find(|b| b.name == name)
    }
}

/// Everything a backend needs: the arena size, the persistent bindings and
/// the programs that run over them.
#[derive(Clone, Debug)]
pub struct Module {
    pub arena_words: usize,
    pub persistent: Vec<Binding>,
    /// Words at the front of the arena that hold persistent values.
    pub persistent_words: usize,
    pub programs: Vec<Program>,
    /// Runtime scalar names; `run` takes their values in this order.
    pub scalars: Vec<String>,
}

impl Module {
    pub fn program(&self, name: &str) -> Option<usize> {
        self.programs.iter().position(|p| p.name == name)
    }
    pub fn persistent(&self, name: &str) -> Option<&Binding> {
        self.persistent.iter().find(|b| b.name == name)
    }
    pub fn scalar(&self, name: &str) -> Option<usize> {
        self.scalars.iter().position(|s| s == name)
    }
}

fn words(shape: &Shape) -> Result<usize> {
    shape.checked_numel()
}

fn add(a: usize, b: usize) -> Result<usize> {
    a.checked_add(b)
        .ok_or_else(|| Error::Limit(format!("arena size overflows ({a} + {b} words)")))
}

/// Lower several graphs (e.g. a train step and an inference pass over the
/// same parameters) into one module.
pub fn compile(graphs: &[(&str, &Graph)]) -> Result<Module> {
    // Persistent layout: parameters first (contiguous, in declaration
    // order, so a multi-tensor optimiser sees one flat range), then state.
    let mut persistent: Vec<Binding> = Vec::new();
    let mut offset = 0usize;
    for want_param in [true, false] {
        for (_, g) in graphs {
            for v in &g.values {
                let name = match (&v.role, want_param) {
                    (Role::Param(n), true) | (Role::State(n), false) => n,
                    _ => continue,
                };
                if let Some(b) = persistent.iter().find(|b| &b.name == name) {
                    if b.shape != v.shape {
                        return Err(Error::shape(
                            "module",
                            format!(
                                "'{name}' is {} in one program and {} in another",
                                b.shape, v.shape
                            ),
                        ));
                    }
                    continue;
                }
                let len = words(&v.shape)?;
                persistent.push(Binding {
                    name: name.clone(),
                    slot: Slot { offset, len },
                    shape: v.shape.clone(),
                    dtype: v.dtype,
                });
                offset = add(offset, len)?;
            }
        }
    }
    let persistent_words = offset;

    let mut scalars: Vec<String> = Vec::new();
    for (_, g) in graphs {
        for s in &g.scalars {
            if !scalars.contains(s) {
                scalars.push(s.clone());
            }
        }
    }

    let mut programs = Vec::new();
    let mut arena_words = persistent_words;
    for (name, g) in graphs {
        let p = lower(name, g, &persistent, persistent_words, &scalars)?;
        arena_words = arena_words.max(add(persistent_words, p.transient_words)?);
        programs.push(p);
    }
    Ok(Module {
        arena_words,
        persistent,
        persistent_words,
        programs,
        scalars,
    })
}

/// Nodes that contribute to an output or update persistent state.
fn live_nodes(g: &Graph) -> Vec<bool> {
    let mut needed_val = vec![false; g.values.len()];
    for (_, v) in &g.outputs {
        needed_val[v.0 as usize] = true;
    }
    let mut live = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate().rev() {
        if !n.mutates.is_empty() || n.outputs.iter().any(|o| needed_val[o.0 as usize]) {
            live[i] = true;
            for v in &n.inputs {
                needed_val[v.0 as usize] = true;
            }
        }
    }
    live
}

fn remap_scalars(op: &Op, local: &[String], global: &[String]) -> Op {
    let map = |s: ScalarId| {
        let name = &local[s.0 as usize];
        ScalarId(
            global
                .iter()
                .position(|g| g == name)
                .expect("module scalar table is a union") as u32,
        )
    };
    match op {
        Op::Dropout { p, seed, step } => Op::Dropout {
            p: *p,
            seed: *seed,
            step: map(*step),
        },
        Op::SgdUpdate(c) => {
            let mut c = *c;
            c.lr = map(c.lr);
            Op::SgdUpdate(c)
        }
        Op::AdamUpdate(c) => {
            let mut c = *c;
            c.lr = map(c.lr);
            c.step = map(c.step);
            Op::AdamUpdate(c)
        }
        other => other.clone(),
    }
}

/// Best-fit free list over the transient region (offsets relative to it).
struct FreeList {
    free: BTreeMap<usize, usize>, // offset -> len
    top: usize,
}

impl FreeList {
    fn alloc(&mut self, len: usize) -> Result<usize> {
        if len == 0 {
            return Ok(0);
        }
        let best = self
            .free
            .iter()
            .filter(|(_, &l)| l >= len)
            .min_by_key(|(_, &l)| l)
            .map(|(&o, &l)| (o, l));
        if let Some((o, l)) = best {
            self.free.remove(&o);
            if l > len {
                self.free.insert(o + len, l - len);
            }
            return Ok(o);
        }
        // Grow, reusing a free block that ends at the top.
        if let Some((&o, &l)) = self.free.iter().next_back() {
            if o + l == self.top {
                self.free.remove(&o);
                self.top = add(o, len)?;
                return Ok(o);
            }
        }
        let o = self.top;
        self.top = add(self.top, len)?;
        Ok(o)
    }

    fn release(&mut self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let (mut o, mut l) = (offset, len);
        if let Some((&po, &pl)) = self.free.range(..o).next_back() {
            if po + pl == o {
                self.free.remove(&po);
                o = po;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(o + l)) {
            self.free.remove(&(o + l));
            l += nl;
        }
        self.free.insert(o, l);
    }
}

fn lower(
    name: &str,
    g: &Graph,
    persistent: &[Binding],
    base: usize,
    scalars: &[String],
) -> Result<Program> {
    let live = live_nodes(g);
    let order: Vec<usize> = (0..g.nodes.len()).filter(|&i| live[i]).collect();

    // Views share their source's storage: resolve every value to a root.
    let mut root: Vec<ValueId> = (0..g.values.len() as u32).map(ValueId).collect();
    for &i in &order {
        let n = &g.nodes[i];
        if n.op.is_view() {
            root[n.outputs[0].0 as usize] = root[n.inputs[0].0 as usize];
        }
    }

    // Last use (schedule position) of every root; outputs live to the end.
    let end = order.len();
    let mut last_use = vec![None::<usize>; g.values.len()];
    for (t, &i) in order.iter().enumerate() {
        for v in &g.nodes[i].inputs {
            last_use[root[v.0 as usize].0 as usize] = Some(t);
        }
    }
    for (_, v) in &g.outputs {
        last_use[root[v.0 as usize].0 as usize] = Some(end);
    }

    let persistent_slot = |v: ValueId| -> Option<Slot> {
        match &g.value(v).role {
            Role::Param(n) | Role::State(n) => {
                persistent.iter().find(|b| &b.name == n).map(|b| b.slot)
            }
            _ => None,
        }
    };

    let mut slots: Vec<Option<Slot>> = vec![None; g.values.len()];
    let mut fl = FreeList {
        free: BTreeMap::new(),
        top: 0,
    };
    let mut naive = 0usize;
    let mut frees_at: Vec<Vec<ValueId>> = vec![Vec::new(); end + 1];

    let place = |v: ValueId,
                 t: Option<usize>,
                 slots: &mut Vec<Option<Slot>>,
                 fl: &mut FreeList,
                 naive: &mut usize,
                 frees_at: &mut Vec<Vec<ValueId>>|
     -> Result<()> {
        let len = words(g.shape(v))?;
        let off = fl.alloc(len)?;
        *naive = add(*naive, len)?;
        slots[v.0 as usize] = Some(Slot {
            offset: add(base, off)?,
            len,
        });
        // A value nobody reads dies right after it is written.
        let dies = last_use[v.0 as usize].or(t).unwrap_or(0);
        frees_at[dies].push(v);
        Ok(())
    };

    // Inputs live from the start.
    let mut inputs = Vec::new();
    for (iname, v) in g.inputs() {
        place(v, Some(0), &mut slots, &mut fl, &mut naive, &mut frees_at)?;
        inputs.push(Binding {
            name: iname,
            slot: slots[v.0 as usize].unwrap(),
            shape: g.shape(v).clone(),
            dtype: g.dtype(v),
        });
    }

    let resolve = |v: ValueId, slots: &Vec<Option<Slot>>| -> Slot {
        let r = root[v.0 as usize];
        persistent_slot(r)
            .or(slots[r.0 as usize])
            .expect("value placed before use")
    };

    let mut launches = Vec::new();
    for (t, &i) in order.iter().enumerate() {
        let n = &g.nodes[i];
        if !n.op.is_view() {
            for &o in &n.outputs {
                place(o, Some(t), &mut slots, &mut fl, &mut naive, &mut frees_at)?;
            }
            let mut writes: Vec<Slot> = n.outputs.iter().map(|&o| resolve(o, &slots)).collect();
            writes.extend(n.mutates.iter().map(|&m| resolve(m, &slots)));
            let mut write_shapes: Vec<Shape> =
                n.outputs.iter().map(|&o| g.shape(o).clone()).collect();
            write_shapes.extend(n.mutates.iter().map(|&m| g.shape(m).clone()));
            launches.push(Launch {
                op: remap_scalars(&n.op, &g.scalars, scalars),
                reads: n.inputs.iter().map(|&v| resolve(v, &slots)).collect(),
                writes,
                read_shapes: n.inputs.iter().map(|&v| g.shape(v).clone()).collect(),
                write_shapes,
            });
        }
        for v in std::mem::take(&mut frees_at[t]) {
            let s = slots[v.0 as usize].expect("freed value was placed");
            fl.release(s.offset - base, s.len);
        }
    }

    let outputs = g
        .outputs
        .iter()
        .map(|(oname, v)| Binding {
            name: oname.clone(),
            slot: resolve(*v, &slots),
            shape: g.shape(*v).clone(),
            dtype: g.dtype(*v),
        })
        .collect();

    Ok(Program {
        name: name.to_string(),
        launches,
        inputs,
        outputs,
        transient_words: fl.top,
        naive_words: naive,
    })
}
