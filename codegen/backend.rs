//! What the executor (`codegen::exec`) needs from a target, and the
//! library kernels every target provides.
//!
//! A backend allocates memory (the arena, pointer tables, leaf buffers),
//! moves data, compiles a plan's generated kernels into a module and
//! launches them, and runs the library: the named kernels of [`KERNELS`]
//! (elementwise ops, pooling, reductions, im2col, …) and GEMMs. The
//! executor is written once against this trait, so everything above the
//! device calls — buffer lifetimes, arena offsets, launch arguments, GEMM
//! argument order, convolution chunking — is shared by every target.
//! Implementations: `cpu::Cpu` (host memory, the library compiled as C++
//! and run in parallel ranges, generated C, host SGEMM), `cuda::Cuda`
//! (cudarc: NVRTC, cuBLAS) and `cuda::Emu` (the CUDA source compiled as
//! C++ and run thread by thread on the CPU).

use crate::passes::fuse::Plan;
use crate::precision::Precision;

/// One kernel argument, passed by address as `cuLaunchKernel` expects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device address (`float*`, `double*`, …); 0 is a null pointer.
    P(u64),
    /// `int`
    I(i32),
    /// `unsigned long long`
    U(u64),
    /// `float`
    F(f32),
    /// `double`
    D(f64),
    /// `long long` (the element count of a generated kernel)
    L(i64),
}

impl Arg {
    /// The signature character of this argument (see [`KERNELS`]).
    pub fn kind(&self) -> char {
        match self {
            Arg::P(_) => 'p',
            Arg::I(_) => 'i',
            Arg::U(_) => 'u',
            Arg::F(_) => 'f',
            Arg::D(_) => 'd',
            Arg::L(_) => 'l',
        }
    }

    /// Address of the value, for a `void**` parameter array.
    pub fn as_mut_ptr(&mut self) -> *mut std::ffi::c_void {
        match self {
            Arg::P(v) | Arg::U(v) => v as *mut u64 as *mut _,
            Arg::I(v) => v as *mut i32 as *mut _,
            Arg::F(v) => v as *mut f32 as *mut _,
            Arg::D(v) => v as *mut f64 as *mut _,
            Arg::L(v) => v as *mut i64 as *mut _,
        }
    }
}

/// Every library kernel with its parameter signature: `p` pointer, `i`
/// int, `u` unsigned long long, `f` float, `d` double (`l`, long long, is
/// for generated kernels). The executor checks each launch against this
/// table (on every backend, so a GPU never receives mistyped arguments);
/// the emulator checks the table against the C++ parameter types, and the
/// NVRTC test against the PTX.
pub const KERNELS: &[(&str, &str)] = &[
    ("snnc_fill", "pif"),
    ("snnc_copy", "ppi"),
    ("snnc_add", "pppi"),
    ("snnc_sub", "pppi"),
    ("snnc_mul", "pppi"),
    ("snnc_scale", "ppif"),
    ("snnc_add_scalar", "ppif"),
    ("snnc_spike", "ppif"),
    ("snnc_surrogate_grad", "ppiddi"),
    ("snnc_rsqrt", "ppif"),
    ("snnc_bias_add", "pppiii"),
    ("snnc_channel_scale", "pppiii"),
    ("snnc_channel_broadcast", "ppiii"),
    ("snnc_normalize", "ppppiiif"),
    ("snnc_sum8", "piiifpppppppp"),
    ("snnc_poisson", "ppiuu"),
    ("snnc_dropout_mask", "pidfuu"),
    ("snnc_time_slice", "ppiiii"),
    ("snnc_pool", "ppiiiiiiiii"),
    ("snnc_avgpool_grad", "ppiiiiiiii"),
    ("snnc_avgpool_grad_mul", "pppiiiiiiii"),
    ("snnc_maxpool_grad", "pppiiiiiiii"),
    ("snnc_maxpool_mask", "ppiiiiiiii"),
    ("snnc_maxpool_select", "ppiiiiiiii"),
    ("snnc_maxpool_route", "pppiiiiiiii"),
    ("snnc_chan_partial", "pppiiii"),
    ("snnc_chan_dot_partial", "pppiiii"),
    ("snnc_chan_sum_dot_partial", "ppppiiii"),
    ("snnc_chan_finish", "ppiiid"),
    ("snnc_chan_moments_partial", "pppiiii"),
    ("snnc_chan_moments_finish", "pppiiid"),
    ("snnc_chan_moments_put", "pppii"),
    ("snnc_chan_var_moments", "pppid"),
    ("snnc_softmax_xent", "pppii"),
    ("snnc_softmax_xent_grad", "pppii"),
    ("snnc_im2col", "ppiiiiiiiiii"),
    ("snnc_col2im", "ppiiiiiiiiii"),
    ("snnc_bc_swap", "ppiiii"),
    ("snnc_conv_events", "pppiiiiiiiiii"),
    ("snnc_sgd_step", "pipiffff"),
    ("snnc_adamw_step", "pippidddddddf"),
    ("snnc_running_stat", "ppiff"),
    ("snnc_count_correct", "pppii"),
];

