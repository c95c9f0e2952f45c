//! Rate-based gradients in closed form, computed by hand from time-averaged
//! forward quantities (docs/math.md, "Rate-based backpropagation").
//!
//! Independent of the unroller, autodiff, the rate pass and the
//! interpreter. The forward runs every step (the same spikes as BPTT) but
//! keeps, per layer, only what the rate backward reads:
//!
//! ```text
//! weight layer:  x̄ = (1/T)·Σ_t x_t                 (its input's time mean)
//! LIF / IF:      g = (1/T)·Σ_t σ'(u_t − θ)·ρ_t,  ρ_1 = 1,  ρ_{t+1} = 1 + λ·ρ_t·k_t
//!                k_t = 1                          soft, detached
//!                      1 − θ·σ'_t                 soft, not detached
//!                      1 − s_t                    hard, detached
//!                      (1 − s_t) − (u_t − v_r)·σ'_t   hard, not detached
//! batch norm:    μ, r = 1/sqrt(σ² + ε) over T·B·H·W,  X̄ = mean_t x̂_t,  z̄ = mean_t z_t
//! ```
//!
//! The backward then runs once, on batch-sized tensors, carrying *summed*
//! gradients: for a per-step family y_t the tensor Δy = Σ_t ∂L/∂y_t.
//!
//! ```text
//! readout:  Δout = δlogits = (softmax(logits) − y)/B      (δout_t = δlogits/T)
//! linear:   ∂W = Δyᵀ·x̄,  ∂b = Σ_b Δy,  Δx = Δy·W
//! conv:     ∂W = conv weight gradient of (x̄, Δy),  Δx = conv input gradient of (Δy, W)
//! LIF/IF:   Δu = g ⊙ Δs
//! pool, flatten, residual: their linear backward on Δ (residual: both branches)
//! max pool (rate_rule=masks):  Δx = (1/T)·Σ_t maxpool_bwd(x_t, Δy)
//!           (each step's routing, averaged: the mean selection)
//! max pool (rate_rule=rates):  Δx = maxpool_bwd(x̄, Δy), and the layers
//!           after it read maxpool(x̄) as their input's rate (through a
//!           flatten too) instead of mean_t maxpool(x_t)
//! BN:       D = γ·Δy;  ∂β = Σ Δy;  ∂γ = Σ Δy·X̄;  δv = −½·r²·Σ D·X̄;
//!           δμ = −r·Σ D − (2/N)·δv·Σ T·(z̄ − μ);
//!           Δz = r·D + T·δμ/N + (2/N)·δv·T·(z̄ − μ)        (Σ over B·H·W, N = T·B·H·W)
//! ```
//!
//! Derivation of the batch-norm line: the temporal BN backward is
//! δx̂_t = γ·δy_t, δσ² = −½·r³·Σ_t Σ δx̂_t·(z_t − μ), δμ = −r·Σ_t Σ δx̂_t +
//! δσ²·(−2/N)·Σ_t Σ (z_t − μ), δz_t = r·δx̂_t + δμ/N + δσ²·2·(z_t − μ)/N,
//! ∂γ = Σ_t Σ δy_t·x̂_t. Summing δz_t over t is exact (linear in the
//! gradients); the two sums of a forward factor times a gradient factor
//! (in ∂γ and δσ²) become mean_t(forward)·Σ_t(gradient): the rate
//! approximation. The result is the usual BN backward applied to the rate
//! batch (z̄, Δy) with the forward's statistics, as docs/math.md §5 says.

use snnc::model::{Encoding, Layer, LayerKind, Model, Neuron, Reset};
use snnc::tensor::Tensor;
use std::collections::HashMap;

// The layer kernels (linear, conv, average pooling and their adjoints) and
// the surrogates are the BPTT oracle's: what differs here is only what is
// fed to them — time means and summed gradients.
use super::bptt::{
    avgpool_bwd, avgpool_fwd, conv_bwd, conv_fwd, linear_bwd, linear_fwd, maxpool_bwd, maxpool_fwd,
    surrogate_deriv, Win,
};
use snnc::model::MaxPoolRule;

pub type Params = HashMap<String, Tensor<f64>>;
type T64 = Tensor<f64>;

/// Deliberate mistakes, to show that a comparison against the closed form
/// can fail. `None` is the closed form itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perturb {
    None,
    /// ρ_t = 1: the leak and reset recurrence forgotten.
    NoRho,
    /// k_t = 1 for every reset variant: the reset path always detached.
    DetachedK,
    /// x̄ replaced by the last step's input.
    LastInput,
    /// The variance term of the batch-norm backward dropped (δσ² = 0).
    BnNoVariance,
}

