//! Every non-spiking op's backward rule against central finite differences
//! (f64). The objective is Σ dy ⊙ y for a fixed random `dy`, so the rule's
//! vector-Jacobian product is what is checked.

use snnc::autodiff::backward;
use snnc::interp::{self, RunOptions};
use snnc::ir::{DType, Graph, LayerInfo, MaxPoolRule, Node, NodeIndex, Op, Role};
use snnc::rng::Rng;
use snnc::tensor::Tensor;
use std::collections::HashMap;

struct Case {
    g: Graph,
    params: Vec<(NodeIndex, String, Tensor<f64>)>,
    rng: Rng,
}

impl Case {
    fn new() -> Case {
        let mut g = Graph::new("fd", 1, 1);
        g.layers.push(LayerInfo {
            path: "0".into(),
            keyword: "op".into(),
        });
        Case {
            g,
            params: Vec::new(),
            rng: Rng::new(7),
        }
    }

    /// A parameter with values uniform in [lo, hi).
    fn param(&mut self, shape: &[usize], lo: f64, hi: f64) -> NodeIndex {
        let name = format!("p{}", self.params.len());
        let n = self.g.add(
            Node {
                op: Op::Param { name: name.clone() },
                shape: shape.to_vec(),
                dtype: DType::F32,
                layer: Some(0),
                t: None,
                role: Role::Param,
            },
            &[],
        );
        let len: usize = shape.iter().product();
        let data = (0..len).map(|_| self.rng.range(lo, hi)).collect();
        self.params.push((n, name, Tensor::from_vec(shape, data)));
        n
    }

    fn op(&mut self, op: Op, args: &[NodeIndex]) -> NodeIndex {
        let shapes: Vec<&[usize]> = args.iter().map(|&a| self.g.g[a].shape.as_slice()).collect();
        let shape = op.infer_shape(&shapes).unwrap().unwrap();
        self.g.add(
            Node {
                op,
                shape,
                dtype: DType::F32,
                layer: Some(0),
                t: Some(0),
                role: Role::Forward,
            },
            args,
        )
    }

    fn objective(
        &self,
        y: NodeIndex,
        dy: &Tensor<f64>,
        params: &HashMap<String, Tensor<f64>>,
    ) -> f64 {
        let inputs = HashMap::from([("dy".to_string(), dy.clone())]);
        let v = interp::run(&self.g, &inputs, params, &RunOptions::default()).unwrap();
        v.get(y)
            .unwrap()
            .data
            .iter()
            .zip(&dy.data)
            .map(|(a, b)| a * b)
            .sum()
    }

