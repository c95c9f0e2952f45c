//! The rewrite rules of the rate pass, each named and tagged.
//!
//! Time sums are n-ary, so the rules that look inside them are custom
//! searchers/appliers: each rule looks at the e-nodes of one head in an
//! e-class and returns new e-nodes equal to it. `bptt` mode runs the exact
//! rules; `rate` mode adds `decorrelate`, the one approximation.

use super::lang::{Head, RGraph, RNode};
use crate::ir::Op;
use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Tag {
    Exact,
    Approximate,
}

pub struct RuleInfo {
    pub name: &'static str,
    pub tag: Tag,
    pub identity: &'static str,
    /// Which e-nodes the rule looks at.
    want: fn(&RNode) -> bool,
    /// New e-classes equal to the given e-node's class.
    apply: fn(&mut RGraph, &RNode) -> Vec<Id>,
}

fn is_tsum(n: &RNode) -> bool {
    n.head == Head::TSum
}
fn is_time(n: &RNode) -> bool {
    matches!(n.head, Head::TSum | Head::TMean)
}
fn is_mul(n: &RNode) -> bool {
    matches!(n.as_op(), Some(Op::Mul))
}
fn is_scale(n: &RNode) -> bool {
    matches!(n.as_op(), Some(Op::Scale(_)))
}
fn is_maxpool_grad(n: &RNode) -> bool {
    matches!(n.as_op(), Some(Op::MaxPoolGrad { .. }))
}

pub const RULES: &[RuleInfo] = &[
    RuleInfo {
        name: "unroll-recurrence",
        tag: Tag::Exact,
        identity: "Σ_t x_t = Σ_t ρ_t·a_t when x_t = a_t + K_t·x_{t+1} (x_T = a_T), ρ_1 = 1, ρ_{t+1} = 1 + K_t·ρ_t; for LIF, K_t = λ·k_t by reset variant",
        want: is_tsum,
        apply: unroll_recurrence,
    },
    RuleInfo {
        name: "linear-hoist",
        tag: Tag::Exact,
        identity: "Σ_t L(d_t) = L(Σ_t d_t) for L linear in d_t with its other operands the same at every step (matmul, conv and pool gradients, channel sums and scales, reshape, sums); Σ_t c = T·c",
        want: is_time,
        apply: linear_hoist,
    },
    RuleInfo {
        name: "maxpool-mask",
        tag: Tag::Exact,
        identity: "maxpool_grad(x, δ) = k²·(mask(x) · avgpool_grad(δ)) for non-overlapping windows (stride = kernel)",
        want: is_maxpool_grad,
        apply: maxpool_mask,
    },
    RuleInfo {
        name: "mul-comm",
        tag: Tag::Exact,
        identity: "a·b = b·a",
        want: is_mul,
        apply: mul_comm,
    },
    RuleInfo {
        name: "mul-assoc",
        tag: Tag::Exact,
        identity: "a·(b·c) = (a·b)·c",
        want: is_mul,
        apply: mul_assoc,
    },
    RuleInfo {
        name: "scale-mul",
        tag: Tag::Exact,
        identity: "k·(a·b) = (k·a)·b, moving the constant onto the forward factor a (one direction, so rewriting terminates)",
        want: is_scale,
        apply: scale_mul,
    },
    RuleInfo {
        name: "scale-fold",
        tag: Tag::Exact,
        identity: "a·(b·x) = (a·b)·x; 1·x = x",
        want: is_scale,
        apply: scale_fold,
    },
    RuleInfo {
        name: "decorrelate",
        tag: Tag::Approximate,
        identity: "Σ_t p_t·q_t ≈ (1/T)·(Σ_t p_t)·(Σ_t q_t) = mean_t(p_t)·Σ_t q_t for p forward-only and q carrying the gradient; also for the bilinear weight-gradient products (matmul, conv weight gradient)",
        want: is_tsum,
        apply: decorrelate,
    },
];

