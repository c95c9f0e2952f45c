//! A SYNTHETIC image folder, for measuring the loader (`snnc data
//! make-images`, then `snnc data bench-images`) and for trying `--data
//! images:DIR` without a real data set. Each class has its own colour;
//! each image a smooth gradient, a few rectangles and per-pixel noise, so
//! that JPEG decoding costs about what it costs on photographs of the
//! same size (a flat image would decode much faster than real data).

use std::path::{Path, PathBuf};

use image::{codecs::jpeg::JpegEncoder, Rgb, RgbImage};

use super::super::DataError;
use crate::rng::{mix64, Rng};

/// What [`make_images`] writes.
#[derive(Clone, Debug, PartialEq)]
pub struct MakeImages {
    pub out: PathBuf,
    pub classes: usize,
    /// Training images per class; validation gets a fifth of this (at
    /// least one).
    pub per_class: usize,
    pub width: u32,
    pub height: u32,
    /// JPEG quality (1–100); ImageNet's files are mostly around 90.
    pub quality: u8,
    pub seed: u64,
}

fn image(m: &MakeImages, class: usize, index: u64) -> RgbImage {
    let mut rng = Rng::new(mix64(m.seed ^ mix64(class as u64) ^ index.rotate_left(32)));
    let base = [
        (class * 97 % 256) as f64,
        (class * 61 % 256) as f64,
        (class * 151 % 256) as f64,
    ];
    let (gx, gy) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
    let rects: Vec<(u32, u32, u32, u32, [f64; 3])> = (0..6)
        .map(|_| {
            let x = rng.below(m.width as usize) as u32;
            let y = rng.below(m.height as usize) as u32;
            let w = 1 + rng.below((m.width / 3).max(1) as usize) as u32;
            let h = 1 + rng.below((m.height / 3).max(1) as usize) as u32;
            (
                x,
                y,
                w,
                h,
                [
                    rng.range(-80.0, 80.0),
                    rng.range(-80.0, 80.0),
                    rng.range(-80.0, 80.0),
                ],
            )
        })
        .collect();
    RgbImage::from_fn(m.width, m.height, |x, y| {
        let mut v = [0u8; 3];
        let grad = 60.0 * (gx * x as f64 / m.width as f64 + gy * y as f64 / m.height as f64);
        for (c, out) in v.iter_mut().enumerate() {
            let mut p = base[c] + grad + rng.range(-24.0, 24.0);
            for &(rx, ry, rw, rh, d) in &rects {
                if x >= rx && x < rx + rw && y >= ry && y < ry + rh {
                    p += d[c];
                }
            }
            *out = p.clamp(0.0, 255.0) as u8;
        }
        Rgb(v)
    })
}

/// Writes `out/train/class_K/NNNNN.jpg` and `out/val/class_K/…`; returns
/// the number of files written.
pub fn make_images(m: &MakeImages) -> Result<usize, DataError> {
    let mut written = 0;
    let val = (m.per_class / 5).max(1);
    for (split, n, offset) in [("train", m.per_class, 0u64), ("val", val, 1 << 20)] {
        for class in 0..m.classes {
            let dir = m.out.join(split).join(format!("class_{class:04}"));
            std::fs::create_dir_all(&dir).map_err(|source| DataError::Create {
                path: dir.clone(),
                source,
            })?;
            for i in 0..n {
                let path = dir.join(format!("{i:05}.jpg"));
                write_jpeg(&path, &image(m, class, offset + i as u64), m.quality)?;
                written += 1;
            }
        }
    }
    Ok(written)
}

fn write_jpeg(path: &Path, img: &RgbImage, quality: u8) -> Result<(), DataError> {
    let write_err = |e: std::io::Error| DataError::Write {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::create(path).map_err(|source| DataError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    let mut w = std::io::BufWriter::new(file);
    JpegEncoder::new_with_quality(&mut w, quality.clamp(1, 100))
        .encode_image(img)
        .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
    std::io::Write::flush(&mut w).map_err(write_err)
}
