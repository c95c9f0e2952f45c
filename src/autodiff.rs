//! Reverse-mode autodiff over the unrolled graph: BPTT as a graph.
//!
//! `autodiff` appends the cross-entropy loss on the T-mean readout and its
//! backward to the forward graph, and exposes one gradient output per
//! parameter (`grad:NAME`). The backward is built from the same primitive
//! ops, so it can be printed, interpreted and rewritten like the forward.
//!
//! Annotations: a node a rule creates carries the layer and timestep of the
//! forward node whose rule it is (the backward of step t happens "at" t);
//! a gradient accumulated for node m carries m's layer and step. Rules of
//! time reductions (`time_mean`, batch-norm statistics) give each
//! operand's contribution that operand's step.

use crate::ir::{self, DType, Graph, LayerId, Node, NodeIndex, Op, Role};
use petgraph::Direction;
use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("the graph has no `{0}` output")]
    NoOutput(&'static str),
    #[error("parameter `{0}` does not affect the loss")]
    Unused(String),
    #[error("cannot differentiate `{op}` (node {node})")]
    Unsupported { op: String, node: usize },
    #[error("internal error: {0}")]
    Verify(#[from] ir::VerifyError),
}

/// Autodiff as a pass: the forward graph becomes the training graph.
pub struct Autodiff;

impl crate::passes::Pass for Autodiff {
    fn name(&self) -> &'static str {
        "autodiff"
    }
    fn about(&self) -> &'static str {
        "forward + cross-entropy loss + BPTT backward, one `grad:NAME` output per parameter"
    }
    fn run(&self, p: &mut crate::passes::Program) -> Result<(), crate::passes::PassError> {
        p.graph =
            autodiff(&p.graph).map_err(|e| crate::passes::PassError::failed("autodiff", e))?;
        Ok(())
    }
}

/// Name of the gradient output of parameter `name`.
pub fn grad_name(name: &str) -> String {
    format!("grad:{name}")
}

/// The training graph: forward, loss, backward, and `grad:NAME` outputs.
/// Needs one-hot labels as input `labels` of the logits' shape.
pub fn autodiff(fwd: &Graph) -> Result<Graph, AutodiffError> {
    let mut g = fwd.clone();
    let logits = g
        .output("logits")
        .ok_or(AutodiffError::NoOutput("logits"))?;
    let readout = g.g[logits].layer;
    let shape = g.g[logits].shape.clone();
    let node = |op: &Op, shape: &[usize], role| Node {
        op: op.clone(),
        shape: shape.to_vec(),
        dtype: DType::F32,
        layer: readout,
        t: None,
        role,
    };
    let labels = g.add(
        Node {
            layer: Some(0),
            ..node(
                &Op::Input {
                    name: "labels".into(),
                },
                &shape,
                Role::Input,
            )
        },
        &[],
    );
    let loss = g.add(
        node(&Op::SoftmaxCrossEntropy, &[1], Role::Output),
        &[logits, labels],
    );
    let seed = g.add(
        node(&Op::SoftmaxCrossEntropyGrad, &shape, Role::Backward),
        &[logits, labels],
    );
    g.outputs.push(("loss".into(), loss));
    let params: Vec<NodeIndex> = {
        let order = g.topo_order().expect("forward graphs are acyclic");
        order
            .into_iter()
            .filter(|&n| matches!(g.g[n].op, Op::Param { .. }))
            .collect()
    };
    let grads = backward(&mut g, logits, seed, &params)?;
    for (p, d) in params.iter().zip(grads) {
        let Op::Param { name } = &g.g[*p].op else {
            unreachable!()
        };
        let name = name.clone();
        let d = d.ok_or_else(|| AutodiffError::Unused(name.clone()))?;
        g.outputs.push((grad_name(&name), d));
    }
    ir::verify(&g)?;
    Ok(g)
}

