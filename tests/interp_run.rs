//! `interp::run` on hand-built graphs: end to end, and its error paths.

use snnc::interp::{run, InterpError, RunOptions, Values};
use snnc::ir::{verify, DType, Graph, LayerInfo, Node, Op, Role};
use snnc::model::{Surrogate, SurrogateKind};
use snnc::tensor::Tensor;
use std::collections::HashMap;

fn node(op: Op, shape: &[usize], role: Role, t: Option<usize>) -> Node {
    Node {
        op,
        shape: shape.to_vec(),
        dtype: DType::F32,
        layer: Some(0),
        t,
        role,
    }
}

fn graph(name: &str, steps: usize) -> Graph {
    let mut g = Graph::new(name, steps, 2);
    g.layers.push(LayerInfo {
        path: "0".into(),
        keyword: "linear".into(),
    });
    g
}

const SPIKE: Op = Op::Spike {
    theta: 1.0,
    surrogate: Surrogate {
        kind: SurrogateKind::Sigmoid,
        alpha: 4.0,
    },
};

/// input x[2,3] → matmul with w[3,4] → bias_add b[4] → spike → "out".
fn linear_spike() -> Graph {
    let mut g = graph("linear_spike", 1);
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[2, 3], Role::Input, None),
        &[],
    );
    let w = g.add(
        node(Op::Param { name: "0.w".into() }, &[3, 4], Role::Param, None),
        &[],
    );
    let b = g.add(
        node(Op::Param { name: "0.b".into() }, &[4], Role::Param, None),
        &[],
    );
    let mm = g.add(
        node(
            Op::MatMul {
                ta: false,
                tb: false,
            },
            &[2, 4],
            Role::Forward,
            Some(0),
        ),
        &[x, w],
    );
    let z = g.add(node(Op::BiasAdd, &[2, 4], Role::Forward, Some(0)), &[mm, b]);
    let s = g.add(node(SPIKE, &[2, 4], Role::Output, Some(0)), &[z]);
    g.outputs.push(("out".into(), s));
    verify(&g).unwrap();
    g
}

/// Inputs and params for `linear_spike`; all values are multiples of 1/4 so
/// every intermediate is exact in f32 and f64 alike.
fn linear_spike_data() -> (HashMap<String, Tensor<f64>>, HashMap<String, Tensor<f64>>) {
    let x = Tensor::from_vec(&[2, 3], vec![1.0, 0.5, -0.25, 0.0, 2.0, 1.0]);
    let w = Tensor::from_vec(
        &[3, 4],
        vec![
            1.0, 0.0, -1.0, 0.5, //
            0.5, 1.0, 0.25, 0.0, //
            0.0, -0.5, 1.0, 2.0,
        ],
    );
    let b = Tensor::from_vec(&[4], vec![0.0, 0.25, 0.5, -0.75]);
    let inputs = HashMap::from([("x".to_string(), x)]);
    let params = HashMap::from([("0.w".to_string(), w), ("0.b".to_string(), b)]);
    (inputs, params)
}

fn to_f32(m: &HashMap<String, Tensor<f64>>) -> HashMap<String, Tensor<f32>> {
    m.iter().map(|(k, v)| (k.clone(), v.cast())).collect()
}

/// Every node's value in the two runs, compared exactly after widening.
fn assert_same_values(g: &Graph, a: &Values<f64>, b: &Values<f32>) {
    for n in g.g.node_indices() {
        let (x, y) = (a.get(n).unwrap(), b.get(n).unwrap());
        assert_eq!(*x, y.cast::<f64>(), "node {} differs", n.index());
    }
}

