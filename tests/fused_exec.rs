//! The fused plan on the CPU backend (generated C kernels, library kernels,
//! SGEMM, run by the executor over its arena) computes what
//! the reference interpreter computes: outputs and gradients, both modes,
//! every schedule (layer-major; time-major, one kernel step at a time, with
//! and without batch-norm recompute), f32; and its generated code does not
//! grow with T.
//!
//! Tolerance (`common::agree::F32`, defined in `snnc::compare`): per
//! element, |got − want| ≤ 1e-4·S, where S is the largest magnitude over all
//! gradients (for a gradient), over the output itself (logits, loss), or the
//! scale of what batch statistics are computed from; against the f32
//! interpreter; where they disagree, the f64 interpreter on the same inputs
//! arbitrates: each element within 1e-4·S of the exact value, or at most 4×
//! as far from it as the f32 interpreter is (`snnc::compare::check_arbitrated`).
//! When outputs still disagree and the reference run is ill-conditioned
//! (`snnc::compare::ill_conditioned`: a spike input within
//! `snnc::compare::TIE` of its threshold, which rounding may decide either
//! way, or a batch norm over a channel of variance below its eps, which
//! multiplies rounding noise by more than 200), a random case is rejected
//! and redrawn, a fixed one fails saying so.

mod common;

use common::example::SCHEDULES;
use common::gen;
use proptest::prelude::*;
use snnc::codegen::cpu::{backend::module_source, Cpu};
use snnc::codegen::exec::Executor;
use snnc::compile::{compile, Options};
use snnc::interp::{self, RunOptions};
use snnc::model::{Encoding, Model};
use snnc::passes::fuse;
use snnc::passes::rate::Mode;
use snnc::passes::schedule::SchedOpts;
use snnc::tensor::Tensor;
use std::collections::HashMap;

/// The error's prefix when a case is ill-conditioned (see the header).
const ILL_CASE: &str = "ill-conditioned";

fn check(
    model: &Model,
    steps: usize,
    batch: usize,
    mode: Mode,
    seed: u64,
    sched: SchedOpts,
) -> Result<(), String> {
    check_all(model, steps, batch, mode, seed, &[sched])
}

/// `check` with every launch split into as many ranges as the CPU
/// backend makes of a large one (ranges of 256 elements, in parallel), so
/// that ranges also start inside a row of pooling windows.
fn check_split(
    model: &Model,
    steps: usize,
    batch: usize,
    mode: Mode,
    seed: u64,
    sched: SchedOpts,
) -> Result<(), String> {
    SPLIT.with(|s| s.set(true));
    let r = check(model, steps, batch, mode, seed, sched);
    SPLIT.with(|s| s.set(false));
    r
}

thread_local! {
    /// Whether `compare` splits launches as `check_split` says.
    static SPLIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `check` for several schedules against one interpreter run.
fn check_all(
    model: &Model,
    steps: usize,
    batch: usize,
    mode: Mode,
    seed: u64,
    scheds: &[SchedOpts],
) -> Result<(), String> {
    let g = compile(model, &Options::new(steps, batch, mode))
        .map_err(|e| e.to_string())?
        .graph;
    let a = snnc::shape::analyze(model).map_err(|e| e.to_string())?;
    let params: HashMap<String, Tensor<f32>> =
        snnc::init::cast_params(&snnc::init::init_params(&a, seed));
    let mut x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed)
        .cast::<f32>();
    x.data.iter_mut().for_each(|v| *v *= 2.0);
    let labels = snnc::interp::random_labels(batch, a.output[0], seed).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let opts = RunOptions::seeded(seed);
    let want = interp::run(&g, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    for &sched in scheds {
        compare(&g, &inputs, &params, &want, steps, sched, &opts)?;
    }
    Ok(())
}

fn compare(
    g: &snnc::ir::Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    want: &interp::Values<f32>,
    steps: usize,
    sched: SchedOpts,
    opts: &RunOptions,
) -> Result<(), String> {
    let lowered = snnc::passes::fuse_time::lower(g, sched);
    let plan = snnc::passes::fuse_time::plan(&lowered, &[], sched);
    if sched != SchedOpts::LAYER_MAJOR && steps > 1 {
        let split = plan.units.iter().any(|u| matches!(u, fuse::Unit::Step(..)));
        let multi = plan.kernels.iter().any(|k| k.kernel.steps > 1);
        if multi && !split {
            return Err(format!("{sched}: no kernel runs one step at a time"));
        }
    }
    let source = module_source(&plan);
    let mut cpu = Cpu::new().map_err(|e| e.to_string())?;
    if SPLIT.with(|s| s.get()) {
        cpu.set_min_parallel(1);
    }
    let mut exe = Executor::with_plan(&mut cpu, &lowered, plan, &[]).map_err(|e| e.to_string())?;
    let got = exe.run(inputs, params, opts).map_err(|e| e.to_string())?;
    common::agree::outputs_arbitrated(
        "fused vs interpreter",
        g,
        inputs,
        params,
        opts,
        &got,
        want,
        common::agree::F32,
    )
    .map_err(|e| match snnc::compare::ill_conditioned(g, want) {
        Some(why) => format!("{ILL_CASE}: {why} ({sched} {e})"),
        None => format!("{sched} {e}\n{source}"),
    })?;
    Ok(())
}

fn example(name: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    snnc::dsl::parse_file(&path).unwrap().0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// Windowed kernels (pooling absorbed) over random map sizes, channel
    /// counts, steps, batches, modes and schedules: the plan has one, and
    /// it computes what the interpreter does.
    #[test]
    #[cfg_attr(not(snnc_cxx), ignore = "needs a C++ compiler for the CPU backend's library kernels")]
    fn windowed_kernels_match_interpreter(wd in gen::windowed(), steps in 1usize..=4, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000, s in 0usize..3) {
        let model = wd.model();
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        let g = compile(&model, &Options::new(steps, batch, mode)).unwrap().graph;
        prop_assert!(fuse::fuse(&g).kernels.iter().any(|k| k.kernel.window.is_some()), "no windowed kernel");
        match check_split(&model, steps, batch, mode, seed, SCHEDULES[s]) {
            Err(e) if e.starts_with(ILL_CASE) => return Err(TestCaseError::reject(e)),
            r => r.map_err(TestCaseError::fail)?,
        }
    }

    #[test]
    #[cfg_attr(not(snnc_cxx), ignore = "needs a C++ compiler for the CPU backend's library kernels")]
    fn fused_plan_matches_interpreter(r in gen::recipe(), steps in 1usize..=4, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000, s in 0usize..3) {
        let model = gen::build(&r);
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        match check(&model, steps, batch, mode, seed, SCHEDULES[s]) {
            Err(e) if e.starts_with(ILL_CASE) => return Err(TestCaseError::reject(e)),
            r => r.map_err(TestCaseError::fail)?,
        }
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CPU backend's library kernels ($CXX, c++, g++ or clang++)"
)]
fn example_models_at_small_sizes() {
    for name in ["digits_mlp", "fmnist_csnn"] {
        for mode in [Mode::Bptt, Mode::Rate] {
            for steps in [1, 3] {
                for sched in SCHEDULES {
                    check(&example(name), steps, 2, mode, 3, sched)
                        .unwrap_or_else(|e| panic!("{name} {mode} T={steps} {sched}: {e}"));
                }
            }
        }
    }
}

/// The other example models, 16 times narrower (`common::shrink`; the
/// ImageNet ones on 64×64 images), T = 2.
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CPU backend's library kernels ($CXX, c++, g++ or clang++)"
)]
fn every_example_model_at_reduced_size() {
    for name in [
        "resnet18",
        "resnet19",
        "sew_resnet34",
        "preact_resnet34",
        "vgg11",
        "vgg13",
        "vggsnn_dvs",
        "vggsnn_dvs_tet",
        "vggsnn_dvs34",
    ] {
        let model = common::shrink::small_images(&common::shrink::shrink(&example(name), 16));
        snnc::shape::analyze(&model).unwrap_or_else(|e| panic!("{name}: {e}"));
        for mode in [Mode::Bptt, Mode::Rate] {
            check_all(&model, 2, 2, mode, 3, &SCHEDULES)
                .unwrap_or_else(|e| panic!("{name} {mode}: {e}"));
        }
    }
}

