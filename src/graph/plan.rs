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
    /// `Some(k)`: output 0 is written in place over read `k` (which dies
    /// here); the kernel reads that operand from its output buffer.
    pub inplace: Option<usize>,
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
    /// The program a backend is asked to run, after checking the scalars
    /// passed match the module's (the same check on every backend).
    pub fn program_for_run(&self, program: usize, scalars: &[f32]) -> Result<&Program> {
        let p = self
            .programs
            .get(program)
            .ok_or_else(|| Error::Usage(format!("no program {program}")))?;
        if scalars.len() != self.scalars.len() {
            return Err(Error::Usage(format!(
                "program '{}' needs {} scalars ({:?}), got {}",
                p.name,
                self.scalars.len(),
                self.scalars,
                scalars.len()
            )));
        }
        Ok(p)
    }

    /// A host buffer of `len` words may be copied to or from `slot`.
    pub fn check_transfer(&self, slot: Slot, len: usize) -> Result<()> {
        if slot.len != len || slot.end() > self.arena_words {
            return Err(Error::Usage(format!(
                "buffer of {len} words for a slot of {} words",
                slot.len
            )));
        }
        Ok(())
    }

    /// "train, infer": the program names, for error messages.
    pub fn program_names(&self) -> String {
        let names: Vec<&str> = self.programs.iter().map(|p| p.name.as_str()).collect();
        names.join(", ")
    }

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
pub fn live_nodes(g: &Graph) -> Vec<bool> {
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
    op.with_scalars(|s| {
        let name = &local[s.0 as usize];
        ScalarId(
            global
                .iter()
                .position(|g| g == name)
                .expect("module scalar table is a union") as u32,
        )
    })
}

/// A transient buffer: one or more values that share storage (a value and
/// the outputs written in place over it), live from `start` to `end`.
struct Storage {
    start: usize,
    end: usize,
    len: usize,
    offset: usize,
}

/// Offline placement, largest first, each at the lowest offset that does
/// not collide with an already placed buffer whose lifetime overlaps. All
/// lifetimes are known before the first launch, so this beats any online
/// allocator on fragmentation. Returns the peak.
fn place_storages(st: &mut [Storage]) -> Result<usize> {
    let mut idx: Vec<usize> = (0..st.len()).collect();
    idx.sort_by_key(|&i| (std::cmp::Reverse(st[i].len), st[i].start, i));
    let mut placed: Vec<usize> = Vec::new();
    let mut peak = 0usize;
    for i in idx {
        let mut clash: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| st[j].start <= st[i].end && st[i].start <= st[j].end && st[j].len > 0)
            .map(|&j| (st[j].offset, st[j].offset + st[j].len))
            .collect();
        clash.sort_unstable();
        let mut off = 0usize;
        for (a, b) in clash {
            if add(off, st[i].len)? <= a {
                break;
            }
            off = off.max(b);
        }
        st[i].offset = off;
        peak = peak.max(add(off, st[i].len)?);
        placed.push(i);
    }
    Ok(peak)
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
    let is_transient = |v: ValueId| matches!(g.value(v).role, Role::Computed | Role::Input(_));

    // Storage assignment: every transient root gets a buffer, except an
    // output written in place over an operand that dies at that launch.
    let mut storage_of: Vec<Option<usize>> = vec![None; g.values.len()];
    let mut storages: Vec<Storage> = Vec::new();
    let mut naive = 0usize;
    let new_storage = |v: ValueId,
                       t: usize,
                       storages: &mut Vec<Storage>,
                       storage_of: &mut Vec<Option<usize>>,
                       naive: &mut usize|
     -> Result<()> {
        let len = words(g.shape(v))?;
        *naive = add(*naive, len)?;
        storages.push(Storage {
            start: t,
            end: last_use[v.0 as usize].unwrap_or(t).max(t),
            len,
            offset: 0,
        });
        storage_of[v.0 as usize] = Some(storages.len() - 1);
        Ok(())
    };
    // Inputs live for the whole program, so a program can be re-run
    // without uploading its inputs again.
    for (_, v) in g.inputs() {
        new_storage(v, 0, &mut storages, &mut storage_of, &mut naive)?;
        storages.last_mut().expect("just pushed").end = end;
    }
    let mut inplace_at: Vec<Option<usize>> = vec![None; order.len()];
    for (t, &i) in order.iter().enumerate() {
        let n = &g.nodes[i];
        if n.op.is_view() {
            continue;
        }
        let inplace = n.op.inplace_candidates().iter().copied().find(|&k| {
            let Some(&v) = n.inputs.get(k) else {
                return false;
            };
            let r = root[v.0 as usize];
            let only_use = n
                .inputs
                .iter()
                .filter(|&&u| root[u.0 as usize] == r)
                .count()
                == 1;
            matches!(g.value(r).role, Role::Computed)
                && storage_of[r.0 as usize].is_some_and(|s| storages[s].end == t)
                && only_use
                && g.shape(r).numel() == g.shape(n.outputs[0]).numel()
        });
        inplace_at[t] = inplace;
        for (j, &o) in n.outputs.iter().enumerate() {
            match inplace {
                Some(k) if j == 0 => {
                    let s =
                        storage_of[root[n.inputs[k].0 as usize].0 as usize].expect("checked above");
                    storage_of[o.0 as usize] = Some(s);
                    storages[s].end = last_use[o.0 as usize].unwrap_or(t).max(t);
                    naive = add(naive, words(g.shape(o))?)?;
                }
                _ => new_storage(o, t, &mut storages, &mut storage_of, &mut naive)?,
            }
        }
    }
    let peak = place_storages(&mut storages)?;

    let resolve = |v: ValueId| -> Result<Slot> {
        let r = root[v.0 as usize];
        if let Some(s) = persistent_slot(r) {
            return Ok(s);
        }
        debug_assert!(is_transient(r));
        let st = &storages[storage_of[r.0 as usize].expect("every transient value has storage")];
        Ok(Slot {
            offset: add(base, st.offset)?,
            len: words(g.shape(r))?,
        })
    };

    let inputs = g
        .inputs()
        .into_iter()
        .map(|(iname, v)| {
            Ok(Binding {
                name: iname,
                slot: resolve(v)?,
                shape: g.shape(v).clone(),
                dtype: g.dtype(v),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut launches = Vec::new();
    for (t, &i) in order.iter().enumerate() {
        let n = &g.nodes[i];
        if n.op.is_view() {
            continue;
        }
        let writes = n
            .outputs
            .iter()
            .chain(&n.mutates)
            .map(|&v| resolve(v))
            .collect::<Result<Vec<_>>>()?;
        let reads = n
            .inputs
            .iter()
            .map(|&v| resolve(v))
            .collect::<Result<Vec<_>>>()?;
        launches.push(Launch {
            op: remap_scalars(&n.op, &g.scalars, scalars),
            reads,
            writes,
            read_shapes: n.inputs.iter().map(|&v| g.shape(v).clone()).collect(),
            write_shapes: n
                .outputs
                .iter()
                .chain(&n.mutates)
                .map(|&v| g.shape(v).clone())
                .collect(),
            inplace: inplace_at[t],
        });
    }

    let outputs = g
        .outputs
        .iter()
        .map(|(oname, v)| {
            Ok(Binding {
                name: oname.clone(),
                slot: resolve(*v)?,
                shape: g.shape(*v).clone(),
                dtype: g.dtype(*v),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    Ok(Program {
        name: name.to_string(),
        launches,
        inputs,
        outputs,
        transient_words: peak,
        naive_words: naive,
    })
}