/// Appends the backward of `of`, whose gradient is the node `seed`, and
/// returns the gradient of each node in `wrt` (`None` where `of` does not
/// depend on it). Gradients of `Param` nodes are `Gradient`-role time sums.
pub fn backward(
    g: &mut Graph,
    of: NodeIndex,
    seed: NodeIndex,
    wrt: &[NodeIndex],
) -> Result<Vec<Option<NodeIndex>>, AutodiffError> {
    let order = g.topo_order().expect("graphs are acyclic");
    let active = active_nodes(g, of, wrt, &order);
    let mut contribs: HashMap<NodeIndex, Vec<NodeIndex>> = HashMap::from([(of, vec![seed])]);
    let mut grads: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut info = g.ad.take().unwrap_or_default();
    let mut b = Builder {
        g,
        rsqrt: HashMap::new(),
    };
    for &n in order.iter().rev() {
        let Some(cs) = contribs.remove(&n) else {
            continue;
        };
        let is_param = matches!(b.g.g[n].op, Op::Param { .. });
        // A lone contribution is the gradient itself, unless it was made at
        // another step than n's (a time reduction with T = 1): then a
        // one-operand sum gives the gradient n's own step.
        let d = if cs.len() == 1 && !is_param && b.g.g[cs[0]].t == b.g.g[n].t {
            cs[0]
        } else {
            let node = b.g.g[n].clone();
            let role = if is_param {
                Role::Gradient
            } else {
                Role::Backward
            };
            b.add(Op::Sum, node.layer, node.t, role, &cs)
        };
        grads.insert(n, d);
        info.grad_of.insert(n, d);
        if b.g.g[n].op.is_leaf() {
            continue;
        }
        let layer = b.g.g[n].layer;
        for (m, c) in b.rule(n, d)? {
            if active.contains(&m) {
                contribs.entry(m).or_default().push(c);
                info.contributions.push((layer, m, c));
            }
        }
    }
    b.g.ad = Some(info);
    Ok(wrt.iter().map(|w| grads.get(w).copied()).collect())
}

/// Nodes that lie on a path from some `wrt` node to `of` along which a
/// gradient can flow (not through `detach`).
fn active_nodes(
    g: &Graph,
    of: NodeIndex,
    wrt: &[NodeIndex],
    order: &[NodeIndex],
) -> HashSet<NodeIndex> {
    let mut from_wrt: HashSet<NodeIndex> = wrt.iter().copied().collect();
    for &n in order {
        if from_wrt.contains(&n) || matches!(g.g[n].op, Op::Detach) {
            continue;
        }
        if g.g
            .neighbors_directed(n, Direction::Incoming)
            .any(|o| from_wrt.contains(&o))
        {
            from_wrt.insert(n);
        }
    }
    let mut to_of = HashSet::from([of]);
    let mut stack = vec![of];
    while let Some(n) = stack.pop() {
        if matches!(g.g[n].op, Op::Detach) {
            continue;
        }
        for o in g.g.neighbors_directed(n, Direction::Incoming) {
            if to_of.insert(o) {
                stack.push(o);
            }
        }
    }
    from_wrt.intersection(&to_of).copied().collect()
}

struct Builder<'a> {
    g: &'a mut Graph,
    /// `rsqrt(var + eps)` per variance node, built once for all steps.
    rsqrt: HashMap<NodeIndex, NodeIndex>,
}

