//! From a decoded image to a normalised `[C, H, W]` sample: which region
//! of the image to take (a centre crop for evaluation, a random resized
//! crop for training), resizing it to the model's input, an optional
//! horizontal flip, and per-channel normalisation.

use image::DynamicImage;

use crate::rng::Rng;

/// Per-channel (R, G, B) mean and standard deviation of ImageNet's
/// training images, pixels in [0, 1]: the normalisation every torchvision
/// ImageNet model is trained with ("mean = [0.485, 0.456, 0.406] and
/// std = [0.229, 0.224, 0.225]", torchvision's model documentation,
/// https://pytorch.org/vision/stable/models.html).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The evaluation crop's share of the resized image: ImageNet evaluation
/// resizes the shorter side to 256 and centre-crops 224 (224 / 256 =
/// 0.875; torchvision's reference recipe, `--val-resize-size 256
/// --val-crop-size 224`).
pub const EVAL_CROP_FRACTION: f64 = 0.875;

/// A rectangle of source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// torchvision's `RandomResizedCrop` (defaults `scale = (0.08, 1.0)`,
/// `ratio = (3/4, 4/3)`, https://pytorch.org/vision/0.14/generated/torchvision.transforms.RandomResizedCrop.html)
/// followed by `RandomHorizontalFlip` (p = ½).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomResizedCrop {
    /// Bounds of the crop's area as a share of the image's.
    pub scale: (f64, f64),
    /// Bounds of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
    pub hflip: bool,
}

impl Default for RandomResizedCrop {
    fn default() -> RandomResizedCrop {
        RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
        }
    }
}