    /// Checks autodiff's gradient of Σ dy⊙y for every parameter element.
    fn check(mut self, y: NodeIndex, what: &str) {
        let shape = self.g.g[y].shape.clone();
        let len: usize = shape.iter().product();
        let dy = Tensor::from_vec(
            &shape,
            (0..len).map(|_| self.rng.range(-1.0, 1.0)).collect(),
        );
        let seed = self.g.add(
            Node {
                op: Op::Input { name: "dy".into() },
                shape: shape.clone(),
                dtype: DType::F32,
                layer: Some(0),
                t: None,
                role: Role::Input,
            },
            &[],
        );
        let wrt: Vec<NodeIndex> = self.params.iter().map(|p| p.0).collect();
        let grads = backward(&mut self.g, y, seed, &wrt).unwrap();
        let mut values: HashMap<String, Tensor<f64>> = self
            .params
            .iter()
            .map(|(_, n, t)| (n.clone(), t.clone()))
            .collect();
        let inputs = HashMap::from([("dy".to_string(), dy.clone())]);
        let v = interp::run(&self.g, &inputs, &values, &RunOptions::default()).unwrap();
        let h = 1e-6;
        for ((_, name, _), grad) in self.params.iter().zip(&grads) {
            let grad = v
                .get(grad.expect("every parameter reaches the output"))
                .unwrap()
                .clone();
            for i in 0..grad.len() {
                let orig = values[name].data[i];
                values.get_mut(name).unwrap().data[i] = orig + h;
                let up = self.objective(y, &dy, &values);
                values.get_mut(name).unwrap().data[i] = orig - h;
                let down = self.objective(y, &dy, &values);
                values.get_mut(name).unwrap().data[i] = orig;
                let fd = (up - down) / (2.0 * h);
                assert!(
                    (fd - grad.data[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{what}: d/d{name}[{i}]: autodiff {} vs finite difference {fd}",
                    grad.data[i]
                );
            }
        }
    }
}

fn binary(op: Op) {
    let mut c = Case::new();
    let a = c.param(&[2, 3], -1.0, 1.0);
    let b = c.param(&[2, 3], -1.0, 1.0);
    let y = c.op(op.clone(), &[a, b]);
    c.check(y, op.name());
}

#[test]
fn elementwise() {
    binary(Op::Add);
    binary(Op::Sub);
    binary(Op::Mul);
    for op in [Op::Scale(-1.7), Op::AddScalar(0.3)] {
        let mut c = Case::new();
        let a = c.param(&[2, 3], -1.0, 1.0);
        let y = c.op(op.clone(), &[a]);
        c.check(y, op.name());
    }
    let mut c = Case::new();
    let xs: Vec<NodeIndex> = (0..3).map(|_| c.param(&[2, 2], -1.0, 1.0)).collect();
    let y = c.op(Op::Sum, &xs);
    c.check(y, "sum");
    let mut c = Case::new();
    let xs: Vec<NodeIndex> = (0..3).map(|_| c.param(&[2, 2], -1.0, 1.0)).collect();
    let y = c.op(Op::TimeMean, &xs);
    c.check(y, "time_mean");
    // The same operand twice: contributions must add up.
    let mut c = Case::new();
    let a = c.param(&[3], -1.0, 1.0);
    let y = c.op(Op::Mul, &[a, a]);
    c.check(y, "mul(a, a)");
}

#[test]
fn matmul_every_transpose() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut c = Case::new();
        let a = c.param(if ta { &[4, 3] } else { &[3, 4] }, -1.0, 1.0);
        let b = c.param(if tb { &[2, 4] } else { &[4, 2] }, -1.0, 1.0);
        let y = c.op(Op::MatMul { ta, tb }, &[a, b]);
        c.check(y, &format!("matmul ta={ta} tb={tb}"));
    }
}

#[test]
fn per_channel_ops() {
    for op in [Op::BiasAdd, Op::ChannelScale] {
        let mut c = Case::new();
        let x = c.param(&[2, 3, 2, 2], -1.0, 1.0);
        let b = c.param(&[3], -1.0, 1.0);
        let y = c.op(op.clone(), &[x, b]);
        c.check(y, op.name());
    }
}

#[test]
fn conv2d() {
    for (stride, padding, k) in [(1, 1, 3), (2, 0, 3), (2, 1, 2), (1, 0, 1)] {
        let mut c = Case::new();
        let x = c.param(&[2, 2, 5, 5], -1.0, 1.0);
        let w = c.param(&[3, 2, k, k], -1.0, 1.0);
        let y = c.op(Op::Conv2d { stride, padding }, &[x, w]);
        c.check(y, &format!("conv2d s{stride} p{padding} k{k}"));
    }
}

#[test]
fn pools_and_reshape() {
    for (kernel, stride, padding) in [(2, 2, 0), (3, 2, 0), (2, 1, 0), (3, 2, 1), (2, 3, 1)] {
        let mut c = Case::new();
        let x = c.param(&[1, 2, 5, 5], -1.0, 1.0);
        let op = Op::AvgPool {
            kernel,
            stride,
            padding,
        };
        let y = c.op(op, &[x]);
        c.check(y, &format!("avgpool k{kernel} s{stride} p{padding}"));
        // Random values are distinct, so the max is unique and differentiable.
        let mut c = Case::new();
        let x = c.param(&[1, 2, 5, 5], -1.0, 1.0);
        let op = Op::MaxPool {
            kernel,
            stride,
            padding,
            rule: MaxPoolRule::Masks,
        };
        let y = c.op(op, &[x]);
        c.check(y, &format!("maxpool k{kernel} s{stride} p{padding}"));
    }
    let mut c = Case::new();
    let x = c.param(&[2, 3, 2], -1.0, 1.0);
    let y = c.op(Op::Reshape { shape: vec![2, 6] }, &[x]);
    c.check(y, "reshape");
}

