//! The CPU target of the one executor (`codegen::exec`): [`Cpu`]
//! ([`backend`]: host memory, the library kernels compiled as C++ with the
//! CPU shim and `native.h`, the plan's generated C, SGEMM from
//! [`sgemm`]).
//!
//! [`run`], [`run_keeping`] and [`run_planned`] run a graph node by node
//! on it (a plan of one library call per node), for checking passes and
//! other backends against the same kernels the fused plan's library nodes
//! use.

pub mod amx;
pub mod backend;
pub mod conv;
mod conv_bf16;
mod conv_direct;
pub mod layout;
mod onednn;
pub mod sgemm;

pub use backend::Cpu;

use crate::codegen::exec::{ExecError, Executor, LibraryScratch};
use crate::interp::RunOptions;
use crate::ir::{Graph, NodeIndex};
use crate::passes::memplan;
use crate::tensor::Tensor;
use std::collections::HashMap;

/// The CPU executor's library scratch (its convolution workspace), for the
/// memory plans.
pub const WORKSPACE: LibraryScratch = LibraryScratch {
    conv_workspace: backend::CONV_WORKSPACE,
};

/// Bytes of the executor's copies of `g`'s inputs and parameters on the
/// CPU: one buffer per leaf node (what a run allocates besides the arena
/// and the outputs).
pub fn leaf_bytes(g: &Graph) -> u64 {
    use crate::ir::Op;
    g.g.node_indices()
        .filter(|&n| matches!(g.node(n).op, Op::Input { .. } | Op::Param { .. }))
        .map(|n| backend::buffer_bytes(g.node(n).shape.iter().product()))
        .sum()
}

/// Values of the graph's outputs, by name.
pub type Outputs = HashMap<String, Tensor<f32>>;

/// Runs `g` node by node in the default (layer-major) order.
pub fn run(
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
) -> Result<Outputs, ExecError> {
    run_keeping(g, inputs, params, opts, &[]).map(|(o, _)| o)
}

/// As [`run`], also returning the values of the nodes in `also` (e.g. the
/// spikes, for firing rates).
pub fn run_keeping(
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
    also: &[NodeIndex],
) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), ExecError> {
    g.topo_order().ok_or(ExecError::Cyclic)?;
    let order = crate::passes::schedule::order(g, crate::passes::schedule::Schedule::LayerMajor);
    run_ordered(g, order, inputs, params, opts, also)
}

/// Runs a planned graph (`memplan::build`) node by node in its order.
pub fn run_planned(
    p: &memplan::Planned,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
) -> Result<Outputs, ExecError> {
    run_ordered(&p.graph, p.order().to_vec(), inputs, params, opts, &[]).map(|(o, _)| o)
}

fn run_ordered(
    g: &Graph,
    order: Vec<NodeIndex>,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
    also: &[NodeIndex],
) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), ExecError> {
    let mut cpu = Cpu::new()?;
    let plan = crate::passes::fuse::Plan::node_by_node(order);
    let mut ex = Executor::with_plan(&mut cpu, g, plan, also)?;
    ex.run_keeping(inputs, params, opts, !also.is_empty())
}
