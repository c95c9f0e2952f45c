//! The GPU backend: cudarc's driver API, NVRTC and cuBLAS.
//!
//! Every cudarc library is loaded at run time (`dynamic-loading`), and cudarc
//! panics when a library or symbol is missing, so [`probe`] checks each
//! library with `is_culib_present()` first and wraps the rest in
//! `catch_unwind`: without a GPU or CUDA libraries it returns an error that
//! says what was looked for, never a panic.
//!
//! One context (device 0), its default stream, event tracking off (one
//! stream: stream order is the only synchronisation needed), one cuBLAS
//! handle on that stream in its default (full FP32) math mode.

use super::gemm::Cublas;
use super::nvrtc;
use super::KERNELS_CU;
use crate::codegen::backend::{Arg, Backend, BackendError, Gemm, Module, KERNELS};
use crate::passes::fuse::Plan;
use crate::precision::Precision;
use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    result as drv_result, sys as drv_sys, CudaContext, CudaEvent, CudaFunction, CudaModule,
    CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// What [`probe`] found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    pub free_mem: usize,
    /// cuDriverGetVersion, e.g. 13000.
    pub driver_version: i32,
    pub nvrtc_version: (i32, i32),
    /// The CUDA libraries mapped into this process (from /proc/self/maps).
    pub libraries: Vec<String>,
}

impl DeviceInfo {
    /// The NVRTC target for this device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {}: {} ({}), {:.1} GiB ({:.1} GiB free), driver CUDA {}.{}, NVRTC {}.{}",
            self.ordinal,
            self.name,
            self.arch(),
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.free_mem as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            (self.driver_version % 1000) / 10,
            self.nvrtc_version.0,
            self.nvrtc_version.1
        )?;
        for l in &self.libraries {
            write!(f, "\n  loaded {l}")?;
        }
        Ok(())
    }
}

/// cuBLAS's operation for a transposed (`true`) or plain operand.
fn op(transposed: bool) -> blas_sys::cublasOperation_t {
    if transposed {
        blas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// Folders where CUDA libraries usually are: LD_LIBRARY_PATH, the toolkit,
/// the system's, Python wheels (PyTorch's `nvidia-*` packages).
fn usual_lib_dirs() -> Vec<std::path::PathBuf> {
    use std::path::PathBuf;
    let mut dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/nvidia/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
    ] {
        dirs.push(PathBuf::from(d));
    }
    // <prefix>/lib/python3.*/site-packages/nvidia/*/lib
    let sub = |p: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    for prefix in ["/opt/torch/.venv/lib", "/usr/local/lib", "/usr/lib"] {
        for py in sub(std::path::Path::new(prefix)) {
            if !py
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
            {
                continue;
            }
            for pkgs in ["site-packages", "dist-packages"] {
                for pkg in sub(&py.join(pkgs).join("nvidia")) {
                    dirs.push(pkg.join("lib"));
                }
            }
        }
    }
    dirs
}

/// The message for a CUDA library cudarc cannot load: the names it tried,
/// and the files of that library found in the usual folders, with how to
/// make them loadable.
pub fn missing_library(lib: &str) -> String {
    let names = cudarc::get_lib_name_candidates(lib);
    let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let prefix = format!("lib{lib}.so");
    let mut found: Vec<String> = usual_lib_dirs()
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|r| r.filter_map(|e| e.ok().map(|e| e.path())))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .map(|p| p.display().to_string())
        .collect();
    found.sort();
    found.dedup();
    let hint = if lib == "cuda" {
        "libcuda.so.1 comes with the NVIDIA driver: no driver (or no GPU) here".to_string()
    } else {
        format!(
            "this build looks for CUDA 12 names; CUDA 13 ships lib{lib}.so.13: put a symlink \
             named lib{lib}.so to it in a folder on LD_LIBRARY_PATH, as scripts/gpu-check.sh does"
        )
    };
    let mut msg = format!(
        "lib{lib} could not be loaded ({hint}). cudarc tried: {}. LD_LIBRARY_PATH={}",
        names.join(", "),
        if ld.is_empty() { "(unset)" } else { &ld }
    );
    if let Some(f) = found.iter().find(|f| !f.ends_with(".so")) {
        let dir = std::path::Path::new(f)
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        msg.push_str(&format!(
            ". Found {}; to use {f}: mkdir -p /tmp/snnc-libs && ln -sf {f} /tmp/snnc-libs/lib{lib}.so \
             && export LD_LIBRARY_PATH=/tmp/snnc-libs:{dir}:$LD_LIBRARY_PATH",
            found.join(", ")
        ));
    }
    msg
}

