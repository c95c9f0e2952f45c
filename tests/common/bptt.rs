//! An independent, hand-written BPTT oracle.
//!
//! It shares nothing with the unroller, autodiff or the interpreter: a
//! layer-major forward keeps, per layer and per step, what the backward
//! needs (inputs, normalised activations, membrane potentials, spikes);
//! then an explicit backward runs from the readout down, layer by layer,
//! each over all steps. Every op's backward is the textbook formula,
//! written as loops; the LIF backward is the reverse-time recurrence,
//! neuron by neuron.
//!
//! Conventions (docs/math.md, src/unroll.rs):
//!
//! ```text
//! u_0 = I_0,  u_t = λ·v_{t−1} + I_t
//! s_t = H(u_t − θ)                 H(0) = 1
//! v_t = u_t − θ·s'_t               soft reset
//! v_t = u_t − s'_t·(u_t − v_r)     hard reset
//! s'_t = s_t (its gradient dropped when the reset is detached)
//! logits = (1/T)·Σ_t out_t,  loss = mean_b −Σ_k y_k·log softmax(logits)_k
//! ```
//!
//! LIF backward, with δv_t = λ·δu_{t+1} (δv_{T−1} = 0):
//!
//! ```text
//! δs_t(total) = δs_t(above) + [not detached]·(∂v_t/∂s'_t)·δv_t
//!               ∂v/∂s' = −θ (soft), −(u_t − v_r) (hard)
//! δu_t = σ'(u_t − θ)·δs_t(total) + (∂v_t/∂u_t at fixed s')·δv_t
//!               ∂v/∂u|s' = 1 (soft), 1 − s_t (hard)
//! δI_t = δu_t
//! ```

use snnc::model::{Encoding, Layer, LayerKind, Model, Neuron, Reset, Surrogate, SurrogateKind};
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// One step's activations, `[B, ...]`.
type Act = Tensor<f64>;
pub type Params = HashMap<String, Tensor<f64>>;

/// Everything the oracle computes.
pub struct Bptt {
    pub loss: f64,
    /// `[B, K]`: the time-mean of the last layer's output.
    pub logits: Tensor<f64>,
    /// `∂loss/∂p` for every trainable parameter `p`.
    pub grads: Params,
    /// Per spiking layer: (path, spikes fired, neuron-steps) over all steps
    /// and samples.
    pub firing: Vec<(String, usize, usize)>,
}

/// Loss and parameter gradients of `model` (Direct encoding, no dropout).
pub fn bptt_grads(
    model: &Model,
    params: &Params,
    x: &Tensor<f64>,
    labels: &Tensor<f64>,
    steps: usize,
) -> (f64, Params) {
    let r = bptt(model, params, x, labels, steps);
    (r.loss, r.grads)
}

pub fn bptt(
    model: &Model,
    params: &Params,
    x: &Tensor<f64>,
    labels: &Tensor<f64>,
    steps: usize,
) -> Bptt {
    assert_eq!(
        model.input.encoding,
        Encoding::Direct,
        "the BPTT oracle models direct encoding only"
    );
    assert!(steps >= 1);
    let inputs = vec![x.clone(); steps];
    let mut firing = Vec::new();
    let (outs, tapes) = forward_list(model, &model.layers, "", params, inputs, &mut firing);

    // Readout: logits = mean over steps.
    let (b, k) = (outs[0].shape[0], outs[0].shape[1]);
    assert_eq!(labels.shape, vec![b, k], "labels must be [B, K]");
    let mut logits = Tensor::zeros(&[b, k]);
    for o in &outs {
        for i in 0..b * k {
            logits.data[i] += o.data[i];
        }
    }
    for v in &mut logits.data {
        *v /= steps as f64;
    }

    // Cross-entropy with log-softmax; ∂/∂z_k = p_k·Σ_j y_j − y_k per row.
    let mut loss = 0.0;
    let mut dlogits = Tensor::zeros(&[b, k]);
    for bi in 0..b {
        let z = &logits.data[bi * k..(bi + 1) * k];
        let y = &labels.data[bi * k..(bi + 1) * k];
        let zmax = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum_exp: f64 = z.iter().map(|&v| (v - zmax).exp()).sum();
        let log_z = zmax + sum_exp.ln();
        let ysum: f64 = y.iter().sum();
        for j in 0..k {
            loss -= y[j] * (z[j] - log_z);
            let p = (z[j] - log_z).exp();
            dlogits.data[bi * k + j] = (p * ysum - y[j]) / b as f64;
        }
    }
    loss /= b as f64;

    // ∂logits/∂out_t = 1/T.
    let douts: Vec<Act> = (0..steps)
        .map(|_| {
            let mut d = dlogits.clone();
            for v in &mut d.data {
                *v /= steps as f64;
            }
            d
        })
        .collect();
    let mut grads = Params::new();
    backward_list(&tapes, params, douts, &mut grads);
    Bptt {
        loss,
        logits,
        grads,
        firing,
    }
}

