//! What the `snnc` subcommands do, as library functions (the binary only
//! parses arguments). Errors come back as rendered text for stderr.

use crate::compile;
use crate::compile::load_for;
use crate::dsl;
use crate::frontend::{load, render_shape_error};
use crate::init;
use crate::interp::{self, RunOptions};
use crate::interp::{random_input, random_labels};
use crate::ir::{self, Op};
use crate::model::{Encoding, LayerKind, Model};
use crate::passes::cost::graph_cost;
use crate::passes::mem::{self, Memory};
use crate::passes::rate::{rules::Tag, Mode, RegionStats};
use crate::passes::schedule::SchedOpts;
use crate::passes::{self, memplan};
use crate::runtime::checkpoint::Checkpoint;
use crate::runtime::train::TrainConfig;
use crate::shape::{self, dims, Analysis};
use crate::tensor::Tensor;
use crate::unroll::{self, Phase, UnrollConfig};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The modes whose rewrite rules compiling with `opts` runs.
fn modes_of(opts: &compile::Options) -> Vec<Mode> {
    if !opts.eval && opts.after > compile::Stage::Autodiff {
        vec![opts.mode]
    } else {
        Vec::new()
    }
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

/// `snnc check`: with `mode`, also that the mode can compile the model.
pub fn check(path: &Path, json: bool, mode: Option<Mode>) -> Result<(), String> {
    let modes: Vec<Mode> = mode.into_iter().collect();
    let (model, a) = load_for(path, &modes)?;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    Text,
    Dot,
    /// Node and edge counts, stage times, e-graph sizes.
    Stats,
}

/// The pipeline `snnc graph` runs: the front passes for `opts`, then the
/// lowering for `target` on the CPU backend's scratch model.
fn graph_pipeline(opts: &compile::Options, target: compile::Target) -> passes::Pipeline {
    compile::pipeline(
        opts,
        Some(compile::Lowering {
            target,
            workspace: &crate::codegen::cpu::WORKSPACE,
        }),
    )
}

/// `snnc graph --list-passes`: the pipeline's input and passes, one line
/// each with what it does.
pub fn list_passes(opts: &compile::Options, target: compile::Target) -> String {
    let mut out = String::new();
    for (name, about) in graph_pipeline(opts, target).listing() {
        let _ = writeln!(out, "{name:<22} {about}");
    }
    out
}

/// `snnc graph`: the program after the pass `after` of the pipeline for
/// `opts` and `target`: a graph (text, DOT or stats), or after a
/// plan-level pass its order, fusion plan or memory plan (text).
pub fn graph(
    path: &Path,
    opts: &compile::Options,
    after: &str,
    format: GraphFormat,
    target: compile::Target,
) -> Result<String, String> {
    let pipeline = graph_pipeline(opts, target);
    let n = compile::passes_until(opts, &pipeline, Some(after)).map_err(|e| match e {
        compile::CompileError::Pass(passes::PassError::Unknown { .. }) => format!(
            "error: {e}\n  = hint: the lowering passes depend on --schedule; \
             `snnc graph --list-passes --schedule S` lists them"
        ),
        e => String::from(e),
    })?;
    let runs_rate = pipeline.passes[..n].iter().any(|p| p.name() == "rate");
    let modes = if runs_rate {
        vec![opts.mode]
    } else {
        Vec::new()
    };
    let (model, _) = load_for(path, &modes)?;
    let c = compile::run(&model, opts, &pipeline, Some(after))?;
    let p = &c.program;
    let g = &p.graph;
    Ok(match format {
        GraphFormat::Text => match (&p.plan, &p.order, &p.mem) {
            (Some(plan), _, Some(mem)) => fused_plan_text(g, plan, mem),
            (None, _, Some(mem)) => mem.to_text(g),
            (Some(plan), _, None) => format!(
                "fusion plan {} steps={} batch={}: {} units ({} kernels)\n{}",
                g.name,
                g.steps,
                g.batch,
                plan.units.len(),
                plan.kernels.len(),
                plan.text(g)
            ),
            (None, Some(order), None) => crate::passes::schedule::order_text(g, order),
            (None, None, None) => ir::to_text(g),
        },
        GraphFormat::Dot => ir::to_dot(g),
        GraphFormat::Stats => {
            let started = std::time::Instant::now();
            ir::verify(g).map_err(|e| format!("error: {e}"))?;
            let verify = started.elapsed().as_secs_f64();
            let mut out = format!(
                "graph {} steps={} batch={} after {}: {} nodes, {} edges\n",
                g.name,
                opts.steps,
                opts.batch,
                after,
                g.node_count(),
                g.edge_count()
            );
            for (stage, secs) in &c.timings {
                let _ = writeln!(out, "  {:<10} {:>9.2} ms", stage, secs * 1e3);
            }
            let _ = writeln!(out, "  {:<10} {:>9.2} ms", "verify", verify * 1e3);
            if !p.regions.is_empty() {
                let sum = |f: fn(&RegionStats) -> f64| p.regions.iter().map(f).sum::<f64>();
                let max = p.regions.iter().map(|r| r.enodes_after).max().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "  rate pass ({}): {} regions, e-nodes {} before / {} after rewriting (largest region {}), {} e-classes, {:.1} ms in egg",
                    opts.mode,
                    p.regions.len(),
                    sum(|r| r.enodes_before as f64),
                    sum(|r| r.enodes_after as f64),
                    max,
                    sum(|r| r.eclasses as f64),
                    sum(|r| r.seconds) * 1e3
                );
            }
            let cost = graph_cost(g);
            let _ = writeln!(
                out,
                "  kept for the backward {:.2} MiB; forward {:.3} GFLOP, backward {:.3} GFLOP",
                cost.kept_bytes / MIB,
                cost.forward_flops / 1e9,
                cost.backward_flops / 1e9
            );
            // The memory plan: the program's, or the rest of the lowering
            // run on a copy.
            let started = std::time::Instant::now();
            let planned;
            let mem = match &p.mem {
                Some(mem) => mem,
                None => {
                    let lowering_start = compile::front(opts).len();
                    let done = n.saturating_sub(lowering_start);
                    let rest = graph_pipeline(opts, target)
                        .passes
                        .into_iter()
                        .skip(lowering_start + done)
                        .collect();
                    let mut q = p.clone();
                    passes::Pipeline::new(rest)
                        .run(&mut q)
                        .map_err(|e| format!("error: {e}"))?;
                    planned = q.mem.expect("the lowering ends with the memory plan");
                    &planned
                }
            };
            let _ = writeln!(
                out,
                "  memory plan ({target}, {:.2} ms): peak {:.2} MiB, arena {:.2} MiB, resident (inputs, params) {:.2} MiB; {} buffers, {} nodes in place",
                started.elapsed().as_secs_f64() * 1e3,
                mem.peak_bytes as f64 / MIB,
                mem.arena_bytes as f64 / MIB,
                mem.resident_bytes as f64 / MIB,
                mem.buffers.len(),
                mem.in_place
            );
            out
        }
    })
}

