//! `snnc grad-check FILE -T N --params P --batch-file B [--mode bptt,rate]
//! [--f64] [--paper-grad-scale] --dump OUT.safetensors`: the loss, the
//! logits, every parameter's gradient and the batch-norm statistics of one
//! training step on given weights and batch, so that another framework can
//! be compared with snnc on the same numbers.
//!
//! **Batch file** (safetensors): `x` — [B, …input] (event frames:
//! [B, T, …input]), f32 or f64; `labels` — class indices [B] (any integer
//! or float type holding integers) or one-hot [B, classes].
//!
//! **Dump** (safetensors, f32, or f64 with `--f64`; metadata `format =
//! snnc-grad-dump-1`, the model, T, modes, dtype, a CRC-32 per tensor):
//!
//! | tensor | shape | what |
//! | --- | --- | --- |
//! | `x`, `labels` | as given; labels one-hot [B, classes] | the batch |
//! | `loss` | [1] | mean over the batch of the softmax cross-entropy of the readout |
//! | `logits` | [B, classes] | the readout: the last layer's output averaged over T |
//! | `bn/{layer}.mean`, `bn/{layer}.var` | [C] | each batch norm's batch statistics (over T·B·H·W; biased variance) |
//! | `{mode}/grad/{param}` | the parameter's | ∂loss/∂param, mode `bptt` or `rate` |
//!
//! The forward (loss, logits, statistics) is the same in both modes. The
//! step is the training phase: batch statistics, dropout masks drawn from
//! `--seed`. With `--paper-grad-scale` rate-mode gradients are divided by T
//! (the paper's official code); BPTT's never are.

use super::{load_params, read_tensors, write_tensors, InteropError};
use crate::compile;
use crate::init::Params;
use crate::interp::{self, RunOptions};
use crate::model::{Encoding, Model};
use crate::passes::rate::Mode;
use crate::shape::Analysis;
use crate::tensor::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const DUMP_FORMAT: &str = "snnc-grad-dump-1";

pub struct GradRequest<'a> {
    pub file: &'a Path,
    pub params: Option<&'a Path>,
    pub batch_file: Option<&'a Path>,
    pub steps: usize,
    /// Batch size of the random batch (without `batch_file`).
    pub batch: usize,
    pub seed: u64,
    pub modes: Vec<Mode>,
    pub wide: bool,
    pub paper_grad_scale: bool,
    /// Where [`grad_dump`] writes the result.
    pub dump: Option<&'a Path>,
}

/// The result of one step, per mode.
pub struct GradResult {
    pub loss: f64,
    pub logits: Tensor<f64>,
    /// `bn/{path}.mean|var` → statistics.
    pub bn: BTreeMap<String, Tensor<f64>>,
    /// (mode, param) → gradient.
    pub grads: BTreeMap<(String, String), Tensor<f64>>,
    pub x: Tensor<f64>,
    pub labels: Tensor<f64>,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Bptt => "bptt",
        Mode::Rate => "rate",
    }
}

/// Labels as one-hot [B, classes]: from indices [B] or one-hot already.
fn one_hot(
    file: &Path,
    l: &Tensor<f64>,
    batch: usize,
    classes: usize,
) -> Result<Tensor<f64>, InteropError> {
    if l.shape == [batch, classes] {
        return Ok(l.clone());
    }
    if l.shape != [batch] {
        return Err(InteropError::LabelShape {
            file: file.to_path_buf(),
            shape: l.shape.clone(),
            batch,
            classes,
        });
    }
    let mut t = Tensor::zeros(&[batch, classes]);
    for (b, &c) in l.data.iter().enumerate() {
        if c.fract() != 0.0 || c < 0.0 || c >= classes as f64 {
            return Err(InteropError::BadLabel {
                file: file.to_path_buf(),
                label: c,
                sample: b,
                classes,
            });
        }
        t.data[b * classes + c as usize] = 1.0;
    }
    Ok(t)
}

