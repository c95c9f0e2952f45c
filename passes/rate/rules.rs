//! The rewrite rules of the rate pass, each named and tagged.
//!
//! The algebraic rules are egg patterns (`rewrite!`): `mul-comm`,
//! `mul-assoc`, `scale-mul`, `scale-fold`, `scale-one`. A scale's constant is
//! an operand (`(scale k x)`, `lang::Head::Scale`), so patterns bind it like
//! any other; the analysis folds a scale of constants into one constant.
//!
//! The rules that look inside a time sum are custom searchers/appliers
//! (`NodeRule`): `tsum`/`tmean` have one child per step, T of them, and an
//! egg pattern has a fixed arity and binds each child by position, so no
//! pattern can say "every step's child has this form" for every T.
//! `maxpool-mask` is custom as well, for another reason: its right-hand
//! side's attributes come from the matched op's attributes and the input's
//! shape, and a pattern can neither bind an attribute nor compute one.
//!
//! `bptt` mode runs the exact rules; `rate` mode adds `decorrelate`, the
//! one approximation.

use super::lang::{self, Head, Leaf, RGraph, RNode, RatesLeaf, RegionAnalysis};
use crate::ir::{MaxPoolRule, Op};
use egg::{rewrite, Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Tag {
    Exact,
    Approximate,
}

type Rule = Rewrite<RNode, RegionAnalysis>;

pub struct RuleInfo {
    pub name: &'static str,
    pub tag: Tag,
    pub identity: &'static str,
    /// The rule egg runs, under the given name.
    rule: fn(&'static str) -> Rule,
}

pub const RULES: &[RuleInfo] = &[
    RuleInfo {
        name: "unroll-recurrence",
        tag: Tag::Exact,
        identity: "Σ_t x_t = Σ_t ρ_t·a_t when x_t = a_t + K_t·x_{t+1} (x_T = a_T), ρ_1 = 1, ρ_{t+1} = 1 + K_t·ρ_t; for LIF, K_t = λ·k_t by reset variant",
        rule: |name| NodeRule::over_time(name, unroll_recurrence),
    },
    RuleInfo {
        name: "linear-hoist",
        tag: Tag::Exact,
        identity: "Σ_t L(d_t) = L(Σ_t d_t) for L linear in d_t with its other operands the same at every step (matmul, conv and pool gradients, channel sums and scales, reshape, sums); Σ_t c = T·c",
        rule: |name| NodeRule::over_time(name, linear_hoist),
    },
    RuleInfo {
        name: "maxpool-mask",
        tag: Tag::Exact,
        identity: "maxpool_grad(x, δ) = k²·(mask(x) · avgpool_grad(δ)) for windows that do not overlap (stride ≥ kernel, any padding); mask(x) is 1 at each window's first maximum",
        rule: |name| NodeRule::rewrite(name, is_maxpool_grad, maxpool_mask),
    },
    RuleInfo {
        name: "maxpool-route",
        tag: Tag::Exact,
        identity: "maxpool_grad(x, δ) = route(select(x), δ) for overlapping windows (stride < kernel): select(x) is one-hot at each window's first maximum, route adds select·δ at each window's offsets; route is bilinear, so decorrelate averages the selections over time",
        rule: |name| NodeRule::rewrite(name, is_maxpool_grad, maxpool_route),
    },
    RuleInfo {
        name: "mul-comm",
        tag: Tag::Exact,
        identity: "a·b = b·a",
        rule: |name| rewrite!(name; "(mul ?a ?b)" => "(mul ?b ?a)"),
    },
    RuleInfo {
        name: "mul-assoc",
        tag: Tag::Exact,
        // One direction: with mul-comm it reaches the other,
        // (a·b)·c = c·(a·b) → (c·a)·b = b·(c·a) → (b·c)·a = a·(b·c).
        identity: "a·(b·c) = (a·b)·c",
        rule: |name| rewrite!(name; "(mul ?a (mul ?b ?c))" => "(mul (mul ?a ?b) ?c)"),
    },
    RuleInfo {
        name: "scale-mul",
        tag: Tag::Exact,
        identity: "k·(a·b) = (k·a)·b, moving the constant onto the forward factor a (one direction, so rewriting terminates)",
        // Only a per-step forward factor (a σ'_t meeting its ρ_t) is worth
        // it; the narrower rule keeps rewriting finite. The factor may be
        // either operand: mul-comm puts each in first place.
        rule: |name| {
            rewrite!(name; "(scale ?k (mul ?a ?b))" => "(mul (scale ?k ?a) ?b)"
                if forward_step_times_gradient("?a", "?b"))
        },
    },
    RuleInfo {
        name: "scale-fold",
        tag: Tag::Exact,
        // `(scale ?a ?b)` of two constants is folded by the analysis.
        identity: "a·(b·x) = (a·b)·x",
        rule: |name| rewrite!(name; "(scale ?a (scale ?b ?x))" => "(scale (scale ?a ?b) ?x)"),
    },
    RuleInfo {
        name: "scale-one",
        tag: Tag::Exact,
        identity: "1·x = x",
        rule: |name| rewrite!(name; "(scale 1 ?x)" => "?x"),
    },
    RuleInfo {
        name: "decorrelate",
        tag: Tag::Approximate,
        identity: "Σ_t p_t·q_t ≈ (1/T)·(Σ_t p_t)·(Σ_t q_t) = mean_t(p_t)·Σ_t q_t for p forward-only and q carrying the gradient; also for the bilinear weight-gradient products (matmul, conv weight gradient)",
        rule: |name| NodeRule::over_time(name, decorrelate),
    },
    RuleInfo {
        name: "maxpool-rates",
        tag: Tag::Approximate,
        identity: "for a max-pool written `rate_rule=rates` (the official code's rule: the layer pools the time-averaged rates): Σ_t maxpool_grad(x_t, δ_t) ≈ maxpool_grad(mean_t x_t, Σ_t δ_t), and every step's output, as the backward reads it, ≈ maxpool(mean_t x_t) (so the layers above see the max of the rates)",
        rule: |name| NodeRule::rewrite(name, is_time_or_fwd_leaf, maxpool_rates),
    },
];

/// The rules for a mode: the exact ones, plus `decorrelate` when
/// approximate rules are allowed.
pub fn rewrites(approximate: bool) -> Vec<Rule> {
    RULES
        .iter()
        .filter(|r| approximate || r.tag == Tag::Exact)
        .map(|r| (r.rule)(r.name))
        .collect()
}

/// `?a` is a per-step forward value and `?b` carries the gradient.
fn forward_step_times_gradient(a: &str, b: &str) -> impl Fn(&mut RGraph, Id, &Subst) -> bool {
    let a: Var = a.parse().expect("a pattern variable");
    let b: Var = b.parse().expect("a pattern variable");
    move |eg: &mut RGraph, _: Id, s: &Subst| {
        let (da, db) = (&eg[s[a]].data, &eg[s[b]].data);
        da.fwd_only && da.per_step && !db.fwd_only
    }
}

// ------------------------------------------------------------ custom rules

/// A custom rule over single e-nodes: it matches every e-class holding an
/// e-node `matches` accepts, and `apply` returns new e-classes equal to that
/// e-node. The time reductions (`tsum`, `tmean`) and `maxpool_grad` use it.
#[derive(Clone, Copy)]
struct NodeRule {
    matches: fn(&RNode) -> bool,
    apply: fn(&mut RGraph, &RNode) -> Vec<Id>,
}

impl NodeRule {
    fn rewrite(
        name: &'static str,
        matches: fn(&RNode) -> bool,
        apply: fn(&mut RGraph, &RNode) -> Vec<Id>,
    ) -> Rule {
        let rule = NodeRule { matches, apply };
        Rewrite::new(name, rule, rule).expect("the rule binds no variables")
    }

    /// A rule over the time reductions of an e-class.
    fn over_time(name: &'static str, apply: fn(&mut RGraph, &RNode) -> Vec<Id>) -> Rule {
        NodeRule::rewrite(name, is_time, apply)
    }
}

fn is_time(n: &RNode) -> bool {
    matches!(n.head, Head::TSum | Head::TMean)
}

/// Matches the e-classes holding an e-node `want` accepts.
fn search_nodes<'a>(
    eg: &RGraph,
    eclass: Id,
    want: fn(&RNode) -> bool,
) -> Option<SearchMatches<'a, RNode>> {
    eg[eclass].nodes.iter().any(want).then(|| SearchMatches {
        eclass,
        substs: vec![Subst::default()],
        ast: None,
    })
}