/// `snnc plan`: the execution order and buffer table of a schedule (text),
/// or the plan's totals and buffers (JSON).
pub fn plan(
    path: &Path,
    opts: &compile::Options,
    sched: BenchPlan,
    json: bool,
) -> Result<String, String> {
    let (model, _) = load_for(path, &modes_of(opts))?;
    let c = compile::compile(&model, opts)?;
    let sched = match sched {
        BenchPlan::Graph(s) => s,
        BenchPlan::Fused(s) => {
            use crate::passes::fuse_time;
            let g = fuse_time::lower(&c.graph, s);
            let plan = fuse_time::plan(&g, &[], s);
            let mem = memplan::plan_fused(&g, &plan, &crate::codegen::cpu::WORKSPACE);
            mem.check_arena()
                .map_err(|e| format!("error: internal: {e}"))?;
            if json {
                let mut v = serde_json::to_value(&mem).expect("serialisable");
                v["schedule"] = serde_json::json!(sched.to_string());
                v["units"] = serde_json::json!(plan.units.len());
                return Ok(format!("{v}\n"));
            }
            return Ok(format!(
                "schedule {sched}\n{}",
                fused_plan_text(&g, &plan, &mem)
            ));
        }
    };
    let p = memplan::build(&c.graph, sched, &crate::codegen::cpu::WORKSPACE);
    p.mem
        .check_arena()
        .map_err(|e| format!("error: internal: {e}"))?;
    if json {
        let mut v = serde_json::to_value(&p.mem).expect("serialisable");
        v["schedule"] = serde_json::json!(sched.to_string());
        v["nodes"] = serde_json::json!(p.mem.order.len());
        return Ok(format!("{v}\n"));
    }
    Ok(format!("schedule {sched}\n{}", p.mem.to_text(&p.graph)))
}

/// A fused plan's units with the bytes live while each runs, then its
/// buffers.
fn fused_plan_text(
    g: &crate::ir::Graph,
    plan: &crate::passes::fuse::Plan,
    mem: &memplan::MemPlan,
) -> String {
    use crate::passes::fuse::Unit;
    use std::fmt::Write;
    let live = mem.live_bytes();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "plan {} steps={} batch={}: {} units ({} kernels), peak {} B at unit {}, resident {} B",
        g.name,
        g.steps,
        g.batch,
        plan.units.len(),
        plan.kernels.len(),
        mem.peak_bytes,
        mem.peak_at,
        mem.resident_bytes
    );
    for (i, u) in plan.units.iter().enumerate() {
        let what = match *u {
            Unit::Node(n) => format!(
                "%{:<5} {} {}",
                n.index(),
                g.g[n].op.name(),
                crate::shape::list(&g.g[n].shape)
            ),
            Unit::Kernel(k) => format!("kernel {}", plan.kernels[k].kernel.name),
            Unit::Step(k, t) => format!("kernel {} t={t}", plan.kernels[k].kernel.name),
        };
        let _ = writeln!(o, "  {i:<4} {what:<56} live {}", live[i]);
    }
    let _ = writeln!(o, "buffers:");
    for (i, b) in mem.buffers.iter().enumerate() {
        let _ = writeln!(
            o,
            "  b{i:<3} {:<9} {:>10} B  live [{}, {}]",
            serde_json::to_value(b.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            b.bytes,
            b.start,
            b.end
        );
    }
    o
}

const MIB: f64 = 1024.0 * 1024.0;