#[test]
fn linear_spike_end_to_end() {
    let g = linear_spike();
    let (inputs, params) = linear_spike_data();
    let opts = RunOptions::default();
    let v64 = run(&g, &inputs, &params, &opts).unwrap();
    // x·w row 0: [1.25, 0.625, -1.125, 0]; row 1: [1, 1.5, 1.5, 2].
    // + b: [1.25, 0.875, -0.625, -0.75] and [1, 1.75, 2, 1.25].
    let mm = g.operands(g.operands(g.output("out").unwrap())[0])[0];
    assert_eq!(
        v64.get(mm).unwrap().data,
        [1.25, 0.625, -1.125, 0.0, 1.0, 1.5, 1.5, 2.0]
    );
    let out = v64.output(&g, "out").unwrap();
    assert_eq!(out.shape, [2, 4]);
    assert_eq!(out.data, [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);

    let v32 = run(&g, &to_f32(&inputs), &to_f32(&params), &opts).unwrap();
    assert_same_values(&g, &v64, &v32);
}

/// Two timesteps of a Poisson-encoded, dropout-masked linear layer whose
/// spikes are averaged over time: exercises the generated leaf, the run
/// seed, and shared versus per-step nodes.
fn two_step_rate() -> Graph {
    let mut g = graph("two_step_rate", 2);
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[2, 3], Role::Input, None),
        &[],
    );
    let w = g.add(
        node(Op::Param { name: "0.w".into() }, &[3, 4], Role::Param, None),
        &[],
    );
    let m = g.add(
        node(
            Op::DropoutMask {
                p: 0.5,
                stream: 0x10,
            },
            &[2, 4],
            Role::Forward,
            None,
        ),
        &[],
    );
    let mut spikes = Vec::new();
    for t in 0..2 {
        let p = g.add(
            node(
                Op::Poisson {
                    stream: 0x20 + t as u64,
                },
                &[2, 3],
                Role::Forward,
                Some(t),
            ),
            &[x],
        );
        let mm = g.add(
            node(
                Op::MatMul {
                    ta: false,
                    tb: false,
                },
                &[2, 4],
                Role::Forward,
                Some(t),
            ),
            &[p, w],
        );
        let d = g.add(node(Op::Mul, &[2, 4], Role::Forward, Some(t)), &[mm, m]);
        spikes.push(g.add(node(SPIKE, &[2, 4], Role::Forward, Some(t)), &[d]));
    }
    let r = g.add(node(Op::TimeMean, &[2, 4], Role::Output, None), &spikes);
    g.outputs.push(("rate".into(), r));
    verify(&g).unwrap();
    g
}

#[test]
fn two_step_rate_is_reproducible() {
    let g = two_step_rate();
    let (inputs, mut params) = linear_spike_data();
    params.remove("0.b");
    let opts = RunOptions::seeded(1234);
    let v64 = run(&g, &inputs, &params, &opts).unwrap();
    let v32 = run(&g, &to_f32(&inputs), &to_f32(&params), &opts).unwrap();
    assert_same_values(&g, &v64, &v32);
    assert_eq!(v64, run(&g, &inputs, &params, &opts).unwrap());
    let rate = v64.output(&g, "rate").unwrap();
    assert!(rate.data.iter().all(|&r| [0.0, 0.5, 1.0].contains(&r)));
    // Poisson of clamped intensities: x ≤ 0 never fires, x ≥ 1 always does.
    let first_poisson =
        g.g.node_indices()
            .find(|&n| matches!(g.node(n).op, Op::Poisson { .. }))
            .unwrap();
    let spikes = &v64.get(first_poisson).unwrap().data;
    let x = &inputs["x"].data;
    for (s, &xi) in spikes.iter().zip(x) {
        if xi <= 0.0 {
            assert_eq!(*s, 0.0);
        }
        if xi >= 1.0 {
            assert_eq!(*s, 1.0);
        }
    }
}

