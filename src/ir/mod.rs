//! The graph IR: a petgraph `StableDiGraph` of primitive ops.
//!
//! Every node carries its op, shape, dtype and provenance (layer, timestep,
//! role). Edges point from operand to user; the edge weight is the operand
//! position, so `operands(n)` returns them in order. Passes remove nodes, and
//! `StableDiGraph` keeps the other indices valid while they do.

pub mod kernel;
mod op;
mod print;
pub mod scalar;
pub mod scalar_eval;
mod shape_rule;
mod verify;

pub use op::{Arity, Cost, Linearity, MaxPoolRule, Op, OpInfo};

/// Bytes of an f32 tensor of `shape` (saturating: a verified graph's
/// shapes have at most 2^60 elements, and a sum of byte counts that
/// saturates is refused by the memory check rather than wrapped).
pub fn value_bytes(shape: &[usize]) -> u64 {
    (crate::shape::numel(shape) as u64).saturating_mul(4)
}
pub use petgraph::stable_graph::NodeIndex;
pub use print::{dot_quote, to_dot, to_text};
pub use shape_rule::{pooled, ShapeRuleError};
pub use verify::{verify, NodeProblem, VerifyError};

use petgraph::stable_graph::StableDiGraph;
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use serde::Serialize;
use std::collections::BinaryHeap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DType {
    F32,
}

/// What a node is for. Printed, checked by the verifier, and used by later
/// passes to find the forward, the kept state and the gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Role {
    /// A graph input.
    Input,
    /// A parameter (or running statistic), shared by every timestep.
    Param,
    /// Forward computation.
    Forward,
    /// Membrane potential carried from step t to step t+1.
    State,
    /// A graph output.
    Output,
    /// Backward computation (built by autodiff).
    Backward,
    /// A parameter's gradient: the backward's result, also an output.
    Gradient,
}

impl Role {
    pub fn short(self) -> &'static str {
        match self {
            Role::Input => "in",
            Role::Param => "param",
            Role::Forward => "fwd",
            Role::State => "state",
            Role::Output => "out",
            Role::Backward => "bwd",
            Role::Gradient => "grad",
        }
    }
}

/// Index into `Graph::layers`.
pub type LayerId = usize;

/// A layer of the model, flattened in source order. `path` is the layer's
/// position (`"3"`, `"5.main.1"`), which also prefixes its parameter names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerInfo {
    pub path: String,
    pub keyword: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub layer: Option<LayerId>,
    /// Timestep (0-based) for per-step nodes; `None` for nodes shared by all
    /// steps (parameters, inputs under direct encoding, time reductions).
    pub t: Option<usize>,
    pub role: Role,
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    /// Number of timesteps the graph was unrolled for.
    pub steps: usize,
    pub batch: usize,
    pub layers: Vec<LayerInfo>,
    pub g: StableDiGraph<Node, usize>,
    /// Named outputs, in order (the readout is `"logits"`).
    pub outputs: Vec<(String, NodeIndex)>,
    /// What autodiff built, for the passes that rewrite the backward; a
    /// pass that restructures the backward drops it.
    pub ad: Option<AdInfo>,
}

/// The bookkeeping autodiff leaves behind.
#[derive(Clone, Debug, Default)]
pub struct AdInfo {
    /// Forward node → the node holding its accumulated gradient.
    pub grad_of: std::collections::HashMap<NodeIndex, NodeIndex>,
    /// `(layer of the rule, forward operand, contribution)`: every
    /// gradient contribution a backward rule made to an operand.
    pub contributions: Vec<(Option<LayerId>, NodeIndex, NodeIndex)>,
}

impl Graph {
    pub fn new(name: &str, steps: usize, batch: usize) -> Graph {
        Graph {
            name: name.to_string(),
            steps,
            batch,
            layers: Vec::new(),
            g: StableDiGraph::new(),
            outputs: Vec::new(),
            ad: None,
        }
    }

    /// Adds a node reading `operands` in order.
    pub fn add(&mut self, node: Node, operands: &[NodeIndex]) -> NodeIndex {
        let n = self.g.add_node(node);
        for (i, &a) in operands.iter().enumerate() {
            self.g.add_edge(a, n, i);
        }
        n
    }

