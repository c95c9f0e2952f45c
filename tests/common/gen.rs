//! Random small valid models for property tests.
//!
//! A model is drawn as a list of layer "tokens" and assembled while tracking
//! the shape, so that every token becomes a layer that fits (a token that
//! cannot fit the current shape becomes a neuron layer instead).

use proptest::prelude::*;
use snnc::model::*;

#[derive(Clone, Debug)]
pub struct Recipe {
    pub image: bool,
    pub dims: (usize, usize, usize),
    pub tokens: Vec<(u8, u8, u8)>,
    pub neuron: (u8, u8),
    pub classes: usize,
    pub enc: u8,
}

pub fn recipe() -> impl Strategy<Value = Recipe> {
    (
        any::<bool>(),
        (1usize..=3, 3usize..=6, 3usize..=6),
        prop::collection::vec(any::<(u8, u8, u8)>(), 1..7),
        any::<(u8, u8)>(),
        2usize..=4,
        any::<u8>(),
    )
        .prop_map(|(image, dims, tokens, neuron, classes, enc)| Recipe {
            image,
            dims,
            tokens,
            neuron,
            classes,
            enc,
        })
}

/// The four reset variants and a few leaks/thresholds, from two bytes.
pub fn neuron_opts(a: u8, b: u8) -> NeuronOpts {
    NeuronOpts {
        lambda: Some([0.2, 0.5, 0.9, 0.0][(a % 4) as usize]),
        theta: Some([1.0, 0.5, 0.3][(b % 3) as usize]),
        reset: Some(if a & 4 == 0 { Reset::Soft } else { Reset::Hard }),
        v_reset: Some(if a & 32 == 0 { 0.0 } else { -0.1 }),
        detach_reset: Some(a & 8 == 0),
        surrogate: Some(
            [
                SurrogateKind::Sigmoid,
                SurrogateKind::Atan,
                SurrogateKind::Triangle,
                SurrogateKind::FastSigmoid,
            ][((b / 3) % 4) as usize],
        ),
        alpha: Some(if a & 16 == 0 { 4.0 } else { 2.0 }),
    }
}

