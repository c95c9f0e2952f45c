//! The CPU executor: evaluates a graph in f32, in a given execution order
//! (a schedule, `passes::schedule`), with SGEMM (matrixmultiply,
//! multithreaded) for matmuls and im2col convolutions, and the reference
//! kernels for the rest.
//!
//! Its memory behaviour is the memory planner's model (`passes::memplan`),
//! so that the planned peak is what a run allocates: inputs and parameters
//! are read in place (never copied); a value is freed right after its last
//! user in the order has run (outputs and `also` values are kept and moved
//! out at the end); an elementwise node whose first operand dies there
//! writes over that operand's buffer.

pub mod backend;
pub mod compiled;
mod elementwise;
pub mod kernels;
pub mod sgemm;

pub use backend::Cpu;

/// The CPU kernels' scratch, for the memory planner.
pub const WORKSPACE: kernels::CpuWorkspace = kernels::CpuWorkspace;

use crate::interp::{eval_op, InterpError, RunOptions};
use crate::ir::{Graph, NodeIndex, Op};
use crate::passes::memplan;
use crate::passes::schedule::{self, Schedule};
use crate::tensor::Tensor;
use petgraph::visit::NodeIndexable;
use std::collections::HashMap;

/// Values of the graph's outputs, by name.
pub type Outputs = HashMap<String, Tensor<f32>>;

/// Runs `g` in the default (layer-major) order.
pub fn run(
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
) -> Result<Outputs, InterpError> {
    run_keeping(g, inputs, params, opts, &[]).map(|(o, _)| o)
}

/// As `run`, also returning the values of the nodes in `also` (e.g. the
/// spikes, for firing rates).
pub fn run_keeping(
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
    also: &[NodeIndex],
) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), InterpError> {
    if g.topo_order().is_none() {
        return Err(InterpError::Cyclic);
    }
    let order = schedule::order(g, Schedule::LayerMajor);
    run_ordered(g, &order, inputs, params, opts, also)
}

/// Runs a planned graph (`memplan::build`) in its order.
pub fn run_planned(
    p: &memplan::Planned,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
) -> Result<Outputs, InterpError> {
    run_ordered(&p.graph, p.order(), inputs, params, opts, &[]).map(|(o, _)| o)
}

/// A value: computed by the run (owned), or an input or parameter read in
/// place.
enum Val<'a> {
    Owned(Tensor<f32>),
    Shared(&'a Tensor<f32>),
}

impl Val<'_> {
    fn get(&self) -> &Tensor<f32> {
        match self {
            Val::Owned(t) => t,
            Val::Shared(t) => t,
        }
    }
}

