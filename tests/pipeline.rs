//! The pass pipeline as data (`compile::pipeline`, `passes::Pipeline`):
//! `snnc graph --list-passes` lists the pipeline's passes, `--after` works
//! for each of them, the driver checks the program after every pass and
//! names the pass that broke it, the executors' entry points
//! (`fuse_time::lower`/`plan`, `memplan::build`) run the same passes, and
//! each lowering pass's result is snapshot-tested.

mod common;
use common::run::snnc;

use snnc::compile::{self, Lowering, Options, Stage, Target};
use snnc::frontend::load;
use snnc::ir::{self, Op};
use snnc::passes::rate::Mode;
use snnc::passes::schedule::SchedOpts;
use snnc::passes::{self, fuse_time, memplan, Pass, PassError, PlanError, Program};
use std::path::Path;

const TARGETS: [&str; 6] = [
    "layer-major",
    "time-major",
    "time-major-recompute",
    "fused",
    "fused-time-major",
    "fused-time-major-recompute",
];

fn lowering(target: Target) -> Lowering {
    Lowering {
        target,
        workspace: &snnc::codegen::cpu::WORKSPACE,
    }
}

fn pipeline(opts: &Options, target: &str) -> passes::Pipeline {
    compile::pipeline(opts, Some(lowering(target.parse().unwrap())))
}

/// The names `snnc graph --list-passes` prints with these flags.
fn listed(flags: &[&str]) -> Vec<String> {
    let mut args = vec!["graph", "--list-passes"];
    args.extend_from_slice(flags);
    let (code, out, err) = snnc(&args);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn list_passes_lists_every_pass_of_the_pipeline() {
    for target in TARGETS {
        for (mode, eval) in [("rate", false), ("bptt", false), ("rate", true)] {
            let mut flags = vec!["--schedule", target, "--mode", mode];
            if eval {
                flags.push("--eval");
            }
            let names = listed(&flags);
            let opts = Options {
                eval,
                ..Options::new(
                    2,
                    1,
                    if mode == "rate" {
                        Mode::Rate
                    } else {
                        Mode::Bptt
                    },
                )
            };
            let want: Vec<String> = pipeline(&opts, target)
                .names()
                .into_iter()
                .map(String::from)
                .collect();
            assert_eq!(names, want, "{target} {mode} eval={eval}");
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                names.len(),
                "{target}: a name twice: {names:?}"
            );
            assert_eq!(
                names.last().map(String::as_str),
                Some("memplan"),
                "{target}"
            );
            if !eval {
                for s in Stage::ALL {
                    assert!(names.iter().any(|n| n == s.name()), "{target}: no {s}");
                }
            }
        }
    }
    // Every line says what the pass does.
    let (_, out, _) = snnc(&["graph", "--list-passes", "--schedule", "fused-time-major"]);
    for line in out.lines() {
        let mut words = line.split_whitespace();
        assert!(words.next().is_some() && words.next().is_some(), "{line}");
    }
    // The stage names of `compile::compile` are pipeline names.
    for s in Stage::ALL {
        assert_eq!(s.name().parse::<Stage>(), Ok(s));
    }
}

#[test]
fn graph_after_every_listed_pass() {
    for target in TARGETS {
        for name in listed(&["--schedule", target]) {
            let (code, out, err) = snnc(&[
                "graph",
                "examples/models/digits_mlp.snn",
                "-T",
                "2",
                "--schedule",
                target,
                "--after",
                &name,
            ]);
            assert_eq!(code, 0, "{target} --after {name}: {err}");
            let head = out.lines().next().unwrap_or("");
            let plan_level =
                ["schedule", "fuse", "split-steps", "memplan"].contains(&name.as_str());
            let ok = if plan_level {
                ["order ", "fusion plan ", "plan "]
                    .iter()
                    .any(|p| head.starts_with(p))
            } else {
                head.starts_with("graph digits_mlp")
            };
            assert!(ok, "{target} --after {name}: {head}");
            // Stats and DOT work after every pass too.
            for format in ["stats", "dot"] {
                let (code, _, err) = snnc(&[
                    "graph",
                    "examples/models/digits_mlp.snn",
                    "-T",
                    "2",
                    "--schedule",
                    target,
                    "--after",
                    &name,
                    "--format",
                    format,
                ]);
                assert_eq!(code, 0, "{target} --after {name} --format {format}: {err}");
            }
        }
    }
}

