//! Pooling and its gradients on the reference interpreter, for any window
//! geometry: kernel k, stride s, and padding p ≤ k/2 on every side, so that
//! every window holds at least one input element. A padded position is −∞
//! for max pooling (never a maximum) and 0 for average pooling (whose
//! divisor is always k², PyTorch's `count_include_pad=True`).
//!
//! Every function walks the windows in (plane, oy, ox) order and a window's
//! elements in (ky, kx) order; the library kernels (`codegen/library`)
//! gather per element in the same order, so both round alike.

use super::scalar::count;
use crate::tensor::Tensor;
use num_traits::Float;

/// A pooling window's geometry.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Pool {
    Avg,
    Max,
}

impl Window {
    /// Outputs along an axis of `n` inputs.
    fn out(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// The input index of offset `j` of window `o` along an axis of `n`
    /// inputs, or `None` where it falls in the padding.
    fn at(&self, o: usize, j: usize, n: usize) -> Option<usize> {
        (o * self.stride + j)
            .checked_sub(self.padding)
            .filter(|&i| i < n)
    }

    /// Window (oy, ox)'s elements of a plane of `h × w` in (ky, kx) order:
    /// (offset ky·k + kx, flat index within the plane). An iterator: the
    /// interpreter walks every window of every pooling.
    fn cells(
        &self,
        oy: usize,
        ox: usize,
        h: usize,
        w: usize,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        let k = self.kernel;
        (0..k)
            .filter_map(move |ky| self.at(oy, ky, h).map(|iy| (ky, iy)))
            .flat_map(move |(ky, iy)| {
                (0..k).filter_map(move |kx| self.at(ox, kx, w).map(|ix| (ky * k + kx, iy * w + ix)))
            })
    }

    /// Window (oy, ox)'s first maximum (row-major, strict `>`): its
    /// offset and its flat index within the plane at `plane`.
    fn argmax<F: Float>(
        &self,
        plane: &[F],
        oy: usize,
        ox: usize,
        h: usize,
        w: usize,
    ) -> (usize, usize) {
        let mut cells = self.cells(oy, ox, h, w);
        let mut best = cells.next().expect("every window holds an element");
        for c in cells {
            if plane[c.1] > plane[best.1] {
                best = c;
            }
        }
        best
    }
}

/// `(b·c planes, h, w, ho, wo)` of an input `x[B, C, H, W]`.
fn dims<F: Float>(x: &Tensor<F>, win: Window) -> (usize, usize, usize, usize, usize) {
    let (h, w) = (x.shape[2], x.shape[3]);
    (x.shape[0] * x.shape[1], h, w, win.out(h), win.out(w))
}

pub fn pool<F: Float>(x: &Tensor<F>, win: Window, kind: Pool) -> Tensor<F> {
    let (planes, h, w, ho, wo) = dims(x, win);
    let area: F = count(win.kernel * win.kernel);
    let mut out = Tensor::zeros(&[x.shape[0], x.shape[1], ho, wo]);
    for p in 0..planes {
        let plane = &x.data[p * h * w..(p + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = match kind {
                    Pool::Avg => F::zero(),
                    Pool::Max => F::neg_infinity(),
                };
                for (_, i) in win.cells(oy, ox, h, w) {
                    acc = match kind {
                        Pool::Avg => acc + plane[i],
                        Pool::Max => acc.max(plane[i]),
                    };
                }
                out.data[(p * ho + oy) * wo + ox] = match kind {
                    Pool::Avg => acc / area,
                    Pool::Max => acc,
                };
            }
        }
    }
    out
}

/// `δy[B, C, Ho, Wo] -> δx[B, C, h, w]` of average pooling.
pub fn avgpool_grad<F: Float>(d: &Tensor<F>, win: Window, h: usize, w: usize) -> Tensor<F> {
    let (b, c, ho, wo) = (d.shape[0], d.shape[1], d.shape[2], d.shape[3]);
    let area: F = count(win.kernel * win.kernel);
    let mut out = Tensor::zeros(&[b, c, h, w]);
    for p in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let g = d.data[(p * ho + oy) * wo + ox] / area;
                for (_, i) in win.cells(oy, ox, h, w) {
                    let at = p * h * w + i;
                    out.data[at] = out.data[at] + g;
                }
            }
        }
    }
    out
}

/// Routes each window's gradient to the window's first maximum (row-major),
/// the same element a max with strict `>` keeps.
pub fn maxpool_grad<F: Float>(x: &Tensor<F>, d: &Tensor<F>, win: Window) -> Tensor<F> {
    let (planes, h, w, ho, wo) = dims(x, win);
    let mut out = Tensor::zeros(&x.shape);
    for p in 0..planes {
        let plane = &x.data[p * h * w..(p + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let at = p * h * w + win.argmax(plane, oy, ox, h, w).1;
                out.data[at] = out.data[at] + d.data[(p * ho + oy) * wo + ox];
            }
        }
    }
    out
}

/// 1 at every window's first maximum (the element `maxpool_grad` routes to).
pub fn maxpool_mask<F: Float>(x: &Tensor<F>, win: Window) -> Tensor<F> {
    let (_, _, _, ho, wo) = dims(x, win);
    let ones = Tensor::full(&[x.shape[0], x.shape[1], ho, wo], F::one());
    let mut m = maxpool_grad(x, &ones, win);
    // Overlapping windows may share a maximum; the mask is still 0/1.
    for v in &mut m.data {
        *v = v.min(F::one());
    }
    m
}

/// `x -> s[B, C, Ho, Wo, k·k]`: one-hot at each window's first maximum.
pub fn maxpool_select<F: Float>(x: &Tensor<F>, win: Window) -> Tensor<F> {
    let (planes, h, w, ho, wo) = dims(x, win);
    let kk = win.kernel * win.kernel;
    let mut out = Tensor::zeros(&[x.shape[0], x.shape[1], ho, wo, kk]);
    for p in 0..planes {
        let plane = &x.data[p * h * w..(p + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let off = win.argmax(plane, oy, ox, h, w).0;
                out.data[((p * ho + oy) * wo + ox) * kk + off] = F::one();
            }
        }
    }
    out
}

/// `(s[B, C, Ho, Wo, k·k], δy[B, C, Ho, Wo]) -> δx[B, C, h, w]`: each
/// window adds `s[window, offset]·δy[window]` to the element at each of
/// its offsets.
pub fn maxpool_route<F: Float>(
    s: &Tensor<F>,
    d: &Tensor<F>,
    win: Window,
    h: usize,
    w: usize,
) -> Tensor<F> {
    let (b, c, ho, wo) = (d.shape[0], d.shape[1], d.shape[2], d.shape[3]);
    let kk = win.kernel * win.kernel;
    let mut out = Tensor::zeros(&[b, c, h, w]);
    for p in 0..b * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let wi = (p * ho + oy) * wo + ox;
                for (off, i) in win.cells(oy, ox, h, w) {
                    let at = p * h * w + i;
                    out.data[at] = out.data[at] + s.data[wi * kk + off] * d.data[wi];
                }
            }
        }
    }
    out
}
