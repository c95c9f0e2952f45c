//! Events to frames: `T` frames of two polarity channels, `[T, 2, H, W]`
//! row-major, channel 0 OFF and channel 1 ON, each value the number of
//! events that fell on the pixel in that time bin (spikingjelly's
//! `integrate_events_by_fixed_frames_number` layout).

use crate::rng::Rng;

use super::Event;

/// How a stream is cut into `T` bins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Binning {
    /// Equal durations between the first and the last timestamp: event `e`
    /// goes to bin `⌊(t − t_first)·T / (t_last − t_first + 1)⌋`.
    #[default]
    Time,
    /// Equal event counts, in stream order: event `i` of `N` goes to bin
    /// `⌊i·T / N⌋`.
    Count,
}

/// How sensor pixels map onto the frame when their sizes differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resize {
    /// `Scale` when the sensor is larger than the frame in either
    /// dimension, `Center` otherwise.
    #[default]
    Auto,
    /// `x' = ⌊x·W / sensor_w⌋`, `y' = ⌊y·H / sensor_h⌋`: down-sampling sums
    /// neighbouring pixels' events (128×128 → 48×48 as in the
    /// CIFAR10-DVS setting).
    Scale,
    /// `x' = x + ⌊(W − sensor_w)/2⌋` (same for y); events that land
    /// outside the frame are dropped. Pads a small sensor (34×34) into a
    /// larger frame (48×48), or crops the middle of a large one.
    Center,
}

/// Everything [`to_frames`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// Number of frames `T`.
    pub steps: usize,
    pub binning: Binning,
    /// Sensor `(width, height)`; events outside it are dropped.
    pub sensor: (u16, u16),
    /// Frame width and height.
    pub width: usize,
    pub height: usize,
    pub resize: Resize,
}

impl FrameSpec {
    /// Values in one sample's frames: `T · 2 · H · W`.
    pub fn len(&self) -> usize {
        self.steps * 2 * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-sample shape `[T, 2, H, W]`.
    pub fn shape(&self) -> Vec<usize> {
        vec![self.steps, 2, self.height, self.width]
    }

    /// The frame pixel of sensor pixel `(x, y)`, if it lands on the frame.
    fn map(&self, x: u16, y: u16) -> Option<(usize, usize)> {
        let (sw, sh) = (usize::from(self.sensor.0), usize::from(self.sensor.1));
        let (x, y) = (usize::from(x), usize::from(y));
        if x >= sw || y >= sh {
            return None;
        }
        let scale = match self.resize {
            Resize::Scale => true,
            Resize::Center => false,
            Resize::Auto => sw > self.width || sh > self.height,
        };
        if scale {
            Some((x * self.width / sw, y * self.height / sh))
        } else {
            let fx = x as isize + (self.width as isize - sw as isize).div_euclid(2);
            let fy = y as isize + (self.height as isize - sh as isize).div_euclid(2);
            ((0..self.width as isize).contains(&fx) && (0..self.height as isize).contains(&fy))
                .then_some((fx as usize, fy as usize))
        }
    }
}

/// Bins `events` into `out` (`spec.len()` values, `[T, 2, H, W]`),
/// overwriting it. Events outside the sensor are dropped; polarities other
/// than 0 count as ON. Errors if `out` has the wrong length or `T`, the
/// frame or the sensor is empty.
pub fn to_frames(
    events: &[Event],
    spec: &FrameSpec,
    out: &mut [f32],
) -> Result<(), super::EventError> {
    if spec.steps == 0 || spec.width == 0 || spec.height == 0 {
        return Err(super::EventError::EmptyFrames {
            steps: spec.steps,
            width: spec.width,
            height: spec.height,
        });
    }
    if spec.sensor.0 == 0 || spec.sensor.1 == 0 {
        return Err(super::EventError::EmptySensor(
            spec.sensor.0 as usize,
            spec.sensor.1 as usize,
        ));
    }
    if out.len() != spec.len() {
        return Err(super::EventError::FramesLen {
            len: out.len(),
            steps: spec.steps,
            height: spec.height,
            width: spec.width,
            needs: spec.len(),
        });
    }
    out.fill(0.0);
    if events.is_empty() {
        return Ok(());
    }
    let (t0, t1) = events
        .iter()
        .fold((u64::MAX, 0), |(a, b), e| (a.min(e.t), b.max(e.t)));
    let span = u128::from(t1 - t0) + 1;
    let n = events.len();
    let plane = spec.height * spec.width;
    for (i, e) in events.iter().enumerate() {
        let Some((x, y)) = spec.map(e.x, e.y) else {
            continue;
        };
        let bin = match spec.binning {
            Binning::Time => (u128::from(e.t - t0) * spec.steps as u128 / span) as usize,
            Binning::Count => i * spec.steps / n,
        };
        let c = usize::from(e.p != 0);
        out[(bin * 2 + c) * plane + y * spec.width + x] += 1.0;
    }
    Ok(())
}

/// Training-time augmentation of event frames, as in the CIFAR10-DVS
/// recipes (TET, Rate-BP): with probability ½ a horizontal flip, then a
/// circular shift (`torch.roll`) by `dy, dx` drawn uniformly from
/// `−roll..=roll`, the same for every frame and channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameAugment {
    pub roll: usize,
    pub hflip: bool,
}

impl FrameAugment {
    /// The paper's setting: roll ±5 px, random flip.
    pub fn dvs() -> FrameAugment {
        FrameAugment {
            roll: 5,
            hflip: true,
        }
    }

    /// Augments `frames` (`[T, 2, h, w]`, any `T`) in place, drawing the
    /// flip and then `dy`, `dx` from `rng`. Returns `(flipped, dy, dx)`.
    /// Errors if the length is not a multiple of `2·h·w`.
    pub fn apply(
        &self,
        frames: &mut [f32],
        h: usize,
        w: usize,
        rng: &mut Rng,
    ) -> Result<(bool, isize, isize), super::EventError> {
        let plane = h * w;
        if plane == 0 || !frames.len().is_multiple_of(2 * plane) {
            return Err(super::EventError::AugmentLen {
                len: frames.len(),
                h,
                w,
            });
        }
        let flip = self.hflip && rng.uniform() < 0.5;
        let span = 2 * self.roll + 1;
        let dy = rng.below(span) as isize - self.roll as isize;
        let dx = rng.below(span) as isize - self.roll as isize;
        let mut src = vec![0f32; plane];
        for p in frames.chunks_exact_mut(plane) {
            src.copy_from_slice(p);
            for y in 0..h {
                let sy = (y as isize - dy).rem_euclid(h as isize) as usize;
                for x in 0..w {
                    // Flip first, then roll: out(x) = flipped(x − dx).
                    let fx = (x as isize - dx).rem_euclid(w as isize) as usize;
                    let sx = if flip { w - 1 - fx } else { fx };
                    p[y * w + x] = src[sy * w + sx];
                }
            }
        }
        Ok((flip, dy, dx))
    }
}
