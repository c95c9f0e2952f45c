//! `unroll(model, T)`: the time-unrolled forward graph.
//!
//! T copies of every per-step op; membrane state edges from step t−1 to t;
//! parameters shared by all steps; every node annotated with layer,
//! timestep and role. The LIF neuron is spelled out in primitives so that
//! autodiff and the rate pass see each term:
//!
//! ```text
//! u_t = λ·v_{t−1} + I_t                       scale, add   (u_0 = I_0)
//! s_t = H(u_t − θ)                            spike
//! v_t = u_t − θ·s'_t                          soft reset: scale, sub
//! v_t = u_t − s'_t·(u_t − v_r)                hard reset: add_scalar, mul, sub
//! s'_t = detach(s_t) when the reset is detached, else s_t
//! ```
//! `v` of the last step feeds nothing and is not built. Batch norm is
//! `bias_add(channel_scale(normalize(x, mean, var), γ), β)` with the mean and
//! variance taken over every step (temporal BN).

use crate::ir::{self, DType, Graph, LayerInfo, Node, Op, Role};
use crate::model::{Encoding, Layer, LayerKind, Model, Neuron, Reset};
use crate::rng::mix64;
use crate::shape::{self, Analysis};
use petgraph::stable_graph::NodeIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Batch norm uses batch statistics, dropout masks are drawn.
    Train,
    /// Batch norm uses running statistics, dropout is the identity.
    Eval,
}

#[derive(Clone, Copy, Debug)]
pub struct UnrollConfig {
    pub steps: usize,
    pub batch: usize,
    pub phase: Phase,
}

#[derive(Debug, thiserror::Error)]
pub enum UnrollError {
    #[error("{0}")]
    Shape(#[from] shape::ShapeError),
    #[error("T must be at least 1")]
    NoSteps,
    #[error("batch size must be at least 1")]
    NoBatch,
    /// A value's batched size does not fit: the batch (or, for event
    /// input, batch × T) times a per-sample size overflows.
    #[error("{0}")]
    TooLarge(String),
    /// The unrolled graph would not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::passes::mem::MemoryError),
    #[error("internal error: {0}")]
    Verify(#[from] ir::VerifyError),
}

/// Every value's batched element count (the per-sample counts are checked
/// by shape analysis) must be representable: checked products, no
/// wrapping.
fn check_batched(model: &Model, a: &Analysis, cfg: &UnrollConfig) -> Result<(), UnrollError> {
    let batch = cfg.batch;
    let fits = |per_sample: &[usize], times: usize| {
        shape::elements(per_sample)
            .and_then(|n| n.checked_mul(times))
            .is_some_and(|n| n <= shape::MAX_ELEMENTS)
    };
    let input_times = match model.input.encoding {
        Encoding::Events => batch.checked_mul(cfg.steps),
        _ => Some(batch),
    };
    if !input_times.is_some_and(|k| fits(&a.input, k)) {
        let by = match model.input.encoding {
            Encoding::Events => format!("batch {batch} × T {}", cfg.steps),
            _ => format!("batch {batch}"),
        };
        return Err(UnrollError::TooLarge(format!(
            "{by} × input {} is too many elements for one tensor (at most 2^60)",
            shape::dims(&a.input)
        )));
    }
    for l in &a.layers {
        if !fits(&l.output, batch) {
            return Err(UnrollError::TooLarge(format!(
                "layer {} `{}`: batch {batch} × output {} is too many elements for one \
                 tensor (at most 2^60)",
                l.path,
                l.keyword,
                shape::dims(&l.output)
            )));
        }
    }
    Ok(())
}

/// A generous estimate of the bytes one unrolled node costs through the
/// pipeline (node, shape, edges, the backward autodiff adds for it).
const GRAPH_BYTES_PER_NODE: u64 = 1024;

/// Unrolls for training with batch size 1.
pub fn unroll(model: &Model, steps: usize) -> Result<Graph, UnrollError> {
    unroll_with(
        model,
        &UnrollConfig {
            steps,
            batch: 1,
            phase: Phase::Train,
        },
    )
}

pub fn unroll_with(model: &Model, cfg: &UnrollConfig) -> Result<Graph, UnrollError> {
    if cfg.steps == 0 {
        return Err(UnrollError::NoSteps);
    }
    if cfg.batch == 0 {
        return Err(UnrollError::NoBatch);
    }
    let analysis = shape::analyze(model)?;
    check_batched(model, &analysis, cfg)?;
    // The graph itself: T copies of each layer's few nodes, before autodiff
    // roughly triples them. An absurd T is refused here, with the memory
    // check every allocating command uses, instead of aborting in a
    // `Vec` allocation.
    let nodes = cfg
        .steps
        .saturating_mul(analysis.layers.len().saturating_mul(8).saturating_add(4));
    crate::passes::mem::ensure_fits(
        &format!("the graph unrolled over T = {}", cfg.steps),
        (nodes as u64).saturating_mul(GRAPH_BYTES_PER_NODE),
        crate::passes::mem::Memory::Host,
    )?;
    let mut u = Unroller {
        g: Graph::new(&model.name, cfg.steps, cfg.batch),
        cfg: *cfg,
        model,
        analysis: &analysis,
        next_shape: 0,
    };
    u.g.layers.push(LayerInfo {
        path: "input".into(),
        keyword: "input".into(),
    });
    let x = u.input();
    let out = u.layers(&model.layers, &x)?;
    let readout = u.layer_info("readout", "readout");
    let shape = u.g.node(out[0]).shape.clone();
    let logits = u.g.add(
        Node {
            op: Op::TimeMean,
            shape,
            dtype: DType::F32,
            layer: Some(readout),
            t: None,
            role: Role::Output,
        },
        &out,
    );
    u.g.outputs.push(("logits".into(), logits));
    ir::verify(&u.g)?;
    Ok(u.g)
}

struct Unroller<'a> {
    g: Graph,
    cfg: UnrollConfig,
    model: &'a Model,
    analysis: &'a Analysis,
    /// Index into `analysis.layers`, advanced in the same source order.
    next_shape: usize,
}

impl Unroller<'_> {
    fn layer_info(&mut self, path: &str, keyword: &str) -> usize {
        self.g.layers.push(LayerInfo {
            path: path.into(),
            keyword: keyword.into(),
        });
        self.g.layers.len() - 1
    }

