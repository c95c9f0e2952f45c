//! What the `snnc` subcommands do, as library functions (the binary only
//! parses arguments). Errors come back as rendered text for stderr.

use crate::dsl::{self, Diagnostic};
use crate::interp::{self, RunOptions};
use crate::ir::{self, Op};
use crate::model::{Encoding, LayerKind, Model};
use crate::shape::{self, dims, Analysis, ShapeError};
use crate::tensor::Tensor;
use crate::unroll::{self, Phase, UnrollConfig};
use crate::{init, rng};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

/// Renders a shape error at its layer's position in the source.
pub fn render_shape_error(e: &ShapeError, file: &str, source: &str) -> String {
    if e.pos.line == 0 {
        return format!("error: {e}");
    }
    Diagnostic {
        message: format!("layer {} `{}`: {}", e.path, e.keyword, e.message),
        line: e.pos.line,
        col: e.pos.col,
        len: e.keyword.len() as u32,
        hint: e.hint.clone(),
    }
    .render(file, source)
}

/// Parses and shape-checks a model file.
pub fn load(path: &Path) -> Result<(Model, Analysis), String> {
    let (model, source) = dsl::parse_file(path)?;
    let analysis = shape::analyze(&model)
        .map_err(|e| render_shape_error(&e, &path.display().to_string(), &source))?;
    Ok((model, analysis))
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
        LayerKind::AvgPool { kernel, stride } => format!("avgpool {kernel} s{stride}"),
        LayerKind::MaxPool { kernel, stride } => format!("maxpool {kernel} s{stride}"),
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
fn flat_layers(list: &[crate::model::Layer], out: &mut Vec<LayerKind>) {
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

pub fn check(path: &Path, json: bool) -> Result<(), String> {
    let (model, a) = load(path)?;
    if json {
        for l in &a.layers {
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
            serde_json::json!({"path": "total", "params": a.param_count(), "neurons": a.neuron_count(), "output": a.output})
        );
    } else {
        print!("{}", check_table(&model, &a));
    }
    Ok(())
}

fn unroll_file(path: &Path, steps: usize, batch: usize, eval: bool) -> Result<ir::Graph, String> {
    let (model, _) = load(path)?;
    let cfg = UnrollConfig {
        steps,
        batch,
        phase: if eval { Phase::Eval } else { Phase::Train },
    };
    unroll::unroll_with(&model, &cfg).map_err(|e| format!("error: {e}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    Text,
    Dot,
    /// Node and edge counts and build/verify times.
    Stats,
}

pub fn graph(
    path: &Path,
    steps: usize,
    batch: usize,
    eval: bool,
    format: GraphFormat,
) -> Result<String, String> {
    let started = std::time::Instant::now();
    let g = unroll_file(path, steps, batch, eval)?;
    let build = started.elapsed();
    Ok(match format {
        GraphFormat::Text => ir::to_text(&g),
        GraphFormat::Dot => ir::to_dot(&g),
        GraphFormat::Stats => {
            let started = std::time::Instant::now();
            ir::verify(&g).map_err(|e| format!("error: {e}"))?;
            let verify = started.elapsed();
            format!(
                "graph {} steps={steps} batch={batch}: {} nodes, {} edges; parse + unroll + verify {:.1} ms (verify alone {:.1} ms)\n",
                g.name,
                g.node_count(),
                g.edge_count(),
                build.as_secs_f64() * 1e3,
                verify.as_secs_f64() * 1e3
            )
        }
    })
}

/// A random input batch for the graph's `x`: uniform [0, 1) intensities,
/// or 0/1 event frames with 20 % density.
pub fn random_input(g: &ir::Graph, events: bool, seed: u64) -> Tensor<f64> {
    let shape =
        g.g.node_weights()
            .find(|n| matches!(&n.op, Op::Input { name } if name == "x"))
            .expect("every unrolled graph has input x")
            .shape
            .clone();
    let mut r = rng::Rng::new(seed ^ 0x1_0000_0001);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            let u = r.uniform();
            if events {
                f64::from(u8::from(u < 0.2))
            } else {
                u
            }
        })
        .collect();
    Tensor::from_vec(&shape, data)
}

/// Mean spike count per neuron and step, per layer (layers without spikes
/// are left out), in layer order.
pub fn firing_rates<F: num_traits::Float>(
    g: &ir::Graph,
    v: &interp::Values<F>,
) -> Vec<(String, f64)> {
    let mut acc: HashMap<usize, (f64, usize)> = HashMap::new();
    for n in g.g.node_indices() {
        let node = &g.g[n];
        if let (Op::Spike { .. }, Some(l)) = (&node.op, node.layer) {
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
    let mut ls: Vec<usize> = acc.keys().copied().collect();
    ls.sort_unstable();
    ls.into_iter()
        .map(|l| {
            let (s, n) = acc[&l];
            (
                format!("{}:{}", g.layers[l].path, g.layers[l].keyword),
                s / n as f64,
            )
        })
        .collect()
}

pub fn run(
    path: &Path,
    steps: usize,
    batch: usize,
    seed: u64,
    f64: bool,
    json: bool,
) -> Result<(), String> {
    let (model, a) = load(path)?;
    let cfg = UnrollConfig {
        steps,
        batch,
        phase: Phase::Train,
    };
    let g = unroll::unroll_with(&model, &cfg).map_err(|e| format!("error: {e}"))?;
    let params = init::init_params(&a, seed);
    let x = random_input(&g, matches!(model.input.encoding, Encoding::Events), seed);
    let opts = RunOptions { seed };
    let started = std::time::Instant::now();
    let (logits, rates) = if f64 {
        let inputs = HashMap::from([("x".to_string(), x)]);
        let v = interp::run(&g, &inputs, &params, &opts).map_err(|e| format!("error: {e}"))?;
        let out = g.output("logits").expect("logits");
        (v.get(out).expect("evaluated").clone(), firing_rates(&g, &v))
    } else {
        let inputs = HashMap::from([("x".to_string(), x.cast::<f32>())]);
        let p32 = init::cast_params::<f32>(&params);
        let v = interp::run(&g, &inputs, &p32, &opts).map_err(|e| format!("error: {e}"))?;
        let out = g.output("logits").expect("logits");
        (
            v.get(out).expect("evaluated").cast::<f64>(),
            firing_rates(&g, &v),
        )
    };
    let secs = started.elapsed().as_secs_f64();
    let classes = logits.shape[1];
    if json {
        let rows: Vec<Vec<f64>> = logits.data.chunks(classes).map(|c| c.to_vec()).collect();
        println!(
            "{}",
            serde_json::json!({
                "model": model.name, "steps": steps, "batch": batch, "seed": seed,
                "logits": rows,
                "firing_rates": rates.iter().map(|(l, r)| serde_json::json!({"layer": l, "rate": r})).collect::<Vec<_>>(),
                "nodes": g.node_count(), "seconds": secs,
            })
        );
        return Ok(());
    }
    println!(
        "{}: T={steps}, batch {batch}, seed {seed}, {} nodes, interpreted in {:.3} s ({})",
        model.name,
        g.node_count(),
        secs,
        if f64 { "f64" } else { "f32" }
    );
    println!("readout (time-mean of the last layer):");
    for (b, row) in logits.data.chunks(classes).enumerate() {
        let vals: Vec<String> = row.iter().map(|v| format!("{v:8.4}")).collect();
        println!("  sample {b}: [{}]", vals.join(" "));
    }
    println!("firing rates (spikes per neuron per step):");
    for (l, r) in &rates {
        println!("  {l:<24} {r:.4}");
    }
    Ok(())
}
