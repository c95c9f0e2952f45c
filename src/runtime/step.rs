//! One training step on the executor, and where its update runs.
//!
//! [`DeviceStep`] (the default) keeps the parameters, the optimizer state
//! and batch norm's running statistics in backend memory for an epoch: the
//! executor runs the graph on resident parameters, then the update, the
//! running statistics and the count of right answers run as library
//! kernels (`device_optim`) on the gradients where the step left them, and
//! only the loss and that count come back. The host's copies are brought
//! up to date when the loop needs them ([`Stepper::store`]: checkpoints,
//! evaluation).
//!
//! [`HostStep`] is the reference: every step uploads the parameters,
//! downloads every gradient and updates on the host
//! ([`OptimConfig::update`]). Both give the same bits.

use super::device_optim::{self, DeviceOptim};
use super::optim::{OptimConfig, OptimState};
use super::train_error::TrainError;
use crate::codegen::backend::{Arg, Backend};
use crate::codegen::exec::{ExecError, Executor, Outputs};
use crate::data::Label;
use crate::interp::RunOptions;
use crate::ir::NodeIndex;
use crate::tensor::Tensor;
use std::collections::{BTreeMap, HashMap};

/// What the update does after each step's graph: the same for both
/// steppers.
pub struct StepRule {
    pub optim: OptimConfig,
    /// The trainable parameters, updated in this order.
    pub trainable: Vec<String>,
    /// Per batch norm (layer path): its momentum and the unbiasing factor
    /// n/(n − 1) of its batch variance, as f32.
    pub running: Vec<(String, f32, f32)>,
    /// Applied to the gradients (in f32) before the update.
    pub grad_scale: f32,
    /// Classes of the logits.
    pub classes: usize,
    /// Rows of a batch (at most).
    pub batch: usize,
}

/// What one step leaves on the host.
pub struct StepOut {
    pub loss: f64,
    /// Rows whose argmax is their target.
    pub correct: usize,
    /// The kept (spike) values, when asked for.
    pub spikes: HashMap<NodeIndex, Tensor<f32>>,
}

/// A training step and where its parameters live during an epoch.
pub trait Stepper {
    /// Takes the parameters and the optimizer state where the steps will
    /// update them (the first call of an epoch).
    fn load(
        &mut self,
        params: &BTreeMap<String, Tensor<f32>>,
        optim: &OptimState,
    ) -> Result<(), TrainError>;
    /// Runs the step on a batch and updates the parameters (unless the
    /// loss is not finite: the caller stops the run). `extra`: also return
    /// the kept values.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        targets: &[Label],
        opts: &RunOptions,
        extra: bool,
        lr: f64,
        params: &mut BTreeMap<String, Tensor<f32>>,
        optim: &mut OptimState,
    ) -> Result<StepOut, TrainError>;
    /// Brings `params` and `optim` up to date.
    fn store(
        &mut self,
        params: &mut BTreeMap<String, Tensor<f32>>,
        optim: &mut OptimState,
    ) -> Result<(), TrainError>;
}

/// The host's argmax count (first maximum from −∞).
pub fn correct(logits: &Tensor<f32>, targets: &[Label]) -> usize {
    let k = logits.shape[1];
    logits
        .data
        .chunks(k)
        .zip(targets)
        .filter(|(row, &y)| {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            best.0 == y as usize
        })
        .count()
}

/// The update on the host: parameters uploaded and gradients downloaded
/// every step.
pub struct HostStep<'e, 'a, B: Backend> {
    pub ex: &'e mut Executor<'a, B>,
    pub rule: &'e StepRule,
}

impl<B: Backend> Stepper for HostStep<'_, '_, B> {
    fn load(
        &mut self,
        _: &BTreeMap<String, Tensor<f32>>,
        _: &OptimState,
    ) -> Result<(), TrainError> {
        Ok(())
    }

    fn step(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        targets: &[Label],
        opts: &RunOptions,
        extra: bool,
        lr: f64,
        params: &mut BTreeMap<String, Tensor<f32>>,
        optim: &mut OptimState,
    ) -> Result<StepOut, TrainError> {
        let pmap: HashMap<String, Tensor<f32>> =
            params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (v, spikes) = self.ex.run_keeping(inputs, &pmap, opts, extra)?;
        let loss = f64::from(v["loss"].data[0]);
        let out = StepOut {
            loss,
            correct: correct(&v["logits"], targets),
            spikes,
        };
        if loss.is_finite() {
            host_update(self.rule, &v, params, optim, lr);
        }
        Ok(out)
    }

