//! NVRTC compiles every kernel of the CUDA backend for sm_90 (H100/H200),
//! the PTX declares each kernel with the parameters the executor passes,
//! and `ptxas` (when on PATH) reports registers, stack and spills.
//!
//! Needs libnvrtc (`source scripts/nvrtc-env.sh` fetches it from PyPI);
//! without it (as build.rs finds it) the tests are ignored, with the reason
//! in `cargo test`'s summary; with SNNC_REQUIRE_NVRTC=1 (CI sets it when the
//! wheels installed) its absence fails the build. No GPU is needed.

use snnc::codegen::cuda::{nvrtc, probe, KERNELS, KERNELS_CU};

fn nvrtc_or_skip() -> bool {
    match nvrtc::available().and_then(|()| nvrtc::version()) {
        Ok((major, minor)) => {
            println!("NVRTC {major}.{minor}");
            true
        }
        // The build found libnvrtc (else this test is ignored): failing to
        // load it now is an error, not a skip.
        Err(e) => panic!("libnvrtc was found when the tests were built, but: {e}"),
    }
}

/// The PTX parameter type of each signature character.
fn ptx_type(c: char) -> &'static [&'static str] {
    match c {
        'p' | 'u' => &["u64", "b64", "s64"],
        'i' => &["u32", "s32", "b32"],
        'f' => &["f32"],
        'd' => &["f64"],
        _ => &[],
    }
}

#[test]
#[cfg_attr(
    not(snnc_nvrtc),
    ignore = "needs libnvrtc: `source scripts/nvrtc-env.sh`, then cargo test"
)]
fn nvrtc_compiles_every_kernel_for_sm_90() {
    if !nvrtc_or_skip() {
        return;
    }
    let out = nvrtc::compile(&KERNELS_CU, "snnc_kernels", &nvrtc::options("sm_90"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.cubin.as_ref().is_some_and(|c| !c.is_empty()),
        "no CUBIN for sm_90"
    );
    if !out.log.is_empty() {
        println!("NVRTC log:\n{}", out.log);
    }
    let entries = nvrtc::ptx_entries(&out.ptx);
    for (k, sig) in KERNELS {
        let (_, params) = entries
            .iter()
            .find(|(name, _)| name == k)
            .unwrap_or_else(|| panic!("kernel `{k}` is not in the PTX"));
        assert_eq!(
            params.len(),
            sig.len(),
            "`{k}`: PTX parameters {params:?}, signature {sig}"
        );
        for (p, c) in params.iter().zip(sig.chars()) {
            assert!(
                ptx_type(c).contains(&p.as_str()),
                "`{k}`: PTX parameter {p} for signature {c} ({sig})"
            );
        }
    }
    assert_eq!(
        entries.len(),
        KERNELS.len(),
        "kernels in the PTX that the table lacks: {entries:?}"
    );
    if let Some(dir) = std::env::var_os("SNNC_PTX_OUT") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("snnc_kernels.sm_90.ptx"), &out.ptx).unwrap();
        std::fs::write(
            dir.join("snnc_kernels.sm_90.cubin"),
            out.cubin.as_ref().unwrap(),
        )
        .unwrap();
        println!("wrote {}", dir.display());
    }
}

#[test]
#[cfg_attr(
    not(snnc_nvrtc),
    ignore = "needs libnvrtc: `source scripts/nvrtc-env.sh`, then cargo test"
)]
fn nvrtc_reports_compile_errors() {
    if !nvrtc_or_skip() {
        return;
    }
    let e = nvrtc::compile(
        "extern \"C\" __global__ void k(float* x) { x[0] = y; }",
        "bad",
        &nvrtc::options("sm_90"),
    )
    .unwrap_err();
    let e = e.to_string();
    assert!(e.contains("identifier \"y\" is undefined"), "{e}");
}