/// One training step's loss, logits, batch-norm statistics and gradients
/// in each of `req.modes`.
pub fn compute(req: &GradRequest) -> Result<GradResult, InteropError> {
    let (model, a) = crate::frontend::load(req.file)?;
    let params: Params = match req.params {
        Some(p) => load_params(p, &a)?,
        None => crate::init::init_params(&a, req.seed),
    };
    let classes = a.output[0];
    let want: Vec<usize> = match model.input.encoding {
        Encoding::Events => [req.steps].iter().chain(&a.input).copied().collect(),
        _ => a.input.clone(),
    };
    let (x, labels) = match req.batch_file {
        Some(f) => {
            let (t, _) = read_tensors(f)?;
            let x = super::batch_input(f, &t, &want)?;
            let b = x.shape[0];
            let l = t.get("labels").ok_or_else(|| InteropError::NoLabels {
                file: f.to_path_buf(),
                classes,
            })?;
            let l = one_hot(f, l, b, classes)?;
            (x, l)
        }
        None => {
            let opts = compile::Options::new(req.steps, req.batch, Mode::Bptt);
            let g = compile::compile(
                &model,
                &compile::Options {
                    after: compile::Stage::Unrolled,
                    ..opts
                },
            )?
            .graph;
            (
                crate::interp::random_input(
                    &g,
                    matches!(model.input.encoding, Encoding::Events),
                    req.seed,
                ),
                crate::interp::random_labels(req.batch, classes, req.seed),
            )
        }
    };
    let batch = x.shape[0];
    let opts = compile::Options {
        after: compile::Stage::Autodiff,
        ..compile::Options::new(req.steps, batch, Mode::Bptt)
    };
    let bptt = compile::compile(&model, &opts)?.graph;
    let mut res = GradResult {
        loss: f64::NAN,
        logits: Tensor::zeros(&[batch, classes]),
        bn: BTreeMap::new(),
        grads: BTreeMap::new(),
        x: x.clone(),
        labels: labels.clone(),
    };
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let run_opts = RunOptions::seeded(req.seed);
    for (i, &mode) in req.modes.iter().enumerate() {
        let g = match mode {
            Mode::Bptt => bptt.clone(),
            Mode::Rate => crate::passes::rate::rate_pass(bptt.clone(), Mode::Rate, &opts.limits)?.0,
        };
        let outs: HashMap<String, Tensor<f64>> = if req.wide {
            let v = interp::run(&g, &inputs, &params, &run_opts)?;
            g.outputs
                .iter()
                .map(|(k, n)| (k.clone(), v.get(*n).expect("evaluated").clone()))
                .collect()
        } else {
            let inp: HashMap<String, Tensor<f32>> =
                inputs.iter().map(|(k, v)| (k.clone(), v.cast())).collect();
            let p32 = crate::init::cast_params::<f32>(&params);
            let v = interp::run(&g, &inp, &p32, &run_opts)?;
            g.outputs
                .iter()
                .map(|(k, n)| (k.clone(), v.get(*n).expect("evaluated").cast()))
                .collect()
        };
        if i == 0 {
            res.loss = outs["loss"].data[0];
            res.logits = outs["logits"].clone();
            for (k, t) in &outs {
                if let Some(p) = k.strip_prefix("bn_mean:") {
                    res.bn.insert(format!("bn/{p}.mean"), t.clone());
                } else if let Some(p) = k.strip_prefix("bn_var:") {
                    res.bn.insert(format!("bn/{p}.var"), t.clone());
                }
            }
        }
        let scale = if req.paper_grad_scale && mode == Mode::Rate {
            1.0 / req.steps as f64
        } else {
            1.0
        };
        for p in a.params().filter(|p| p.trainable) {
            let name = crate::autodiff::grad_name(&p.name);
            let t = outs.get(&name).ok_or_else(|| InteropError::NoGradient {
                param: p.name.clone(),
                mode: mode_name(mode),
            })?;
            let mut t = t.clone();
            t.data.iter_mut().for_each(|v| *v *= scale);
            res.grads
                .insert((mode_name(mode).to_string(), p.name.clone()), t);
        }
    }
    Ok(res)
}