/// What the closed form computes.
pub struct Closed {
    pub loss: f64,
    /// `[B, K]`: the time mean of the last layer's output.
    pub logits: T64,
    /// The rate-based `∂loss/∂p` of every trainable parameter.
    pub grads: Params,
    /// Per spiking layer: (path, spikes fired, neuron-steps).
    pub firing: Vec<(String, usize, usize)>,
}

/// Rate-based loss and gradients of `model` (Direct encoding; no dropout).
pub fn closed_form(model: &Model, params: &Params, x: &T64, labels: &T64, steps: usize) -> Closed {
    closed_form_with(model, params, x, labels, steps, Perturb::None)
}

pub fn closed_form_with(
    model: &Model,
    params: &Params,
    x: &T64,
    labels: &T64,
    steps: usize,
    perturb: Perturb,
) -> Closed {
    assert_eq!(
        model.input.encoding,
        Encoding::Direct,
        "the closed form models direct encoding only"
    );
    assert!(steps >= 1);
    let mut cx = Ctx {
        model,
        params,
        perturb,
        firing: Vec::new(),
    };
    let (outs, tapes, _) = cx.forward(&model.layers, "", vec![x.clone(); steps], None);

    let (b, k) = (outs[0].shape[0], outs[0].shape[1]);
    assert_eq!(labels.shape, vec![b, k], "labels must be [B, K]");
    let logits = time_mean(&outs);

    // Cross-entropy on the mean logits, averaged over the batch.
    let mut loss = 0.0;
    let mut dlogits = T64::zeros(&[b, k]);
    for bi in 0..b {
        let z = &logits.data[bi * k..(bi + 1) * k];
        let y = &labels.data[bi * k..(bi + 1) * k];
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
        let ysum: f64 = y.iter().sum();
        for j in 0..k {
            loss -= y[j] * (z[j] - lse);
            dlogits.data[bi * k + j] = ((z[j] - lse).exp() * ysum - y[j]) / b as f64;
        }
    }
    loss /= b as f64;

    // δout_t = δlogits/T at every step: the summed gradient is δlogits.
    let mut grads = Params::new();
    cx.backward(&tapes, dlogits, &mut grads, steps);
    Closed {
        loss,
        logits,
        grads,
        firing: cx.firing,
    }
}

/// The rate quantities one layer keeps for the backward.
enum Tape {
    Linear {
        path: String,
        bias: bool,
        xbar: T64,
    },
    Conv {
        path: String,
        bias: bool,
        stride: usize,
        padding: usize,
        xbar: T64,
    },
    BatchNorm {
        path: String,
        /// X̄ = mean_t x̂_t.
        xhat_bar: T64,
        /// z̄ − μ (per element, μ broadcast per channel).
        zbar_centered: T64,
        /// 1/sqrt(σ² + ε) per channel.
        rstd: Vec<f64>,
    },
    AvgPool {
        win: Win,
        in_shape: Vec<usize>,
    },
    /// `rate_rule=masks`: every step's input.
    MaxPoolMasks {
        win: Win,
        xs: Vec<T64>,
    },
    /// `rate_rule=rates`: the input's rate.
    MaxPoolRates {
        win: Win,
        xbar: T64,
    },
    Flatten {
        in_shape: Vec<usize>,
    },
    Neuron {
        /// The rate gain g.
        gain: T64,
    },
    Residual {
        main: Vec<Tape>,
        shortcut: Vec<Tape>,
    },
}

struct Ctx<'a> {
    model: &'a Model,
    params: &'a Params,
    perturb: Perturb,
    firing: Vec<(String, usize, usize)>,
}

