//! The rate pass: exact rules preserve BPTT's gradients; rate mode equals
//! BPTT where docs/math.md says it must (T = 1, output layer, time-constant
//! inputs), collapses every backward read to time-aggregated values, and
//! keeps the same bytes at every T.

mod common;

use common::gen;
use proptest::prelude::*;
use snnc::interp::{self, RunOptions, Values};
use snnc::ir::Graph;
use snnc::model::{Encoding, LayerKind, MaxPoolRule, Model};
use snnc::passes::cost::graph_cost;
use snnc::passes::rate::{rate_pass, Limits, Mode};
use snnc::tensor::Tensor;
use snnc::unroll::{unroll_with, Phase, UnrollConfig};
use snnc::{autodiff, init, shape};
use std::collections::HashMap;

struct Setup {
    g: Graph,
    inputs: HashMap<String, Tensor<f64>>,
    params: HashMap<String, Tensor<f64>>,
}

fn setup(model: &Model, steps: usize, batch: usize, seed: u64) -> Setup {
    let cfg = UnrollConfig {
        steps,
        batch,
        phase: Phase::Train,
    };
    let g = autodiff::autodiff(&unroll_with(model, &cfg).unwrap()).unwrap();
    let a = shape::analyze(model).unwrap();
    let params = init::init_params(&a, seed);
    let mut x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed);
    // Intensities in [0, 2) so that neurons fire.
    x.data.iter_mut().for_each(|v| *v *= 2.0);
    let classes = g.g[g.output("logits").unwrap()].shape[1];
    let mut labels = Tensor::zeros(&[batch, classes]);
    for b in 0..batch {
        labels.data[b * classes + (b * 7 + seed as usize) % classes] = 1.0;
    }
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    Setup { g, inputs, params }
}

fn run(s: &Setup, g: &Graph) -> Values<f64> {
    interp::run(g, &s.inputs, &s.params, &RunOptions::seeded(3)).unwrap()
}

/// The error of every gradient output in units of the largest |b| of any
/// gradient, at least 1 (`snnc::compare::rel_err` with that scale): a
/// gradient that is zero in exact arithmetic is rounding of the others, so
/// it is judged on their scale.
fn grad_errors(a: &Graph, va: &Values<f64>, b: &Graph, vb: &Values<f64>) -> Vec<(String, f64)> {
    let grads: Vec<&(String, snnc::ir::NodeIndex)> = b
        .outputs
        .iter()
        .filter(|(n, _)| n.starts_with("grad:"))
        .collect();
    let scale = grads
        .iter()
        .map(|(_, nb)| snnc::compare::max_abs(vb.get(*nb).unwrap()))
        .fold(1f64, f64::max);
    grads
        .into_iter()
        .map(|(name, nb)| {
            let x = va.get(a.output(name).unwrap()).unwrap();
            let y = vb.get(*nb).unwrap();
            // Every element against the group scale: floor 1, absolute `scale`.
            (name.clone(), snnc::compare::rel_err(x, y, 1.0, scale))
        })
        .collect()
}

