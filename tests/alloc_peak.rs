//! What the executor allocates on the CPU backend is what the memory plan
//! says (`passes::memplan::units`), measured with a counting allocator:
//! for node-by-node plans in every schedule and the fusion plan in every
//! schedule, the executor's construction and first step allocate the
//! arena at its planned size, a buffer per input and parameter and the
//! downloaded outputs, plus at most
//! `MARGIN` (pointer tables, maps, names; measured 2026-12-06); and the
//! executor's arena accounting peaks exactly at the plan's peak. One test
//! in this binary, so no other test allocates while it measures.

mod common;

use common::example;
use snnc::codegen::cpu::{Cpu, WORKSPACE};
use snnc::codegen::exec::Executor;
use snnc::compile::{compile, Options, Target};
use snnc::interp::RunOptions;
use snnc::passes::memplan;
use snnc::passes::rate::Mode;
use snnc::runtime::alloc;

/// What the plan leaves out: the executor's pointer tables, maps and
/// output names. Measured on 2026-12-06 (fmnist_csnn, batch 32, T = 1
/// and 3, both modes, every plan): 35,595 to 118,107 bytes beyond the
/// arena, leaf buffers and outputs, on totals of 25 to 47 MB; the margin
/// is twice the largest.
const MARGIN: i64 = 2 * 118_107;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CPU backend's library kernels ($CXX, c++, g++ or clang++)"
)]
fn measured_peak_matches_the_plan() {
    assert!(alloc::installed());
    let model = example::model("fmnist_csnn");
    let params = example::params(&model);
    let batch = 32;
    let mut report = Vec::new();
    let mut cpu = Cpu::new().unwrap();
    for mode in [Mode::Bptt, Mode::Rate] {
        for steps in [1, 3] {
            let g = compile(&model, &Options::new(steps, batch, mode))
                .unwrap()
                .graph;
            let inputs = example::inputs(&g, batch, 10);
            for opts in example::SCHEDULES {
                for target in [Target::Graph(opts), Target::Fused(opts)] {
                    let (eg, plan) = target.plan(&g, &[]);
                    let mem = memplan::plan_units(&eg, &plan, &[], &WORKSPACE).unwrap();
                    // The executor copies each input and parameter into a
                    // buffer of its own.
                    let leaf_bytes = snnc::codegen::cpu::leaf_bytes(&eg);
                    let output_bytes: usize = eg
                        .outputs
                        .iter()
                        .map(|(_, n)| 4 * eg.node(*n).shape.iter().product::<usize>())
                        .sum();
                    // Warm up (thread pools and the kernel library load
                    // once), then measure a fresh executor.
                    {
                        let mut ex = Executor::with_plan(&mut cpu, &eg, plan.clone(), &[]).unwrap();
                        drop(ex.run(&inputs, &params, &RunOptions::seeded(0)).unwrap());
                    }
                    let ((out, stats), measured) = alloc::measure(|| {
                        let mut ex = Executor::with_plan(&mut cpu, &eg, plan, &[]).unwrap();
                        let out = ex.run(&inputs, &params, &RunOptions::seeded(0)).unwrap();
                        (out, ex.stats())
                    });
                    drop(out);
                    let expected = mem.arena_bytes + leaf_bytes + output_bytes as u64;
                    let extra = measured.unwrap() as i64 - expected as i64;
                    report.push(format!(
                        "{mode} T={steps} {target}: planned peak {} arena {} inputs and parameters {leaf_bytes} outputs {output_bytes}; measured {} ({extra:+} beyond); arena peak {}",
                        mem.peak_bytes,
                        mem.arena_bytes,
                        measured.unwrap(),
                        stats.peak_arena_live_bytes
                    ));
                    assert_eq!(
                        stats.peak_arena_live_bytes as u64,
                        mem.peak_bytes,
                        "{}",
                        report.join("\n")
                    );
                    assert!((0..=MARGIN).contains(&extra), "{}", report.join("\n"));
                }
            }
        }
    }
    println!("{}", report.join("\n"));
}