    /// Adds a computed f32 node whose shape its op infers from the operands.
    /// Passes build only well-shaped nodes, so a shape error is a bug in the
    /// pass named by `who`, and panics with the op and the reason.
    pub fn add_op(
        &mut self,
        who: &str,
        op: Op,
        layer: Option<LayerId>,
        t: Option<usize>,
        role: Role,
        args: &[NodeIndex],
    ) -> NodeIndex {
        let shapes: Vec<&[usize]> = args.iter().map(|&a| self.g[a].shape.as_slice()).collect();
        let shape = op
            .infer_shape(&shapes)
            .unwrap_or_else(|e| panic!("{who} built an ill-shaped {}: {e}", op.name()))
            .unwrap_or_else(|| panic!("{who} built a leaf {} as a computed node", op.name()));
        self.add(
            Node {
                op,
                shape,
                dtype: DType::F32,
                layer,
                t,
                role,
            },
            args,
        )
    }

    /// Adds an f32 leaf shared by all steps (an input or a parameter).
    pub fn add_leaf(&mut self, op: Op, shape: &[usize], role: Role) -> NodeIndex {
        let node = Node {
            op,
            shape: shape.to_vec(),
            dtype: DType::F32,
            layer: None,
            t: None,
            role,
        };
        self.add(node, &[])
    }

    /// A graph of the one op `op` over an input `x` and a parameter `w`,
    /// with the output `y`: how a bench or a test runs one kernel through
    /// the executor. `op` must accept those shapes (see [`Graph::add_op`]).
    pub fn single_op(who: &str, op: Op, x: &[usize], w: &[usize]) -> Graph {
        let mut g = Graph::new(op.name(), 1, x.first().copied().unwrap_or(1));
        let xi = g.add_leaf(Op::Input { name: "x".into() }, x, Role::Input);
        let wi = g.add_leaf(Op::Param { name: "w".into() }, w, Role::Param);
        let y = g.add_op(who, op, None, None, Role::Output, &[xi, wi]);
        g.outputs.push(("y".into(), y));
        g
    }

    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    /// Operands of `n`, in position order.
    pub fn operands(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut es: Vec<(usize, NodeIndex)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        es.sort_unstable();
        es.into_iter().map(|(_, s)| s).collect()
    }

    /// Distinct nodes that read `n`.
    pub fn users(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut us: Vec<NodeIndex> = self.g.neighbors_directed(n, Direction::Outgoing).collect();
        us.sort_unstable();
        us.dedup();
        us
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    pub fn edge_count(&self) -> usize {
        self.g.edge_count()
    }

    /// A deterministic topological order: Kahn's algorithm that always takes
    /// the ready node created first. Independent of hash order, so printing
    /// and numbering are canonical. `None` if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeIndex>> {
        let mut indeg: Vec<usize> = vec![0; self.g.node_bound()];
        for n in self.g.node_indices() {
            indeg[n.index()] = self.g.edges_directed(n, Direction::Incoming).count();
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<usize>> = self
            .g
            .node_indices()
            .filter(|n| indeg[n.index()] == 0)
            .map(|n| std::cmp::Reverse(n.index()))
            .collect();
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            let n = NodeIndex::new(i);
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let m = e.target().index();
                indeg[m] -= 1;
                if indeg[m] == 0 {
                    ready.push(std::cmp::Reverse(m));
                }
            }
        }
        (order.len() == self.g.node_count()).then_some(order)
    }

    /// The output node called `name`.
    pub fn output(&self, name: &str) -> Option<NodeIndex> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, i)| i)
    }

    /// Removes every node no output depends on; returns how many.
    pub fn remove_dead(&mut self) -> usize {
        let mut live = vec![false; self.g.node_bound()];
        let mut stack: Vec<NodeIndex> = self.outputs.iter().map(|&(_, n)| n).collect();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut live[n.index()], true) {
                stack.extend(self.g.neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<NodeIndex> = self.g.node_indices().filter(|n| !live[n.index()]).collect();
        for &n in &dead {
            self.g.remove_node(n);
        }
        dead.len()
    }
}