fn err_text<F: num_traits::Float>(r: Result<Values<F>, InterpError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_input_and_param() {
    let g = linear_spike();
    let (inputs, params) = linear_spike_data();
    let opts = RunOptions::default();
    let none = HashMap::new();
    let r = run(&g, &none, &params, &opts);
    assert!(matches!(r, Err(InterpError::MissingInput(ref n)) if n == "x"));
    assert_eq!(err_text(r), "missing input `x`");
    let mut some = params.clone();
    some.remove("0.b");
    let r = run(&g, &inputs, &some, &opts);
    assert!(matches!(r, Err(InterpError::MissingParam(ref n)) if n == "0.b"));
    assert_eq!(err_text(r), "missing param `0.b`");
}

#[test]
fn wrong_shape_is_reported() {
    let g = linear_spike();
    let (mut inputs, mut params) = linear_spike_data();
    let opts = RunOptions::default();
    params.insert("0.w".into(), Tensor::zeros(&[4, 3]));
    assert_eq!(
        err_text(run(&g, &inputs, &params, &opts)),
        "`0.w` has shape [4, 3], but the graph expects [3, 4]"
    );
    let (_, params) = linear_spike_data();
    inputs.insert("x".into(), Tensor::zeros(&[6]));
    let r = run(&g, &inputs, &params, &opts);
    assert_eq!(
        r.unwrap_err(),
        InterpError::BadShape {
            name: "x".into(),
            expected: vec![2, 3],
            got: vec![6],
        }
    );
    // Right shape, but the data does not fill it.
    inputs.insert(
        "x".into(),
        Tensor {
            shape: vec![2, 3],
            data: vec![0.0; 5],
        },
    );
    assert_eq!(
        err_text(run(&g, &inputs, &params, &opts)),
        "node 0 (input): `x` holds 5 elements but its shape [2, 3] needs 6"
    );
}

#[test]
fn op_errors_name_the_node() {
    // Skips the verifier on purpose: a mis-annotated node must surface as an
    // error from the interpreter, not a panic.
    let mut g = linear_spike();
    let out = g.output("out").unwrap();
    g.g[out].shape = vec![8];
    let (inputs, params) = linear_spike_data();
    assert_eq!(
        err_text(run(&g, &inputs, &params, &RunOptions::default())),
        "node 5 (spike): operands give shape [2, 4], but the node is annotated [8]"
    );
}

#[test]
fn cycles_are_refused() {
    let mut g = graph("cycle", 1);
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[2], Role::Input, None),
        &[],
    );
    let a = g.add(node(Op::Detach, &[2], Role::Forward, Some(0)), &[x]);
    let b = g.add(node(Op::Detach, &[2], Role::Forward, Some(0)), &[a]);
    g.g.add_edge(b, a, 1);
    let inputs = HashMap::from([("x".to_string(), Tensor::<f64>::zeros(&[2]))]);
    let r = run(&g, &inputs, &HashMap::new(), &RunOptions::default());
    assert_eq!(r.unwrap_err(), InterpError::Cyclic);
}

#[test]
fn removed_nodes_leave_empty_slots() {
    let mut g = linear_spike();
    let x = g.add(
        node(
            Op::Input {
                name: "unused".into(),
            },
            &[1],
            Role::Input,
            None,
        ),
        &[],
    );
    let dead = g.add(node(Op::Detach, &[1], Role::Forward, Some(0)), &[x]);
    assert_eq!(g.remove_dead(), 2);
    let (inputs, params) = linear_spike_data();
    let v = run(&g, &inputs, &params, &RunOptions::default()).unwrap();
    assert!(v.get(dead).is_none());
    assert!(v.output(&g, "out").is_some());
}

#[test]
fn long_chains_run_in_linear_time() {
    // Unrolled graphs reach ~10k nodes; a chain that long must be quick.
    let mut g = graph("chain", 1);
    let mut prev = g.add(
        node(Op::Input { name: "x".into() }, &[64], Role::Input, None),
        &[],
    );
    for _ in 0..10_000 {
        prev = g.add(
            node(Op::AddScalar(1.0), &[64], Role::Forward, Some(0)),
            &[prev],
        );
    }
    g.outputs.push(("y".into(), prev));
    verify(&g).unwrap();
    let inputs = HashMap::from([("x".to_string(), Tensor::<f32>::zeros(&[64]))]);
    let v = run(&g, &inputs, &HashMap::new(), &RunOptions::default()).unwrap();
    assert!(v
        .output(&g, "y")
        .unwrap()
        .data
        .iter()
        .all(|&y| y == 10_000.0));
}
