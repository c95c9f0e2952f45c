//! Snapshots of the backward before and after the rate pass, and of each
//! rewrite rule on a hand-built region.

use egg::{Id, RecExpr};
use snnc::compile::{compile, Options, Stage};
use snnc::ir::{self, MaxPoolRule, Op};
use snnc::model::{Surrogate, SurrogateKind};
use snnc::passes::rate::lang::{Leaf, RNode, RatesLeaf, RegionAnalysis};
use snnc::passes::rate::{rewrite_forms, Mode};
use std::collections::HashMap;

fn graph(name: &str, steps: usize, after: Stage, mode: Mode) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    let (model, _) = snnc::dsl::parse_file(&path).unwrap();
    let opts = Options {
        after,
        ..Options::new(steps, 1, mode)
    };
    ir::to_text(&compile(&model, &opts).unwrap().graph)
}

#[test]
fn digits_mlp_t3_autodiff() {
    insta::assert_snapshot!(graph("digits_mlp", 3, Stage::Autodiff, Mode::Bptt));
}
#[test]
fn digits_mlp_t3_rate_bptt_mode() {
    insta::assert_snapshot!(graph("digits_mlp", 3, Stage::Dce, Mode::Bptt));
}
#[test]
fn digits_mlp_t3_rate_rate_mode() {
    insta::assert_snapshot!(graph("digits_mlp", 3, Stage::Dce, Mode::Rate));
}
#[test]
fn fmnist_csnn_t3_autodiff() {
    insta::assert_snapshot!(graph("fmnist_csnn", 3, Stage::Autodiff, Mode::Bptt));
}
#[test]
fn fmnist_csnn_t3_rate_bptt_mode() {
    insta::assert_snapshot!(graph("fmnist_csnn", 3, Stage::Dce, Mode::Bptt));
}
#[test]
fn fmnist_csnn_t3_rate_rate_mode() {
    insta::assert_snapshot!(graph("fmnist_csnn", 3, Stage::Dce, Mode::Rate));
}

#[test]
fn residual_block_t2_both_modes() {
    let src = "model block\\ninput 2x4x4\\nconv2d 2 bias=false\\nbatchnorm\\nlif\\nresidual {\\n conv2d 2 bias=false\\n batchnorm\\n lif\\n conv2d 2 bias=false\\n batchnorm\\n}\\nlif\\nflatten\\nlinear 3\\n";
    let model = snnc::dsl::parse(&src.replace("\\n", "\n"), "block.snn").unwrap();
    let text = |mode| {
        let opts = Options {
            after: Stage::Dce,
            ..Options::new(2, 1, mode)
        };
        ir::to_text(&compile(&model, &opts).unwrap().graph)
    };
    insta::assert_snapshot!(format!(
        "== bptt mode\n{}\n== rate mode\n{}",
        text(Mode::Bptt),
        text(Mode::Rate)
    ));
}

// ---- each rule on a hand-built region ----

struct Region {
    e: RecExpr<RNode>,
    leaves: HashMap<u32, (Vec<usize>, bool, bool)>,
    rates: HashMap<u32, RatesLeaf>,
}

impl Region {
    fn new() -> Region {
        Region {
            e: RecExpr::default(),
            leaves: HashMap::new(),
            rates: HashMap::new(),
        }
    }
    /// A forward leaf (per-step or shared) or a per-step gradient leaf.
    fn leaf(&mut self, kind: Leaf, n: u32, shape: &[usize], per_step: bool) -> Id {
        self.leaves.insert(n, (shape.to_vec(), per_step, false));
        self.e.add(RNode::leaf(kind, n))
    }
    fn param(&mut self, n: u32, shape: &[usize]) -> Id {
        self.leaves.insert(n, (shape.to_vec(), false, true));
        self.e.add(RNode::leaf(Leaf::Fwd, n))
    }
    fn op(&mut self, op: Op, kids: Vec<Id>) -> Id {
        self.e.add(RNode::op(op, kids))
    }
    fn show(self, rules: &[&str]) -> String {
        let before = self.e.to_string();
        let facts = RegionAnalysis {
            leaves: self.leaves,
            rates: self.rates,
        };
        let (forms, best) = rewrite_forms(&self.e, facts, rules).unwrap();
        format!(
            "before:\n  {before}\nforms of the root after rewriting:\n  {}\nextracted:\n  {best}\n",
            forms.join("\n  ")
        )
    }
}

