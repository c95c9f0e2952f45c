//! `dce`: snapshot, agreement with the interpreter, and a property over
//! random models with random dead nodes attached.

mod common;

use common::gen;
use proptest::prelude::*;
use snnc::interp::{self, RunOptions};
use snnc::ir::{self, DType, Graph, Node, NodeIndex, Op, Role};
use snnc::passes::{self, dce};
use snnc::tensor::Tensor;
use snnc::{init, shape, unroll};
use std::collections::HashMap;

/// Hangs `k` dead nodes off existing per-step values.
fn add_dead(g: &mut Graph, k: usize) -> usize {
    let live: Vec<NodeIndex> = g.g.node_indices().filter(|&n| g.g[n].t.is_some()).collect();
    for i in 0..k {
        let src = live[(i * 7919) % live.len()];
        let node = Node {
            op: Op::Scale(2.0),
            role: Role::Forward,
            ..g.g[src].clone()
        };
        let a = g.add(node.clone(), &[src]);
        g.add(
            Node {
                op: Op::Detach,
                ..node
            },
            &[a],
        );
    }
    2 * k
}

fn logits(g: &Graph, model: &snnc::model::Model, seed: u64) -> Tensor<f64> {
    let a = shape::analyze(model).unwrap();
    let params = init::init_params(&a, seed);
    let x = snnc::interp::random_input(
        g,
        model.input.encoding == snnc::model::Encoding::Events,
        seed,
    );
    let v = interp::run(
        g,
        &HashMap::from([("x".to_string(), x)]),
        &params,
        &RunOptions::seeded(seed),
    )
    .unwrap();
    v.get(g.output("logits").unwrap()).unwrap().clone()
}

/// `g` through a pipeline of the one pass (checked after it).
fn run_dce(g: ir::Graph) -> ir::Graph {
    let mut p = passes::Program::new(g);
    passes::Pipeline::new(vec![Box::new(dce::Dce)])
        .run(&mut p)
        .unwrap();
    p.graph
}

#[test]
fn dce_removes_exactly_the_dead_nodes() {
    let model = snnc::dsl::ModelBuilder::new("mlp")
        .input(&[4])
        .linear(3)
        .lif()
        .linear(2)
        .build();
    let mut g = unroll::unroll(&model, 2).unwrap();
    let before = g.node_count();
    let dead = add_dead(&mut g, 3);
    let after = run_dce(g);
    assert_eq!(after.node_count(), before);
    insta::assert_snapshot!(format!(
        "removed {dead} dead nodes\n{}",
        ir::to_text(&after)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn dce_keeps_outputs(r in gen::recipe(), steps in 1usize..=4, k in 0usize..6, seed in any::<u64>()) {
        let model = gen::build(&r);
        let mut g = unroll::unroll(&model, steps).unwrap();
        let want = logits(&g, &model, seed);
        let live = g.node_count();
        add_dead(&mut g, k);
        let g = run_dce(g);
        prop_assert_eq!(g.node_count(), live);
        prop_assert_eq!(logits(&g, &model, seed), want);
    }
}

#[test]
fn dtype_is_recorded() {
    let model = snnc::dsl::ModelBuilder::new("m")
        .input(&[2])
        .linear(2)
        .build();
    let g = unroll::unroll(&model, 1).unwrap();
    assert!(g.g.node_weights().all(|n| n.dtype == DType::F32));
}
