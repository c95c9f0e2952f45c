//! Building a `Model` in Rust, with the same defaults as the `.snn` text.
//!
//! ```
//! use snnc::dsl::ModelBuilder;
//! use snnc::model::Encoding;
//!
//! let m = ModelBuilder::new("digits_mlp")
//!     .input(&[64])
//!     .encoding(Encoding::Direct)
//!     .linear(128)
//!     .lif()
//!     .residual(|main| main.linear(128).lif(), |shortcut| shortcut)
//!     .linear(10)
//!     .build();
//! assert_eq!(m.layers.len(), 4);
//! ```

use super::{BATCHNORM_EPS, BATCHNORM_MOMENTUM};
use crate::model::{Encoding, Input, Layer, LayerKind, MaxPoolRule, Model, NeuronKind, NeuronOpts};

/// Builds a whole model: name, input, neuron defaults and top-level layers.
#[derive(Clone, Debug)]
pub struct ModelBuilder {
    name: String,
    input: Input,
    neuron: NeuronOpts,
    top: BlockBuilder,
}

/// Builds the layers of one branch of a residual block.
///
/// Branch closures receive `&mut BlockBuilder`, never a builder by value:
/// rustc 1.95 miscompiles a closure call whose by-value argument is larger
/// than two words when the caller passes two equal values (two
/// `BlockBuilder::new()`, merged by MIR GVN) and the closure changes its
/// argument in place (rust-lang/rust#155241; README, "Known toolchain
/// bugs"). A reference is passed in a register and cannot be shared.
#[derive(Clone, Debug, Default)]
pub struct BlockBuilder {
    layers: Vec<Layer>,
}

/// The layer methods of both builders, defined once: each maps its
/// arguments to the layer it appends. `BlockBuilder` gets `&mut self`
/// methods, `ModelBuilder` by-value ones that delegate to its top level.
macro_rules! layer_methods {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $kind:expr;)*) => {
        impl BlockBuilder {
            $($(#[$doc])* pub fn $name(&mut self, $($arg: $ty),*) -> &mut Self {
                self.layer($kind)
            })*
        }
        impl ModelBuilder {
            $($(#[$doc])* pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.top.$name($($arg),*);
                self
            })*
        }
    };
}

layer_methods! {
    fn conv2d(out: usize, kernel: usize, stride: usize, padding: usize, bias: bool) =>
        LayerKind::Conv2d { out, kernel, stride, padding, bias };
    fn linear(out: usize) => LayerKind::Linear { out, bias: true };
    fn linear_nobias(out: usize) => LayerKind::Linear { out, bias: false };
    /// Batch norm with the DSL's defaults (eps 1e-5, momentum 0.1).
    fn batchnorm() => LayerKind::BatchNorm { eps: BATCHNORM_EPS, momentum: BATCHNORM_MOMENTUM };
    /// Average pooling with stride equal to the kernel.
    fn avgpool(kernel: usize) => LayerKind::AvgPool { kernel, stride: kernel, padding: 0 };
    /// Max pooling with stride equal to the kernel.
    fn maxpool(kernel: usize) => LayerKind::MaxPool {
        kernel, stride: kernel, padding: 0, rate_rule: MaxPoolRule::Masks
    };
    /// Max pooling with any window geometry and rate-mode rule (the
    /// ImageNet ResNet stem is `maxpool_with(3, 2, 1, MaxPoolRule::Masks)`).
    fn maxpool_with(kernel: usize, stride: usize, padding: usize, rate_rule: MaxPoolRule) =>
        LayerKind::MaxPool { kernel, stride, padding, rate_rule };
    fn flatten() => LayerKind::Flatten;
    fn dropout(p: f64) => LayerKind::Dropout { p };
    /// A LIF layer that takes every option from the model's defaults.
    fn lif() => LayerKind::Neuron { kind: NeuronKind::Lif, opts: NeuronOpts::default() };
    fn lif_with(opts: NeuronOpts) => LayerKind::Neuron { kind: NeuronKind::Lif, opts };
    /// An IF layer (a LIF that never leaks).
    fn if_neuron() => LayerKind::Neuron { kind: NeuronKind::If, opts: NeuronOpts::default() };
    /// An IF layer with its own options; `opts.lambda` must be `None`.
    fn if_with(opts: NeuronOpts) => LayerKind::Neuron { kind: NeuronKind::If, opts };
}

impl BlockBuilder {
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    /// Appends any layer.
    pub fn layer(&mut self, kind: LayerKind) -> &mut Self {
        self.layers.push(Layer::new(kind));
        self
    }

    /// A residual block: `shortcut` leaving its branch empty (`|s| s`) is
    /// the identity shortcut.
    pub fn residual(
        &mut self,
        main: impl FnOnce(&mut BlockBuilder) -> &mut BlockBuilder,
        shortcut: impl FnOnce(&mut BlockBuilder) -> &mut BlockBuilder,
    ) -> &mut Self {
        let (mut m, mut s) = (BlockBuilder::new(), BlockBuilder::new());
        main(&mut m);
        shortcut(&mut s);
        self.layer(LayerKind::Residual {
            main: m.layers,
            shortcut: s.layers,
        })
    }

    pub fn into_layers(self) -> Vec<Layer> {
        self.layers
    }
}

impl ModelBuilder {
    /// A model with direct encoding, no neuron defaults and no layers. Its
    /// input shape stays empty until `input` is called.
    pub fn new(name: impl Into<String>) -> ModelBuilder {
        ModelBuilder {
            name: name.into(),
            input: Input {
                shape: Vec::new(),
                encoding: Encoding::Direct,
            },
            neuron: NeuronOpts::default(),
            top: BlockBuilder::new(),
        }
    }

    pub fn input(mut self, shape: &[usize]) -> Self {
        self.input.shape = shape.to_vec();
        self
    }

    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.input.encoding = encoding;
        self
    }

    /// Model-wide neuron defaults (the `neuron` line).
    pub fn neuron(mut self, opts: NeuronOpts) -> Self {
        self.neuron = opts;
        self
    }

    /// Appends any layer.
    pub fn layer(mut self, kind: LayerKind) -> Self {
        self.top.layer(kind);
        self
    }

    /// A residual block: `shortcut` leaving its branch empty (`|s| s`) is
    /// the identity shortcut.
    pub fn residual(
        mut self,
        main: impl FnOnce(&mut BlockBuilder) -> &mut BlockBuilder,
        shortcut: impl FnOnce(&mut BlockBuilder) -> &mut BlockBuilder,
    ) -> Self {
        self.top.residual(main, shortcut);
        self
    }

    pub fn build(self) -> Model {
        Model {
            name: self.name,
            input: self.input,
            neuron: self.neuron,
            layers: self.top.layers,
        }
    }
}