/// The command-line name of an option value (`rate`, `adamw`, `cosine`).
pub fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// `snnc rules`: every rewrite rule with its tag and identity.
pub fn rules(json: bool) -> String {
    let mut out = String::new();
    for r in crate::passes::rate::rules::RULES {
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({"name": r.name, "tag": r.tag, "identity": r.identity})
            );
        } else {
            let tag = match r.tag {
                Tag::Exact => "exact",
                Tag::Approximate => "approximate",
            };
            let _ = writeln!(out, "{:<18} {:<12} {}", r.name, tag, r.identity);
        }
    }
    out
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
pub fn grad_check_rows(
    model: &Model,
    a: &Analysis,
    steps: usize,
    batch: usize,
    seed: u64,
) -> Result<Vec<GradCheckRow>, String> {
    let opts = compile::Options {
        after: compile::Stage::Autodiff,
        ..compile::Options::new(steps, batch, Mode::Bptt)
    };
    let bptt = compile::compile(model, &opts)?.graph;
    let (rate, _) = crate::passes::rate::rate_pass(bptt.clone(), Mode::Rate, &opts.limits)
        .map_err(|e| format!("error: {e}"))?;
    // Both graphs run in the f64 interpreter, which keeps every value.
    mem::ensure_fits(
        "grad-check (two interpreter runs in f64)",
        mem::interpreter_bytes(&bptt, 8)
            .saturating_add(mem::interpreter_bytes(&rate, 8))
            .saturating_add(mem::param_bytes(a, 8)),
        Memory::Host,
    )?;
    let params = init::init_params(a, seed);
    let x = random_input(
        &bptt,
        matches!(model.input.encoding, Encoding::Events),
        seed,
    );
    let classes = a.output[0];
    let inputs = HashMap::from([
        ("x".to_string(), x),
        ("labels".to_string(), random_labels(batch, classes, seed)),
    ]);
    let run = |g: &ir::Graph| {
        interp::run(g, &inputs, &params, &RunOptions { seed }).map_err(|e| format!("error: {e}"))
    };
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

pub fn grad_check(
    path: &Path,
    steps: usize,
    batch: usize,
    seed: u64,
    json: bool,
) -> Result<(), String> {
    let (model, a) = load_for(path, &[Mode::Rate])?;
    let rows = grad_check_rows(&model, &a, steps, batch, seed)?;
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("serialisable"));
        }
        return Ok(());
    }
    println!("{}: rate vs BPTT gradients, T={steps}, batch {batch}, seed {seed} (random init, random batch)", model.name);
    println!(
        "{:<24} {:>18} {:>10} {:>12}",
        "parameter", "shape", "cosine", "|rate|/|bptt|"
    );
    for r in &rows {
        println!(
            "{:<24} {:>18} {:>10.4} {:>12.4}",
            r.param,
            dims(&r.shape),
            r.cosine,
            r.norm_ratio
        );
    }
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ReportRow {
    pub mode: Mode,
    pub steps: usize,
    pub batch: usize,
    pub kept_bytes: f64,
    pub forward_flops: f64,
    pub backward_flops: f64,
    pub nodes: usize,
    pub compile_seconds: f64,
}

