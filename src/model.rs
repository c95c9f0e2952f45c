//! The `Model`: what a `.snn` file or the Rust builder describes.
//!
//! A model is an input, neuron defaults and a list of layers (a residual
//! block nests two lists). It keeps what the user wrote — per-layer neuron
//! options stay `Option`s — so that printing it back gives the same text;
//! `Neuron::resolve` applies the defaults.

use serde::{Deserialize, Serialize};

/// Where a layer was written in a `.snn` file (1-based line and column).
/// Models built in Rust have no position; positions never take part in
/// model equality.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl PartialEq for Pos {
    fn eq(&self, _: &Pos) -> bool {
        true
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub input: Input,
    /// Neuron options every LIF/IF layer starts from.
    pub neuron: NeuronDefaults,
    pub layers: Vec<Layer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Per-sample shape: `[N]` (flat) or `[C, H, W]` (image).
    pub shape: Vec<usize>,
    pub encoding: Encoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The static input is repeated at every timestep.
    Direct,
    /// Bernoulli spikes with probability = input intensity (clamped to
    /// [0, 1]), from a counter-based generator: reproducible everywhere.
    Poisson { seed: u64 },
    /// The input is already binned into frames: `T × shape` per sample.
    Events,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reset {
    /// v = u − θ·s
    Soft,
    /// v = (1 − s)·u + s·v_reset
    Hard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SurrogateKind {
    /// α·sig(αx)·(1 − sig(αx))
    Sigmoid = 0,
    /// α / (2·(1 + (π/2·α·x)²))  (SpikingJelly's ATan)
    Atan = 1,
    /// max(0, α − α²·|x|)  (a triangle of height α and half-width 1/α)
    Triangle = 2,
    /// 1 / (1 + α·|x|)²  (SuperSpike's fast sigmoid, Zenke & Ganguli 2018;
    /// the default surrogate of snnTorch and Norse)
    FastSigmoid = 3,
}

impl SurrogateKind {
    /// Every surrogate, in code order. The derivative of each is defined
    /// once, as a kernel-IR expression, in `ir::scalar`.
    pub const ALL: [SurrogateKind; 4] = [
        SurrogateKind::Sigmoid,
        SurrogateKind::Atan,
        SurrogateKind::Triangle,
        SurrogateKind::FastSigmoid,
    ];

    /// The integer that selects this surrogate in the CUDA backend's
    /// `snnc_surrogate_grad` kernel (its discriminant).
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The surrogate the DSL calls `name`.
    pub fn from_name(name: &str) -> Option<SurrogateKind> {
        SurrogateKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The name the DSL uses (`surrogate=atan`).
    pub fn name(self) -> &'static str {
        match self {
            SurrogateKind::Sigmoid => "sigmoid",
            SurrogateKind::Atan => "atan",
            SurrogateKind::Triangle => "triangle",
            SurrogateKind::FastSigmoid => "fast_sigmoid",
        }
    }
}

/// The rate-mode gradient of a max-pool layer (`maxpool 2 rate_rule=…`).
/// Both are approximations of BPTT's per-step routing; see the README's
/// "Max-pooling in rate mode".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MaxPoolRule {
    /// snnc's default: each step routes δ by its own arg-max; averaged over
    /// time the routing becomes the mean selection mask (`maxpool-mask`,
    /// `maxpool-route` with `decorrelate`).
    #[default]
    Masks,
    /// The official code's rule: the layer pools the time-averaged rates,
    /// so the backward routes all of δ to the arg-max of the mean input and
    /// the next layer sees the max of the means (`maxpool-rates`).
    Rates,
}

impl MaxPoolRule {
    pub const ALL: [MaxPoolRule; 2] = [MaxPoolRule::Masks, MaxPoolRule::Rates];

    /// The name the DSL uses (`rate_rule=rates`).
    pub fn name(self) -> &'static str {
        match self {
            MaxPoolRule::Masks => "masks",
            MaxPoolRule::Rates => "rates",
        }
    }

    pub fn from_name(name: &str) -> Option<MaxPoolRule> {
        MaxPoolRule::ALL.into_iter().find(|r| r.name() == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Surrogate {
    pub kind: SurrogateKind,
    pub alpha: f64,
}

/// Neuron options as written: model-wide defaults (the `neuron` line), each
/// field optional; unset fields take the paper's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NeuronOpts {
    pub lambda: Option<f64>,
    pub theta: Option<f64>,
    pub reset: Option<Reset>,
    pub v_reset: Option<f64>,
    pub detach_reset: Option<bool>,
    pub surrogate: Option<SurrogateKind>,
    pub alpha: Option<f64>,
}

pub type NeuronDefaults = NeuronOpts;

/// Fully resolved neuron parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neuron {
    /// Leak factor λ (1 for IF).
    pub lambda: f64,
    pub theta: f64,
    pub reset: Reset,
    pub v_reset: f64,
    pub detach_reset: bool,
    pub surrogate: Surrogate,
}

impl Neuron {
    /// The paper's defaults (Yu et al. 2024, §5): λ 0.2, θ 1, soft detached
    /// reset, sigmoid surrogate with α 4.
    pub const PAPER: Neuron = Neuron {
        lambda: 0.2,
        theta: 1.0,
        reset: Reset::Soft,
        v_reset: 0.0,
        detach_reset: true,
        surrogate: Surrogate {
            kind: SurrogateKind::Sigmoid,
            alpha: 4.0,
        },
    };

    /// Layer options over model defaults over the paper's defaults. IF
    /// neurons have λ = 1 whatever the defaults say (a layer may not set it).
    pub fn resolve(kind: NeuronKind, layer: &NeuronOpts, defaults: &NeuronOpts) -> Neuron {
        let p = Neuron::PAPER;
        let pick = |l: Option<f64>, d: Option<f64>, v: f64| l.or(d).unwrap_or(v);
        Neuron {
            lambda: match kind {
                NeuronKind::If => 1.0,
                NeuronKind::Lif => pick(layer.lambda, defaults.lambda, p.lambda),
            },
            theta: pick(layer.theta, defaults.theta, p.theta),
            reset: layer.reset.or(defaults.reset).unwrap_or(p.reset),
            v_reset: pick(layer.v_reset, defaults.v_reset, p.v_reset),
            detach_reset: layer
                .detach_reset
                .or(defaults.detach_reset)
                .unwrap_or(p.detach_reset),
            surrogate: Surrogate {
                kind: layer
                    .surrogate
                    .or(defaults.surrogate)
                    .unwrap_or(p.surrogate.kind),
                alpha: pick(layer.alpha, defaults.alpha, p.surrogate.alpha),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NeuronKind {
    Lif,
    If,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub kind: LayerKind,
    /// Position in the source file, for error messages.
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LayerKind {
    Conv2d {
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    Linear {
        out: usize,
        bias: bool,
    },
    /// Temporal batch norm: statistics per channel over T·B·H·W.
    BatchNorm {
        eps: f64,
        momentum: f64,
    },
    /// Average pooling; padded positions count as zeros (the divisor is
    /// always kernel², PyTorch's `count_include_pad=True`).
    AvgPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Max pooling; padded positions never win (they are −∞).
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
        /// Which rate-mode gradient rule the layer uses.
        rate_rule: MaxPoolRule,
    },
    Flatten,
    /// One mask per sample, shared by every timestep.
    Dropout {
        p: f64,
    },
    Neuron {
        kind: NeuronKind,
        opts: NeuronOpts,
    },
    /// `main` and `shortcut` both read the block's input; their outputs are
    /// added. An empty shortcut is the identity.
    Residual {
        main: Vec<Layer>,
        shortcut: Vec<Layer>,
    },
}

impl LayerKind {
    /// The keyword that starts this layer in a `.snn` file.
    pub fn keyword(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "conv2d",
            LayerKind::Linear { .. } => "linear",
            LayerKind::BatchNorm { .. } => "batchnorm",
            LayerKind::AvgPool { .. } => "avgpool",
            LayerKind::MaxPool { .. } => "maxpool",
            LayerKind::Flatten => "flatten",
            LayerKind::Dropout { .. } => "dropout",
            LayerKind::Neuron {
                kind: NeuronKind::Lif,
                ..
            } => "lif",
            LayerKind::Neuron {
                kind: NeuronKind::If,
                ..
            } => "if",
            LayerKind::Residual { .. } => "residual",
        }
    }
}

impl Layer {
    pub fn new(kind: LayerKind) -> Layer {
        Layer {
            kind,
            pos: Pos::default(),
        }
    }
}
