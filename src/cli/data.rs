//! `snnc data`: make the synthetic event set, inspect event files, make a
//! synthetic image folder and measure how fast the loader decodes it.

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
    /// Write a SYNTHETIC image folder of JPEGs (DIR/train/class_K/,
    /// DIR/val/class_K/), for `--data images:DIR` and `bench-images`.
    MakeImages {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Training images per class (validation: a fifth).
        #[arg(long, default_value_t = 50)]
        per_class: usize,
        #[arg(long, default_value_t = 400)]
        width: u32,
        #[arg(long, default_value_t = 350)]
        height: u32,
        #[arg(long, default_value_t = 90)]
        quality: u8,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Measure the image-folder loader: training batches (decode, random
    /// resized crop, flip, normalise) made as `snnc train` makes them, on
    /// every core (RAYON_NUM_THREADS to change), and the images/s.
    BenchImages {
        dir: PathBuf,
        /// The crop: a model input C×H×W.
        #[arg(long, default_value = "3x224x224")]
        input: String,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Stop after this many batches (default: one epoch).
        #[arg(long)]
        batches: Option<usize>,
    },
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
        DataCmd::MakeImages {
            out,
            classes,
            per_class,
            width,
            height,
            quality,
            seed,
        } => make_images(&crate::data::images::MakeImages {
            out,
            classes,
            per_class,
            width,
            height,
            quality,
            seed,
        }),
        DataCmd::BenchImages {
            dir,
            input,
            batch,
            batches,
        } => bench_images(&dir, &input, batch, batches),
    }
}

/// `snnc data make-images`: the synthetic image folder.
fn make_images(m: &crate::data::images::MakeImages) -> Result<(), CliError> {
    if m.classes == 0 || m.per_class == 0 || m.width == 0 || m.height == 0 {
        return Err(CliError::usage(
            "--classes, --per-class, --width and --height must be positive",
        ));
    }
    let started = std::time::Instant::now();
    let n = crate::data::images::make_images(m)?;
    println!(
        "wrote {n} SYNTHETIC {}×{} JPEGs ({} classes) to {} in {:.1} s",
        m.width,
        m.height,
        m.classes,
        m.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `snnc data bench-images DIR`: training batches per second, the way the
/// training loop makes them (the prefetching loader).
fn bench_images(
    dir: &Path,
    input: &str,
    batch: usize,
    batches: Option<usize>,
) -> Result<(), CliError> {
    let dims: Option<Vec<usize>> = input.split(['x', '×']).map(|d| d.parse().ok()).collect();
    let Some(dims) = dims.filter(|d| d.len() == 3) else {
        return Err(CliError::usage(format!(
            "--input must be C×H×W, e.g. 3x224x224; got {input}"
        )));
    };
    if batch == 0 {
        return Err(CliError::usage("--batch must be positive"));
    }
    let opts = crate::data::images::ImageFolderOptions::for_input(&dims)?;
    let (split, report) = crate::data::images::load_image_folder(dir, &opts)?;
    let text = report.render();
    if !text.is_empty() {
        eprintln!("{text}");
    }
    let train = &split.train;
    let loader = crate::data::Loader::new(train, batch, 0, 0).drop_last(true);
    let total = batches.unwrap_or(usize::MAX).min(loader.num_batches());
    if total == 0 {
        return Err(CliError::usage(format!(
            "{} training images do not make one batch of {batch}",
            train.len()
        )));
    }
    let started = std::time::Instant::now();
    let images = loader.prefetch(2, |it| {
        it.take(total)
            .map(|(_, labels)| labels.len())
            .sum::<usize>()
    });
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{images} training images ({total} batches of {batch}) decoded, random-resized-cropped \
         to {} and normalised in {secs:.2} s: {:.0} images/s on {} threads",
        crate::shape::list(&dims),
        images as f64 / secs,
        rayon::current_num_threads()
    );
    Ok(())
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