    fn batched(&self, s: &[usize]) -> Vec<usize> {
        let mut v = vec![self.cfg.batch];
        v.extend_from_slice(s);
        v
    }

    fn node(
        &mut self,
        op: Op,
        shape: Vec<usize>,
        layer: usize,
        t: Option<usize>,
        role: Role,
        args: &[NodeIndex],
    ) -> NodeIndex {
        self.g.add(
            Node {
                op,
                shape,
                dtype: DType::F32,
                layer: Some(layer),
                t,
                role,
            },
            args,
        )
    }

    /// A per-step op applied to every step's value; steps whose operand is
    /// shared (time-constant) still get their own node: the unrolled graph
    /// is BPTT's graph, and merging equal steps is a later pass's business.
    fn per_step(
        &mut self,
        xs: &[NodeIndex],
        layer: usize,
        f: impl Fn(NodeIndex) -> (Op, Vec<NodeIndex>),
    ) -> Result<Vec<NodeIndex>, UnrollError> {
        let mut out = Vec::with_capacity(xs.len());
        for (t, &x) in xs.iter().enumerate() {
            let (op, args) = f(x);
            let shapes: Vec<&[usize]> = args
                .iter()
                .map(|&a| self.g.node(a).shape.as_slice())
                .collect();
            let shape = op
                .infer_shape(&shapes)
                .map_err(|e| ir::VerifyError {
                    graph: self.g.name.clone(),
                    node: 0,
                    op: op.name().into(),
                    layer: self.g.layers[layer].path.clone(),
                    problem: Box::new(e.into()),
                })?
                .expect("per-step ops are not leaves");
            out.push(self.node(op, shape, layer, Some(t), Role::Forward, &args));
        }
        Ok(out)
    }