/// What one layer's forward saved for its backward.
enum Tape {
    Linear {
        path: String,
        bias: bool,
        xs: Vec<Act>,
    },
    Conv {
        path: String,
        bias: bool,
        stride: usize,
        padding: usize,
        xs: Vec<Act>,
    },
    BatchNorm {
        path: String,
        xhat: Vec<Act>,
        /// 1/sqrt(var + eps) per channel.
        rstd: Vec<f64>,
    },
    AvgPool {
        win: Win,
        in_shape: Vec<usize>,
    },
    MaxPool {
        win: Win,
        xs: Vec<Act>,
    },
    Flatten {
        in_shape: Vec<usize>,
    },
    Neuron {
        n: Neuron,
        /// Membrane potential before firing, per step.
        u: Vec<Act>,
        /// Spikes, per step.
        s: Vec<Act>,
    },
    Residual {
        main: Vec<Tape>,
        shortcut: Vec<Tape>,
    },
}

fn forward_list(
    model: &Model,
    layers: &[Layer],
    prefix: &str,
    params: &Params,
    mut xs: Vec<Act>,
    firing: &mut Vec<(String, usize, usize)>,
) -> (Vec<Act>, Vec<Tape>) {
    let mut tapes = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let path = format!("{prefix}{i}");
        let param = |s: &str| {
            params
                .get(&format!("{path}.{s}"))
                .unwrap_or_else(|| panic!("missing parameter {path}.{s}"))
        };
        let (ys, tape) = match &layer.kind {
            LayerKind::Linear { bias, .. } => {
                let w = param("weight");
                let b = bias.then(|| param("bias"));
                let ys = xs.iter().map(|x| linear_fwd(x, w, b)).collect();
                (
                    ys,
                    Tape::Linear {
                        path,
                        bias: *bias,
                        xs,
                    },
                )
            }
            LayerKind::Conv2d {
                stride,
                padding,
                bias,
                ..
            } => {
                let w = param("weight");
                let b = bias.then(|| param("bias"));
                let ys = xs
                    .iter()
                    .map(|x| conv_fwd(x, w, b, *stride, *padding))
                    .collect();
                (
                    ys,
                    Tape::Conv {
                        path,
                        bias: *bias,
                        stride: *stride,
                        padding: *padding,
                        xs,
                    },
                )
            }
            LayerKind::BatchNorm { eps, .. } => {
                let (ys, xhat, rstd) = bn_fwd(&xs, param("gamma"), param("beta"), *eps);
                (ys, Tape::BatchNorm { path, xhat, rstd })
            }
            &LayerKind::AvgPool {
                kernel,
                stride,
                padding,
            } => {
                let win = Win::new(kernel, stride, padding);
                let ys = xs.iter().map(|x| avgpool_fwd(x, win)).collect();
                let in_shape = xs[0].shape.clone();
                (ys, Tape::AvgPool { win, in_shape })
            }
            // BPTT routes by each step's own maxima, whatever the rate rule.
            &LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                ..
            } => {
                let win = Win::new(kernel, stride, padding);
                let ys = xs.iter().map(|x| maxpool_fwd(x, win)).collect();
                (ys, Tape::MaxPool { win, xs })
            }
            LayerKind::Flatten => {
                let in_shape = xs[0].shape.clone();
                let b = in_shape[0];
                let ys = xs
                    .into_iter()
                    .map(|x| {
                        let n = x.data.len() / b;
                        Tensor::from_vec(&[b, n], x.data)
                    })
                    .collect();
                (ys, Tape::Flatten { in_shape })
            }
            LayerKind::Dropout { .. } => panic!("the BPTT oracle does not model dropout"),
            LayerKind::Neuron { kind, opts } => {
                let n = Neuron::resolve(*kind, opts, &model.neuron);
                let (u, s) = lif_fwd(&n, &xs);
                let fired = s
                    .iter()
                    .flat_map(|st| &st.data)
                    .filter(|&&v| v == 1.0)
                    .count();
                let total = s.iter().map(|st| st.data.len()).sum();
                firing.push((path, fired, total));
                (s.clone(), Tape::Neuron { n, u, s })
            }
            LayerKind::Residual { main, shortcut } => {
                let (a, main_t) = forward_list(
                    model,
                    main,
                    &format!("{path}.main."),
                    params,
                    xs.clone(),
                    firing,
                );
                let (c, short_t) = forward_list(
                    model,
                    shortcut,
                    &format!("{path}.shortcut."),
                    params,
                    xs,
                    firing,
                );
                let ys = a
                    .into_iter()
                    .zip(c)
                    .map(|(mut a, c)| {
                        for (p, q) in a.data.iter_mut().zip(&c.data) {
                            *p += q;
                        }
                        a
                    })
                    .collect();
                (
                    ys,
                    Tape::Residual {
                        main: main_t,
                        shortcut: short_t,
                    },
                )
            }
        };
        tapes.push(tape);
        xs = ys;
    }
    (xs, tapes)
}

