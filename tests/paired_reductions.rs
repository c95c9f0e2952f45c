//! A channel sum of x and a channel dot of x and y run in one read of x on
//! the executor (`codegen/exec/reduce.rs`, `paired_reduction`): whichever
//! runs first computes both when the other operand is already live, and
//! the second copies its result. Checked bit for bit against the same plan
//! with pairing off (the partial sums are the same numbers added in the
//! same order), on a hand-made graph in both orders, with y computed only
//! after the sum (no pairing then), over two runs of one executor (the
//! kept results must not leak from one run into the next), and on
//! fmnist_csnn's fused plans in both modes and all three fused schedules,
//! where batch norm's backward pairs Σg with Σg·x̂. Agreement of the
//! executor with the interpreter is `tests/fused_exec.rs`.

mod common;

use common::example;
use snnc::codegen::cpu::Cpu;
use snnc::codegen::exec::Executor;
use snnc::compile::{compile, Options, Target};
use snnc::interp::RunOptions;
use snnc::ir::{Graph, NodeIndex, Op, Role};
use snnc::passes::fuse::Plan;
use snnc::passes::rate::Mode;
use snnc::tensor::Tensor;
use std::collections::HashMap;

type Outs = HashMap<String, Tensor<f32>>;

/// Runs `plan` twice on one executor with pairing on and once with it
/// off; every output of the three runs must be bitwise equal. Returns how
/// many reductions the first paired run computed ahead.
fn paired_equals_unpaired(
    g: &Graph,
    plan: &Plan,
    inputs: &Outs,
    params: &Outs,
    case: &str,
) -> usize {
    let mut cpu = Cpu::new().expect("the CPU backend builds");
    let opts = RunOptions::seeded(0);
    let (first, second, paired) = {
        let mut ex = Executor::with_plan(&mut cpu, g, plan.clone(), &[]).unwrap();
        let first = ex.run(inputs, params, &opts).unwrap();
        let paired = ex.paired;
        let second = ex.run(inputs, params, &opts).unwrap();
        assert_eq!(ex.paired, 2 * paired, "{case}: the second run pairs alike");
        (first, second, paired)
    };
    let mut ex = Executor::with_plan(&mut cpu, g, plan.clone(), &[]).unwrap();
    ex.pair_reductions = false;
    let alone = ex.run(inputs, params, &opts).unwrap();
    assert_eq!(ex.paired, 0);
    for (name, want) in &alone {
        for (run, got) in [("first", &first[name]), ("second", &second[name])] {
            for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "{case}: {name}[{i}] {a} paired ({run} run) vs {b} alone"
                );
            }
        }
    }
    paired
}

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> NodeIndex {
    g.add_leaf(Op::Input { name: name.into() }, shape, Role::Input)
}

fn random(shape: &[usize], seed: u64) -> Tensor<f32> {
    let mut r = snnc::rng::Rng::new(seed);
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| r.uniform() as f32 - 0.5).collect())
}

const SHAPE: [usize; 4] = [3, 5, 7, 9];

/// `channel_sum(x)` and `channel_dot(x, y)` (and, with `late_y`, y =
/// a·b computed between the two), as node units in the order given by
/// `sum_first`.
fn case(sum_first: bool, late_y: bool) -> (Graph, Plan) {
    let mut g = Graph::new("paired", 1, SHAPE[0]);
    g.layers.push(snnc::ir::LayerInfo {
        path: "0".into(),
        keyword: "batchnorm".into(),
    });
    let x = input(&mut g, "x", &SHAPE);
    let a = input(&mut g, "a", &SHAPE);
    let b = input(&mut g, "b", &SHAPE);
    let add = |g: &mut Graph, op: &Op, args: &[NodeIndex]| {
        g.add_op("test", op.clone(), Some(0), None, Role::Output, args)
    };
    let y = if late_y {
        add(&mut g, &Op::Mul, &[a, b])
    } else {
        a
    };
    let sum = add(&mut g, &Op::ChannelSum, &[x]);
    let dot = add(&mut g, &Op::ChannelDot, &[y, x]);
    g.outputs.push(("sum".into(), sum));
    g.outputs.push(("dot".into(), dot));
    let mut order = vec![x, a, b];
    match (sum_first, late_y) {
        (true, true) => order.extend([sum, y, dot]),
        (true, false) => order.extend([sum, dot]),
        (false, true) => order.extend([y, dot, sum]),
        (false, false) => order.extend([dot, sum]),
    }
    (g, Plan::node_by_node(order))
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CPU backend's library kernels ($CXX, c++, g++ or clang++)"
)]
fn a_sum_and_a_dot_over_one_operand_share_its_read() {
    let inputs = HashMap::from([
        ("x".to_string(), random(&SHAPE, 1)),
        ("a".to_string(), random(&SHAPE, 2)),
        ("b".to_string(), random(&SHAPE, 3)),
    ]);
    for (sum_first, late_y, pairs) in [
        (true, false, 1),
        (false, false, 1),
        (false, true, 1),
        // y does not exist yet when the sum runs: each runs alone.
        (true, true, 0),
    ] {
        let (g, plan) = case(sum_first, late_y);
        snnc::ir::verify(&g).unwrap();
        let what = format!("sum first {sum_first}, y late {late_y}");
        let n = paired_equals_unpaired(&g, &plan, &inputs, &HashMap::new(), &what);
        assert_eq!(n, pairs, "{what}");
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CPU backend's library kernels ($CXX, c++, g++ or clang++)"
)]
fn batch_norm_backward_pairs_its_sums_in_fused_plans() {
    let model = example::model("fmnist_csnn");
    let params = example::params(&model);
    let batch = 4;
    for mode in [Mode::Bptt, Mode::Rate] {
        let steps = 3;
        let g = compile(&model, &Options::new(steps, batch, mode))
            .unwrap()
            .graph;
        let inputs = example::inputs(&g, batch, 10);
        for opts in example::SCHEDULES {
            let (eg, plan) = Target::Fused(opts).plan(&g, &[]);
            let what = format!("fmnist_csnn {mode} T={steps} {opts}");
            let n = paired_equals_unpaired(&eg, &plan, &inputs, &params, &what);
            // Two batch norms; BPTT sums per step.
            let want = if mode == Mode::Bptt { 2 * steps } else { 2 };
            assert_eq!(n, want, "{what}");
        }
    }
}