/// The signature of `kernel` from [`KERNELS`].
pub fn signature(kernel: &str) -> Option<&'static str> {
    KERNELS.iter().find(|(k, _)| *k == kernel).map(|(_, s)| *s)
}

/// Checks `args` against `kernel`'s signature.
pub fn check_args(kernel: &str, args: &[Arg]) -> Result<(), BackendError> {
    let sig = signature(kernel).ok_or_else(|| BackendError::UnknownKernel(kernel.to_string()))?;
    let got: String = args.iter().map(Arg::kind).collect();
    if got != sig {
        return Err(BackendError::Signature {
            kernel: kernel.to_string(),
            want: sig,
            got,
        });
    }
    Ok(())
}

/// What went wrong on a backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("unknown kernel `{0}`")]
    UnknownKernel(String),
    #[error("kernel `{kernel}` takes ({want}) but was given ({got})")]
    Signature {
        kernel: String,
        want: &'static str,
        got: String,
    },
    /// A launch, GEMM or copy with arguments the device would reject or
    /// that point outside live memory.
    #[error("{0}")]
    BadCall(String),
    /// Allocation failed (the device's message).
    #[error("out of memory: {0}")]
    Memory(String),
    /// Compiling or loading kernels failed (the compiler's or loader's
    /// message).
    #[error("{0}")]
    Compile(String),
    /// The driver or the device reported an error.
    #[error("{0}")]
    Device(String),
}

/// A plan's generated kernels as one translation unit, with the entry
/// point of each kernel in plan order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub source: String,
    pub names: Vec<String>,
    /// The content hash in the names (also the module cache key).
    pub hash: u64,
}

/// Which of a convolution's three computations a [`ConvCall`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    /// `ins` = (x, w), `out` = y.
    Forward,
    /// `ins` = (dy, w), `out` = dx.
    GradInput,
    /// `ins` = (x, dy), `out` = dw.
    GradWeight,
}

/// A whole 2-D convolution computation in f32 over the batch: input
/// `[b, ci, h, w]` (NCHW), `co` square filters of `k × k` (OIHW), stride
/// and padding the same along both axes, output `[b, co, ho, wo]`;
/// `ins` and `out` are device addresses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvCall {
    pub pass: ConvPass,
    pub b: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
    pub ins: [u64; 2],
    pub out: u64,
    /// Zero, or for a forward whose output feeds batch-norm statistics:
    /// where the backend may also write the output's per-channel Σx and
    /// Σx² (`2·co` doubles, Σx first), summed while the output is in
    /// cache ([`Backend::conv_wrote_moments`] says whether it did).
    pub moments: u64,
}

impl ConvCall {
    /// Multiply-adds times two, as for a GEMM.
    pub fn flops(&self) -> f64 {
        2.0 * (self.b * self.co * self.ci * self.k * self.k * self.ho * self.wo) as f64
    }
}

/// `C[m×n] = α·op(A)·op(B) + β·C`, row-major, `batch` times with element
/// strides between the matrices of a batch. `a`, `b`, `c` are device
/// addresses (bytes); `lda`, `ldb`, `ldc` are row strides in elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub ta: bool,
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: u64,
    pub lda: usize,
    pub stride_a: usize,
    pub b: u64,
    pub ldb: usize,
    pub stride_b: usize,
    pub beta: f32,
    pub c: u64,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    /// What A and B are rounded to before they are multiplied (products
    /// accumulate in f32). The executor sets the run's precision on every
    /// call.
    pub precision: Precision,
}