    fn input(&mut self) -> Vec<NodeIndex> {
        let steps = self.cfg.steps;
        let per_sample = self.analysis.input.clone();
        match self.model.input.encoding {
            Encoding::Direct => {
                let x = self.node(
                    Op::Input { name: "x".into() },
                    self.batched(&per_sample),
                    0,
                    None,
                    Role::Input,
                    &[],
                );
                vec![x; steps]
            }
            Encoding::Poisson { seed } => {
                let x = self.node(
                    Op::Input { name: "x".into() },
                    self.batched(&per_sample),
                    0,
                    None,
                    Role::Input,
                    &[],
                );
                let shape = self.batched(&per_sample);
                (0..steps)
                    .map(|t| {
                        let stream = mix64(seed).wrapping_add(t as u64);
                        self.node(
                            Op::Poisson { stream },
                            shape.clone(),
                            0,
                            Some(t),
                            Role::Forward,
                            &[x],
                        )
                    })
                    .collect()
            }
            Encoding::Events => {
                let mut s = vec![self.cfg.batch, steps];
                s.extend_from_slice(&per_sample);
                let x = self.node(Op::Input { name: "x".into() }, s, 0, None, Role::Input, &[]);
                let shape = self.batched(&per_sample);
                (0..steps)
                    .map(|t| {
                        self.node(
                            Op::TimeSlice { t },
                            shape.clone(),
                            0,
                            Some(t),
                            Role::Forward,
                            &[x],
                        )
                    })
                    .collect()
            }
        }
    }

    fn param(&mut self, name: &str, layer: usize) -> NodeIndex {
        let spec = self
            .analysis
            .params()
            .find(|p| p.name == name)
            .expect("analysis lists every parameter")
            .clone();
        self.node(
            Op::Param { name: spec.name },
            spec.shape,
            layer,
            None,
            Role::Param,
            &[],
        )
    }

    fn layers(&mut self, list: &[Layer], xs: &[NodeIndex]) -> Result<Vec<NodeIndex>, UnrollError> {
        let mut cur = xs.to_vec();
        for layer in list {
            cur = self.layer(layer, &cur)?;
        }
        Ok(cur)
    }