/// [`compute`], and the result written to `req.dump` (when given) as a
/// safetensors file (see the module docs for its tensors).
pub fn grad_dump(req: &GradRequest) -> Result<GradResult, InteropError> {
    let r = compute(req)?;
    if let Some(out) = req.dump {
        let mut t: BTreeMap<String, Tensor<f64>> = BTreeMap::new();
        t.insert("x".into(), r.x.clone());
        t.insert("labels".into(), r.labels.clone());
        t.insert("loss".into(), Tensor::from_vec(&[1], vec![r.loss]));
        t.insert("logits".into(), r.logits.clone());
        t.extend(r.bn.clone());
        for ((m, p), g) in &r.grads {
            t.insert(format!("{m}/grad/{p}"), g.clone());
        }
        let modes: Vec<&str> = req.modes.iter().map(|&m| mode_name(m)).collect();
        let meta = HashMap::from([
            ("format".to_string(), super::grad::DUMP_FORMAT.to_string()),
            ("model".to_string(), req.file.display().to_string()),
            ("steps".to_string(), req.steps.to_string()),
            ("modes".to_string(), modes.join(",")),
            (
                "dtype".to_string(),
                if req.wide { "f64" } else { "f32" }.to_string(),
            ),
            (
                "paper_grad_scale".to_string(),
                req.paper_grad_scale.to_string(),
            ),
            (
                "loss".to_string(),
                "mean over the batch of softmax cross-entropy of the time-mean readout".to_string(),
            ),
        ]);
        write_tensors(out, &t, meta, req.wide)?;
    }
    Ok(r)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GradCheckRow {
    pub param: String,
    pub shape: Vec<usize>,
    /// Cosine similarity of the rate and BPTT gradients.
    pub cosine: f64,
    /// |rate| / |BPTT|.
    pub norm_ratio: f64,
}

/// Rate vs BPTT gradients on one random batch, per parameter.
pub fn check_rows(
    model: &Model,
    a: &Analysis,
    steps: usize,
    batch: usize,
    seed: u64,
) -> Result<Vec<GradCheckRow>, InteropError> {
    let opts = compile::Options {
        after: compile::Stage::Autodiff,
        ..compile::Options::new(steps, batch, Mode::Bptt)
    };
    let bptt = compile::compile(model, &opts)?.graph;
    let (rate, _) = crate::passes::rate::rate_pass(bptt.clone(), Mode::Rate, &opts.limits)?;
    // Both graphs run in the f64 interpreter, which keeps every value.
    crate::passes::mem::ensure_fits(
        "grad-check (two interpreter runs in f64)",
        crate::passes::mem::interpreter_bytes(&bptt, 8)
            .saturating_add(crate::passes::mem::interpreter_bytes(&rate, 8))
            .saturating_add(crate::passes::mem::param_bytes(a, 8)),
        crate::passes::mem::Memory::Host,
    )?;
    let params = crate::init::init_params(a, seed);
    let x = crate::interp::random_input(
        &bptt,
        matches!(model.input.encoding, Encoding::Events),
        seed,
    );
    let classes = a.output[0];
    let inputs = HashMap::from([
        ("x".to_string(), x),
        (
            "labels".to_string(),
            crate::interp::random_labels(batch, classes, seed),
        ),
    ]);
    let run = |g: &crate::ir::Graph| interp::run(g, &inputs, &params, &RunOptions::seeded(seed));
    let (vb, vr) = (run(&bptt)?, run(&rate)?);
    let mut rows = Vec::new();
    for p in a.params().filter(|p| p.trainable) {
        let name = crate::autodiff::grad_name(&p.name);
        let (Some(b), Some(r)) = (bptt.output(&name), rate.output(&name)) else {
            continue;
        };
        let (b, r) = (vb.get(b).expect("evaluated"), vr.get(r).expect("evaluated"));
        let dot: f64 = b.data.iter().zip(&r.data).map(|(x, y)| x * y).sum();
        let nb = b.data.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nr = r.data.iter().map(|x| x * x).sum::<f64>().sqrt();
        rows.push(GradCheckRow {
            param: p.name.clone(),
            shape: p.shape.clone(),
            cosine: if nb > 0.0 && nr > 0.0 {
                dot / (nb * nr)
            } else {
                f64::NAN
            },
            norm_ratio: if nb > 0.0 { nr / nb } else { f64::NAN },
        });
    }
    Ok(rows)
}
