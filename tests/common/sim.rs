//! An independent, straightforward simulator of a `Model`'s forward pass.
//!
//! It shares nothing with the unroller or the interpreter: it walks the
//! layer list, keeps a `Vec` of per-step activations per layer (layer-major,
//! which is how temporal batch norm has to be computed anyway) and writes
//! every op as the textbook formula. The unrolled graph run by the
//! interpreter must agree with it to rounding.

use snnc::model::{Encoding, Layer, LayerKind, Model, Neuron, Reset};
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// Activations of one step: shape `[B, ...]`.
type Act = Tensor<f64>;

pub fn simulate(
    model: &Model,
    params: &HashMap<String, Tensor<f64>>,
    x: &Tensor<f64>,
    steps: usize,
    run_seed: u64,
) -> Tensor<f64> {
    let b = x.shape[0];
    let frames: Vec<Act> = (0..steps)
        .map(|t| match model.input.encoding {
            Encoding::Direct => x.clone(),
            Encoding::Poisson { seed } => {
                let stream = snnc::rng::mix64(seed).wrapping_add(t as u64);
                let data = x
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let u = snnc::rng::uniform(run_seed, stream, i as u64);
                        if u < p.clamp(0.0, 1.0) {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Tensor::from_vec(&x.shape, data)
            }
            Encoding::Events => {
                let per: usize = x.shape[2..].iter().product();
                let mut shape = vec![b];
                shape.extend_from_slice(&x.shape[2..]);
                let mut data = Vec::with_capacity(b * per);
                for bi in 0..b {
                    let start = (bi * steps + t) * per;
                    data.extend_from_slice(&x.data[start..start + per]);
                }
                Tensor::from_vec(&shape, data)
            }
        })
        .collect();
    let out = run_layers(model, &model.layers, "", params, frames);
    let mut mean = Tensor::zeros(&out[0].shape);
    for o in &out {
        for (m, v) in mean.data.iter_mut().zip(&o.data) {
            *m += v / steps as f64;
        }
    }
    mean
}

fn run_layers(
    model: &Model,
    layers: &[Layer],
    prefix: &str,
    params: &HashMap<String, Tensor<f64>>,
    mut xs: Vec<Act>,
) -> Vec<Act> {
    for (i, layer) in layers.iter().enumerate() {
        let path = format!("{prefix}{i}");
        let p = |s: &str| &params[&format!("{path}.{s}")];
        xs = match &layer.kind {
            LayerKind::Linear { out, bias } => xs
                .iter()
                .map(|x| {
                    let (b, n) = (x.shape[0], x.shape[1]);
                    let w = p("weight");
                    let mut y = Tensor::zeros(&[b, *out]);
                    for bi in 0..b {
                        for o in 0..*out {
                            let mut acc = if *bias { p("bias").data[o] } else { 0.0 };
                            for k in 0..n {
                                acc += w.data[o * n + k] * x.data[bi * n + k];
                            }
                            y.data[bi * out + o] = acc;
                        }
                    }
                    y
                })
                .collect(),
            LayerKind::Conv2d {
                out,
                kernel,
                stride,
                padding,
                bias,
            } => xs
                .iter()
                .map(|x| {
                    conv(
                        x,
                        p("weight"),
                        bias.then(|| p("bias")),
                        *out,
                        *kernel,
                        *stride,
                        *padding,
                    )
                })
                .collect(),
            LayerKind::BatchNorm { eps, .. } => batchnorm(&xs, p("gamma"), p("beta"), *eps),
            LayerKind::AvgPool {
                kernel,
                stride,
                padding,
            } => xs
                .iter()
                .map(|x| pool(x, *kernel, *stride, *padding, false))
                .collect(),
            LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                ..
            } => xs
                .iter()
                .map(|x| pool(x, *kernel, *stride, *padding, true))
                .collect(),
            LayerKind::Flatten => xs
                .into_iter()
                .map(|x| {
                    let b = x.shape[0];
                    let n = x.data.len() / b;
                    Tensor::from_vec(&[b, n], x.data)
                })
                .collect(),
            LayerKind::Dropout { .. } => panic!("the simulator does not model dropout"),
            LayerKind::Neuron { kind, opts } => {
                lif(&Neuron::resolve(*kind, opts, &model.neuron), &xs)
            }
            LayerKind::Residual { main, shortcut } => {
                let a = run_layers(model, main, &format!("{path}.main."), params, xs.clone());
                let c = run_layers(model, shortcut, &format!("{path}.shortcut."), params, xs);
                a.into_iter()
                    .zip(c)
                    .map(|(mut a, c)| {
                        for (x, y) in a.data.iter_mut().zip(&c.data) {
                            *x += y;
                        }
                        a
                    })
                    .collect()
            }
        };
    }
    xs
}

