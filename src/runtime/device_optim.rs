//! The tail of a training step as library kernels on a backend: the
//! optimizer over every parameter in one launch (`snnc_sgd_step`,
//! `snnc_adamw_step`), batch norm's running statistics
//! (`snnc_running_stat`) and the count of right answers
//! (`snnc_count_correct`), so that parameters, gradients and optimizer
//! state stay in device memory from step to step.
//!
//! Each kernel evaluates [`OptimConfig::update`]'s expressions (f32 for SGD,
//! f64 with f32 moments for AdamW), in the same order, and the host loop's
//! running-statistics formula, so a run's parameters, state and checkpoints
//! are bit for bit those of the host update on every backend.

use super::optim::{decays, OptimConfig, OptimState, OptimizerKind};
use crate::codegen::backend::{check_args, Arg, Backend, BackendError};
use crate::codegen::exec::{BLOCK, MAX_ELEMS};

/// Launches library kernel `kernel` with one thread per element of `n`
/// (grid-stride beyond the backend's grid limit).
pub fn launch<B: Backend>(
    backend: &mut B,
    kernel: &'static str,
    n: usize,
    args: &[Arg],
) -> Result<(), BackendError> {
    check_args(kernel, args)?;
    if n == 0 {
        return Ok(());
    }
    let grid = n.div_ceil(BLOCK as usize).min(backend.max_grid() as usize) as u32;
    backend.launch(kernel, grid.max(1), BLOCK, args)
}

/// A size as a kernel `int`.
fn int(n: usize) -> Result<i32, BackendError> {
    if n > MAX_ELEMS {
        return Err(BackendError::BadCall(format!(
            "{n} elements exceed the kernels' 32-bit indexing"
        )));
    }
    Ok(n as i32)
}

/// One running statistic of a batch norm: `run = (1 − m)·run + m·batch·unbias`
/// over `n` elements (`unbias` = 1 for the mean).
pub fn running_stat<B: Backend>(
    backend: &mut B,
    run: u64,
    batch: u64,
    n: usize,
    m: f32,
    unbias: f32,
) -> Result<(), BackendError> {
    let args = [
        Arg::P(run),
        Arg::P(batch),
        Arg::I(int(n)?),
        Arg::F(m),
        Arg::F(unbias),
    ];
    launch(backend, "snnc_running_stat", n, &args)
}

/// Writes to `out[0]` how many of the `rows` rows of `logits[rows, k]` have
/// their (first) maximum at `targets[row]` (class indices as floats).
pub fn count_correct<B: Backend>(
    backend: &mut B,
    logits: u64,
    targets: u64,
    out: u64,
    rows: usize,
    k: usize,
) -> Result<(), BackendError> {
    let args = [
        Arg::P(logits),
        Arg::P(targets),
        Arg::P(out),
        Arg::I(int(rows)?),
        Arg::I(int(k)?),
    ];
    launch(backend, "snnc_count_correct", 1, &args)
}

/// The optimizer's state in device memory (one flat buffer per moment, the
/// parameters' segments end to end) and the segment table of the kernels
/// (see kernels.cu: parameter and gradient addresses, starts, decay flags).
pub struct DeviceOptim<B: Backend> {
    cfg: OptimConfig,
    /// The parameters in segment order, with their element counts.
    names: Vec<String>,
    lens: Vec<usize>,
    /// Start of each segment in the flat state, then the total.
    starts: Vec<usize>,
    /// SGD's velocity, or AdamW's two moments.
    state: Vec<B::Buf>,
    table: B::Buf,
    /// The table's words as last uploaded (re-uploaded only when an address
    /// changes).
    words: Vec<u64>,
    /// Updates made so far ([`OptimState::steps`]), and whether this
    /// state has been updated since it was loaded.
    steps: u64,
    updated: bool,
}

