//! One node as library calls: an op's kernel launches and GEMMs (the
//! convolutions in `conv`, the channel reductions in `reduce`).

use super::conv::ConvGeo;
use super::reduce::Pass1;
use super::{elems, inner, int, ExecError, Executor, BLOCK};
use crate::codegen::backend::{check_args, Arg, Backend, Gemm, KERNELS};
use crate::codegen::library::elementwise;
use crate::interp::RunOptions;
use crate::ir::{NodeIndex, Op};
use crate::tensor::Tensor;
use std::collections::HashMap;

impl<'a, B: Backend> Executor<'a, B> {
    /// Evaluates node `n` (step `i`): leaves are uploaded (or resident),
    /// views share their operand, every other op runs as library calls
    /// into its planned place in the arena.
    pub(super) fn exec_node(
        &mut self,
        i: usize,
        n: NodeIndex,
        vals: &HashMap<NodeIndex, usize>,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
    ) -> Result<usize, ExecError> {
        let g = self.g;
        let node = g.node(n);
        match &node.op {
            Op::Input { name } => {
                let t = inputs
                    .get(name)
                    .ok_or_else(|| ExecError::MissingInput(name.clone()))?;
                self.upload_leaf(name, &node.shape, t)
            }
            Op::Param { name } => {
                if let Some(&id) = self.resident.get(name) {
                    return Ok(self.retain(id));
                }
                let t = params
                    .get(name)
                    .ok_or_else(|| ExecError::MissingParam(name.clone()))?;
                self.upload_leaf(name, &node.shape, t)
            }
            // Views: the same elements in the same order.
            Op::Reshape { .. } | Op::Detach => {
                let o = self.life.reads[i][0];
                Ok(self.retain(vals[&o]))
            }
            op => {
                let ins: Vec<(u64, &[usize])> = self.life.reads[i]
                    .iter()
                    .map(|o| (self.ptr_of(vals[o]), g.node(*o).shape.as_slice()))
                    .collect();
                let len = elems(&node.shape);
                let out = self.value_buffer(n, len)?;
                let p = self.mem_ptr(&out);
                let run = match self.paired_reduction(i, n, &ins, p, vals) {
                    Ok(true) => Ok(()),
                    Ok(false) => self.stats_or_compute(i, n, op, &node.shape, &ins, p, opts),
                    Err(e) => Err(e),
                };
                match run {
                    Ok(()) => Ok(self.new_slot(out, len, false)),
                    Err(e) => {
                        self.free_value(out, len);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Launches `kernel` with one thread per unit of work (grid-stride
    /// beyond the backend's grid limit).
    pub(super) fn launch(
        &mut self,
        kernel: &'static str,
        threads: usize,
        args: &[Arg],
    ) -> Result<(), ExecError> {
        check_args(kernel, args)?;
        if threads == 0 {
            return Ok(());
        }
        let grid = threads
            .div_ceil(BLOCK as usize)
            .min(self.backend.max_grid() as usize) as u32;
        if !self.profile_steps {
            return Ok(self.backend.launch(kernel, grid, BLOCK, args)?);
        }
        self.backend.sync()?;
        let started = std::time::Instant::now();
        self.backend.launch(kernel, grid, BLOCK, args)?;
        self.backend.sync()?;
        self.count_inner(kernel.to_string(), started, 0.0);
        Ok(())
    }

    /// Adds one timed library call (a kernel, or a GEMM of `flops`) to the
    /// profile's second table.
    pub(super) fn count_inner(&mut self, key: String, started: std::time::Instant, flops: f64) {
        let e = self.inner_spent.entry(key).or_default();
        e.0 += started.elapsed().as_secs_f64();
        e.1 += 1;
        e.2 += flops;
    }

    pub(super) fn gemm(&mut self, mut g: Gemm) -> Result<(), ExecError> {
        g.precision = self.precision;
        if !self.profile_steps {
            return Ok(self.backend.gemm(&g)?);
        }
        self.backend.sync()?;
        let started = std::time::Instant::now();
        self.backend.gemm(&g)?;
        self.backend.sync()?;
        let t = |on: bool| if on { "t" } else { "n" };
        let key = format!(
            "gemm {}×{}×{} [{}{}] ×{}",
            g.m,
            g.n,
            g.k,
            t(g.ta),
            t(g.tb),
            g.batch
        );
        let flops = 2.0 * (g.m * g.n * g.k * g.batch) as f64;
        self.count_inner(key, started, flops);
        Ok(())
    }

    /// [`Executor::compute`], except the channel means, which sum x² too
    /// in the same read (the x² sums cost little in a pass bound by
    /// memory, and the mean's scratch is then the same whatever follows
    /// it), and the variances over a mean's own operands, computed from
    /// those sums (`reduce`). A convolution whose output a mean reads may
    /// sum x and x² as it writes it (on the CPU, the AMX path and the
    /// first-layer direct kernels, while the output is in cache): the
    /// mean then does not read it again.
    #[allow(clippy::too_many_arguments)]
    fn stats_or_compute(
        &mut self,
        i: usize,
        n: NodeIndex,
        op: &Op,
        shape: &[usize],
        ins: &[(u64, &[usize])],
        out: u64,
        opts: &RunOptions,
    ) -> Result<(), ExecError> {
        match op {
            Op::ChannelMean => {
                let (xs, s, count) = summed(ins);
                let from = self.life.reads[i].clone();
                self.channel_mean_moments(n, &xs, &from, s, out, count)
            }
            Op::Conv2d { .. } if self.backend.conv_sums_moments() && self.feeds_mean(n) => {
                if !self.conv_moments.contains_key(&n) {
                    let buf = self.backend.alloc(4 * shape[1])?;
                    self.conv_moments.insert(n, (buf, false));
                }
                self.conv_moments_to = self.backend.ptr(&self.conv_moments[&n].0);
                self.conv_moments_written = false;
                let run = self.compute(op, shape, ins, out, opts);
                self.conv_moments_to = 0;
                let written = std::mem::take(&mut self.conv_moments_written);
                if let Some(m) = self.conv_moments.get_mut(&n) {
                    m.1 = run.is_ok() && written;
                }
                run
            }
            Op::ChannelVar => {
                let (_, s, count) = summed(&ins[1..]);
                if self.channel_var_moments(n, ins[0].0, s[1], out, count)? {
                    return Ok(());
                }
                self.compute(op, shape, ins, out, opts)
            }
            _ => self.compute(op, shape, ins, out, opts),
        }
    }

    /// Evaluates one non-leaf, non-view op into the buffer at `out`.
    pub(super) fn compute(
        &mut self,
        op: &Op,
        shape: &[usize],
        ins: &[(u64, &[usize])],
        out: u64,
        opts: &RunOptions,
    ) -> Result<(), ExecError> {
        use Arg::{D, F, I, P, U};
        let n = elems(shape);
        let ni = int(n)?;
        let x = |k: usize| ins[k].0;
        match op {
            Op::Input { .. } | Op::Param { .. } | Op::Reshape { .. } | Op::Detach => {
                unreachable!("handled by exec_node")
            }
            // Elementwise ops: their kernels are rendered from the op table
            // (`codegen/library/elementwise.rs`), named after the op.
            op if elementwise::has_kernel(op) => {
                let name = format!("snnc_{}", op.name());
                let k = KERNELS
                    .iter()
                    .map(|(k, _)| *k)
                    .find(|k| *k == name)
                    .ok_or(ExecError::NoKernel(name))?;
                let args = elementwise::args(op, ins, out, n, int)?;
                self.launch(k, n, &args)
            }
            Op::Sum | Op::TimeMean => {
                let total = ins.len();
                let mean = *op == Op::TimeMean;
                for (c, chunk) in ins.chunks(8).enumerate() {
                    let last = (c + 1) * 8 >= total;
                    let div = if mean && last { total as f32 } else { 1.0 };
                    let mut args = vec![
                        P(out),
                        I(ni),
                        I(chunk.len() as i32),
                        I(i32::from(c > 0)),
                        F(div),
                    ];
                    for j in 0..8 {
                        args.push(P(chunk.get(j).map_or(0, |v| v.0)));
                    }
                    self.launch("snnc_sum8", n, &args)?;
                }
                Ok(())
            }
            Op::Poisson { stream } => self.launch(
                "snnc_poisson",
                n,
                &[P(x(0)), P(out), I(ni), U(opts.seed), U(*stream)],
            ),
            Op::DropoutMask { p, stream } => {
                if !(0.0..1.0).contains(p) {
                    return Err(ExecError::Dropout(*p));
                }
                let keep = (1.0 / (1.0 - p)) as f32;
                self.launch(
                    "snnc_dropout_mask",
                    n,
                    &[P(out), I(ni), D(*p), F(keep), U(opts.seed), U(*stream)],
                )
            }
            Op::TimeSlice { t } => {
                let s = ins[0].1;
                self.launch(
                    "snnc_time_slice",
                    n,
                    &[
                        P(x(0)),
                        P(out),
                        I(ni),
                        I(int(s[1])?),
                        I(int(*t)?),
                        I(int(inner(s))?),
                    ],
                )
            }
            Op::AvgPool { .. } | Op::MaxPool { .. } => {
                let s = ins[0].1;
                let (kernel, stride, padding) = op.window().expect("a pooling op");
                let is_max = matches!(op, Op::MaxPool { .. });
                let mut args = vec![P(x(0)), P(out), I(ni)];
                args.extend(pool_geometry(s, shape, [kernel, stride, padding])?);
                args.push(I(i32::from(is_max)));
                self.launch("snnc_pool", n, &args)
            }
            Op::AvgPoolGrad { .. } | Op::AvgPoolGradMul { .. } => {
                let d = ins[0].1;
                let (kernel, stride, padding) = op.window().expect("a pooling op");
                // The fused form also reads the tensor it multiplies by.
                let (name, mut args) = match op {
                    Op::AvgPoolGradMul { .. } => ("snnc_avgpool_grad_mul", vec![P(x(0)), P(x(1))]),
                    _ => ("snnc_avgpool_grad", vec![P(x(0))]),
                };
                args.extend([P(out), I(ni)]);
                args.extend(pool_geometry(shape, d, [kernel, stride, padding])?);
                self.launch(name, n, &args)
            }
            Op::MaxPoolMask {
                kernel,
                stride,
                padding,
            }
            | Op::MaxPoolSelect {
                kernel,
                stride,
                padding,
            } => {
                // Both read x[B, C, H, W]; the mask has x's shape, the
                // selection one thread per window.
                let x_shape = ins[0].1;
                let (ho, wo) = crate::ir::pooled(x_shape, *kernel, *stride, *padding)?;
                let (kernel_name, threads) = match op {
                    Op::MaxPoolMask { .. } => ("snnc_maxpool_mask", n),
                    _ => ("snnc_maxpool_select", x_shape[0] * x_shape[1] * ho * wo),
                };
                self.launch(
                    kernel_name,
                    threads,
                    &[
                        P(x(0)),
                        P(out),
                        I(int(threads)?),
                        I(int(x_shape[2])?),
                        I(int(x_shape[3])?),
                        I(int(ho)?),
                        I(int(wo)?),
                        I(int(*kernel)?),
                        I(int(*stride)?),
                        I(int(*padding)?),
                    ],
                )
            }
            // Both gather per input element from (x or the selection, δ).
            Op::MaxPoolGrad {
                kernel,
                stride,
                padding,
                ..
            }
            | Op::MaxPoolRoute {
                kernel,
                stride,
                padding,
                ..
            } => {
                let d = ins[1].1;
                let name = match op {
                    Op::MaxPoolGrad { .. } => "snnc_maxpool_grad",
                    _ => "snnc_maxpool_route",
                };
                self.launch(
                    name,
                    n,
                    &[
                        P(x(0)),
                        P(x(1)),
                        P(out),
                        I(ni),
                        I(int(shape[2])?),
                        I(int(shape[3])?),
                        I(int(d[2])?),
                        I(int(d[3])?),
                        I(int(*kernel)?),
                        I(int(*stride)?),
                        I(int(*padding)?),
                    ],
                )
            }
            Op::ChannelMean => unreachable!("channel means run as moments (stats_or_compute)"),
            Op::ChannelVar => {
                let (xs, s, count) = summed(&ins[1..]);
                self.channel_reduce(Pass1::Sum, &xs, x(0), s, out, count)
            }
            Op::ChannelSum => {
                let s = ins[0].1;
                self.channel_reduce(Pass1::Sum, &[x(0)], 0, s, out, 1.0)
            }
            // channel_sum(x·y) of the fused plans' lowering: the same two
            // passes, pass 1 multiplying as it reads.
            Op::ChannelDot => {
                let s = ins[0].1;
                self.channel_reduce(Pass1::Dot, &[x(0)], x(1), s, out, 1.0)
            }
            Op::SoftmaxCrossEntropy | Op::SoftmaxCrossEntropyGrad => {
                let s = ins[0].1;
                let (b, k) = (int(s[0])?, int(s[1])?);
                let (kernel, threads) = if *op == Op::SoftmaxCrossEntropy {
                    ("snnc_softmax_xent", 1)
                } else {
                    ("snnc_softmax_xent_grad", s[0])
                };
                self.launch(kernel, threads, &[P(x(0)), P(x(1)), P(out), I(b), I(k)])
            }
            Op::MatMul { ta, tb } => {
                let (a, b) = (ins[0].1, ins[1].1);
                let (m, k) = if *ta { (a[1], a[0]) } else { (a[0], a[1]) };
                let nn = if *tb { b[0] } else { b[1] };
                let mut gm = Gemm::dense(*ta, *tb, m, nn, k, x(0), x(1), out);
                gm.lda = a[1];
                gm.ldb = b[1];
                self.gemm(gm)
            }
            Op::Conv2d { .. } | Op::Conv2dGradInput { .. } | Op::Conv2dGradWeight { .. } => {
                let shapes: Vec<&[usize]> = ins.iter().map(|i| i.1).collect();
                let geo = ConvGeo::of(op, &shapes, shape)?.expect("a convolution");
                match op {
                    Op::Conv2d { .. } => self.conv_forward(&geo, x(0), x(1), out),
                    Op::Conv2dGradInput { .. } => self.conv_grad_input(&geo, x(0), x(1), out),
                    _ => self.conv_grad_weight(&geo, x(0), x(1), out),
                }
            }
            op => Err(ExecError::NoLibraryKernel(op.name())),
        }
    }
}

/// The operands a channel reduction sums (each `[B, C, …]`): their
/// addresses, their shape and how many elements per channel they hold.
/// A pooling kernel's geometry arguments: the pooled map's input (`big`)
/// and output (`small`) height and width, then the window.
fn pool_geometry(
    big: &[usize],
    small: &[usize],
    window: [usize; 3],
) -> Result<[Arg; 7], ExecError> {
    let v = [
        big[2], big[3], small[2], small[3], window[0], window[1], window[2],
    ];
    let mut out = [Arg::I(0); 7];
    for (o, x) in out.iter_mut().zip(v) {
        *o = Arg::I(int(x)?);
    }
    Ok(out)
}

fn summed<'s>(ins: &[(u64, &'s [usize])]) -> (Vec<u64>, &'s [usize], f64) {
    let s = ins[0].1;
    let count = (ins.len() * s[0] * inner(s)) as f64;
    (ins.iter().map(|i| i.0).collect(), s, count)
}
