//! luminal interop (cargo feature `luminal`, off by default): lowers an
//! unrolled *inference* graph (`compile` with `eval: true`, stage
//! `unrolled`) to luminal 0.2's primitive operators and runs it with
//! luminal's CPU compilers.
//!
//! What it is for: an independent cross-check of the forward semantics
//! (luminal's ops and shape trackers share no code with snnc's interpreter
//! or executor) and a way to hand a trained SNN's inference graph, with its
//! T steps unrolled, to luminal. It is not the training IR: luminal 0.2 (the
//! crates.io release of Feb 2024) has no autograd, its shapes are Rust
//! types (runtime sizes only through one-letter dynamic dimensions, a
//! ShapeTracker holds at most 6 dimensions), and its CUDA crate needs the
//! toolkit to build.
//!
//! luminal 0.2 primitives used: `Function` (inputs, parameters),
//! `Constant`, `Add`, `Mul`, `LessThan`, `Recip`, `Sqrt`, `SumReduce`,
//! `MaxReduce`, `Contiguous`, plus shape-tracker views (permute, expand,
//! pad, slice, `pool_last_dim`).
//!
//! Elementwise ops (the op table's `elementwise`) are lowered from their
//! scalar definition (`luminal/elementwise.rs`): `add`, `sub`, `mul`,
//! `scale`, `add_scalar`, `detach`, `spike`, `bias_add`, `channel_scale`,
//! `normalize`, `time_mean`, `sum`, `rsqrt`, `channel_broadcast`. luminal
//! has no division (its own `/` is a product with `Recip`), so the time
//! mean's `/ T` is `· (1/T)`, within an ulp of the table's quotient. The
//! other ops:
//!
//! | snnc | luminal |
//! | --- | --- |
//! | `input`, `param` | `Function` node holding the data |
//! | `time_slice[t]` | slice axis 1 to `t..t+1`, `Contiguous`, view without it |
//! | `matmul[ta, tb]` | transposed views, `expand` to `[M, N, K]`, `Mul`, `SumReduce(2)` (the CPU compiler turns this into its `MatMul2D`) |
//! | `avgpool`, `maxpool` | `pool_last_dim` on W and on H, `SumReduce`/`MaxReduce` over both window axes (÷ k² for avg) |
//! | `conv2d` | pad, `pool_last_dim` on W and H (im2col as a view), permute to `[B, Ho, Wo, Ci, k, k]`, `Contiguous`, matmul with `w` as `[Co, Ci·k·k]`, permute to `[B, Co, Ho, Wo]` |
//! | `reshape` | a new contiguous view |
//!
//! Not lowered (an error naming the op): `poisson` and `dropout_mask`
//! (their counter-based random bits are snnc's, luminal has no such op),
//! the elementwise ops whose definition needs a function luminal lacks
//! (`surrogate_grad`), and every other backward op.

mod elementwise;

use std::collections::HashMap;

use luminal::op::{self as lop, Function};
use luminal::prelude::symbolic::Expression;
use luminal::prelude::{
    Graph as LGraph, GraphTensor, NodeIndex as LNode, ShapeTracker, Tensor as LTensor,
};

use crate::ir::{Graph, NodeIndex, Op};
use crate::tensor::Tensor;

/// A lowered value: a luminal node viewed through a shape tracker.
type V = GraphTensor<()>;

/// Why a graph cannot be lowered to luminal.
#[derive(Debug, thiserror::Error)]
pub enum LuminalError {
    #[error("luminal: the graph has a cycle")]
    Cyclic,
    #[error("luminal: no value for input `{0}`")]
    MissingInput(String),
    #[error("luminal: no value for parameter `{0}`")]
    MissingParam(String),
    #[error(
        "luminal: op `{0}` cannot be lowered (only the inference ops of unrolled \
         graphs without Poisson encoding or dropout are)"
    )]
    Unsupported(&'static str),
    /// An elementwise op whose definition calls a function luminal 0.2
    /// has no primitive for.
    #[error(
        "luminal: op `{op}` cannot be lowered: its definition uses {what}, \
         which luminal has no primitive for"
    )]
    NoPrimitive {
        op: &'static str,
        what: &'static str,
    },
}