impl Ctx<'_> {
    fn param(&self, name: &str) -> &T64 {
        self.params
            .get(name)
            .unwrap_or_else(|| panic!("missing parameter {name}"))
    }

    /// The input's time mean (or, perturbed, its last step).
    fn xbar(&self, xs: &[T64]) -> T64 {
        match self.perturb {
            Perturb::LastInput => xs.last().expect("steps ≥ 1").clone(),
            _ => time_mean(xs),
        }
    }

    /// Per-step forward through a layer list; returns the per-step outputs,
    /// one tape per layer, and the outputs' rate where a `rate_rule=rates`
    /// max pool made it differ from their time mean (`rate`: the same for
    /// the inputs).
    fn forward(
        &mut self,
        layers: &[Layer],
        prefix: &str,
        xs: Vec<T64>,
        rate: Option<T64>,
    ) -> (Vec<T64>, Vec<Tape>, Option<T64>) {
        let mut xs = xs;
        let mut rate = rate;
        let mut tapes = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let path = format!("{prefix}{i}");
            let (ys, tape) = match &layer.kind {
                LayerKind::Linear { bias, .. } => {
                    let w = self.param(&format!("{path}.weight"));
                    let b = bias.then(|| self.param(&format!("{path}.bias")));
                    let ys = xs.iter().map(|x| linear_fwd(x, w, b)).collect();
                    let xbar = rate.take().unwrap_or_else(|| self.xbar(&xs));
                    let bias = *bias;
                    (ys, Tape::Linear { path, bias, xbar })
                }
                LayerKind::Conv2d {
                    stride,
                    padding,
                    bias,
                    ..
                } => {
                    let w = self.param(&format!("{path}.weight"));
                    let b = bias.then(|| self.param(&format!("{path}.bias")));
                    let ys = xs
                        .iter()
                        .map(|x| conv_fwd(x, w, b, *stride, *padding))
                        .collect();
                    let tape = Tape::Conv {
                        bias: *bias,
                        stride: *stride,
                        padding: *padding,
                        xbar: rate.take().unwrap_or_else(|| self.xbar(&xs)),
                        path,
                    };
                    (ys, tape)
                }
                LayerKind::BatchNorm { eps, .. } => self.batch_norm(path, &xs, *eps),
                &LayerKind::AvgPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let win = Win::new(kernel, stride, padding);
                    let ys = xs.iter().map(|x| avgpool_fwd(x, win)).collect();
                    let tape = Tape::AvgPool {
                        win,
                        in_shape: xs[0].shape.clone(),
                    };
                    (ys, tape)
                }
                &LayerKind::MaxPool {
                    kernel,
                    stride,
                    padding,
                    rate_rule,
                } => {
                    let win = Win::new(kernel, stride, padding);
                    let ys = xs.iter().map(|x| maxpool_fwd(x, win)).collect();
                    let tape = match rate_rule {
                        MaxPoolRule::Masks => Tape::MaxPoolMasks {
                            win,
                            xs: xs.clone(),
                        },
                        MaxPoolRule::Rates => {
                            let xbar = rate.take().unwrap_or_else(|| time_mean(&xs));
                            let pooled = maxpool_fwd(&xbar, win);
                            tapes.push(Tape::MaxPoolRates { win, xbar });
                            xs = ys;
                            rate = Some(pooled);
                            continue;
                        }
                    };
                    (ys, tape)
                }
                LayerKind::Flatten => {
                    let in_shape = xs[0].shape.clone();
                    let b = in_shape[0];
                    let flat = |x: T64| {
                        let n = x.data.len() / b;
                        T64::from_vec(&[b, n], x.data)
                    };
                    let ys = xs.into_iter().map(flat).collect();
                    xs = ys;
                    rate = rate.take().map(flat);
                    tapes.push(Tape::Flatten { in_shape });
                    continue;
                }
                LayerKind::Neuron { kind, opts } => {
                    let n = Neuron::resolve(*kind, opts, &self.model.neuron);
                    let (spikes, gain) = self.neuron(&n, &xs);
                    let fired = spikes
                        .iter()
                        .flat_map(|s| &s.data)
                        .filter(|&&v| v == 1.0)
                        .count();
                    let total = spikes.iter().map(|s| s.data.len()).sum();
                    self.firing.push((path, fired, total));
                    (spikes, Tape::Neuron { gain })
                }
                LayerKind::Residual { main, shortcut } => {
                    let main_path = format!("{path}.main.");
                    let (a, main, _) = self.forward(main, &main_path, xs.clone(), rate.clone());
                    let short_path = format!("{path}.shortcut.");
                    let (c, shortcut, _) = self.forward(shortcut, &short_path, xs, rate.take());
                    let ys = a.iter().zip(&c).map(|(a, c)| add(a, c)).collect();
                    (ys, Tape::Residual { main, shortcut })
                }
                LayerKind::Dropout { .. } => panic!("the closed form does not model dropout"),
            };
            // Only a flatten (above) passes a rate on.
            rate = None;
            tapes.push(tape);
            xs = ys;
        }
        (xs, tapes, rate)
    }

    /// LIF/IF over all steps: the spikes and the rate gain g.
    fn neuron(&self, n: &Neuron, currents: &[T64]) -> (Vec<T64>, T64) {
        let steps = currents.len();
        let shape = currents[0].shape.clone();
        let size = currents[0].data.len();
        let mut spikes: Vec<T64> = (0..steps).map(|_| T64::zeros(&shape)).collect();
        let mut gain = T64::zeros(&shape);
        for j in 0..size {
            let (mut v, mut rho, mut acc) = (0.0, 1.0, 0.0);
            for t in 0..steps {
                let u = n.lambda * v + currents[t].data[j];
                let s = if u >= n.theta { 1.0 } else { 0.0 };
                let sg = surrogate_deriv(&n.surrogate, u - n.theta);
                v = match n.reset {
                    Reset::Soft => u - n.theta * s,
                    Reset::Hard => (1.0 - s) * u + s * n.v_reset,
                };
                spikes[t].data[j] = s;
                // ρ_t is the sum over t' ≤ t of Π_{t' ≤ i < t} λ·k_i.
                let rho_t = if self.perturb == Perturb::NoRho {
                    1.0
                } else {
                    rho
                };
                acc += sg * rho_t;
                let k = match (
                    n.reset,
                    n.detach_reset || self.perturb == Perturb::DetachedK,
                ) {
                    (Reset::Soft, true) => 1.0,
                    (Reset::Soft, false) => 1.0 - n.theta * sg,
                    (Reset::Hard, true) => 1.0 - s,
                    (Reset::Hard, false) => (1.0 - s) - (u - n.v_reset) * sg,
                };
                rho = 1.0 + n.lambda * rho * k;
            }
            gain.data[j] = acc / steps as f64;
        }
        (spikes, gain)
    }

    /// Temporal batch norm (train mode): statistics per channel over all
    /// steps, samples and pixels, biased variance.
    fn batch_norm(&self, path: String, zs: &[T64], eps: f64) -> (Vec<T64>, Tape) {
        let gamma = self.param(&format!("{path}.gamma"));
        let beta = self.param(&format!("{path}.beta"));
        let shape = zs[0].shape.clone();
        let c = shape[1];
        let n = (zs.len() * zs[0].data.len() / c) as f64;
        let mut mean = vec![0.0; c];
        for z in zs {
            for (i, &v) in z.data.iter().enumerate() {
                mean[channel(&shape, i)] += v / n;
            }
        }
        let mut var = vec![0.0; c];
        for z in zs {
            for (i, &v) in z.data.iter().enumerate() {
                let ch = channel(&shape, i);
                var[ch] += (v - mean[ch]) * (v - mean[ch]) / n;
            }
        }
        let rstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let xhats: Vec<T64> = zs
            .iter()
            .map(|z| map_ch(z, |ch, v| (v - mean[ch]) * rstd[ch]))
            .collect();
        let ys = xhats
            .iter()
            .map(|xh| map_ch(xh, |ch, v| gamma.data[ch] * v + beta.data[ch]))
            .collect();
        let zbar = time_mean(zs);
        let tape = Tape::BatchNorm {
            path,
            xhat_bar: time_mean(&xhats),
            zbar_centered: map_ch(&zbar, |ch, v| v - mean[ch]),
            rstd,
        };
        (ys, tape)
    }

    /// The rate backward through a layer list, last layer first: takes the
    /// summed gradient of the list's outputs, returns that of its inputs.
    fn backward(&self, tapes: &[Tape], mut dy: T64, grads: &mut Params, steps: usize) -> T64 {
        for tape in tapes.iter().rev() {
            dy = match tape {
                Tape::Linear { path, bias, xbar } => {
                    let w = self.param(&format!("{path}.weight"));
                    let (dx, dw, db) = linear_bwd(xbar, w, &dy);
                    grads.insert(format!("{path}.weight"), dw);
                    if *bias {
                        grads.insert(format!("{path}.bias"), db);
                    }
                    dx
                }
                Tape::Conv {
                    path,
                    bias,
                    stride,
                    padding,
                    xbar,
                } => {
                    let w = self.param(&format!("{path}.weight"));
                    let (dx, dw, db) = conv_bwd(xbar, w, &dy, *stride, *padding);
                    grads.insert(format!("{path}.weight"), dw);
                    if *bias {
                        grads.insert(format!("{path}.bias"), db);
                    }
                    dx
                }
                Tape::BatchNorm {
                    path,
                    xhat_bar,
                    zbar_centered,
                    rstd,
                } => {
                    let gamma = self.param(&format!("{path}.gamma"));
                    let (dz, dgamma, dbeta) =
                        self.bn_bwd(xhat_bar, zbar_centered, rstd, gamma, &dy, steps);
                    grads.insert(format!("{path}.gamma"), dgamma);
                    grads.insert(format!("{path}.beta"), dbeta);
                    dz
                }
                Tape::AvgPool { win, in_shape } => avgpool_bwd(&dy, in_shape, *win),
                Tape::MaxPoolMasks { win, xs } => {
                    let mut dx = T64::zeros(&xs[0].shape);
                    for x in xs {
                        let part = maxpool_bwd(x, &dy, *win);
                        for (d, p) in dx.data.iter_mut().zip(&part.data) {
                            *d += p / xs.len() as f64;
                        }
                    }
                    dx
                }
                Tape::MaxPoolRates { win, xbar } => maxpool_bwd(xbar, &dy, *win),
                Tape::Flatten { in_shape } => T64::from_vec(in_shape, dy.data),
                Tape::Neuron { gain } => mul(gain, &dy),
                Tape::Residual { main, shortcut } => {
                    let da = self.backward(main, dy.clone(), grads, steps);
                    let dc = self.backward(shortcut, dy, grads, steps);
                    add(&da, &dc)
                }
            };
        }
        dy
    }

    /// The rate batch-norm backward (module docs). Returns (Δz, ∂γ, ∂β).
    fn bn_bwd(
        &self,
        xhat_bar: &T64,
        zbar_centered: &T64,
        rstd: &[f64],
        gamma: &T64,
        dy: &T64,
        steps: usize,
    ) -> (T64, T64, T64) {
        let shape = dy.shape.clone();
        let c = shape[1];
        let tf = steps as f64;
        let n = tf * (dy.data.len() / c) as f64;
        let d = map_ch(dy, |ch, v| gamma.data[ch] * v);
        let (mut dbeta, mut dgamma) = (vec![0.0; c], vec![0.0; c]);
        let (mut sum_d, mut sum_d_xbar, mut sum_zc) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        for i in 0..dy.data.len() {
            let ch = channel(&shape, i);
            dbeta[ch] += dy.data[i];
            dgamma[ch] += dy.data[i] * xhat_bar.data[i];
            sum_d[ch] += d.data[i];
            sum_d_xbar[ch] += d.data[i] * xhat_bar.data[i];
            sum_zc[ch] += tf * zbar_centered.data[i];
        }
        let mut dvar: Vec<f64> = (0..c)
            .map(|ch| -0.5 * rstd[ch] * rstd[ch] * sum_d_xbar[ch])
            .collect();
        if self.perturb == Perturb::BnNoVariance {
            dvar.iter_mut().for_each(|v| *v = 0.0);
        }
        let dmean: Vec<f64> = (0..c)
            .map(|ch| -rstd[ch] * sum_d[ch] - 2.0 / n * dvar[ch] * sum_zc[ch])
            .collect();
        let dz = T64::from_vec(
            &shape,
            (0..d.data.len())
                .map(|i| {
                    let ch = channel(&shape, i);
                    rstd[ch] * d.data[i]
                        + tf * dmean[ch] / n
                        + 2.0 / n * dvar[ch] * tf * zbar_centered.data[i]
                })
                .collect(),
        );
        (dz, T64::from_vec(&[c], dgamma), T64::from_vec(&[c], dbeta))
    }
}