impl Builder<'_> {
    fn add(
        &mut self,
        op: Op,
        layer: Option<LayerId>,
        t: Option<usize>,
        role: Role,
        args: &[NodeIndex],
    ) -> NodeIndex {
        self.g.add_op("autodiff", op, layer, t, role, args)
    }

    /// The contributions of node `n`'s rule, given its gradient `d`:
    /// `(operand, gradient contribution)` pairs.
    fn rule(
        &mut self,
        n: NodeIndex,
        d: NodeIndex,
    ) -> Result<Vec<(NodeIndex, NodeIndex)>, AutodiffError> {
        let node = self.g.g[n].clone();
        let args = self.g.operands(n);
        let (layer, t) = (node.layer, node.t);
        let at = |b: &mut Self, op: &Op, xs: &[NodeIndex]| {
            b.add(op.clone(), layer, t, Role::Backward, xs)
        };
        let a = |i: usize| args[i];
        Ok(match &node.op {
            Op::Add => vec![(a(0), d), (a(1), d)],
            Op::Sum => args.iter().map(|&x| (x, d)).collect(),
            Op::Sub => {
                let neg = at(self, &Op::Scale(-1.0), &[d]);
                vec![(a(0), d), (a(1), neg)]
            }
            Op::Mul => {
                let d0 = at(self, &Op::Mul, &[d, a(1)]);
                let d1 = at(self, &Op::Mul, &[d, a(0)]);
                vec![(a(0), d0), (a(1), d1)]
            }
            Op::Scale(c) => vec![(a(0), at(self, &Op::Scale(*c), &[d]))],
            Op::AddScalar(_) => vec![(a(0), d)],
            Op::Detach => vec![],
            Op::Spike { theta, surrogate } => {
                let sg = at(
                    self,
                    &Op::SurrogateGrad {
                        theta: *theta,
                        surrogate: *surrogate,
                    },
                    &[a(0)],
                );
                vec![(a(0), at(self, &Op::Mul, &[d, sg]))]
            }
            Op::MatMul { ta, tb } => {
                // C = op(A)·op(B): dA = δ·op(B)ᵀ, dB = op(A)ᵀ·δ, each
                // transposed back when the operand was used transposed.
                let da = if *ta {
                    at(self, &Op::MatMul { ta: *tb, tb: true }, &[a(1), d])
                } else {
                    at(
                        self,
                        &Op::MatMul {
                            ta: false,
                            tb: !*tb,
                        },
                        &[d, a(1)],
                    )
                };
                let db = if *tb {
                    at(self, &Op::MatMul { ta: true, tb: *ta }, &[d, a(0)])
                } else {
                    at(
                        self,
                        &Op::MatMul {
                            ta: !*ta,
                            tb: false,
                        },
                        &[a(0), d],
                    )
                };
                vec![(a(0), da), (a(1), db)]
            }
            Op::BiasAdd => vec![(a(0), d), (a(1), at(self, &Op::ChannelSum, &[d]))],
            Op::ChannelScale => {
                let dx = at(self, &Op::ChannelScale, &[d, a(1)]);
                let prod = at(self, &Op::Mul, &[d, a(0)]);
                vec![(a(0), dx), (a(1), at(self, &Op::ChannelSum, &[prod]))]
            }
            Op::Conv2d { stride, padding } => {
                let x = &self.g.g[a(0)].shape;
                let (in_h, in_w) = (x[2], x[3]);
                let kernel = self.g.g[a(1)].shape[2];
                let dx = at(
                    self,
                    &Op::Conv2dGradInput {
                        stride: *stride,
                        padding: *padding,
                        in_h,
                        in_w,
                    },
                    &[d, a(1)],
                );
                let dw = at(
                    self,
                    &Op::Conv2dGradWeight {
                        stride: *stride,
                        padding: *padding,
                        kernel,
                    },
                    &[a(0), d],
                );
                vec![(a(0), dx), (a(1), dw)]
            }
            &Op::AvgPool {
                kernel,
                stride,
                padding,
            } => {
                let x = &self.g.g[a(0)].shape;
                let (in_h, in_w) = (x[2], x[3]);
                let op = Op::AvgPoolGrad {
                    kernel,
                    stride,
                    padding,
                    in_h,
                    in_w,
                };
                vec![(a(0), at(self, &op, &[d]))]
            }
            &Op::MaxPool {
                kernel,
                stride,
                padding,
                rule,
            } => {
                let op = Op::MaxPoolGrad {
                    kernel,
                    stride,
                    padding,
                    rule,
                };
                vec![(a(0), at(self, &op, &[a(0), d]))]
            }
            Op::Reshape { .. } => {
                let shape = self.g.g[a(0)].shape.clone();
                vec![(a(0), at(self, &Op::Reshape { shape }, &[d]))]
            }
            Op::TimeMean => {
                let each = at(self, &Op::Scale(1.0 / args.len() as f64), &[d]);
                args.iter().map(|&x| (x, each)).collect()
            }
            Op::Normalize { eps } => {
                // x̂ = (x − m)·r with r = (v + ε)^(−1/2):
                // dx = δ·r, dm = −r·Σδ, dv = −½·r²·Σ(δ·x̂).
                let r = match self.rsqrt.get(&a(2)) {
                    Some(&r) => r,
                    None => {
                        let vt = self.g.g[a(2)].t;
                        let r =
                            self.add(Op::Rsqrt { eps: *eps }, layer, vt, Role::Backward, &[a(2)]);
                        self.rsqrt.insert(a(2), r);
                        r
                    }
                };
                let dx = at(self, &Op::ChannelScale, &[d, r]);
                let sd = at(self, &Op::ChannelSum, &[d]);
                let rsd = at(self, &Op::Mul, &[sd, r]);
                let dm = at(self, &Op::Scale(-1.0), &[rsd]);
                let dxh = at(self, &Op::Mul, &[d, n]);
                let sdxh = at(self, &Op::ChannelSum, &[dxh]);
                let r2 = at(self, &Op::Mul, &[r, r]);
                let prod = at(self, &Op::Mul, &[sdxh, r2]);
                let dv = at(self, &Op::Scale(-0.5), &[prod]);
                vec![(a(0), dx), (a(1), dm), (a(2), dv)]
            }
            Op::ChannelMean => {
                let per = self.channel_count(&args);
                let scaled = at(self, &Op::Scale(1.0 / per), &[d]);
                args.iter()
                    .map(|&x| {
                        let shape = self.g.g[x].shape.clone();
                        let xt = self.g.g[x].t;
                        (
                            x,
                            self.add(
                                Op::ChannelBroadcast { shape },
                                layer,
                                xt,
                                Role::Backward,
                                &[scaled],
                            ),
                        )
                    })
                    .collect()
            }
            Op::ChannelVar => {
                // var = (1/N)·Σ (x − m)²: dx = (2/N)·δ·(x − m) and
                // dm = −(2/N)·δ·Σ(x − m). When m is the channel mean of the
                // same operands (batch norm), Σ(x − m) = 0 exactly and dm is
                // left out: a term that is zero but would make the backward
                // read every step's centred input.
                let (m, xs) = (args[0], &args[1..]);
                let m_is_mean = self.g.g[m].op == Op::ChannelMean && self.g.operands(m) == xs;
                let per = self.channel_count(xs);
                let scaled = at(self, &Op::Scale(2.0 / per), &[d]);
                let mut out = Vec::new();
                let mut centred_sums = Vec::new();
                let mut sqrt_var = None;
                for &x in xs {
                    let shape = self.g.g[x].shape.clone();
                    let xt = self.g.g[x].t;
                    // Batch norm: x − m = x̂·sqrt(var + ε), written with the
                    // normalised value the backward reads anyway, so that one
                    // forward tensor per step (or one mean, in rate mode)
                    // serves both terms of the batch-norm gradient.
                    let xhat = self.g.users(x).into_iter().find(|&u| {
                        matches!(self.g.g[u].op, Op::Normalize { .. })
                            && self.g.operands(u) == [x, m, n]
                    });
                    let (c, dx) = match (m_is_mean, xhat) {
                        (true, Some(xh)) => {
                            // dx = x̂ · (sqrt(var + ε)·(2/N)·δ): one
                            // per-channel factor, so the only forward value
                            // read is x̂ itself.
                            let f = match sqrt_var {
                                Some(f) => f,
                                None => {
                                    let Op::Normalize { eps } = self.g.g[xh].op else {
                                        unreachable!()
                                    };
                                    let shifted = at(self, &Op::AddScalar(eps), &[n]);
                                    let r = at(self, &Op::Rsqrt { eps }, &[n]);
                                    let s = at(self, &Op::Mul, &[shifted, r]);
                                    let f = at(self, &Op::Mul, &[s, scaled]);
                                    sqrt_var = Some(f);
                                    f
                                }
                            };
                            (
                                None,
                                self.add(Op::ChannelScale, layer, xt, Role::Backward, &[xh, f]),
                            )
                        }
                        _ => {
                            let mb = self.add(
                                Op::ChannelBroadcast { shape },
                                layer,
                                None,
                                Role::Backward,
                                &[m],
                            );
                            let c = self.add(Op::Sub, layer, xt, Role::Backward, &[x, mb]);
                            (
                                Some(c),
                                self.add(Op::ChannelScale, layer, xt, Role::Backward, &[c, scaled]),
                            )
                        }
                    };
                    if let (false, Some(c)) = (m_is_mean, c) {
                        centred_sums.push(self.add(
                            Op::ChannelSum,
                            layer,
                            xt,
                            Role::Backward,
                            &[c],
                        ));
                    }
                    out.push((x, dx));
                }
                if !m_is_mean {
                    let total = at(self, &Op::Sum, &centred_sums);
                    let prod = at(self, &Op::Mul, &[scaled, total]);
                    out.push((m, at(self, &Op::Scale(-1.0), &[prod])));
                }
                out
            }
            op @ (Op::Input { .. }
            | Op::Param { .. }
            | Op::DropoutMask { .. }
            | Op::Poisson { .. }
            | Op::TimeSlice { .. }) => {
                // Inputs and encoders carry no gradient to anything trainable.
                let _ = op;
                vec![]
            }
            op => {
                return Err(AutodiffError::Unsupported {
                    op: op.name().into(),
                    node: n.index(),
                })
            }
        })
    }

    /// Elements per channel summed over all operands: the N of a batch-norm
    /// statistic.
    fn channel_count(&self, xs: &[NodeIndex]) -> f64 {
        let s = &self.g.g[xs[0]].shape;
        (xs.len() * s[0] * s[2..].iter().product::<usize>()) as f64
    }
}
