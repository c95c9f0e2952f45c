//! Training curves as SVG files in the run folder (loss, accuracy, firing
//! rates per epoch), redrawn after every epoch.

use super::metrics::EpochMetrics;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// A curve that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw `{}`: {msg}", path.display())]
pub struct PlotError {
    pub path: PathBuf,
    /// What plotters reported (its error types are generic over the
    /// drawing backend, so they are kept as text).
    pub msg: String,
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), PlotError> {
    let points: Vec<&(f64, f64)> = series.iter().flat_map(|(_, s)| s.iter()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_min = points.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    let y_max = if y_max <= y_min {
        y_min + 1.0
    } else {
        y_max * 1.05
    };
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, y_min..y_max)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, s)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Writes `loss.svg`, `accuracy.svg` and `firing_rates.svg` into `dir`.
pub fn write(dir: &Path, epochs: &[EpochMetrics]) -> Result<(), PlotError> {
    let xy = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        epochs.iter().map(|e| (e.epoch as f64, f(e))).collect()
    };
    chart(
        &dir.join("loss.svg"),
        "training loss",
        "cross-entropy",
        &[("train".into(), xy(&|e| e.train_loss))],
    )?;
    chart(
        &dir.join("accuracy.svg"),
        "accuracy",
        "%",
        &[
            ("train".into(), xy(&|e| 100.0 * e.train_acc)),
            ("test".into(), xy(&|e| 100.0 * e.test_acc)),
        ],
    )?;
    let layers: Vec<String> = epochs
        .last()
        .map(|e| e.firing_rates.keys().cloned().collect())
        .unwrap_or_default();
    let rates: Vec<(String, Vec<(f64, f64)>)> = layers
        .iter()
        .map(|l| {
            (
                l.clone(),
                xy(&|e| e.firing_rates.get(l).copied().unwrap_or(0.0)),
            )
        })
        .collect();
    chart(
        &dir.join("firing_rates.svg"),
        "firing rates",
        "spikes / neuron / step",
        &rates,
    )
}
