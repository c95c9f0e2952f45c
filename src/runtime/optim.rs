//! Optimizers and learning-rate schedules.
//!
//! Weight decay applies to conv/linear weights only (names ending in
//! `.weight`), as in the training settings of Yu et al. (NeurIPS 2024); biases and batch
//! norm's γ/β are not decayed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Cosine decay to zero over the run.
    Cosine,
    /// The same cosine, updated once per epoch: PyTorch's
    /// `CosineAnnealingLR(T_max = epochs, eta_min = 0)` stepped after each
    /// epoch, as the paper's official code trains.
    CosineEpochs,
    /// ×0.1 at 50 % and 75 % of the run.
    Step,
    Const,
}

impl OptimizerKind {
    /// The name `--optimizer` takes and run summaries print.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adamw => "adamw",
        }
    }
}

impl Schedule {
    /// The progress the rate is read at, for step `step` of `total` in
    /// epoch `epoch` of `epochs`: per step, or per epoch for
    /// `CosineEpochs`.
    pub fn progress(self, step: usize, total: usize, epoch: usize, epochs: usize) -> f64 {
        match self {
            Schedule::CosineEpochs => epoch as f64 / epochs.max(1) as f64,
            _ => step as f64 / total.max(1) as f64,
        }
    }

    /// The name `--schedule` takes and run summaries print.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Cosine => "cosine",
            Schedule::CosineEpochs => "cosine-epochs",
            Schedule::Step => "step",
            Schedule::Const => "const",
        }
    }

    /// The learning rate at `progress` ∈ [0, 1) of the run.
    pub fn lr(self, base: f64, progress: f64) -> f64 {
        match self {
            Schedule::Cosine | Schedule::CosineEpochs => {
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Step => {
                base * if progress >= 0.75 {
                    0.01
                } else if progress >= 0.5 {
                    0.1
                } else {
                    1.0
                }
            }
            Schedule::Const => base,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    /// AdamW's β₁, β₂, ε.
    pub betas: (f64, f64),
    pub eps: f64,
}

/// Per-parameter state: SGD's momentum buffer, or AdamW's two moments.
#[derive(Clone, Debug, Default)]
pub struct OptimState {
    pub buffers: BTreeMap<String, Vec<Vec<f32>>>,
    pub steps: u64,
}

pub fn decays(name: &str) -> bool {
    name.ends_with(".weight")
}

impl OptimConfig {
    /// One update of `p` (named `name`) with gradient `g`.
    pub fn update(&self, state: &mut OptimState, name: &str, p: &mut [f32], g: &[f32], lr: f64) {
        let wd = if decays(name) { self.weight_decay } else { 0.0 };
        let nbuf = match self.kind {
            OptimizerKind::Sgd => 1,
            OptimizerKind::Adamw => 2,
        };
        let bufs = state
            .buffers
            .entry(name.to_string())
            .or_insert_with(|| vec![vec![0.0; p.len()]; nbuf]);
        match self.kind {
            OptimizerKind::Sgd => {
                // PyTorch's SGD: d = g + wd·p; v = μ·v + d; p -= lr·v.
                let (mu, lr, wd) = (self.momentum as f32, lr as f32, wd as f32);
                let v = &mut bufs[0];
                for i in 0..p.len() {
                    let d = g[i] + wd * p[i];
                    v[i] = mu * v[i] + d;
                    p[i] -= lr * v[i];
                }
            }
            OptimizerKind::Adamw => {
                let t = (state.steps + 1) as f64;
                let (b1, b2) = self.betas;
                let c1 = 1.0 - b1.powf(t);
                let c2 = 1.0 - b2.powf(t);
                let (m, rest) = bufs.split_at_mut(1);
                let (m, v) = (&mut m[0], &mut rest[0]);
                for i in 0..p.len() {
                    let gi = f64::from(g[i]);
                    m[i] = (b1 * f64::from(m[i]) + (1.0 - b1) * gi) as f32;
                    v[i] = (b2 * f64::from(v[i]) + (1.0 - b2) * gi * gi) as f32;
                    let mh = f64::from(m[i]) / c1;
                    let vh = f64::from(v[i]) / c2;
                    let pi = f64::from(p[i]);
                    p[i] = (pi - lr * (mh / (vh.sqrt() + self.eps) + wd * pi)) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    /// `cosine-epochs` holds PyTorch's `CosineAnnealingLR` value
    /// base·(1 + cos(π·e/E))/2 through epoch e, and meets the per-step
    /// cosine at each epoch's first step.
    #[test]
    fn cosine_epochs_steps_once_per_epoch() {
        let (epochs, per_epoch, base) = (4, 5, 0.1);
        let total = epochs * per_epoch;
        for step in 0..total {
            let epoch = step / per_epoch;
            let s = Schedule::CosineEpochs;
            let lr = s.lr(base, s.progress(step, total, epoch, epochs));
            let want =
                base * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos()) / 2.0;
            assert!((lr - want).abs() < 1e-15, "step {step}: {lr} vs {want}");
            if step % per_epoch == 0 {
                let c = Schedule::Cosine;
                let per_step = c.lr(base, c.progress(step, total, epoch, epochs));
                assert!((lr - per_step).abs() < 1e-15, "step {step}");
            }
        }
    }
}
