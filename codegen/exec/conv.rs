//! Convolutions and their gradients as im2col/col2im kernels and GEMMs,
//! over the batch in chunks whose im2col buffer fits the workspace cap.

use super::{at, int, ExecError, Executor};
use crate::codegen::backend::{Arg, Backend, ConvCall, ConvPass, Gemm};
use crate::ir::Op;
use crate::precision::Precision;

/// The largest fraction of nonzero inputs at which a convolution's forward
/// runs as events on a backend that offers them (the CPU), when the dense
/// path is im2col + SGEMM. Measured with `snnc bench --events` on the idle
/// 2-core machine (2026-12-07, fmnist_csnn's second convolution, 32→64
/// channels, 14×14, batch 128): events take 0.49× the dense path's time
/// (im2col + SGEMM + transpose) at 1 % nonzero, 0.48× at 5 %, 0.89× at
/// 10 % and 1.28× at 20 %.
pub const EVENT_DENSITY: f64 = 0.12;

/// [`EVENT_DENSITY`] where the backend has library convolutions
/// ([`Backend::library_conv`]: oneDNN's direct kernels on the CPU), which
/// are 2–3× faster than im2col + SGEMM: the same bench then measured events
/// at 0.89× the dense time at 1 % nonzero, 0.93× at 2 %, 1.14× at 5 % and
/// 1.55× at 10 % (2026-12-07, same machine and convolution).
pub const EVENT_DENSITY_LIBRARY: f64 = 0.03;

/// The event threshold an executor on `backend` starts with.
pub fn default_event_density<B: Backend>(backend: &B) -> f64 {
    if backend.library_conv() {
        EVENT_DENSITY_LIBRARY
    } else {
        EVENT_DENSITY
    }
}

impl<'a, B: Backend> Executor<'a, B> {
    /// How many samples one convolution chunk holds.
    pub(super) fn chunk(&self, geo: &ConvGeo) -> usize {
        geo.chunk(self.conv_workspace)
    }

    pub(super) fn im2col(
        &mut self,
        geo: &ConvGeo,
        x: u64,
        col: u64,
        nb: usize,
    ) -> Result<(), ExecError> {
        use Arg::{I, P};
        let n = geo.rows() * nb * geo.cols();
        let mut args = vec![P(x), P(col)];
        args.extend(geo.args(nb)?);
        args.push(I(int(n)?));
        self.launch("snnc_im2col", n, &args)
    }