/// Unions the e-class with what `apply` makes of each of its e-nodes that
/// `want` accepts.
fn apply_nodes(
    eg: &mut RGraph,
    eclass: Id,
    want: fn(&RNode) -> bool,
    apply: fn(&mut RGraph, &RNode) -> Vec<Id>,
) -> Vec<Id> {
    let eclass = eg.find(eclass);
    let nodes: Vec<RNode> = eg[eclass]
        .nodes
        .iter()
        .filter(|n| want(n))
        .cloned()
        .collect();
    let mut changed = Vec::new();
    for n in nodes {
        for id in apply(eg, &n) {
            if eg.union(eclass, id) {
                changed.push(id);
            }
        }
    }
    changed
}

impl Searcher<RNode, RegionAnalysis> for NodeRule {
    fn search_eclass_with_limit(
        &self,
        egraph: &RGraph,
        eclass: Id,
        _limit: usize,
    ) -> Option<SearchMatches<'_, RNode>> {
        search_nodes(egraph, eclass, self.matches)
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<RNode, RegionAnalysis> for NodeRule {
    fn apply_one(
        &self,
        egraph: &mut RGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<RNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        apply_nodes(egraph, eclass, self.matches, self.apply)
    }
}

/// `maxpool-mask` (see the module doc for why it is not a pattern).
fn is_maxpool_grad(n: &RNode) -> bool {
    matches!(n.as_op(), Some(Op::MaxPoolGrad { .. }))
}

fn add_op(eg: &mut RGraph, op: Op, kids: Vec<Id>) -> Id {
    lang::add_node(eg, RNode::op(op, kids))
}

fn scale(eg: &mut RGraph, k: f64, x: Id) -> Id {
    add_op(eg, Op::Scale(k), vec![x])
}

fn canon(eg: &RGraph, n: &RNode) -> Vec<Id> {
    n.children.iter().map(|&c| eg.find(c)).collect()
}

/// A `rate_rule=masks` max-pool gradient's window (kernel, stride,
/// padding), operands (x, δ) and input height and width.
struct MasksGrad {
    kernel: usize,
    stride: usize,
    padding: usize,
    x: Id,
    d: Id,
    in_h: usize,
    in_w: usize,
}

fn masks_grad(eg: &RGraph, n: &RNode) -> Option<MasksGrad> {
    let &Op::MaxPoolGrad {
        kernel,
        stride,
        padding,
        rule: MaxPoolRule::Masks,
    } = n.as_op()?
    else {
        return None;
    };
    let k = canon(eg, n);
    let shape = &eg[k[0]].data.shape;
    Some(MasksGrad {
        kernel,
        stride,
        padding,
        x: k[0],
        d: k[1],
        in_h: shape[2],
        in_w: shape[3],
    })
}

fn maxpool_mask(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    // Each input element lies in at most one window.
    let Some(MasksGrad {
        kernel,
        stride,
        padding,
        x,
        d,
        in_h,
        in_w,
    }) = masks_grad(eg, n).filter(|g| g.stride >= g.kernel)
    else {
        return vec![];
    };
    let mask = add_op(
        eg,
        Op::MaxPoolMask {
            kernel,
            stride,
            padding,
        },
        vec![x],
    );
    let up = add_op(
        eg,
        Op::AvgPoolGrad {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
        },
        vec![d],
    );
    let prod = add_op(eg, Op::Mul, vec![mask, up]);
    vec![scale(eg, (kernel * kernel) as f64, prod)]
}

/// `maxpool-route`: overlapping windows, where an element can be the
/// maximum of several windows and no elementwise mask describes the
/// routing.
fn maxpool_route(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let Some(MasksGrad {
        kernel,
        stride,
        padding,
        x,
        d,
        in_h,
        in_w,
    }) = masks_grad(eg, n).filter(|g| g.stride < g.kernel)
    else {
        return vec![];
    };
    let select = add_op(
        eg,
        Op::MaxPoolSelect {
            kernel,
            stride,
            padding,
        },
        vec![x],
    );
    let route = Op::MaxPoolRoute {
        kernel,
        stride,
        padding,
        in_h,
        in_w,
    };
    vec![add_op(eg, route, vec![select, d])]
}

fn is_time_or_fwd_leaf(n: &RNode) -> bool {
    is_time(n) || matches!(n.head, Head::Leaf(Leaf::Fwd, _))
}

/// `maxpool-rates`, on a forward leaf the region builder marked (a step of
/// a `rate_rule=rates` pool, or a reshape of one: its value becomes the
/// pool of the input's rate, the same at every step), or on a time sum
/// whose every step is such a pool's gradient.
fn maxpool_rates(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    if let Head::Leaf(_, leaf) = n.head {
        let Some(r) = eg.analysis.rates.get(&leaf).cloned() else {
            return vec![];
        };
        let fwd = |eg: &mut RGraph, i: u32| lang::add_node(eg, RNode::leaf(Leaf::Fwd, i));
        return match r {
            RatesLeaf::Pool { op, inputs } => {
                let xs = inputs.into_iter().map(|i| fwd(eg, i)).collect();
                let mean = eg.add(RNode::tmean(xs));
                vec![add_op(eg, op, vec![mean])]
            }
            RatesLeaf::View { op, operand } => {
                let x = fwd(eg, operand);
                vec![add_op(eg, op, vec![x])]
            }
        };
    }
    if n.head != Head::TSum {
        return vec![];
    }
    let kids = canon(eg, n);
    let mut op = None;
    let mut xs = Vec::new();
    let mut ds = Vec::new();
    for &k in &kids {
        let found = eg[k].nodes.iter().find(|m| match m.as_op() {
            Some(Op::MaxPoolGrad {
                rule: MaxPoolRule::Rates,
                ..
            }) => {
                let (x, d) = (m.children[0], m.children[1]);
                eg[x].data.fwd_only && !eg[d].data.fwd_only && pure_gradient(eg, d)
            }
            _ => false,
        });
        let Some(m) = found else {
            return vec![];
        };
        let this = m.as_op().cloned();
        if op.is_some() && op != this {
            return vec![];
        }
        op = this;
        xs.push(eg.find(m.children[0]));
        ds.push(eg.find(m.children[1]));
    }
    let Some(op) = op else {
        return vec![];
    };
    let mean_x = eg.add(RNode::tmean(xs));
    let sum_d = eg.add(RNode::tsum(ds));
    vec![add_op(eg, op, vec![mean_x, sum_d])]
}

// ----------------------------------------------------------- linear-hoist

/// For an op whose result is linear in some operands when the others are
/// fixed: the sets of operand positions that may vary over time (the op
/// table's `linear_operands`).
fn linear_positions(head: &Head, arity: usize) -> Vec<Vec<usize>> {
    match head {
        // k·x: the constant is the same at every step.
        Head::Scale => vec![vec![1]],
        Head::Op(k) => k.op.linear_operands(arity),
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
            Head::TSum => scale(eg, steps as f64, kids[0]),
            _ => kids[0],
        });
        return out;
    }

    let firsts: Vec<RNode> = eg[kids[0]]
        .nodes
        .iter()
        .filter(|m| matches!(m.head, Head::Op(_) | Head::Scale))
        .cloned()
        .collect();
    for m0 in firsts {
        let m0k = canon(eg, &m0);
        for vary in linear_positions(&m0.head, m0k.len()) {
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
            out.push(eg.add(RNode {
                head: m0.head.clone(),
                children: args,
            }));
        }
    }
    out
}