#[test]
fn batchnorm_pieces_and_whole() {
    let mut c = Case::new();
    let x = c.param(&[2, 3, 2], -1.0, 1.0);
    let m = c.param(&[3], -0.5, 0.5);
    let v = c.param(&[3], 0.5, 1.5);
    let y = c.op(Op::Normalize { eps: 1e-5 }, &[x, m, v]);
    c.check(y, "normalize");

    let mut c = Case::new();
    let x1 = c.param(&[2, 3, 2], -1.0, 1.0);
    let x2 = c.param(&[2, 3, 2], -1.0, 1.0);
    let y = c.op(Op::ChannelMean, &[x1, x2]);
    c.check(y, "channel_mean");

    let mut c = Case::new();
    let m = c.param(&[3], -0.5, 0.5);
    let x1 = c.param(&[2, 3, 2], -1.0, 1.0);
    let x2 = c.param(&[2, 3, 2], -1.0, 1.0);
    let y = c.op(Op::ChannelVar, &[m, x1, x2]);
    c.check(y, "channel_var");

    // Temporal batch norm over two steps, statistics included.
    let mut c = Case::new();
    let xs = [
        c.param(&[2, 3, 2, 2], -1.0, 2.0),
        c.param(&[2, 3, 2, 2], -1.0, 2.0),
    ];
    let gamma = c.param(&[3], 0.5, 1.5);
    let beta = c.param(&[3], -0.5, 0.5);
    let mean = c.op(Op::ChannelMean, &xs);
    let var = c.op(Op::ChannelVar, &[mean, xs[0], xs[1]]);
    let ys: Vec<NodeIndex> = xs
        .iter()
        .map(|&x| {
            let xh = c.op(Op::Normalize { eps: 1e-5 }, &[x, mean, var]);
            let sc = c.op(Op::ChannelScale, &[xh, gamma]);
            c.op(Op::BiasAdd, &[sc, beta])
        })
        .collect();
    let y = c.op(Op::TimeMean, &ys);
    c.check(y, "temporal batch norm");
}

#[test]
fn cross_entropy_gradient() {
    let mut d = Case::new();
    let z = d.param(&[3, 4], -2.0, 2.0);
    // Soft labels (rows summing to 1) exercise the general formula.
    let mut lab = Tensor::from_vec(&[3, 4], (0..12).map(|_| d.rng.range(0.1, 1.0)).collect());
    for row in lab.data.chunks_mut(4) {
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    let lnode = d.g.add(
        Node {
            op: Op::Input {
                name: "labels".into(),
            },
            shape: vec![3, 4],
            dtype: DType::F32,
            layer: Some(0),
            t: None,
            role: Role::Input,
        },
        &[],
    );
    let loss = d.op(Op::SoftmaxCrossEntropy, &[z, lnode]);
    let grad = d.op(Op::SoftmaxCrossEntropyGrad, &[z, lnode]);
    let params: HashMap<String, Tensor<f64>> = d
        .params
        .iter()
        .map(|(_, n, t)| (n.clone(), t.clone()))
        .collect();
    let inputs = HashMap::from([("labels".to_string(), lab)]);
    let run = |p: &HashMap<String, Tensor<f64>>| {
        interp::run(&d.g, &inputs, p, &RunOptions::default()).unwrap()
    };
    let g = run(&params).get(grad).unwrap().clone();
    let h = 1e-6;
    for i in 0..12 {
        let mut p = params.clone();
        p.get_mut("p0").unwrap().data[i] += h;
        let up = run(&p).get(loss).unwrap().data[0];
        p.get_mut("p0").unwrap().data[i] -= 2.0 * h;
        let down = run(&p).get(loss).unwrap().data[0];
        let fd = (up - down) / (2.0 * h);
        assert!(
            (fd - g.data[i]).abs() < 1e-7,
            "xent grad [{i}]: {} vs {fd}",
            g.data[i]
        );
    }
}