fn lib_present(lib: &str) -> Result<(), BackendError> {
    // SAFETY: these only try to dlopen the candidate names.
    let ok = unsafe {
        match lib {
            "cuda" => drv_sys::is_culib_present(),
            "cublas" => blas_sys::is_culib_present(),
            _ => cudarc::nvrtc::sys::is_culib_present(),
        }
    };
    if ok {
        Ok(())
    } else {
        Err(BackendError::Device(missing_library(lib)))
    }
}

/// Runs `f`, turning a panic inside cudarc into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(BackendError::Device(format!(
                "{what}: cudarc panicked: {msg}"
            )))
        }
    }
}

/// The CUDA libraries mapped into this process.
fn loaded_libraries() -> Vec<String> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            ["libcuda.so", "libnvrtc", "libcublas"]
                .iter()
                .any(|k| p.contains(k))
        })
        .map(str::to_string)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// Is a usable GPU here, with the driver, NVRTC and cuBLAS? Never panics.
pub fn probe() -> Result<DeviceInfo, BackendError> {
    guarded("probe", || {
        lib_present("cuda")?;
        drv_result::init().map_err(|e| {
            BackendError::Device(format!("cuInit failed: {e} (no usable GPU or driver)"))
        })?;
        let count = drv_result::device::get_count()
            .map_err(|e| BackendError::Device(format!("cuDeviceGetCount failed: {e}")))?;
        if count < 1 {
            return Err(BackendError::Device(
                "the CUDA driver reports no device".into(),
            ));
        }
        let mut driver_version = 0;
        // SAFETY: libcuda is loaded and initialised; valid out pointer.
        unsafe { drv_sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(|e| BackendError::Device(format!("cuDriverGetVersion failed: {e}")))?;
        let ctx = CudaContext::new(0).map_err(|e| {
            BackendError::Device(format!("cannot create a context on device 0: {e}"))
        })?;
        let name = ctx
            .name()
            .map_err(|e| BackendError::Device(e.to_string()))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(|e| BackendError::Device(e.to_string()))?;
        let (free_mem, total_mem) = ctx
            .mem_get_info()
            .map_err(|e| BackendError::Device(e.to_string()))?;
        lib_present("nvrtc")?;
        let nvrtc_version = nvrtc::version().map_err(|e| BackendError::Compile(e.to_string()))?;
        lib_present("cublas")?;
        Ok(DeviceInfo {
            ordinal: 0,
            name,
            compute_capability,
            total_mem,
            free_mem,
            driver_version,
            nvrtc_version,
            libraries: loaded_libraries(),
        })
    })
}

/// A buffer on the GPU.
#[derive(Debug)]
pub struct CudaBuf {
    slice: CudaSlice<f32>,
    ptr: u64,
}

pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<&'static str, CudaFunction>,
    _module: Arc<CudaModule>,
    pub info: DeviceInfo,
    /// How the kernels were obtained (compiled or cached, CUBIN or PTX).
    pub kernels_note: String,
    /// Modules of generated kernels and their functions, in load order.
    modules: Vec<(Arc<CudaModule>, Vec<CudaFunction>)>,
    /// Module source hash → index into `modules`.
    module_ids: HashMap<u64, usize>,
    /// How each generated module was obtained, for messages.
    pub module_notes: Vec<String>,
    marks: Vec<CudaEvent>,
}

/// Loads NVRTC's output: the CUBIN when there is one (no driver JIT, works
/// when NVRTC is newer than the driver), else the PTX. Returns the module
/// and which form was loaded.
fn load_compiled(
    ctx: &Arc<CudaContext>,
    compiled: &nvrtc::Compiled,
) -> Result<(Arc<CudaModule>, &'static str), BackendError> {
    match &compiled.cubin {
        Some(cubin) => match ctx.load_module(Ptx::from_binary(cubin.clone())) {
            Ok(m) => Ok((m, "CUBIN")),
            Err(e1) => {
                let m = ctx
                    .load_module(Ptx::from_src(compiled.ptx.clone()))
                    .map_err(|e2| {
                        BackendError::Compile(format!(
                            "loading the module failed: CUBIN {e1}, PTX {e2}"
                        ))
                    })?;
                Ok((m, "PTX (CUBIN refused)"))
            }
        },
        None => Ok((
            ctx.load_module(Ptx::from_src(compiled.ptx.clone()))
                .map_err(|e| {
                    BackendError::Compile(format!("loading the module's PTX failed: {e}"))
                })?,
            "PTX",
        )),
    }
}

