//! Snapshots of what fusion produces: the plan (launch order, what each
//! kernel fused) and the generated CUDA and C source.

use snnc::codegen::{render_c, render_cuda};
use snnc::compile::{compile, Options};
use snnc::passes::fuse;
use snnc::passes::rate::Mode;

fn graph(name: &str, steps: usize, batch: usize, mode: Mode) -> snnc::ir::Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    let (model, _) = snnc::dsl::parse_file(&path).unwrap();
    compile(&model, &Options::new(steps, batch, mode))
        .unwrap()
        .graph
}

fn source(plan: &fuse::Plan, cuda: bool) -> String {
    let mut s = if cuda {
        render_cuda::header()
    } else {
        render_c::header()
    };
    for k in &plan.kernels {
        s.push('\n');
        s.push_str(&if cuda {
            render_cuda::kernel(&k.kernel)
        } else {
            render_c::kernel(&k.kernel)
        });
    }
    s
}

#[test]
fn digits_mlp_plans() {
    for mode in [Mode::Bptt, Mode::Rate] {
        let g = graph("digits_mlp", 3, 2, mode);
        let plan = fuse::fuse(&g);
        insta::assert_snapshot!(format!("digits_mlp_t3_plan_{mode}"), plan.text(&g));
    }
}

/// Time-major: every multi-step kernel split into one unit per step, the
/// units interleaved step by step across layers.
#[test]
fn digits_mlp_time_major_plans() {
    use snnc::passes::{fuse_time, schedule::SchedOpts};
    for mode in [Mode::Bptt, Mode::Rate] {
        let g = fuse_time::lower(&graph("digits_mlp", 3, 2, mode), SchedOpts::TIME_MAJOR);
        let plan = fuse_time::plan(&g, &[], SchedOpts::TIME_MAJOR);
        insta::assert_snapshot!(
            format!("digits_mlp_t3_time_major_plan_{mode}"),
            plan.text(&g)
        );
    }
}

/// The CPU lowering: batch norm's backward reads `channel_dot` nodes, not
/// stored products (`passes/fuse_time::channel_dots`).
#[test]
fn fmnist_csnn_lowered_plan() {
    use snnc::passes::{fuse_time, schedule::SchedOpts};
    let g = fuse_time::lower(
        &graph("fmnist_csnn", 2, 2, Mode::Rate),
        SchedOpts::LAYER_MAJOR,
    );
    let plan = fuse_time::plan(&g, &[], SchedOpts::LAYER_MAJOR);
    let text = plan.text(&g);
    assert!(text.contains("channel_dot"), "{text}");
    insta::assert_snapshot!("fmnist_csnn_t2_lowered_plan_rate", text);
}

#[test]
fn digits_mlp_rate_c_source() {
    let g = graph("digits_mlp", 3, 2, Mode::Rate);
    insta::assert_snapshot!(source(&fuse::fuse(&g), false));
}

#[test]
fn fmnist_csnn_cuda_source() {
    for mode in [Mode::Bptt, Mode::Rate] {
        let g = graph("fmnist_csnn", 4, 2, mode);
        insta::assert_snapshot!(
            format!("fmnist_csnn_t4_cuda_{mode}"),
            source(&fuse::fuse(&g), true)
        );
    }
}