pub fn build(r: &Recipe) -> Model {
    let (c, h, w) = r.dims;
    let mut shape: Vec<usize> = if r.image { vec![c, h, w] } else { vec![c * h] };
    let mut layers = Vec::new();
    let neuron = |x: u8, y: u8| {
        let kind = if y & 64 == 0 {
            NeuronKind::Lif
        } else {
            NeuronKind::If
        };
        // Half the layers override the model defaults.
        let opts = if x & 128 == 0 {
            neuron_opts(x, y)
        } else {
            NeuronOpts::default()
        };
        LayerKind::Neuron { kind, opts }
    };
    for &(k, x, y) in &r.tokens {
        let image = shape.len() == 3;
        let kind = match k % 8 {
            0 if image => {
                let (kernel, stride, padding) = (
                    1 + (x % 3) as usize,
                    1 + ((x / 3) % 2) as usize,
                    ((y / 3) % 2) as usize,
                );
                if shape[1] + 2 * padding < kernel || shape[2] + 2 * padding < kernel {
                    neuron(x, y)
                } else {
                    let out = 1 + (y % 3) as usize;
                    shape = vec![
                        out,
                        (shape[1] + 2 * padding - kernel) / stride + 1,
                        (shape[2] + 2 * padding - kernel) / stride + 1,
                    ];
                    LayerKind::Conv2d {
                        out,
                        kernel,
                        stride,
                        padding,
                        bias: x & 64 != 0,
                    }
                }
            }
            1 => LayerKind::BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
            },
            // Pools of kernel 2 or 3, stride 1 to 3 (overlapping, tiling
            // and gapped windows), padding 0 or 1; max pools with either
            // rate rule.
            2 | 3 if image => {
                let (kernel, stride, padding) = (
                    2 + (x % 2) as usize,
                    1 + ((x / 2) % 3) as usize,
                    ((x / 6) % 2) as usize,
                );
                if shape[1] + 2 * padding < kernel || shape[2] + 2 * padding < kernel {
                    neuron(x, y)
                } else {
                    shape = vec![
                        shape[0],
                        (shape[1] + 2 * padding - kernel) / stride + 1,
                        (shape[2] + 2 * padding - kernel) / stride + 1,
                    ];
                    if k % 8 == 2 {
                        LayerKind::AvgPool {
                            kernel,
                            stride,
                            padding,
                        }
                    } else {
                        LayerKind::MaxPool {
                            kernel,
                            stride,
                            padding,
                            rate_rule: if y & 16 == 0 {
                                MaxPoolRule::Masks
                            } else {
                                MaxPoolRule::Rates
                            },
                        }
                    }
                }
            }
            5 if image => LayerKind::Residual {
                main: vec![
                    Layer::new(LayerKind::Conv2d {
                        out: shape[0],
                        kernel: 3,
                        stride: 1,
                        padding: 1,
                        bias: false,
                    }),
                    Layer::new(LayerKind::BatchNorm {
                        eps: 1e-5,
                        momentum: 0.1,
                    }),
                    Layer::new(neuron(x, y)),
                ],
                shortcut: vec![],
            },
            5 => LayerKind::Residual {
                main: vec![
                    Layer::new(LayerKind::Linear {
                        out: shape[0],
                        bias: true,
                    }),
                    Layer::new(neuron(x, y)),
                ],
                shortcut: if x & 1 == 0 {
                    vec![]
                } else {
                    vec![Layer::new(LayerKind::Linear {
                        out: shape[0],
                        bias: false,
                    })]
                },
            },
            6 if image => {
                shape = vec![shape.iter().product()];
                LayerKind::Flatten
            }
            6 => {
                let out = 2 + (x % 5) as usize;
                shape = vec![out];
                LayerKind::Linear {
                    out,
                    bias: y & 1 == 0,
                }
            }
            _ => neuron(x, y),
        };
        layers.push(Layer::new(kind));
    }
    if shape.len() == 3 {
        layers.push(Layer::new(LayerKind::Flatten));
    }
    layers.push(Layer::new(LayerKind::Linear {
        out: r.classes,
        bias: true,
    }));
    Model {
        name: "random".into(),
        input: Input {
            shape: if r.image { vec![c, h, w] } else { vec![c * h] },
            encoding: match r.enc % 4 {
                1 => Encoding::Poisson {
                    seed: u64::from(r.enc),
                },
                2 if r.image => Encoding::Events,
                _ => Encoding::Direct,
            },
        },
        neuron: neuron_opts(r.neuron.0, r.neuron.1),
        layers,
    }
}

/// A layer whose spikes fusion pools in its kernel (`passes/fuse`'s
/// windowed kernels): `ci`×`h`×`w` input (h and w even), a 3×3
/// convolution to `co` channels, optionally batch norm, LIF, `avgpool 2`,
/// then a linear readout. Drawn by [`windowed`].
#[derive(Clone, Debug)]
pub struct Windowed {
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub batch_norm: bool,
}

pub fn windowed() -> impl Strategy<Value = Windowed> {
    (
        1usize..=3,
        1usize..=5,
        1usize..=6,
        1usize..=5,
        any::<bool>(),
    )
        .prop_map(|(ci, h2, w2, co, batch_norm)| Windowed {
            ci,
            h: 2 * h2,
            w: 2 * w2,
            co,
            batch_norm,
        })
}

impl Windowed {
    pub fn model(&self) -> Model {
        let Windowed {
            ci,
            h,
            w,
            co,
            batch_norm,
        } = *self;
        let bn = if batch_norm { "batchnorm\n" } else { "" };
        let src = format!(
            "model windowed\ninput {ci}x{h}x{w}\nconv2d {co} kernel=3 padding=1\n{bn}lif\navgpool 2\nflatten\nlinear 3\n"
        );
        snnc::dsl::parse(&src, "windowed.snn").expect("a valid model")
    }
}