pub fn report_rows(
    model: &Model,
    steps: &[usize],
    modes: &[Mode],
    batch: usize,
) -> Result<Vec<ReportRow>, String> {
    let mut rows = Vec::new();
    for &mode in modes {
        for &t in steps {
            let started = std::time::Instant::now();
            let c = compile::compile(model, &compile::Options::new(t, batch, mode))?;
            let cost = graph_cost(&c.graph);
            rows.push(ReportRow {
                mode,
                steps: t,
                batch,
                kept_bytes: cost.kept_bytes,
                forward_flops: cost.forward_flops,
                backward_flops: cost.backward_flops,
                nodes: c.graph.node_count(),
                compile_seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    Ok(rows)
}

pub fn report(
    path: &Path,
    steps: &[usize],
    modes: &[Mode],
    batch: usize,
    json: bool,
) -> Result<(), String> {
    let (model, _) = load_for(path, modes)?;
    let rows = report_rows(&model, steps, modes, batch)?;
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("serialisable"));
        }
        return Ok(());
    }
    println!("{}: batch {batch}; kept = forward values the backward reads (f32); FLOPs per step of training", model.name);
    println!(
        "{:<6} {:>4} {:>14} {:>14} {:>14} {:>8} {:>10}",
        "mode", "T", "kept (MiB)", "fwd GFLOP", "bwd GFLOP", "nodes", "compile s"
    );
    for r in &rows {
        println!(
            "{:<6} {:>4} {:>14.2} {:>14.3} {:>14.3} {:>8} {:>10.3}",
            r.mode.to_string(),
            r.steps,
            r.kept_bytes / MIB,
            r.forward_flops / 1e9,
            r.backward_flops / 1e9,
            r.nodes,
            r.compile_seconds
        );
    }
    Ok(())
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
    // The interpreter keeps every value; parameters are made in f64 (and
    // cast to f32 for an f32 run).
    let elem = if f64 { 8 } else { 4 };
    mem::ensure_fits(
        "the forward pass (reference interpreter)",
        mem::interpreter_bytes(&g, elem).saturating_add(mem::param_bytes(&a, 8 + elem)),
        Memory::Host,
    )?;
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

/// The model `snnc train` uses when no file is given.
pub const DEFAULT_MODEL: (&str, &str) = (
    "examples/models/digits_mlp.snn",
    include_str!("../examples/models/digits_mlp.snn"),
);

/// What `snnc train` was asked to do.
pub struct TrainRequest {
    /// The settings from the command line (defaults where a flag is not
    /// given).
    pub cfg: TrainConfig,
    /// The flags given on the command line, by clap id (`lr`, `steps`,
    /// `file`, `data_dir`, …): with `--resume`, these must agree with the
    /// run's settings.
    pub explicit: Vec<String>,
    /// `--out`.
    pub out: Option<PathBuf>,
    /// `--resume`.
    pub resume: Option<PathBuf>,
    pub json: bool,
    pub cuda: bool,
}

impl TrainRequest {
    fn given(&self, id: &str) -> bool {
        self.explicit.iter().any(|e| e == id)
    }
}

/// The folder a run without `--out` would like: `runs/MODEL-MODE-TN`.
pub fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    let stem = Path::new(&cfg.model_file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    PathBuf::from("runs").join(format!("{stem}-{}-T{}", cfg.mode, cfg.steps))
}

/// Informational lines: standard output, or standard error under `--json`
/// (whose standard output is only the epochs' JSON).
fn note(json: bool, msg: &str) {
    if json {
        eprintln!("{msg}");
    } else {
        say(msg);
    }
}

/// A line on standard output; a closed pipe does not stop (or crash) a
/// training run.
fn say(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{msg}");
}

/// The settings of a run in words.
fn describe_config(cfg: &TrainConfig) -> String {
    format!(
        "{} on {}{}, {} mode, T={}, batch {}, {} lr {} ({}), momentum {}, weight decay {}, \
         seed {}, order {}{}",
        cfg.model_file,
        cfg.data,
        cfg.data_dir
            .as_ref()
            .map(|d| format!(" ({})", d.display()))
            .unwrap_or_default(),
        cfg.mode,
        cfg.steps,
        cfg.batch,
        value_name(&cfg.optim.kind),
        cfg.lr,
        value_name(&cfg.schedule),
        cfg.optim.momentum,
        cfg.optim.weight_decay,
        cfg.seed,
        cfg.order,
        if cfg.paper_grad_scale {
            ", paper grad scale"
        } else {
            ""
        }
    )
}

/// The settings a flag sets: (clap id, flag as typed, value in a config).
type Setting = (&'static str, &'static str, fn(&TrainConfig) -> String);

/// Every setting of a run a `snnc train` flag gives (besides the model
/// file, `--data-dir` and `--epochs`, which resume treats on their own).
const SETTINGS: [Setting; 12] = [
    ("data", "--data", |c| c.data.clone()),
    ("mode", "--mode", |c| c.mode.to_string()),
    ("steps", "-T", |c| c.steps.to_string()),
    ("batch", "--batch", |c| c.batch.to_string()),
    ("lr", "--lr", |c| c.lr.to_string()),
    ("optimizer", "--optimizer", |c| value_name(&c.optim.kind)),
    ("momentum", "--momentum", |c| c.optim.momentum.to_string()),
    ("weight_decay", "--weight-decay", |c| {
        c.optim.weight_decay.to_string()
    }),
    ("schedule", "--schedule", |c| value_name(&c.schedule)),
    ("order", "--order", |c| c.order.to_string()),
    ("seed", "--seed", |c| c.seed.to_string()),
    ("paper_grad_scale", "--paper-grad-scale", |c| {
        c.paper_grad_scale.to_string()
    }),
];

/// The flags given with `--resume` that contradict the run's settings,
/// one line each with both values.
fn contradictions(req: &TrainRequest, run: &TrainConfig, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if req.given("file") && req.cfg.model_source != run.model_source {
        out.push(format!(
            "FILE `{}` is not the model the run trains (`{}`, kept in its checkpoint)",
            req.cfg.model_file, run.model_file
        ));
    }
    for (id, flag, value) in SETTINGS {
        if req.given(id) {
            let (given, has) = (value(&req.cfg), value(run));
            if given != has {
                out.push(format!("{flag} {given} (the run has {has})"));
            }
        }
    }
    if let Some(o) = &req.out {
        let same = match (o.canonicalize(), dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => o == dir,
        };
        if !same {
            out.push(format!(
                "--out {} (a resumed run stays in its folder, `{}`)",
                o.display(),
                dir.display()
            ));
        }
    }
    out
}

/// The run in `dir` to resume: its checkpoint, or, for a run that stopped
/// before its first checkpoint, its `config.json` and a fresh start.
fn run_to_resume(dir: &Path) -> Result<(TrainConfig, Checkpoint), String> {
    let file = crate::runtime::checkpoint::file_of(dir);
    if file.exists() {
        let ck = crate::runtime::checkpoint::load(dir)?;
        let cfg: TrainConfig = serde_json::from_str(&ck.config).map_err(|e| {
            format!(
                "error: the checkpoint `{}` has a bad config: {e}",
                file.display()
            )
        })?;
        return Ok((cfg, ck));
    }
    let config = dir.join(crate::runtime::rundir::CONFIG);
    let text = std::fs::read_to_string(&config).map_err(|_| {
        format!(
            "error: `{}` holds no run to resume (no {} or {})",
            dir.display(),
            crate::runtime::checkpoint::FILE,
            crate::runtime::rundir::CONFIG
        )
    })?;
    let cfg: TrainConfig = serde_json::from_str(&text)
        .map_err(|e| format!("error: `{}` is not a run config: {e}", config.display()))?;
    let model = dsl::parse(&cfg.model_source, &cfg.model_file)
        .map_err(|d| d.render(&cfg.model_file, &cfg.model_source))?;
    let a = shape::analyze(&model)
        .map_err(|e| render_shape_error(&e, &cfg.model_file, &cfg.model_source))?;
    let ck = Checkpoint {
        params: crate::runtime::train::initial_params(&a, cfg.seed),
        optim: Default::default(),
        epoch: 0,
        batch_in_epoch: 0,
        config: serde_json::to_string(&cfg).expect("config serialises"),
        epoch_sums: None,
        metrics: Some(String::new()),
    };
    Ok((cfg, ck))
}

/// `snnc train`: a new run, or the run in `--resume DIR` continued.
/// `Ok(true)`: interrupted by Ctrl-C (the checkpoint saved, the message
/// printed; the binary exits with 130).
pub fn train(req: TrainRequest) -> Result<bool, String> {
    crate::runtime::train::install_interrupt_handler();
    match train_inner(&req) {
        Err(e) if crate::runtime::train::interrupted() => {
            eprintln!("{}", e.trim_end());
            eprintln!("interrupted (Ctrl-C) before a checkpoint could be saved");
            Ok(true)
        }
        r => r,
    }
}

fn train_inner(req: &TrainRequest) -> Result<bool, String> {
    let json = req.json;
    // The device first: without one, say so before any work.
    let mut gpu = if req.cuda {
        let c = crate::codegen::cuda::Cuda::new()
            .map_err(|e| format!("error: train --device cuda: {e}"))?;
        note(
            json,
            &format!("on {}", crate::codegen::cuda::Backend::describe(&c)),
        );
        Some(c)
    } else {
        None
    };
    let (cfg, out, ck) = match &req.resume {
        Some(path) => {
            // The run folder, also when given as its checkpoint file.
            let dir = &match path.parent() {
                Some(p) if path.is_file() => {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                }
                _ => path.clone(),
            };
            let (mut cfg, ck) = run_to_resume(dir)?;
            let bad = contradictions(req, &cfg, dir);
            if !bad.is_empty() {
                return Err(format!(
                    "error: --resume continues the run in `{}` with its own settings, and \
                     these flags contradict them:\n{}\n  drop them to continue the run, or \
                     start a new run (another --out)",
                    dir.display(),
                    bad.iter()
                        .map(|b| format!("  {b}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
            let done = ck.epoch;
            if req.given("epochs") {
                let n = req.cfg.epochs;
                if n <= done {
                    return Err(format!(
                        "error: --epochs {n}: the run in `{}` has already trained {done} \
                         epoch(s); pass --epochs N with N > {done} to train further",
                        dir.display()
                    ));
                }
                if n != cfg.epochs {
                    note(
                        json,
                        &format!(
                            "epochs: {n} (--epochs; the run was set to {}{})",
                            cfg.epochs,
                            if cfg.schedule == crate::runtime::optim::Schedule::Const {
                                String::new()
                            } else {
                                format!(
                                    "; the {} schedule now spans {n} epochs",
                                    value_name(&cfg.schedule)
                                )
                            }
                        ),
                    );
                }
                cfg.epochs = n;
            } else if done >= cfg.epochs {
                return Err(format!(
                    "error: run already finished ({done}/{} epochs) in `{}`; pass --epochs N \
                     to train further",
                    cfg.epochs,
                    dir.display()
                ));
            }
            if req.given("data_dir") && req.cfg.data_dir != cfg.data_dir {
                note(
                    json,
                    &format!(
                        "data dir: {} (--data-dir; the run used {})",
                        req.cfg
                            .data_dir
                            .as_ref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|| "the default".into()),
                        cfg.data_dir
                            .as_ref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|| "the default".into()),
                    ),
                );
                cfg.data_dir = req.cfg.data_dir.clone();
            }
            note(
                json,
                &format!(
                    "resuming `{}` at epoch {}/{}{}, with the run's settings: {}",
                    dir.display(),
                    done + 1,
                    cfg.epochs,
                    if ck.batch_in_epoch > 0 {
                        format!(" (batches 1–{} of it done)", ck.batch_in_epoch)
                    } else {
                        String::new()
                    },
                    describe_config(&cfg)
                ),
            );
            (cfg, dir.clone(), Some(ck))
        }
        None => {
            let cfg = req.cfg.clone();
            if cfg.epochs == 0 {
                return Err("error: --epochs must be at least 1".into());
            }
            let out = match &req.out {
                Some(o) => {
                    // Fail before loading data; the claim itself is in the
                    // training loop.
                    if let Some(f) = crate::runtime::rundir::run_file(o) {
                        return Err(crate::runtime::rundir::taken_error(o, f));
                    }
                    o.clone()
                }
                None => {
                    let base = default_run_dir(&cfg);
                    let out = crate::runtime::rundir::fresh_dir(&base);
                    if out != base {
                        note(
                            json,
                            &format!(
                                "`{}` holds an earlier run; this run goes to `{}`",
                                base.display(),
                                out.display()
                            ),
                        );
                    }
                    out
                }
            };
            note(
                json,
                &format!(
                    "training {}, {} epochs → {}",
                    describe_config(&cfg),
                    cfg.epochs,
                    out.display()
                ),
            );
            (cfg, out, None)
        }
    };
    let opts = crate::runtime::train::TrainOptions {
        quiet: json,
        json,
        stop_after_steps: None,
    };
    if !json && ck.is_none() {
        println!(
            "training {} on {} in {} mode, T={}, {} epochs, batch {}, {} lr {} ({}), seed {} → {}",
            cfg.model_file,
            cfg.data,
            cfg.mode,
            cfg.steps,
            cfg.epochs,
            cfg.batch,
            value_name(&cfg.optim.kind),
            cfg.lr,
            value_name(&cfg.schedule),
            cfg.seed,
            out.display()
        );
    }
    let s = match gpu.as_mut() {
        Some(c) => crate::runtime::train::train_on_with(&cfg, &out, ck, &opts, c)?,
        None => crate::runtime::train::train_with(&cfg, &out, ck, &opts)?,
    };
    if let Some((epoch, batch)) = s.interrupted {
        eprintln!(
            "{}",
            crate::runtime::train::interrupted_message(&out, epoch, batch)
        );
        return Ok(true);
    }
    if let (false, Some(last)) = (json, s.epochs.last()) {
        say(&format!(
            "test accuracy {:.2}% after {} epochs (checkpoint and metrics.jsonl in {})",
            100.0 * last.test_acc,
            last.epoch,
            out.display()
        ));
    }
    Ok(false)
}

/// `snnc eval CHECKPOINT`: test accuracy with the checkpoint's weights and
/// the run's settings (batch, T, data, seed: what the result depends on),
/// `data`, `data_dir` and `batch` overriding them.
pub fn eval(
    checkpoint: &Path,
    data: Option<String>,
    data_dir: Option<std::path::PathBuf>,
    batch: Option<usize>,
    cuda: bool,
) -> Result<(), String> {
    let mut gpu = if cuda {
        Some(
            crate::codegen::cuda::Cuda::new()
                .map_err(|e| format!("error: eval --device cuda: {e}"))?,
        )
    } else {
        None
    };
    let ck = crate::runtime::checkpoint::load(checkpoint)?;
    let mut cfg: TrainConfig = serde_json::from_str(&ck.config)
        .map_err(|e| format!("error: bad config in checkpoint: {e}"))?;
    let mut taken = vec![format!("T={}", cfg.steps), format!("seed {}", cfg.seed)];
    let mut overridden = Vec::new();
    let mut setting = |name: &str, run: &str, given: Option<&str>| match given {
        Some(g) if g != run => overridden.push(format!("{name} {g} (the run used {run})")),
        _ => taken.push(format!("{name} {run}")),
    };
    setting(
        "batch",
        &cfg.batch.to_string(),
        batch.map(|b| b.to_string()).as_deref(),
    );
    setting("data", &cfg.data, data.as_deref());
    let show = |d: &Option<PathBuf>| {
        d.as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "default".into())
    };
    if data_dir.is_some() {
        setting("data dir", &show(&cfg.data_dir), Some(&show(&data_dir)));
    }
    if let Some(b) = batch {
        if b == 0 {
            return Err("error: --batch must be at least 1".into());
        }
        cfg.batch = b;
    }
    if let Some(d) = data {
        cfg.data = d;
    }
    if data_dir.is_some() {
        cfg.data_dir = data_dir;
    }
    println!(
        "eval: {} from the run{}",
        taken.join(", "),
        if overridden.is_empty() {
            String::new()
        } else {
            format!("; {}", overridden.join(", "))
        }
    );
    let model = dsl::parse(&cfg.model_source, &cfg.model_file)
        .map_err(|d| d.render(&cfg.model_file, &cfg.model_source))?;
    let split = crate::runtime::train::load_data(&cfg)?;
    let params: HashMap<String, Tensor<f32>> = ck.params.into_iter().collect();
    let mut ev = crate::runtime::train::Evaluator::new(&model, cfg.steps);
    let acc = match gpu.as_mut() {
        Some(c) => ev.accuracy_on(c, &split.test, &params, cfg.batch)?,
        None => ev.accuracy(&split.test, &params, cfg.batch)?,
    };
    println!(
        "{}: test accuracy {:.2}% on {} ({} samples), T={}",
        model.name,
        100.0 * acc,
        cfg.data,
        split.test.len(),
        cfg.steps
    );
    Ok(())
}

/// What `snnc bench` runs: the fused CPU plan (layer-major, or time-major:
/// one kernel step at a time), or the graph executor in a schedule's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchPlan {
    Fused(SchedOpts),
    Graph(SchedOpts),
}

impl std::fmt::Display for BenchPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchPlan::Fused(SchedOpts::LAYER_MAJOR) => f.write_str("fused"),
            BenchPlan::Fused(s) => write!(f, "fused-{s}"),
            BenchPlan::Graph(s) => write!(f, "{s}"),
        }
    }
}

