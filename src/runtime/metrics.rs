//! One epoch's record: what `metrics.jsonl` holds, the checkpoint keeps and
//! the plots draw.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    pub seconds: f64,
    pub images_per_sec: f64,
    /// Mean spikes per neuron and step, per spiking layer (last batch).
    pub firing_rates: BTreeMap<String, f64>,
}