#[test]
#[cfg_attr(
    not(snnc_nvrtc),
    ignore = "needs libnvrtc: `source scripts/nvrtc-env.sh`, then cargo test"
)]
fn the_cache_returns_what_was_compiled() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("snnc-nvrtc-cache-{}", std::process::id()));
    let src = "extern \"C\" __global__ void k(float* x) { x[0] = 1.0f; }";
    let opts = nvrtc::options("sm_90");
    let a = nvrtc::compile_cached_in(&dir, src, "cachetest", &opts).unwrap();
    let b = nvrtc::compile_cached_in(&dir, src, "cachetest", &opts).unwrap();
    assert!(!a.cached && b.cached);
    assert_eq!(a.ptx, b.ptx);
    assert_eq!(a.cubin, b.cubin);
    // Other options, another entry.
    let c = nvrtc::compile_cached_in(&dir, src, "cachetest", &nvrtc::options("sm_80")).unwrap();
    assert!(!c.cached);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prints ptxas's resource usage for every kernel (sm_90).
#[test]
#[cfg_attr(
    not(all(snnc_nvrtc, snnc_ptxas)),
    ignore = "needs libnvrtc and ptxas: `source scripts/nvrtc-env.sh`, then cargo test"
)]
fn ptxas_resource_table() {
    if !nvrtc_or_skip() {
        return;
    }
    let ptxas = std::env::var("PTXAS").unwrap_or_else(|_| "ptxas".into());
    if std::process::Command::new(&ptxas)
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("ptxas was found when the tests were built, but `{ptxas} --version` does not run");
    }
    let out = nvrtc::compile(&KERNELS_CU, "snnc_kernels", &nvrtc::options("sm_90")).unwrap();
    let dir = std::env::temp_dir().join(format!("snnc-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ptx = dir.join("k.ptx");
    std::fs::write(&ptx, &out.ptx).unwrap();
    let run = std::process::Command::new(&ptxas)
        .args(["-arch=sm_90", "-v", "-o"])
        .arg(dir.join("k.cubin"))
        .arg(&ptx)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "ptxas failed:\n{log}");
    // ptxas -v prints, per function: "Compiling entry function 'k' for
    // 'sm_90'", "Function properties for k: N bytes stack frame, N bytes
    // spill stores, N bytes spill loads", "Used N registers, …".
    let mut rows: Vec<(String, String, String, String, String)> = Vec::new();
    let num = |line: &str, after: &str| -> String {
        line.split(after)
            .next()
            .and_then(|s| s.split_whitespace().last())
            .unwrap_or("?")
            .to_string()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            rows.push((
                rest.split('\'').next().unwrap_or("?").to_string(),
                "?".into(),
                "?".into(),
                "?".into(),
                "?".into(),
            ));
        } else if line.contains("bytes stack frame") {
            if let Some(r) = rows.last_mut() {
                r.2 = num(line, " bytes stack frame");
                r.3 = num(line, " bytes spill stores");
                r.4 = num(line, " bytes spill loads");
            }
        } else if line.contains("Used ") && line.contains(" registers") {
            if let Some(r) = rows.last_mut() {
                r.1 = num(line, " registers");
            }
        }
    }
    let mut table = format!("ptxas -arch=sm_90 -v ({} kernels):\n", rows.len());
    table.push_str(&format!(
        "{:<26} {:>9} {:>7} {:>12} {:>11}\n",
        "kernel", "registers", "stack", "spill stores", "spill loads"
    ));
    for r in &rows {
        table.push_str(&format!(
            "{:<26} {:>9} {:>7} {:>12} {:>11}\n",
            r.0, r.1, r.2, r.3, r.4
        ));
    }
    print!("{table}");
    // With SNNC_TABLE_DIR set (CI sets it), also written there: CI prints
    // it after the suite without running ptxas again.
    if let Some(dir) = std::env::var_os("SNNC_TABLE_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("library_kernels.txt"), &table).unwrap();
    }
    assert_eq!(rows.len(), KERNELS.len(), "ptxas output:\n{log}");
    for r in &rows {
        assert!(r.3 == "0" && r.4 == "0", "{} spills registers", r.0);
    }
}

/// Without a GPU (this machine, CI) `probe` returns an error saying what
/// it looked for, and never panics.
#[test]
fn probe_never_panics() {
    match probe() {
        Ok(info) => println!("GPU: {info}"),
        Err(e) => {
            println!("no GPU: {e}");
            assert!(!e.to_string().is_empty());
        }
    }
}
