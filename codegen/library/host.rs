//! Builds kernels for the host: C or C++ source compiled by the system
//! compiler into a shared library, cached on disk by content hash
//! (`codegen::cache`), and loaded at run time. The CPU backend builds the
//! library kernels (C++) and each plan's generated kernels (C) this way.

use crate::codegen::cache::{cache_dir, fnv1a, unique_tag};
use std::path::PathBuf;
use std::process::Command;

/// A host compiler and the flags a kind of source is built with.
pub struct Toolchain {
    pub compiler: String,
    pub flags: &'static [&'static str],
    /// The source file's extension (`c` or `cpp`), which tells the
    /// compiler the language.
    pub ext: &'static str,
}

/// Flags of generated C kernels. No FMA contraction, no reassociation,
/// exact division: the kernels compute `λ·v + I` and batch norm with the
/// same roundings as the reference interpreter, so a membrane at threshold
/// fires the same way in both. `-ffast-math` is there for glibc's vector
/// `expf` (the sigmoid surrogate): without it GCC vectorises no loop that
/// calls `expf`. `-mprefer-vector-width=512` lets GCC use AVX-512's full
/// width where `-march=native` has it (GCC otherwise keeps 256 bits on
/// Intel cores): the neuron kernels are bound by `expf` and the division
/// of the sigmoid surrogate, so twice the lanes gave 2–6 % on fmnist_csnn
/// steps (the layer-1 LIF kernel alone 13 % faster); elsewhere the flag
/// changes nothing.
pub const C_FLAGS: &[&str] = &[
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-ffast-math",
    "-fno-associative-math",
    "-fno-reciprocal-math",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
];

/// Flags of the library kernels as C++: IEEE semantics throughout (the
/// library tests NaN and infinities, e.g. max-pooling starts from −∞), no
/// FMA contraction, the vector width of the C kernels.
pub const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fno-math-errno",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
];

impl Toolchain {
    /// `$CC` (else `cc`) with [`C_FLAGS`].
    pub fn c() -> Toolchain {
        Toolchain {
            compiler: std::env::var("CC")
                .ok()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "cc".into()),
            flags: C_FLAGS,
            ext: "c",
        }
    }

    /// [`find_cxx`]'s compiler (else `c++`, which then fails to run with
    /// a clear error) with [`CXX_FLAGS`].
    pub fn cxx() -> Toolchain {
        Toolchain {
            compiler: find_cxx().unwrap_or_else(|_| "c++".into()),
            flags: CXX_FLAGS,
            ext: "cpp",
        }
    }
}

/// The host C++ compiler: `$CXX`, else the first of c++, g++, clang++ that
/// runs; the names tried when none does.
pub fn find_cxx() -> Result<String, Vec<String>> {
    static FOUND: std::sync::OnceLock<Result<String, Vec<String>>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let mut tried = Vec::new();
            let env = std::env::var("CXX").ok().filter(|c| !c.is_empty());
            for c in env
                .iter()
                .map(String::as_str)
                .chain(["c++", "g++", "clang++"])
            {
                let runs = Command::new(c)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success());
                if runs {
                    return Ok(c.to_string());
                }
                tried.push(c.to_string());
            }
            Err(tried)
        })
        .clone()
}