    /// Runs `f(this, scratch, b0, cur)` over the batch in chunks of at most
    /// `self.chunk(geo)` samples, with scratch buffers of `per_sample[k]`
    /// floats per sample of the chunk (taken once, given back however the
    /// loop ends).
    pub(super) fn conv_chunks(
        &mut self,
        geo: &ConvGeo,
        per_sample: &[usize],
        mut f: impl FnMut(&mut Self, &[u64], usize, usize) -> Result<(), ExecError>,
    ) -> Result<(), ExecError> {
        let nb = self.chunk(geo);
        let mut bufs = Vec::new();
        let mut result = Ok(());
        for &s in per_sample {
            match self.take_scratch(s * nb) {
                Ok(b) => bufs.push(b),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let ptrs: Vec<u64> = bufs.iter().map(|b| self.mem_ptr(b)).collect();
            let mut b0 = 0;
            while b0 < geo.b && result.is_ok() {
                let cur = nb.min(geo.b - b0);
                result = f(self, &ptrs, b0, cur);
                b0 += cur;
            }
        }
        for (b, s) in bufs.into_iter().zip(per_sample) {
            self.give_scratch(b, s * nb);
        }
        result
    }

    /// `[a, b, r] -> [b, a, r]`: the executor's one transpose, between a
    /// GEMM's channel-major result `[co, nb·cols]` and the batch-major
    /// tensors `[nb, co, cols]`.
    fn swap(&mut self, x: u64, out: u64, a: usize, b: usize, r: usize) -> Result<(), ExecError> {
        use Arg::{I, P};
        let n = a * b * r;
        self.launch(
            "snnc_bc_swap",
            n,
            &[P(x), P(out), I(int(a)?), I(int(b)?), I(int(r)?), I(int(n)?)],
        )
    }

    /// `d[cur, co, cols]` in channel-major order `[co, cur·cols]`: the
    /// transpose into `tp`, or `d` itself for one sample (the same layout).
    fn channel_major(
        &mut self,
        d: u64,
        tp: u64,
        cur: usize,
        co: usize,
        cols: usize,
    ) -> Result<u64, ExecError> {
        if cur == 1 {
            return Ok(d);
        }
        self.swap(d, tp, cur, co, cols)?;
        Ok(tp)
    }

    // Each chunk runs ONE GEMM with N = cur·cols (thousands of columns)
    // rather than a batch of `cur` GEMMs with N = cols (49 to 1,024): with
    // few output channels (M = co) a per-sample GEMM cannot reach the
    // SGEMM's speed (fmnist_csnn's second convolution, 64×288×196: 23
    // GFLOP/s with the gemm crate, 71 GFLOP/s at N = 3,528), and the
    // transpose it costs is one pass over the chunk's output.

    /// Whether a convolution's forward runs as events
    /// (`snnc_conv_events`): the backend takes that path (the CPU), the
    /// products are f32 (the event kernel does not round), the transposed
    /// weights fit where a chunk's column matrix would go, and at
    /// most `event_density` ([`default_event_density`] unless set) of the input is
    /// nonzero, measured on this call's input (firing rates change as a
    /// network trains).
    fn events_pay(&mut self, geo: &ConvGeo, x: u64) -> Result<bool, ExecError> {
        // The transposed weights, co·rows floats, go where a chunk's column
        // matrix would, rows·cols·nb floats.
        if self.event_density < 0.0
            || self.precision != Precision::Fp32
            || geo.co > geo.cols() * self.chunk(geo)
        {
            return Ok(false);
        }
        let f = self
            .backend
            .nonzero_fraction(x, geo.b * geo.in_len(), self.event_density)?;
        Ok(f.is_some_and(|f| f <= self.event_density))
    }

    /// The forward as events: the weights transposed to `[ci·k·k, co]`,
    /// then each nonzero input element adds its weight rows to the outputs
    /// it reaches (no im2col, no multiplications by zero).
    fn conv_forward_events(
        &mut self,
        geo: &ConvGeo,
        x: u64,
        w: u64,
        out: u64,
    ) -> Result<(), ExecError> {
        use Arg::{I, P};
        let len = geo.co * geo.rows();
        let m = self.take_scratch(len)?;
        let wt = self.mem_ptr(&m);
        let n = geo.b * geo.ho;
        let r = self.swap(w, wt, geo.co, geo.rows(), 1).and_then(|()| {
            let mut args = vec![P(x), P(wt), P(out)];
            for v in [
                geo.ci, geo.h, geo.w, geo.co, geo.k, geo.stride, geo.pad, geo.ho, geo.wo, n,
            ] {
                args.push(I(int(v)?));
            }
            self.launch("snnc_conv_events", n, &args)
        });
        self.give_scratch(m, len);
        self.event_convs += 1;
        r
    }

    /// Runs the computation on the backend's library convolution where it
    /// has one (f32 runs only: it does not round operands); false where
    /// the caller must run it itself.
    fn library_conv(
        &mut self,
        geo: &ConvGeo,
        pass: ConvPass,
        ins: [u64; 2],
        out: u64,
    ) -> Result<bool, ExecError> {
        if self.precision != Precision::Fp32 {
            return Ok(false);
        }
        // A forward whose output feeds batch-norm statistics may sum them
        // as it writes the output (`stats_or_compute`).
        let moments = match pass {
            ConvPass::Forward => self.conv_moments_to,
            _ => 0,
        };
        let call = geo.call(pass, ins, out, moments);
        // The im2col path's scratch is taken (and not used) so that the
        // arena's accounting follows the memory plan, which reserves it for
        // every convolution: which shapes the library declines is known
        // only when it is asked.
        // The workspace is handed out in order (`take_scratch`), so it is
        // rewound for the im2col path when the library declines.
        let nb = self.chunk(geo);
        let pieces = geo.per_sample().map(|s| s * nb);
        let rewind = self.scratch;
        let mut held = Vec::new();
        for &len in &pieces {
            match self.take_scratch(len) {
                Ok(m) => held.push(m),
                Err(e) => {
                    for (m, &len) in held.into_iter().zip(&pieces) {
                        self.give_scratch(m, len);
                    }
                    self.scratch = rewind;
                    return Err(e);
                }
            }
        }
        let started = std::time::Instant::now();
        let done = match self.profile_steps {
            true => self.backend.sync().and_then(|()| self.backend.conv(&call)),
            false => self.backend.conv(&call),
        };
        for (m, &len) in held.into_iter().zip(&pieces) {
            self.give_scratch(m, len);
        }
        self.scratch = rewind;
        let done = done?;
        self.conv_moments_written = done && moments != 0 && self.backend.conv_wrote_moments();
        if !self.profile_steps {
            return Ok(done);
        }
        self.backend.sync()?;
        if done {
            let name = match pass {
                ConvPass::Forward => "forward",
                ConvPass::GradInput => "grad input",
                ConvPass::GradWeight => "grad weight",
            };
            let key = format!(
                "conv {name} {}×{}×{}×{}→{} k{} s{} ({})",
                geo.b,
                geo.ci,
                geo.h,
                geo.w,
                geo.co,
                geo.k,
                geo.stride,
                self.backend.conv_path()
            );
            self.count_inner(key, started, call.flops());
        }
        Ok(done)
    }

    pub(super) fn conv_forward(
        &mut self,
        geo: &ConvGeo,
        x: u64,
        w: u64,
        out: u64,
    ) -> Result<(), ExecError> {
        if self.events_pay(geo, x)? {
            return self.conv_forward_events(geo, x, w, out);
        }
        if self.library_conv(geo, ConvPass::Forward, [x, w], out)? {
            return Ok(());
        }
        let (rows, cols) = (geo.rows(), geo.cols());
        self.conv_chunks(geo, &geo.per_sample(), |this, scratch, b0, cur| {
            let (cp, tp) = (scratch[0], scratch[1]);
            let out_b = at(out, b0 * geo.co * cols);
            this.im2col(geo, at(x, b0 * geo.in_len()), cp, cur)?;
            // outT[co × cur·cols] = W[co × rows] · col[rows × cur·cols];
            // one sample's is already its output.
            let c = if cur == 1 { out_b } else { tp };
            this.gemm(Gemm {
                ta: false,
                tb: false,
                m: geo.co,
                n: cur * cols,
                k: rows,
                alpha: 1.0,
                a: w,
                lda: rows,
                stride_a: 0,
                b: cp,
                ldb: cur * cols,
                stride_b: 0,
                beta: 0.0,
                c,
                ldc: cur * cols,
                stride_c: 0,
                batch: 1,
                precision: Precision::Fp32,
            })?;
            if cur == 1 {
                return Ok(());
            }
            this.swap(tp, out_b, geo.co, cur, cols)
        })
    }

    pub(super) fn conv_grad_input(
        &mut self,
        geo: &ConvGeo,
        d: u64,
        w: u64,
        out: u64,
    ) -> Result<(), ExecError> {
        use Arg::{I, P};
        if self.library_conv(geo, ConvPass::GradInput, [d, w], out)? {
            return Ok(());
        }
        let (rows, cols) = (geo.rows(), geo.cols());
        self.conv_chunks(geo, &geo.per_sample(), |this, scratch, b0, cur| {
            let (cp, tp) = (scratch[0], scratch[1]);
            let dt = this.channel_major(at(d, b0 * geo.co * cols), tp, cur, geo.co, cols)?;
            // dcol[rows × cur·cols] = Wᵀ · dT
            this.gemm(Gemm {
                ta: true,
                tb: false,
                m: rows,
                n: cur * cols,
                k: geo.co,
                alpha: 1.0,
                a: w,
                lda: rows,
                stride_a: 0,
                b: dt,
                ldb: cur * cols,
                stride_b: 0,
                beta: 0.0,
                c: cp,
                ldc: cur * cols,
                stride_c: 0,
                batch: 1,
                precision: Precision::Fp32,
            })?;
            let n = cur * geo.in_len();
            let mut args = vec![P(cp), P(at(out, b0 * geo.in_len()))];
            args.extend(geo.args(cur)?);
            args.push(I(int(n)?));
            this.launch("snnc_col2im", n, &args)
        })
    }

    pub(super) fn conv_grad_weight(
        &mut self,
        geo: &ConvGeo,
        x: u64,
        d: u64,
        out: u64,
    ) -> Result<(), ExecError> {
        if self.library_conv(geo, ConvPass::GradWeight, [x, d], out)? {
            return Ok(());
        }
        let (rows, cols) = (geo.rows(), geo.cols());
        self.conv_chunks(geo, &geo.per_sample(), |this, scratch, b0, cur| {
            let (cp, tp) = (scratch[0], scratch[1]);
            this.im2col(geo, at(x, b0 * geo.in_len()), cp, cur)?;
            let dt = this.channel_major(at(d, b0 * geo.co * cols), tp, cur, geo.co, cols)?;
            // dW[co × rows] (+)= dT[co × cur·cols] · colᵀ
            this.gemm(Gemm {
                ta: false,
                tb: true,
                m: geo.co,
                n: rows,
                k: cur * cols,
                alpha: 1.0,
                a: dt,
                lda: cur * cols,
                stride_a: 0,
                b: cp,
                ldb: cur * cols,
                stride_b: 0,
                beta: if b0 == 0 { 0.0 } else { 1.0 },
                c: out,
                ldc: rows,
                stride_c: 0,
                batch: 1,
                precision: Precision::Fp32,
            })
        })
    }
}

/// A convolution's geometry: input `[b, ci, h, w]`, `co` filters of
/// `k × k`, output `ho × wo`.
pub(super) struct ConvGeo {
    pub(super) b: usize,
    pub(super) ci: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) co: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl ConvGeo {
    /// How many samples one chunk holds when its im2col buffer may have
    /// `cap` elements (the transposed output beside it is smaller when
    /// `co < ci·k²`, as in every model's convolutions but a 1×1 projection).
    pub(super) fn chunk(&self, cap: usize) -> usize {
        (cap / (self.rows() * self.cols()).max(1)).clamp(1, self.b)
    }

    /// The geometry of a convolution (or gradient) op with operand shapes
    /// `ins` and output `shape`; `None` for other ops.
    pub(super) fn of(
        op: &Op,
        ins: &[&[usize]],
        shape: &[usize],
    ) -> Result<Option<ConvGeo>, ExecError> {
        let geo = match op {
            Op::Conv2d { stride, padding } => ConvGeo::new(
                ins[0], ins[1][0], ins[1][2], *stride, *padding, shape[2], shape[3],
            ),
            Op::Conv2dGradInput {
                stride, padding, ..
            } => {
                let (d, w) = (ins[0], ins[1]);
                ConvGeo::new(shape, w[0], w[2], *stride, *padding, d[2], d[3])
            }
            Op::Conv2dGradWeight {
                stride,
                padding,
                kernel,
            } => {
                let d = ins[1];
                ConvGeo::new(ins[0], d[1], *kernel, *stride, *padding, d[2], d[3])
            }
            _ => return Ok(None),
        };
        geo.map(Some)
    }

    pub(super) fn new(
        x: &[usize],
        co: usize,
        k: usize,
        stride: usize,
        pad: usize,
        ho: usize,
        wo: usize,
    ) -> Result<ConvGeo, ExecError> {
        if stride == 0 {
            return Err(ExecError::ZeroStride);
        }
        let geo = ConvGeo {
            b: x[0],
            ci: x[1],
            h: x[2],
            w: x[3],
            co,
            k,
            stride,
            pad,
            ho,
            wo,
        };
        int(geo.rows() * geo.cols())?;
        Ok(geo)
    }

    /// Floats of scratch per sample of a chunk, for every convolution op:
    /// its column matrix (rows × cols) and its output or incoming gradient
    /// transposed to channel-major order (co × cols).
    pub(super) fn per_sample(&self) -> [usize; 2] {
        [self.rows() * self.cols(), self.co * self.cols()]
    }

    /// The geometry as a backend's whole-convolution call.
    fn call(&self, pass: ConvPass, ins: [u64; 2], out: u64, moments: u64) -> ConvCall {
        ConvCall {
            pass,
            b: self.b,
            ci: self.ci,
            h: self.h,
            w: self.w,
            co: self.co,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
            ho: self.ho,
            wo: self.wo,
            ins,
            out,
            moments,
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.ci * self.k * self.k
    }

    pub(super) fn cols(&self) -> usize {
        self.ho * self.wo
    }

    /// Elements of one input sample.
    pub(super) fn in_len(&self) -> usize {
        self.ci * self.h * self.w
    }

    /// The geometry arguments of im2col/col2im: ci, h, w, k, s, pad, ho, wo, nb.
    pub(super) fn args(&self, nb: usize) -> Result<Vec<Arg>, ExecError> {
        [
            self.ci,
            self.h,
            self.w,
            self.k,
            self.stride,
            self.pad,
            self.ho,
            self.wo,
            nb,
        ]
        .iter()
        .map(|&v| int(v).map(Arg::I))
        .collect()
    }
}
