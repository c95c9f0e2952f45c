//! oneDNN's version-2 C API as the CPU backend calls it (dlopened at run
//! time from the library the SGEMM probe found): the types and constants
//! of `dnnl_types.h` it needs, the functions, one engine per process.
//! `conv.rs` (f32 convolutions) and `conv_bf16.rs` (AMX) share it.

use super::sgemm::system::{self, Kind};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub(super) type Handle = *mut c_void;
pub(super) type Status = c_int;

/// `dnnl_memory_desc_t`: 696 bytes in oneDNN 2.6; the library fills it,
/// so room to spare costs nothing.
#[repr(C, align(8))]
pub(super) struct Md(pub(super) [u8; 2048]);

/// `dnnl_convolution_desc_t`: 5,976 bytes in oneDNN 2.6.
#[repr(C, align(8))]
pub(super) struct OpDesc(pub(super) [u8; 16384]);

#[repr(C)]
pub(super) struct ExecArg {
    pub(super) arg: c_int,
    pub(super) memory: Handle,
}

/// `dnnl_dims_t`: up to 12 extents.
pub(super) type Dims = [i64; 12];

// The constants of oneDNN 2.x's `dnnl_types.h`.
pub(super) const F32: c_int = 3;
pub(super) const BF16: c_int = 2;
pub(super) const TAG_ANY: c_int = 1;
/// `dnnl_nchw` and `dnnl_oihw` (both `abcd`).
pub(super) const TAG_ABCD: c_int = 5;
/// `dnnl_nhwc` (`acdb`).
pub(super) const TAG_ACDB: c_int = 20;
pub(super) const ENGINE_CPU: c_int = 1;
pub(super) const STREAM_DEFAULT: u32 = 1;
pub(super) const FORWARD_TRAINING: c_int = 64;
pub(super) const CONVOLUTION_DIRECT: c_int = 1;
pub(super) const ARG_SRC: c_int = 1;
pub(super) const ARG_DST: c_int = 17;
pub(super) const ARG_WEIGHTS: c_int = 33;
pub(super) const ARG_DIFF_SRC: c_int = 129;
pub(super) const ARG_DIFF_DST: c_int = 145;
pub(super) const ARG_DIFF_WEIGHTS: c_int = 161;
pub(super) const ARG_FROM: c_int = ARG_SRC;
pub(super) const ARG_TO: c_int = ARG_DST;
pub(super) const QUERY_IMPL_INFO_STR: c_int = 8;
pub(super) const QUERY_SRC_MD: c_int = 129;
pub(super) const QUERY_DIFF_SRC_MD: c_int = 130;
pub(super) const QUERY_WEIGHTS_MD: c_int = 131;
pub(super) const QUERY_DIFF_WEIGHTS_MD: c_int = 132;
pub(super) const QUERY_DST_MD: c_int = 133;
pub(super) const QUERY_DIFF_DST_MD: c_int = 134;