#[test]
fn unknown_pass_lists_the_pipeline() {
    let (code, _, err) = snnc(&[
        "graph",
        "examples/models/digits_mlp.snn",
        "--after",
        "split-steps",
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: no pass `split-steps`"), "{err}");
    assert!(
        err.contains("bypass-detach") && err.contains("--list-passes"),
        "{err}"
    );
    let (code, _, err) = snnc(&[
        "graph",
        "examples/models/digits_mlp.snn",
        "--eval",
        "--after",
        "dce",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("an evaluation graph has no backward"), "{err}");
}

/// Every pass of every pipeline, in process, on a model with batch norm,
/// convolutions and pooling: each result checks (the driver checks after
/// every pass; this also sees that the program grows as it should).
#[test]
fn every_pipeline_checks_on_fmnist_csnn() {
    let (model, _) = load(Path::new("examples/models/fmnist_csnn.snn")).unwrap();
    for target in TARGETS {
        for mode in [Mode::Rate, Mode::Bptt] {
            let opts = Options::new(3, 2, mode);
            let pl = pipeline(&opts, target);
            let mut seen = Vec::new();
            let r = compile::run(&model, &opts, &pl, None).unwrap();
            for (name, _) in &r.timings {
                seen.push(*name);
            }
            assert_eq!(seen, pl.names(), "{target} {mode}");
            let p = &r.program;
            let mem = p
                .mem
                .as_ref()
                .expect("the pipeline ends with a memory plan");
            assert!(mem.peak_bytes > 0);
            assert_eq!(p.plan.is_some(), target.starts_with("fused"), "{target}");
        }
    }
}

/// A pass that breaks the graph: one node's shape annotation is wrong.
struct BreakShapes;

impl Pass for BreakShapes {
    fn name(&self) -> &'static str {
        "break-shapes"
    }
    fn about(&self) -> &'static str {
        "test: annotates a matmul with a wrong shape"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        let n = p
            .graph
            .g
            .node_indices()
            .find(|&n| matches!(p.graph.g[n].op, Op::MatMul { .. }))
            .expect("a matmul");
        p.graph.g[n].shape.push(7);
        Ok(())
    }
}

/// A pass that leaves an order that runs a node before its operand.
struct ReverseOrder;

impl Pass for ReverseOrder {
    fn name(&self) -> &'static str {
        "reverse-order"
    }
    fn about(&self) -> &'static str {
        "test: the execution order reversed"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        if let Some(o) = p.order.as_mut() {
            o.reverse();
        }
        Ok(())
    }
}

/// A pass that drops a node from the fusion plan.
struct DropUnit;

impl Pass for DropUnit {
    fn name(&self) -> &'static str {
        "drop-unit"
    }
    fn about(&self) -> &'static str {
        "test: the fusion plan's last node unit removed"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        let plan = p.plan.as_mut().expect("a plan");
        let i = plan
            .units
            .iter()
            .rposition(|u| matches!(u, passes::fuse::Unit::Node(n) if !p.graph.g[*n].op.is_leaf()))
            .expect("a library node");
        plan.units.remove(i);
        Ok(())
    }
}

fn with_inserted(
    opts: &Options,
    target: &str,
    after: &str,
    pass: Box<dyn Pass>,
) -> passes::Pipeline {
    let mut pl = pipeline(opts, target);
    let at = pl.position(after).unwrap();
    pl.passes.insert(at, pass);
    pl
}

