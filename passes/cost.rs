//! Static costs of a graph: FLOPs per op and the bytes the backward keeps.
//!
//! "Kept" bytes are what training must hold between the forward and the
//! backward: every forward value (input, forward or state node) that a
//! backward node reads. Parameters are resident anyway and not counted.

use crate::ir::{Cost, Graph, Op, Role};
use std::collections::HashSet;

/// Bytes of an f32 tensor (in f64, so no shape can overflow it).
pub fn bytes(shape: &[usize]) -> f64 {
    4.0 * numel(shape)
}

fn numel(s: &[usize]) -> f64 {
    s.iter().map(|&d| d as f64).product()
}

/// Floating-point operations of one op (a multiply-add counts 2): the op
/// table's cost ([`Cost`]), and for ops whose work depends on the operand
/// shapes, computed here.
pub fn flops(op: &Op, ins: &[&[usize]], out: &[usize]) -> f64 {
    let o = numel(out);
    match op.info().cost {
        Cost::Free => 0.0,
        Cost::PerOutput(k) => k * o,
        Cost::PerInput => ins.iter().map(|s| numel(s)).sum(),
        Cost::Shaped => shaped_flops(op, ins, out),
    }
}

fn shaped_flops(op: &Op, ins: &[&[usize]], out: &[usize]) -> f64 {
    let o = numel(out);
    match op {
        Op::MatMul { ta, .. } => {
            let k = if *ta { ins[0][0] } else { ins[0][1] };
            2.0 * o * k as f64
        }
        // Each output element is a dot product over Ci·k·k taps.
        Op::Conv2d { .. } => 2.0 * o * numel(&ins[1][1..]),
        // Both gradients touch every (output element, tap) pair once.
        Op::Conv2dGradInput { .. } => 2.0 * numel(ins[0]) * numel(&ins[1][1..]),
        Op::Conv2dGradWeight { .. } => 2.0 * numel(ins[1]) * numel(&out[1..]),
        Op::AvgPool { kernel, .. } | Op::MaxPool { kernel, .. } => o * (kernel * kernel) as f64,
        Op::AvgPoolGrad { kernel, .. } => numel(ins[0]) * (kernel * kernel) as f64,
        Op::AvgPoolGradMul { kernel, .. } => numel(ins[0]) * (kernel * kernel) as f64 + o,
        Op::MaxPoolGrad { kernel, .. } => numel(ins[1]) * (kernel * kernel) as f64,
        // One comparison per (window, tap); the selection has k² per window.
        Op::MaxPoolSelect { .. } => o,
        // A multiply and an add per (window, tap).
        Op::MaxPoolRoute { .. } => 2.0 * numel(ins[0]),
        Op::ChannelVar => 3.0 * ins[1..].iter().map(|s| numel(s)).sum::<f64>(),
        // The product and the sum of channel_sum(mul(a, b)).
        Op::ChannelDot => 2.0 * numel(ins[0]),
        Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => 5.0 * numel(ins[0]),
        _ => o,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct GraphCost {
    /// Bytes of forward values the backward reads.
    pub kept_bytes: f64,
    pub forward_flops: f64,
    pub backward_flops: f64,
}

pub fn graph_cost(g: &Graph) -> GraphCost {
    let mut c = GraphCost::default();
    let mut kept: HashSet<petgraph::stable_graph::NodeIndex> = HashSet::new();
    for n in g.g.node_indices() {
        let node = &g.g[n];
        let ops = g.operands(n);
        let shapes: Vec<&[usize]> = ops.iter().map(|&o| g.g[o].shape.as_slice()).collect();
        let f = flops(&node.op, &shapes, &node.shape);
        let backward = matches!(node.role, Role::Backward | Role::Gradient);
        if backward {
            c.backward_flops += f;
            for &o in &ops {
                if matches!(
                    g.g[o].role,
                    Role::Input | Role::Forward | Role::State | Role::Output
                ) {
                    kept.insert(o);
                }
            }
        } else {
            c.forward_flops += f;
        }
    }
    c.kept_bytes = kept.iter().map(|&n| bytes(&g.g[n].shape)).sum::<f64>() + 0.0;
    c
}
