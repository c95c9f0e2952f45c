//! Shape inference over a `Model`: per-layer input/output shapes (per
//! sample, no batch axis), parameters, neuron counts — and errors that name
//! the layer and the mismatch.

use crate::model::{Encoding, LayerKind, Model, Pos};
use serde::Serialize;

/// How a parameter is initialised (see `init`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Init {
    /// He/Kaiming uniform: U(−√(6/fan_in), √(6/fan_in)).
    KaimingUniform {
        fan_in: usize,
    },
    /// U(−1/√fan_in, 1/√fan_in), as PyTorch initialises biases.
    BiasUniform {
        fan_in: usize,
    },
    Ones,
    Zeros,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamSpec {
    /// `{layer path}.{weight|bias|gamma|beta|running_mean|running_var}`.
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// False for batch-norm running statistics (buffers, not trained).
    pub trainable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerShape {
    /// `"3"`, `"5.main.1"`, `"5.shortcut.0"`.
    pub path: String,
    pub keyword: &'static str,
    /// Residual nesting depth (0 at top level).
    pub depth: usize,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub params: Vec<ParamSpec>,
    /// Spiking neurons in this layer (per sample).
    pub neurons: usize,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    /// Per-sample shape of one encoded timestep.
    pub input: Vec<usize>,
    /// Every layer in source order; a residual block comes before the
    /// layers of its branches.
    pub layers: Vec<LayerShape>,
    pub output: Vec<usize>,
}

impl Analysis {
    pub fn params(&self) -> impl Iterator<Item = &ParamSpec> {
        self.layers.iter().flat_map(|l| l.params.iter())
    }

    /// Trainable parameter count.
    pub fn param_count(&self) -> usize {
        self.params()
            .filter(|p| p.trainable)
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    pub fn neuron_count(&self) -> usize {
        self.layers.iter().map(|l| l.neurons).sum()
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("layer {path} `{keyword}`: {message}")]
pub struct ShapeError {
    pub path: String,
    pub keyword: &'static str,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

pub fn dims(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    parts.join("×")
}

pub fn analyze(model: &Model) -> Result<Analysis, ShapeError> {
    let mut layers = Vec::new();
    let input = model.input.shape.clone();
    if input.is_empty() || input.contains(&0) || !(input.len() == 1 || input.len() == 3) {
        return Err(ShapeError {
            path: "input".into(),
            keyword: "input",
            pos: Pos::default(),
            message: format!(
                "input shape must be N or C×H×W with every dimension > 0, got {}",
                dims(&input)
            ),
            hint: None,
        });
    }
    if matches!(model.input.encoding, Encoding::Events) && input.len() != 3 {
        return Err(ShapeError {
            path: "input".into(),
            keyword: "input",
            pos: Pos::default(),
            message: format!("event frames must be C×H×W, got {}", dims(&input)),
            hint: Some("event input is binned into frames of 2 polarity channels, e.g. `input 2x48x48 encoding=events`".into()),
        });
    }
    let output = walk(&model.layers, "", 0, input.clone(), &mut layers)?;
    if model.layers.is_empty() {
        return Err(ShapeError {
            path: "model".into(),
            keyword: "model",
            pos: Pos::default(),
            message: "the model has no layers".into(),
            hint: None,
        });
    }
    if output.len() != 1 {
        let last = model.layers.last().expect("non-empty");
        return Err(ShapeError {
            path: (model.layers.len() - 1).to_string(),
            keyword: last.kind.keyword(),
            pos: last.pos,
            message: format!(
                "the readout needs a flat output (class scores), but the last layer gives {}",
                dims(&output)
            ),
            hint: Some("end the model with `flatten` and a `linear` layer".into()),
        });
    }
    Ok(Analysis {
        input,
        layers,
        output,
    })
}

fn walk(
    list: &[crate::model::Layer],
    prefix: &str,
    depth: usize,
    mut shape: Vec<usize>,
    out: &mut Vec<LayerShape>,
) -> Result<Vec<usize>, ShapeError> {
    for (i, layer) in list.iter().enumerate() {
        let path = format!("{prefix}{i}");
        let keyword = layer.kind.keyword();
        let fail = |message: String, hint: Option<&str>| ShapeError {
            path: path.clone(),
            keyword,
            pos: layer.pos,
            message,
            hint: hint.map(str::to_string),
        };
        let param = |suffix: &str, shape: Vec<usize>, init: Init| ParamSpec {
            name: format!("{path}.{suffix}"),
            shape,
            init,
            trainable: true,
        };
        let image = |what: &str| -> Result<(usize, usize, usize), ShapeError> {
            match shape.as_slice() {
                &[c, h, w] => Ok((c, h, w)),
                s => Err(fail(
                    format!("{what} needs an image input C×H×W, got a flat {}", dims(s)),
                    Some("image layers must come before `flatten`"),
                )),
            }
        };
        let mut params = Vec::new();
        let mut neurons = 0;
        let input = shape.clone();
        let output = match &layer.kind {
            LayerKind::Conv2d {
                out: co,
                kernel,
                stride,
                padding,
                bias,
            } => {
                let (c, h, w) = image("conv2d")?;
                if *co == 0 || *kernel == 0 || *stride == 0 {
                    return Err(fail(
                        "out channels, kernel and stride must be > 0".into(),
                        None,
                    ));
                }
                if h + 2 * padding < *kernel || w + 2 * padding < *kernel {
                    return Err(fail(
                        format!(
                            "kernel {kernel} with padding {padding} does not fit the {} input",
                            dims(&shape)
                        ),
                        Some(
                            "use a smaller kernel, more padding, or fewer pooling layers before it",
                        ),
                    ));
                }
                let fan_in = c * kernel * kernel;
                params.push(param(
                    "weight",
                    vec![*co, c, *kernel, *kernel],
                    Init::KaimingUniform { fan_in },
                ));
                if *bias {
                    params.push(param("bias", vec![*co], Init::BiasUniform { fan_in }));
                }
                vec![
                    *co,
                    (h + 2 * padding - kernel) / stride + 1,
                    (w + 2 * padding - kernel) / stride + 1,
                ]
            }
            LayerKind::Linear { out: o, bias } => {
                let n = match shape.as_slice() {
                    &[n] => n,
                    s => {
                        return Err(fail(
                            format!("linear needs a flat input, got {}", dims(s)),
                            Some("add `flatten` before it"),
                        ))
                    }
                };
                if *o == 0 {
                    return Err(fail("out features must be > 0".into(), None));
                }
                params.push(param(
                    "weight",
                    vec![*o, n],
                    Init::KaimingUniform { fan_in: n },
                ));
                if *bias {
                    params.push(param("bias", vec![*o], Init::BiasUniform { fan_in: n }));
                }
                vec![*o]
            }
            LayerKind::BatchNorm { .. } => {
                let c = shape[0];
                params.push(param("gamma", vec![c], Init::Ones));
                params.push(param("beta", vec![c], Init::Zeros));
                for (s, init) in [("running_mean", Init::Zeros), ("running_var", Init::Ones)] {
                    params.push(ParamSpec {
                        trainable: false,
                        ..param(s, vec![c], init)
                    });
                }
                shape.clone()
            }
            LayerKind::AvgPool { kernel, stride } | LayerKind::MaxPool { kernel, stride } => {
                let (c, h, w) = image(keyword)?;
                if *kernel == 0 || *stride == 0 {
                    return Err(fail("kernel and stride must be > 0".into(), None));
                }
                if h < *kernel || w < *kernel {
                    return Err(fail(
                        format!("kernel {kernel} is larger than the {} input", dims(&shape)),
                        Some("remove a pooling layer or use a smaller kernel"),
                    ));
                }
                vec![c, (h - kernel) / stride + 1, (w - kernel) / stride + 1]
            }
            LayerKind::Flatten => vec![shape.iter().product()],
            LayerKind::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(fail(format!("dropout p must be in [0, 1), got {p}"), None));
                }
                shape.clone()
            }
            LayerKind::Neuron { .. } => {
                neurons = shape.iter().product();
                shape.clone()
            }
            LayerKind::Residual { main, shortcut } => {
                let at = out.len();
                out.push(LayerShape {
                    path: path.clone(),
                    keyword,
                    depth,
                    input: input.clone(),
                    output: Vec::new(),
                    params: Vec::new(),
                    neurons: 0,
                    pos: layer.pos,
                });
                let a = walk(
                    main,
                    &format!("{path}.main."),
                    depth + 1,
                    shape.clone(),
                    out,
                )?;
                let b = walk(
                    shortcut,
                    &format!("{path}.shortcut."),
                    depth + 1,
                    shape.clone(),
                    out,
                )?;
                if a != b {
                    return Err(fail(
                        format!(
                            "the branches give different shapes: main {} vs shortcut {}",
                            dims(&a),
                            dims(&b)
                        ),
                        Some(if shortcut.is_empty() {
                            "an empty shortcut is the identity; give it a `conv2d` (kernel 1, matching stride) and `batchnorm` to change shape"
                        } else {
                            "make both branches change channels and resolution the same way"
                        }),
                    ));
                }
                out[at].output = a.clone();
                shape = a;
                continue;
            }
        };
        out.push(LayerShape {
            path,
            keyword,
            depth,
            input,
            output: output.clone(),
            params,
            neurons,
            pos: layer.pos,
        });
        shape = output;
    }
    Ok(shape)
}