impl Cuda {
    /// Probes the device, compiles (or loads from the cache) the kernels for
    /// its architecture and creates the cuBLAS handle.
    pub fn new() -> Result<Cuda, BackendError> {
        let info = probe()?;
        guarded("CUDA set-up", || {
            let ctx = CudaContext::new(0)
                .map_err(|e| BackendError::Device(format!("cannot create a context: {e}")))?;
            // One stream, so stream order is all the synchronisation needed;
            // without this cudarc records two events per buffer use.
            // SAFETY: set before any buffer is allocated.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.default_stream();
            let arch = info.arch();
            let started = std::time::Instant::now();
            let compiled =
                nvrtc::compile_cached(&KERNELS_CU, "snnc_kernels", &nvrtc::options(&arch))
                    .map_err(|e| BackendError::Compile(e.to_string()))?;
            let secs = started.elapsed().as_secs_f64();
            let (module, form) = load_compiled(&ctx, &compiled)?;
            let mut funcs = HashMap::new();
            for (k, _) in KERNELS {
                let f = module.load_function(k).map_err(|e| {
                    BackendError::Device(format!("kernel `{k}` not found in the module: {e}"))
                })?;
                funcs.insert(*k, f);
            }
            let blas = CudaBlas::new(stream.clone())
                .map_err(|e| BackendError::Device(format!("cuBLAS: {e}")))?;
            // SAFETY: valid handle; full FP32 (no TF32) is the default, set
            // explicitly so that no environment changes it.
            unsafe {
                blas_sys::cublasSetMathMode(
                    *blas.handle(),
                    blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
                )
            }
            .result()
            .map_err(|e| BackendError::Device(format!("cublasSetMathMode: {e}")))?;
            let kernels_note = format!(
                "{} kernels for {arch}, {form}, {}",
                KERNELS.len(),
                if compiled.cached {
                    format!("from the cache in {}", nvrtc::cache_dir().display())
                } else {
                    format!("compiled by NVRTC in {secs:.2} s")
                }
            );
            let mut info = info.clone();
            info.libraries = loaded_libraries();
            Ok(Cuda {
                ctx,
                stream,
                blas,
                funcs,
                _module: module,
                info,
                kernels_note,
                modules: Vec::new(),
                module_ids: HashMap::new(),
                module_notes: Vec::new(),
                marks: Vec::new(),
            })
        })
    }

    /// Any error recorded by cudarc where it could not return one (drops).
    pub fn check_err(&self) -> Result<(), BackendError> {
        self.ctx
            .check_err()
            .map_err(|e| BackendError::Device(format!("CUDA error: {e}")))
    }
}

impl Cuda {
    /// A reduced-precision product: `cublasGemmEx` (or its strided-batched
    /// form) on the f32 matrices, with the compute type that has cuBLAS
    /// round A and B to TF32 or bf16 for the tensor cores and accumulate in
    /// f32 (the rounding `crate::precision` emulates on the host).
    fn gemm_ex(&mut self, c: &Cublas) -> Result<(), BackendError> {
        use blas_sys::{cublasComputeType_t as Compute, cublasGemmAlgo_t, cudaDataType};
        let compute = match c.precision {
            Precision::Tf32 => Compute::CUBLAS_COMPUTE_32F_FAST_TF32,
            Precision::Bf16 => Compute::CUBLAS_COMPUTE_32F_FAST_16BF,
            Precision::Fp32 => Compute::CUBLAS_COMPUTE_32F,
        };
        let f32_ = cudaDataType::CUDA_R_32F;
        let algo = cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        let (alpha, beta) = (
            &c.alpha as *const f32 as *const _,
            &c.beta as *const f32 as *const _,
        );
        let h = *self.blas.handle();
        // SAFETY: as for `sgemm` (validated arguments, live device
        // buffers, host scalars); the data types are f32 throughout, as
        // the buffers hold.
        let r = unsafe {
            if c.batch == 1 {
                blas_result::gemm_ex(
                    h,
                    op(c.transa),
                    op(c.transb),
                    c.m,
                    c.n,
                    c.k,
                    alpha,
                    c.a as *const _,
                    f32_,
                    c.lda,
                    c.b as *const _,
                    f32_,
                    c.ldb,
                    beta,
                    c.c as *mut _,
                    f32_,
                    c.ldc,
                    compute,
                    algo,
                )
            } else {
                blas_result::gemm_strided_batched_ex(
                    h,
                    op(c.transa),
                    op(c.transb),
                    c.m,
                    c.n,
                    c.k,
                    alpha,
                    c.a as *const _,
                    f32_,
                    c.lda,
                    c.stride_a,
                    c.b as *const _,
                    f32_,
                    c.ldb,
                    c.stride_b,
                    beta,
                    c.c as *mut _,
                    f32_,
                    c.ldc,
                    c.stride_c,
                    c.batch,
                    compute,
                    algo,
                )
            }
        };
        r.map_err(|e| BackendError::Device(format!("cuBLAS gemm ({}) {c:?}: {e}", c.precision)))
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;

    fn describe(&self) -> String {
        self.info.to_string()
    }

    fn alloc(&mut self, len: usize) -> Result<CudaBuf, BackendError> {
        // SAFETY: contents are undefined until written (the executor writes
        // every element before reading it, or fills it when poisoning).
        let slice = unsafe { self.stream.alloc::<f32>(len.max(1)) }
            .map_err(|e| BackendError::Device(e.to_string()))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(&self.stream);
            p
        };
        Ok(CudaBuf { slice, ptr })
    }

