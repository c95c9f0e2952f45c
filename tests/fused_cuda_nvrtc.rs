//! Every fused kernel the compiler generates — every example model, both
//! modes, the fusion plan in each schedule (layer-major: a kernel's steps in
//! one launch; time-major and time-major with batch-norm recompute: one
//! step per launch, on the graph `fuse_time::lower` makes, whose kernels
//! can differ) — printed as CUDA C (`codegen/render_cuda`) compiles with
//! NVRTC for sm_90, declares the ABI the runtime launches (`(float *const
//! *p, long long n, int t0, int t1, float *st)`), and, when `ptxas` is on
//! PATH, uses no spill stores or loads; the table lists every kernel's
//! registers and stack.
//!
//! Needs libnvrtc (`source scripts/nvrtc-env.sh`); without it (as build.rs
//! finds it) the test is ignored, with the reason in `cargo test`'s summary.

use snnc::codegen::cuda::nvrtc;
use snnc::codegen::render_cuda;
use snnc::compile::{compile, Options};
use snnc::passes::fuse_time;
use snnc::passes::rate::Mode;
use snnc::passes::schedule::SchedOpts;

fn nvrtc_or_skip() -> bool {
    match nvrtc::available() {
        Ok(()) => true,
        // The build found libnvrtc (else this test is ignored): failing to
        // load it now is an error, not a skip.
        Err(e) => panic!("libnvrtc was found when the tests were built, but: {e}"),
    }
}

/// With `SNNC_TABLE_DIR` set (CI sets it), also writes the table there, so
/// that CI prints it without compiling every kernel a second time.
fn save_table(name: &str, table: &str) {
    if let Some(dir) = std::env::var_os("SNNC_TABLE_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), table).unwrap();
    }
}

/// One translation unit per model, mode and schedule: the header and every
/// kernel of the plan.
fn sources() -> Vec<(String, String, Vec<String>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snn"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let (model, _) = snnc::dsl::parse_file(&f).unwrap();
        for mode in [Mode::Bptt, Mode::Rate] {
            let g = compile(&model, &Options::new(4, 2, mode)).unwrap().graph;
            for (tag, sched) in [
                ("lm", SchedOpts::LAYER_MAJOR),
                ("tm", SchedOpts::TIME_MAJOR),
                ("tmr", SchedOpts::TIME_MAJOR_RECOMPUTE),
            ] {
                let g = fuse_time::lower(&g, sched);
                let plan = fuse_time::plan(&g, &[], sched);
                let mut src = render_cuda::header();
                let mut names = Vec::new();
                for k in &plan.kernels {
                    src.push('\n');
                    src.push_str(&render_cuda::kernel(&k.kernel));
                    names.push(k.kernel.name.clone());
                }
                out.push((format!("{}_{mode}_{tag}", model.name), src, names));
            }
        }
    }
    out
}

#[test]
#[cfg_attr(
    not(snnc_nvrtc),
    ignore = "needs libnvrtc: `source scripts/nvrtc-env.sh`, then cargo test"
)]
fn nvrtc_compiles_every_generated_kernel_for_sm_90() {
    if !nvrtc_or_skip() {
        return;
    }
    let ptxas = std::env::var("PTXAS").unwrap_or_else(|_| "ptxas".into());
    let have_ptxas = std::process::Command::new(&ptxas)
        .arg("--version")
        .output()
        .is_ok();
    if !have_ptxas {
        println!("no ptxas on PATH: registers and spills not reported");
    }
    let dir = std::env::temp_dir().join(format!("snnc-fused-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut table = format!(
        "{:<24} {:<40} {:>9} {:>7} {:>6}\n",
        "plan", "kernel", "registers", "stack", "spills"
    );
    // The translation units are independent: compile them on every core
    // (NVRTC programs and ptxas processes share nothing), print in order.
    let units = sources();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ptxas = have_ptxas.then_some(ptxas.as_str());
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let (units, dir) = (&units, &dir);
                s.spawn(move || {
                    units
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % threads == w)
                        .map(|(i, (plan, src, names))| {
                            (i, check_unit(plan, src, names, dir, ptxas))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap());
        }
        all.sort_by_key(|(i, _)| *i);
        let mut ordered = Vec::new();
        for (_, r) in all {
            ordered.push(r);
        }
        ordered
    });
    let mut total = 0;
    for (count, lines) in results {
        total += count;
        for l in lines {
            table.push_str(&l);
            table.push('\n');
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    table.push_str(&format!("{total} generated kernels compiled for sm_90 (every example model, both modes, three schedules)\n"));
    print!("{table}");
    save_table("fused_kernels.txt", &table);
    assert!(total > 0);
}

/// Compiles one translation unit for sm_90, checks every kernel's
/// parameters in the PTX and, with ptxas, that none spills; returns the
/// number of kernels and one table line per kernel (registers, stack).
fn check_unit(
    plan: &str,
    src: &str,
    names: &[String],
    dir: &std::path::Path,
    ptxas: Option<&str>,
) -> (usize, Vec<String>) {
    let out = nvrtc::compile(src, plan, &nvrtc::options("sm_90"))
        .unwrap_or_else(|e| panic!("{plan}: {e}\n{src}"));
    let entries = nvrtc::ptx_entries(&out.ptx);
    for k in names {
        let (_, params) = entries
            .iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("{plan}: kernel `{k}` is not in the PTX"));
        assert_eq!(
            params,
            &["u64", "u64", "u32", "u32", "u64"],
            "{plan}/{k}: parameters"
        );
    }
    let mut lines = Vec::new();
    let Some(ptxas) = ptxas else {
        return (names.len(), lines);
    };
    let ptx = dir.join(format!("{plan}.ptx"));
    std::fs::write(&ptx, &out.ptx).unwrap();
    let run = std::process::Command::new(ptxas)
        .args(["-arch=sm_90", "-v", "-o"])
        .arg(dir.join(format!("{plan}.cubin")))
        .arg(&ptx)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{plan}: ptxas failed:\n{log}");
    let (mut name, mut stack) = (String::new(), String::new());
    let word_before = |line: &str, pat: &str| {
        line.split(pat)
            .next()
            .and_then(|s| s.split_whitespace().last())
            .unwrap_or("?")
            .to_string()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            name = rest.split('\'').next().unwrap_or("?").to_string();
        } else if line.contains("bytes stack frame") {
            stack = word_before(line, " bytes stack frame");
            let spills = (
                word_before(line, " bytes spill stores"),
                word_before(line, " bytes spill loads"),
            );
            assert!(
                spills == ("0".into(), "0".into()),
                "{plan}/{name} spills: {line}"
            );
        } else if line.contains("Used ") && line.contains(" registers") {
            let regs = word_before(line, " registers");
            lines.push(format!(
                "{plan:<24} {name:<40} {regs:>9} {stack:>7} {:>6}",
                0
            ));
        }
    }
    (names.len(), lines)
}