/// A rule as egg sees it: searcher and applier over one `RuleInfo`.
#[derive(Clone, Copy)]
struct NodeRule {
    want: fn(&RNode) -> bool,
    apply: fn(&mut RGraph, &RNode) -> Vec<Id>,
}

impl Searcher<RNode, super::lang::RegionAnalysis> for NodeRule {
    fn search_eclass_with_limit(
        &self,
        egraph: &RGraph,
        eclass: Id,
        _limit: usize,
    ) -> Option<SearchMatches<'_, RNode>> {
        egraph[eclass]
            .nodes
            .iter()
            .any(|n| (self.want)(n))
            .then(|| SearchMatches {
                eclass,
                substs: vec![Subst::default()],
                ast: None,
            })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<RNode, super::lang::RegionAnalysis> for NodeRule {
    fn apply_one(
        &self,
        egraph: &mut RGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<RNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let eclass = egraph.find(eclass);
        let nodes: Vec<RNode> = egraph[eclass]
            .nodes
            .iter()
            .filter(|n| (self.want)(n))
            .cloned()
            .collect();
        let mut changed = Vec::new();
        for n in nodes {
            for id in (self.apply)(egraph, &n) {
                if egraph.union(eclass, id) {
                    changed.push(id);
                }
            }
        }
        changed
    }
}

/// The rules for a mode: the exact ones, plus `decorrelate` when
/// approximate rules are allowed.
pub fn rewrites(approximate: bool) -> Vec<Rewrite<RNode, super::lang::RegionAnalysis>> {
    RULES
        .iter()
        .filter(|r| approximate || r.tag == Tag::Exact)
        .map(|r| {
            let rule = NodeRule {
                want: r.want,
                apply: r.apply,
            };
            Rewrite::new(r.name, rule, rule).expect("rules bind no variables")
        })
        .collect()
}

fn add_op(eg: &mut RGraph, op: Op, kids: Vec<Id>) -> Id {
    eg.add(RNode::op(op, kids))
}

fn canon(eg: &RGraph, n: &RNode) -> Vec<Id> {
    n.children.iter().map(|&c| eg.find(c)).collect()
}

// ---------------------------------------------------------------- algebra

fn mul_comm(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let k = canon(eg, n);
    vec![add_op(eg, Op::Mul, vec![k[1], k[0]])]
}

fn mul_assoc(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let k = canon(eg, n);
    let muls = |eg: &RGraph, c: Id| -> Vec<Vec<Id>> {
        eg[c]
            .nodes
            .iter()
            .filter(|m| matches!(m.as_op(), Some(Op::Mul)))
            .map(|m| m.children.clone())
            .collect()
    };
    let mut out = Vec::new();
    // a·(b·c) → (a·b)·c
    for bc in muls(eg, k[1]) {
        let ab = add_op(eg, Op::Mul, vec![k[0], bc[0]]);
        out.push(add_op(eg, Op::Mul, vec![ab, bc[1]]));
    }
    // (a·b)·c → a·(b·c)
    for ab in muls(eg, k[0]) {
        let bc = add_op(eg, Op::Mul, vec![ab[1], k[1]]);
        out.push(add_op(eg, Op::Mul, vec![ab[0], bc]));
    }
    out
}

fn scale_mul(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let Some(Op::Scale(c)) = n.as_op() else {
        return vec![];
    };
    let c = *c;
    let x = eg.find(n.children[0]);
    let muls: Vec<Vec<Id>> = eg[x]
        .nodes
        .iter()
        .filter(|m| matches!(m.as_op(), Some(Op::Mul)))
        .map(|m| m.children.clone())
        .collect();
    let mut out = Vec::new();
    for ab in muls {
        for (f, g) in [(ab[0], ab[1]), (ab[1], ab[0])] {
            // Only a per-step forward factor (a σ'_t meeting its ρ_t) is
            // worth it; a narrower rule keeps rewriting finite.
            if eg[f].data.fwd_only && eg[f].data.per_step && !eg[g].data.fwd_only {
                let kf = add_op(eg, Op::Scale(c), vec![f]);
                out.push(add_op(eg, Op::Mul, vec![kf, g]));
            }
        }
    }
    out
}

fn scale_fold(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let Some(Op::Scale(a)) = n.as_op() else {
        return vec![];
    };
    let a = *a;
    let x = eg.find(n.children[0]);
    if a == 1.0 {
        return vec![x];
    }
    let inner: Vec<(f64, Id)> = eg[x]
        .nodes
        .iter()
        .filter_map(|m| match m.as_op() {
            Some(Op::Scale(b)) => Some((*b, m.children[0])),
            _ => None,
        })
        .collect();
    inner
        .into_iter()
        .map(|(b, y)| {
            if a * b == 1.0 {
                eg.find(y)
            } else {
                add_op(eg, Op::Scale(a * b), vec![y])
            }
        })
        .collect()
}

fn maxpool_mask(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let Some(&Op::MaxPoolGrad { kernel, stride }) = n.as_op() else {
        return vec![];
    };
    if kernel != stride {
        return vec![];
    }
    let k = canon(eg, n);
    let x = &eg[k[0]].data.shape;
    let (in_h, in_w) = (x[2], x[3]);
    let mask = add_op(eg, Op::MaxPoolMask { kernel, stride }, vec![k[0]]);
    let up = add_op(
        eg,
        Op::AvgPoolGrad {
            kernel,
            stride,
            in_h,
            in_w,
        },
        vec![k[1]],
    );
    let prod = add_op(eg, Op::Mul, vec![mask, up]);
    vec![add_op(eg, Op::Scale((kernel * kernel) as f64), vec![prod])]
}

// ----------------------------------------------------------- linear-hoist

/// For an op whose result is linear in some operands when the others are
/// fixed: the sets of operand positions that may vary over time.
fn linear_positions(op: &Op, arity: usize) -> Vec<Vec<usize>> {
    match op {
        Op::Scale(_)
        | Op::Reshape { .. }
        | Op::ChannelSum
        | Op::ChannelBroadcast { .. }
        | Op::AvgPoolGrad { .. } => vec![vec![0]],
        Op::Add | Op::Sub | Op::Sum | Op::BiasAdd => vec![(0..arity).collect()],
        Op::Mul
        | Op::MatMul { .. }
        | Op::ChannelScale
        | Op::Conv2dGradInput { .. }
        | Op::Conv2dGradWeight { .. } => {
            vec![vec![0], vec![1]]
        }
        Op::MaxPoolGrad { .. } => vec![vec![1]],
        _ => vec![],
    }
}

fn linear_hoist(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let kids = canon(eg, n);
    let steps = kids.len();
    let mut out = Vec::new();
    // Σ_t c = T·c, mean_t c = c. Not with one step: there the time
    // reduction is kept apart from its child, because the reduction is the
    // accumulator the backward should read.
    if steps > 1 && kids.iter().all(|&k| k == kids[0]) {
        out.push(match n.head {
            Head::TSum => add_op(eg, Op::Scale(steps as f64), vec![kids[0]]),
            _ => kids[0],
        });
        return out;
    }

    let firsts: Vec<RNode> = eg[kids[0]]
        .nodes
        .iter()
        .filter(|m| m.as_op().is_some())
        .cloned()
        .collect();
    for m0 in firsts {
        let op = m0.as_op().expect("filtered").clone();
        let m0k = canon(eg, &m0);
        for vary in linear_positions(&op, m0k.len()) {
            // One e-node per step with the same head whose fixed operands
            // are the same classes as step 0's.
            let mut rows = vec![m0k.clone()];
            for &k in &kids[1..] {
                let found = eg[k].nodes.iter().find(|m| {
                    m.head == m0.head
                        && m.children.len() == m0k.len()
                        && (0..m0k.len())
                            .all(|p| vary.contains(&p) || eg.find(m.children[p]) == m0k[p])
                });
                match found {
                    Some(m) => rows.push(canon(eg, m)),
                    None => break,
                }
            }
            if rows.len() < steps {
                continue;
            }
            // With one step every operand is "the same at every step"; only
            // gradient operands are worth moving into the sum (forward ones
            // become accumulators through decorrelate, as for T > 1).
            if steps == 1 && vary.iter().any(|&p| eg[rows[0][p]].data.fwd_only) {
                continue;
            }
            let mut args = m0k.clone();
            for &p in &vary {
                let col: Vec<Id> = rows.iter().map(|r| r[p]).collect();
                args[p] = eg.add(RNode {
                    head: n.head.clone(),
                    children: col,
                });
            }
            out.push(add_op(eg, op.clone(), args));
        }
    }
    out
}

// ------------------------------------------------------------ decorrelate

/// Ops that are products of their two operands (bilinear).
fn bilinear(op: &Op) -> bool {
    matches!(
        op,
        Op::Mul | Op::MatMul { .. } | Op::ChannelScale | Op::Conv2dGradWeight { .. }
    )
}

/// `q` is a pure gradient factor: no forward per-step factor left in it
/// that should have gone into `p` (so the product splits the way the paper
/// splits it, σ'ρ against δs, not σ' against ρ·δs).
fn pure_gradient(eg: &RGraph, q: Id) -> bool {
    !eg[q].nodes.iter().any(|m| match m.as_op() {
        Some(Op::Scale(_)) => true,
        Some(Op::Mul) => m
            .children
            .iter()
            .any(|&c| eg[c].data.fwd_only && eg[c].data.per_step),
        _ => false,
    })
}

fn decorrelate(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let kids = canon(eg, n);
    let mut out = Vec::new();
    let heads: Vec<Head> = {
        let mut hs: Vec<Head> = eg[kids[0]]
            .nodes
            .iter()
            .filter(|m| m.as_op().is_some_and(bilinear))
            .map(|m| m.head.clone())
            .collect();
        hs.sort();
        hs.dedup();
        hs
    };
    for head in heads {
        for p_pos in [0usize, 1] {
            let mut ps = Vec::new();
            let mut qs = Vec::new();
            for &k in &kids {
                let found = eg[k].nodes.iter().find(|m| {
                    m.head == head && {
                        let (p, q) = (m.children[p_pos], m.children[1 - p_pos]);
                        eg[p].data.fwd_only
                            && eg[p].data.per_step
                            && !eg[q].data.fwd_only
                            && pure_gradient(eg, q)
                    }
                });
                match found {
                    Some(m) => {
                        ps.push(eg.find(m.children[p_pos]));
                        qs.push(eg.find(m.children[1 - p_pos]));
                    }
                    None => break,
                }
            }
            // All steps must split, with a forward factor that varies over
            // time: one that does not is linear-hoist's (exact) business.
            // (With one step the rule is exact, and still moves the forward
            // factor into an accumulator.)
            if qs.len() < kids.len() {
                continue;
            }
            let mean_p = eg.add(RNode::tmean(ps));
            let sum_q = eg.add(RNode::tsum(qs));
            let mut args = vec![mean_p, sum_q];
            if p_pos == 1 {
                args.swap(0, 1);
            }
            let Head::Op(k) = &head else { unreachable!() };
            out.push(add_op(eg, k.op.clone(), args));
        }
    }
    out
}

// ------------------------------------------------------ unroll-recurrence

/// A coefficient of the recurrence variable.
#[derive(Clone, Debug)]
enum Coef {
    Zero,
    Scalar(f64),
    /// An e-class holding a forward-only tensor.
    Tensor(Id),
}

/// `expr = coef·var + rest` (`rest` None means zero).
#[derive(Clone, Debug)]
struct Lin {
    coef: Coef,
    rest: Option<Id>,
}

fn coef_add(eg: &mut RGraph, a: Coef, b: Coef) -> Coef {
    match (a, b) {
        (Coef::Zero, x) | (x, Coef::Zero) => x,
        (Coef::Scalar(x), Coef::Scalar(y)) => Coef::Scalar(x + y),
        (Coef::Tensor(t), Coef::Scalar(s)) | (Coef::Scalar(s), Coef::Tensor(t)) => {
            Coef::Tensor(add_op(eg, Op::AddScalar(s), vec![t]))
        }
        (Coef::Tensor(a), Coef::Tensor(b)) => Coef::Tensor(add_op(eg, Op::Add, vec![a, b])),
    }
}

fn coef_scale(eg: &mut RGraph, k: f64, a: Coef) -> Coef {
    match a {
        Coef::Zero => Coef::Zero,
        Coef::Scalar(x) => Coef::Scalar(k * x),
        Coef::Tensor(t) if k == 1.0 => Coef::Tensor(t),
        Coef::Tensor(t) => Coef::Tensor(add_op(eg, Op::Scale(k), vec![t])),
    }
}

/// `side ⊙ coef` for a forward-only tensor `side`.
fn coef_mul(eg: &mut RGraph, side: Id, a: Coef) -> Coef {
    match a {
        Coef::Zero => Coef::Zero,
        Coef::Scalar(1.0) => Coef::Tensor(side),
        Coef::Scalar(x) => Coef::Tensor(add_op(eg, Op::Scale(x), vec![side])),
        Coef::Tensor(t) => Coef::Tensor(add_op(eg, Op::Mul, vec![side, t])),
    }
}

/// Decomposes class `c` as `coef·var + rest`, reading the region's original
/// e-nodes (an acyclic DAG); None if `c` is not affine in `var` with a
/// forward-computable coefficient.
fn lin(
    eg: &mut RGraph,
    orig: &HashMap<Id, RNode>,
    c: Id,
    var: Id,
    memo: &mut HashMap<Id, Option<Lin>>,
) -> Option<Lin> {
    let c = eg.find(c);
    if c == eg.find(var) {
        return Some(Lin {
            coef: Coef::Scalar(1.0),
            rest: None,
        });
    }
    if let Some(l) = memo.get(&c) {
        return l.clone();
    }
    // After unions an original node can reach its own class again: such a
    // cycle is not a recurrence this rule can read.
    memo.insert(c, None);
    let constant = Some(Lin {
        coef: Coef::Zero,
        rest: Some(c),
    });
    let result = match orig
        .iter()
        .find(|(id, _)| eg.find(**id) == c)
        .map(|(_, n)| n.clone())
    {
        None => constant,
        Some(node) => {
            let mut parts = Vec::new();
            for &k in &node.children {
                parts.push(lin(eg, orig, k, var, memo));
            }
            let depends = |l: &Option<Lin>| {
                !matches!(
                    l,
                    Some(Lin {
                        coef: Coef::Zero,
                        ..
                    })
                )
            };
            if !parts.iter().any(depends) {
                constant
            } else if parts.iter().any(|p| p.is_none()) {
                None
            } else {
                let parts: Vec<Lin> = parts.into_iter().map(|p| p.expect("checked")).collect();
                match node.as_op() {
                    Some(Op::Add | Op::Sum) => {
                        // The rest stays one n-ary sum, the form in which
                        // the region's incoming gradients are summed.
                        let mut coef = Coef::Zero;
                        let mut rests = Vec::new();
                        for p in parts {
                            coef = coef_add(eg, coef, p.coef);
                            rests.extend(p.rest);
                        }
                        let rest = match rests.len() {
                            0 => None,
                            1 => Some(rests[0]),
                            _ => Some(add_op(eg, Op::Sum, rests)),
                        };
                        Some(Lin { coef, rest })
                    }
                    Some(Op::Sub) => {
                        let neg = coef_scale(eg, -1.0, parts[1].coef.clone());
                        let coef = coef_add(eg, parts[0].coef.clone(), neg);
                        let rest = match (parts[0].rest, parts[1].rest) {
                            (a, None) => a,
                            (None, Some(b)) => Some(add_op(eg, Op::Scale(-1.0), vec![b])),
                            (Some(a), Some(b)) => Some(add_op(eg, Op::Sub, vec![a, b])),
                        };
                        Some(Lin { coef, rest })
                    }
                    Some(Op::Scale(k)) => {
                        let k = *k;
                        let coef = coef_scale(eg, k, parts[0].coef.clone());
                        let rest = parts[0].rest.map(|r| add_op(eg, Op::Scale(k), vec![r]));
                        Some(Lin { coef, rest })
                    }
                    Some(Op::Mul) => {
                        // Exactly one side depends on var; the other must be
                        // forward-computable to be a recurrence coefficient.
                        let (side, other) = if depends(&Some(parts[0].clone())) {
                            (1, 0)
                        } else {
                            (0, 1)
                        };
                        let side_id = eg.find(node.children[side]);
                        if depends(&Some(parts[side].clone())) || !eg[side_id].data.fwd_only {
                            None
                        } else {
                            let coef = coef_mul(eg, side_id, parts[other].coef.clone());
                            let rest = parts[other]
                                .rest
                                .map(|r| add_op(eg, Op::Mul, vec![side_id, r]));
                            Some(Lin { coef, rest })
                        }
                    }
                    _ => None,
                }
            }
        }
    };
    memo.insert(c, result.clone());
    result
}

fn unroll_recurrence(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let kids = canon(eg, n);
    let steps = kids.len();
    if steps < 2 {
        return vec![];
    }
    let orig = eg.analysis.originals.clone();
    let mut terms = Vec::with_capacity(steps);
    let mut ks = Vec::with_capacity(steps);
    for t in 0..steps - 1 {
        let mut memo = HashMap::new();
        match lin(eg, &orig, kids[t], kids[t + 1], &mut memo) {
            Some(Lin {
                coef,
                rest: Some(a),
            }) if !matches!(coef, Coef::Zero) => {
                terms.push(a);
                ks.push(coef);
            }
            _ => return vec![],
        }
    }
    terms.push(kids[steps - 1]);
    // ρ_0 = 1, ρ_{t+1} = 1 + K_t·ρ_t.
    let mut rho = Coef::Scalar(1.0);
    let mut children = Vec::with_capacity(steps);
    for (t, &a) in terms.iter().enumerate() {
        children.push(match &rho {
            Coef::Scalar(r) if *r == 1.0 => a,
            Coef::Scalar(r) => add_op(eg, Op::Scale(*r), vec![a]),
            Coef::Tensor(r) => add_op(eg, Op::Mul, vec![*r, a]),
            Coef::Zero => unreachable!("ρ ≥ 1"),
        });
        if t + 1 < steps {
            rho = match (ks[t].clone(), rho) {
                (Coef::Scalar(k), Coef::Scalar(r)) => Coef::Scalar(1.0 + k * r),
                (Coef::Tensor(k), Coef::Scalar(r)) => {
                    let kr = coef_scale(eg, r, Coef::Tensor(k));
                    coef_add(eg, kr, Coef::Scalar(1.0))
                }
                (Coef::Scalar(k), Coef::Tensor(r)) => {
                    let kr = coef_scale(eg, k, Coef::Tensor(r));
                    coef_add(eg, kr, Coef::Scalar(1.0))
                }
                (Coef::Tensor(k), Coef::Tensor(r)) => {
                    let kr = coef_mul(eg, k, Coef::Tensor(r));
                    coef_add(eg, kr, Coef::Scalar(1.0))
                }
                (Coef::Zero, _) | (_, Coef::Zero) => unreachable!("K ≠ 0, ρ ≥ 1"),
            };
        }
    }
    vec![eg.add(RNode::tsum(children))]
}