    fn layer(&mut self, layer: &Layer, xs: &[NodeIndex]) -> Result<Vec<NodeIndex>, UnrollError> {
        let info = &self.analysis.layers[self.next_shape];
        self.next_shape += 1;
        let path = info.path.clone();
        let out_shape = self.batched(&info.output);
        let id = self.layer_info(&path, layer.kind.keyword());
        let p = |s: &str| format!("{path}.{s}");
        Ok(match &layer.kind {
            LayerKind::Conv2d {
                stride,
                padding,
                bias,
                ..
            } => {
                let w = self.param(&p("weight"), id);
                let (stride, padding) = (*stride, *padding);
                let ys = self.per_step(xs, id, |x| (Op::Conv2d { stride, padding }, vec![x, w]))?;
                self.bias(ys, *bias, &p("bias"), id)?
            }
            LayerKind::Linear { bias, .. } => {
                let w = self.param(&p("weight"), id);
                let ys = self.per_step(xs, id, |x| {
                    (
                        Op::MatMul {
                            ta: false,
                            tb: true,
                        },
                        vec![x, w],
                    )
                })?;
                self.bias(ys, *bias, &p("bias"), id)?
            }
            LayerKind::BatchNorm { eps, .. } => {
                let gamma = self.param(&p("gamma"), id);
                let beta = self.param(&p("beta"), id);
                let c = vec![out_shape[1]];
                let (mean, var) = match self.cfg.phase {
                    Phase::Train => {
                        let mean =
                            self.node(Op::ChannelMean, c.clone(), id, None, Role::Forward, xs);
                        let mut args = vec![mean];
                        args.extend_from_slice(xs);
                        let var = self.node(Op::ChannelVar, c, id, None, Role::Forward, &args);
                        // The runtime updates the running statistics from
                        // these (the forward's, in every mode).
                        self.g.outputs.push((format!("bn_mean:{path}"), mean));
                        self.g.outputs.push((format!("bn_var:{path}"), var));
                        (mean, var)
                    }
                    Phase::Eval => (
                        self.param(&p("running_mean"), id),
                        self.param(&p("running_var"), id),
                    ),
                };
                let eps = *eps;
                let xhat =
                    self.per_step(xs, id, |x| (Op::Normalize { eps }, vec![x, mean, var]))?;
                let scaled = self.per_step(&xhat, id, |x| (Op::ChannelScale, vec![x, gamma]))?;
                self.per_step(&scaled, id, |x| (Op::BiasAdd, vec![x, beta]))?
            }
            &LayerKind::AvgPool {
                kernel,
                stride,
                padding,
            } => {
                let op = Op::AvgPool {
                    kernel,
                    stride,
                    padding,
                };
                self.per_step(xs, id, |x| (op.clone(), vec![x]))?
            }
            &LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                rate_rule,
            } => {
                let op = Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                    rule: rate_rule,
                };
                self.per_step(xs, id, |x| (op.clone(), vec![x]))?
            }
            LayerKind::Flatten => {
                let shape = out_shape.clone();
                self.per_step(xs, id, |x| {
                    (
                        Op::Reshape {
                            shape: shape.clone(),
                        },
                        vec![x],
                    )
                })?
            }
            LayerKind::Dropout { p } => {
                if self.cfg.phase == Phase::Eval || *p == 0.0 {
                    xs.to_vec()
                } else {
                    let stream = mix64(0xD50F_0000 ^ id as u64);
                    let mask = self.node(
                        Op::DropoutMask { p: *p, stream },
                        out_shape,
                        id,
                        None,
                        Role::Forward,
                        &[],
                    );
                    self.per_step(xs, id, |x| (Op::Mul, vec![x, mask]))?
                }
            }
            LayerKind::Neuron { kind, opts } => {
                let n = Neuron::resolve(*kind, opts, &self.model.neuron);
                self.neuron(&n, xs, id, &out_shape)
            }
            LayerKind::Residual { main, shortcut } => {
                let a = self.layers(main, xs)?;
                let b = self.layers(shortcut, xs)?;
                let pairs: Vec<(NodeIndex, NodeIndex)> = a.into_iter().zip(b).collect();
                let mut out = Vec::with_capacity(pairs.len());
                for (t, (x, y)) in pairs.into_iter().enumerate() {
                    out.push(self.node(
                        Op::Add,
                        out_shape.clone(),
                        id,
                        Some(t),
                        Role::Forward,
                        &[x, y],
                    ));
                }
                out
            }
        })
    }

    fn bias(
        &mut self,
        ys: Vec<NodeIndex>,
        bias: bool,
        name: &str,
        id: usize,
    ) -> Result<Vec<NodeIndex>, UnrollError> {
        if !bias {
            return Ok(ys);
        }
        let b = self.param(name, id);
        self.per_step(&ys, id, |y| (Op::BiasAdd, vec![y, b]))
    }

    fn neuron(
        &mut self,
        n: &Neuron,
        xs: &[NodeIndex],
        id: usize,
        shape: &[usize],
    ) -> Vec<NodeIndex> {
        let last = xs.len() - 1;
        let mut v_prev: Option<NodeIndex> = None;
        let mut spikes = Vec::with_capacity(xs.len());
        for (t, &i_t) in xs.iter().enumerate() {
            let fwd = |this: &mut Self, op: &Op, role: Role, args: &[NodeIndex]| {
                this.node(op.clone(), shape.to_vec(), id, Some(t), role, args)
            };
            let u = match v_prev {
                None => i_t,
                Some(v) => {
                    let lv = if n.lambda == 1.0 {
                        v
                    } else {
                        fwd(self, &Op::Scale(n.lambda), Role::Forward, &[v])
                    };
                    fwd(self, &Op::Add, Role::Forward, &[lv, i_t])
                }
            };
            let s = fwd(
                self,
                &Op::Spike {
                    theta: n.theta,
                    surrogate: n.surrogate,
                },
                Role::Forward,
                &[u],
            );
            spikes.push(s);
            // v_t is needed only by u_{t+1}, and only when λ ≠ 0.
            if t == last || n.lambda == 0.0 {
                continue;
            }
            let sr = if n.detach_reset {
                fwd(self, &Op::Detach, Role::Forward, &[s])
            } else {
                s
            };
            let drop = match n.reset {
                Reset::Soft if n.theta == 1.0 => sr,
                Reset::Soft => fwd(self, &Op::Scale(n.theta), Role::Forward, &[sr]),
                Reset::Hard => {
                    let gap = if n.v_reset == 0.0 {
                        u
                    } else {
                        fwd(self, &Op::AddScalar(-n.v_reset), Role::Forward, &[u])
                    };
                    fwd(self, &Op::Mul, Role::Forward, &[sr, gap])
                }
            };
            v_prev = Some(fwd(self, &Op::Sub, Role::State, &[u, drop]));
        }
        spikes
    }
}