/// The oneDNN functions this module calls (C types as in `dnnl.h`).
pub(super) struct Api {
    pub(super) engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status,
    pub(super) stream_create: unsafe extern "C" fn(*mut Handle, Handle, u32) -> Status,
    pub(super) md_init_by_tag:
        unsafe extern "C" fn(*mut Md, c_int, *const i64, c_int, c_int) -> Status,
    pub(super) md_get_size: unsafe extern "C" fn(*const Md) -> usize,
    pub(super) md_equal: unsafe extern "C" fn(*const Md, *const Md) -> c_int,
    #[allow(clippy::type_complexity)]
    pub(super) conv_forward: unsafe extern "C" fn(
        *mut OpDesc,
        c_int,
        c_int,
        *const Md,
        *const Md,
        *const Md,
        *const Md,
        *const i64,
        *const i64,
        *const i64,
    ) -> Status,
    #[allow(clippy::type_complexity)]
    pub(super) conv_backward_data: unsafe extern "C" fn(
        *mut OpDesc,
        c_int,
        *const Md,
        *const Md,
        *const Md,
        *const i64,
        *const i64,
        *const i64,
    ) -> Status,
    #[allow(clippy::type_complexity)]
    pub(super) conv_backward_weights: unsafe extern "C" fn(
        *mut OpDesc,
        c_int,
        *const Md,
        *const Md,
        *const Md,
        *const Md,
        *const i64,
        *const i64,
        *const i64,
    ) -> Status,
    pub(super) pd_create:
        unsafe extern "C" fn(*mut Handle, *const OpDesc, Handle, Handle, Handle) -> Status,
    pub(super) pd_query_md: unsafe extern "C" fn(Handle, c_int, c_int) -> *const Md,
    pub(super) pd_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    pub(super) pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) reorder_pd_create:
        unsafe extern "C" fn(*mut Handle, *const Md, Handle, *const Md, Handle, Handle) -> Status,
    pub(super) primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    pub(super) execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    pub(super) memory_create:
        unsafe extern "C" fn(*mut Handle, *const Md, Handle, Handle) -> Status,
    pub(super) set_handle: unsafe extern "C" fn(Handle, Handle) -> Status,
    pub(super) stream_wait: unsafe extern "C" fn(Handle) -> Status,
    /// One engine for the process (oneDNN's engines are thread-safe).
    pub(super) engine: Handle,
    pub(super) version: String,
    pub(super) _lib: Library,
}

// SAFETY: the function pointers and the engine handle may be used from any
// thread (oneDNN's engines are thread-safe; streams and primitives are
// made per worker thread below).
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// The library, when this machine's oneDNN has the version-2 API; else
/// why not (for `describe`).
pub(super) fn api() -> Result<&'static Api, &'static str> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(String::as_str)
}

fn load() -> Result<Api, String> {
    let found = system::probe()
        .get(Kind::OneDnn)
        .ok_or("oneDNN is not installed")?;
    if !found.per_worker() {
        return Err("this oneDNN does not run on OpenMP".into());
    }
    // SAFETY: the file loaded before (the SGEMM probe); this only adds a
    // reference to it.
    let lib = unsafe { Library::new(found.file) }.map_err(|e| e.to_string())?;
    let [major, minor, patch] =
        system::dnnl_version_numbers(&lib).ok_or("this oneDNN does not report its version")?;
    if major != 2 {
        return Err(format!(
            "oneDNN {major}.{minor} has another convolution API than the version-2 one this build speaks"
        ));
    }
    let version = format!("oneDNN {major}.{minor}.{patch}");
    // SAFETY (the lookups): each name is looked up with its C type in
    // oneDNN 2.x's dnnl.h, the major version checked first.
    unsafe {
        macro_rules! f {
            ($name:literal) => {
                *lib.get($name).map_err(|e| e.to_string())?
            };
        }
        let mut api = Api {
            engine_create: f!(b"dnnl_engine_create"),
            stream_create: f!(b"dnnl_stream_create"),
            md_init_by_tag: f!(b"dnnl_memory_desc_init_by_tag"),
            md_get_size: f!(b"dnnl_memory_desc_get_size"),
            md_equal: f!(b"dnnl_memory_desc_equal"),
            conv_forward: f!(b"dnnl_convolution_forward_desc_init"),
            conv_backward_data: f!(b"dnnl_convolution_backward_data_desc_init"),
            conv_backward_weights: f!(b"dnnl_convolution_backward_weights_desc_init"),
            pd_create: f!(b"dnnl_primitive_desc_create"),
            pd_query_md: f!(b"dnnl_primitive_desc_query_md"),
            pd_query: f!(b"dnnl_primitive_desc_query"),
            pd_destroy: f!(b"dnnl_primitive_desc_destroy"),
            reorder_pd_create: f!(b"dnnl_reorder_primitive_desc_create"),
            primitive_create: f!(b"dnnl_primitive_create"),
            execute: f!(b"dnnl_primitive_execute"),
            memory_create: f!(b"dnnl_memory_create"),
            set_handle: f!(b"dnnl_memory_set_data_handle"),
            stream_wait: f!(b"dnnl_stream_wait"),
            engine: std::ptr::null_mut(),
            version,
            _lib: lib,
        };
        found.one_omp_thread();
        let mut engine = std::ptr::null_mut();
        if (api.engine_create)(&mut engine, ENGINE_CPU, 0) != 0 {
            return Err("oneDNN made no CPU engine".into());
        }
        api.engine = engine;
        Ok(api)
    }
}