impl std::str::FromStr for BenchPlan {
    type Err = String;
    fn from_str(s: &str) -> Result<BenchPlan, String> {
        let bad = || {
            format!(
                "unknown schedule `{s}`; expected one of: fused, fused-time-major, \
                 fused-time-major-recompute, {}",
                SchedOpts::NAMES.join(", ")
            )
        };
        match s {
            "fused" => Ok(BenchPlan::Fused(SchedOpts::LAYER_MAJOR)),
            _ => match s.strip_prefix("fused-") {
                Some(rest) => rest.parse().map(BenchPlan::Fused).map_err(|_| bad()),
                None => s.parse().map(BenchPlan::Graph).map_err(|_| bad()),
            },
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub mode: Mode,
    pub steps: usize,
    pub batch: usize,
    /// `fused` (the fused CPU plan) or the graph executor's schedule
    /// (`layer-major`, `time-major`, `time-major-recompute`).
    pub schedule: String,
    /// Median wall time of one training step (forward + backward), seconds.
    pub step_seconds: f64,
    pub images_per_sec: f64,
    /// Bytes of forward values the backward reads (the plan's, not measured).
    pub kept_bytes: f64,
    /// The memory plan's peak: the most bytes a step allocates at once
    /// (inputs and parameters, resident, not included).
    pub planned_peak_bytes: u64,
    /// The arena the plan's buffers fit in.
    pub arena_bytes: u64,
    /// The most bytes a step allocated at once above what was allocated
    /// before it (counting allocator), over the timed steps; null when the
    /// counting allocator is not installed.
    pub measured_peak_bytes: Option<u64>,
    /// Inputs and parameters.
    pub resident_bytes: u64,
    pub gflop_per_step: f64,
    pub gflops: f64,
    /// The SGEMM floor (GFLOP/s, 2048³) when `--floor` was given.
    pub floor_gflops: Option<f64>,
}

/// `snnc bench`: median step time of the CPU executor on random data, and
/// the planned and measured peak memory, per mode, T and schedule.
#[allow(clippy::too_many_arguments)]
pub fn bench(
    path: &Path,
    steps: &[usize],
    modes: &[Mode],
    schedules: &[BenchPlan],
    batch: usize,
    repeats: usize,
    floor: bool,
    json: bool,
) -> Result<(), String> {
    let (model, a) = load_for(path, modes)?;
    // The FLOP floor: this machine's SGEMM rate on a large square product,
    // with the library the executor uses.
    let floor_gflops = floor.then(|| crate::codegen::cpu::kernels::sgemm_gflops(2048, 3));
    // Parameters are made in f64, then cast to f32.
    mem::ensure_fits("the parameters", mem::param_bytes(&a, 12), Memory::Host)?;
    let params: HashMap<String, Tensor<f32>> = init::cast_params(&init::init_params(&a, 0));
    let mut rows = Vec::new();
    for &mode in modes {
        for &t in steps {
            let g = compile::compile(&model, &compile::Options::new(t, batch, mode))?.graph;
            let x =
                random_input(&g, matches!(model.input.encoding, Encoding::Events), 1).cast::<f32>();
            let labels = random_labels(batch, a.output[0], 1).cast::<f32>();
            let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
            for &sched in schedules {
                let (planned, fused) = match sched {
                    BenchPlan::Graph(opts) => (
                        Some(memplan::build(&g, opts, &crate::codegen::cpu::WORKSPACE)),
                        None,
                    ),
                    BenchPlan::Fused(opts) => (
                        None,
                        Some(crate::codegen::cpu::compiled::Compiled::scheduled(
                            &g,
                            &[],
                            opts,
                        )?),
                    ),
                };
                let (cost, mem) = match (&planned, &fused) {
                    (Some(p), _) => (graph_cost(&p.graph), p.mem.clone()),
                    (None, Some(exe)) => {
                        let eg = exe.graph(&g);
                        (
                            graph_cost(eg),
                            memplan::plan_fused(eg, &exe.plan, &crate::codegen::cpu::WORKSPACE),
                        )
                    }
                    (None, None) => unreachable!("a plan was built"),
                };
                mem::ensure_plan_fits(
                    &format!("a training step ({mode}, T={t}, {sched})"),
                    &mem,
                    0,
                    Memory::Host,
                )?;
                let mut times = Vec::new();
                let mut measured: Option<u64> = None;
                // One warm-up step, then the timed ones.
                for i in 0..=repeats {
                    let started = std::time::Instant::now();
                    let run_opts = RunOptions { seed: i as u64 };
                    let (out, peak) = crate::runtime::alloc::measure(|| match (&planned, &fused) {
                        (Some(p), _) => {
                            crate::codegen::cpu::run_planned(p, &inputs, &params, &run_opts)
                        }
                        (None, Some(exe)) => exe.run(&g, &inputs, &params, &run_opts),
                        (None, None) => unreachable!("a plan was built"),
                    });
                    let secs = started.elapsed().as_secs_f64();
                    out.map_err(|e| format!("error: {e}"))?;
                    if i > 0 {
                        times.push(secs);
                        if let Some(b) = peak {
                            measured = Some(measured.unwrap_or(0).max(b as u64));
                        }
                    }
                }
                times.sort_by(f64::total_cmp);
                let med = times[times.len() / 2];
                let flop = cost.forward_flops + cost.backward_flops;
                rows.push(BenchRow {
                    mode,
                    steps: t,
                    batch,
                    schedule: sched.to_string(),
                    step_seconds: med,
                    images_per_sec: batch as f64 / med,
                    kept_bytes: cost.kept_bytes,
                    planned_peak_bytes: mem.peak_bytes,
                    arena_bytes: mem.arena_bytes,
                    measured_peak_bytes: measured,
                    resident_bytes: mem.resident_bytes,
                    gflop_per_step: flop / 1e9,
                    gflops: flop / 1e9 / med,
                    floor_gflops,
                });
            }
        }
    }
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).expect("serialisable"));
        }
        return Ok(());
    }
    if let Some(f) = floor_gflops {
        println!(
            "FLOP floor: {f:.1} GFLOP/s ({} SGEMM, 2048³, median of 3); first column: how many times slower than the floor each row runs",
            crate::codegen::cpu::kernels::sgemm_library()
        );
    }
    println!("{}: batch {batch}, median of {repeats} steps after one warm-up (forward + backward, no update); fused = the fused CPU plan (generated C + SGEMM), the others the graph executor in that schedule; peak = most bytes allocated at once during a step, above what was allocated before it", model.name);
    println!(
        "{:<6} {:>3} {:<20} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "mode",
        "T",
        "schedule",
        "step s",
        "img/s",
        "kept MiB",
        "plan MiB",
        "meas MiB",
        "arena MiB",
        "GFLOP",
        "GFLOP/s"
    );
    for r in &rows {
        if let Some(f) = r.floor_gflops {
            print!("{:>6.1}× ", f / r.gflops);
        }
        println!(
            "{:<6} {:>3} {:<20} {:>8.3} {:>8.1} {:>9.2} {:>9.2} {:>9} {:>9.2} {:>8.2} {:>8.2}",
            r.mode.to_string(),
            r.steps,
            r.schedule,
            r.step_seconds,
            r.images_per_sec,
            r.kept_bytes / MIB,
            r.planned_peak_bytes as f64 / MIB,
            r.measured_peak_bytes
                .map_or("n/a".to_string(), |b| format!("{:.2}", b as f64 / MIB)),
            r.arena_bytes as f64 / MIB,
            r.gflop_per_step,
            r.gflops
        );
    }
    Ok(())
}

