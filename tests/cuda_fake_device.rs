//! The GPU backend end to end, without a GPU: `snnc` runs against a fake
//! CUDA driver and cuBLAS (tests/fake_cuda/fake_cuda.cpp, built here by the
//! host C++ compiler) and the real NVRTC. cudarc loads the fakes by name
//! through LD_LIBRARY_PATH exactly as it loads the real libraries, so this
//! runs codegen/cuda/device.rs — probing, compiling and loading the module,
//! allocation, copies in each direction, kernel launches through
//! cuLaunchKernel's parameter array, cuBLAS calls — with the kernels
//! executed by the CPU emulator. The fakes check every copy, pointer
//! argument, launch configuration and GEMM argument against what the real
//! libraries accept.
//!
//! Needs a C++ compiler and libnvrtc (scripts/nvrtc-env.sh); without them
//! it says so and skips, or fails when SNNC_REQUIRE_NVRTC=1.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Fake {
    dir: PathBuf,
    emu_lib: PathBuf,
}

fn fake() -> Option<Fake> {
    let skip = |why: String| {
        if std::env::var("SNNC_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("the fake-device test is required (SNNC_REQUIRE_NVRTC=1) but: {why}");
        }
        eprintln!("SKIPPED: {why}");
        println!("SKIPPED: {why}");
        None
    };
    if let Err(e) = snnc::codegen::cuda::nvrtc::version() {
        return skip(format!("NVRTC is unavailable: {e}"));
    }
    let cxx = match snnc::codegen::cuda::emu::find_cxx() {
        Ok(c) => c,
        Err(e) => return skip(e),
    };
    let emu_lib = match snnc::codegen::cuda::emu::build_library() {
        Ok(p) => p,
        Err(e) => return skip(e),
    };
    // One folder per test: the tests run in parallel and each removes its own.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("snnc-fake-cuda-{}-{k}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_cuda/fake_cuda.cpp");
    // The real libraries' file names: the driver's libcuda.so.1, a CUDA 12
    // libcublas.so.12.
    for (lib, define) in [
        ("libcuda.so.1", None),
        ("libcublas.so.12", Some("-DFAKE_CUBLAS")),
    ] {
        let mut c = Command::new(&cxx);
        c.args(["-std=c++17", "-O1", "-fPIC", "-shared", "-o"])
            .arg(dir.join(lib))
            .arg(&src);
        if let Some(d) = define {
            c.arg(d);
        }
        let out = c.arg("-ldl").output().unwrap();
        assert!(
            out.status.success(),
            "building the fake {lib}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(Fake { dir, emu_lib })
}

impl Fake {
    /// `snnc ARGS` with the fakes first on the library path.
    fn snnc(&self, args: &[&str], extra_env: &[(&str, &str)]) -> (bool, String) {
        let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        let mut c = Command::new(env!("CARGO_BIN_EXE_snnc"));
        c.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("LD_LIBRARY_PATH", format!("{}:{ld}", self.dir.display()))
            .env("SNNC_FAKE_EMU_LIB", &self.emu_lib)
            .env("SNNC_CACHE_DIR", self.dir.join("cache"));
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn cuda_check_runs_on_the_fake_device() {
    let Some(f) = fake() else { return };
    let (ok, out) = f.snnc(
        &[
            "cuda-check",
            "--require-gpu",
            "--models",
            "digits_mlp,fmnist_csnn",
            "-T",
            "1,2",
        ],
        &[],
    );
    println!("{out}");
    assert!(ok, "{out}");
    assert!(out.contains("FAKE H200") && out.contains("sm_90"), "{out}");
    assert!(out.contains("8 passed, 0 failed"), "{out}");
    assert!(
        out.contains("CUBIN"),
        "the module should load from the CUBIN: {out}"
    );
    // Second run: the kernels come from the on-disk cache.
    let (ok, out) = f.snnc(
        &[
            "cuda-check",
            "--require-gpu",
            "--models",
            "digits_mlp",
            "-T",
            "1",
            "--mode",
            "rate",
        ],
        &[],
    );
    assert!(ok && out.contains("from the cache"), "{out}");
}

#[test]
fn bench_and_bandwidth_run_on_the_fake_device() {
    let Some(f) = fake() else { return };
    let (ok, out) = f.snnc(
        &[
            "bench",
            "examples/models/fmnist_csnn.snn",
            "--device",
            "cuda",
            "-T",
            "1,2",
            "--mode",
            "bptt,rate",
            "--batch",
            "4",
            "--repeats",
            "1",
        ],
        &[],
    );
    println!("{out}");
    assert!(ok, "{out}");
    assert!(
        out.contains("device MiB")
            && out
                .lines()
                .filter(|l| l.starts_with("rate") || l.starts_with("bptt"))
                .count()
                == 4,
        "{out}"
    );
    let (ok, out) = f.snnc(&["cuda-check", "--bandwidth", "8"], &[]);
    println!("{out}");
    assert!(
        ok && out.contains("GB/s") && out.contains("snnc_copy kernel"),
        "{out}"
    );
}

#[test]
fn missing_pieces_are_reported_not_panicked() {
    let Some(f) = fake() else { return };
    // A driver without a device: a skip, or an error with --require-gpu.
    let env = [("SNNC_FAKE_CUINIT_FAIL", "1")];
    let (ok, out) = f.snnc(&["cuda-check"], &env);
    assert!(
        ok && out.contains("skipped") && out.contains("cuInit failed"),
        "{out}"
    );
    let (ok, out) = f.snnc(&["cuda-check", "--require-gpu"], &env);
    assert!(
        !ok && out.contains("cuInit failed") && !out.contains("panicked"),
        "{out}"
    );
    // A driver but no NVRTC on the library path.
    let ld_without_nvrtc = f.dir.display().to_string();
    let mut c = Command::new(env!("CARGO_BIN_EXE_snnc"));
    let out = c
        .args([
            "bench",
            "examples/models/digits_mlp.snn",
            "--device",
            "cuda",
            "-T",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LD_LIBRARY_PATH", &ld_without_nvrtc)
        .env("SNNC_FAKE_EMU_LIB", &f.emu_lib)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    if text.contains("libnvrtc could not be loaded") {
        assert!(
            !out.status.success() && !text.contains("panicked"),
            "{text}"
        );
    } else {
        // libnvrtc is installed system-wide here; then the run succeeds.
        assert!(out.status.success(), "{text}");
    }
}
