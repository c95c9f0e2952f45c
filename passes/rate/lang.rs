//! The e-graph language of a temporal region and its analysis.
//!
//! A region's backward is written with the IR's own ops (`Op`), plus two
//! n-ary time reductions (`tsum`, `tmean`: one child per step, so
//! associativity never has to be searched) and three kinds of leaf that
//! point back into the graph: a forward value, a per-step gradient coming
//! from the region above, and a graph node that already holds a time sum.

use crate::ir::Op;
use egg::{Analysis, DidMerge, EGraph, FromOp, Id, Language, RecExpr};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Leaf {
    /// A forward (or parameter, or input) graph node, read as is.
    Fwd,
    /// A per-step gradient from the region above (a graph node).
    Bnd,
    /// A graph node that holds the time sum of a family of `Bnd` leaves.
    Summed,
}

/// An op with a precomputed key, so that ops with `f64` attributes can be
/// hashed and ordered (the key is the op's exact debug form).
#[derive(Clone)]
pub struct KeyedOp {
    pub op: Op,
    key: String,
}

impl KeyedOp {
    pub fn new(op: Op) -> KeyedOp {
        let key = format!("{op:?}");
        KeyedOp { op, key }
    }
}

impl PartialEq for KeyedOp {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for KeyedOp {}
impl Hash for KeyedOp {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key.hash(h)
    }
}
impl PartialOrd for KeyedOp {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for KeyedOp {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key.cmp(&o.key)
    }
}
impl fmt::Debug for KeyedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// A scalar constant, compared by its bits (so it can be hashed).
#[derive(Clone, Copy, Debug)]
pub struct Num(pub f64);