fn exprs(dims: &[usize]) -> Vec<Expression> {
    dims.iter().map(|&d| Expression::from(d)).collect()
}

struct Lower {
    cx: Box<LGraph>,
}

impl Lower {
    fn ptr(&mut self) -> *mut LGraph {
        &mut *self.cx
    }

    fn view(&mut self, id: LNode, dims: &[usize]) -> V {
        let p = self.ptr();
        GraphTensor::from_id(id, ShapeTracker::new(&exprs(dims)), p)
    }

    fn data(&mut self, name: &str, t: &Tensor<f32>) -> V {
        let data = t.data.clone();
        let id = self
            .cx
            .add_op(Function(
                format!("{name} Load"),
                Box::new(move |_| vec![LTensor::new(data.clone())]),
            ))
            .finish();
        self.view(id, &t.shape)
    }

    /// A binary primitive on two views of the same logical shape `dims`.
    fn bin<O: luminal::op::Operator + 'static>(&mut self, op: O, a: V, b: V, dims: &[usize]) -> V {
        let id = self
            .cx
            .add_op(op)
            .input(a.id, 0, a.shape)
            .input(b.id, 0, b.shape)
            .finish();
        self.view(id, dims)
    }

    fn unary<O: luminal::op::Operator + 'static>(&mut self, op: O, a: V, dims: &[usize]) -> V {
        let id = self.cx.add_op(op).input(a.id, 0, a.shape).finish();
        self.view(id, dims)
    }

    /// The scalar `v` broadcast to `dims`.
    fn constant(&mut self, v: f32, dims: &[usize]) -> V {
        let mut c: V =
            GraphTensor::from_id(self.cx.constant(v).id, ShapeTracker::new(&[]), self.ptr());
        for (i, &d) in dims.iter().enumerate() {
            c.shape.expand(i, d.into());
        }
        c
    }

    /// A `[C]` value broadcast along every axis of `dims` but 1.
    fn channel(&mut self, c: V, dims: &[usize]) -> V {
        let mut c = c;
        for (i, &d) in dims.iter().enumerate() {
            if i != 1 {
                c.shape.expand(i, d.into());
            }
        }
        c
    }

    fn scale(&mut self, a: V, s: f32, dims: &[usize]) -> V {
        let c = self.constant(s, dims);
        self.bin(lop::Mul, a, c, dims)
    }

    /// `SumReduce(axis)` (or `MaxReduce`) of `a`, giving `dims`.
    fn reduce(&mut self, sum: bool, axis: usize, a: V, dims: &[usize]) -> V {
        if sum {
            self.unary(lop::SumReduce(axis), a, dims)
        } else {
            self.unary(lop::MaxReduce(axis), a, dims)
        }
    }

    /// `−a`, as `a · Recip(Constant(−1))`. Not `a · Constant(−1)`: luminal
    /// 0.2's `SubtractionCompiler` turns `Constant(−1) → Mul → Add` into a
    /// `Sub` and deletes the `Mul` even when the `Mul` has other consumers
    /// (CSE merges the per-timestep copies), then panics on the next match
    /// (`compilers/cpu/binary.rs:83`, `Option::unwrap()` on `None`).
    fn neg(&mut self, a: V, dims: &[usize]) -> V {
        let c = self.cx.constant(-1.0).id;
        let r = self
            .cx
            .add_op(lop::Recip)
            .input(c, 0, ShapeTracker::new(&[]))
            .finish();
        let mut m: V = GraphTensor::from_id(r, ShapeTracker::new(&[]), self.ptr());
        for (i, &d) in dims.iter().enumerate() {
            m.shape.expand(i, d.into());
        }
        self.bin(lop::Mul, a, m, dims)
    }

    fn contiguous(&mut self, a: V, dims: &[usize]) -> V {
        let id = self
            .cx
            .add_op(lop::Contiguous)
            .input(a.id, 0, a.shape)
            .finish();
        self.view(id, dims)
    }

    /// `op(a)·op(b)` for 2-D operands (`a` stored `[M, K]` or `[K, M]`).
    /// `(ta, tb)` transpose flags, `(m, k, n)` the product's sizes.
    fn matmul(
        &mut self,
        a: V,
        b: V,
        (ta, tb): (bool, bool),
        (m, k, n): (usize, usize, usize),
    ) -> V {
        let mut a = a;
        if ta {
            a.shape.permute(&[1, 0]);
        }
        let mut b = b;
        if !tb {
            b.shape.permute(&[1, 0]); // [K, N] → [N, K]
        }
        a.shape.expand(1, n.into()); // [M, N, K]
        b.shape.expand(0, m.into()); // [M, N, K]
        let prod = self.bin(lop::Mul, a, b, &[m, n, k]);
        self.unary(lop::SumReduce(2), prod, &[m, n])
    }

    /// Windows of `kernel` with `stride` over the last two axes of a
    /// contiguous `[B, C, H, W]` view: returns the view
    /// `[B, C, Wo, kw, Ho, kh]`.
    fn windows(&mut self, x: V, kernel: usize, stride: usize) -> V {
        let w = x.pool_last_dim::<()>(kernel.into(), stride.into(), 0); // [B, C, H, Wo, kw]
        let mut w = w;
        w.shape.permute(&[0, 1, 3, 4, 2]); // [B, C, Wo, kw, H]
        let w = w.contiguous();
        w.pool_last_dim::<()>(kernel.into(), stride.into(), 0) // [B, C, Wo, kw, Ho, kh]
    }
}

