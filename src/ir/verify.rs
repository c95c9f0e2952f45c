//! The verifier: runs after graph construction and after every pass.
//!
//! Checks (1) acyclicity, (2) that every node's shape is what its op infers
//! from its operands, (3) annotations: roles match ops, per-step nodes have
//! a timestep and a layer, and a node at step t reads only shared nodes,
//! step-t nodes, or step-(t−1) *state* (the membrane edge).

use super::{Graph, Op, Role};
use petgraph::stable_graph::NodeIndex;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("graph `{graph}` fails verification at node {node} ({op}{layer}): {msg}")]
pub struct VerifyError {
    pub graph: String,
    /// petgraph index of the offending node.
    pub node: usize,
    pub op: String,
    pub layer: String,
    pub msg: String,
}

pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    let err = |n: NodeIndex, msg: String| {
        let node = &g.g[n];
        VerifyError {
            graph: g.name.clone(),
            node: n.index(),
            op: node.op.name().to_string(),
            layer: node
                .layer
                .and_then(|l| g.layers.get(l))
                .map(|l| format!(", layer {} {}", l.path, l.keyword))
                .unwrap_or_default(),
            msg,
        }
    };
    let order = g.topo_order().ok_or_else(|| VerifyError {
        graph: g.name.clone(),
        node: 0,
        op: String::new(),
        layer: String::new(),
        msg: "the graph has a cycle".into(),
    })?;
    for &n in &order {
        let node = &g.g[n];
        let ops = g.operands(n);
        // Operand positions must be exactly 0..k.
        let mut pos: Vec<usize> =
            g.g.edges_directed(n, petgraph::Direction::Incoming)
                .map(|e| *e.weight())
                .collect();
        pos.sort_unstable();
        if pos.iter().enumerate().any(|(i, &p)| i != p) {
            return Err(err(n, format!("operand positions {pos:?} are not 0..k")));
        }
        let shapes: Vec<&[usize]> = ops.iter().map(|&o| g.g[o].shape.as_slice()).collect();
        match node.op.infer_shape(&shapes) {
            Err(m) => return Err(err(n, m)),
            Ok(Some(s)) if s != node.shape => {
                return Err(err(
                    n,
                    format!("annotated shape {:?}, op gives {s:?}", node.shape),
                ))
            }
            _ => {}
        }
        if let Some(l) = node.layer {
            if l >= g.layers.len() {
                return Err(err(n, format!("layer id {l} out of range")));
            }
        }
        match node.role {
            Role::Param if !matches!(node.op, Op::Param { .. }) || node.t.is_some() => {
                return Err(err(n, "a param node must be a shared `param` op".into()))
            }
            Role::Input if !matches!(node.op, Op::Input { .. }) => {
                return Err(err(n, "an input node must be an `input` op".into()))
            }
            Role::Forward | Role::State | Role::Output
                if node.op.is_leaf() && !matches!(node.op, Op::DropoutMask { .. }) =>
            {
                return Err(err(n, "a leaf op in a computed role".into()))
            }
            _ => {}
        }
        if matches!(node.role, Role::Forward | Role::State | Role::Output) && node.layer.is_none() {
            return Err(err(n, "computed node without a layer".into()));
        }
        if matches!(node.role, Role::State) && node.t.is_none() {
            return Err(err(n, "state node without a timestep".into()));
        }
        let per_step = !matches!(node.op, Op::TimeMean | Op::ChannelMean | Op::ChannelVar)
            && !node.op.is_leaf();
        if per_step && node.t.is_none() && ops.iter().any(|&o| g.g[o].t.is_some()) {
            return Err(err(
                n,
                "per-step op reading per-step values has no timestep".into(),
            ));
        }
        if let Some(t) = node.t {
            for &o in &ops {
                let on = &g.g[o];
                let ok = match on.t {
                    None => true,
                    Some(ot) if ot == t => true,
                    Some(ot) => ot + 1 == t && on.role == Role::State,
                };
                if !ok {
                    return Err(err(
                        n,
                        format!(
                            "step {t} reads {} at step {:?} (only step-{t} values, shared values and step-{} state may be read)",
                            on.op.name(),
                            on.t,
                            t.wrapping_sub(1) as isize
                        ),
                    ));
                }
            }
        }
    }
    for (name, n) in &g.outputs {
        if !g.g.contains_node(*n) {
            return Err(VerifyError {
                graph: g.name.clone(),
                node: n.index(),
                op: String::new(),
                layer: String::new(),
                msg: format!("output `{name}` is not in the graph"),
            });
        }
    }
    Ok(())
}