impl<B: Backend> DeviceOptim<B> {
    /// Uploads `state` for the parameters `params` (name, elements), in
    /// this order; a parameter without state starts from zeros, as the
    /// host's first update does.
    pub fn new(
        backend: &mut B,
        cfg: &OptimConfig,
        params: &[(String, usize)],
        state: &OptimState,
    ) -> Result<DeviceOptim<B>, BackendError> {
        let mut starts = vec![0];
        for (_, len) in params {
            starts.push(starts.last().copied().unwrap_or(0) + len);
        }
        let n = *starts.last().expect("a start");
        int(n)?;
        let moments = match cfg.kind {
            OptimizerKind::Sgd => 1,
            OptimizerKind::Adamw => 2,
        };
        let mut flat = vec![vec![0.0f32; n]; moments];
        for (s, (name, len)) in params.iter().enumerate() {
            let Some(bufs) = state.buffers.get(name) else {
                continue;
            };
            if bufs.len() != moments || bufs.iter().any(|b| b.len() != *len) {
                return Err(BackendError::BadCall(format!(
                    "the optimizer state of `{name}` does not fit its {len} elements"
                )));
            }
            for (f, b) in flat.iter_mut().zip(bufs) {
                f[starts[s]..starts[s + 1]].copy_from_slice(b);
            }
        }
        let mut bufs = Vec::new();
        let table_len = 2 * (4 * params.len() + 1);
        let made = (|| {
            for f in &flat {
                let mut b = backend.alloc(n.max(1))?;
                let up = backend.upload(&mut b, f);
                bufs.push(b);
                up?;
            }
            backend.alloc(table_len)
        })();
        let table = match made {
            Ok(t) => t,
            Err(e) => {
                for b in bufs {
                    backend.free(b);
                }
                return Err(e);
            }
        };
        Ok(DeviceOptim {
            cfg: *cfg,
            names: params.iter().map(|(k, _)| k.clone()).collect(),
            lens: params.iter().map(|(_, l)| *l).collect(),
            starts,
            state: bufs,
            table,
            words: Vec::new(),
            steps: state.steps,
            updated: false,
        })
    }

    /// One update of every parameter: `params[s]` and `grads[s]` are the
    /// device addresses of segment `s`'s parameter and gradient; the
    /// gradients are multiplied by `grad_scale` (in f32) first.
    pub fn update(
        &mut self,
        backend: &mut B,
        params: &[u64],
        grads: &[u64],
        lr: f64,
        grad_scale: f32,
    ) -> Result<(), BackendError> {
        let ns = self.names.len();
        assert_eq!((params.len(), grads.len()), (ns, ns), "one address each");
        let mut words = Vec::with_capacity(4 * ns + 1);
        words.extend_from_slice(params);
        words.extend_from_slice(grads);
        words.extend(self.starts.iter().map(|&s| s as u64));
        words.extend(self.names.iter().map(|k| u64::from(decays(k))));
        if words != self.words {
            backend.upload_words(&mut self.table, &words)?;
            self.words = words;
        }
        let n = *self.starts.last().expect("a start");
        let (table, ns) = (backend.ptr(&self.table), int(ns)?);
        let wd = self.cfg.weight_decay;
        match self.cfg.kind {
            OptimizerKind::Sgd => {
                // The host's f32 constants: μ, lr and wd rounded once.
                let args = [
                    Arg::P(table),
                    Arg::I(ns),
                    Arg::P(backend.ptr(&self.state[0])),
                    Arg::I(int(n)?),
                    Arg::F(lr as f32),
                    Arg::F(self.cfg.momentum as f32),
                    Arg::F(wd as f32),
                    Arg::F(grad_scale),
                ];
                launch(backend, "snnc_sgd_step", n, &args)?;
            }
            OptimizerKind::Adamw => {
                let t = (self.steps + 1) as f64;
                let (b1, b2) = self.cfg.betas;
                let args = [
                    Arg::P(table),
                    Arg::I(ns),
                    Arg::P(backend.ptr(&self.state[0])),
                    Arg::P(backend.ptr(&self.state[1])),
                    Arg::I(int(n)?),
                    Arg::D(lr),
                    Arg::D(b1),
                    Arg::D(b2),
                    Arg::D(self.cfg.eps),
                    Arg::D(wd),
                    Arg::D(1.0 - b1.powf(t)),
                    Arg::D(1.0 - b2.powf(t)),
                    Arg::F(grad_scale),
                ];
                launch(backend, "snnc_adamw_step", n, &args)?;
            }
        }
        self.steps += 1;
        self.updated = true;
        Ok(())
    }

    /// Writes the state back into `state` (the host's layout: per
    /// parameter, one vector per moment). Before any update it leaves
    /// `state` as it was, as the host's optimizer would.
    pub fn store(&self, backend: &mut B, state: &mut OptimState) -> Result<(), BackendError> {
        if !self.updated {
            return Ok(());
        }
        let n = *self.starts.last().expect("a start");
        let mut flat = Vec::new();
        for b in &self.state {
            flat.push(backend.download(b, n)?);
        }
        for (s, name) in self.names.iter().enumerate() {
            let (a, len) = (self.starts[s], self.lens[s]);
            let bufs = flat.iter().map(|f| f[a..a + len].to_vec()).collect();
            state.buffers.insert(name.clone(), bufs);
        }
        state.steps = self.steps;
        Ok(())
    }

    /// Returns the buffers to the backend.
    pub fn free(self, backend: &mut B) {
        for b in self.state {
            backend.free(b);
        }
        backend.free(self.table);
    }
}
