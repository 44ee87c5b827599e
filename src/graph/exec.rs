//! A compiled module loaded on a backend, addressed by names: the host
//! writes inputs and persistent tensors, sets runtime scalars, runs a
//! program and reads outputs. No allocation per run.

use crate::backend::{Backend, Executable};
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::graph::plan::{Binding, Module, Slot};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

pub struct Session {
    module: Arc<Module>,
    exe: Box<dyn Executable>,
    scalars: Vec<f32>,
    device: String,
    /// Host copy of a device's all-reduce region, reused every step.
    staging: Vec<f32>,
}

impl Session {
    pub fn new(backend: &dyn Backend, module: Module) -> Result<Self> {
        let module = Arc::new(module);
        let exe = backend.compile(Arc::clone(&module))?;
        let scalars = vec![0.0; module.scalars.len()];
        Ok(Session {
            module,
            exe,
            scalars,
            device: backend.name(),
            staging: Vec::new(),
        })
    }

    /// A session over an executable compiled elsewhere (a backend outside
    /// this crate, a test harness) from `module`.
    pub fn from_executable(module: Arc<Module>, exe: Box<dyn Executable>, device: String) -> Self {
        let scalars = vec![0.0; module.scalars.len()];
        Session {
            module,
            exe,
            scalars,
            device,
            staging: Vec::new(),
        }
    }

    pub fn module(&self) -> &Module {
        &self.module
    }
    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn program(&self, name: &str) -> Result<usize> {
        self.module.program(name).ok_or_else(|| {
            unknown(
                "program",
                name,
                self.module.programs.iter().map(|p| &p.name),
            )
        })
    }

    /// Whether some program reads the runtime scalar `name` (SGD declares
    /// no `step`, for instance).
    pub fn has_scalar(&self, name: &str) -> bool {
        self.module.scalar(name).is_some()
    }

    /// Set a runtime scalar. An unknown name is an error: a misspelt `step`
    /// would otherwise leave 0 and divide by zero in Adam's bias correction.
    pub fn set_scalar(&mut self, name: &str, v: f32) -> Result<()> {
        let i = self
            .module
            .scalar(name)
            .ok_or_else(|| unknown("runtime scalar", name, self.module.scalars.iter()))?;
        self.scalars[i] = v;
        Ok(())
    }

    fn input(&self, program: usize, name: &str) -> Result<&Binding> {
        let p = &self.module.programs[program];
        p.input(name)
            .ok_or_else(|| unknown("input", name, p.inputs.iter().map(|b| &b.name)))
    }

    pub fn write_input(&mut self, program: usize, name: &str, data: &[f32]) -> Result<()> {
        self.write_input_words(program, name, DType::F32, data)
    }

    pub fn write_input_u32(&mut self, program: usize, name: &str, data: &[u32]) -> Result<()> {
        self.write_input_words(program, name, DType::U32, bytemuck::cast_slice(data))
    }

    /// Writes `words` (values of `dtype`, u32 as their bits) to an input.
    fn write_input_words(
        &mut self,
        program: usize,
        name: &str,
        dtype: DType,
        words: &[f32],
    ) -> Result<()> {
        let b = self.input(program, name)?;
        if b.dtype != dtype || words.len() != b.slot.len {
            return Err(Error::shape(
                "input",
                format!(
                    "'{name}' expects {} {} values (shape {}), got {} {dtype}",
                    b.slot.len,
                    b.dtype,
                    b.shape,
                    words.len()
                ),
            ));
        }
        let slot = b.slot;
        self.exe.write(slot, words)
    }

    pub fn run(&mut self, program: usize) -> Result<()> {
        self.exe.run(program, &self.scalars)
    }

    /// Wait for every run to finish on the device (see
    /// [`Executable::finish`]).
    pub fn finish(&mut self) -> Result<()> {
        self.exe.finish()
    }