impl PartialEq for Num {
    fn eq(&self, o: &Self) -> bool {
        self.0.to_bits() == o.0.to_bits()
    }
}
impl Eq for Num {}
impl Hash for Num {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.to_bits().hash(h)
    }
}
impl PartialOrd for Num {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Num {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// A graph node (its index).
    Leaf(Leaf, u32),
    /// A scalar constant: the factor of a `scale`.
    Num(Num),
    Op(KeyedOp),
    /// `k·x`, children `[k, x]` with `k` a constant's e-class. The IR's
    /// `scale[k](x)` keeps `k` in the op; here it is an operand, so that
    /// rules can bind it with a pattern variable. Terms may still be written
    /// with `Op::Scale` (`RNode::op`); `add_term` lowers them.
    Scale,
    /// Σ over steps: one child per step.
    TSum,
    /// Mean over steps: one child per step.
    TMean,
}

impl Head {
    /// Scale sorts among the ops where `Op::Scale` would (by its key), so
    /// that extraction breaks ties between the forms of an e-class as it
    /// did when the constant was part of the op.
    fn rank(&self) -> (u8, &str, u8) {
        match self {
            Head::Leaf(..) => (0, "", 0),
            Head::Num(_) => (1, "", 0),
            Head::Op(k) => (2, &k.key, 0),
            Head::Scale => (2, "Scale", 1),
            Head::TSum => (3, "", 0),
            Head::TMean => (4, "", 0),
        }
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    fn cmp(&self, o: &Self) -> Ordering {
        self.rank().cmp(&o.rank()).then_with(|| match (self, o) {
            (Head::Leaf(a, m), Head::Leaf(b, n)) => (a, m).cmp(&(b, n)),
            (Head::Num(a), Head::Num(b)) => a.cmp(b),
            _ => Ordering::Equal,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RNode {
    pub head: Head,
    pub children: Vec<Id>,
}

impl RNode {
    pub fn op(op: Op, children: Vec<Id>) -> RNode {
        RNode {
            head: Head::Op(KeyedOp::new(op)),
            children,
        }
    }

    pub fn leaf(kind: Leaf, node: u32) -> RNode {
        RNode {
            head: Head::Leaf(kind, node),
            children: vec![],
        }
    }

    /// A scalar constant.
    pub fn num(c: f64) -> RNode {
        RNode {
            head: Head::Num(Num(c)),
            children: vec![],
        }
    }

    /// `k·x` for the e-class `k` of a constant.
    pub fn scale(k: Id, x: Id) -> RNode {
        RNode {
            head: Head::Scale,
            children: vec![k, x],
        }
    }

    pub fn tsum(children: Vec<Id>) -> RNode {
        RNode {
            head: Head::TSum,
            children,
        }
    }

    pub fn tmean(children: Vec<Id>) -> RNode {
        RNode {
            head: Head::TMean,
            children,
        }
    }

    pub fn as_op(&self) -> Option<&Op> {
        match &self.head {
            Head::Op(k) => Some(&k.op),
            _ => None,
        }
    }
}

/// Adds one e-node, lowering the IR form `scale[k](x)` (`Op::Scale` in an
/// `RNode::op`) to `(scale k x)` with `k` a constant e-class. Every e-node
/// the pass adds itself goes through here.
pub fn add_node(eg: &mut RGraph, n: RNode) -> Id {
    match n.as_op() {
        Some(&Op::Scale(k)) => {
            let k = eg.add(RNode::num(k));
            eg.add(RNode::scale(k, n.children[0]))
        }
        _ => eg.add(n),
    }
}

/// Adds a term (written with `Op::Scale` or with `(scale k x)`) to an
/// e-graph; returns its root's e-class.
pub fn add_term(eg: &mut RGraph, expr: &RecExpr<RNode>) -> Id {
    let mut ids: Vec<Id> = Vec::with_capacity(expr.len());
    for node in expr.as_ref() {
        let n = node.clone().map_children(|c| ids[usize::from(c)]);
        ids.push(add_node(eg, n));
    }
    *ids.last().expect("a term has a root")
}

/// The IR form of a term: `(scale k x)` with `k` a constant becomes
/// `scale[k](x)` again (how extracted terms are printed).
pub fn raise(expr: &RecExpr<RNode>) -> RecExpr<RNode> {
    let nodes = expr.as_ref();
    let mut out = RecExpr::default();
    let mut ids: Vec<Id> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let n = match (&node.head, node.children.as_slice()) {
            (Head::Scale, &[k, x]) => match &nodes[usize::from(k)].head {
                Head::Num(c) => RNode::op(Op::Scale(c.0), vec![ids[usize::from(x)]]),
                _ => node.clone().map_children(|c| ids[usize::from(c)]),
            },
            _ => node.clone().map_children(|c| ids[usize::from(c)]),
        };
        ids.push(out.add(n));
    }
    out
}

/// A term the rate language cannot read (a rule pattern or a test term).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TermError {
    #[error("{op} takes {want} operands, got {got}")]
    Arity { op: String, want: usize, got: usize },
    #[error("unknown term {0:?}")]
    Unknown(String),
}

/// Reads the terms the algebraic rules are written in: `mul`, `add`,
/// `sub`, `sum`, `scale` (a constant and an operand), numbers, `tsum`,
/// `tmean`, and leaves `fwdN`, `bndN`, `summedN`.
impl FromOp for RNode {
    type Error = TermError;

    fn from_op(op: &str, children: Vec<Id>) -> Result<RNode, TermError> {
        let arity = |want: usize| -> Result<(), TermError> {
            if children.len() == want {
                Ok(())
            } else {
                Err(TermError::Arity {
                    op: op.to_string(),
                    want,
                    got: children.len(),
                })
            }
        };
        fn leaf(kind: Leaf, rest: &str) -> Option<RNode> {
            rest.parse::<u32>().ok().map(|n| RNode::leaf(kind, n))
        }
        match op {
            "mul" | "add" | "sub" => {
                arity(2)?;
                let o = match op {
                    "mul" => Op::Mul,
                    "add" => Op::Add,
                    _ => Op::Sub,
                };
                Ok(RNode::op(o, children))
            }
            "sum" => Ok(RNode::op(Op::Sum, children)),
            "scale" => {
                arity(2)?;
                Ok(RNode {
                    head: Head::Scale,
                    children,
                })
            }
            "tsum" => Ok(RNode::tsum(children)),
            "tmean" => Ok(RNode::tmean(children)),
            _ => {
                arity(0)?;
                let parsed = if let Some(r) = op.strip_prefix("summed") {
                    leaf(Leaf::Summed, r)
                } else if let Some(r) = op.strip_prefix("fwd") {
                    leaf(Leaf::Fwd, r)
                } else if let Some(r) = op.strip_prefix("bnd") {
                    leaf(Leaf::Bnd, r)
                } else {
                    op.parse::<f64>().ok().map(RNode::num)
                };
                parsed.ok_or_else(|| TermError::Unknown(op.to_string()))
            }
        }
    }
}

impl Language for RNode {
    type Discriminant = Head;

    fn discriminant(&self) -> Head {
        self.head.clone()
    }

    fn matches(&self, other: &Self) -> bool {
        self.head == other.head && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

impl fmt::Display for RNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.head {
            Head::Leaf(Leaf::Fwd, n) => write!(f, "fwd{n}"),
            Head::Leaf(Leaf::Bnd, n) => write!(f, "bnd{n}"),
            Head::Leaf(Leaf::Summed, n) => write!(f, "summed{n}"),
            Head::Num(c) => write!(f, "{}", c.0),
            Head::Scale => f.write_str("scale"),
            Head::TSum => f.write_str("tsum"),
            Head::TMean => f.write_str("tmean"),
            Head::Op(k) => {
                let a = k.op.attrs();
                if a.is_empty() {
                    f.write_str(k.op.name())
                } else {
                    write!(f, "{}[{}]", k.op.name(), a)
                }
            }
        }
    }
}

/// What the analysis knows of an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    pub shape: Vec<usize>,
    /// Computable from forward values alone (no gradient leaf below).
    pub fwd_only: bool,
    /// Depends on some per-step value (forward or gradient).
    pub per_step: bool,
    /// A parameter leaf: resident anyway, costs nothing to keep.
    pub param: bool,
    /// The value of a constant (a `num`, or a `scale` of constants).
    pub constant: Option<f64>,
}

/// Facts about leaves, supplied by the region builder.
#[derive(Default)]
pub struct RegionAnalysis {
    /// Per graph node: (shape, per-step?, is parameter?).
    pub leaves: std::collections::HashMap<u32, (Vec<usize>, bool, bool)>,
    /// Forward leaves whose value `maxpool-rates` replaces by one computed
    /// from rates: a step of a max pool written `rate_rule=rates`, or a
    /// view (flatten) of one.
    pub rates: std::collections::HashMap<u32, RatesLeaf>,
}

/// A forward leaf under the official code's max-pool rule.
#[derive(Clone, Debug)]
pub enum RatesLeaf {
    /// One step of the pool `op`; `inputs` are the pool's input leaves at
    /// every step.
    Pool { op: Op, inputs: Vec<u32> },
    /// `op` (a reshape) of the leaf `operand`, itself a `RatesLeaf`.
    View { op: Op, operand: u32 },
}

impl Analysis<RNode> for RegionAnalysis {
    type Data = Data;

    fn make(egraph: &mut EGraph<RNode, Self>, enode: &RNode, _id: Id) -> Data {
        let kid = |i: usize| &egraph[enode.children[i]].data;
        match &enode.head {
            Head::Leaf(kind, n) => {
                let (shape, per_step, param) = egraph.analysis.leaves[n].clone();
                Data {
                    shape,
                    fwd_only: *kind == Leaf::Fwd,
                    per_step: per_step && *kind != Leaf::Summed,
                    param,
                    constant: None,
                }
            }
            // A constant is a forward value that costs nothing to keep.
            Head::Num(c) => Data {
                shape: vec![],
                fwd_only: true,
                per_step: false,
                param: true,
                constant: Some(c.0),
            },
            Head::TSum | Head::TMean => Data {
                shape: kid(0).shape.clone(),
                fwd_only: enode.children.iter().all(|&c| egraph[c].data.fwd_only),
                per_step: false,
                param: false,
                constant: None,
            },
            Head::Scale => {
                let (k, x) = (kid(0), kid(1));
                Data {
                    shape: x.shape.clone(),
                    fwd_only: x.fwd_only,
                    per_step: x.per_step,
                    // A scale of constants is a constant (`modify` folds it).
                    param: x.constant.is_some(),
                    constant: k.constant.zip(x.constant).map(|(a, b)| a * b),
                }
            }
            Head::Op(k) if matches!(k.op, Op::Scale(_)) => {
                panic!("rate pass: scale[k](x) enters an e-graph as (scale k x) (lang::add_node)")
            }
            Head::Op(k) => {
                let shapes: Vec<&[usize]> = enode
                    .children
                    .iter()
                    .map(|&c| egraph[c].data.shape.as_slice())
                    .collect();
                let shape =
                    k.op.infer_shape(&shapes)
                        .unwrap_or_else(|e| {
                            panic!("rate pass built an ill-shaped {}: {e}", k.op.name())
                        })
                        .expect("ops in regions are not leaves");
                Data {
                    shape,
                    fwd_only: enode.children.iter().all(|&c| egraph[c].data.fwd_only),
                    per_step: enode.children.iter().any(|&c| egraph[c].data.per_step),
                    param: false,
                    constant: None,
                }
            }
        }
    }

    /// Constant folding: a class known to be a constant holds just that
    /// number (how `scale-fold`'s `(scale (scale a b) x)` multiplies a·b).
    fn modify(egraph: &mut EGraph<RNode, Self>, id: Id) {
        if let Some(c) = egraph[id].data.constant {
            let n = egraph.add(RNode::num(c));
            egraph.union(id, n);
            let id = egraph.find(id);
            egraph[id].nodes.retain(|n| n.children.is_empty());
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        debug_assert_eq!(a.shape, b.shape, "merged e-classes of different shapes");
        // A class is forward-computable if any of its forms is, and
        // time-invariant if any of its forms is.
        let fwd = a.fwd_only || b.fwd_only;
        let step = a.per_step && b.per_step;
        let param = a.param || b.param;
        let constant = a.constant.or(b.constant);
        debug_assert!(
            a.constant.zip(b.constant).is_none_or(|(x, y)| x == y),
            "merged different constants"
        );
        let changed_a =
            fwd != a.fwd_only || step != a.per_step || param != a.param || constant != a.constant;
        let changed_b =
            fwd != b.fwd_only || step != b.per_step || param != b.param || constant != b.constant;
        a.fwd_only = fwd;
        a.per_step = step;
        a.param = param;
        a.constant = constant;
        DidMerge(changed_a, changed_b)
    }
}

pub type RGraph = EGraph<RNode, RegionAnalysis>;
