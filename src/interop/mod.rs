//! Exchanging models and numbers with other frameworks:
//!
//! - parameter files (`params.safetensors`) and their names
//!   ([`load_params`], [`save_params`], [`param_table`]);
//! - `snnc export --format nir` and `snnc import` ([`export_cmd`],
//!   [`import_cmd`], on top of [`crate::nir`]);
//! - inference on given weights and input ([`infer`], `snnc run --params
//!   --input`, `snnc eval MODEL.snn --params`);
//! - gradients on given weights and batch ([`grad_dump`], `snnc grad-check
//!   --params --batch-file --dump`).
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
use crate::passes::rate::Mode;
use crate::shape::{dims, Analysis};
use crate::tensor::Tensor;
use crate::unroll::{self, Phase, UnrollConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use crate::runtime::params::{
    load_params, param_table, read_tensors, save_params, write_tensors, Tensors, PARAMS_FORMAT,
};

/// The model and its parameters from a run folder or checkpoint file, or
/// from a `.snn` file and `--params`.
pub fn model_and_params(
    path: &Path,
    params: Option<&Path>,
) -> Result<(Model, Analysis, Params, String), String> {
    if path.extension().is_some_and(|e| e == "snn") {
        let (model, a) = crate::frontend::load(path)?;
        let p = params.ok_or_else(|| {
            format!(
                "error: `{}` is a model without weights: add --params PARAMS.safetensors \
                 (or give a run folder or checkpoint)",
                path.display()
            )
        })?;
        let params = load_params(p, &a)?;
        return Ok((model, a, params, path.display().to_string()));
    }
    let ck = crate::runtime::checkpoint::load(path)?;
    let cfg: crate::runtime::train::TrainConfig = serde_json::from_str(&ck.config)
        .map_err(|e| format!("error: bad config in checkpoint: {e}"))?;
    let model = crate::dsl::parse(&cfg.model_source, &cfg.model_file)
        .map_err(|d| d.render(&cfg.model_file, &cfg.model_source))?;
    let a = crate::shape::analyze(&model)
        .map_err(|e| crate::frontend::render_shape_error(&e, &cfg.model_file, &cfg.model_source))?;
    let params = match params {
        Some(p) => load_params(p, &a)?,
        None => ck.params.into_iter().map(|(k, v)| (k, v.cast())).collect(),
    };
    Ok((model, a, params, cfg.model_file))
}

// ------------------------------------------------------------------ NIR

/// `snnc export SOURCE --format nir -o OUT [--dt DT]`.
pub fn export_cmd(
    source: &Path,
    params: Option<&Path>,
    format: &str,
    out: &Path,
    dt: f64,
    wide: bool,
) -> Result<(), String> {
    if format != "nir" {
        return Err(format!(
            "error: unknown export format `{format}` (snnc exports `nir`)"
        ));
    }
    let (model, a, params, _) = model_and_params(source, params)?;
    let ex = crate::nir::export::export(&model, &a, &params, dt)?;
    crate::nir::hdf5::write(out, &ex.graph, wide)?;
    println!(
        "exported `{}` to NIR: {} nodes, {} edges → {} ({} weights; LIF/IF at dt = {dt:e}: \
         τ = dt/(1 − λ), R = τ/dt, v_leak = 0, v_threshold = θ)",
        model.name,
        ex.graph.nodes.len(),
        ex.graph.edges.len(),
        out.display(),
        if wide { "f64" } else { "f32" }
    );
    for n in &ex.notes {
        println!("  note: {n}");
    }
    Ok(())
}

/// `snnc import MODEL.nir -o MODEL.snn [--params-out P] [--dt DT]`.
pub fn import_cmd(
    nir_file: &Path,
    out: &Path,
    params_out: Option<&Path>,
    dt: f64,
) -> Result<(), String> {
    let g = crate::nir::hdf5::read(nir_file)?;
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imported".into());
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let im = crate::nir::import::import(&g, &nir_file.display().to_string(), &name, dt)?;
    let params_path = match params_out {
        Some(p) => p.to_path_buf(),
        None => out.with_extension("params.safetensors"),
    };
    let text = format!(
        "# Imported from {} by `snnc import` (NIR; neurons at dt = {dt:e}).\n# Weights: {}\n{}",
        nir_file.display(),
        params_path.display(),
        crate::dsl::to_snn(&im.model)
    );
    std::fs::write(out, &text)
        .map_err(|e| format!("error: cannot write `{}`: {e}", out.display()))?;
    save_params(&params_path, &im.params, &im.model.name)?;
    println!(
        "imported {} → {} ({} layers) and {} ({} tensors)",
        nir_file.display(),
        out.display(),
        im.model.layers.len(),
        params_path.display(),
        im.params.len()
    );
    for n in &im.notes {
        println!("  note: {n}");
    }
    Ok(())
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
) -> Result<Inference, String> {
    let batch = *x
        .shape
        .first()
        .ok_or("error: the input has no batch axis")?;
    let g = unroll::unroll_with(
        model,
        &UnrollConfig {
            steps,
            batch,
            phase: Phase::Eval,
        },
    )
    .map_err(|e| format!("error: {e}"))?;
    let opts = RunOptions { seed: 0 };
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
        let v = interp::run(&g, &inputs, params, &opts).map_err(|e| format!("error: {e}"))?;
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
        let v = interp::run(&g, &inputs, &p32, &opts).map_err(|e| format!("error: {e}"))?;
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
fn input_shape(model: &Model, a: &Analysis, steps: usize) -> Vec<usize> {
    match model.input.encoding {
        Encoding::Events => [steps].iter().chain(&a.input).copied().collect(),
        _ => a.input.clone(),
    }
}

/// Reads tensor `name` from a batch file and checks its per-sample shape.
fn batch_input(
    file: &Path,
    tensors: &BTreeMap<String, Tensor<f64>>,
    want: &[usize],
) -> Result<Tensor<f64>, String> {
    let x = tensors.get("x").ok_or_else(|| {
        format!(
            "error: `{}` has no tensor `x` (the input batch, [B, {}])",
            file.display(),
            dims(want)
        )
    })?;
    if x.shape.len() != want.len() + 1 || x.shape[1..] != *want || x.shape[0] == 0 {
        return Err(format!(
            "error: `{}`: `x` has shape {}, the model needs [B, {}]",
            file.display(),
            dims(&x.shape),
            dims(want)
        ));
    }
    Ok(x.clone())
}

/// `snnc run FILE --params P --input X.safetensors [--eval]`: the readout
/// and firing counts on a given input.
#[allow(clippy::too_many_arguments)]
pub fn run_given(
    file: &Path,
    params: Option<&Path>,
    input: Option<&Path>,
    steps: usize,
    batch: usize,
    seed: u64,
    wide: bool,
    json: bool,
) -> Result<(), String> {
    let (model, a) = crate::frontend::load(file)?;
    let params = match params {
        Some(p) => load_params(p, &a)?,
        None => crate::init::init_params(&a, seed),
    };
    let want = input_shape(&model, &a, steps);
    let x = match input {
        Some(p) => {
            let (t, _) = read_tensors(p)?;
            batch_input(p, &t, &want)?
        }
        None => {
            let mut s = vec![batch];
            s.extend(&want);
            let g = unroll::unroll_with(
                &model,
                &UnrollConfig {
                    steps,
                    batch,
                    phase: Phase::Eval,
                },
            )
            .map_err(|e| format!("error: {e}"))?;
            crate::interp::random_input(&g, matches!(model.input.encoding, Encoding::Events), seed)
        }
    };
    let r = infer(&model, &params, &x, steps, wide)?;
    let classes = r.logits.shape[1];
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": model.name, "steps": steps, "batch": x.shape[0], "phase": "eval",
                "logits": r.logits.data.chunks(classes).map(|c| c.to_vec()).collect::<Vec<_>>(),
                "spike_counts": r.spikes.iter().map(|(l, t)| serde_json::json!({
                    "layer": l,
                    "per_sample": t.data.chunks(t.len() / x.shape[0]).map(|c| c.iter().sum::<f64>()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "near_tie": r.tie,
            })
        );
        return Ok(());
    }
    println!(
        "{}: T={steps}, batch {}, inference (running batch-norm statistics), {}",
        model.name,
        x.shape[0],
        if wide { "f64" } else { "f32" }
    );
    println!("readout (time-mean of the last layer):");
    for (b, row) in r.logits.data.chunks(classes).enumerate() {
        let vals: Vec<String> = row.iter().map(|v| format!("{v:8.4}")).collect();
        println!("  sample {b}: [{}]", vals.join(" "));
    }
    println!("spikes per sample (summed over neurons and steps):");
    for (l, t) in &r.spikes {
        let per: Vec<String> = t
            .data
            .chunks(t.len() / x.shape[0])
            .map(|c| format!("{}", c.iter().sum::<f64>()))
            .collect();
        println!("  {l:<24} {}", per.join(" "));
    }
    if let Some(d) = r.tie {
        println!(
            "note: a membrane potential came within {d:e} of its threshold: another framework \
             may decide that spike differently"
        );
    }
    Ok(())
}

/// `snnc eval MODEL.snn --params P --data D -T N`: test accuracy of given
/// weights (e.g. from `snnc import`).
pub fn eval_params(
    file: &Path,
    params: &Path,
    data: Option<String>,
    data_dir: Option<PathBuf>,
    steps: usize,
    batch: usize,
) -> Result<(), String> {
    let (model, a) = crate::frontend::load(file)?;
    let params_path = params;
    let params = load_params(params, &a)?;
    let source = std::fs::read_to_string(file)
        .map_err(|e| format!("error: cannot read `{}`: {e}", file.display()))?;
    let cfg = crate::runtime::train::TrainConfig {
        model_source: source,
        model_file: file.display().to_string(),
        data: data.unwrap_or_else(|| "digits".into()),
        data_dir,
        mode: Mode::Rate,
        steps,
        epochs: 1,
        batch,
        lr: 0.0,
        optim: crate::runtime::optim::OptimConfig {
            kind: crate::runtime::optim::OptimizerKind::Sgd,
            momentum: 0.0,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: crate::runtime::optim::Schedule::Const,
        seed: 0,
        paper_grad_scale: false,
        order: Default::default(),
        init: None,
    };
    let split = crate::runtime::train::load_data(&cfg)?;
    let p32: HashMap<String, Tensor<f32>> =
        params.iter().map(|(k, v)| (k.clone(), v.cast())).collect();
    let mut ev = crate::runtime::train::Evaluator::new(&model, steps);
    let acc = ev.accuracy(&split.test, &p32, batch)?;
    println!(
        "{}: test accuracy {:.2}% on {} ({} samples), T={steps}, weights from {}",
        model.name,
        100.0 * acc,
        cfg.data,
        split.test.len(),
        params_path.display()
    );
    Ok(())
}

pub mod grad;