impl Gemm {
    /// A single (unbatched) product with dense operands: `op(A)` is `m×k`,
    /// `op(B)` is `k×n`, each stored with its natural row length.
    #[allow(clippy::too_many_arguments)]
    pub fn dense(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: u64, b: u64, c: u64) -> Gemm {
        Gemm {
            ta,
            tb,
            m,
            n,
            k,
            alpha: 1.0,
            a,
            lda: if ta { m } else { k },
            stride_a: 0,
            b,
            ldb: if tb { k } else { n },
            stride_b: 0,
            beta: 0.0,
            c,
            ldc: n,
            stride_c: 0,
            batch: 1,
            precision: Precision::Fp32,
        }
    }

    /// The elements of A and of B (from their base addresses, row-major
    /// with the call's leading dimensions and batch strides) the call
    /// reads.
    pub fn operand_extents(&self) -> (usize, usize) {
        let span = |rows: usize, cols: usize, ld: usize, stride: usize| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (rows - 1) * ld + cols + (self.batch - 1) * stride
            }
        };
        let (ra, ca) = if self.ta {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (rb, cb) = if self.tb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        (
            span(ra, ca, self.lda, self.stride_a),
            span(rb, cb, self.ldb, self.stride_b),
        )
    }

    /// For a host backend without tensor cores: the same call reading
    /// copies of A and B rounded to `self.precision`, made in `scratch`,
    /// with f32 products (what the rounded call computes). Calls in f32
    /// come back unchanged.
    ///
    /// # Safety
    /// `a` and `b` must be host addresses of f32 buffers holding at least
    /// [`Gemm::operand_extents`] elements. The returned call reads
    /// `scratch`, which must outlive it unchanged.
    pub unsafe fn with_rounded_operands(&self, scratch: &mut Vec<f32>) -> Gemm {
        if self.precision == Precision::Fp32 {
            return *self;
        }
        let (ea, eb) = self.operand_extents();
        scratch.clear();
        scratch.extend_from_slice(std::slice::from_raw_parts(self.a as *const f32, ea));
        scratch.extend_from_slice(std::slice::from_raw_parts(self.b as *const f32, eb));
        self.precision.round_all(scratch);
        let base = scratch.as_ptr();
        Gemm {
            a: base as u64,
            b: base.add(ea) as u64,
            precision: Precision::Fp32,
            ..*self
        }
    }
}