/// A 4-D memory descriptor of element type `dtype` (`F32`, `BF16`).
pub(super) unsafe fn md_of(api: &Api, dims: [usize; 4], dtype: c_int, tag: c_int) -> Option<Md> {
    let mut m = Md([0; 2048]);
    let d = dims.map(|x| x as i64);
    ((api.md_init_by_tag)(&mut m, 4, d.as_ptr(), dtype, tag) == 0).then_some(m)
}

/// A 2-D convolution's strides, left/top padding and bottom/right padding
/// as oneDNN's descriptors take them.
pub(super) fn conv_dims(stride: usize, pad: usize, pad_r: [i64; 2]) -> [Dims; 3] {
    let mut dims: [Dims; 3] = [[0; 12]; 3];
    dims[0][..2].fill(stride as i64);
    dims[1][..2].fill(pad as i64);
    dims[2][..2].copy_from_slice(&pad_r);
    dims
}

/// The primitive descriptor oneDNN picks for a forward (training)
/// convolution of `x` by `w` into `y`, or `None` where it has none.
pub(super) unsafe fn conv_forward_pd(
    api: &Api,
    [x, w, y]: [&Md; 3],
    dims: &[Dims; 3],
) -> Option<Handle> {
    let mut desc = OpDesc([0; 16384]);
    let made = (api.conv_forward)(
        &mut desc,
        FORWARD_TRAINING,
        CONVOLUTION_DIRECT,
        x,
        w,
        std::ptr::null(),
        y,
        dims[0].as_ptr(),
        dims[1].as_ptr(),
        dims[2].as_ptr(),
    );
    let null = std::ptr::null_mut();
    let mut pd = null;
    (made == 0 && (api.pd_create)(&mut pd, &desc, null, api.engine, null) == 0).then_some(pd)
}

/// The name of the implementation behind `pd` (its `impl_info_str`, e.g.
/// `jit:avx512_core`).
pub(super) unsafe fn impl_name(api: &Api, pd: Handle) -> Option<String> {
    let mut s: *const c_char = std::ptr::null();
    let got = (api.pd_query)(pd, QUERY_IMPL_INFO_STR, 0, &mut s as *mut _ as *mut c_void);
    (got == 0 && !s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
}

/// A stream on the process's engine for the calling thread, whose oneDNN
/// calls then run on one OpenMP thread (each part of a call runs on its
/// own rayon worker); `None` where oneDNN makes none.
pub(super) fn thread_stream(api: &Api) -> Option<Handle> {
    if let Some(lib) = system::probe().get(Kind::OneDnn) {
        lib.one_omp_thread();
    }
    let mut stream = std::ptr::null_mut();
    // SAFETY: a stream on the process's engine.
    (unsafe { (api.stream_create)(&mut stream, api.engine, STREAM_DEFAULT) } == 0).then_some(stream)
}

/// A memory object for `md` (its data handle set before each use).
pub(super) unsafe fn memory(api: &Api, md: *const Md) -> Option<Handle> {
    let mut h = std::ptr::null_mut();
    ((api.memory_create)(&mut h, md, api.engine, std::ptr::null_mut()) == 0).then_some(h)
}

/// A reorder primitive from layout `from` to layout `to`.
pub(super) unsafe fn reorder(api: &Api, from: *const Md, to: *const Md) -> Option<Handle> {
    let null = std::ptr::null_mut();
    let mut rpd = null;
    if (api.reorder_pd_create)(&mut rpd, from, api.engine, to, api.engine, null) != 0 {
        return None;
    }
    let mut r = null;
    let made = (api.primitive_create)(&mut r, rpd) == 0;
    (api.pd_destroy)(rpd);
    made.then_some(r)
}
