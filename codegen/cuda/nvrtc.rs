//! NVRTC: CUDA C → PTX and CUBIN at run time, with an on-disk cache.
//!
//! cudarc loads `libnvrtc` on first use and panics when it cannot; every
//! entry point here checks [`available`] first and returns an error instead.
//! Compilation asks for a real architecture (`sm_XY`), so NVRTC produces
//! both PTX and a CUBIN; the CUBIN is what gets loaded (no PTX JIT in the
//! driver, so an NVRTC newer than the driver still works), the PTX is kept
//! for inspection (`ptxas -v`).
//!
//! The cache key is a content hash of the source, the options and the NVRTC
//! version; entries live in [`cache_dir`] and are written atomically
//! (temporary file + rename), so concurrent processes are safe. A cache that
//! cannot be read or written only costs a recompile.

use cudarc::nvrtc::{result, sys};
use std::ffi::CString;

/// Why NVRTC could not compile a kernel module.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NvrtcError {
    /// No loadable `libnvrtc` (the text says where snnc looked).
    #[error("{0}")]
    Missing(String),
    /// An NVRTC call failed outside compilation proper.
    #[error("{call} failed: {msg}")]
    Call { call: &'static str, msg: String },
    #[error("kernel source contains a NUL byte")]
    NulInSource,
    #[error("bad program name")]
    BadName,
    /// The source did not compile: NVRTC's log.
    #[error("NVRTC could not compile {name}.cu ({cause}) with options `{options}`:\n{log}")]
    Compile {
        name: String,
        cause: String,
        options: String,
        log: String,
    },
}

/// An NVRTC call's failure.
fn call_failed(call: &'static str, e: &result::NvrtcError) -> NvrtcError {
    NvrtcError::Call {
        call,
        msg: e.to_string(),
    }
}

/// Is a loadable `libnvrtc` on the library path (cudarc's names)?
pub fn available() -> Result<(), NvrtcError> {
    // SAFETY: only tries to dlopen the candidate names.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(NvrtcError::Missing(super::missing_library("nvrtc")))
    }
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    available()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| call_failed("nvrtcVersion", &e))?;
    Ok((major, minor))
}

/// The options snnc compiles its kernels with for `arch` (e.g. `sm_90`).
/// `--fmad=false`: no contraction of a·b + c into an FMA, so kernels round
/// like the interpreter's separate operations.
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".to_string(),
        "--std=c++17".to_string(),
    ]
}

/// What a compilation produced.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub ptx: String,
    /// Present when the target was a real architecture (`sm_XY`).
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log (warnings), empty when it had nothing to say.
    pub log: String,
    /// Came from the on-disk cache.
    pub cached: bool,
}

pub use crate::codegen::cache::{cache_dir, fnv1a};

/// Writes `bytes` to `path` atomically (best effort).
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Compiles `src` with `opts`, through the cache in [`cache_dir`].
pub fn compile_cached(src: &str, name: &str, opts: &[String]) -> Result<Compiled, NvrtcError> {
    compile_cached_in(&cache_dir(), src, name, opts)
}

/// Compiles `src` with `opts`, through the cache in `cache`.
pub fn compile_cached_in(
    cache: &std::path::Path,
    src: &str,
    name: &str,
    opts: &[String],
) -> Result<Compiled, NvrtcError> {
    let (major, minor) = version()?;
    let joined = opts.join("\u{1}");
    let ver = format!("{major}.{minor}");
    let key = fnv1a(&[
        src.as_bytes(),
        name.as_bytes(),
        joined.as_bytes(),
        ver.as_bytes(),
    ]);
    let dir = cache.join("nvrtc");
    let stem = dir.join(format!("{name}-{key:016x}"));
    let (ptx_path, cubin_path) = (stem.with_extension("ptx"), stem.with_extension("cubin"));
    if let Ok(ptx) = std::fs::read_to_string(&ptx_path) {
        let cubin = std::fs::read(&cubin_path).ok();
        let wants_cubin = opts.iter().any(|o| o.starts_with("--gpu-architecture=sm_"));
        if !ptx.is_empty() && (cubin.is_some() || !wants_cubin) {
            return Ok(Compiled {
                ptx,
                cubin,
                log: String::new(),
                cached: true,
            });
        }
    }
    let out = compile(src, name, opts)?;
    // A failed write only means the next run compiles again.
    let _ = write_atomic(&ptx_path, out.ptx.as_bytes());
    if let Some(c) = &out.cubin {
        let _ = write_atomic(&cubin_path, c);
    }
    Ok(out)
}