/// Backward through a layer list, last layer first: takes the gradient of
/// the list's per-step outputs, returns that of its per-step inputs, and
/// adds parameter gradients (summed over steps) into `grads`.
fn backward_list(
    tapes: &[Tape],
    params: &Params,
    mut dys: Vec<Act>,
    grads: &mut Params,
) -> Vec<Act> {
    for tape in tapes.iter().rev() {
        dys = match tape {
            Tape::Linear { path, bias, xs } => {
                let w = &params[&format!("{path}.weight")];
                let mut dxs = Vec::with_capacity(xs.len());
                for (x, dy) in xs.iter().zip(&dys) {
                    let (dx, dw, db) = linear_bwd(x, w, dy);
                    add_into(grads, &format!("{path}.weight"), &dw);
                    if *bias {
                        add_into(grads, &format!("{path}.bias"), &db);
                    }
                    dxs.push(dx);
                }
                dxs
            }
            Tape::Conv {
                path,
                bias,
                stride,
                padding,
                xs,
            } => {
                let w = &params[&format!("{path}.weight")];
                let mut dxs = Vec::with_capacity(xs.len());
                for (x, dy) in xs.iter().zip(&dys) {
                    let (dx, dw, db) = conv_bwd(x, w, dy, *stride, *padding);
                    add_into(grads, &format!("{path}.weight"), &dw);
                    if *bias {
                        add_into(grads, &format!("{path}.bias"), &db);
                    }
                    dxs.push(dx);
                }
                dxs
            }
            Tape::BatchNorm { path, xhat, rstd } => {
                let gamma = &params[&format!("{path}.gamma")];
                let (dxs, dgamma, dbeta) = bn_bwd(xhat, rstd, gamma, &dys);
                add_into(grads, &format!("{path}.gamma"), &dgamma);
                add_into(grads, &format!("{path}.beta"), &dbeta);
                dxs
            }
            Tape::AvgPool { win, in_shape } => dys
                .iter()
                .map(|dy| avgpool_bwd(dy, in_shape, *win))
                .collect(),
            Tape::MaxPool { win, xs } => xs
                .iter()
                .zip(&dys)
                .map(|(x, dy)| maxpool_bwd(x, dy, *win))
                .collect(),
            Tape::Flatten { in_shape } => dys
                .into_iter()
                .map(|dy| Tensor::from_vec(in_shape, dy.data))
                .collect(),
            Tape::Neuron { n, u, s } => lif_bwd(n, u, s, &dys),
            Tape::Residual { main, shortcut } => {
                let da = backward_list(main, params, dys.clone(), grads);
                let dc = backward_list(shortcut, params, dys, grads);
                da.into_iter()
                    .zip(dc)
                    .map(|(mut a, c)| {
                        for (p, q) in a.data.iter_mut().zip(&c.data) {
                            *p += q;
                        }
                        a
                    })
                    .collect()
            }
        };
    }
    dys
}

