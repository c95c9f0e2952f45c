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
//! The fusion plan's generated module goes through NVRTC and
//! cuModuleLoadData like kernels.cu; the fake runs its kernels from the
//! emulator's library of the same source, which the test builds first for
//! every case it runs ([`Fake::plans`]: the kernel names carry a hash of
//! their code, so the fake finds the right one).
//!
//! Needs a C++ compiler and libnvrtc (scripts/nvrtc-env.sh); without them
//! (as build.rs finds them) the tests are ignored, with the reason in
//! `cargo test`'s summary.

use snnc::passes::schedule::SchedOpts;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Fake {
    dir: PathBuf,
    emu_lib: PathBuf,
    /// Emulator libraries of generated modules, for the fake to search.
    modules: Vec<PathBuf>,
}

fn fake() -> Option<Fake> {
    // The build found NVRTC and a C++ compiler (else this test is
    // ignored): a missing piece now is an error, not a skip.
    let skip =
        |why: String| -> Option<Fake> { panic!("the fake CUDA device cannot be set up: {why}") };
    if let Err(e) = snnc::codegen::cuda::nvrtc::version() {
        return skip(format!("NVRTC is unavailable: {e}"));
    }
    let cxx = match snnc::codegen::cuda::emu::find_cxx() {
        Ok(c) => c,
        Err(e) => return skip(e.to_string()),
    };
    let emu_lib = match snnc::codegen::cuda::emu::build_library() {
        Ok(p) => p,
        Err(e) => return skip(e.to_string()),
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
    Some(Fake {
        dir,
        emu_lib,
        modules: Vec::new(),
    })
}

impl Fake {
    /// Builds the emulator libraries of the fusion plans `snnc cuda-check`
    /// and `snnc bench --device cuda` run for these models, T, modes, batch
    /// and schedules (the same graph and plan as theirs).
    fn plans(&mut self, models: &[&str], steps: &[usize], batch: usize, schedules: &[SchedOpts]) {
        use snnc::passes::fuse_time;
        use snnc::passes::rate::Mode;
        for m in models {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/models/{m}.snn"));
            let (model, _) = snnc::frontend::load(&path).unwrap();
            for mode in [Mode::Bptt, Mode::Rate] {
                for &t in steps {
                    let g = snnc::compile::compile(
                        &model,
                        &snnc::compile::Options::new(t, batch, mode),
                    )
                    .unwrap()
                    .graph;
                    for &s in schedules {
                        let g = fuse_time::lower(&g, s);
                        let plan = fuse_time::plan(&g, &[], s);
                        let module = snnc::codegen::cuda::fused::module(&plan);
                        let lib = snnc::codegen::cuda::emu::build_module_library(
                            &module.source,
                            &module.names,
                        )
                        .unwrap();
                        self.modules.push(lib);
                    }
                }
            }
        }
    }

    /// `snnc ARGS` with the fakes first on the library path.
    fn snnc(&self, args: &[&str], extra_env: &[(&str, &str)]) -> (bool, String) {
        let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        let mut c = Command::new(env!("CARGO_BIN_EXE_snnc"));
        c.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("LD_LIBRARY_PATH", format!("{}:{ld}", self.dir.display()))
            .env("SNNC_FAKE_EMU_LIB", self.emu_libs())
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

impl Fake {
    /// `$SNNC_FAKE_EMU_LIB`: kernels.cu's library, then the modules'.
    fn emu_libs(&self) -> String {
        std::iter::once(&self.emu_lib)
            .chain(&self.modules)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[cfg_attr(
    not(snnc_nvrtc),
    ignore = "needs libnvrtc: `source scripts/nvrtc-env.sh`, then cargo test"
)]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn cuda_check_runs_on_the_fake_device() {
    let Some(mut f) = fake() else { return };
    f.plans(
        &["digits_mlp", "fmnist_csnn"],
        &[1, 2],
        2,
        &[SchedOpts::LAYER_MAJOR, SchedOpts::TIME_MAJOR],
    );
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
    assert!(out.contains("the fusion plan"), "{out}");
    // Node by node.
    let (ok, out) = f.snnc(
        &[
            "cuda-check",
            "--require-gpu",
            "--no-fuse",
            "--models",
            "fmnist_csnn",
            "-T",
            "2",
        ],
        &[],
    );
    assert!(ok && out.contains("2 passed, 0 failed"), "{out}");
    assert!(out.contains("every node on its own kernel"), "{out}");
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
    // The time-major plan: one kernel step per launch, states in the arena.
    let (ok, out) = f.snnc(
        &[
            "cuda-check",
            "--require-gpu",
            "--schedule",
            "fused-time-major",
            "--models",
            "digits_mlp,fmnist_csnn",
            "-T",
            "1,2",
        ],
        &[],
    );
    println!("{out}");
    assert!(ok && out.contains("8 passed, 0 failed"), "{out}");
    assert!(out.contains("the fusion plan (fused-time-major)"), "{out}");
    // TF32 and bf16: cublasGemmEx with the tensor-core compute types (the
    // fake rounds the operands as the compute type says), against the CPU
    // executor rounding the same operands.
    for p in ["tf32", "bf16"] {
        let (ok, out) = f.snnc(
            &[
                "cuda-check",
                "--require-gpu",
                "--precision",
                p,
                "--models",
                "digits_mlp,fmnist_csnn",
                "-T",
                "1,2",
            ],
            &[],
        );
        println!("{out}");
        assert!(ok && out.contains("8 passed, 0 failed"), "{out}");
        assert!(out.contains(&format!("rounded to {p}")), "{out}");
    }
    // A graph-executor schedule is not a device plan.
    let (ok, out) = f.snnc(&["cuda-check", "--schedule", "time-major"], &[]);
    assert!(!ok && out.contains("runs the fusion plan"), "{out}");
}

#[test]
#[cfg_attr(
    not(snnc_nvrtc),
    ignore = "needs libnvrtc: `source scripts/nvrtc-env.sh`, then cargo test"
)]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn bench_and_bandwidth_run_on_the_fake_device() {
    let Some(mut f) = fake() else { return };
    f.plans(
        &["fmnist_csnn"],
        &[1, 2],
        4,
        &[SchedOpts::LAYER_MAJOR, SchedOpts::TIME_MAJOR_RECOMPUTE],
    );
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
            "--schedule",
            "fused,fused-time-major-recompute",
        ],
        &[],
    );
    println!("{out}");
    assert!(ok, "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("fused")).collect();
    assert!(out.contains("device MiB") && rows.len() == 8, "{out}");
    assert_eq!(
        rows.iter()
            .filter(|l| l.starts_with("fused-time-major-recompute"))
            .count(),
        4,
        "{out}"
    );
    // The LIF kernels were timed (events) and compared with the copy kernel.
    assert!(
        out.contains("LIF GB/s") && out.contains("copy kernel"),
        "{out}"
    );
    assert!(rows.iter().all(|r| r.contains('%')), "{out}");
    // The arena's measured peak is its planned peak (columns "plan MiB"
    // and "arena pk").
    for r in &rows {
        let cols: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(cols[9], cols[10], "planned and measured peaks: {r}");
    }
    // Precisions side by side: a row each.
    let (ok, out) = f.snnc(
        &[
            "bench",
            "examples/models/fmnist_csnn.snn",
            "--device",
            "cuda",
            "-T",
            "2",
            "--mode",
            "rate",
            "--batch",
            "4",
            "--repeats",
            "1",
            "--precision",
            "fp32,bf16",
        ],
        &[],
    );
    println!("{out}");
    assert!(ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("fused "))
            && out.lines().any(|l| l.starts_with("fused/bf16 ")),
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
#[cfg_attr(
    not(snnc_nvrtc),
    ignore = "needs libnvrtc: `source scripts/nvrtc-env.sh`, then cargo test"
)]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
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
    // Training and evaluation on a missing device: a clear error, before
    // any work.
    let run = f.dir.join("no-gpu-run");
    let run = run.display().to_string();
    let (ok, out) = f.snnc(
        &["train", "--device", "cuda", "--epochs", "1", "--out", &run],
        &env,
    );
    assert!(
        !ok && out.contains("train --device cuda") && out.contains("cuInit failed"),
        "{out}"
    );
    assert!(!out.contains("panicked") && !out.contains("epoch"), "{out}");
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
