//! Snapshots of the unrolled graph (text form) for the example models.

use snnc::ir;
use snnc::unroll::unroll;
use std::path::Path;

fn unrolled(name: &str, steps: usize) -> ir::Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/models/{name}.snn"));
    let (model, _) = snnc::dsl::parse_file(&path).unwrap();
    unroll(&model, steps).unwrap()
}

#[test]
fn digits_mlp_t1() {
    insta::assert_snapshot!(ir::to_text(&unrolled("digits_mlp", 1)));
}

#[test]
fn digits_mlp_t3() {
    insta::assert_snapshot!(ir::to_text(&unrolled("digits_mlp", 3)));
}

#[test]
fn fmnist_csnn_t2() {
    insta::assert_snapshot!(ir::to_text(&unrolled("fmnist_csnn", 2)));
}

#[test]
fn digits_mlp_t2_dot() {
    insta::assert_snapshot!(ir::to_dot(&unrolled("digits_mlp", 2)));
}

/// Node count is linear in T: every per-step op is copied once per step.
#[test]
fn graph_grows_linearly_in_t() {
    let n = |t| unrolled("fmnist_csnn", t).node_count();
    let (n1, n2, n3) = (n(1), n(2), n(3));
    // Each further step adds the same number of nodes (t = 0 lacks the
    // charge and the last step lacks the reset, hence the first step differs).
    assert_eq!(n3 - n2, n(4) - n3);
    assert!(n2 > n1);
}

/// The text form is canonical: two independent unrolls print identically.
#[test]
fn printing_is_deterministic() {
    let a = ir::to_text(&unrolled("resnet19", 2));
    let b = ir::to_text(&unrolled("resnet19", 2));
    assert_eq!(a, b);
}
