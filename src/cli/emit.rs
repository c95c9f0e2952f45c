//! `snnc emit`: the fused plan's kernels as source files and a manifest
//! (the layer-major plan of the lowered graph, as `snnc bench` runs it).

use clap::Args;
use std::path::{Path, PathBuf};

use super::args::ModeArg;
use super::CliError;
use crate::compile;
use crate::passes::rate::Mode;

#[derive(Args)]
pub struct EmitArgs {
    file: PathBuf,
    #[arg(short = 'T', long = "steps", default_value_t = 4)]
    steps: usize,
    #[arg(long, value_enum, default_value = "rate")]
    mode: ModeArg,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// `c` (the CPU path) or `cuda` (NVRTC).
    #[arg(long, default_value = "c")]
    target: String,
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
}

pub fn run(a: EmitArgs) -> Result<(), CliError> {
    emit(&a.file, a.steps, a.mode.into(), a.batch, &a.target, &a.out)
}

/// `snnc emit`: the fused plan's kernels as source files plus
/// `manifest.json` (launch order, and for each kernel its pointer table:
/// which value, shape and access each slot has).
fn emit(
    path: &Path,
    steps: usize,
    mode: Mode,
    batch: usize,
    target: &str,
    out: &Path,
) -> Result<(), CliError> {
    use crate::codegen::{render_c, render_cuda};
    use crate::passes::fuse::Unit;
    let (model, _) = crate::frontend::load(path)?;
    let g = compile::compile(&model, &compile::Options::new(steps, batch, mode))?.graph;
    // What the executors run (`snnc bench`'s `fused`): the lowered graph's
    // layer-major plan.
    let layer_major = crate::passes::schedule::SchedOpts::LAYER_MAJOR;
    let g = crate::passes::fuse_time::lower(&g, layer_major);
    let plan = crate::passes::fuse_time::plan(&g, &[], layer_major);
    let (ext, header, render): (&str, String, fn(&crate::ir::kernel::Kernel) -> String) =
        match target {
            "c" => ("c", render_c::header(), render_c::kernel),
            "cuda" => ("cu", render_cuda::header(), render_cuda::kernel),
            t => {
                return Err(CliError::usage(format!(
                    "unknown target `{t}` (expected `c` or `cuda`)"
                )))
            }
        };
    std::fs::create_dir_all(out).map_err(|e| CliError::CreateDir {
        path: out.to_path_buf(),
        source: e,
    })?;
    let write = |name: &str, text: &str| {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| CliError::Write { path: p, source: e })
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