/// Compiles `src` with `opts` (no cache). A compile error returns NVRTC's
/// log.
pub fn compile(src: &str, name: &str, opts: &[String]) -> Result<Compiled, NvrtcError> {
    available()?;
    let csrc = CString::new(src).map_err(|_| NvrtcError::NulInSource)?;
    let cname = CString::new(format!("{name}.cu")).map_err(|_| NvrtcError::BadName)?;
    let prog = result::create_program(&csrc, Some(&cname))
        .map_err(|e| call_failed("nvrtcCreateProgram", &e))?;
    struct Guard(sys::nvrtcProgram);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let guard = Guard(prog);
    let to_string = |v: &[std::ffi::c_char]| -> String {
        let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    // SAFETY: `prog` is a live program; options are plain strings.
    let compiled = unsafe { result::compile_program(guard.0, opts) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(guard.0) }
        .map(|v| to_string(&v))
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(NvrtcError::Compile {
            name: name.to_string(),
            cause: e.to_string(),
            options: opts.join(" "),
            log,
        });
    }
    // SAFETY: compiled successfully.
    let ptx = unsafe { result::get_ptx(guard.0) }
        .map(|v| to_string(&v))
        .map_err(|e| call_failed("nvrtcGetPTX", &e))?;
    let cubin = if opts.iter().any(|o| o.starts_with("--gpu-architecture=sm_")) {
        let mut size = 0usize;
        // SAFETY: compiled for a real architecture, so a CUBIN exists.
        unsafe { sys::nvrtcGetCUBINSize(guard.0, &mut size) }
            .result()
            .map_err(|e| call_failed("nvrtcGetCUBINSize", &e))?;
        let mut bytes = vec![0u8; size];
        // SAFETY: `bytes` holds `size` bytes.
        unsafe { sys::nvrtcGetCUBIN(guard.0, bytes.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| call_failed("nvrtcGetCUBIN", &e))?;
        (size > 0).then_some(bytes)
    } else {
        None
    };
    drop(guard);
    let log = log.trim().to_string();
    Ok(Compiled {
        ptx,
        cubin,
        log,
        cached: false,
    })
}

/// The `.entry` functions of a PTX module with their parameter types
/// (`u64`, `u32`, `f32`, `f64`, …), in order: used to check that the host
/// passes what each kernel takes.
pub fn ptx_entries(ptx: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        let t = line.trim();
        let Some(rest) = t
            .strip_prefix(".visible .entry ")
            .or_else(|| t.strip_prefix(".entry "))
        else {
            continue;
        };
        let name = rest.split('(').next().unwrap_or("").trim().to_string();
        let mut params = Vec::new();
        // Parameters follow, one per line, until the closing parenthesis.
        let mut scan = |l: &str| {
            for part in l.split(',') {
                let p = part.trim();
                if let Some(ty) = p.split_whitespace().skip_while(|w| *w != ".param").nth(1) {
                    params.push(ty.trim_start_matches('.').to_string());
                }
            }
        };
        scan(rest.split_once('(').map(|x| x.1).unwrap_or(""));
        if !rest.contains(')') {
            for l in lines.by_ref() {
                scan(l);
                if l.contains(')') {
                    break;
                }
            }
        }
        out.push((name, params));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }

    #[test]
    fn ptx_entry_parser() {
        let ptx = "\n.visible .entry snnc_add(\n\t.param .u64 snnc_add_param_0,\n\t.param .u64 snnc_add_param_1,\n\t.param .u32 snnc_add_param_2\n)\n{\n}\n.visible .entry snnc_fill(\n\t.param .u64 p0,\n\t.param .f32 p2\n)\n";
        let e = ptx_entries(ptx);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "snnc_add");
        assert_eq!(e[0].1, vec!["u64", "u64", "u32"]);
        assert_eq!(e[1].1, vec!["u64", "f32"]);
    }
}