/// `snnc emit`: the fused plan's kernels as source files plus
/// `manifest.json` (launch order, and for each kernel its pointer table:
/// which value, shape and access each slot has).
pub fn emit(
    path: &Path,
    steps: usize,
    mode: Mode,
    batch: usize,
    target: &str,
    out: &Path,
) -> Result<(), String> {
    use crate::codegen::{render_c, render_cuda};
    use crate::passes::fuse::{self, Unit};
    let (model, _) = load_for(path, &[mode])?;
    let g = compile::compile(&model, &compile::Options::new(steps, batch, mode))?.graph;
    let plan = fuse::fuse(&g);
    let (ext, header, render): (&str, String, fn(&crate::ir::kernel::Kernel) -> String) =
        match target {
            "c" => ("c", render_c::header(), render_c::kernel),
            "cuda" => ("cu", render_cuda::header(), render_cuda::kernel),
            t => {
                return Err(format!(
                    "error: unknown target `{t}` (expected `c` or `cuda`)"
                ))
            }
        };
    std::fs::create_dir_all(out)
        .map_err(|e| format!("error: cannot create {}: {e}", out.display()))?;
    let write = |name: &str, text: &str| {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("error: cannot write {}: {e}", p.display()))
    };
    write(&format!("prelude.{ext}"), &header)?;
    let mut kernels = Vec::new();
    for f in &plan.kernels {
        let file = format!("{}.{ext}", f.kernel.name);
        write(&file, &format!("{header}\n{}", render(&f.kernel)))?;
        let slots: Vec<serde_json::Value> = f
            .table
            .iter()
            .zip(&f.writes)
            .enumerate()
            .map(|(s, (n, w))| {
                serde_json::json!({
                    "slot": s,
                    "node": n.map(|n| n.index()),
                    "shape": n.map(|n| g.g[n].shape.clone()),
                    "access": if *w { "write" } else { "read" },
                })
            })
            .collect();
        kernels.push(serde_json::json!({
            "name": f.kernel.name, "file": file, "elements": f.kernel.n,
            "steps": f.kernel.steps, "reverse": f.kernel.reverse,
            "fused_nodes": f.nodes.len(), "table": slots,
        }));
    }
    let launches: Vec<serde_json::Value> = plan
        .units
        .iter()
        .map(|u| match u {
            Unit::Kernel(k) => serde_json::json!({"kernel": plan.kernels[*k].kernel.name}),
            Unit::Step(k, t) => {
                serde_json::json!({"kernel": plan.kernels[*k].kernel.name, "step": t})
            }
            Unit::Node(n) => serde_json::json!({
                "node": n.index(), "op": g.g[*n].op.name(), "shape": g.g[*n].shape,
            }),
        })
        .collect();
    let manifest = serde_json::json!({
        "model": model.name, "steps": steps, "batch": batch, "mode": mode.to_string(),
        "target": target, "kernels": kernels, "launches": launches,
    });
    write(
        "manifest.json",
        &serde_json::to_string_pretty(&manifest).expect("serialisable"),
    )?;
    let st = plan.stats();
    println!(
        "{}: {} kernels ({} nodes fused), {} library launches -> {}",
        model.name,
        st.kernels,
        st.fused_nodes,
        st.node_units,
        out.display()
    );
    Ok(())
}