/// A target the executor runs on. Buffers hold f32 elements; addresses
/// (`ptr`) are what kernels and GEMMs receive, so a view into a buffer is
/// an address plus 4 bytes per element.
pub trait Backend {
    type Buf;
    /// What this backend is, for messages.
    fn describe(&self) -> String;
    /// A buffer of `len` elements (contents undefined).
    fn alloc(&mut self, len: usize) -> Result<Self::Buf, BackendError>;
    /// Releases a buffer.
    fn free(&mut self, buf: Self::Buf);
    fn ptr(&self, buf: &Self::Buf) -> u64;
    fn upload(&mut self, buf: &mut Self::Buf, data: &[f32]) -> Result<(), BackendError>;
    /// The first `len` elements (waits for the work queued before).
    fn download(&mut self, buf: &Self::Buf, len: usize) -> Result<Vec<f32>, BackendError>;
    /// Elements `[start, start + len)` (waits for the work queued before).
    fn download_range(
        &mut self,
        buf: &Self::Buf,
        start: usize,
        len: usize,
    ) -> Result<Vec<f32>, BackendError>;
    /// Device-to-device copy of `len` elements.
    fn copy(
        &mut self,
        src: &Self::Buf,
        dst: &mut Self::Buf,
        len: usize,
    ) -> Result<(), BackendError>;
    /// Launches library kernel `kernel` on a 1-D grid (`args` already
    /// checked against [`KERNELS`]).
    fn launch(
        &mut self,
        kernel: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<(), BackendError>;
    fn gemm(&mut self, call: &Gemm) -> Result<(), BackendError>;
    /// Runs a whole convolution computation on a library convolution
    /// where this backend has one for it; false where it does not (the
    /// executor then runs it as im2col or col2im and GEMMs).
    fn conv(&mut self, call: &ConvCall) -> Result<bool, BackendError> {
        let _ = call;
        Ok(false)
    }
    /// Whether [`Backend::conv`] runs convolutions on a library (where it
    /// does, the dense path is faster and events pay only at lower
    /// densities: `exec::EVENT_DENSITY_LIBRARY`).
    fn library_conv(&self) -> bool {
        false
    }
    /// The library path the last [`Backend::conv`] that ran took, for the
    /// profile (the CPU's: `library`, or `library, AMX bf16×3`).
    fn conv_path(&self) -> &'static str {
        "library"
    }
    /// Whether [`Backend::conv`] may write a forward's moments to
    /// [`ConvCall::moments`] (the executor then gives it a place).
    fn conv_sums_moments(&self) -> bool {
        false
    }
    /// Whether the last [`Backend::conv`] that ran wrote its output's
    /// moments to [`ConvCall::moments`] (the CPU's AMX path and direct
    /// kernels do).
    fn conv_wrote_moments(&self) -> bool {
        false
    }
    /// Waits for all queued work.
    fn sync(&mut self) -> Result<(), BackendError>;
    /// The largest grid the executor should launch (grid-stride loops cover
    /// the rest).
    fn max_grid(&self) -> u32;
    /// The cap on the im2col workspace of one convolution chunk (elements)
    /// that suits this target: large chunks make few large GEMMs on a GPU;
    /// on a CPU a chunk should stay in cache while its GEMM reads it.
    fn conv_workspace(&self) -> usize {
        crate::codegen::exec::CONV_WORKSPACE
    }
    /// Where the executor's memory lives, for the check that a plan fits
    /// before anything is allocated: device memory (its free bytes from
    /// [`Backend::mem_info`]) unless the backend says otherwise.
    fn memory(&self) -> crate::passes::mem::Memory {
        crate::passes::mem::Memory::Device {
            free: self.mem_info().map(|(free, _)| free as u64),
        }
    }
    /// (free, total) device memory, where the backend can tell.
    fn mem_info(&self) -> Option<(usize, usize)> {
        None
    }
    /// The fraction of the `len` elements at `x` that are not zero, when
    /// this backend runs convolutions over sparse inputs as events
    /// (`snnc_conv_events`) below [`crate::codegen::exec::default_event_density`];
    /// `None` where the dense GEMM always pays (a GPU). Where the fraction
    /// exceeds `stop_above` the backend may stop counting and return any
    /// value above it (the caller only compares).
    fn nonzero_fraction(
        &mut self,
        x: u64,
        len: usize,
        stop_above: f64,
    ) -> Result<Option<f64>, BackendError> {
        let _ = (x, len, stop_above);
        Ok(None)
    }
    /// Writes 64-bit words (a generated kernel's pointer table) into a
    /// buffer of at least `2 · words.len()` elements.
    fn upload_words(&mut self, buf: &mut Self::Buf, words: &[u64]) -> Result<(), BackendError> {
        // Two f32 bit patterns per word, in memory order. Copies move the
        // bits unchanged (no arithmetic touches them), so the buffer ends up
        // holding the words.
        let mut bits = Vec::with_capacity(2 * words.len());
        for w in words {
            let b = w.to_ne_bytes();
            bits.push(f32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            bits.push(f32::from_ne_bytes([b[4], b[5], b[6], b[7]]));
        }
        self.upload(buf, &bits)
    }
    /// The translation unit of `plan`'s generated kernels in this target's
    /// language, for [`Backend::load_module`].
    fn render(&self, plan: &Plan) -> Module;
    /// Compiles (or finds in its cache) and loads a module of generated
    /// kernels ([`Backend::render`]: the ABI `(float *const *p, long long
    /// n, int t0, int t1, float *st)`) and returns its id; loading the same
    /// source again returns the same id without recompiling.
    fn load_module(&mut self, source: &str, names: &[String]) -> Result<usize, BackendError>;
    /// Launches kernel `kernel` (an index into the `names` it was loaded
    /// with) of module `module` on a 1-D grid.
    fn launch_module(
        &mut self,
        module: usize,
        kernel: usize,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<(), BackendError>;
    /// Records a point in the device's queue; [`Backend::elapsed`] gives the
    /// device time between two of them (timing single launches).
    fn mark(&mut self) -> Result<usize, BackendError>;
    /// Seconds between marks `a` and `b` (waits for both).
    fn elapsed(&mut self, a: usize, b: usize) -> Result<f64, BackendError>;
    /// Forgets every mark.
    fn clear_marks(&mut self);
}
