//! Exchanging models and numbers with other frameworks:
//!
//! - parameter files (`params.safetensors`) and their names
//!   ([`load_params`], [`save_params`], [`param_table`]);
//! - a model with its weights from a run folder, checkpoint or `.snn` file
//!   and parameter file ([`model_and_params`]: `snnc export`; the NIR
//!   conversion itself is [`crate::nir`]);
//! - inference on given weights and input ([`infer`], `snnc run --params
//!   --input`);
//! - gradients on given weights and batch ([`grad::compute`],
//!   [`grad::grad_dump`]: `snnc grad-check --params --batch-file --dump`).
//!
//! **Parameter names** are `{layer path}.{field}`: the layer path is the
//! layer's position in its list, counting every layer (parameter-free ones
//! too), with `.main.` / `.shortcut.` for the branches of a residual block —
//! `0.weight` (a conv2d), `1.gamma`, `1.beta`, `1.running_mean`,
//! `1.running_var` (its batch norm), `5.main.0.weight`,
//! `5.shortcut.1.gamma`. Fields: conv2d/linear `weight` (out, in[, k, k])
//! and `bias` (out); batchnorm `gamma`, `beta` (trained) and
//! `running_mean`, `running_var` (statistics). `snnc check FILE --params`
//! lists them.

use crate::compare;
use crate::init::Params;
use crate::interp::{self, RunOptions};
use crate::ir::Op;
use crate::model::{Encoding, Model};
use crate::shape::{dims, Analysis};
use crate::tensor::Tensor;
use crate::unroll::{self, Phase, UnrollConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why a model, its weights, an input batch or a gradient step could not
/// be had.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    #[error(transparent)]
    Frontend(#[from] crate::frontend::FrontendError),
    #[error(transparent)]
    Params(#[from] crate::runtime::params::ParamsError),
    #[error(transparent)]
    Checkpoint(#[from] crate::runtime::checkpoint::CheckpointError),
    #[error(transparent)]
    Unroll(#[from] crate::unroll::UnrollError),
    #[error(transparent)]
    Interp(#[from] crate::interp::InterpError),
    #[error(transparent)]
    Pass(#[from] crate::passes::PassError),
    #[error(transparent)]
    Compile(#[from] crate::compile::CompileError),
    #[error(transparent)]
    Memory(#[from] crate::passes::mem::MemoryError),
    #[error(
        "`{}` is a model without weights: add --params PARAMS.safetensors \
         (or give a run folder or checkpoint)",
        .0.display()
    )]
    NoWeights(PathBuf),
    #[error("bad config in checkpoint: {0}")]
    BadConfig(serde_json::Error),
    #[error("the input has no batch axis")]
    NoBatchAxis,
    #[error("`{}` has no tensor `x` (the input batch, [B, {}])", file.display(), dims(want))]
    NoInput { file: PathBuf, want: Vec<usize> },
    #[error("`{}`: `x` has shape {}, the model needs [B, {}]", file.display(), dims(shape), dims(want))]
    InputShape {
        file: PathBuf,
        shape: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("`{}` has no tensor `labels` (class indices [B] or one-hot [B, {classes}])", file.display())]
    NoLabels { file: PathBuf, classes: usize },
    #[error(
        "`{}`: `labels` has shape {}; give class indices [{batch}] or one-hot [{batch}, {classes}]",
        file.display(),
        dims(shape)
    )]
    LabelShape {
        file: PathBuf,
        shape: Vec<usize>,
        batch: usize,
        classes: usize,
    },
    #[error("`{}`: label {label} of sample {sample} is not a class index in 0..{classes}", file.display())]
    BadLabel {
        file: PathBuf,
        label: f64,
        sample: usize,
        classes: usize,
    },
    #[error("internal: no gradient for `{param}` in {mode} mode")]
    NoGradient { param: String, mode: &'static str },
    /// Text from a stage that still reports its errors as strings (the
    /// compiler driver, the memory checks).
    #[error("{0}")]
    Stage(String),
}

impl From<String> for InteropError {
    fn from(s: String) -> InteropError {
        InteropError::Stage(s)
    }
}

pub use crate::runtime::params::{
    load_params, param_table, read_tensors, save_params, write_tensors, Tensors, PARAMS_FORMAT,
};

/// The model and its parameters from a run folder or checkpoint file, or
/// from a `.snn` file and `--params`.
pub fn model_and_params(
    path: &Path,
    params: Option<&Path>,
) -> Result<(Model, Analysis, Params, String), InteropError> {
    if path.extension().is_some_and(|e| e == "snn") {
        let (model, a) = crate::frontend::load(path)?;
        let p = params.ok_or_else(|| InteropError::NoWeights(path.to_path_buf()))?;
        let params = load_params(p, &a)?;
        return Ok((model, a, params, path.display().to_string()));
    }
    let ck = crate::runtime::checkpoint::load(path)?;
    let cfg: crate::runtime::train::TrainConfig =
        serde_json::from_str(&ck.config).map_err(InteropError::BadConfig)?;
    let (model, a) = crate::frontend::check_source(&cfg.model_source, &cfg.model_file)?;
    let params = match params {
        Some(p) => load_params(p, &a)?,
        None => ck.params.into_iter().map(|(k, v)| (k, v.cast())).collect(),
    };
    Ok((model, a, params, cfg.model_file))
}

// ---------------------------------------------------------------- inference

/// One inference run: the readout and every spiking layer's spike counts.
pub struct Inference {
    /// [B, classes]: the last layer's output averaged over T.
    pub logits: Tensor<f64>,
    /// Per spiking layer (`path:keyword`, in layer order): spikes summed
    /// over T, [B, …layer shape].
    pub spikes: Vec<(String, Tensor<f64>)>,
    /// The closest any spike input came to its threshold, when within
    /// [`compare::TIE`] (a tie another execution may decide differently).
    pub tie: Option<f64>,
    /// The smallest |u − θ| / (1 + |θ|) over every spike input: how far the
    /// run is from a tie (callers comparing with another execution whose
    /// rounding differs by ε need margin > ε).
    pub margin: f64,
}

/// Inference (running batch-norm statistics, no dropout) with the reference
/// interpreter, on `x` ([B, …input], or [B, T, …input] for event frames).
pub fn infer(
    model: &Model,
    params: &Params,
    x: &Tensor<f64>,
    steps: usize,
    wide: bool,
) -> Result<Inference, InteropError> {
    let batch = *x.shape.first().ok_or(InteropError::NoBatchAxis)?;
    let g = unroll::unroll_with(
        model,
        &UnrollConfig {
            steps,
            batch,
            phase: Phase::Eval,
        },
    )?;
    let opts = RunOptions::seeded(0);
    let inputs = HashMap::from([("x".to_string(), x.clone())]);
    let collect =
        |g: &crate::ir::Graph, get: &dyn Fn(&petgraph::stable_graph::NodeIndex) -> Tensor<f64>| {
            let mut per: BTreeMap<usize, Tensor<f64>> = BTreeMap::new();
            for n in g.g.node_indices() {
                if let (Op::Spike { .. }, Some(l)) = (&g.g[n].op, g.g[n].layer) {
                    let v = get(&n);
                    match per.get_mut(&l) {
                        Some(acc) => acc.data.iter_mut().zip(&v.data).for_each(|(a, b)| *a += b),
                        None => {
                            per.insert(l, v);
                        }
                    }
                }
            }
            per.into_iter()
                .map(|(l, t)| (format!("{}:{}", g.layers[l].path, g.layers[l].keyword), t))
                .collect::<Vec<_>>()
        };
    let out = g.output("logits").expect("logits");
    if wide {
        let v = interp::run(&g, &inputs, params, &opts)?;
        Ok(Inference {
            logits: v.get(out).expect("evaluated").clone(),
            spikes: collect(&g, &|n| v.get(*n).expect("evaluated").clone()),
            tie: compare::near_tie(&g, &v).map(|(_, d)| d),
            margin: margin(&g, &v),
        })
    } else {
        let inputs: HashMap<String, Tensor<f32>> =
            inputs.iter().map(|(k, v)| (k.clone(), v.cast())).collect();
        let p32 = crate::init::cast_params::<f32>(params);
        let v = interp::run(&g, &inputs, &p32, &opts)?;
        Ok(Inference {
            logits: v.get(out).expect("evaluated").cast(),
            spikes: collect(&g, &|n| v.get(*n).expect("evaluated").cast()),
            tie: compare::near_tie(&g, &v).map(|(_, d)| d),
            margin: margin(&g, &v),
        })
    }
}

/// The smallest |u − θ| / (1 + |θ|) over every spike node's input.
fn margin<F: num_traits::Float>(g: &crate::ir::Graph, v: &interp::Values<F>) -> f64 {
    let mut m = f64::INFINITY;
    for n in g.g.node_indices() {
        let Op::Spike { theta, .. } = g.node(n).op else {
            continue;
        };
        let Some(u) = g.operands(n).first().and_then(|&u| v.get(u)) else {
            continue;
        };
        for x in &u.data {
            let d = (x.to_f64().unwrap_or(f64::NAN) - theta).abs() / (1.0 + theta.abs());
            m = m.min(d);
        }
    }
    m
}

/// The expected per-batch shape of `x` for `model` at T steps.
pub fn input_shape(model: &Model, a: &Analysis, steps: usize) -> Vec<usize> {
    match model.input.encoding {
        Encoding::Events => [steps].iter().chain(&a.input).copied().collect(),
        _ => a.input.clone(),
    }
}

/// Reads tensor `name` from a batch file and checks its per-sample shape.
pub fn batch_input(
    file: &Path,
    tensors: &BTreeMap<String, Tensor<f64>>,
    want: &[usize],
) -> Result<Tensor<f64>, InteropError> {
    let x = tensors.get("x").ok_or_else(|| InteropError::NoInput {
        file: file.to_path_buf(),
        want: want.to_vec(),
    })?;
    if x.shape.len() != want.len() + 1 || x.shape[1..] != *want || x.shape[0] == 0 {
        return Err(InteropError::InputShape {
            file: file.to_path_buf(),
            shape: x.shape.clone(),
            want: want.to_vec(),
        });
    }
    Ok(x.clone())
}

pub mod grad;