/// `snnc data make-events`: the synthetic event dataset from Fashion-MNIST.
pub fn make_events(
    out: &Path,
    data_dir: &Path,
    limit: Option<usize>,
    test_limit: Option<usize>,
    threshold: f64,
    seed: u64,
) -> Result<(), String> {
    use crate::data::events::{make_events, MakeEvents, SynthParams};
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(format!(
            "error: --threshold must be positive, got {threshold}"
        ));
    }
    let m = MakeEvents {
        out: out.to_path_buf(),
        data_dir: data_dir.to_path_buf(),
        limit,
        test_limit,
        params: SynthParams {
            threshold,
            ..SynthParams::default()
        },
        seed,
    };
    println!(
        "writing a SYNTHETIC event dataset (not a real event-camera recording): Fashion-MNIST \
         from {} moved along three saccades in front of a simulated 34×34 DVS → {}",
        data_dir.display(),
        out.display()
    );
    let made = make_events(&m)?;
    println!(
        "{} training + {} test samples, {} events ({:.0} per sample), {:.1} MB in N-MNIST \
         format, {:.1} s; see {}",
        made.train,
        made.test,
        made.events,
        made.mean_events(),
        made.bytes as f64 / 1e6,
        made.seconds,
        out.join("README.txt").display()
    );
    println!(
        "train on it: snnc train examples/models/vggsnn_dvs34.snn --data events:{} -T 10",
        out.display()
    );
    Ok(())
}

/// `snnc data inspect FILE`: what an event file holds.
pub fn inspect_events(file: &Path) -> Result<(), String> {
    let r = crate::data::events::read_events(file).map_err(|e| format!("error: {e}"))?;
    let (w, h) = r.extent();
    let on = r.events.iter().filter(|e| e.p != 0).count();
    let (t0, t1) = r
        .events
        .iter()
        .fold((u64::MAX, 0), |(a, b), e| (a.min(e.t), b.max(e.t)));
    println!("{}: {}", file.display(), r.format.name());
    println!(
        "events: {} ({} ON, {} OFF)",
        r.events.len(),
        on,
        r.events.len() - on
    );
    if let Some((sw, sh)) = r.sensor {
        println!("sensor: {sw}×{sh}");
    }
    if !r.dropped.is_empty() {
        println!(
            "dropped: {} invalid events ({})",
            r.dropped.total(),
            r.dropped.detailed()
        );
    }
    if !r.events.is_empty() {
        println!("extent: x < {w}, y < {h}");
        println!("time: {t0} … {t1} µs ({:.3} s)", (t1 - t0) as f64 / 1e6);
    }
    Ok(())
}