const S: [usize; 2] = [2, 4];

#[test]
fn rule_unroll_recurrence() {
    // x_t = σ'_t·δs_t + 0.5·x_{t+1} over three steps.
    let mut r = Region::new();
    let sg = Surrogate {
        kind: SurrogateKind::Sigmoid,
        alpha: 4.0,
    };
    let mut terms = Vec::new();
    for t in 0..3 {
        let u = r.leaf(Leaf::Fwd, 10 + t, &S, true);
        let ds = r.leaf(Leaf::Bnd, 20 + t, &S, true);
        let s = r.op(
            Op::SurrogateGrad {
                theta: 1.0,
                surrogate: sg,
            },
            vec![u],
        );
        terms.push(r.op(Op::Mul, vec![ds, s]));
    }
    let x2 = terms[2];
    let k2 = r.op(Op::Scale(0.5), vec![x2]);
    let x1 = r.op(Op::Add, vec![terms[1], k2]);
    let k1 = r.op(Op::Scale(0.5), vec![x1]);
    let x0 = r.op(Op::Add, vec![terms[0], k1]);
    r.e.add(RNode::tsum(vec![x0, x1, x2]));
    insta::assert_snapshot!(r.show(&["unroll-recurrence"]));
}

#[test]
fn rule_linear_hoist() {
    let mut r = Region::new();
    let w = r.param(1, &[4, 3]);
    let kids: Vec<Id> = (0..3)
        .map(|t| {
            let d = r.leaf(Leaf::Bnd, 20 + t, &S, true);
            r.op(
                Op::MatMul {
                    ta: false,
                    tb: false,
                },
                vec![d, w],
            )
        })
        .collect();
    r.e.add(RNode::tsum(kids));
    insta::assert_snapshot!(r.show(&["linear-hoist"]));
}

#[test]
fn rule_decorrelate() {
    let mut r = Region::new();
    let kids: Vec<Id> = (0..3)
        .map(|t| {
            let x = r.leaf(Leaf::Fwd, 10 + t, &[2, 3], true);
            let d = r.leaf(Leaf::Bnd, 20 + t, &S, true);
            r.op(
                Op::MatMul {
                    ta: true,
                    tb: false,
                },
                vec![d, x],
            )
        })
        .collect();
    r.e.add(RNode::tsum(kids));
    insta::assert_snapshot!(r.show(&["decorrelate"]));
}

#[test]
fn rule_maxpool_mask() {
    let mut r = Region::new();
    let x = r.leaf(Leaf::Fwd, 1, &[1, 1, 4, 4], true);
    let d = r.leaf(Leaf::Bnd, 2, &[1, 1, 2, 2], true);
    r.op(
        Op::MaxPoolGrad {
            kernel: 2,
            stride: 2,
            padding: 0,
            rule: MaxPoolRule::Masks,
        },
        vec![x, d],
    );
    insta::assert_snapshot!(r.show(&["maxpool-mask"]));
}

/// Overlapping, padded windows over three steps: `maxpool-route` writes
/// each step as a route of its selection, and `decorrelate` averages the
/// selections.
#[test]
fn rule_maxpool_route() {
    let mut r = Region::new();
    let kids: Vec<Id> = (0..3)
        .map(|t| {
            let x = r.leaf(Leaf::Fwd, 10 + t, &[1, 1, 4, 4], true);
            let d = r.leaf(Leaf::Bnd, 20 + t, &[1, 1, 2, 2], true);
            r.op(
                Op::MaxPoolGrad {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                    rule: MaxPoolRule::Masks,
                },
                vec![x, d],
            )
        })
        .collect();
    r.e.add(RNode::tsum(kids));
    insta::assert_snapshot!(r.show(&["maxpool-route", "decorrelate"]));
}