fn add_into(grads: &mut Params, name: &str, g: &Tensor<f64>) {
    let acc = grads
        .entry(name.to_string())
        .or_insert_with(|| Tensor::zeros(&g.shape));
    assert_eq!(acc.shape, g.shape, "gradient shape of {name}");
    for (a, v) in acc.data.iter_mut().zip(&g.data) {
        *a += v;
    }
}

// ---------------------------------------------------------------- LIF

/// The surrogate derivative σ'(x), x = u − θ, written from the definitions
/// in docs/math.md / model.rs.
pub fn surrogate_deriv(s: &Surrogate, x: f64) -> f64 {
    let a = s.alpha;
    match s.kind {
        SurrogateKind::Sigmoid => {
            let e = (-a * x).exp();
            let sig = 1.0 / (1.0 + e);
            a * sig * (1.0 - sig)
        }
        SurrogateKind::Atan => {
            let z = std::f64::consts::PI / 2.0 * a * x;
            a / (2.0 * (1.0 + z * z))
        }
        SurrogateKind::Triangle => f64::max(0.0, a - a * a * x.abs()),
        SurrogateKind::FastSigmoid => 1.0 / ((1.0 + a * x.abs()) * (1.0 + a * x.abs())),
    }
}

/// Returns (u_t, s_t) for every step.
fn lif_fwd(n: &Neuron, currents: &[Act]) -> (Vec<Act>, Vec<Act>) {
    let size = currents[0].data.len();
    let mut v = vec![0.0; size];
    let mut us = Vec::with_capacity(currents.len());
    let mut ss = Vec::with_capacity(currents.len());
    for (t, cur) in currents.iter().enumerate() {
        let mut u = Tensor::zeros(&cur.shape);
        let mut s = Tensor::zeros(&cur.shape);
        for j in 0..size {
            let uj = if t == 0 {
                cur.data[j]
            } else {
                n.lambda * v[j] + cur.data[j]
            };
            let sj = if uj >= n.theta { 1.0 } else { 0.0 };
            v[j] = match n.reset {
                Reset::Soft => uj - n.theta * sj,
                Reset::Hard => uj - sj * (uj - n.v_reset),
            };
            u.data[j] = uj;
            s.data[j] = sj;
        }
        us.push(u);
        ss.push(s);
    }
    (us, ss)
}

/// Reverse-time recurrence, neuron by neuron; returns δI_t = δu_t.
fn lif_bwd(n: &Neuron, us: &[Act], ss: &[Act], ds_above: &[Act]) -> Vec<Act> {
    let steps = us.len();
    let size = us[0].data.len();
    let mut du: Vec<Act> = us.iter().map(|u| Tensor::zeros(&u.shape)).collect();
    for j in 0..size {
        // δu_{t+1}, zero beyond the last step.
        let mut du_next = 0.0;
        for t in (0..steps).rev() {
            let u = us[t].data[j];
            let s = ss[t].data[j];
            let sg = surrogate_deriv(&n.surrogate, u - n.theta);
            // v_t feeds u_{t+1} = λ·v_t + I_{t+1}; nothing after the last step.
            let dv = if t + 1 < steps {
                n.lambda * du_next
            } else {
                0.0
            };
            let (dv_ds, dv_du) = match n.reset {
                Reset::Soft => (-n.theta, 1.0),
                Reset::Hard => (-(u - n.v_reset), 1.0 - s),
            };
            let mut ds = ds_above[t].data[j];
            if !n.detach_reset {
                ds += dv_ds * dv;
            }
            let d = sg * ds + dv_du * dv;
            du[t].data[j] = d;
            du_next = d;
        }
    }
    du
}