    fn free(&mut self, buf: CudaBuf) {
        drop(buf);
    }

    fn ptr(&self, buf: &CudaBuf) -> u64 {
        buf.ptr
    }

    fn upload(&mut self, buf: &mut CudaBuf, data: &[f32]) -> Result<(), BackendError> {
        if data.len() > buf.slice.len() {
            return Err(BackendError::Device(format!(
                "upload of {} elements into {}",
                data.len(),
                buf.slice.len()
            )));
        }
        self.stream
            .memcpy_htod(data, &mut buf.slice)
            .map_err(|e| BackendError::Device(format!("host-to-device copy: {e}")))
    }

    fn download(&mut self, buf: &CudaBuf, len: usize) -> Result<Vec<f32>, BackendError> {
        if len > buf.slice.len() {
            return Err(BackendError::Device(format!(
                "download of {len} elements from {}",
                buf.slice.len()
            )));
        }
        let mut out = vec![0f32; len];
        if len > 0 {
            self.stream
                .memcpy_dtoh(&buf.slice.slice(0..len), &mut out)
                .map_err(|e| BackendError::Device(format!("device-to-host copy: {e}")))?;
        }
        self.sync()?;
        Ok(out)
    }

    fn download_range(
        &mut self,
        buf: &CudaBuf,
        start: usize,
        len: usize,
    ) -> Result<Vec<f32>, BackendError> {
        if start + len > buf.slice.len() {
            return Err(BackendError::Device(format!(
                "download of [{start}, {}) from {}",
                start + len,
                buf.slice.len()
            )));
        }
        let mut out = vec![0f32; len];
        if len > 0 {
            self.stream
                .memcpy_dtoh(&buf.slice.slice(start..start + len), &mut out)
                .map_err(|e| BackendError::Device(format!("device-to-host copy: {e}")))?;
        }
        self.sync()?;
        Ok(out)
    }

    fn copy(&mut self, src: &CudaBuf, dst: &mut CudaBuf, len: usize) -> Result<(), BackendError> {
        if len > src.slice.len() || len > dst.slice.len() {
            return Err(BackendError::BadCall("copy past a buffer's end".into()));
        }
        self.stream
            .memcpy_dtod(&src.slice.slice(0..len), &mut dst.slice.slice_mut(0..len))
            .map_err(|e| BackendError::Device(format!("device-to-device copy: {e}")))
    }

