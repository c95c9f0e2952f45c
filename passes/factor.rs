//! Per-channel scales factored out of channel sums.
//!
//! Autodiff of batch norm's `channel_scale(x̂, γ)` hands the normalisation's
//! backward `d = channel_scale(g, γ)`, and that backward sums `d` and `d·x̂`
//! per channel. Both sums only scale by γ what the γ and β gradients
//! already sum (`Σ g·x̂`, `Σ g`), yet each is its own pass over full-size
//! tensors, and `d` itself must be stored for them. Per channel
//! `Σ γ·x = γ·Σ x`, so
//!
//! - `channel_sum(channel_scale(x, s))` becomes `mul(s, channel_sum(x))`;
//! - `channel_sum(mul(channel_scale(x, s), y))` becomes
//!   `mul(s, channel_sum(mul(x, y)))`,
//!
//! reusing an existing `mul(x, y)` and `channel_sum` of it when the graph
//! has them. Then `d` has only elementwise users left and fuses into the
//! kernel that computes the input gradient: two reductions and one stored
//! full-size tensor fewer per batch norm. Exact in real arithmetic; in
//! floating point `γ·Σx` and `Σ γ·x` differ by the sum's rounding.

use super::{Pass, PassError, Program};
use crate::ir::{Graph, NodeIndex, Op, Role};

/// The pass: [`factor_channel_scales`].
pub struct FactorScales;

impl Pass for FactorScales {
    fn name(&self) -> &'static str {
        "factor-scales"
    }
    fn about(&self) -> &'static str {
        "per-channel scales moved out of channel sums: no stored scaled tensor, no repeated sum"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        factor_channel_scales(&mut p.graph);
        Ok(())
    }
}

/// A channel sum of a scaled value: the sum node, the scale's operands
/// `(x, s)`, and for the product form the mul and its other factor `y`.
struct Match {
    sum: NodeIndex,
    x: NodeIndex,
    s: NodeIndex,
    product: Option<(NodeIndex, NodeIndex)>,
}

/// `(x, s)` when `n` is `channel_scale(x, s)`.
fn scaled(g: &Graph, n: NodeIndex) -> Option<(NodeIndex, NodeIndex)> {
    (g.g[n].op == Op::ChannelScale).then(|| {
        let ops = g.operands(n);
        (ops[0], ops[1])
    })
}

/// The match at channel sum `sum`, if its operand is scaled.
fn match_at(g: &Graph, sum: NodeIndex) -> Option<Match> {
    if g.g[sum].op != Op::ChannelSum {
        return None;
    }
    let a = g.operands(sum)[0];
    if let Some((x, s)) = scaled(g, a) {
        return Some(Match {
            sum,
            x,
            s,
            product: None,
        });
    }
    if g.g[a].op != Op::Mul {
        return None;
    }
    let ops = g.operands(a);
    // Either factor may be the scaled one.
    [(ops[0], ops[1]), (ops[1], ops[0])]
        .into_iter()
        .find_map(|(p, y)| {
            let (x, s) = scaled(g, p)?;
            (g.g[y].shape == g.g[x].shape).then_some(Match {
                sum,
                x,
                s,
                product: Some((a, y)),
            })
        })
}

/// An existing node with op `op` and operands `ops` (for `mul`, in either
/// order) at `like`'s step, else a new one there. (A node of another step
/// would make the step's users read across steps.)
fn reuse_or_add(
    g: &mut Graph,
    op: Op,
    ops: &[NodeIndex],
    like: NodeIndex,
    role: Role,
) -> NodeIndex {
    let commutes = op == Op::Mul;
    let t = g.g[like].t;
    let found = g.users(ops[0]).into_iter().find(|&u| {
        if g.g[u].op != op || g.g[u].t != t {
            return false;
        }
        let have = g.operands(u);
        have == ops || (commutes && have.len() == 2 && have[0] == ops[1] && have[1] == ops[0])
    });
    if let Some(n) = found {
        return n;
    }
    let layer = g.g[like].layer;
    g.add_op("factor-scales", op, layer, t, role, ops)
}

/// Rewrites every channel sum of a channel-scaled value (see the module
/// doc) until none is left; returns how many were rewritten.
pub fn factor_channel_scales(g: &mut Graph) -> usize {
    let mut count = 0;
    // Every channel sum in topological order, each new inner sum right
    // after the one it came from (a scale of a scale leaves one more).
    let mut work: Vec<NodeIndex> = g
        .topo_order()
        .expect("a verified graph is acyclic")
        .into_iter()
        .rev()
        .filter(|&n| g.g[n].op == Op::ChannelSum)
        .collect();
    while let Some(sum) = work.pop() {
        if !g.g.contains_node(sum) {
            continue;
        }
        let Some(m) = match_at(g, sum) else { continue };
        let summed = match m.product {
            None => m.x,
            Some((mul, y)) => {
                let role = g.g[mul].role;
                reuse_or_add(g, Op::Mul, &[m.x, y], mul, role)
            }
        };
        let inner = reuse_or_add(g, Op::ChannelSum, &[summed], m.sum, Role::Backward);
        let role = g.g[m.sum].role;
        let out = g.add_op(
            "factor-scales",
            Op::Mul,
            g.g[m.sum].layer,
            g.g[m.sum].t,
            role,
            &[m.s, inner],
        );
        let dropped = g.operands(m.sum)[0];
        super::schedule::redirect(g, m.sum, out);
        remove_if_dead(g, dropped);
        work.push(inner);
        count += 1;
    }
    if count > 0 {
        g.ad = None;
    }
    count
}