// ---------------------------------------------------------------- linear

/// y[b, o] = Σ_k x[b, k]·W[o, k] + bias[o].
pub fn linear_fwd(x: &Act, w: &Tensor<f64>, bias: Option<&Tensor<f64>>) -> Act {
    let (b, n) = (x.shape[0], x.shape[1]);
    let o = w.shape[0];
    assert_eq!(w.shape[1], n);
    let mut y = Tensor::zeros(&[b, o]);
    for bi in 0..b {
        for oi in 0..o {
            let mut acc = 0.0;
            for k in 0..n {
                acc += x.data[bi * n + k] * w.data[oi * n + k];
            }
            if let Some(bb) = bias {
                acc += bb.data[oi];
            }
            y.data[bi * o + oi] = acc;
        }
    }
    y
}

/// (δx = δy·W, δW = δyᵀ·x, δb = Σ_b δy).
pub fn linear_bwd(x: &Act, w: &Tensor<f64>, dy: &Act) -> (Act, Tensor<f64>, Tensor<f64>) {
    let (b, n) = (x.shape[0], x.shape[1]);
    let o = w.shape[0];
    let mut dx = Tensor::zeros(&x.shape);
    let mut dw = Tensor::zeros(&w.shape);
    let mut db = Tensor::zeros(&[o]);
    for bi in 0..b {
        for oi in 0..o {
            let g = dy.data[bi * o + oi];
            db.data[oi] += g;
            for k in 0..n {
                dx.data[bi * n + k] += g * w.data[oi * n + k];
                dw.data[oi * n + k] += g * x.data[bi * n + k];
            }
        }
    }
    (dx, dw, db)
}

// ---------------------------------------------------------------- conv

/// Input index of tap (oy, ky) under stride and zero padding, if inside.
fn tap(o: usize, k: usize, stride: usize, padding: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k) as isize - padding as isize;
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

