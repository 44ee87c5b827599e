//! A compiled module loaded on a backend, addressed by names: the host
//! writes inputs and persistent tensors, sets runtime scalars, runs a
//! program and reads outputs. No allocation per run.

use crate::backend::{Backend, Executable};
use crate::error::{Error, Result};
use crate::graph::plan::{Binding, Module};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

pub struct Session {
    module: Arc<Module>,
    exe: Box<dyn Executable>,
    scalars: Vec<f32>,
    device: String,
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
        })
    }

    pub fn module(&self) -> &Module {
        &self.module
    }
    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn program(&self, name: &str) -> Result<usize> {
        self.module
            .program(name)
            .ok_or_else(|| Error::Usage(format!("the module has no program '{name}'")))
    }

    /// Set a runtime scalar; unknown names are ignored (a program that does
    /// not read `lr` does not declare it).
    pub fn set_scalar(&mut self, name: &str, v: f32) {
        if let Some(i) = self.module.scalar(name) {
            self.scalars[i] = v;
        }
    }

    fn input(&self, program: usize, name: &str) -> Result<&Binding> {
        let p = &self.module.programs[program];
        p.input(name)
            .ok_or_else(|| Error::Usage(format!("program '{}' has no input '{name}'", p.name)))
    }

    pub fn write_input(&mut self, program: usize, name: &str, data: &[f32]) -> Result<()> {
        let b = self.input(program, name)?;
        if b.dtype != DType::F32 || data.len() != b.slot.len {
            return Err(Error::shape(
                "input",
                format!(
                    "'{name}' expects {} {} values (shape {}), got {} f32",
                    b.slot.len,
                    b.dtype,
                    b.shape,
                    data.len()
                ),
            ));
        }
        let slot = b.slot;
        self.exe.write(slot, data)
    }

    pub fn write_input_u32(&mut self, program: usize, name: &str, data: &[u32]) -> Result<()> {
        let b = self.input(program, name)?;
        if b.dtype != DType::U32 || data.len() != b.slot.len {
            return Err(Error::shape(
                "input",
                format!(
                    "'{name}' expects {} {} values (shape {}), got {} u32",
                    b.slot.len,
                    b.dtype,
                    b.shape,
                    data.len()
                ),
            ));
        }
        let slot = b.slot;
        self.exe.write(slot, bytemuck::cast_slice(data))
    }

    pub fn run(&mut self, program: usize) -> Result<()> {
        self.exe.run(program, &self.scalars)
    }

    fn output(&self, program: usize, name: &str) -> Result<&Binding> {
        let p = &self.module.programs[program];
        p.output(name)
            .ok_or_else(|| Error::Usage(format!("program '{}' has no output '{name}'", p.name)))
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

    pub fn persistent(&self, name: &str) -> Result<&Binding> {
        self.module
            .persistent(name)
            .ok_or_else(|| Error::Usage(format!("no parameter or state named '{name}'")))
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
