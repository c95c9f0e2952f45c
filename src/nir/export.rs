//! A snnc model with its parameters as a NIR graph, for inference.
//!
//! | snnc | NIR |
//! | --- | --- |
//! | `input` | `Input` (shape without batch axis; the encoding in metadata `snnc_encoding`) |
//! | `conv2d` (+ `batchnorm`) | `Conv2d` (dilation 1, groups 1; the batch norm folded in) |
//! | `linear` (+ `batchnorm`) | `Affine` with a bias (given or from the fold), else `Linear` |
//! | `batchnorm` | folded into the conv2d/linear before it, with the running statistics |
//! | `avgpool` | `AvgPool2d` (padding 0) |
//! | `flatten` | `Flatten` (start_dim 0, end_dim −1, input_type the C×H×W shape) |
//! | `dropout` | nothing (the identity at inference) |
//! | `lif` (λ < 1) | `LIF` |
//! | `if` (λ = 1) | `IF` |
//! | `residual` | both branches' ends connect to the next node, which sums its inputs; an explicit `Scale` of ones (`sum_…`) takes the sum where no single next node exists |
//! | the readout | `Output`, fed every step; snnc's readout is its mean over T |
//!
//! **Neurons.** snnc's neuron is discrete: `u_t = λ·v_{t−1} + I_t`, spike
//! when `u_t ≥ θ`. NIR's LIF is continuous: `τ·dv/dt = (v_leak − v) + R·I`,
//! spike when `v > v_threshold`, then `v = v_reset`. Forward Euler at step
//! `dt` gives `v_t = (1 − dt/τ)·v_{t−1} + (dt/τ)·R·I_t + (dt/τ)·v_leak`, which
//! is snnc's neuron when
//!
//! ```text
//! τ = dt / (1 − λ)     R = τ / dt = 1 / (1 − λ)     v_leak = 0     v_threshold = θ
//! ```
//!
//! and IF (`dv/dt = R·I`) when `R = 1/dt`. λ = 0 gives τ = dt, R = 1.
//!
//! What NIR cannot say, and what snnc writes instead:
//! - **Soft reset** (`v = u − θ·s`, snnc's default): NIR resets to
//!   `v_reset`. The node gets `v_reset = 0` and metadata `snnc_reset =
//!   subtract`; a reader that ignores the metadata simulates a reset to 0.
//!   Hard reset maps exactly (`v_reset`).
//! - **Threshold ties**: snnc fires at `u = θ`, NIR at `v > θ` only.
//! - **Training-only choices** (surrogate, α, `detach_reset`) have no NIR
//!   field; they go to metadata (`snnc_surrogate`, `snnc_alpha`,
//!   `snnc_detach_reset`) so that `snnc import` restores them.
//! - **Max pooling**, **Poisson encoding** and a batch norm that does not
//!   follow a conv2d/linear layer: max pooling and that batch norm are
//!   errors; Poisson encoding is recorded in metadata (the graph takes the
//!   encoded spikes).

use super::{Arr, NirError, NirGraph, Node, Padding, Prim};
use crate::init::Params;
use crate::model::{Encoding, Layer, LayerKind, Model, Neuron, NeuronKind, Reset};
use crate::shape::{Analysis, LayerShape};
use std::collections::HashMap;

/// The graph and what the export changed or could not express, one line
/// each (printed by `snnc export`).
#[derive(Debug)]
pub struct Exported {
    pub graph: NirGraph,
    pub notes: Vec<String>,
}

/// Node name of a layer: its keyword and path, `conv2d_0`, `lif_3_main_2`.
pub fn node_name(keyword: &str, path: &str) -> String {
    format!("{keyword}_{}", path.replace('.', "_"))
}

struct Ex<'a> {
    model: &'a Model,
    shapes: HashMap<&'a str, &'a LayerShape>,
    params: &'a Params,
    dt: f64,
    g: NirGraph,
    notes: Vec<String>,
    soft_noted: bool,
}

pub fn export(model: &Model, a: &Analysis, params: &Params, dt: f64) -> Result<Exported, NirError> {
    if !(dt.is_finite() && dt > 0.0) {
        return Err(NirError::BadDt(dt));
    }
    let mut ex = Ex {
        model,
        shapes: a.layers.iter().map(|l| (l.path.as_str(), l)).collect(),
        params,
        dt,
        g: NirGraph::default(),
        notes: Vec::new(),
        soft_noted: false,
    };
    let enc = match model.input.encoding {
        Encoding::Direct => "direct".to_string(),
        Encoding::Events => "events".to_string(),
        Encoding::Poisson { seed } => {
            ex.notes.push(
                "input: Poisson encoding is not part of a NIR graph; the graph takes the \
                 encoded 0/1 spikes (metadata snnc_encoding = poisson)"
                    .into(),
            );
            format!("poisson seed={seed}")
        }
    };
    ex.g.nodes.insert(
        "input".into(),
        Node::new(Prim::Input {
            shape: a.input.clone(),
        })
        .meta("snnc_encoding", enc),
    );
    let out = ex.list(&model.layers, "", vec!["input".to_string()])?;
    ex.g.nodes.insert(
        "output".into(),
        Node::new(Prim::Output {
            shape: a.output.clone(),
        })
        .meta(
            "snnc_readout",
            "the mean over the T steps of this output is snnc's readout",
        ),
    );
    for s in out {
        ex.g.edges.push((s, "output".into()));
    }
    ex.g.metadata
        .insert("snnc_model".into(), model.name.clone());
    ex.g.metadata.insert("snnc_dt".into(), format!("{dt:?}"));
    Ok(Exported {
        graph: ex.g,
        notes: ex.notes,
    })
}