/// Whether a max pool uses the official code's rate rule, whose max of
/// the rates changes what the layers above it read.
fn has_rates_pool(layers: &[snnc::model::Layer]) -> bool {
    layers.iter().any(|l| match &l.kind {
        LayerKind::MaxPool { rate_rule, .. } => *rate_rule == MaxPoolRule::Rates,
        LayerKind::Residual { main, shortcut } => has_rates_pool(main) || has_rates_pool(shortcut),
        _ => false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// With exact rules only, the rewritten graph computes the gradients of
    /// the un-rewritten autodiff graph.
    #[test]
    fn exact_rules_preserve_bptt(r in gen::recipe(), steps in 1usize..=8, batch in 1usize..=3, seed in 0u64..1000) {
        let model = gen::build(&r);
        let s = setup(&model, steps, batch, seed);
        let (g2, _) = rate_pass(s.g.clone(), Mode::Bptt, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (va, vb) = (run(&s, &g2), run(&s, &s.g));
        for (name, err) in grad_errors(&g2, &va, &s.g, &vb) {
            prop_assert!(err <= 1e-9, "{name}: {err:e}\n{model:#?}");
        }
    }

    /// Rate mode collapses every random model (max pools of every window
    /// geometry and rule included): no backward node reads a per-step
    /// value (the pass checks this itself and fails otherwise). At T = 1
    /// it equals BPTT.
    #[test]
    fn rate_mode_collapses_and_equals_bptt_at_t1(r in gen::recipe(), steps in 1usize..=6, batch in 1usize..=3, seed in 0u64..1000) {
        let model = gen::build(&r);
        let s = setup(&model, steps, batch, seed);
        let (g2, _) = rate_pass(s.g.clone(), Mode::Rate, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let v = run(&s, &g2);
        if steps == 1 {
            let vb = run(&s, &s.g);
            for (name, err) in grad_errors(&g2, &v, &s.g, &vb) {
                prop_assert!(err <= 1e-12, "T=1 {name}: {err:e}");
            }
        }
        // The output layer's gradients are exact at any T: δs_t = δr/T
        // (unless a max pool with rate_rule=rates feeds it the max of the
        // rates).
        if has_rates_pool(&model.layers) {
            return Ok(());
        }
        let vb = run(&s, &s.g);
        let last = model.layers.len() - 1;
        for (name, err) in grad_errors(&g2, &v, &s.g, &vb) {
            if name.starts_with(&format!("grad:{last}.")) {
                prop_assert!(err <= 1e-12, "output layer {name}: {err:e}");
            }
        }
    }
}

fn example(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    snnc::dsl::parse_file(&path).unwrap().0
}

/// digits_mlp has a direct (time-constant) input and one hidden layer: the
/// first decorrelate is exact at the output layer and the second because
/// the input is constant, so rate gradients equal BPTT's at any T.
#[test]
fn digits_mlp_rate_is_exact() {
    for steps in [2, 4, 7] {
        let s = setup(&example("digits_mlp"), steps, 3, 5);
        let (g2, _) = rate_pass(s.g.clone(), Mode::Rate, &Limits::default()).unwrap();
        let (va, vb) = (run(&s, &g2), run(&s, &s.g));
        for (name, err) in grad_errors(&g2, &va, &s.g, &vb) {
            assert!(err <= 1e-12, "T={steps} {name}: {err:e}");
        }
    }
}

/// Overlapping padded max pools collapse at small T. There `maxpool-route`'s
/// `mean_t select_t` (k² values per window) keeps more bytes than the T
/// per-step pool inputs, and extraction by bytes alone kept the per-step
/// `Σ_t maxpool_grad(x_t, δ_t)`, which the pass then refused ("region
/// linear: the rate backward still reads a per-step value"; found by the
/// random-model property). Rate-mode extraction counts per-step reads
/// first. At T = 1 the collapsed gradients equal BPTT's.
#[test]
fn overlapping_padded_max_pools_collapse_at_small_t() {
    let pools = [
        ("1x3x3", "maxpool 2 stride=1 padding=1"),
        ("1x5x5", "maxpool 3 stride=2 padding=1"),
    ];
    for (input, pool) in pools {
        let src = format!(
            "model m\ninput {input} encoding=direct\nconv2d 2 kernel=3 padding=1 bias=false\n\
             lif\n{pool}\nflatten\nlinear 2\n"
        );
        let model = snnc::dsl::parse(&src, "m.snn").unwrap();
        for steps in [1, 2, 3] {
            let s = setup(&model, steps, 2, 3);
            let (g2, _) = rate_pass(s.g.clone(), Mode::Rate, &Limits::default())
                .unwrap_or_else(|e| panic!("{pool}, T={steps}: {e}"));
            // One step is its own time mean: no rule is needed there.
            assert!(
                steps == 1
                    || g2
                        .g
                        .node_weights()
                        .any(|n| matches!(n.op, snnc::ir::Op::MaxPoolRoute { .. })),
                "{pool}, T={steps}: no route in the collapsed backward"
            );
            if steps == 1 {
                let (va, vb) = (run(&s, &g2), run(&s, &s.g));
                for (name, err) in grad_errors(&g2, &va, &s.g, &vb) {
                    assert!(err <= 1e-12, "{pool} T=1 {name}: {err:e}");
                }
            }
        }
    }
}

/// Two max pools with the official code's rule (`rate_rule=rates`) feeding
/// a linear layer, at T = 1: the class of the layer's input mean also holds
/// the pools of the input's mean, and extraction built `time_mean` (a
/// forward accumulator) over a pool the backward computes ("a fwd node
/// reads backward node maxpool"; found by the random-model property). A
/// time reduction of one value that is no step's is that value. The
/// gradients at T = 1 equal BPTT's; T = 2 and 3 still collapse.
#[test]
fn chained_rate_rule_pools_at_one_step() {
    let src = "model m\ninput 1x3x3 encoding=direct\nmaxpool 2 stride=1 rate_rule=rates\n\
               maxpool 2 stride=1 padding=1 rate_rule=rates\nflatten\nlinear 2\n";
    let model = snnc::dsl::parse(src, "m.snn").unwrap();
    for steps in [1, 2, 3] {
        let s = setup(&model, steps, 1, 3);
        let (g2, _) = rate_pass(s.g.clone(), Mode::Rate, &Limits::default())
            .unwrap_or_else(|e| panic!("T={steps}: {e}"));
        if steps == 1 {
            let (va, vb) = (run(&s, &g2), run(&s, &s.g));
            for (name, err) in grad_errors(&g2, &va, &s.g, &vb) {
                assert!(err <= 1e-12, "T=1 {name}: {err:e}");
            }
        }
    }
}

/// Rate mode keeps the same bytes for the backward at every T; BPTT's grow
/// linearly in T.
#[test]
fn kept_bytes_constant_in_rate_mode_linear_in_bptt() {
    let model = example("fmnist_csnn");
    let kept = |mode, steps| {
        let cfg = UnrollConfig {
            steps,
            batch: 2,
            phase: Phase::Train,
        };
        let g = autodiff::autodiff(&unroll_with(&model, &cfg).unwrap()).unwrap();
        let (g, _) = rate_pass(g, mode, &Limits::default()).unwrap();
        graph_cost(&g).kept_bytes
    };
    let rate: Vec<f64> = [1, 2, 4].iter().map(|&t| kept(Mode::Rate, t)).collect();
    assert!(rate.iter().all(|&b| b == rate[0]), "{rate:?}");
    let bptt: Vec<f64> = [1, 2, 3].iter().map(|&t| kept(Mode::Bptt, t)).collect();
    assert!(bptt[1] > bptt[0], "{bptt:?}");
    assert_eq!(bptt[2] - bptt[1], bptt[1] - bptt[0], "{bptt:?}");
}

/// Exceeding a limit is an error that names the region, not a fallback.
#[test]
fn limits_are_errors_naming_the_region() {
    let s = setup(&example("digits_mlp"), 4, 1, 1);
    let limits = Limits {
        nodes: 25,
        ..Limits::default()
    };
    let e = rate_pass(s.g.clone(), Mode::Rate, &limits)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("region") && e.contains("did not saturate"),
        "{e}"
    );
}

/// The pass refuses a graph autodiff did not build.
#[test]
fn needs_the_autodiff_graph() {
    let g = snnc::unroll::unroll(&example("digits_mlp"), 2).unwrap();
    let e = rate_pass(g, Mode::Rate, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("autodiff"), "{e}");
}

// ---- the rules on hand-built e-graphs ----

mod rules_on_egraphs {
    use super::*;
    use egg::{Extractor, Id, Language, RecExpr, Runner, SimpleScheduler};
    use snnc::passes::rate::lang::{add_term, Head, Leaf, RGraph, RNode, RegionAnalysis};
    use snnc::passes::rate::rules::{rewrites, Tag, RULES};

    const SHAPE: [usize; 2] = [1, 4];

    fn term(s: &str) -> RecExpr<RNode> {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    /// An e-graph whose leaves are all `[1, 4]` and per-step, except the
    /// ones listed in `shared` (not per-step).
    fn egraph(shared: &[u32]) -> RGraph {
        let mut leaves = HashMap::new();
        for n in 0..100u32 {
            leaves.insert(n, (SHAPE.to_vec(), !shared.contains(&n), false));
        }
        RGraph::new(RegionAnalysis {
            leaves,
            rates: Default::default(),
        })
    }

    fn rules(names: &[&str]) -> Vec<egg::Rewrite<RNode, RegionAnalysis>> {
        let rs: Vec<_> = rewrites(true)
            .into_iter()
            .filter(|r| names.contains(&r.name.as_str()))
            .collect();
        assert_eq!(rs.len(), names.len(), "unknown rule among {names:?}");
        rs
    }

    /// Rewrites `from` with the named rules to saturation and reports
    /// whether `to` is then in the same e-class.
    fn proves(from: &str, to: &str, names: &[&str], shared: &[u32]) -> bool {
        let mut eg = egraph(shared);
        let root = add_term(&mut eg, &term(from));
        let runner = Runner::default()
            .with_egraph(eg)
            .with_scheduler(SimpleScheduler)
            .with_iter_limit(30)
            .run(&rules(names));
        assert!(
            matches!(runner.stop_reason, Some(egg::StopReason::Saturated)),
            "{from} with {names:?}: {:?}",
            runner.stop_reason
        );
        let eg = runner.egraph;
        let to = term(to);
        let same_by_lookup = eg.lookup_expr(&to) == Some(eg.find(root));
        let same_by_equivs = eg.equivs(&term(from), &to).contains(&eg.find(root));
        assert_eq!(same_by_lookup, same_by_equivs);
        same_by_lookup
    }

    #[test]
    fn every_rule_builds_with_a_unique_name_and_an_identity() {
        let names: Vec<&str> = RULES.iter().map(|r| r.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(RULES.iter().all(|r| !r.identity.is_empty()));
        let exact = rewrites(false);
        assert_eq!(
            exact.len(),
            RULES.iter().filter(|r| r.tag == Tag::Exact).count()
        );
        assert!(exact.iter().all(|r| r.name.as_str() != "decorrelate"));
        assert_eq!(rewrites(true).len(), RULES.len());
    }

    #[test]
    fn mul_comm() {
        assert!(proves(
            "(mul fwd1 bnd2)",
            "(mul bnd2 fwd1)",
            &["mul-comm"],
            &[]
        ));
        assert!(!proves(
            "(mul fwd1 bnd2)",
            "(mul bnd2 fwd1)",
            &["mul-assoc"],
            &[]
        ));
    }

    #[test]
    fn mul_assoc() {
        let abc = "(mul fwd1 (mul fwd2 bnd3))";
        assert!(proves(
            abc,
            "(mul (mul fwd1 fwd2) bnd3)",
            &["mul-assoc"],
            &[]
        ));
        // One direction alone; with mul-comm, both and every bracketing.
        assert!(!proves(
            "(mul (mul fwd1 fwd2) bnd3)",
            abc,
            &["mul-assoc"],
            &[]
        ));
        for to in [
            abc,
            "(mul (mul fwd1 bnd3) fwd2)",
            "(mul fwd2 (mul bnd3 fwd1))",
            "(mul bnd3 (mul fwd2 fwd1))",
        ] {
            assert!(proves(
                "(mul (mul fwd1 fwd2) bnd3)",
                to,
                &["mul-comm", "mul-assoc"],
                &[]
            ));
        }
    }

    #[test]
    fn scale_mul_moves_the_constant_onto_a_per_step_forward_factor() {
        let from = "(scale 1.5 (mul bnd1 fwd2))";
        let to = "(mul (scale 1.5 fwd2) bnd1)";
        assert!(proves(from, to, &["scale-mul", "mul-comm"], &[]));
        // Not onto the gradient, and not onto a forward value shared by all
        // steps (the condition).
        assert!(!proves(
            from,
            "(mul fwd2 (scale 1.5 bnd1))",
            &["scale-mul", "mul-comm"],
            &[]
        ));
        assert!(!proves(from, to, &["scale-mul", "mul-comm"], &[2]));
    }

    #[test]
    fn scale_fold_and_scale_one() {
        let from = "(scale 0.5 (scale 3 (scale 2 bnd1)))";
        assert!(proves(from, "(scale 3 bnd1)", &["scale-fold"], &[]));
        assert!(proves(
            from,
            "(scale 1.5 (scale 2 bnd1))",
            &["scale-fold"],
            &[]
        ));
        assert!(!proves(from, "(scale 4 bnd1)", &["scale-fold"], &[]));
        assert!(proves("(scale 1 bnd1)", "bnd1", &["scale-one"], &[]));
        assert!(proves(
            "(scale 0.5 (scale 2 bnd1))",
            "bnd1",
            &["scale-fold", "scale-one"],
            &[]
        ));
        assert!(!proves(
            "(scale 0.5 (scale 2 bnd1))",
            "bnd1",
            &["scale-fold"],
            &[]
        ));
    }

    #[test]
    fn a_scale_of_constants_is_folded() {
        let mut eg = egraph(&[]);
        let six = add_term(&mut eg, &term("(scale 2 3)"));
        eg.rebuild();
        assert_eq!(eg.lookup_expr(&term("6")), Some(eg.find(six)));
        assert_eq!(eg[six].data.constant, Some(6.0));
        assert!(eg[six].nodes.iter().all(|n| n.is_leaf()));
    }

    #[test]
    fn ir_scales_are_lowered_and_raised() {
        let mut e = RecExpr::default();
        let d = e.add(RNode::leaf(Leaf::Bnd, 1));
        e.add(RNode::op(snnc::ir::Op::Scale(2.5), vec![d]));
        let mut eg = egraph(&[]);
        let id = add_term(&mut eg, &e);
        assert_eq!(eg.lookup_expr(&term("(scale 2.5 bnd1)")), Some(id));
        assert!(eg[id].nodes.iter().all(|n| n.head == Head::Scale));
        let lowered = term("(scale 2.5 bnd1)");
        assert_eq!(
            snnc::passes::rate::lang::raise(&lowered).to_string(),
            e.to_string()
        );
    }

    /// The recurrence is found in e-classes: here each x_t's own term is a
    /// leaf, and its recurrence `a_t + 0.5·x_{t+1}` was merged into the
    /// leaf's e-class afterwards, so only matching e-nodes can see it.
    #[test]
    fn unroll_recurrence_matches_e_nodes() {
        let mut eg = egraph(&[]);
        let x2 = add_term(&mut eg, &term("(mul bnd22 fwd12)"));
        let x1 = add_term(&mut eg, &term("bnd31"));
        let x0 = add_term(&mut eg, &term("bnd30"));
        let r1 = add_term(
            &mut eg,
            &term("(add (mul bnd21 fwd11) (scale 0.5 (mul bnd22 fwd12)))"),
        );
        eg.union(x1, r1);
        let r0 = add_term(&mut eg, &term("(add (mul bnd20 fwd10) (scale 0.5 bnd31))"));
        eg.union(x0, r0);
        let root = eg.add(RNode::tsum(vec![x0, x1, x2]));
        eg.rebuild();
        let runner = Runner::default()
            .with_egraph(eg)
            .with_scheduler(SimpleScheduler)
            .with_iter_limit(30)
            .run(&rules(&["unroll-recurrence"]));
        let eg = runner.egraph;
        let unrolled = term(
            "(tsum (mul bnd20 fwd10) (scale 1.5 (mul bnd21 fwd11)) (scale 1.75 (mul bnd22 fwd12)))",
        );
        assert_eq!(eg.lookup_expr(&unrolled), Some(eg.find(root)));
    }

    // ---- random regions: every form of every e-class has its value ----

    fn eval(e: &RecExpr<RNode>, values: &HashMap<u32, Vec<f64>>) -> Vec<f64> {
        let mut out: Vec<Vec<f64>> = Vec::with_capacity(e.as_ref().len());
        for n in e.as_ref() {
            let k = |i: usize| &out[usize::from(n.children[i])];
            let zip = |f: fn(f64, f64) -> f64, a: &[f64], b: &[f64]| -> Vec<f64> {
                a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
            };
            let sum = |ids: &[Id]| -> Vec<f64> {
                (0..SHAPE[1])
                    .map(|j| ids.iter().map(|&c| out[usize::from(c)][j]).sum())
                    .collect()
            };
            let v = match (&n.head, n.as_op()) {
                (Head::Leaf(_, ix), _) => values[ix].clone(),
                (Head::Num(c), _) => vec![c.0],
                (Head::Scale, _) => {
                    let c = k(0)[0];
                    k(1).iter().map(|x| c * x).collect()
                }
                (Head::TSum, _) => sum(&n.children),
                (Head::TMean, _) => sum(&n.children)
                    .into_iter()
                    .map(|x| x / n.children.len() as f64)
                    .collect(),
                (_, Some(snnc::ir::Op::Mul)) => zip(|a, b| a * b, k(0), k(1)),
                (_, Some(snnc::ir::Op::Add)) => zip(|a, b| a + b, k(0), k(1)),
                (_, Some(snnc::ir::Op::Sub)) => zip(|a, b| a - b, k(0), k(1)),
                (_, Some(snnc::ir::Op::Sum)) => sum(&n.children),
                (_, Some(snnc::ir::Op::AddScalar(c))) => k(0).iter().map(|x| x + c).collect(),
                other => panic!("no evaluator for {other:?}"),
            };
            out.push(v);
        }
        out.pop().unwrap()
    }

    /// A random elementwise region over `steps` steps: per step a term
    /// `a_t` of forward and gradient leaves, the recurrence
    /// `x_t = a_t + K_t·x_{t+1}` with `K_t` a constant or a forward value
    /// (times a constant), and roots `Σ_t x_t` and `Σ_t f_t·x_t`.
    fn region(steps: usize, picks: &[u8]) -> String {
        let mut p = picks.iter().cycle().copied();
        let mut next = move || p.next().unwrap();
        let consts = ["0.5", "0.2", "0.9", "1", "2", "-0.3"];
        let a = |t: usize, next: &mut dyn FnMut() -> u8| -> String {
            let (f, g, s) = (
                format!("fwd{}", 10 + t),
                format!("bnd{}", 20 + t),
                format!("fwd{}", 40 + t),
            );
            match next() % 6 {
                0 => format!("(mul {g} {f})"),
                1 => format!("(mul {f} (mul {g} {s}))"),
                2 => format!("(scale {} (mul {g} {f}))", consts[next() as usize % 6]),
                3 => format!("(add (mul {g} {f}) (mul {s} {g}))"),
                4 => format!("(mul (scale {} {f}) {g})", consts[next() as usize % 6]),
                _ => format!("(sub (mul {g} {f}) {g})"),
            }
        };
        let mut xs = vec![a(steps - 1, &mut next)];
        for t in (0..steps - 1).rev() {
            let x = xs.last().unwrap().clone();
            let c = consts[next() as usize % 6];
            let f = format!("fwd{}", 30 + t);
            let rec = match next() % 4 {
                0 => format!("(scale {c} {x})"),
                1 => format!("(mul {f} {x})"),
                2 => format!("(scale {c} (mul {f} {x}))"),
                _ => format!("(mul {x} (scale {c} {f}))"),
            };
            let at = a(t, &mut next);
            xs.push(if next() % 2 == 0 {
                format!("(add {at} {rec})")
            } else {
                format!("(sum {rec} {at})")
            });
        }
        xs.reverse();
        let weighted: Vec<String> = xs
            .iter()
            .enumerate()
            .map(|(t, x)| format!("(mul fwd{} {x})", 10 + t))
            .collect();
        format!(
            "(add (tsum {}) (tsum {}))",
            xs.join(" "),
            weighted.join(" ")
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The exact rules on a random region: every e-node of every
        /// e-class, its operands in their cheapest form, computes the
        /// class's value, and the form the pass extracts computes the
        /// region's value (BPTT's, the un-rewritten term).
        #[test]
        fn exact_rules_keep_every_value(
            steps in 1usize..=4,
            picks in prop::collection::vec(any::<u8>(), 4..24),
            seed in 0u64..1000,
        ) {
            let src = region(steps, &picks);
            let expr = term(&src);
            let mut r = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut values = HashMap::new();
            for n in 0..100u32 {
                let v: Vec<f64> = (0..SHAPE[1])
                    .map(|_| {
                        r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((r >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
                    })
                    .collect();
                values.insert(n, v);
            }
            let want = eval(&expr, &values);
            let mut eg = egraph(&[]);
            let root = add_term(&mut eg, &expr);
            let runner = Runner::default()
                .with_egraph(eg)
                .with_scheduler(SimpleScheduler)
                .with_iter_limit(40)
                .with_node_limit(50_000)
                .run(&rewrites(false));
            prop_assert!(
                matches!(runner.stop_reason, Some(egg::StopReason::Saturated)),
                "{src}: {:?}", runner.stop_reason
            );
            let eg = runner.egraph;
            let close = |a: &[f64], b: &[f64]| {
                let scale = 1.0 + b.iter().fold(0f64, |m, x| m.max(x.abs()));
                a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-9 * scale)
            };
            let ex = Extractor::new(&eg, egg::AstSize);
            for class in eg.classes() {
                let best = eval(&ex.find_best(class.id).1, &values);
                for n in &class.nodes {
                    let mut e = RecExpr::default();
                    let kids: Vec<Id> = n
                        .children
                        .iter()
                        .map(|&c| {
                            let sub = ex.find_best(c).1;
                            let base = e.as_ref().len();
                            for m in sub.as_ref() {
                                e.add(m.clone().map_children(|i| Id::from(usize::from(i) + base)));
                            }
                            Id::from(e.as_ref().len() - 1)
                        })
                        .collect();
                    let mut it = kids.into_iter();
                    e.add(n.clone().map_children(|_| it.next().unwrap()));
                    prop_assert!(close(&eval(&e, &values), &best), "{src}: {n} in class {}", class.id);
                }
            }
            let pass = Extractor::new(&eg, snnc::passes::rate::cost::KeptThenFlops { egraph: &eg, collapse: true });
            prop_assert!(close(&eval(&pass.find_best(root).1, &values), &want), "{src}");
        }
    }
}