// ------------------------------------------------------------ elementwise

fn time_mean(xs: &[T64]) -> T64 {
    let mut m = T64::zeros(&xs[0].shape);
    for x in xs {
        for (a, v) in m.data.iter_mut().zip(&x.data) {
            *a += v;
        }
    }
    let steps = xs.len() as f64;
    m.data.iter_mut().for_each(|v| *v /= steps);
    m
}

fn add(a: &T64, b: &T64) -> T64 {
    assert_eq!(a.shape, b.shape);
    T64::from_vec(
        &a.shape,
        a.data.iter().zip(&b.data).map(|(p, q)| p + q).collect(),
    )
}

fn mul(a: &T64, b: &T64) -> T64 {
    assert_eq!(a.shape, b.shape);
    T64::from_vec(
        &a.shape,
        a.data.iter().zip(&b.data).map(|(p, q)| p * q).collect(),
    )
}

/// Channel of flat element `i` of a `[B, C, ...]` tensor.
fn channel(shape: &[usize], i: usize) -> usize {
    let inner: usize = shape[2..].iter().product();
    (i / inner) % shape[1]
}

fn map_ch(x: &T64, f: impl Fn(usize, f64) -> f64) -> T64 {
    T64::from_vec(
        &x.shape,
        x.data
            .iter()
            .enumerate()
            .map(|(i, &v)| f(channel(&x.shape, i), v))
            .collect(),
    )
}

// ------------------------------------------------------------ linear

// ------------------------------------------------------------ conv

// ------------------------------------------------------------ avg pool
