//! Elementwise ops on all cores (rayon), bit-identical to the reference
//! interpreter: both evaluate the op's one scalar definition
//! (`ir::scalar`) per element; only the order across elements changes.
//! Also the channel reductions and average pooling, in parallel.

use crate::ir::scalar_eval::OpProgram;
use crate::ir::Op;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Below this many elements, threads cost more than they save.
const PAR_MIN: usize = 1 << 14;

/// Elements per parallel task.
const CHUNK: usize = 1 << 12;

/// Elements evaluated together (`fill`): small enough that a block's
/// temporaries stay in L1.
const BLOCK: usize = 512;

/// What an element of the result reads: the compiled definition, and per
/// operand whether it is a per-channel vector (channel axis 1 of the result,
/// `r` elements per (batch, channel) slab).
struct Reader<'a> {
    program: OpProgram<f32>,
    xs: &'a [&'a Tensor<f32>],
    chan: Vec<bool>,
    c: usize,
    r: usize,
}

impl<'a> Reader<'a> {
    /// `None` when the op has no scalar definition or a constant does not
    /// fit f32 (the reference kernel then runs and reports it).
    fn new(op: &Op, shape: &[usize], arity: usize, xs: &'a [&'a Tensor<f32>]) -> Option<Self> {
        let program = OpProgram::new(op, arity).ok()?;
        let chan: Vec<bool> = (0..arity).map(|k| op.chan_operand(k)).collect();
        let (c, r) = if chan.contains(&true) {
            (shape[1], shape[2..].iter().product())
        } else {
            (1, 1)
        };
        Some(Reader {
            program,
            xs,
            chan,
            c,
            r,
        })
    }

    /// Operand `k`'s value at element `i`, from `xs[k − skip]`.
    fn read(&self, k: usize, skip: usize, i: usize) -> f32 {
        self.xs[k - skip].data[if self.chan[k] {
            (i / self.r) % self.c
        } else {
            i
        }]
    }

    /// Elements `start..start + out.len()`; `own` reads operand 0 from
    /// `out` itself (the in-place form), the others from `xs[k − 1]`.
    /// Operands are gathered into blocks and the definition evaluated a
    /// block at a time (`OpProgram::eval_block`: the same bits as per
    /// element).
    fn fill(&self, out: &mut [f32], start: usize, own: bool) {
        let mut bufs = vec![vec![0f32; BLOCK]; self.chan.len()];
        let mut done = 0;
        for o in out.chunks_mut(BLOCK) {
            let len = o.len();
            for (k, b) in bufs.iter_mut().enumerate() {
                let b = &mut b[..len];
                match (own, k) {
                    (true, 0) => b.copy_from_slice(o),
                    (own, k) => {
                        let skip = usize::from(own);
                        let i0 = start + done;
                        if self.chan[k] {
                            b.iter_mut()
                                .enumerate()
                                .for_each(|(j, v)| *v = self.read(k, skip, i0 + j));
                        } else {
                            b.copy_from_slice(&self.xs[k - skip].data[i0..i0 + len]);
                        }
                    }
                }
            }
            let args: Vec<&[f32]> = bufs.iter().map(|b| &b[..len]).collect();
            self.program.eval_block(&args, o);
            done += len;
        }
    }

    fn run(&self, out: &mut [f32], own: bool) {
        if out.len() >= PAR_MIN {
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(b, o)| self.fill(o, b * CHUNK, own));
        } else {
            self.fill(out, 0, own);
        }
    }
}

/// The op on all cores, or None when it is not elementwise (the caller then
/// uses the reference kernel). Operand shapes were checked when the graph
/// was verified.
pub fn eval(op: &Op, shape: &[usize], xs: &[&Tensor<f32>]) -> Option<Tensor<f32>> {
    if !op.elementwise() {
        return None;
    }
    let reader = Reader::new(op, shape, xs.len(), xs)?;
    let mut data = vec![0f32; shape.iter().product()];
    reader.run(&mut data, false);
    Some(Tensor::from_vec(shape, data))
}

/// The op computed over its first operand's buffer `x` (which the caller
/// owns and no one else reads any more); `rest` are the other operands and
/// `shape` the node's shape. Each element gets the same definition as in
/// `eval` and the reference. Handles exactly the ops `Op::in_place` names.
pub fn eval_in_place(op: &Op, x: &mut Tensor<f32>, rest: &[&Tensor<f32>], shape: &[usize]) {
    if let Op::Reshape { .. } = op {
        x.shape = shape.to_vec();
        return;
    }
    assert!(op.in_place(), "{} has no in-place form", op.name());
    let reader = Reader::new(op, shape, rest.len() + 1, rest)
        .unwrap_or_else(|| panic!("{} has no f32 definition", op.name()));
    reader.run(&mut x.data, true);
}

/// Per-channel sums of `f(x, channel)` over every operand and every axis but
/// 1, accumulated in f64 (more accurate than the reference's f32 running
/// sum, which it therefore matches to within the reference's own error).
/// Parallel over channels; each channel's runs of `inner` elements are
/// contiguous.
fn channel_sums(xs: &[&Tensor<f32>], f: impl Fn(f32, usize) -> f32 + Sync) -> Vec<f64> {
    let shape = &xs[0].shape;
    let (b, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut s = 0f64;
            for x in xs {
                for bi in 0..b {
                    let start = (bi * c + ch) * inner;
                    s += f64::from(lane_sum(&x.data[start..start + inner], |v| f(v, ch)));
                }
            }
            s
        })
        .collect()
}