/// Cross-correlation: y[b,o,oy,ox] = Σ_{c,ky,kx} x[b,c,oy·s+ky−p,ox·s+kx−p]·W[o,c,ky,kx] + bias[o].
pub fn conv_fwd(
    x: &Act,
    w: &Tensor<f64>,
    bias: Option<&Tensor<f64>>,
    stride: usize,
    padding: usize,
) -> Act {
    let (b, ci, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (co, k) = (w.shape[0], w.shape[2]);
    assert_eq!(w.shape[1], ci);
    let ho = (h + 2 * padding - k) / stride + 1;
    let wo = (wd + 2 * padding - k) / stride + 1;
    let mut y = Tensor::zeros(&[b, co, ho, wo]);
    for bi in 0..b {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0.0;
                    for c in 0..ci {
                        for ky in 0..k {
                            let Some(iy) = tap(oy, ky, stride, padding, h) else {
                                continue;
                            };
                            for kx in 0..k {
                                let Some(ix) = tap(ox, kx, stride, padding, wd) else {
                                    continue;
                                };
                                acc += x.data[((bi * ci + c) * h + iy) * wd + ix]
                                    * w.data[((o * ci + c) * k + ky) * k + kx];
                            }
                        }
                    }
                    if let Some(bb) = bias {
                        acc += bb.data[o];
                    }
                    y.data[((bi * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

/// The same loops as the forward, each tap sending δy back to x and W.
pub fn conv_bwd(
    x: &Act,
    w: &Tensor<f64>,
    dy: &Act,
    stride: usize,
    padding: usize,
) -> (Act, Tensor<f64>, Tensor<f64>) {
    let (b, ci, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (co, k) = (w.shape[0], w.shape[2]);
    let (ho, wo) = (dy.shape[2], dy.shape[3]);
    let mut dx = Tensor::zeros(&x.shape);
    let mut dw = Tensor::zeros(&w.shape);
    let mut db = Tensor::zeros(&[co]);
    for bi in 0..b {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = dy.data[((bi * co + o) * ho + oy) * wo + ox];
                    db.data[o] += g;
                    for c in 0..ci {
                        for ky in 0..k {
                            let Some(iy) = tap(oy, ky, stride, padding, h) else {
                                continue;
                            };
                            for kx in 0..k {
                                let Some(ix) = tap(ox, kx, stride, padding, wd) else {
                                    continue;
                                };
                                let xi = ((bi * ci + c) * h + iy) * wd + ix;
                                let wi = ((o * ci + c) * k + ky) * k + kx;
                                dx.data[xi] += g * w.data[wi];
                                dw.data[wi] += g * x.data[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

// ---------------------------------------------------------------- batch norm

/// Channel of flat element `i` of a `[B, C, ...]` tensor.
fn channel(shape: &[usize], i: usize) -> usize {
    let inner: usize = shape[2..].iter().product();
    (i / inner) % shape[1]
}

/// Temporal BN: statistics per channel over all steps, samples and pixels
/// (biased variance). Returns (y_t, x̂_t, 1/sqrt(var + eps)).
fn bn_fwd(
    xs: &[Act],
    gamma: &Tensor<f64>,
    beta: &Tensor<f64>,
    eps: f64,
) -> (Vec<Act>, Vec<Act>, Vec<f64>) {
    let shape = xs[0].shape.clone();
    let c = shape[1];
    let mut count = vec![0usize; c];
    let mut sum = vec![0.0; c];
    for x in xs {
        for (i, &v) in x.data.iter().enumerate() {
            sum[channel(&shape, i)] += v;
            count[channel(&shape, i)] += 1;
        }
    }
    let mean: Vec<f64> = (0..c).map(|ch| sum[ch] / count[ch] as f64).collect();
    let mut sq = vec![0.0; c];
    for x in xs {
        for (i, &v) in x.data.iter().enumerate() {
            let ch = channel(&shape, i);
            sq[ch] += (v - mean[ch]) * (v - mean[ch]);
        }
    }
    let rstd: Vec<f64> = (0..c)
        .map(|ch| 1.0 / (sq[ch] / count[ch] as f64 + eps).sqrt())
        .collect();
    let mut ys = Vec::with_capacity(xs.len());
    let mut xhats = Vec::with_capacity(xs.len());
    for x in xs {
        let mut xhat = Tensor::zeros(&shape);
        let mut y = Tensor::zeros(&shape);
        for (i, &v) in x.data.iter().enumerate() {
            let ch = channel(&shape, i);
            xhat.data[i] = (v - mean[ch]) * rstd[ch];
            y.data[i] = gamma.data[ch] * xhat.data[i] + beta.data[ch];
        }
        ys.push(y);
        xhats.push(xhat);
    }
    (ys, xhats, rstd)
}

/// Full BN backward over all steps jointly:
/// δβ = Σ δy, δγ = Σ δy·x̂,
/// δx = γ·rstd/N·(N·δy − Σ δy − x̂·Σ δy·x̂).
fn bn_bwd(
    xhats: &[Act],
    rstd: &[f64],
    gamma: &Tensor<f64>,
    dys: &[Act],
) -> (Vec<Act>, Tensor<f64>, Tensor<f64>) {
    let shape = xhats[0].shape.clone();
    let c = shape[1];
    let mut n = vec![0usize; c];
    let mut sum_dy = vec![0.0; c];
    let mut sum_dy_xhat = vec![0.0; c];
    for (xh, dy) in xhats.iter().zip(dys) {
        for i in 0..xh.data.len() {
            let ch = channel(&shape, i);
            n[ch] += 1;
            sum_dy[ch] += dy.data[i];
            sum_dy_xhat[ch] += dy.data[i] * xh.data[i];
        }
    }
    let dxs = xhats
        .iter()
        .zip(dys)
        .map(|(xh, dy)| {
            let mut dx = Tensor::zeros(&shape);
            for i in 0..xh.data.len() {
                let ch = channel(&shape, i);
                let nc = n[ch] as f64;
                dx.data[i] = gamma.data[ch] * rstd[ch] / nc
                    * (nc * dy.data[i] - sum_dy[ch] - xh.data[i] * sum_dy_xhat[ch]);
            }
            dx
        })
        .collect();
    (
        dxs,
        Tensor::from_vec(&[c], sum_dy_xhat),
        Tensor::from_vec(&[c], sum_dy),
    )
}

// ---------------------------------------------------------------- pooling

/// A pooling window: kernel, stride, padding (on every side; padded
/// positions are skipped: −∞ for max, 0 for average, whose divisor stays
/// kernel²).
#[derive(Clone, Copy, Debug)]
pub struct Win {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Win {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Win {
        Win {
            kernel,
            stride,
            padding,
        }
    }

    /// `(h, w, ho, wo)` of an input `[B, C, h, w]`.
    fn dims(&self, shape: &[usize]) -> (usize, usize, usize, usize) {
        let (h, w) = (shape[2], shape[3]);
        let out = |n: usize| (n + 2 * self.padding - self.kernel) / self.stride + 1;
        (h, w, out(h), out(w))
    }

    /// Flat indices (within a plane of `h × w`) of window (oy, ox)'s
    /// elements, row-major, padding left out.
    fn cells(&self, oy: usize, ox: usize, h: usize, w: usize) -> Vec<usize> {
        let pos = |o: usize, j: usize, n: usize| {
            let i = (o * self.stride + j) as isize - self.padding as isize;
            (0..n as isize).contains(&i).then_some(i as usize)
        };
        let mut v = Vec::new();
        for ky in 0..self.kernel {
            for kx in 0..self.kernel {
                if let (Some(iy), Some(ix)) = (pos(oy, ky, h), pos(ox, kx, w)) {
                    v.push(iy * w + ix);
                }
            }
        }
        v
    }
}

pub fn avgpool_fwd(x: &Act, win: Win) -> Act {
    let (b, c) = (x.shape[0], x.shape[1]);
    let (h, w, ho, wo) = win.dims(&x.shape);
    let mut y = Tensor::zeros(&[b, c, ho, wo]);
    for plane in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let acc: f64 = win
                    .cells(oy, ox, h, w)
                    .iter()
                    .map(|&i| x.data[plane * h * w + i])
                    .sum();
                y.data[(plane * ho + oy) * wo + ox] = acc / (win.kernel * win.kernel) as f64;
            }
        }
    }
    y
}

pub fn avgpool_bwd(dy: &Act, in_shape: &[usize], win: Win) -> Act {
    let (b, c) = (in_shape[0], in_shape[1]);
    let (h, w, ho, wo) = win.dims(in_shape);
    let mut dx = Tensor::zeros(in_shape);
    let share = 1.0 / (win.kernel * win.kernel) as f64;
    for plane in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let g = dy.data[(plane * ho + oy) * wo + ox] * share;
                for i in win.cells(oy, ox, h, w) {
                    dx.data[plane * h * w + i] += g;
                }
            }
        }
    }
    dx
}

/// Flat index of the first maximum of a window (row-major window order,
/// ties to the first).
pub fn argmax_window(x: &Act, plane: usize, oy: usize, ox: usize, win: Win) -> usize {
    let (h, w) = (x.shape[2], x.shape[3]);
    let mut best: Option<usize> = None;
    for i in win.cells(oy, ox, h, w) {
        let i = plane * h * w + i;
        match best {
            Some(bi) if x.data[i] <= x.data[bi] => {}
            _ => best = Some(i),
        }
    }
    best.expect("every window holds an element")
}

pub fn maxpool_fwd(x: &Act, win: Win) -> Act {
    let (b, c) = (x.shape[0], x.shape[1]);
    let (_, _, ho, wo) = win.dims(&x.shape);
    let mut y = Tensor::zeros(&[b, c, ho, wo]);
    for plane in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let i = argmax_window(x, plane, oy, ox, win);
                y.data[(plane * ho + oy) * wo + ox] = x.data[i];
            }
        }
    }
    y
}

pub fn maxpool_bwd(x: &Act, dy: &Act, win: Win) -> Act {
    let (b, c) = (x.shape[0], x.shape[1]);
    let (_, _, ho, wo) = win.dims(&x.shape);
    let mut dx = Tensor::zeros(&x.shape);
    for plane in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let i = argmax_window(x, plane, oy, ox, win);
                dx.data[i] += dy.data[(plane * ho + oy) * wo + ox];
            }
        }
    }
    dx
}