/// Runs `g` in `order`, which must be a topological order of all its nodes.
pub fn run_ordered<'a>(
    g: &Graph,
    order: &[NodeIndex],
    inputs: &'a HashMap<String, Tensor<f32>>,
    params: &'a HashMap<String, Tensor<f32>>,
    opts: &RunOptions,
    also: &[NodeIndex],
) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), InterpError> {
    schedule::is_topological(g, order).map_err(|msg| InterpError::Op {
        node: 0,
        op: "schedule".into(),
        msg: msg.to_string(),
    })?;
    let bound = g.g.node_bound();
    let mut remaining = vec![0usize; bound];
    for n in g.g.node_indices() {
        remaining[n.index()] = g.g.edges_directed(n, petgraph::Direction::Outgoing).count();
    }
    let mut keep = vec![false; bound];
    for n in g
        .outputs
        .iter()
        .map(|&(_, n)| n)
        .chain(also.iter().copied())
    {
        keep[n.index()] = true;
    }
    let mut vals: Vec<Option<Val<'a>>> = (0..bound).map(|_| None).collect();
    for &n in order {
        let node = &g.g[n];
        let args = g.operands(n);
        let v = match &node.op {
            Op::Input { name } => Val::Shared(lookup_ref(inputs, name, &node.shape, true)?),
            Op::Param { name } => Val::Shared(lookup_ref(params, name, &node.shape, false)?),
            op => {
                let first = args.first().copied();
                let reuse = first.filter(|&a| {
                    op.in_place()
                        && matches!(vals[a.index()], Some(Val::Owned(_)))
                        && remaining[a.index()] == 1
                        && !keep[a.index()]
                        && vals[a.index()].as_ref().map(|v| v.get().len())
                            == Some(node.shape.iter().product())
                });
                if let Some(a) = reuse {
                    let Some(Val::Owned(mut t)) = vals[a.index()].take() else {
                        unreachable!("checked above")
                    };
                    let rest: Vec<&Tensor<f32>> = args[1..]
                        .iter()
                        .map(|r| vals[r.index()].as_ref().expect("operand computed").get())
                        .collect();
                    elementwise::eval_in_place(op, &mut t, &rest, &node.shape);
                    Val::Owned(t)
                } else {
                    let xs: Vec<&Tensor<f32>> = args
                        .iter()
                        .map(|a| vals[a.index()].as_ref().expect("operand computed").get())
                        .collect();
                    Val::Owned(compute(n, op, &node.shape, &xs, opts)?)
                }
            }
        };
        vals[n.index()] = Some(v);
        for o in &args {
            let r = &mut remaining[o.index()];
            *r -= 1;
            if *r == 0 && !keep[o.index()] {
                vals[o.index()] = None;
            }
        }
        if remaining[n.index()] == 0 && !keep[n.index()] {
            vals[n.index()] = None;
        }
    }
    // Move the kept values out; copy only a value wanted twice.
    let mut wanted = vec![0usize; bound];
    for n in g
        .outputs
        .iter()
        .map(|&(_, n)| n)
        .chain(also.iter().copied())
    {
        wanted[n.index()] += 1;
    }
    let mut take = |n: NodeIndex| -> Tensor<f32> {
        wanted[n.index()] -= 1;
        let slot = &mut vals[n.index()];
        match slot {
            Some(Val::Owned(t)) if wanted[n.index()] > 0 => t.clone(),
            Some(Val::Shared(t)) => (*t).clone(),
            _ => match slot.take() {
                Some(Val::Owned(t)) => t,
                _ => unreachable!("kept values stay until the end"),
            },
        }
    };
    let outs = g
        .outputs
        .iter()
        .map(|(name, n)| (name.clone(), take(*n)))
        .collect();
    let extra = also.iter().map(|&n| (n, take(n))).collect();
    Ok((outs, extra))
}

/// One computed node: SGEMM for matmuls and convolutions, parallel
/// elementwise kernels and reductions, the reference kernels for the rest.
fn compute(
    n: NodeIndex,
    op: &Op,
    shape: &[usize],
    xs: &[&Tensor<f32>],
    opts: &RunOptions,
) -> Result<Tensor<f32>, InterpError> {
    let fast = match op {
        Op::MatMul { ta, tb } => Some(kernels::matmul(xs[0], xs[1], *ta, *tb)),
        Op::Conv2d { stride, padding } => Some(kernels::conv2d(xs[0], xs[1], *stride, *padding)),
        Op::Conv2dGradInput {
            stride,
            padding,
            in_h,
            in_w,
        } => Some(kernels::conv2d_grad_input(
            xs[0], xs[1], *stride, *padding, *in_h, *in_w,
        )),
        Op::Conv2dGradWeight {
            stride,
            padding,
            kernel,
        } => Some(kernels::conv2d_grad_weight(
            xs[0], xs[1], *stride, *padding, *kernel,
        )),
        _ => elementwise::eval(op, shape, xs).or_else(|| elementwise::eval_reduce(op, xs)),
    };
    match fast {
        Some(t) => Ok(t),
        None => eval_op(op, shape, xs, opts).map_err(|msg| InterpError::Op {
            node: n.index(),
            op: op.name().to_string(),
            msg,
        }),
    }
}

/// An input or parameter, checked against the node's shape.
fn lookup_ref<'a>(
    map: &'a HashMap<String, Tensor<f32>>,
    name: &str,
    shape: &[usize],
    input: bool,
) -> Result<&'a Tensor<f32>, InterpError> {
    let t = map.get(name).ok_or_else(|| {
        if input {
            InterpError::MissingInput(name.to_string())
        } else {
            InterpError::MissingParam(name.to_string())
        }
    })?;
    if t.shape != shape {
        return Err(InterpError::BadShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            got: t.shape.clone(),
        });
    }
    if t.data.len() != shape.iter().product::<usize>() {
        return Err(InterpError::BadShape {
            name: format!("{name} (data length {})", t.data.len()),
            expected: shape.to_vec(),
            got: t.shape.clone(),
        });
    }
    Ok(t)
}
