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
use crate::model::{Encoding, Input, Layer, LayerKind, Model, NeuronKind, NeuronOpts};

/// Builds a whole model: name, input, neuron defaults and top-level layers.
#[derive(Clone, Debug)]
pub struct ModelBuilder {
    name: String,
    input: Input,
    neuron: NeuronOpts,
    layers: Vec<Layer>,
}

/// Builds the layers of one branch of a residual block.
#[derive(Clone, Debug, Default)]
pub struct BlockBuilder {
    layers: Vec<Layer>,
}

// The layer methods are generated for both builders so that model and branch
// read the same, without callers having to import a trait.
macro_rules! layer_methods {
    () => {
        /// Appends any layer.
        pub fn layer(mut self, kind: LayerKind) -> Self {
            self.layers.push(Layer::new(kind));
            self
        }

        pub fn conv2d(
            self,
            out: usize,
            kernel: usize,
            stride: usize,
            padding: usize,
            bias: bool,
        ) -> Self {
            self.layer(LayerKind::Conv2d {
                out,
                kernel,
                stride,
                padding,
                bias,
            })
        }

        pub fn linear(self, out: usize) -> Self {
            self.layer(LayerKind::Linear { out, bias: true })
        }

        pub fn linear_nobias(self, out: usize) -> Self {
            self.layer(LayerKind::Linear { out, bias: false })
        }

        /// Batch norm with the DSL's defaults (eps 1e-5, momentum 0.1).
        pub fn batchnorm(self) -> Self {
            self.layer(LayerKind::BatchNorm {
                eps: BATCHNORM_EPS,
                momentum: BATCHNORM_MOMENTUM,
            })
        }

        /// Average pooling with stride equal to the kernel.
        pub fn avgpool(self, kernel: usize) -> Self {
            self.layer(LayerKind::AvgPool {
                kernel,
                stride: kernel,
            })
        }

        /// Max pooling with stride equal to the kernel.
        pub fn maxpool(self, kernel: usize) -> Self {
            self.layer(LayerKind::MaxPool {
                kernel,
                stride: kernel,
            })
        }

        pub fn flatten(self) -> Self {
            self.layer(LayerKind::Flatten)
        }

        pub fn dropout(self, p: f64) -> Self {
            self.layer(LayerKind::Dropout { p })
        }

        /// A LIF layer that takes every option from the model's defaults.
        pub fn lif(self) -> Self {
            self.lif_with(NeuronOpts::default())
        }

        pub fn lif_with(self, opts: NeuronOpts) -> Self {
            self.layer(LayerKind::Neuron {
                kind: NeuronKind::Lif,
                opts,
            })
        }

        /// An IF layer (a LIF that never leaks).
        pub fn if_neuron(self) -> Self {
            self.if_with(NeuronOpts::default())
        }

        /// An IF layer with its own options; `opts.lambda` must be `None`.
        pub fn if_with(self, opts: NeuronOpts) -> Self {
            self.layer(LayerKind::Neuron {
                kind: NeuronKind::If,
                opts,
            })
        }

        /// A residual block: `shortcut` returning an empty branch (`|s| s`)
        /// is the identity shortcut.
        pub fn residual(
            self,
            main: impl FnOnce(BlockBuilder) -> BlockBuilder,
            shortcut: impl FnOnce(BlockBuilder) -> BlockBuilder,
        ) -> Self {
            self.layer(LayerKind::Residual {
                main: main(BlockBuilder::new()).layers,
                shortcut: shortcut(BlockBuilder::new()).layers,
            })
        }
    };
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
            layers: Vec::new(),
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

    layer_methods!();

    pub fn build(self) -> Model {
        Model {
            name: self.name,
            input: self.input,
            neuron: self.neuron,
            layers: self.layers,
        }
    }
}

impl BlockBuilder {
    pub fn new() -> BlockBuilder {
        BlockBuilder::default()
    }

    layer_methods!();

    pub fn into_layers(self) -> Vec<Layer> {
        self.layers
    }
}
