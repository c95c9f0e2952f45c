//! The CPU executor: evaluates a graph in f32, in topological order, with
//! SGEMM (matrixmultiply, multithreaded) for matmuls and im2col
//! convolutions, and the reference kernels for the rest.
//!
//! Values are freed as soon as their last user has run (outputs are kept),
//! so the live set follows the schedule rather than the whole graph.

pub mod compiled;
mod elementwise;
pub mod kernels;

use crate::interp::{eval_op, InterpError, RunOptions};
use crate::ir::{Graph, NodeIndex, Op};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Values of the graph's outputs, by name.
pub type Outputs = HashMap<String, Tensor<f32>>;

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
    let order = g.topo_order().ok_or(InterpError::Cyclic)?;
    let mut remaining: HashMap<NodeIndex, usize> = HashMap::new();
    for &n in &order {
        for o in g.operands(n) {
            *remaining.entry(o).or_default() += 1;
        }
    }
    let keep: std::collections::HashSet<NodeIndex> = g
        .outputs
        .iter()
        .map(|&(_, n)| n)
        .chain(also.iter().copied())
        .collect();
    let mut vals: HashMap<NodeIndex, Tensor<f32>> = HashMap::new();
    for &n in &order {
        let node = &g.g[n];
        let v = match &node.op {
            Op::Input { name } => lookup(inputs, name, &node.shape, true)?,
            Op::Param { name } => lookup(params, name, &node.shape, false)?,
            _ => eval_node(g, n, &vals, opts)?,
        };
        vals.insert(n, v);
        for o in g.operands(n) {
            let r = remaining.get_mut(&o).expect("counted");
            *r -= 1;
            if *r == 0 && !keep.contains(&o) {
                vals.remove(&o);
            }
        }
    }
    let outs = g
        .outputs
        .iter()
        .map(|(name, n)| (name.clone(), vals[n].clone()))
        .collect();
    let extra = also
        .iter()
        .filter_map(|n| vals.get(n).map(|v| (*n, v.clone())))
        .collect();
    Ok((outs, extra))
}

fn lookup(
    map: &HashMap<String, Tensor<f32>>,
    name: &str,
    shape: &[usize],
    input: bool,
) -> Result<Tensor<f32>, InterpError> {
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
    Ok(t.clone())
}

/// Evaluates one non-leaf node from its operands' values: SGEMM for
/// matmuls and convolutions, parallel elementwise kernels, the reference
/// kernels for the rest.
fn eval_node(
    g: &Graph,
    n: NodeIndex,
    vals: &HashMap<NodeIndex, Tensor<f32>>,
    opts: &RunOptions,
) -> Result<Tensor<f32>, InterpError> {
    let node = &g.g[n];
    let op = &node.op;
    let args = g.operands(n);
    let xs: Vec<&Tensor<f32>> = args.iter().map(|a| &vals[a]).collect();
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
        _ => elementwise::eval(op, &xs).or_else(|| elementwise::eval_reduce(op, &xs)),
    };
    match fast {
        Some(t) => Ok(t),
        None => eval_op(op, &node.shape, &xs, opts).map_err(|msg| InterpError::Op {
            node: n.index(),
            op: op.name().to_string(),
            msg,
        }),
    }
}