#[test]
fn generated_code_does_not_grow_with_t() {
    let m = example("fmnist_csnn");
    for mode in [Mode::Bptt, Mode::Rate] {
        let sizes: Vec<(usize, usize)> = [4, 16]
            .iter()
            .map(|&t| {
                let g = compile(&m, &Options::new(t, 2, mode)).unwrap().graph;
                let plan = fuse::fuse(&g);
                (plan.kernels.len(), module_source(&plan).lines().count())
            })
            .collect();
        assert_eq!(
            sizes[0], sizes[1],
            "{mode}: (kernels, lines) at T=4 vs T=16"
        );
    }
}

/// Average pooling absorbed into the neuron kernel before it (windowed
/// kernels, `passes/fuse`): conv → batch norm → LIF → avgpool over maps
/// whose 2×2 windows tile them (absorbed: long channel runs, short ones on
/// a non-square map, one window per channel) and over maps they do not
/// tile, with overlapping windows or with windows over the size fusion
/// takes (left to the pooling kernel), in both modes and every schedule,
/// with launches split into ranges that start inside rows of windows
/// (28×28: 3 channels × 196 windows per sample), against the interpreter
/// with the tolerance of the header.
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CPU backend's library kernels ($CXX, c++, g++ or clang++)"
)]
fn pooling_absorbed_into_neuron_kernels() {
    // (H, W, pool, whether the plan absorbs it)
    let cases = [
        (8, 8, "avgpool 2", true),
        (28, 28, "avgpool 2", true),
        (4, 6, "avgpool 2", true),
        (2, 2, "avgpool 2", true),
        (9, 6, "avgpool 3", false),
        (4, 4, "avgpool 4", false),
        (7, 7, "avgpool 2", false),
        (8, 8, "avgpool 2 stride=1", false),
    ];
    for (h, w, pool, absorbed) in cases {
        let src = format!(
            "model pool_case\ninput 2x{h}x{w}\nconv2d 3 kernel=3 padding=1\nbatchnorm\nlif\n{pool}\nflatten\nlinear 4\n"
        );
        let model = snnc::dsl::parse(&src, "pool_case.snn").unwrap();
        for mode in [Mode::Bptt, Mode::Rate] {
            for steps in [1, 3] {
                let g = compile(&model, &Options::new(steps, 2, mode))
                    .unwrap()
                    .graph;
                let plan = fuse::fuse(&g);
                let windowed = plan.kernels.iter().any(|k| k.kernel.window.is_some());
                assert_eq!(
                    windowed, absorbed,
                    "{h}×{w} {pool} {mode} T={steps}: windowed kernel expected {absorbed}"
                );
                for sched in SCHEDULES {
                    check_split(&model, steps, 2, mode, 5, sched)
                        .unwrap_or_else(|e| panic!("{h}×{w} {pool} {mode} T={steps} {sched}: {e}"));
                }
            }
        }
    }
}