/// Removes `n` and then its operands while nothing reads them and they
/// are not outputs or leaves.
fn remove_if_dead(g: &mut Graph, n: NodeIndex) {
    let mut stack = vec![n];
    while let Some(v) = stack.pop() {
        let dead = g.g.contains_node(v)
            && !g.g[v].op.is_leaf()
            && g.users(v).is_empty()
            && !g.outputs.iter().any(|&(_, o)| o == v);
        if dead {
            stack.extend(g.operands(v));
            g.g.remove_node(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{self, RunOptions};
    use crate::tensor::Tensor;
    use std::collections::HashMap;

    /// `channel_sum(channel_scale(x, s))` and `channel_sum(mul(y,
    /// channel_scale(x, s)))` (the scaled factor second) beside an existing
    /// `channel_sum(mul(x, y))`: both sums become `mul(s, …)`, the second
    /// one reusing the existing product and its sum, the scaled tensor and
    /// the old product are gone, and the outputs keep their values.
    #[test]
    fn scales_leave_channel_sums_and_reuse_existing_sums() {
        let mut g = Graph::new("factor", 1, 2);
        g.layers.push(crate::ir::LayerInfo {
            path: "0".into(),
            keyword: "batchnorm".into(),
        });
        let input = |name: &str| Op::Input { name: name.into() };
        let x = g.add_leaf(input("x"), &[2, 3, 4], Role::Input);
        let y = g.add_leaf(input("y"), &[2, 3, 4], Role::Input);
        let s = g.add_leaf(Op::Param { name: "s".into() }, &[3], Role::Param);
        let add = |g: &mut Graph, op: &Op, args: &[NodeIndex]| {
            g.add_op("test", op.clone(), Some(0), None, Role::Backward, args)
        };
        let xy = add(&mut g, &Op::Mul, &[x, y]);
        let gamma = add(&mut g, &Op::ChannelSum, &[xy]);
        let d = add(&mut g, &Op::ChannelScale, &[x, s]);
        let sum_d = add(&mut g, &Op::ChannelSum, &[d]);
        let yd = add(&mut g, &Op::Mul, &[y, d]);
        let sum_yd = add(&mut g, &Op::ChannelSum, &[yd]);
        for (name, n) in [("gamma", gamma), ("d", sum_d), ("yd", sum_yd)] {
            g.outputs.push((name.into(), n));
        }
        crate::ir::verify(&g).unwrap();
        let before = g.clone();

        assert_eq!(factor_channel_scales(&mut g), 2);
        crate::ir::verify(&g).unwrap();
        let count = |op: &Op| g.g.node_weights().filter(|n| n.op == *op).count();
        // One product (x·y), the sums of x and of x·y, two scalings by s.
        assert_eq!(count(&Op::Mul), 3);
        assert_eq!(count(&Op::ChannelSum), 2);
        assert_eq!(count(&Op::ChannelScale), 0);
        assert_eq!(g.output("gamma"), Some(gamma));
        assert_eq!(g.operands(g.output("yd").unwrap()), vec![s, gamma]);

        let mut rng = 0x2545_f491_u64;
        let mut random = |shape: &[usize]| {
            let n = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect();
            Tensor::from_vec(shape, data)
        };
        let inputs = HashMap::from([
            ("x".to_string(), random(&[2, 3, 4])),
            ("y".to_string(), random(&[2, 3, 4])),
        ]);
        let params = HashMap::from([("s".to_string(), random(&[3]))]);
        let opts = RunOptions::seeded(1);
        let v0 = interp::run(&before, &inputs, &params, &opts).unwrap();
        let v1 = interp::run(&g, &inputs, &params, &opts).unwrap();
        for (name, n) in &before.outputs {
            let (a, b) = (
                v0.get(*n).unwrap(),
                v1.get(g.output(name).unwrap()).unwrap(),
            );
            for (p, q) in a.data.iter().zip(&b.data) {
                // Sums of 8 terms of magnitude ≤ 1/8: the rounding of a
                // handful of f64 additions.
                assert!((p - q).abs() <= 1e-14, "{name}: {p} vs {q}");
            }
        }
    }
}