/// Why kernels could not be built or loaded for the host.
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("cannot create the kernel cache `{}`: {source}", dir.display())]
    Cache {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run the compiler `{cc}` ({source}); install gcc or clang, or set CC and CXX")]
    NoCompiler { cc: String, source: std::io::Error },
    #[error("the compiler rejected the generated kernels (`{}`):\n{stderr}", path.display())]
    Rejected { path: PathBuf, stderr: String },
    #[error("cannot move `{}` into the kernel cache: {source}", path.display())]
    Move {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load `{}`: {source}", path.display())]
    Load {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error("`{}`: no function `{name}`: {source}", path.display())]
    NoSymbol {
        path: PathBuf,
        name: String,
        source: libloading::Error,
    },
}

/// A loaded shared library of kernels.
pub struct SharedLib {
    pub lib: libloading::Library,
    pub path: PathBuf,
    /// Whether this build compiled it (false: found in the cache).
    pub compiled: bool,
}

impl SharedLib {
    /// The address of function `name`.
    ///
    /// # Safety
    /// `F` must be the function's exact type.
    pub unsafe fn get<F: Copy>(&self, name: &str) -> Result<F, CcError> {
        let f: libloading::Symbol<F> =
            self.lib
                .get(name.as_bytes())
                .map_err(|source| CcError::NoSymbol {
                    path: self.path.clone(),
                    name: name.to_string(),
                    source,
                })?;
        Ok(*f)
    }
}

/// Compiles `src` with `tc` into the cache unless it is there; returns the
/// library's path and whether this call compiled it.
pub fn build_cached(src: &str, tc: &Toolchain) -> Result<(PathBuf, bool), CcError> {
    let flags = tc.flags.join(" ");
    let key = fnv1a(&[src.as_bytes(), flags.as_bytes(), tc.compiler.as_bytes()]);
    let dir = cache_dir().join("host");
    std::fs::create_dir_all(&dir).map_err(|source| CcError::Cache {
        dir: dir.clone(),
        source,
    })?;
    let lib_path = dir.join(format!("{key:016x}.so"));
    let mut compiled = false;
    if !lib_path.exists() {
        let tag = format!("{key:016x}.{}", unique_tag());
        let src_path = dir.join(format!("{tag}.{}", tc.ext));
        let tmp = dir.join(format!("{tag}.so"));
        std::fs::write(&src_path, src).map_err(|source| CcError::Write {
            path: src_path.clone(),
            source,
        })?;
        let out = Command::new(&tc.compiler)
            .args(tc.flags)
            .arg("-o")
            .arg(&tmp)
            .arg(&src_path)
            .arg("-lm")
            .output()
            .map_err(|source| CcError::NoCompiler {
                cc: tc.compiler.clone(),
                source,
            })?;
        if !out.status.success() {
            // The source stays for inspection.
            return Err(CcError::Rejected {
                path: src_path,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        std::fs::rename(&tmp, &lib_path).map_err(|source| CcError::Move {
            path: tmp.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(&src_path);
        compiled = true;
    }
    Ok((lib_path, compiled))
}

/// [`build_cached`], then loads the library.
pub fn build(src: &str, tc: &Toolchain) -> Result<SharedLib, CcError> {
    let (lib_path, compiled) = build_cached(src, tc)?;
    // SAFETY: a library built from our own generated source; loading it
    // runs no initialisers but the C runtime's (below) and the C++ runtime's.
    let lib =
        keeping_fp_mode(|| unsafe { libloading::Library::new(&lib_path) }).map_err(|source| {
            CcError::Load {
                path: lib_path.clone(),
                source,
            }
        })?;
    Ok(SharedLib {
        lib,
        path: lib_path,
        compiled,
    })
}

/// Runs `load` and puts the calling thread's floating-point mode back: GCC
/// links `crtfastmath.o` into a `-ffast-math` shared library (C_FLAGS),
/// whose initialiser sets flush-to-zero and denormals-are-zero (x86's
/// MXCSR) on the thread that loads it. Left set, the loading thread would
/// flush subnormals while the backend's worker threads do not, so a
/// result would depend on which thread computed it (host code included).
fn keeping_fp_mode<T>(load: impl FnOnce() -> T) -> T {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stores MXCSR into a local.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
        let r = load();
        // SAFETY: restores the value read above.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack)) };
        r
    }
    #[cfg(not(target_arch = "x86_64"))]
    load()
}

/// `snnc_signature`'s output (host_shim.h): a compiled kernel's parameter
/// kinds, one character each (see `backend::KERNELS`).
pub type SigFn = unsafe extern "C" fn(*mut u8);

/// Checks a compiled library kernel's parameter kinds (from its generated
/// signature function) against the executor's table; the message names
/// both when they differ.
pub fn check_signature(
    kernel: &str,
    want: &str,
    sig: SigFn,
) -> Result<(), crate::codegen::backend::BackendError> {
    let mut buf = [0u8; 64];
    // SAFETY: the function writes one character per parameter and a
    // terminating 0; kernels have far fewer than 63 parameters.
    unsafe { sig(buf.as_mut_ptr()) };
    let got: String = buf
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    if got != want {
        return Err(crate::codegen::backend::BackendError::Compile(format!(
            "kernel `{kernel}`: kernels.cu takes ({got}) but the signature table says ({want})"
        )));
    }
    Ok(())
}