fn out_size(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p - k) / s + 1
}

/// The lowered graph, ready to run.
pub struct Lowered {
    cx: Box<LGraph>,
    outputs: Vec<(String, LNode, Vec<usize>)>,
}

impl Lowered {
    /// Number of luminal nodes (after compilation if it ran).
    pub fn node_count(&self) -> usize {
        self.cx.graph.node_count()
    }

    /// Applies luminal's generic and CPU compilers (matmul fusion, CSE,
    /// arithmetic simplification).
    pub fn compile_cpu(&mut self) {
        let mut ids: Vec<LNode> = self.outputs.iter().map(|o| o.1).collect();
        {
            let remap: Vec<&mut LNode> = ids.iter_mut().collect();
            self.cx.compile(
                (
                    luminal::prelude::GenericCompiler::default(),
                    luminal::prelude::CPUCompiler::default(),
                ),
                remap,
            );
        }
        for (o, id) in self.outputs.iter_mut().zip(ids) {
            o.1 = id;
        }
    }

    /// Runs the graph; returns every output of the snnc graph by name.
    pub fn run(&mut self) -> HashMap<String, Tensor<f32>> {
        self.cx.execute();
        self.outputs
            .iter()
            .map(|(name, id, dims)| {
                let t = self.cx.get_tensor_ref(*id, 0).expect("outputs are kept");
                let data = t
                    .data
                    .as_any()
                    .downcast_ref::<Vec<f32>>()
                    .expect("f32 data")
                    .clone();
                (name.clone(), Tensor::from_vec(dims, data))
            })
            .collect()
    }
}

