//! `snnc data`: make the synthetic event set, inspect event files.

use clap::Subcommand;
use std::path::{Path, PathBuf};

use super::CliError;

#[derive(Subcommand)]
pub enum DataCmd {
    /// Write a SYNTHETIC event dataset made from Fashion-MNIST (simulated
    /// saccades and DVS pixels, N-MNIST binary format): DIR/Train/<label>/
    /// and DIR/Test/<label>/, for `snnc train … --data events:DIR`.
    MakeEvents {
        #[arg(long)]
        out: PathBuf,
        /// Where the Fashion-MNIST IDX files are.
        #[arg(long, default_value = crate::data::FASHION_MNIST_DIR)]
        data_dir: PathBuf,
        /// Convert only the first N training images (default all 60,000).
        #[arg(long)]
        limit: Option<usize>,
        /// Convert only the first N test images (default all 10,000).
        #[arg(long)]
        test_limit: Option<usize>,
        /// Mean contrast threshold on log intensity.
        #[arg(long, default_value_t = crate::data::events::SynthParams::default().threshold)]
        threshold: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Read an event file (.bin N-MNIST, .aedat 2.0/3.1, .npy) and print its
    /// format, event count, extent, duration and polarity balance.
    Inspect { file: PathBuf },
}

pub fn run(c: DataCmd) -> Result<(), CliError> {
    match c {
        DataCmd::MakeEvents {
            out,
            data_dir,
            limit,
            test_limit,
            threshold,
            seed,
        } => make_events(&out, &data_dir, limit, test_limit, threshold, seed),
        DataCmd::Inspect { file } => inspect_events(&file),
    }
}

/// `snnc data make-events`: the synthetic event dataset from Fashion-MNIST.
fn make_events(
    out: &Path,
    data_dir: &Path,
    limit: Option<usize>,
    test_limit: Option<usize>,
    threshold: f64,
    seed: u64,
) -> Result<(), CliError> {
    use crate::data::events::{make_events, MakeEvents, SynthParams};
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(CliError::usage(format!(
            "--threshold must be positive, got {threshold}"
        )));
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
fn inspect_events(file: &Path) -> Result<(), CliError> {
    let r = crate::data::events::read_events(file)?;
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
