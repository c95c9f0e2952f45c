//! What a run measures: one epoch's record (what `metrics.jsonl` holds,
//! the checkpoint keeps and the plots draw), and per-layer firing rates.

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

/// Mean spike count per neuron and step, per layer (`path:keyword`; layers
/// without spikes are left out), in layer order, from an interpreter run
/// of `g`.
pub fn firing_rates<F: num_traits::Float>(
    g: &crate::ir::Graph,
    v: &crate::interp::Values<F>,
) -> Vec<(String, f64)> {
    let mut acc: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
    for n in g.g.node_indices() {
        let node = &g.g[n];
        if let (crate::ir::Op::Spike { .. }, Some(l)) = (&node.op, node.layer) {
            let t = v.get(n).expect("every node is evaluated");
            let e = acc.entry(l).or_default();
            e.0 += t
                .data
                .iter()
                .map(|x| x.to_f64().unwrap_or(0.0))
                .sum::<f64>();
            e.1 += t.len();
        }
    }
    acc.into_iter()
        .map(|(l, (s, n))| {
            (
                format!("{}:{}", g.layers[l].path, g.layers[l].keyword),
                s / n as f64,
            )
        })
        .collect()
}