/// Lowers `g` (an unrolled inference graph) with the given inputs and
/// parameters bound as data. Errors name the first op that cannot be
/// lowered.
pub fn lower(
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
) -> Result<Lowered, LuminalError> {
    let mut l = Lower {
        cx: Box::new(LGraph::new()),
    };
    let order = g.topo_order().ok_or(LuminalError::Cyclic)?;
    let mut val: HashMap<NodeIndex, V> = HashMap::new();
    for n in order {
        let node = &g.g[n];
        let dims = node.shape.clone();
        let ops: Vec<NodeIndex> = g.operands(n);
        let arg = |i: usize| -> V { val[&ops[i]] };
        let shape_of = |i: usize| -> Vec<usize> { g.g[ops[i]].shape.clone() };
        let v = match &node.op {
            Op::Input { name } => {
                let t = inputs
                    .get(name)
                    .ok_or_else(|| LuminalError::MissingInput(name.clone()))?;
                l.data(name, t)
            }
            Op::Param { name } => {
                let t = params
                    .get(name)
                    .ok_or_else(|| LuminalError::MissingParam(name.clone()))?;
                l.data(name, t)
            }
            Op::TimeSlice { t } => {
                let x = arg(0);
                let xs = shape_of(0);
                let mut v = x;
                let mut ranges: Vec<(Expression, Expression)> =
                    xs.iter().map(|&d| (0.into(), d.into())).collect();
                ranges[1] = ((*t).into(), (*t + 1).into());
                v.shape.slice(&ranges);
                let mut one = xs.clone();
                one[1] = 1;
                let c = l.contiguous(v, &one);
                l.view(c.id, &dims)
            }
            op if op.elementwise() => {
                let args: Vec<V> = ops.iter().map(|o| val[o]).collect();
                l.elementwise(op, &args, &dims)?
            }
            Op::MatMul { ta, tb } => {
                let (m, nn) = (dims[0], dims[1]);
                let a = shape_of(0);
                let k = if *ta { a[0] } else { a[1] };
                l.matmul(arg(0), arg(1), (*ta, *tb), (m, k, nn))
            }
            Op::Reshape { .. } => {
                let x = arg(0);
                let x = if x.shape.is_contiguous() && !x.shape.is_sliced() && !x.shape.is_padded() {
                    x
                } else {
                    let s = shape_of(0);
                    l.contiguous(x, &s)
                };
                l.view(x.id, &dims)
            }
            // Padded windows are not lowered: luminal pads with zeros, and
            // a max-pool's padding must never win.
            Op::AvgPool {
                kernel,
                stride,
                padding: 0,
            }
            | Op::MaxPool {
                kernel,
                stride,
                padding: 0,
                ..
            } => {
                let avg = matches!(node.op, Op::AvgPool { .. });
                let w = l.windows(arg(0), *kernel, *stride); // [B, C, Wo, kw, Ho, kh]
                let (b, c, ho, wo) = (dims[0], dims[1], dims[2], dims[3]);
                let v = l.reduce(avg, 5, w, &[b, c, wo, *kernel, ho]);
                let v = l.reduce(avg, 3, v, &[b, c, wo, ho]);
                let mut v = v;
                v.shape.permute(&[0, 1, 3, 2]);
                let v = l.contiguous(v, &dims);
                if avg {
                    l.scale(v, 1.0 / (kernel * kernel) as f32, &dims)
                } else {
                    v
                }
            }
            Op::Conv2d { stride, padding } => {
                let xs = shape_of(0);
                let ws = shape_of(1);
                let (b, ci, h, w) = (xs[0], xs[1], xs[2], xs[3]);
                let (co, k) = (ws[0], ws[2]);
                let (ho, wo) = (
                    out_size(h, k, *stride, *padding),
                    out_size(w, k, *stride, *padding),
                );
                let mut x = arg(0);
                let p = *padding;
                x.shape.pad(&[
                    (0.into(), 0.into()),
                    (0.into(), 0.into()),
                    (p.into(), p.into()),
                    (p.into(), p.into()),
                ]);
                let x = l.contiguous(x, &[b, ci, h + 2 * p, w + 2 * p]);
                let mut win = l.windows(x, k, *stride); // [B, Ci, Wo, kw, Ho, kh]
                win.shape.permute(&[0, 4, 2, 1, 5, 3]); // [B, Ho, Wo, Ci, kh, kw]
                let cols = l.contiguous(win, &[b, ho, wo, ci, k, k]);
                let cols = l.view(cols.id, &[b * ho * wo, ci * k * k]);
                let wt = l.view(arg(1).id, &[co, ci * k * k]);
                let y = l.matmul(cols, wt, (false, true), (b * ho * wo, ci * k * k, co));
                let mut y = l.view(y.id, &[b, ho, wo, co]);
                y.shape.permute(&[0, 3, 1, 2]);
                l.contiguous(y, &dims)
            }
            other => return Err(LuminalError::Unsupported(other.name())),
        };
        val.insert(n, v);
    }
    let mut outputs = Vec::new();
    for (name, n) in &g.outputs {
        let v = val[n];
        let dims = g.g[*n].shape.clone();
        let v = if v.shape.is_contiguous() && !v.shape.is_sliced() && !v.shape.is_padded() {
            v
        } else {
            l.contiguous(v, &dims)
        };
        l.cx.keep_tensors(v.id);
        outputs.push((name.clone(), v.id, dims));
    }
    Ok(Lowered { cx: l.cx, outputs })
}
