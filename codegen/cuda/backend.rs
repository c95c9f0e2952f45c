//! What the executor needs from a device, and the kernel table.
//!
//! Two implementations: [`super::device::Cuda`] (cudarc: a GPU, NVRTC,
//! cuBLAS) and [`super::emu::Emu`] (the same kernel source compiled as C++
//! and run sequentially on the CPU, cuBLAS replaced by a column-major SGEMM).
//! The executor is written once against this trait, so everything above
//! the device calls — scheduling, buffer lifetimes, launch arguments, GEMM
//! argument order, convolution chunking — runs and is tested without a GPU.

use super::gemm::Cublas;
use std::sync::LazyLock;

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

/// Every kernel of `kernels.cu` with its parameter signature: `p` pointer,
/// `i` int, `u` unsigned long long, `f` float, `d` double (`l`, long long,
/// is for generated kernels). The executor
/// checks each launch against this table (on every backend, so a GPU never
/// receives mistyped arguments); the emulator checks the table against the
/// C++ parameter types, and the NVRTC test against the PTX.
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
    ("snnc_pool", "ppiiiiiiii"),
    ("snnc_avgpool_grad", "ppiiiiiii"),
    ("snnc_maxpool_grad", "pppiiiiiii"),
    ("snnc_maxpool_mask", "ppiiiiiii"),
    ("snnc_chan_partial", "pppiiii"),
    ("snnc_chan_dot_partial", "pppiiii"),
    ("snnc_chan_finish", "ppiiid"),
    ("snnc_softmax_xent", "pppii"),
    ("snnc_softmax_xent_grad", "pppii"),
    ("snnc_im2col", "ppiiiiiiiiii"),
    ("snnc_col2im", "ppiiiiiiiiii"),
    ("snnc_bc_swap", "ppiiii"),
];

/// The kernel source (also compiled as C++ by the emulator): `kernels.cu`
/// with the elementwise kernels rendered from the op table in place of its
/// `@ELEMENTWISE@` line.
pub static KERNELS_CU: LazyLock<String> = LazyLock::new(|| {
    include_str!("kernels.cu").replace("// @ELEMENTWISE@\n", &super::elementwise::source())
});

/// The signature of `kernel` from [`KERNELS`].
pub fn signature(kernel: &str) -> Option<&'static str> {
    KERNELS.iter().find(|(k, _)| *k == kernel).map(|(_, s)| *s)
}

/// Checks `args` against `kernel`'s signature.
pub fn check_args(kernel: &str, args: &[Arg]) -> Result<(), String> {
    let sig = signature(kernel).ok_or_else(|| format!("unknown kernel `{kernel}`"))?;
    let got: String = args.iter().map(Arg::kind).collect();
    if got != sig {
        return Err(format!(
            "kernel `{kernel}` takes ({sig}) but was given ({got})"
        ));
    }
    Ok(())
}

/// A device the executor can run on. Buffers hold f32 elements; addresses
/// (`ptr`) are what kernels and GEMMs receive, so a view into a buffer is an
/// address plus 4 bytes per element.
pub trait Backend {
    type Buf;
    /// What this backend is, for messages.
    fn describe(&self) -> String;
    /// A buffer of `len` elements (contents undefined).
    fn alloc(&mut self, len: usize) -> Result<Self::Buf, String>;
    /// Releases a buffer.
    fn free(&mut self, buf: Self::Buf);
    fn ptr(&self, buf: &Self::Buf) -> u64;
    fn upload(&mut self, buf: &mut Self::Buf, data: &[f32]) -> Result<(), String>;
    /// The first `len` elements (waits for the work queued before).
    fn download(&mut self, buf: &Self::Buf, len: usize) -> Result<Vec<f32>, String>;
    /// Elements `[start, start + len)` (waits for the work queued before).
    fn download_range(
        &mut self,
        buf: &Self::Buf,
        start: usize,
        len: usize,
    ) -> Result<Vec<f32>, String>;
    /// Device-to-device copy of `len` elements.
    fn copy(&mut self, src: &Self::Buf, dst: &mut Self::Buf, len: usize) -> Result<(), String>;
    /// Launches `kernel` on a 1-D grid (`args` already checked).
    fn launch(
        &mut self,
        kernel: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<(), String>;
    fn gemm(&mut self, call: &Cublas) -> Result<(), String>;
    /// Waits for all queued work.
    fn sync(&mut self) -> Result<(), String>;
    /// The largest grid the executor should launch (grid-stride loops cover
    /// the rest).
    fn max_grid(&self) -> u32;
    /// (free, total) device memory, where the backend can tell.
    fn mem_info(&self) -> Option<(usize, usize)> {
        None
    }
    /// Writes 64-bit words (a generated kernel's pointer table) into a
    /// buffer of at least `2 · words.len()` elements.
    fn upload_words(&mut self, buf: &mut Self::Buf, words: &[u64]) -> Result<(), String> {
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
    /// Loads a module of generated kernels (`fused::Module`: render_cuda's
    /// ABI `(float *const *p, long long n, int t0, int t1, float *st)`) and
    /// returns its id; loading
    /// the same source again returns the same id without recompiling.
    fn load_module(&mut self, source: &str, names: &[String]) -> Result<usize, String>;
    /// Launches kernel `kernel` (an index into the `names` it was loaded
    /// with) of module `module` on a 1-D grid.
    fn launch_module(
        &mut self,
        module: usize,
        kernel: usize,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<(), String>;
    /// Records a point in the device's queue; [`Backend::elapsed`] gives the
    /// device time between two of them (timing single launches).
    fn mark(&mut self) -> Result<usize, String>;
    /// Seconds between marks `a` and `b` (waits for both).
    fn elapsed(&mut self, a: usize, b: usize) -> Result<f64, String>;
    /// Forgets every mark.
    fn clear_marks(&mut self);
}
