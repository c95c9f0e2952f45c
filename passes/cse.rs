//! Common-subexpression elimination: nodes with the same op and the same
//! operands become one. Across steps this hoists time-invariant work: under
//! direct encoding the first layer's convolution of the (constant) input is
//! the same at every step, so its T copies become one step-free node (and
//! so does whatever elementwise work follows it before the first neuron).

use super::{Pass, PassError, Program};
use crate::ir::{Graph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashMap;

/// The pass: [`cse`].
pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }
    fn about(&self) -> &'static str {
        "merge nodes with equal op and operands; hoist time-invariant work out of the steps"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        cse(&mut p.graph);
        Ok(())
    }
}

/// (op, operands, shape, role, step): nodes with equal keys compute the
/// same value.
type Key = (String, Vec<NodeIndex>, Vec<usize>, String, Option<usize>);

/// Merges duplicates in place; returns how many nodes were removed.
pub fn cse(g: &mut Graph) -> usize {
    let order = g.topo_order().expect("a verified graph is acyclic");
    let mut seen: HashMap<Key, NodeIndex> = HashMap::new();
    let mut removed = 0;
    for n in order {
        let operands = g.operands(n);
        let node = &g.g[n];
        // Leaves are distinct by construction (one input, one parameter per
        // name); a node whose operands are all step-free is step-free too.
        if operands.is_empty() {
            continue;
        }
        let invariant = operands.iter().all(|&a| g.g[a].t.is_none());
        let t = if invariant { None } else { node.t };
        let key = (
            format!("{:?}", node.op),
            operands,
            node.shape.clone(),
            node.role.short().to_string(),
            t,
        );
        match seen.get(&key) {
            Some(&keep) => {
                // Move n's users onto `keep`.
                let users: Vec<(NodeIndex, usize)> =
                    g.g.edges_directed(n, Direction::Outgoing)
                        .map(|e| (e.target(), *e.weight()))
                        .collect();
                for (u, p) in users {
                    g.g.add_edge(keep, u, p);
                }
                for (_, o) in g.outputs.iter_mut() {
                    if *o == n {
                        *o = keep;
                    }
                }
                if let Some(ad) = g.ad.as_mut() {
                    for v in ad.grad_of.values_mut() {
                        if *v == n {
                            *v = keep;
                        }
                    }
                    ad.grad_of.remove(&n);
                    ad.contributions.retain(|&(_, a, c)| a != n && c != n);
                }
                g.g[keep].t = t;
                g.g.remove_node(n);
                removed += 1;
            }
            None => {
                seen.insert(key, n);
            }
        }
    }
    removed
}