/// The LIF recurrence, neuron by neuron, exactly as docs/math.md writes it.
fn lif(n: &Neuron, currents: &[Act]) -> Vec<Act> {
    let size = currents[0].data.len();
    let mut v = vec![0.0; size];
    let mut out = Vec::new();
    for i_t in currents {
        let mut s_t = Tensor::zeros(&i_t.shape);
        for j in 0..size {
            let u = n.lambda * v[j] + i_t.data[j];
            let s = if u - n.theta >= 0.0 { 1.0 } else { 0.0 };
            v[j] = match n.reset {
                Reset::Soft => u - n.theta * s,
                Reset::Hard => (1.0 - s) * u + s * n.v_reset,
            };
            s_t.data[j] = s;
        }
        out.push(s_t);
    }
    out
}

/// Direct convolution: each output pixel gathers its receptive field.
fn conv(
    x: &Act,
    w: &Tensor<f64>,
    bias: Option<&Tensor<f64>>,
    co: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Act {
    let (b, ci, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let ho = (h + 2 * p - k) / s + 1;
    let wo = (wd + 2 * p - k) / s + 1;
    let mut y = Tensor::zeros(&[b, co, ho, wo]);
    for bi in 0..b {
        for oy in 0..ho {
            for ox in 0..wo {
                for o in 0..co {
                    let mut acc = bias.map_or(0.0, |bb| bb.data[o]);
                    for c in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv =
                                    x.data[((bi * ci + c) * h + iy as usize) * wd + ix as usize];
                                acc += xv * w.data[((o * ci + c) * k + ky) * k + kx];
                            }
                        }
                    }
                    y.data[((bi * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

/// Pooling with padding `p` on every side: a padded position is skipped
/// (−∞ for max, 0 for average; the average divides by k² regardless).
fn pool(x: &Act, k: usize, s: usize, p: usize, max: bool) -> Act {
    let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = Tensor::zeros(&[b, c, ho, wo]);
    for bc in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let window = (0..k * k).filter_map(|i| {
                    let iy = (oy * s + i / k).checked_sub(p).filter(|&v| v < h)?;
                    let ix = (ox * s + i % k).checked_sub(p).filter(|&v| v < w)?;
                    Some(x.data[(bc * h + iy) * w + ix])
                });
                y.data[(bc * ho + oy) * wo + ox] = if max {
                    window.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    window.sum::<f64>() / (k * k) as f64
                };
            }
        }
    }
    y
}

/// Temporal batch norm: per-channel statistics over every step, sample and
/// pixel; the biased variance, as in training-mode PyTorch.
fn batchnorm(xs: &[Act], gamma: &Tensor<f64>, beta: &Tensor<f64>, eps: f64) -> Vec<Act> {
    let shape = &xs[0].shape;
    let (b, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let count = (xs.len() * b * inner) as f64;
    let chan = |i: usize| (i / inner) % c;
    let mut mean = vec![0.0; c];
    for x in xs {
        for (i, v) in x.data.iter().enumerate() {
            mean[chan(i)] += v / count;
        }
    }
    let mut var = vec![0.0; c];
    for x in xs {
        for (i, v) in x.data.iter().enumerate() {
            var[chan(i)] += (v - mean[chan(i)]).powi(2) / count;
        }
    }
    xs.iter()
        .map(|x| {
            let data = x
                .data
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let ch = chan(i);
                    gamma.data[ch] * (v - mean[ch]) / (var[ch] + eps).sqrt() + beta.data[ch]
                })
                .collect();
            Tensor::from_vec(&x.shape, data)
        })
        .collect()
}
