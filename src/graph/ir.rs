//! The typed graph IR. Values carry shapes inferred when they are built, so a
//! mismatch is reported at the op that caused it, not at run time.

use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// Index into the module-wide table of runtime scalars (learning rate, step
/// counter): values the host sets before each run, so schedules never
/// force a recompilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScalarId(pub u32);

/// What a value is to the outside world. Persistent roles (params, state)
/// keep one slot for the life of a module and are shared by its programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Uploaded by the host before each run (a batch of images, labels).
    Input(String),
    /// A trainable parameter, named as PyTorch names it (`conv1.weight`).
    Param(String),
    /// Persistent non-trainable state (optimiser moments, running stats).
    State(String),
    /// Produced by a node.
    Computed,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub shape: Shape,
    pub dtype: DType,
    pub role: Role,
    pub producer: Option<NodeId>,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    /// Values read.
    pub inputs: Vec<ValueId>,
    /// Values produced (fresh, written once).
    pub outputs: Vec<ValueId>,
    /// Persistent values updated in place (parameters by an optimiser,
    /// running statistics by batch-norm). Always scheduled after readers.
    pub mutates: Vec<ValueId>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    /// Values the host reads after a run, by name (`loss`, `logits`).
    pub outputs: Vec<(String, ValueId)>,
    /// Names of the runtime scalars this graph reads.
    pub scalars: Vec<String>,
    /// Training-mode graphs update running statistics and apply dropout.
    pub training: bool,
}

impl Graph {
    pub fn new(training: bool) -> Self {
        Graph {
            training,
            ..Default::default()
        }
    }

    /// A graph for inference: batch norm uses its running statistics and
    /// dropout is the identity.
    pub fn inference() -> Self {
        Self::new(false)
    }

    /// A graph for a training step: batch norm normalises with batch
    /// statistics and updates its running ones, dropout drops.
    pub fn for_training() -> Self {
        Self::new(true)
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }
    pub fn shape(&self, v: ValueId) -> &Shape {
        &self.values[v.0 as usize].shape
    }
    pub fn dtype(&self, v: ValueId) -> DType {
        self.values[v.0 as usize].dtype
    }

    fn push_value(&mut self, shape: Shape, dtype: DType, role: Role) -> Result<ValueId> {
        shape.checked_numel()?;
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value {
            shape,
            dtype,
            role,
            producer: None,
        });
        Ok(id)
    }

    fn find_role(&self, role: &Role) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| &v.role == role)
            .map(|i| ValueId(i as u32))
    }

    pub fn input(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> Result<ValueId> {
        let role = Role::Input(name.to_string());
        if self.find_role(&role).is_some() {
            return Err(Error::Usage(format!("input '{name}' declared twice")));
        }
        self.push_value(shape.into(), dtype, role)
    }

    pub fn param(&mut self, name: &str, shape: impl Into<Shape>) -> Result<ValueId> {
        let role = Role::Param(name.to_string());
        if self.find_role(&role).is_some() {
            return Err(Error::Usage(format!("parameter '{name}' declared twice")));
        }
        self.push_value(shape.into(), DType::F32, role)
    }

    /// Persistent state; declaring the same name twice returns the same value.
    pub fn state(&mut self, name: &str, shape: impl Into<Shape>) -> Result<ValueId> {
        let role = Role::State(name.to_string());
        let shape = shape.into();
        if let Some(v) = self.find_role(&role) {
            if self.shape(v) != &shape {
                return Err(Error::shape(
                    "state",
                    format!("'{name}' declared as {} and {shape}", self.shape(v)),
                ));
            }
            return Ok(v);
        }
        self.push_value(shape, DType::F32, role)
    }

    pub fn scalar(&mut self, name: &str) -> ScalarId {
        if let Some(i) = self.scalars.iter().position(|s| s == name) {
            return ScalarId(i as u32);
        }
        self.scalars.push(name.to_string());
        ScalarId(self.scalars.len() as u32 - 1)
    }

    /// Add a node whose output shapes were computed by the op's shape rule.
    pub fn push_node(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        outputs: Vec<(Shape, DType)>,
        mutates: Vec<ValueId>,
    ) -> Result<Vec<ValueId>> {
        let node = NodeId(self.nodes.len() as u32);
        let mut outs = Vec::with_capacity(outputs.len());
        for (shape, dtype) in outputs {
            let v = self.push_value(shape, dtype, Role::Computed)?;
            self.values[v.0 as usize].producer = Some(node);
            outs.push(v);
        }
        self.nodes.push(Node {
            op,
            inputs,
            outputs: outs.clone(),
            mutates,
        });
        Ok(outs)
    }

    /// Single-output convenience over [`Graph::push_node`].
    pub fn push1(&mut self, op: Op, inputs: Vec<ValueId>, shape: Shape) -> Result<ValueId> {
        Ok(self.push_node(op, inputs, vec![(shape, DType::F32)], vec![])?[0])
    }

    pub fn set_output(&mut self, name: &str, v: ValueId) {
        self.outputs.retain(|(n, _)| n != name);
        self.outputs.push((name.to_string(), v));
    }

    /// The name under which the host reads `v`, if it does.
    pub fn output_name(&self, v: ValueId) -> Option<&str> {
        self.outputs
            .iter()
            .find(|(_, o)| *o == v)
            .map(|(n, _)| n.as_str())
    }

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Parameters in declaration order, with their names.
    pub fn params(&self) -> Vec<(String, ValueId)> {
        self.named(|r| matches!(r, Role::Param(_)))
    }

    /// Persistent values (params and state) with names.
    pub fn persistent(&self) -> Vec<(String, ValueId)> {
        self.named(|r| matches!(r, Role::Param(_) | Role::State(_)))
    }

    pub fn inputs(&self) -> Vec<(String, ValueId)> {
        self.named(|r| matches!(r, Role::Input(_)))
    }

    /// Named values whose role passes `keep`, in declaration order.
    fn named(&self, keep: impl Fn(&Role) -> bool) -> Vec<(String, ValueId)> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match &v.role {
                Role::Param(n) | Role::State(n) | Role::Input(n) if keep(&v.role) => {
                    Some((n.clone(), ValueId(i as u32)))
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn expect_f32(&self, op: &str, v: ValueId) -> Result<()> {
        if self.dtype(v) != DType::F32 {
            return Err(Error::shape(
                op,
                format!(
                    "expected f32 input, got {} of shape {}",
                    self.dtype(v),
                    self.shape(v)
                ),
            ));
        }
        Ok(())
    }
}