    fn store(
        &mut self,
        _: &mut BTreeMap<String, Tensor<f32>>,
        _: &mut OptimState,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The optimizer and the running statistics on the host, from a step's
/// downloaded outputs.
fn host_update(
    rule: &StepRule,
    v: &Outputs,
    params: &mut BTreeMap<String, Tensor<f32>>,
    optim: &mut OptimState,
    lr: f64,
) {
    for name in &rule.trainable {
        let mut g = v[&crate::autodiff::grad_name(name)].data.clone();
        if rule.grad_scale != 1.0 {
            g.iter_mut().for_each(|x| *x *= rule.grad_scale);
        }
        let p = params.get_mut(name).expect("parameter exists");
        rule.optim.update(optim, name, &mut p.data, &g, lr);
    }
    optim.steps += 1;
    // Running statistics: PyTorch's convention (unbiased variance).
    for (path, m, unbias) in &rule.running {
        let m = *m;
        let bm = &v[&format!("bn_mean:{path}")].data;
        let bv = &v[&format!("bn_var:{path}")].data;
        let rm = params
            .get_mut(&format!("{path}.running_mean"))
            .expect("running mean");
        for (r, b) in rm.data.iter_mut().zip(bm) {
            *r = (1.0 - m) * *r + m * b;
        }
        let rv = params
            .get_mut(&format!("{path}.running_var"))
            .expect("running var");
        for (r, b) in rv.data.iter_mut().zip(bv) {
            *r = (1.0 - m) * *r + m * b * unbias;
        }
    }
}

/// Buffers of the device step besides the executor's: the optimizer, the
/// running statistics (mean and variance per batch norm, in
/// [`StepRule::running`] order), the targets and the two floats that come
/// back (right answers, loss).
struct Resident<B: Backend> {
    optim: DeviceOptim<B>,
    running: Vec<(B::Buf, B::Buf, usize)>,
    /// The trainable parameters' addresses, in [`StepRule::trainable`]
    /// order.
    params: Vec<u64>,
    targets: B::Buf,
    back: B::Buf,
}

/// The update on the device (see the module's comment).
pub struct DeviceStep<'e, 'a, B: Backend> {
    ex: &'e mut Executor<'a, B>,
    rule: &'e StepRule,
    /// Present between [`Stepper::load`] and the end of the epoch.
    res: Option<Resident<B>>,
}

impl<'e, 'a, B: Backend> DeviceStep<'e, 'a, B> {
    pub fn new(ex: &'e mut Executor<'a, B>, rule: &'e StepRule) -> Self {
        DeviceStep {
            ex,
            rule,
            res: None,
        }
    }

    fn release(&mut self) {
        let Some(r) = self.res.take() else {
            return;
        };
        let b = self.ex.backend();
        r.optim.free(b);
        for (m, v, _) in r.running {
            b.free(m);
            b.free(v);
        }
        b.free(r.targets);
        b.free(r.back);
        self.ex.clear_resident_params();
    }

    /// A buffer holding `data` (at least one element).
    fn upload(&mut self, data: &[f32]) -> Result<B::Buf, ExecError> {
        let b = self.ex.backend();
        let mut buf = b.alloc(data.len().max(1))?;
        if let Err(e) = b.upload(&mut buf, data) {
            b.free(buf);
            return Err(e.into());
        }
        Ok(buf)
    }

    fn load_resident(
        &mut self,
        params: &BTreeMap<String, Tensor<f32>>,
        optim: &OptimState,
    ) -> Result<Resident<B>, ExecError> {
        let pmap: HashMap<String, Tensor<f32>> =
            params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.ex.set_resident_params(&pmap)?;
        let mut addrs = Vec::new();
        let mut lens = Vec::new();
        for name in &self.rule.trainable {
            let p = self
                .ex
                .resident_ptr(name)
                .ok_or_else(|| ExecError::MissingParam(name.clone()))?;
            addrs.push(p);
            lens.push((name.clone(), params[name].len()));
        }
        // The running statistics (mean, variance per batch norm), the
        // targets and the floats that come back, in this order.
        let mut made = Vec::new();
        let mut sizes = Vec::new();
        let mut filled = Ok(());
        for (path, _, _) in &self.rule.running {
            for s in ["running_mean", "running_var"] {
                let name = format!("{path}.{s}");
                filled = filled.and_then(|()| {
                    let t = params.get(&name).ok_or(ExecError::MissingParam(name))?;
                    made.push(self.upload(&t.data)?);
                    sizes.push(t.len());
                    Ok(())
                });
            }
        }
        for zeros in [self.rule.batch, 2] {
            filled = filled.and_then(|()| {
                made.push(self.upload(&vec![0.0; zeros])?);
                Ok(())
            });
        }
        let optim = filled.and_then(|()| {
            DeviceOptim::new(self.ex.backend(), &self.rule.optim, &lens, optim)
                .map_err(ExecError::from)
        });
        let optim = match optim {
            Ok(o) => o,
            Err(e) => {
                for b in made {
                    self.ex.backend().free(b);
                }
                return Err(e);
            }
        };
        let back = made.pop().expect("the floats that come back");
        let targets = made.pop().expect("the targets");
        let mut bufs = made.into_iter().zip(sizes);
        let mut running = Vec::new();
        while let (Some((m, n)), Some((v, _))) = (bufs.next(), bufs.next()) {
            running.push((m, v, n));
        }
        Ok(Resident {
            optim,
            running,
            params: addrs,
            targets,
            back,
        })
    }
}

impl<B: Backend> Drop for DeviceStep<'_, '_, B> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B: Backend> Stepper for DeviceStep<'_, '_, B> {
    fn load(
        &mut self,
        params: &BTreeMap<String, Tensor<f32>>,
        optim: &OptimState,
    ) -> Result<(), TrainError> {
        self.release();
        let r = self.load_resident(params, optim);
        if r.is_err() {
            self.ex.clear_resident_params();
        }
        self.res = Some(r?);
        Ok(())
    }

    fn step(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        targets: &[Label],
        opts: &RunOptions,
        extra: bool,
        lr: f64,
        _: &mut BTreeMap<String, Tensor<f32>>,
        _: &mut OptimState,
    ) -> Result<StepOut, TrainError> {
        let rule = self.rule;
        let res = self.res.as_mut().expect("loaded before the first step");
        let rows = targets.len();
        if rows > rule.batch {
            return Err(ExecError::BadShape {
                name: "targets".to_string(),
                got: format!("[{rows}]"),
                len: rows,
                want: format!("[{}]", rule.batch),
            }
            .into());
        }
        let t: Vec<f32> = targets.iter().map(|&y| f32::from(y)).collect();
        self.ex
            .backend()
            .upload(&mut res.targets, &t)
            .map_err(ExecError::from)?;
        let (targets_ptr, back_ptr) = {
            let b = self.ex.backend();
            (b.ptr(&res.targets), b.ptr(&res.back))
        };
        let running: Vec<(u64, u64, usize)> = {
            let b = self.ex.backend();
            res.running
                .iter()
                .map(|(m, v, n)| (b.ptr(m), b.ptr(v), *n))
                .collect()
        };
        let params = res.params.clone();
        let optim = &mut res.optim;
        let mut after = |b: &mut B, outs: &HashMap<String, u64>| -> Result<(), ExecError> {
            let out = |name: &str| {
                outs.get(name)
                    .copied()
                    .ok_or_else(|| ExecError::MissingOutput(name.to_string()))
            };
            let grads = rule
                .trainable
                .iter()
                .map(|n| out(&crate::autodiff::grad_name(n)))
                .collect::<Result<Vec<u64>, ExecError>>()?;
            optim.update(b, &params, &grads, lr, rule.grad_scale)?;
            for ((path, m, unbias), &(mean, var, n)) in rule.running.iter().zip(&running) {
                let bm = out(&format!("bn_mean:{path}"))?;
                let bv = out(&format!("bn_var:{path}"))?;
                device_optim::running_stat(b, mean, bm, n, *m, 1.0)?;
                device_optim::running_stat(b, var, bv, n, *m, *unbias)?;
            }
            let logits = out("logits")?;
            device_optim::count_correct(b, logits, targets_ptr, back_ptr, rows, rule.classes)?;
            let copy = [Arg::P(out("loss")?), Arg::P(back_ptr + 4), Arg::I(1)];
            device_optim::launch(b, "snnc_copy", 1, &copy)?;
            Ok(())
        };
        let (_, spikes) =
            self.ex
                .run_then(inputs, &HashMap::new(), opts, extra, &[], &mut after)?;
        let back = self
            .ex
            .backend()
            .download(&res.back, 2)
            .map_err(ExecError::from)?;
        Ok(StepOut {
            loss: f64::from(back[1]),
            correct: back[0] as usize,
            spikes,
        })
    }

    fn store(
        &mut self,
        params: &mut BTreeMap<String, Tensor<f32>>,
        optim: &mut OptimState,
    ) -> Result<(), TrainError> {
        let Some(res) = self.res.as_ref() else {
            return Ok(());
        };
        for name in &self.rule.trainable {
            let data = self
                .ex
                .download_resident(name)?
                .ok_or_else(|| ExecError::MissingParam(name.clone()))?;
            params.get_mut(name).expect("a parameter").data = data;
        }
        let b = self.ex.backend();
        for ((path, _, _), (m, v, n)) in self.rule.running.iter().zip(&res.running) {
            let mean = b.download(m, *n).map_err(ExecError::from)?;
            let var = b.download(v, *n).map_err(ExecError::from)?;
            params
                .get_mut(&format!("{path}.running_mean"))
                .expect("running mean")
                .data = mean;
            params
                .get_mut(&format!("{path}.running_var"))
                .expect("running var")
                .data = var;
        }
        res.optim.store(b, optim).map_err(ExecError::from)?;
        Ok(())
    }
}
