//! The paper's models, transcribed from the official code into
//! `examples/models/` (resnet18, resnet19, vgg11, vgg13, vggsnn_dvs,
//! sew_resnet34, preact_resnet34), at
//! 1/16 of their width (`common::shrink`; the ImageNet models on 64×64
//! images): at T = 1 the rate-mode
//! gradients equal BPTT's for every parameter (one step has no time
//! correlations for the rate approximation to drop), checked as a cosine
//! of at least 1 − 1e-9 and a norm ratio within 1e-9 of 1 (f64
//! interpreter, `snnc grad-check`'s computation; a parameter whose
//! gradient is zero in both modes, reported as 0/0, counts as equal).

mod common;

use snnc::interop::grad::check_rows;

const PAPER_MODELS: &[&str] = &[
    "resnet18",
    "resnet19",
    "vgg11",
    "vgg13",
    "vggsnn_dvs",
    "sew_resnet34",
    "preact_resnet34",
];

fn shrunk(name: &str) -> (snnc::model::Model, snnc::shape::Analysis) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/models/{name}.snn"));
    let model = common::shrink::shrink(&snnc::dsl::parse_file(&path).unwrap().0, 16);
    let model = common::shrink::small_images(&model);
    let a = snnc::shape::analyze(&model).unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, a)
}

#[test]
fn rate_gradients_equal_bptt_at_one_step() {
    for name in PAPER_MODELS {
        let (model, a) = shrunk(name);
        let rows = check_rows(&model, &a, 1, 2, 3).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!rows.is_empty(), "{name}: no parameters");
        let zero = rows.iter().filter(|r| r.norm_ratio.is_nan()).count();
        assert!(
            2 * zero < rows.len(),
            "{name}: {zero} of {} gradients are zero in both modes",
            rows.len()
        );
        for r in &rows {
            // 0/0: both gradients are zero (a layer no spike reached at
            // this width and seed), which is equal too.
            if r.cosine.is_nan() && r.norm_ratio.is_nan() {
                continue;
            }
            assert!(
                r.cosine >= 1.0 - 1e-9 && (r.norm_ratio - 1.0).abs() <= 1e-9,
                "{name} {}: cosine {} norm ratio {}",
                r.param,
                r.cosine,
                r.norm_ratio
            );
        }
    }
}
