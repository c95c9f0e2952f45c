//! `snnc import MODEL.nir -o MODEL.snn [--params-out P] [--dt DT]`.

use clap::Args;
use std::path::PathBuf;

use super::CliError;
use crate::interop::save_params;

#[derive(Args)]
pub struct ImportArgs {
    file: PathBuf,
    /// The .snn file to write.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Where the weights go (default: OUT with extension .params.safetensors).
    #[arg(long)]
    params_out: Option<PathBuf>,
    /// The time step the graph's neurons are simulated at (λ = 1 − dt/τ);
    /// a graph written by snnc says its own.
    #[arg(long, default_value_t = crate::nir::DEFAULT_DT)]
    dt: f64,
}

pub fn run(a: ImportArgs) -> Result<(), CliError> {
    let (nir_file, out, dt) = (&a.file, &a.out, a.dt);
    let g = crate::nir::hdf5::read(nir_file)?;
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imported".into());
    // The model's name: the output file's stem made into an identifier.
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let im = crate::nir::import::import(&g, &nir_file.display().to_string(), &name, dt)?;
    let params_path = match &a.params_out {
        Some(p) => p.clone(),
        None => out.with_extension("params.safetensors"),
    };
    let text = format!(
        "# Imported from {} by `snnc import` (NIR; neurons at dt = {dt:e}).\n# Weights: {}\n{}",
        nir_file.display(),
        params_path.display(),
        crate::dsl::to_snn(&im.model)
    );
    std::fs::write(out, &text).map_err(|e| CliError::Write {
        path: out.clone(),
        source: e,
    })?;
    save_params(&params_path, &im.params, &im.model.name)?;
    println!(
        "imported {} → {} ({} layers) and {} ({} tensors)",
        nir_file.display(),
        out.display(),
        im.model.layers.len(),
        params_path.display(),
        im.params.len()
    );
    for n in &im.notes {
        println!("  note: {n}");
    }
    Ok(())
}