#[test]
fn a_broken_pass_is_caught_with_its_name() {
    let (model, _) = load(Path::new("examples/models/digits_mlp.snn")).unwrap();
    let opts = Options::new(2, 1, Mode::Rate);

    // A graph broken in the middle of the front passes.
    let pl = with_inserted(&opts, "layer-major", "rate", Box::new(BreakShapes));
    let e = compile::run(&model, &opts, &pl, None)
        .err()
        .expect("caught");
    match &e {
        compile::CompileError::Pass(PassError::Invalid { pass, .. }) => {
            assert_eq!(*pass, "break-shapes")
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .starts_with("pass `break-shapes` produced an invalid graph"),
        "{e}"
    );
    // Stopping before it does not run it.
    assert!(compile::run(&model, &opts, &pl, Some("autodiff")).is_ok());

    // An order broken after scheduling.
    let pl = with_inserted(&opts, "time-major", "memplan", Box::new(ReverseOrder));
    match compile::run(&model, &opts, &pl, None).err() {
        Some(compile::CompileError::Pass(PassError::InvalidPlan {
            pass,
            err: PlanError::Order(_),
        })) => assert_eq!(pass, "reverse-order"),
        other => panic!("not caught: {:?}", other.map(|e| e.to_string())),
    }

    // A fusion plan that no longer runs a node.
    let pl = with_inserted(&opts, "fused", "memplan", Box::new(DropUnit));
    match compile::run(&model, &opts, &pl, None).err() {
        Some(compile::CompileError::Pass(PassError::InvalidPlan {
            pass,
            err: PlanError::NotRun { .. },
        })) => assert_eq!(pass, "drop-unit"),
        other => panic!("not caught: {:?}", other.map(|e| e.to_string())),
    }

    // The memory planner without an order or a plan says what it needs.
    let mut p = Program::new(compile::compile(&model, &opts).unwrap().graph);
    let e = passes::Pipeline::new(vec![Box::new(passes::MemPlan {
        workspace: &snnc::codegen::cpu::WORKSPACE,
    })])
    .run(&mut p)
    .unwrap_err();
    assert!(
        matches!(
            e,
            PassError::Missing {
                pass: "memplan",
                ..
            }
        ),
        "{e}"
    );
}

/// The executors' entry points run the same passes as the pipeline.
#[test]
fn entry_points_agree_with_the_pipeline() {
    let (model, _) = load(Path::new("examples/models/fmnist_csnn.snn")).unwrap();
    let opts = Options::new(3, 2, Mode::Rate);
    let g = compile::compile(&model, &opts).unwrap().graph;
    for s in [
        SchedOpts::LAYER_MAJOR,
        SchedOpts::TIME_MAJOR,
        SchedOpts::TIME_MAJOR_RECOMPUTE,
    ] {
        let ws = &snnc::codegen::cpu::WORKSPACE;
        // Fused: fuse_time::lower + plan + plan_fused.
        let low = fuse_time::lower(&g, s);
        let plan = fuse_time::plan(&low, &[], s);
        let mem = memplan::plan_fused(&low, &plan, ws);
        let mut p = Program::new(g.clone());
        passes::Pipeline::new(compile::lowering(lowering(Target::Fused(s))))
            .run(&mut p)
            .unwrap();
        assert_eq!(ir::to_text(&p.graph), ir::to_text(&low), "fused {s}");
        assert_eq!(
            p.plan.as_ref().unwrap().text(&p.graph),
            plan.text(&low),
            "fused {s}"
        );
        assert_eq!(
            p.mem.as_ref().unwrap().peak_bytes,
            mem.peak_bytes,
            "fused {s}"
        );
        // Graph executor: memplan::build.
        let built = memplan::build(&g, s, ws);
        let mut p = Program::new(g.clone());
        passes::Pipeline::new(compile::lowering(lowering(Target::Graph(s))))
            .run(&mut p)
            .unwrap();
        assert_eq!(ir::to_text(&p.graph), ir::to_text(&built.graph), "{s}");
        assert_eq!(p.order.as_deref(), Some(built.order()), "{s}");
        assert_eq!(p.mem.unwrap().peak_bytes, built.mem.peak_bytes, "{s}");
    }
}

/// The program after a pass, as `snnc graph` prints it (without the
/// fused plan's buffer table, which `snnc plan` snapshots).
fn render(p: &Program) -> String {
    let g = &p.graph;
    match (&p.plan, &p.order, &p.mem) {
        (Some(_), _, Some(mem)) => format!(
            "peak {} B, arena {} B, {} buffers\n",
            mem.peak_bytes,
            mem.arena_bytes,
            mem.buffers.len()
        ),
        (None, _, Some(mem)) => mem.to_text(g),
        (Some(plan), _, None) => plan.text(g),
        (None, Some(order), None) => snnc::passes::schedule::order_text(g, order),
        (None, None, _) => ir::to_text(g),
    }
}

/// One snapshot per lowering pass: digits_mlp (T = 2, rate mode) through
/// the graph executor's time-major pipeline and the fused time-major one,
/// and fmnist_csnn's batch-norm rewrites (T = 2, batch 1) through the
/// fused time-major-recompute pipeline.
#[test]
fn snapshot_after_each_lowering_pass() {
    for (model, target) in [
        ("digits_mlp", "time-major"),
        ("digits_mlp", "fused-time-major"),
        ("fmnist_csnn", "fused-time-major-recompute"),
    ] {
        let (m, _) = load(Path::new(&format!("examples/models/{model}.snn"))).unwrap();
        let opts = Options::new(2, 1, Mode::Rate);
        let pl = pipeline(&opts, target);
        let front = compile::front(&opts).len();
        let mut p = Program::new(compile::compile(&m, &opts).unwrap().graph);
        for pass in &pl.passes[front..] {
            pass.run(&mut p).unwrap();
            passes::check(&p, pass.name()).unwrap();
            // fmnist_csnn's graph texts are long: its snapshots are the
            // passes that change batch norm, and the plan-level summaries.
            if model == "fmnist_csnn"
                && ![
                    "factor-scales",
                    "recompute-bn",
                    "rematerialise-affine",
                    "memplan",
                ]
                .contains(&pass.name())
            {
                continue;
            }
            insta::assert_snapshot!(format!("{model}__{target}__{}", pass.name()), render(&p));
        }
    }
}