impl RandomResizedCrop {
    /// The region to crop from a `width × height` image: up to 10 draws of
    /// an area share (uniform in `scale`) and an aspect ratio (log-uniform
    /// in `ratio`), the first whose rounded size fits taken at a uniform
    /// position; if none fits, the centred crop of the whole image clamped
    /// to the ratio bounds (the procedure torchvision documents for
    /// `RandomResizedCrop.get_params`).
    pub fn region(&self, width: u32, height: u32, rng: &mut Rng) -> Region {
        let area = width as f64 * height as f64;
        let (lo, hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.range(self.scale.0, self.scale.1);
            let aspect = rng.range(lo, hi).exp();
            let w = (target * aspect).sqrt().round();
            let h = (target / aspect).sqrt().round();
            if w >= 1.0 && h >= 1.0 && w <= width as f64 && h <= height as f64 {
                let (w, h) = (w as u32, h as u32);
                let y = rng.below((height - h + 1) as usize) as u32;
                let x = rng.below((width - w + 1) as usize) as u32;
                return Region { x, y, w, h };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.ratio.0 {
            (
                width,
                ((width as f64 / self.ratio.0).round() as u32).clamp(1, height),
            )
        } else if in_ratio > self.ratio.1 {
            (
                ((height as f64 * self.ratio.1).round() as u32).clamp(1, width),
                height,
            )
        } else {
            (width, height)
        };
        Region {
            x: (width - w) / 2,
            y: (height - h) / 2,
            w,
            h,
        }
    }
}

/// The evaluation region: the image scaled so that its shorter side is
/// `max(out_w, out_h) / crop_fraction`, then the centred `out_w × out_h`
/// window, expressed in source pixels (so only that window is resized;
/// the same as resizing the whole image then cropping, up to rounding the
/// window to whole source pixels).
pub fn centre_region(
    width: u32,
    height: u32,
    out_w: u32,
    out_h: u32,
    crop_fraction: f64,
) -> Region {
    let short = width.min(height) as f64;
    let resized_short = out_w.max(out_h) as f64 / crop_fraction;
    let to_source = short / resized_short;
    let w = ((out_w as f64 * to_source).round() as u32).clamp(1, width);
    let h = ((out_h as f64 * to_source).round() as u32).clamp(1, height);
    Region {
        x: (width - w) / 2,
        y: (height - h) / 2,
        w,
        h,
    }
}

/// How one split turns a decoded image into a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    /// 3 (RGB) or 1 (luma).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `None`: evaluation (centre crop); `Some`: training augmentation.
    pub train: Option<RandomResizedCrop>,
    /// Share of the resized image the evaluation crop keeps.
    pub crop_fraction: f64,
    /// Per channel (only the first `channels` are used).
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Transform {
    /// Values per sample.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the sample made from `img` to `out` (`len()` values). With
    /// `rng`, a training transform draws its crop and flip from it;
    /// without, or for an evaluation transform, the centre crop.
    pub fn apply(&self, img: &DynamicImage, rng: Option<&mut Rng>, out: &mut [f32]) {
        let (w, h) = (img.width(), img.height());
        let (region, flip) = match (self.train, rng) {
            (Some(rrc), Some(rng)) => {
                let r = rrc.region(w, h, rng);
                (r, rrc.hflip && rng.uniform() < 0.5)
            }
            _ => (
                centre_region(
                    w,
                    h,
                    self.width as u32,
                    self.height as u32,
                    self.crop_fraction,
                ),
                false,
            ),
        };
        // Normalised value of each byte, per channel.
        let lut: Vec<[f32; 256]> = (0..self.channels)
            .map(|c| std::array::from_fn(|v| (v as f32 / 255.0 - self.mean[c]) / self.std[c]))
            .collect();
        let dst = Target {
            width: self.width,
            height: self.height,
            flip,
            lut: &lut,
        };
        if self.channels == 1 {
            let g = img.to_luma8();
            resample(g.as_raw(), w as usize, 1, region, &dst, out);
        } else if let Some(rgb) = img.as_rgb8() {
            resample(rgb.as_raw(), w as usize, 3, region, &dst, out);
        } else {
            let rgb = img.to_rgb8();
            resample(rgb.as_raw(), w as usize, 3, region, &dst, out);
        }
    }
}

/// Where [`resample`] writes: `[C, height, width]`, mirrored left–right
/// if `flip`, each byte level mapped through its channel's `lut`.
struct Target<'a> {
    width: usize,
    height: usize,
    flip: bool,
    lut: &'a [[f32; 256]],
}

/// Source pixels and weights of each output pixel along one axis: the
/// triangle (bilinear) filter, widened by the reduction factor when
/// shrinking so every source pixel counts (antialiasing, as PIL's
/// bilinear resize, which torchvision uses for images), confined to the
/// `len` pixels from `start`.
fn axis_weights(start: u32, len: u32, out_len: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = len as f64 / out_len as f64;
    let widen = scale.max(1.0);
    let (lo_limit, hi_limit) = (start as f64, (start + len) as f64);
    (0..out_len)
        .map(|o| {
            let centre = start as f64 + (o as f64 + 0.5) * scale;
            let lo = (centre - widen).floor().max(lo_limit) as usize;
            let hi = ((centre + widen).ceil().min(hi_limit) as usize).max(lo + 1);
            let mut w: Vec<f64> = (lo..hi)
                .map(|k| (1.0 - ((k as f64 + 0.5 - centre) / widen).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|x| *x /= sum);
            } else {
                w[0] = 1.0;
            }
            (lo, w.into_iter().map(|x| x as f32).collect())
        })
        .collect()
}

/// Resizes `region` of the interleaved 8-bit image `src` (`src_w` pixels
/// a row, `ch` channels) to the target, separably (rows, then columns),
/// rounding to whole byte levels as an 8-bit resize does before the
/// normalisation.
fn resample(src: &[u8], src_w: usize, ch: usize, region: Region, dst: &Target, out: &mut [f32]) {
    let (ow, oh) = (dst.width, dst.height);
    let cols = axis_weights(region.x, region.w, ow);
    let rows = axis_weights(region.y, region.h, oh);
    // Rows the vertical pass reads.
    let first = rows.iter().map(|(lo, _)| *lo).min().unwrap_or(0);
    let last = rows
        .iter()
        .map(|(lo, w)| lo + w.len())
        .max()
        .unwrap_or(first);
    let mut tmp = vec![0f32; (last - first) * ow * ch];
    for (y, line) in (first..last).zip(tmp.chunks_exact_mut(ow * ch)) {
        let row = &src[y * src_w * ch..(y + 1) * src_w * ch];
        for ((lo, w), px) in cols.iter().zip(line.chunks_exact_mut(ch)) {
            for (c, v) in px.iter_mut().enumerate() {
                *v = w
                    .iter()
                    .enumerate()
                    .map(|(k, &wk)| wk * row[(lo + k) * ch + c] as f32)
                    .sum();
            }
        }
    }
    let plane = ow * oh;
    let mut acc = vec![0f32; ow * ch];
    for (y, (lo, w)) in rows.iter().enumerate() {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (k, &wk) in w.iter().enumerate() {
            let line = &tmp[(lo + k - first) * ow * ch..(lo + k - first + 1) * ow * ch];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += wk * v;
            }
        }
        for x in 0..ow {
            let xo = if dst.flip { ow - 1 - x } else { x };
            for c in 0..ch {
                let level = acc[x * ch + c].round().clamp(0.0, 255.0) as usize;
                out[c * plane + y * ow + xo] = dst.lut[c][level];
            }
        }
    }
}