    fn launch(
        &mut self,
        kernel: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        let f = self
            .funcs
            .get(kernel)
            .ok_or_else(|| BackendError::Device(format!("unknown kernel `{kernel}`")))?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(v) | Arg::U(v) => b.arg(v),
                Arg::I(v) => b.arg(v),
                Arg::F(v) => b.arg(v),
                Arg::D(v) => b.arg(v),
                Arg::L(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the executor checked the arguments against the kernel's
        // signature; pointers are live device buffers.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| {
            BackendError::Device(format!(
                "launching {kernel} (grid {grid}, block {block}): {e}"
            ))
        })
    }

    fn gemm(&mut self, g: &Gemm) -> Result<(), BackendError> {
        let c = &g.to_cublas()?;
        let h = *self.blas.handle();
        // SAFETY: validated arguments; addresses of live device buffers
        // whose extents the executor computed; alpha/beta on the host
        // (the handle's default pointer mode).
        if c.precision != Precision::Fp32 {
            return self.gemm_ex(c);
        }
        let r = unsafe {
            if c.batch == 1 {
                blas_result::sgemm(
                    h,
                    op(c.transa),
                    op(c.transb),
                    c.m,
                    c.n,
                    c.k,
                    &c.alpha,
                    c.a as *const f32,
                    c.lda,
                    c.b as *const f32,
                    c.ldb,
                    &c.beta,
                    c.c as *mut f32,
                    c.ldc,
                )
            } else {
                blas_result::sgemm_strided_batched(
                    h,
                    op(c.transa),
                    op(c.transb),
                    c.m,
                    c.n,
                    c.k,
                    &c.alpha,
                    c.a as *const f32,
                    c.lda,
                    c.stride_a,
                    c.b as *const f32,
                    c.ldb,
                    c.stride_b,
                    &c.beta,
                    c.c as *mut f32,
                    c.ldc,
                    c.stride_c,
                    c.batch,
                )
            }
        };
        r.map_err(|e| BackendError::Device(format!("cuBLAS sgemm {c:?}: {e}")))
    }

    fn sync(&mut self) -> Result<(), BackendError> {
        self.stream
            .synchronize()
            .map_err(|e| BackendError::Device(format!("stream synchronize: {e}")))?;
        self.check_err()
    }

    fn max_grid(&self) -> u32 {
        65535
    }

    fn render(&self, plan: &Plan) -> Module {
        super::fused::module(plan)
    }

    fn load_module(&mut self, source: &str, names: &[String]) -> Result<usize, BackendError> {
        let key = nvrtc::fnv1a(&[source.as_bytes()]);
        if let Some(&id) = self.module_ids.get(&key) {
            return Ok(id);
        }
        let arch = self.info.arch();
        let ctx = self.ctx.clone();
        let (module, funcs, note) = guarded("loading generated kernels", || {
            let started = std::time::Instant::now();
            let compiled = nvrtc::compile_cached(source, "snnc_fused", &nvrtc::options(&arch))
                .map_err(|e| BackendError::Compile(e.to_string()))?;
            let secs = started.elapsed().as_secs_f64();
            let (module, form) = load_compiled(&ctx, &compiled)?;
            let funcs = names
                .iter()
                .map(|k| {
                    module.load_function(k).map_err(|e| {
                        BackendError::Compile(format!(
                            "generated kernel `{k}` not found in its module: {e}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let note = format!(
                "{} generated kernels for {arch}, {form}, {}",
                names.len(),
                if compiled.cached {
                    "from the cache".to_string()
                } else {
                    format!("compiled by NVRTC in {secs:.2} s")
                }
            );
            Ok((module, funcs, note))
        })?;
        self.modules.push((module, funcs));
        self.module_notes.push(note);
        self.module_ids.insert(key, self.modules.len() - 1);
        Ok(self.modules.len() - 1)
    }

    fn launch_module(
        &mut self,
        module: usize,
        kernel: usize,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        let f = self
            .modules
            .get(module)
            .and_then(|(_, fs)| fs.get(kernel))
            .ok_or_else(|| {
                BackendError::Device(format!("no kernel {kernel} in module {module}"))
            })?;
        let (table, n, t0, t1, st) = match args {
            [Arg::P(t), Arg::L(n), Arg::I(t0), Arg::I(t1), Arg::P(st)] => (*t, *n, *t0, *t1, *st),
            _ => {
                return Err(BackendError::BadCall(
                    "a generated kernel takes (pointer table, long long n, \
                     int t0, int t1, state)"
                        .into(),
                ))
            }
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(&table);
        b.arg(&n);
        b.arg(&t0);
        b.arg(&t1);
        b.arg(&st);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel's ABI is (float *const *, long long, int, int,
        // float *), which these values match; the table, the tensors it
        // points to and the state (or null) are live device buffers.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| {
            BackendError::Device(format!(
                "launching generated kernel {kernel} (grid {grid}, block {block}): {e}"
            ))
        })
    }

    fn mark(&mut self) -> Result<usize, BackendError> {
        let e = self
            .stream
            .record_event(Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| BackendError::Device(format!("recording an event: {e}")))?;
        self.marks.push(e);
        Ok(self.marks.len() - 1)
    }

    fn elapsed(&mut self, a: usize, b: usize) -> Result<f64, BackendError> {
        match (self.marks.get(a), self.marks.get(b)) {
            (Some(x), Some(y)) => x
                .elapsed_ms(y)
                .map(|ms| f64::from(ms) / 1e3)
                .map_err(|e| BackendError::Device(format!("event timing: {e}"))),
            _ => Err(BackendError::Device(format!("no marks {a} and {b}"))),
        }
    }

    fn clear_marks(&mut self) {
        self.marks.clear();
    }

    fn mem_info(&self) -> Option<(usize, usize)> {
        self.ctx.mem_get_info().ok()
    }
}
