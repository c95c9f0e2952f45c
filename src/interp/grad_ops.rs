//! Kernels of the gradient ops autodiff emits. Each is the adjoint of a
//! forward kernel in `ops.rs`, written as the same loops with the
//! accumulation turned around (scatter instead of gather). Elementwise
//! gradient ops (sums, surrogate derivatives, rsqrt, broadcasts) have no
//! kernel: they evaluate their scalar definition (`ir::scalar`).

use super::scalar::{count, inner};
use crate::tensor::Tensor;
use num_traits::Float;

pub fn channel_sum<F: Float>(x: &Tensor<F>) -> Tensor<F> {
    let (c, r) = (x.shape[1], inner(&x.shape));
    let mut out = vec![F::zero(); c];
    for (i, &v) in x.data.iter().enumerate() {
        let ch = (i / r) % c;
        out[ch] = out[ch] + v;
    }
    Tensor::from_vec(&[c], out)
}

/// Calls `f(x_index, dy_index, w_index)` for every (output element, tap)
/// pair of a convolution that does not land in the padding: the adjoint
/// loops of both convolution gradients.
fn for_each_tap(
    x: [usize; 4],
    d: [usize; 4],
    k: usize,
    stride: usize,
    padding: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let [b, ci, h, wd] = x;
    let [_, co, ho, wo] = d;
    for bi in 0..b {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let di = ((bi * co + o) * ho + oy) * wo + ox;
                    for c in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (Some(iy), Some(ix)) = (
                                    (oy * stride + ky).checked_sub(padding),
                                    (ox * stride + kx).checked_sub(padding),
                                ) else {
                                    continue;
                                };
                                if iy >= h || ix >= wd {
                                    continue;
                                }
                                f(
                                    ((bi * ci + c) * h + iy) * wd + ix,
                                    di,
                                    ((o * ci + c) * k + ky) * k + kx,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn dims4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

/// Scatters each output-gradient tap back through the weight.
pub fn conv2d_grad_input<F: Float>(
    d: &Tensor<F>,
    w: &Tensor<F>,
    stride: usize,
    padding: usize,
    h: usize,
    wd: usize,
) -> Tensor<F> {
    let x = [d.shape[0], w.shape[1], h, wd];
    let mut out = Tensor::zeros(&x);
    for_each_tap(
        x,
        dims4(&d.shape),
        w.shape[2],
        stride,
        padding,
        |xi, di, wi| {
            out.data[xi] = out.data[xi] + d.data[di] * w.data[wi];
        },
    );
    out
}

pub fn conv2d_grad_weight<F: Float>(
    x: &Tensor<F>,
    d: &Tensor<F>,
    stride: usize,
    padding: usize,
    k: usize,
) -> Tensor<F> {
    let mut out = Tensor::zeros(&[d.shape[1], x.shape[1], k, k]);
    for_each_tap(
        dims4(&x.shape),
        dims4(&d.shape),
        k,
        stride,
        padding,
        |xi, di, wi| {
            out.data[wi] = out.data[wi] + d.data[di] * x.data[xi];
        },
    );
    out
}

fn softmax_rows<F: Float>(z: &Tensor<F>) -> Vec<F> {
    let k = z.shape[1];
    let mut p = z.data.clone();
    for row in p.chunks_mut(k) {
        let m = row.iter().copied().fold(F::neg_infinity(), F::max);
        let mut s = F::zero();
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            s = s + *v;
        }
        for v in row.iter_mut() {
            *v = *v / s;
        }
    }
    p
}

pub fn softmax_xent<F: Float>(z: &Tensor<F>, y: &Tensor<F>) -> Tensor<F> {
    let (b, k) = (z.shape[0], z.shape[1]);
    let mut loss = F::zero();
    for (zr, yr) in z.data.chunks(k).zip(y.data.chunks(k)) {
        // log softmax with the max subtracted, for range.
        let m = zr.iter().copied().fold(F::neg_infinity(), F::max);
        let lse = zr
            .iter()
            .map(|&v| (v - m).exp())
            .fold(F::zero(), |a, e| a + e)
            .ln()
            + m;
        for (&zv, &yv) in zr.iter().zip(yr) {
            loss = loss - yv * (zv - lse);
        }
    }
    Tensor::from_vec(&[1], vec![loss / count(b)])
}

pub fn softmax_xent_grad<F: Float>(z: &Tensor<F>, y: &Tensor<F>) -> Tensor<F> {
    let b: F = count(z.shape[0]);
    let p = softmax_rows(z);
    Tensor::from_vec(
        &z.shape,
        p.iter()
            .zip(&y.data)
            .map(|(&pv, &yv)| (pv - yv) / b)
            .collect(),
    )
}
