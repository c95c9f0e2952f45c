//! Tells the test suite which optional tools this machine has, as cfg flags,
//! so that a test needing a missing one is marked *ignored* with the reason
//! (`#[cfg_attr(not(snnc_nvrtc), ignore = "…")]`) and counted in `cargo
//! test`'s summary, instead of passing without having run.
//!
//! - `snnc_nvrtc`: libnvrtc can be found (`source scripts/nvrtc-env.sh`
//!   fetches it from PyPI). With `SNNC_REQUIRE_NVRTC=1` (CI) its absence
//!   fails the build.
//! - `snnc_cxx`: a C++ compiler for the CUDA emulator (`$CXX`, c++, g++ or
//!   clang++). With `SNNC_REQUIRE_EMU=1` its absence fails the build.
//! - `snnc_ptxas`: ptxas (`$PTXAS` or on PATH) for the register table.
//! - `snnc_dot`: Graphviz's `dot`, which reads back the DOT output.
//! - `snnc_fmnist`: Debian's `dataset-fashion-mnist` is installed.
//! - `snnc_nir`: a Python with the `nir` package (and its h5py, NumPy):
//!   `$SNNC_PYTHON` (`.ci/run` points it at the venv it makes) or
//!   `python3`; the tests get its path as `SNNC_NIR_PYTHON`. With
//!   `SNNC_REQUIRE_NIR=1` (CI, once the venv installed) its absence fails
//!   the build.
//!
//! The library itself does not look at these flags: snnc finds its tools
//! at run time.

use std::env;
use std::path::{Path, PathBuf};

const FMNIST: &str = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(snnc_nvrtc, snnc_cxx, snnc_ptxas, snnc_dot, snnc_fmnist, snnc_nir)");
    for var in [
        "LD_LIBRARY_PATH",
        "PATH",
        "CXX",
        "PTXAS",
        "SNNC_REQUIRE_NVRTC",
        "SNNC_REQUIRE_EMU",
        "SNNC_REQUIRE_DOT",
        "SNNC_PYTHON",
        "SNNC_REQUIRE_NIR",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={FMNIST}");
    let required = |var: &str| env::var(var).is_ok_and(|v| v == "1");

    match nvrtc() {
        Some(lib) => {
            println!("cargo::rustc-cfg=snnc_nvrtc");
            println!("cargo::rerun-if-changed={}", lib.display());
        }
        None if required("SNNC_REQUIRE_NVRTC") => panic!(
            "SNNC_REQUIRE_NVRTC=1 but libnvrtc.so is not in LD_LIBRARY_PATH or the system \
             library folders (`source scripts/nvrtc-env.sh` fetches it)"
        ),
        None => {}
    }
    if cxx() {
        println!("cargo::rustc-cfg=snnc_cxx");
    } else if required("SNNC_REQUIRE_EMU") {
        panic!("SNNC_REQUIRE_EMU=1 but no C++ compiler ($CXX, c++, g++, clang++) is on PATH");
    }
    let ptxas = env::var("PTXAS").unwrap_or_else(|_| "ptxas".into());
    if on_path(&ptxas) {
        println!("cargo::rustc-cfg=snnc_ptxas");
    }
    if on_path("dot") {
        println!("cargo::rustc-cfg=snnc_dot");
    } else if required("SNNC_REQUIRE_DOT") {
        panic!("SNNC_REQUIRE_DOT=1 but Graphviz's `dot` is not on PATH (apt-get install graphviz)");
    }
    if Path::new(FMNIST).is_file() {
        println!("cargo::rustc-cfg=snnc_fmnist");
    }
    let python = env::var("SNNC_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    match nir_python(&python) {
        Ok(()) => {
            println!("cargo::rustc-cfg=snnc_nir");
            println!("cargo::rustc-env=SNNC_NIR_PYTHON={python}");
        }
        Err(why) if required("SNNC_REQUIRE_NIR") => panic!(
            "SNNC_REQUIRE_NIR=1 but `{python}` cannot import nir, h5py and numpy: {why} \
             (set SNNC_PYTHON to a Python with `pip install nir`)"
        ),
        Err(_) => {}
    }
}

/// `python -c "import nir, h5py, numpy"` succeeds.
fn nir_python(python: &str) -> Result<(), String> {
    let out = std::process::Command::new(python)
        .args(["-c", "import nir, h5py, numpy"])
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A `libnvrtc.so*` where the dynamic loader would look for it.
fn nvrtc() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("LD_LIBRARY_PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/cuda/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
        ]
        .map(PathBuf::from),
    );
    dirs.iter().find_map(|d| {
        std::fs::read_dir(d).ok()?.flatten().find_map(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libnvrtc.so").then(|| e.path())
        })
    })
}

/// `exe` is a path to a file, or a file in a folder of `$PATH`.
fn on_path(exe: &str) -> bool {
    let p = Path::new(exe);
    if p.components().count() > 1 {
        return p.is_file();
    }
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|d| d.join(exe).is_file()))
}

fn cxx() -> bool {
    match env::var("CXX").ok().filter(|c| !c.is_empty()) {
        // `$CXX` may carry flags ("ccache g++"): its first word is the program.
        Some(c) => c.split_whitespace().next().is_some_and(on_path),
        None => ["c++", "g++", "clang++"].into_iter().any(on_path),
    }
}