// ------------------------------------------------------------ decorrelate

/// `q` is a pure gradient factor: no forward per-step factor left in it
/// that should have gone into `p` (so the product splits the way the paper
/// splits it, σ'ρ against δs, not σ' against ρ·δs).
fn pure_gradient(eg: &RGraph, q: Id) -> bool {
    !eg[q].nodes.iter().any(|m| match m.as_op() {
        _ if m.head == Head::Scale => true,
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
            .filter(|m| m.as_op().is_some_and(Op::is_bilinear))
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
        Coef::Tensor(t) => Coef::Tensor(scale(eg, k, t)),
    }
}

/// `side ⊙ coef` for a forward-only tensor `side`.
fn coef_mul(eg: &mut RGraph, side: Id, a: Coef) -> Coef {
    match a {
        Coef::Zero => Coef::Zero,
        Coef::Scalar(1.0) => Coef::Tensor(side),
        Coef::Scalar(x) => Coef::Tensor(scale(eg, x, side)),
        Coef::Tensor(t) => Coef::Tensor(add_op(eg, Op::Mul, vec![side, t])),
    }
}

/// How an e-class (or one of its e-nodes) reads in the recurrence
/// variable.
#[derive(Clone, Debug)]
enum Form {
    /// Does not reach the variable: `0·var + itself`.
    Const,
    /// `coef·var + rest`, reaching the variable.
    Affine(Lin),
    /// Reaches the variable, but not affinely with a forward-computable
    /// coefficient.
    NotAffine,
    /// Reaches an e-class being decomposed (the e-graph has cycles once
    /// rules have run, e.g. `1·x` in the class of `x`).
    Cycle,
}

/// Decomposes e-class `c` as `coef·var + rest` by matching its e-nodes:
/// the first e-node, in the class's order, that reaches `var` affinely
/// gives the decomposition. A class none of whose e-nodes reaches `var` is
/// a constant; one that reaches it only in other ways is `NotAffine`.
/// Whichever e-node is used, the decomposition is an identity of the
/// class's value.
fn lin(
    eg: &mut RGraph,
    c: Id,
    var: Id,
    memo: &mut HashMap<Id, Form>,
    visiting: &mut HashSet<Id>,
) -> Form {
    let c = eg.find(c);
    if c == eg.find(var) {
        return Form::Affine(Lin {
            coef: Coef::Scalar(1.0),
            rest: None,
        });
    }
    if let Some(f) = memo.get(&c) {
        return f.clone();
    }
    if !visiting.insert(c) {
        return Form::Cycle;
    }
    let mut form = Form::Const;
    let nodes = eg[c].nodes.clone();
    for node in &nodes {
        match lin_node(eg, node, var, memo, visiting) {
            Form::Affine(l) => {
                form = Form::Affine(l);
                break;
            }
            Form::NotAffine => form = Form::NotAffine,
            Form::Const | Form::Cycle => {}
        }
    }
    visiting.remove(&c);
    memo.insert(c, form.clone());
    form
}

/// One e-node's `coef·var + rest`, from its operands'.
fn lin_node(
    eg: &mut RGraph,
    node: &RNode,
    var: Id,
    memo: &mut HashMap<Id, Form>,
    visiting: &mut HashSet<Id>,
) -> Form {
    let mut parts = Vec::with_capacity(node.children.len());
    for &k in &node.children {
        parts.push(lin(eg, k, var, memo, visiting));
    }
    if parts.iter().any(|p| matches!(p, Form::Cycle)) {
        return Form::Cycle;
    }
    if parts.iter().all(|p| matches!(p, Form::Const)) {
        return Form::Const;
    }
    if parts.iter().any(|p| matches!(p, Form::NotAffine)) {
        return Form::NotAffine;
    }
    let parts: Vec<Lin> = node
        .children
        .iter()
        .zip(parts)
        .map(|(&k, p)| match p {
            Form::Affine(l) => l,
            _ => Lin {
                coef: Coef::Zero,
                rest: Some(eg.find(k)),
            },
        })
        .collect();
    let depends = |l: &Lin| !matches!(l.coef, Coef::Zero);
    let lin = match (&node.head, node.as_op()) {
        (_, Some(Op::Add | Op::Sum)) => {
            // The rest stays one n-ary sum, the form in which the region's
            // incoming gradients are summed.
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
        (_, Some(Op::Sub)) => {
            let neg = coef_scale(eg, -1.0, parts[1].coef.clone());
            let coef = coef_add(eg, parts[0].coef.clone(), neg);
            let rest = match (parts[0].rest, parts[1].rest) {
                (a, None) => a,
                (None, Some(b)) => Some(scale(eg, -1.0, b)),
                (Some(a), Some(b)) => Some(add_op(eg, Op::Sub, vec![a, b])),
            };
            Some(Lin { coef, rest })
        }
        (Head::Scale, _) => eg[node.children[0]].data.constant.map(|k| {
            let coef = coef_scale(eg, k, parts[1].coef.clone());
            let rest = parts[1].rest.map(|r| scale(eg, k, r));
            Lin { coef, rest }
        }),
        (_, Some(Op::Mul)) => {
            // Exactly one side depends on var; the other must be
            // forward-computable to be a recurrence coefficient.
            let (side, other) = if depends(&parts[0]) { (1, 0) } else { (0, 1) };
            let side_id = eg.find(node.children[side]);
            if depends(&parts[side]) || !eg[side_id].data.fwd_only {
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
    };
    lin.map_or(Form::NotAffine, Form::Affine)
}

fn unroll_recurrence(eg: &mut RGraph, n: &RNode) -> Vec<Id> {
    let kids = canon(eg, n);
    let steps = kids.len();
    if steps < 2 {
        return vec![];
    }
    let mut terms = Vec::with_capacity(steps);
    let mut ks = Vec::with_capacity(steps);
    for t in 0..steps - 1 {
        let mut memo = HashMap::new();
        match lin(eg, kids[t], kids[t + 1], &mut memo, &mut HashSet::new()) {
            Form::Affine(Lin {
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
            Coef::Scalar(r) => scale(eg, *r, a),
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
