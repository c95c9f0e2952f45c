//! The e-graph language of a temporal region and its analysis.
//!
//! A region's backward is written with the IR's own ops (`Op`), plus two
//! n-ary time reductions (`tsum`, `tmean`: one child per step, so
//! associativity never has to be searched) and three kinds of leaf that
//! point back into the graph: a forward value, a per-step gradient coming
//! from the region above, and a graph node that already holds a time sum.

use crate::ir::Op;
use egg::{Analysis, DidMerge, EGraph, Id, Language};
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Head {
    /// A graph node (its index).
    Leaf(Leaf, u32),
    Op(KeyedOp),
    /// Σ over steps: one child per step.
    TSum,
    /// Mean over steps: one child per step.
    TMean,
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
}

/// Facts about leaves, supplied by the region builder.
#[derive(Default)]
pub struct RegionAnalysis {
    /// Per graph node: (shape, per-step?, is parameter?).
    pub leaves: std::collections::HashMap<u32, (Vec<usize>, bool, bool)>,
    /// The e-nodes the region was built from, by their first id: an
    /// acyclic view that `unroll-recurrence` reads its chains from.
    pub originals: std::collections::HashMap<Id, RNode>,
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
                }
            }
            Head::TSum | Head::TMean => Data {
                shape: kid(0).shape.clone(),
                fwd_only: enode.children.iter().all(|&c| egraph[c].data.fwd_only),
                per_step: false,
                param: false,
            },
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
                }
            }
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        debug_assert_eq!(a.shape, b.shape, "merged e-classes of different shapes");
        // A class is forward-computable if any of its forms is, and
        // time-invariant if any of its forms is.
        let fwd = a.fwd_only || b.fwd_only;
        let step = a.per_step && b.per_step;
        let param = a.param || b.param;
        let changed_a = fwd != a.fwd_only || step != a.per_step || param != a.param;
        let changed_b = fwd != b.fwd_only || step != b.per_step || param != b.param;
        a.fwd_only = fwd;
        a.per_step = step;
        a.param = param;
        DidMerge(changed_a, changed_b)
    }
}

pub type RGraph = EGraph<RNode, RegionAnalysis>;