impl Ex<'_> {
    fn param(&self, name: &str) -> Result<&crate::tensor::Tensor<f64>, NirError> {
        self.params
            .get(name)
            .ok_or_else(|| NirError::MissingParam(name.to_string()))
    }

    fn add(&mut self, name: String, node: Node, from: &[String]) -> Vec<String> {
        for s in from {
            self.g.edges.push((s.clone(), name.clone()));
        }
        self.g.nodes.insert(name.clone(), node);
        vec![name]
    }

    /// Folds the batch norm at `bn_path` into (weight, bias) of `c_out`
    /// output channels: W'_c = W_c·s_c, b'_c = (b_c − μ_c)·s_c + β_c with
    /// s_c = γ_c / √(σ²_c + ε).
    fn fold(&self, bn_path: &str, eps: f64, w: &mut Arr, b: &mut Arr) -> Result<(), NirError> {
        let p = |s: &str| self.param(&format!("{bn_path}.{s}"));
        let (gamma, beta, mean, var) = (
            p("gamma")?,
            p("beta")?,
            p("running_mean")?,
            p("running_var")?,
        );
        let c = b.data.len();
        let per = w.data.len() / c;
        for ch in 0..c {
            let s = gamma.data[ch] / (var.data[ch] + eps).sqrt();
            for x in &mut w.data[ch * per..(ch + 1) * per] {
                *x *= s;
            }
            b.data[ch] = (b.data[ch] - mean.data[ch]) * s + beta.data[ch];
        }
        Ok(())
    }

    fn list(
        &mut self,
        list: &[Layer],
        prefix: &str,
        mut cur: Vec<String>,
    ) -> Result<Vec<String>, NirError> {
        let mut i = 0;
        while i < list.len() {
            let path = format!("{prefix}{i}");
            let ls = *self
                .shapes
                .get(path.as_str())
                .ok_or_else(|| NirError::Internal(format!("no shape for layer {path}")))?;
            let name = node_name(ls.keyword, &path);
            let next_bn = match list.get(i + 1).map(|l| &l.kind) {
                Some(LayerKind::BatchNorm { eps, .. }) => {
                    Some((format!("{prefix}{}", i + 1), *eps))
                }
                _ => None,
            };
            match &list[i].kind {
                LayerKind::Conv2d {
                    out,
                    kernel,
                    stride,
                    padding,
                    bias,
                } => {
                    let w = self.param(&format!("{path}.weight"))?;
                    let mut weight = Arr::new(&w.shape, w.data.clone());
                    let mut b = if *bias {
                        Arr::new(&[*out], self.param(&format!("{path}.bias"))?.data.clone())
                    } else {
                        Arr::full(&[*out], 0.0)
                    };
                    if let Some((bn, eps)) = &next_bn {
                        self.fold(bn, *eps, &mut weight, &mut b)?;
                        self.notes.push(format!(
                            "batchnorm {bn} folded into conv2d {path} (running statistics: inference only)"
                        ));
                        i += 1;
                    }
                    let node = Node::new(Prim::Conv2d {
                        input_shape: Some([ls.input[1], ls.input[2]]),
                        weight,
                        stride: [*stride; 2],
                        padding: Padding::Explicit([*padding; 2]),
                        dilation: [1, 1],
                        groups: 1,
                        bias: b,
                    });
                    let _ = kernel;
                    cur = self.add(name, node, &cur);
                }
                LayerKind::Linear { out, bias } => {
                    let w = self.param(&format!("{path}.weight"))?;
                    let mut weight = Arr::new(&w.shape, w.data.clone());
                    let mut b = if *bias {
                        Some(Arr::new(
                            &[*out],
                            self.param(&format!("{path}.bias"))?.data.clone(),
                        ))
                    } else {
                        None
                    };
                    if let Some((bn, eps)) = &next_bn {
                        let mut bb = b.unwrap_or_else(|| Arr::full(&[*out], 0.0));
                        self.fold(bn, *eps, &mut weight, &mut bb)?;
                        b = Some(bb);
                        self.notes.push(format!(
                            "batchnorm {bn} folded into linear {path} (running statistics: inference only)"
                        ));
                        i += 1;
                    }
                    let prim = match b {
                        Some(bias) => Prim::Affine { weight, bias },
                        None => Prim::Linear { weight },
                    };
                    cur = self.add(name, Node::new(prim), &cur);
                }
                LayerKind::BatchNorm { .. } => {
                    return Err(NirError::Unsupported {
                        path,
                        keyword: "batchnorm",
                        model: self.model.name.clone(),
                        why: "NIR has no batch norm, and snnc folds one only into the conv2d or \
                              linear layer right before it",
                    })
                }
                LayerKind::AvgPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let node = Node::new(Prim::AvgPool2d {
                        kernel: [*kernel; 2],
                        stride: [*stride; 2],
                        padding: [*padding; 2],
                    });
                    cur = self.add(name, node, &cur);
                }
                LayerKind::MaxPool { .. } => {
                    return Err(NirError::Unsupported {
                        path,
                        keyword: "maxpool",
                        model: self.model.name.clone(),
                        why: "NIR 1.0 has no max pooling (its pooling primitives are AvgPool2d \
                              and SumPool2d)",
                    })
                }
                LayerKind::Flatten => {
                    let node = Node::new(Prim::Flatten {
                        input_type: Some(ls.input.clone()),
                        start_dim: 0,
                        end_dim: -1,
                    });
                    cur = self.add(name, node, &cur);
                }
                LayerKind::Dropout { .. } => {
                    self.notes.push(format!(
                        "dropout {path} left out (the identity at inference)"
                    ));
                }
                LayerKind::Neuron { kind, opts } => {
                    let n = Neuron::resolve(*kind, opts, &self.model.neuron);
                    let node = self.neuron(&path, *kind, &n, &ls.output);
                    cur = self.add(name, node, &cur);
                }
                LayerKind::Residual { main, shortcut } => {
                    if main.is_empty() && shortcut.is_empty() {
                        return Err(NirError::Unsupported {
                            path,
                            keyword: "residual",
                            model: self.model.name.clone(),
                            why: "both branches are the identity (x + x); NIR edges cannot add a \
                                  value to itself",
                        });
                    }
                    let a = self.list(main, &format!("{path}.main."), cur.clone())?;
                    let b = self.list(shortcut, &format!("{path}.shortcut."), cur.clone())?;
                    let mut sum = a;
                    sum.extend(b);
                    let next_takes_sum = matches!(
                        list.get(i + 1).map(|l| &l.kind),
                        Some(k) if !matches!(k, LayerKind::Residual { .. } | LayerKind::Dropout { .. })
                    );
                    cur = if next_takes_sum {
                        sum
                    } else {
                        let node = Node::new(Prim::Scale {
                            scale: Arr::full(&ls.output, 1.0),
                        })
                        .meta(
                            "snnc_role",
                            format!("the sum of residual block {path}'s branches"),
                        );
                        self.add(format!("sum_{}", path.replace('.', "_")), node, &sum)
                    };
                }
            }
            i += 1;
        }
        Ok(cur)
    }

    fn neuron(&mut self, path: &str, kind: NeuronKind, n: &Neuron, shape: &[usize]) -> Node {
        let dt = self.dt;
        let full = |v: f64| Arr::full(shape, v);
        let v_reset = match n.reset {
            Reset::Hard => n.v_reset,
            Reset::Soft => 0.0,
        };
        let prim = if kind == NeuronKind::If || n.lambda == 1.0 {
            Prim::If {
                r: full(1.0 / dt),
                v_threshold: full(n.theta),
                v_reset: full(v_reset),
            }
        } else {
            let tau = dt / (1.0 - n.lambda);
            Prim::Lif {
                tau: full(tau),
                r: full(tau / dt),
                v_leak: full(0.0),
                v_threshold: full(n.theta),
                v_reset: full(v_reset),
            }
        };
        if n.reset == Reset::Soft && !self.soft_noted {
            self.soft_noted = true;
            self.notes.push(format!(
                "{} {path} (and every soft-reset neuron): NIR resets to v_reset; snnc's soft \
                 reset (v = u − θ·s) is written as v_reset = 0 with metadata snnc_reset = \
                 subtract, which NIR readers that ignore metadata simulate as a reset to 0",
                if kind == NeuronKind::If { "if" } else { "lif" }
            ));
        }
        Node::new(prim)
            .meta("snnc_dt", format!("{dt:?}"))
            .meta("snnc_lambda", format!("{}", n.lambda))
            .meta(
                "snnc_reset",
                match n.reset {
                    Reset::Soft => "subtract",
                    Reset::Hard => "to_v_reset",
                },
            )
            .meta("snnc_detach_reset", n.detach_reset)
            .meta("snnc_surrogate", n.surrogate.kind.name())
            .meta("snnc_alpha", format!("{}", n.surrogate.alpha))
    }
}
