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
            .map(|p| numel(&p.shape))
            .fold(0, usize::saturating_add)
    }

    pub fn neuron_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.neurons)
            .fold(0, usize::saturating_add)
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

/// The most elements any one tensor (a value or a parameter, per sample or
/// batched) may have: stored as f64 its bytes must fit an `isize`, the
/// largest allocation Rust can make. Larger sizes are errors, not wrapped
/// arithmetic; sizes below this can still be refused for want of memory
/// (`passes::mem`).
pub const MAX_ELEMENTS: usize = isize::MAX as usize / 8;

/// How deep `residual` blocks may nest. Real networks nest one or two
/// levels (ResNet, SEW-ResNet); 64 leaves ample room while keeping every
/// pass that recurses over the layer tree (shape analysis, unrolling, the
/// printer, serde, drop) far inside the 2 MiB stack of a spawned thread,
/// even in debug builds. The parser enforces it too, before building the
/// tree.
pub const MAX_NESTING: usize = 64;

/// The element count of a tensor of `shape`, computed with checked
/// arithmetic: `None` when the product overflows or exceeds
/// [`MAX_ELEMENTS`].
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// [`elements`] for a shape that is already known to be valid (every shape
/// in an `Analysis` or a verified graph): saturates instead of wrapping.
pub fn numel(shape: &[usize]) -> usize {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// A shape as `[1, 28, 28]` (the form of graph text and of internal
/// messages; `dims` gives the `1×28×28` of user-facing tables).
pub fn list(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

pub fn dims(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    parts.join("×")
}

pub fn analyze(model: &Model) -> Result<Analysis, ShapeError> {
    let mut layers = Vec::new();
    let input = model.input.shape.clone();
    let input_error = |message: &str, hint: Option<&str>| ShapeError {
        path: "input".into(),
        keyword: "input",
        pos: Pos::default(),
        message: message.to_string(),
        hint: hint.map(str::to_string),
    };
    if input.is_empty() || input.contains(&0) || !(input.len() == 1 || input.len() == 3) {
        return Err(input_error(
            &format!(
                "input shape must be N or C×H×W with every dimension > 0, got {}",
                dims(&input)
            ),
            None,
        ));
    }
    if elements(&input).is_none() {
        return Err(input_error(
            &format!("input shape {} is too large: {}", dims(&input), TOO_LARGE),
            Some(TOO_LARGE_HINT),
        ));
    }
    if matches!(model.input.encoding, Encoding::Events) && input.len() != 3 {
        return Err(input_error(
            &format!("event frames must be C×H×W, got {}", dims(&input)),
            Some("event input is binned into frames of 2 polarity channels, e.g. `input 2x48x48 encoding=events`"),
        ));
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
    // Totals, with checked sums: what `param_count` and `neuron_count`
    // report must be the true counts.
    let (mut params, mut neurons) = (0usize, 0usize);
    for l in &layers {
        let p = l
            .params
            .iter()
            .filter(|p| p.trainable)
            .try_fold(0usize, |n, p| n.checked_add(numel(&p.shape)));
        params = match p.and_then(|p| params.checked_add(p)) {
            Some(n) if n <= MAX_ELEMENTS => n,
            _ => return Err(layer_error(l, "the model's parameter count".into())),
        };
        neurons = match neurons.checked_add(l.neurons) {
            Some(n) if n <= MAX_ELEMENTS => n,
            _ => return Err(layer_error(l, "the model's neuron count".into())),
        };
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

/// Why a size is refused: it would not fit the arithmetic, let alone memory.
const TOO_LARGE: &str =
    "it overflows 64-bit size arithmetic or exceeds the largest possible tensor (2^60 elements)";
const TOO_LARGE_HINT: &str = "use smaller sizes; `snnc check` prints every layer's output shape";

fn layer_error(l: &LayerShape, what: String) -> ShapeError {
    ShapeError {
        path: l.path.clone(),
        keyword: l.keyword,
        pos: l.pos,
        message: format!("{what} is too large: {TOO_LARGE}"),
        hint: Some(TOO_LARGE_HINT.into()),
    }
}

/// `a · b + c`, `None` on overflow.
fn mul_add(a: usize, b: usize, c: usize) -> Option<usize> {
    a.checked_mul(b)?.checked_add(c)
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
        let fail = |message: &str, hint: Option<&str>| ShapeError {
            path: path.clone(),
            keyword,
            pos: layer.pos,
            message: message.to_string(),
            hint: hint.map(str::to_string),
        };
        let too_large = |what: &str| {
            fail(
                &format!("{what} is too large: {TOO_LARGE}"),
                Some(TOO_LARGE_HINT),
            )
        };
        // Every shape this layer makes (output, parameters) must have a
        // representable element count.
        let sized = |what: &str, s: &[usize]| -> Result<Vec<usize>, ShapeError> {
            match elements(s) {
                Some(_) => Ok(s.to_vec()),
                None => Err(too_large(&format!("the {what} ({})", dims(s)))),
            }
        };
        let param = |suffix: &str, shape: &[usize], init: Init| -> Result<ParamSpec, ShapeError> {
            Ok(ParamSpec {
                name: format!("{path}.{suffix}"),
                shape: sized(suffix, shape)?,
                init,
                trainable: true,
            })
        };
        let image = |what: &str| -> Result<(usize, usize, usize), ShapeError> {
            match shape.as_slice() {
                &[c, h, w] => Ok((c, h, w)),
                s => Err(fail(
                    &format!("{what} needs an image input C×H×W, got a flat {}", dims(s)),
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
                let (co, kernel, stride, padding) = (*co, *kernel, *stride, *padding);
                if co == 0 || kernel == 0 || stride == 0 {
                    return Err(fail("out channels, kernel and stride must be > 0", None));
                }
                // h + 2·padding, checked: a huge padding must not wrap round
                // to a small output.
                let (Some(ph), Some(pw)) = (mul_add(padding, 2, h), mul_add(padding, 2, w)) else {
                    return Err(too_large(&format!(
                        "padding {padding} on the {} input",
                        dims(&shape)
                    )));
                };
                if ph < kernel || pw < kernel {
                    return Err(fail(
                        &format!(
                            "kernel {kernel} with padding {padding} does not fit the {} input",
                            dims(&shape)
                        ),
                        Some(
                            "use a smaller kernel, more padding, or fewer pooling layers before it",
                        ),
                    ));
                }
                let Some(fan_in) = c.checked_mul(kernel).and_then(|n| n.checked_mul(kernel)) else {
                    return Err(too_large(&format!("kernel {kernel} over {c} channels")));
                };
                params.push(param(
                    "weight",
                    &[co, c, kernel, kernel],
                    Init::KaimingUniform { fan_in },
                )?);
                if *bias {
                    params.push(param("bias", &[co], Init::BiasUniform { fan_in })?);
                }
                sized(
                    "output",
                    &[co, (ph - kernel) / stride + 1, (pw - kernel) / stride + 1],
                )?
            }
            LayerKind::Linear { out: o, bias } => {
                let n = match shape.as_slice() {
                    &[n] => n,
                    s => {
                        return Err(fail(
                            &format!("linear needs a flat input, got {}", dims(s)),
                            Some("add `flatten` before it"),
                        ))
                    }
                };
                if *o == 0 {
                    return Err(fail("out features must be > 0", None));
                }
                params.push(param(
                    "weight",
                    &[*o, n],
                    Init::KaimingUniform { fan_in: n },
                )?);
                if *bias {
                    params.push(param("bias", &[*o], Init::BiasUniform { fan_in: n })?);
                }
                sized("output", &[*o])?
            }
            LayerKind::BatchNorm { .. } => {
                let c = shape[0];
                params.push(param("gamma", &[c], Init::Ones)?);
                params.push(param("beta", &[c], Init::Zeros)?);
                for (s, init) in [("running_mean", Init::Zeros), ("running_var", Init::Ones)] {
                    params.push(ParamSpec {
                        trainable: false,
                        ..param(s, &[c], init)?
                    });
                }
                shape.clone()
            }
            LayerKind::AvgPool {
                kernel,
                stride,
                padding,
            }
            | LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                ..
            } => {
                let (c, h, w) = image(keyword)?;
                if *kernel == 0 || *stride == 0 {
                    return Err(fail("kernel and stride must be > 0", None));
                }
                // PyTorch's rule: every window then holds an input element.
                if 2 * padding > *kernel {
                    return Err(fail(
                        &format!("padding {padding} is more than half the kernel {kernel}"),
                        Some("use padding ≤ kernel / 2"),
                    ));
                }
                let (ph, pw) = (h + 2 * padding, w + 2 * padding);
                if ph < *kernel || pw < *kernel {
                    return Err(fail(
                        &format!("kernel {kernel} is larger than the {} input", dims(&shape)),
                        Some("remove a pooling layer or use a smaller kernel"),
                    ));
                }
                vec![c, (ph - kernel) / stride + 1, (pw - kernel) / stride + 1]
            }
            LayerKind::Flatten => vec![sized("output", &shape)?.iter().product()],
            LayerKind::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(fail(&format!("dropout p must be in [0, 1), got {p}"), None));
                }
                shape.clone()
            }
            LayerKind::Neuron { .. } => {
                neurons = numel(&sized("output", &shape)?);
                shape.clone()
            }
            LayerKind::Residual { main, shortcut } => {
                if depth >= MAX_NESTING {
                    return Err(fail(
                        &format!("residual blocks are nested more than {MAX_NESTING} deep"),
                        Some(&nesting_hint()),
                    ));
                }
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
                        &format!(
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

/// The hint for a model nested deeper than [`MAX_NESTING`] (parser and
/// shape analysis).
pub fn nesting_hint() -> String {
    format!(
        "snnc allows {MAX_NESTING} levels of nested `residual` blocks (real networks use one or \
         two); put blocks one after another instead of inside each other"
    )
}
