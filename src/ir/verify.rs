//! The verifier: runs after graph construction and after every pass.
//!
//! Checks (1) acyclicity, (2) that every node's shape is what its op infers
//! from its operands, (3) annotations: roles match ops, per-step nodes have
//! a timestep and a layer, and a node at step t reads only shared nodes,
//! step-t nodes, or step-(t−1) *state* (the membrane edge).

use super::{Graph, Op, Role, ShapeRuleError};
use petgraph::stable_graph::NodeIndex;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("graph `{graph}` fails verification at node {node} ({op}{layer}): {problem}")]
pub struct VerifyError {
    pub graph: String,
    /// petgraph index of the offending node.
    pub node: usize,
    pub op: String,
    pub layer: String,
    /// Boxed: a shape error holds two shapes, and every stage's error
    /// embeds this one (clippy::result_large_err).
    pub problem: Box<NodeProblem>,
}

/// What is wrong at the offending node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeProblem {
    /// Its operands do not fit its op's shape rule.
    #[error(transparent)]
    Shape(#[from] ShapeRuleError),
    /// A structural or annotation check failed; the text says which.
    #[error("{0}")]
    Check(String),
}

/// The error for `problem` at node `n` of `g`.
fn at(g: &Graph, n: NodeIndex, problem: NodeProblem) -> VerifyError {
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
        problem: Box::new(problem),
    }
}

pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    let err = |n: NodeIndex, msg: &str| at(g, n, NodeProblem::Check(msg.to_string()));
    let order = g.topo_order().ok_or_else(|| VerifyError {
        graph: g.name.clone(),
        node: 0,
        op: String::new(),
        layer: String::new(),
        problem: Box::new(NodeProblem::Check("the graph has a cycle".into())),
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
            return Err(err(
                n,
                &format!(
                    "operand positions {} are not 0..k",
                    crate::shape::list(&pos)
                ),
            ));
        }
        // Every later size computation (bytes, FLOPs, kernel bounds) may
        // then multiply a shape's dimensions without overflow.
        if crate::shape::elements(&node.shape).is_none() {
            return Err(err(
                n,
                &format!(
                    "shape {} has too many elements (at most 2^60)",
                    crate::shape::dims(&node.shape)
                ),
            ));
        }
        let shapes: Vec<&[usize]> = ops.iter().map(|&o| g.g[o].shape.as_slice()).collect();
        match node.op.infer_shape(&shapes) {
            Err(e) => return Err(at(g, n, e.into())),
            Ok(Some(s)) if s != node.shape => {
                return Err(err(
                    n,
                    &format!(
                        "annotated shape {}, op gives {}",
                        crate::shape::list(&node.shape),
                        crate::shape::list(&s)
                    ),
                ))
            }
            _ => {}
        }
        if let Some(l) = node.layer {
            if l >= g.layers.len() {
                return Err(err(n, &format!("layer id {l} out of range")));
            }
        }
        match node.role {
            Role::Param if !matches!(node.op, Op::Param { .. }) || node.t.is_some() => {
                return Err(err(n, "a param node must be a shared `param` op"))
            }
            Role::Input if !matches!(node.op, Op::Input { .. }) => {
                return Err(err(n, "an input node must be an `input` op"))
            }
            Role::Forward | Role::State | Role::Output | Role::Backward | Role::Gradient
                if node.op.is_leaf() && !matches!(node.op, Op::DropoutMask { .. }) =>
            {
                return Err(err(n, "a leaf op in a computed role"))
            }
            _ => {}
        }
        let computed = !matches!(node.role, Role::Input | Role::Param);
        if computed && node.layer.is_none() {
            return Err(err(n, "computed node without a layer"));
        }
        if node.role == Role::State && node.t.is_none() {
            return Err(err(n, "state node without a timestep"));
        }
        if node.role == Role::Gradient && node.t.is_some() {
            return Err(err(n, "a parameter gradient must be shared by all steps"));
        }
        let reduces_time = matches!(
            node.op,
            Op::TimeMean | Op::ChannelMean | Op::ChannelVar | Op::Sum
        );
        if !reduces_time && !node.op.is_leaf() && node.t.is_none() {
            if let Some(&o) = ops.iter().find(|&&o| g.g[o].t.is_some()) {
                return Err(err(
                    n,
                    &format!(
                        "per-step op without a timestep reads step {}",
                        g.g[o].t.map_or("-".to_string(), |t| t.to_string())
                    ),
                ));
            }
        }
        let backward = matches!(node.role, Role::Backward | Role::Gradient);
        for &o in &ops {
            let on = &g.g[o];
            let reads_backward = matches!(on.role, Role::Backward | Role::Gradient);
            if !backward && reads_backward {
                return Err(err(
                    n,
                    &format!(
                        "a {} node reads backward node {}",
                        node.role.short(),
                        on.op.name()
                    ),
                ));
            }
            let (Some(t), Some(ot)) = (node.t, on.t) else {
                continue;
            };
            // Forward: step t reads step t, or the state of step t−1.
            // Backward: the gradient of step t may read steps t−1..=t+1
            // (δ flows from t+1 to t; a rule at step t reads its forward
            // operands, which include step-(t−1) state).
            let ok = if backward {
                ot + 1 >= t && ot <= t + 1
            } else {
                ot == t || (ot + 1 == t && on.role == Role::State)
            };
            if !ok {
                return Err(err(
                    n,
                    &format!(
                        "step {t} reads {} at step {ot} (a {} node may read {})",
                        on.op.name(),
                        node.role.short(),
                        if backward {
                            "steps t−1, t and t+1"
                        } else {
                            "step-t values, shared values and step-(t−1) state"
                        }
                    ),
                ));
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
                problem: Box::new(NodeProblem::Check(format!(
                    "output `{name}` is not in the graph"
                ))),
            });
        }
    }
    Ok(())
}