/// `Σ f(v)` over a run in eight interleaved f32 partial sums: one running
/// sum is a chain of dependent additions (one per add latency) that the
/// compiler may not reorder; eight independent ones vectorise.
fn lane_sum(run: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = run.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    let mut part: f32 = lanes.iter().sum();
    for &v in rest {
        part += f(v);
    }
    part
}

/// `Σ a·b` over two runs, in eight interleaved partial sums (see
/// `lane_sum`).
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut part: f32 = lanes.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        part += x * y;
    }
    part
}

/// Channel reductions and average pooling, parallel; None for other ops.
pub fn eval_reduce(op: &crate::ir::Op, xs: &[&Tensor<f32>]) -> Option<Tensor<f32>> {
    use crate::ir::Op;
    let count = |xs: &[&Tensor<f32>]| {
        let s = &xs[0].shape;
        (xs.len() * s[0] * s[2..].iter().product::<usize>()) as f64
    };
    Some(match op {
        Op::ChannelSum => {
            let s = channel_sums(xs, |v, _| v);
            Tensor::from_vec(&[s.len()], s.into_iter().map(|v| v as f32).collect())
        }
        Op::ChannelDot => {
            let (a, b) = (xs[0], xs[1]);
            let (c, inner) = (a.shape[1], a.shape[2..].iter().product::<usize>());
            let s: Vec<f64> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    (0..a.shape[0])
                        .map(|bi| {
                            let at = (bi * c + ch) * inner..(bi * c + ch + 1) * inner;
                            f64::from(lane_dot(&a.data[at.clone()], &b.data[at]))
                        })
                        .sum()
                })
                .collect();
            Tensor::from_vec(&[c], s.into_iter().map(|v| v as f32).collect())
        }
        Op::ChannelMean => {
            let n = count(xs);
            let s = channel_sums(xs, |v, _| v);
            Tensor::from_vec(&[s.len()], s.into_iter().map(|v| (v / n) as f32).collect())
        }
        Op::ChannelVar => {
            let (mean, xs) = (xs[0], &xs[1..]);
            let n = count(xs);
            let s = channel_sums(xs, |v, ch| {
                let d = v - mean.data[ch];
                d * d
            });
            Tensor::from_vec(&[s.len()], s.into_iter().map(|v| (v / n) as f32).collect())
        }
        Op::AvgPool { kernel, stride } => avgpool(xs[0], *kernel, *stride),
        Op::AvgPoolGrad {
            kernel,
            stride,
            in_h,
            in_w,
        } => avgpool_grad(xs[0], *kernel, *stride, *in_h, *in_w),
        _ => return None,
    })
}

fn avgpool(x: &Tensor<f32>, k: usize, stride: usize) -> Tensor<f32> {
    let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (ho, wo) = ((h - k) / stride + 1, (w - k) / stride + 1);
    let area = (k * k) as f32;
    let mut out = Tensor::zeros(&[b, c, ho, wo]);
    // A few planes per task: one 14×14 plane is too little work to split.
    let planes = (4096 / (h * w)).max(1);
    out.data
        .par_chunks_mut(planes * ho * wo)
        .zip(x.data.par_chunks(planes * h * w))
        .for_each(|(os, xs)| {
            for (o, src) in os.chunks_mut(ho * wo).zip(xs.chunks(h * w)) {
                if k == 2 && stride == 2 {
                    // The common 2×2 pool, unrolled; same summation order.
                    for oy in 0..ho {
                        let (r0, r1) = (&src[2 * oy * w..], &src[(2 * oy + 1) * w..]);
                        for (ox, v) in o[oy * wo..(oy + 1) * wo].iter_mut().enumerate() {
                            let acc = r0[2 * ox] + r0[2 * ox + 1] + r1[2 * ox] + r1[2 * ox + 1];
                            *v = acc / area;
                        }
                    }
                    continue;
                }
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = 0f32;
                        for ky in 0..k {
                            for kx in 0..k {
                                acc += src[(oy * stride + ky) * w + ox * stride + kx];
                            }
                        }
                        o[oy * wo + ox] = acc / area;
                    }
                }
            }
        });
    out
}

fn avgpool_grad(d: &Tensor<f32>, k: usize, stride: usize, h: usize, w: usize) -> Tensor<f32> {
    let (b, c, ho, wo) = (d.shape[0], d.shape[1], d.shape[2], d.shape[3]);
    let area = (k * k) as f32;
    let mut out = Tensor::zeros(&[b, c, h, w]);
    out.data
        .par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, o)| {
            let src = &d.data[plane * ho * wo..(plane + 1) * ho * wo];
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = src[oy * wo + ox] / area;
                    for ky in 0..k {
                        for kx in 0..k {
                            o[(oy * stride + ky) * w + ox * stride + kx] += g;
                        }
                    }
                }
            }
        });
    out
}