/// `rate_rule=rates`, on its gradient: the time sum routes by the arg-max
/// of the mean input.
#[test]
fn rule_maxpool_rates_gradient() {
    let mut r = Region::new();
    let op = Op::MaxPoolGrad {
        kernel: 2,
        stride: 2,
        padding: 0,
        rule: MaxPoolRule::Rates,
    };
    let grads = (0..2)
        .map(|t| {
            let x = r.leaf(Leaf::Fwd, 10 + t, &[1, 1, 4, 4], true);
            let d = r.leaf(Leaf::Bnd, 20 + t, &[1, 1, 2, 2], true);
            r.op(op.clone(), vec![x, d])
        })
        .collect();
    r.e.add(RNode::tsum(grads));
    insta::assert_snapshot!(r.show(&["maxpool-rates"]));
}

/// `rate_rule=rates`, on the value the layer above reads: the steps' sum
/// of `matmul(δ_t, p_t)` over the pool's outputs p_t (flattened) becomes
/// one product with the flattened pool of the mean input.
#[test]
fn rule_maxpool_rates_value() {
    let mut r = Region::new();
    let pool = Op::MaxPool {
        kernel: 2,
        stride: 2,
        padding: 0,
        rule: MaxPoolRule::Rates,
    };
    let flat = Op::Reshape { shape: vec![1, 4] };
    let inputs = vec![10, 11];
    let kids = (0..2)
        .map(|t| {
            r.leaves.insert(10 + t, (vec![1, 1, 4, 4], true, false));
            r.leaves.insert(30 + t, (vec![1, 1, 2, 2], true, false));
            let op = pool.clone();
            let inputs = inputs.clone();
            r.rates.insert(30 + t, RatesLeaf::Pool { op, inputs });
            let operand = 30 + t;
            let op = flat.clone();
            r.rates.insert(40 + t, RatesLeaf::View { op, operand });
            let p = r.leaf(Leaf::Fwd, 40 + t, &[1, 4], true);
            let d = r.leaf(Leaf::Bnd, 20 + t, &[1, 3], true);
            let mm = Op::MatMul {
                ta: true,
                tb: false,
            };
            r.op(mm, vec![d, p])
        })
        .collect();
    r.e.add(RNode::tsum(kids));
    insta::assert_snapshot!(r.show(&["maxpool-rates", "linear-hoist"]));
}

#[test]
fn rules_mul_comm_and_assoc() {
    let mut r = Region::new();
    let a = r.leaf(Leaf::Fwd, 1, &S, true);
    let b = r.leaf(Leaf::Fwd, 2, &S, true);
    let d = r.leaf(Leaf::Bnd, 3, &S, true);
    let ab = r.op(Op::Mul, vec![a, b]);
    r.op(Op::Mul, vec![ab, d]);
    insta::assert_snapshot!(r.show(&["mul-comm", "mul-assoc"]));
}

#[test]
fn rule_scale_mul() {
    // ρ·(δs·σ'): the constant moves onto the forward factor.
    let mut r = Region::new();
    let d = r.leaf(Leaf::Bnd, 1, &S, true);
    let a = r.leaf(Leaf::Fwd, 2, &S, true);
    let m = r.op(Op::Mul, vec![d, a]);
    r.op(Op::Scale(1.5), vec![m]);
    insta::assert_snapshot!(r.show(&["scale-mul", "mul-comm"]));
}

#[test]
fn rule_scale_fold() {
    let mut r = Region::new();
    let d = r.leaf(Leaf::Bnd, 1, &S, true);
    let s = r.op(Op::Scale(2.0), vec![d]);
    let s = r.op(Op::Scale(3.0), vec![s]);
    r.op(Op::Scale(0.5), vec![s]);
    insta::assert_snapshot!(r.show(&["scale-fold"]));
}
