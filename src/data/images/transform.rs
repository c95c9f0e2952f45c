//! From a decoded image to a normalised `[C, H, W]` sample: which region
//! of the image to take (a centre crop for evaluation, a random resized
//! crop for training), resizing it to the model's input, an optional
//! horizontal flip, and per-channel normalisation.

use image::imageops::{self, FilterType};
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
        let cropped = img.crop_imm(region.x, region.y, region.w, region.h);
        // Triangle = bilinear, widened when shrinking (antialiased), as
        // PIL's and torchvision's bilinear resize.
        let (ow, oh) = (self.width as u32, self.height as u32);
        let plane = self.height * self.width;
        let mut put = |c: usize, x: u32, y: u32, v: u8| {
            let xo = if flip { ow - 1 - x } else { x } as usize;
            out[c * plane + y as usize * self.width + xo] =
                (v as f32 / 255.0 - self.mean[c]) / self.std[c];
        };
        if self.channels == 1 {
            let g = imageops::resize(&cropped.to_luma8(), ow, oh, FilterType::Triangle);
            for (x, y, p) in g.enumerate_pixels() {
                put(0, x, y, p.0[0]);
            }
        } else {
            let rgb = imageops::resize(&cropped.to_rgb8(), ow, oh, FilterType::Triangle);
            for (x, y, p) in rgb.enumerate_pixels() {
                for c in 0..3 {
                    put(c, x, y, p.0[c]);
                }
            }
        }
    }
}