    fn output(&self, program: usize, name: &str) -> Result<&Binding> {
        let p = &self.module.programs[program];
        p.output(name)
            .ok_or_else(|| unknown("output", name, p.outputs.iter().map(|b| &b.name)))
    }

    pub fn read_output(&mut self, program: usize, name: &str, out: &mut [f32]) -> Result<()> {
        let slot = self.output(program, name)?.slot;
        self.exe.read(slot, out)
    }

    /// The output in place where the backend keeps host memory (CPU), so
    /// inference can return a view with no copy and no allocation.
    pub fn output_view(&self, program: usize, name: &str) -> Result<Option<&[f32]>> {
        let slot = self.output(program, name)?.slot;
        Ok(self.exe.host_view(slot))
    }

    /// Sum the persistent words in `slot` across the ranks of `group`, in
    /// place (a data-parallel step's gradient region).
    pub fn all_reduce(&mut self, slot: Slot, group: &dyn Collective) -> Result<()> {
        if slot.end() > self.module.persistent_words {
            return Err(Error::Usage(format!(
                "all-reduce of words {}..{} reaches past the persistent region ({} words)",
                slot.offset,
                slot.end(),
                self.module.persistent_words
            )));
        }
        self.exe.all_reduce(slot, group, &mut self.staging)
    }

    pub fn persistent(&self, name: &str) -> Result<&Binding> {
        self.module.persistent(name).ok_or_else(|| {
            unknown(
                "parameter or state",
                name,
                self.module.persistent.iter().map(|b| &b.name),
            )
        })
    }

    pub fn read_persistent(&mut self, name: &str) -> Result<Tensor> {
        let b = self.persistent(name)?.clone();
        let mut data = vec![0.0; b.slot.len];
        self.exe.read(b.slot, &mut data)?;
        Ok(Tensor {
            shape: b.shape,
            data,
        })
    }

    pub fn write_persistent(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let b = self.persistent(name)?;
        if data.len() != b.slot.len {
            return Err(Error::shape(
                "parameter",
                format!(
                    "'{name}' has shape {} ({} values), got {}",
                    b.shape,
                    b.slot.len,
                    data.len()
                ),
            ));
        }
        let slot = b.slot;
        self.exe.write(slot, data)
    }
}

/// The error for a name the module lacks, listing (some of) those it has.
fn unknown<'a>(what: &'static str, name: &str, known: impl Iterator<Item = &'a String>) -> Error {
    let names: Vec<&str> = known.map(String::as_str).collect();
    let mut list = names
        .iter()
        .take(12)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 12 {
        list.push_str(&format!(", … {} more", names.len() - 12));
    }
    Error::UnknownName {
        what,
        name: name.to_string(),
        known: list,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::graph::ir::Graph;

    #[test]
    fn unknown_names_are_typed_errors_that_list_the_known_ones() {
        let mut g = Graph::new(false);
        let x = g.input("x", [4], DType::F32).unwrap();
        let y = g.scale(x, 2.0).unwrap();
        g.set_output("y", y);
        let m = crate::graph::plan::compile(&[("p", &g)]).unwrap();
        let mut s = Session::new(&CpuBackend::new(), m).unwrap();
        assert!(!s.has_scalar("step"));
        let e = s.set_scalar("stpe", 1.0).unwrap_err();
        assert!(
            matches!(&e, Error::UnknownName { what: "runtime scalar", name, .. } if name == "stpe"),
            "{e:?}"
        );
        let p = s.program("p").unwrap();
        match s.write_input(p, "z", &[0.0; 4]).unwrap_err() {
            Error::UnknownName { what, known, .. } => {
                assert_eq!((what, known.as_str()), ("input", "x"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.program("q"),
            Err(Error::UnknownName {
                what: "program",
                ..
            })
        ));
        assert!(matches!(
            s.read_persistent("w"),
            Err(Error::UnknownName { .. })
        ));
    }
}
