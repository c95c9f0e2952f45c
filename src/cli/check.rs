//! `snnc check`: a model's layer table, or its parameter list.

use clap::Args;
use std::fmt::Write;
use std::path::PathBuf;

use super::args::ModeArg;
use super::CliError;
use crate::model::{Encoding, Layer, LayerKind, MaxPoolRule, Model};
use crate::passes::rate::Mode;
use crate::shape::{dims, Analysis};

#[derive(Args)]
pub struct CheckArgs {
    file: PathBuf,
    /// One JSON object per layer instead of the table.
    #[arg(long)]
    json: bool,
    /// Also compile the model's training graph in this mode (T = 2,
    /// batch 1) through every pass, so that an error any pass would report
    /// shows now.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// List every parameter instead: name, shape, layer, trained or
    /// statistic (the names parameter files and grad dumps use).
    #[arg(long)]
    params: bool,
}

pub fn run(a: CheckArgs) -> Result<(), CliError> {
    if a.params {
        let (_, an) = crate::frontend::load(&a.file)?;
        print!("{}", crate::interop::param_table(&an, a.json));
        return Ok(());
    }
    let (model, an) = crate::frontend::load(&a.file)?;
    if let Some(mode) = a.mode {
        crate::compile::compile(
            &model,
            &crate::compile::Options::new(2, 1, Mode::from(mode)),
        )?;
    }
    if a.json {
        for l in &an.layers {
            println!(
                "{}",
                serde_json::json!({
                    "path": l.path, "kind": l.keyword, "input": l.input, "output": l.output,
                    "params": l.params.iter().filter(|p| p.trainable).map(|p| p.shape.iter().product::<usize>()).sum::<usize>(),
                    "neurons": l.neurons,
                })
            );
        }
        println!(
            "{}",
            serde_json::json!({"path": "total", "params": an.param_count(), "neurons": an.neuron_count(), "output": an.output})
        );
    } else {
        print!("{}", check_table(&model, &an));
    }
    Ok(())
}

fn describe(kind: &LayerKind) -> String {
    match kind {
        LayerKind::Conv2d {
            out,
            kernel,
            stride,
            padding,
            bias,
        } => format!(
            "conv2d {out} k{kernel} s{stride} p{padding}{}",
            if *bias { "" } else { " nobias" }
        ),
        LayerKind::Linear { out, bias } => {
            format!("linear {out}{}", if *bias { "" } else { " nobias" })
        }
        LayerKind::AvgPool {
            kernel,
            stride,
            padding,
        } => format!("avgpool {kernel} s{stride}{}", pad_suffix(*padding)),
        LayerKind::MaxPool {
            kernel,
            stride,
            padding,
            rate_rule,
        } => format!(
            "maxpool {kernel} s{stride}{}{}",
            pad_suffix(*padding),
            match rate_rule {
                MaxPoolRule::Masks => "",
                MaxPoolRule::Rates => " rates",
            }
        ),
        LayerKind::Dropout { p } => format!("dropout {p}"),
        LayerKind::Residual { shortcut, .. } => format!(
            "residual ({} shortcut)",
            if shortcut.is_empty() {
                "identity"
            } else {
                "projection"
            }
        ),
        k => k.keyword().to_string(),
    }
}

/// Layers in the order `shape::analyze` lists them.
/// ` p1` for a padded pool, nothing for an unpadded one.
fn pad_suffix(padding: usize) -> String {
    if padding == 0 {
        String::new()
    } else {
        format!(" p{padding}")
    }
}

fn flat_layers(list: &[Layer], out: &mut Vec<LayerKind>) {
    for l in list {
        out.push(l.kind.clone());
        if let LayerKind::Residual { main, shortcut } = &l.kind {
            flat_layers(main, out);
            flat_layers(shortcut, out);
        }
    }
}

fn encoding_name(e: Encoding) -> String {
    match e {
        Encoding::Direct => "direct".into(),
        Encoding::Poisson { seed } => format!("poisson, seed {seed}"),
        Encoding::Events => "event frames".into(),
    }
}

/// The `snnc check` table.
pub fn check_table(model: &Model, a: &Analysis) -> String {
    let mut kinds = Vec::new();
    flat_layers(&model.layers, &mut kinds);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {}: input {} ({})",
        model.name,
        dims(&a.input),
        encoding_name(model.input.encoding)
    );
    let _ = writeln!(
        out,
        "{:<14} {:<30} {:>14} {:>12} {:>10}",
        "layer", "kind", "output", "params", "neurons"
    );
    for (l, kind) in a.layers.iter().zip(&kinds) {
        let params: usize = l
            .params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        let indent = "  ".repeat(l.depth);
        let _ = writeln!(
            out,
            "{:<14} {:<30} {:>14} {:>12} {:>10}",
            l.path,
            format!("{indent}{}", describe(kind)),
            dims(&l.output),
            if params > 0 {
                params.to_string()
            } else {
                "-".into()
            },
            if l.neurons > 0 {
                l.neurons.to_string()
            } else {
                "-".into()
            }
        );
    }
    let _ = writeln!(
        out,
        "{:<14} {:<30} {:>14} {:>12} {:>10}",
        "total",
        format!("{} layers", a.layers.len()),
        dims(&a.output),
        a.param_count(),
        a.neuron_count()
    );
    out
}
