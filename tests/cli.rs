//! The `snnc` binary: exit codes, error rendering and the check table.

mod common;
use common::run::snnc;

#[test]
fn check_table_for_fmnist_csnn() {
    let (code, out, err) = snnc(&["check", "examples/models/fmnist_csnn.snn"]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);
}

#[test]
fn check_works_on_every_example() {
    for name in [
        "digits_mlp",
        "fmnist_csnn",
        "resnet18",
        "resnet19",
        "sew_resnet34",
        "preact_resnet34",
        "vgg11",
        "vgg11_snnc",
        "vgg13",
        "vggsnn_dvs",
        "vggsnn_dvs_tet",
    ] {
        let (code, out, err) = snnc(&["check", &format!("examples/models/{name}.snn")]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("total"), "{name}: {out}");
    }
}

#[test]
fn shape_error_names_layer_line_and_fix() {
    let dir = std::env::temp_dir().join(format!("snnc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.snn");
    std::fs::write(&f, "input 1x8x8\nconv2d 4\nlinear 10\n").unwrap();
    let (code, out, err) = snnc(&["check", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("bad.snn:3:1"), "{err}");
    assert!(
        err.contains("linear needs a flat input, got 4×8×8"),
        "{err}"
    );
    assert!(err.contains("add `flatten` before it"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let (code, _, err) = snnc(&["graph", "no/such/model.snn", "-T", "2"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: cannot read `no/such/model.snn`"),
        "{err}"
    );
}

#[test]
fn zero_steps_is_an_error() {
    let (code, _, err) = snnc(&["graph", "examples/models/digits_mlp.snn", "-T", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("T must be at least 1"), "{err}");
}

#[test]
fn graph_formats() {
    let (code, text, _) = snnc(&["graph", "examples/models/digits_mlp.snn", "-T", "2"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("graph digits_mlp steps=2"));
    let (code, dot, _) = snnc(&[
        "graph",
        "examples/models/digits_mlp.snn",
        "-T",
        "2",
        "--format",
        "dot",
    ]);
    assert_eq!(code, 0);
    assert!(dot.starts_with("digraph") && dot.contains("cluster_t1"));
    let (code, stats, _) = snnc(&[
        "graph",
        "examples/models/resnet19.snn",
        "-T",
        "4",
        "--format",
        "stats",
    ]);
    assert_eq!(code, 0);
    assert!(
        stats.contains("nodes") && stats.contains("edges"),
        "{stats}"
    );
}

#[test]
fn run_prints_readout_and_rates() {
    let (code, out, err) = snnc(&[
        "run",
        "examples/models/digits_mlp.snn",
        "-T",
        "3",
        "--seed",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sample 1:") && out.contains("1:lif"), "{out}");
    let (code, json, _) = snnc(&[
        "run",
        "examples/models/fmnist_csnn.snn",
        "-T",
        "2",
        "--batch",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["logits"][0].as_array().unwrap().len(), 10);
    assert_eq!(v["firing_rates"].as_array().unwrap().len(), 3);
}

#[test]
fn rules_lists_exact_and_approximate() {
    let (code, out, _) = snnc(&["rules"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("decorrelate") && out.contains("approximate"),
        "{out}"
    );
    assert!(
        out.lines().filter(|l| l.contains(" exact ")).count() >= 3,
        "{out}"
    );
}

#[test]
fn graph_after_each_stage() {
    for after in ["unrolled", "autodiff", "rate", "dce"] {
        let (code, out, err) = snnc(&[
            "graph",
            "examples/models/digits_mlp.snn",
            "-T",
            "2",
            "--after",
            after,
            "--mode",
            "bptt",
        ]);
        assert_eq!(code, 0, "{after}: {err}");
        assert!(out.starts_with("graph digits_mlp"), "{out}");
    }
    let (_, text, _) = snnc(&[
        "graph",
        "examples/models/digits_mlp.snn",
        "-T",
        "2",
        "--after",
        "rate",
        "--mode",
        "rate",
    ]);
    assert!(text.contains("time_mean"), "{text}");
}

#[test]
fn report_rate_memory_is_flat_in_t() {
    let (code, out, err) = snnc(&[
        "report",
        "examples/models/fmnist_csnn.snn",
        "-T",
        "1,2,4",
        "--batch",
        "4",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let kept = |mode: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r["mode"] == mode)
            .map(|r| r["kept_bytes"].as_f64().unwrap())
            .collect()
    };
    let rate = kept("Rate");
    assert!(rate.iter().all(|&k| k == rate[0]), "{rate:?}");
    let bptt = kept("Bptt");
    assert!(bptt[2] > bptt[1] && bptt[1] > bptt[0], "{bptt:?}");
}

/// Every model of the paper keeps the same bytes in rate mode at T = 2, 4
/// and 6 (at T = 1 a step's values and their means coincide), while BPTT's
/// grow with T.
#[test]
fn report_rate_memory_is_flat_for_every_paper_model() {
    for name in [
        "resnet18",
        "resnet19",
        "vgg11",
        "vgg13",
        "vggsnn_dvs",
        "sew_resnet34",
        "preact_resnet34",
    ] {
        let file = format!("examples/models/{name}.snn");
        let (code, out, err) = snnc(&["report", &file, "-T", "2,4,6", "--json"]);
        assert_eq!(code, 0, "{name}: {err}");
        let rows: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kept = |mode: &str| -> Vec<f64> {
            rows.iter()
                .filter(|r| r["mode"] == mode)
                .map(|r| r["kept_bytes"].as_f64().unwrap())
                .collect()
        };
        let rate = kept("Rate");
        assert_eq!(rate.len(), 3, "{name}: {out}");
        assert!(rate.iter().all(|&k| k == rate[0]), "{name}: {rate:?}");
        let bptt = kept("Bptt");
        assert!(bptt[2] > bptt[1] && bptt[1] > bptt[0], "{name}: {bptt:?}");
    }
}

#[test]
fn grad_check_prints_cosines() {
    let (code, out, err) = snnc(&[
        "grad-check",
        "examples/models/digits_mlp.snn",
        "-T",
        "3",
        "--batch",
        "4",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    // digits_mlp's rate gradients are exact (output layer, constant input).
    for r in &rows {
        assert!((r["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{r}");
    }
}

#[test]
fn bench_reports_rows() {
    let (code, out, err) = snnc(&[
        "bench",
        "examples/models/digits_mlp.snn",
        "-T",
        "1,2",
        "--batch",
        "8",
        "--repeats",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|r| r["step_seconds"].as_f64().unwrap() > 0.0));
}

/// `bench --limits` gives each row one profiled step by kernel class and
/// the limits it measured: the classes a conv → batch norm → LIF → pool
/// model has, each with time, bytes and (for GEMMs) FLOPs, and positive
/// limits.
#[test]
fn bench_limits_reports_kernel_classes() {
    let tmp = common::run::TmpDir::new("limits");
    let model = tmp.0.join("m.snn");
    std::fs::write(
        &model,
        "model m\ninput 1x8x8 encoding=direct\nconv2d 4 kernel=3 padding=1 bias=false\n\
         batchnorm\nlif\navgpool 2\nflatten\nlinear 3 bias=false\n",
    )
    .unwrap();
    let (code, out, err) = snnc(&[
        "bench",
        model.to_str().unwrap(),
        "-T",
        "2",
        "--batch",
        "4",
        "--repeats",
        "1",
        "--mode",
        "bptt",
        "--limits",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let limits = &row["limits"];
    assert!(limits["copy_gbs"].as_f64().unwrap() > 0.0, "{row}");
    assert!(limits["gemm_gflops"].as_f64().unwrap() > 0.0, "{row}");
    let classes = row["classes"].as_array().unwrap();
    let names: Vec<&str> = classes
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    for want in ["Gemm", "Neuron", "BatchNorm", "Pooling"] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    for c in classes {
        assert!(c["seconds"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["bytes"].as_f64().unwrap() > 0.0, "{c}");
    }
    let gemm = classes.iter().find(|c| c["class"] == "Gemm").unwrap();
    assert!(gemm["flops"].as_f64().unwrap() > 0.0);
}

/// `bench --events` times every forward convolution of the model as
/// im2col + SGEMM and as events at every density.
#[test]
fn bench_events_times_both_paths_per_convolution() {
    let tmp = common::run::TmpDir::new("events");
    let model = tmp.0.join("m.snn");
    std::fs::write(
        &model,
        "model m\ninput 2x8x8 encoding=direct\nconv2d 4 kernel=3 padding=1 bias=false\n\
         lif\nconv2d 6 kernel=3 stride=2 bias=false\nlif\nflatten\nlinear 3 bias=false\n",
    )
    .unwrap();
    let (code, out, err) = snnc(&[
        "bench",
        model.to_str().unwrap(),
        "--events",
        "--batch",
        "3",
        "--repeats",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every density from 1 % to 60 %, for both convolutions.
    let mut densities: Vec<f64> = rows
        .iter()
        .map(|r| r["density"].as_f64().unwrap())
        .collect();
    densities.sort_by(f64::total_cmp);
    densities.dedup();
    let n = densities.len();
    assert!(
        n >= 5 && densities[0] <= 0.01 && densities[n - 1] >= 0.5,
        "{densities:?}"
    );
    assert_eq!(rows.len(), 2 * n, "{out}");
    for r in &rows {
        assert!(r["dense_seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["events_seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["batch"], 3);
    }
}

/// Every run `scripts/paper.sh` lists is a command snnc accepts: its flags
/// parse, its model (CIFAR-100's copy with 100 outputs included) loads, and
/// it stops at the data set, which is missing here, naming the path.
#[test]
fn paper_script_commands_parse_and_stop_at_the_missing_data() {
    let root = env!("CARGO_MANIFEST_DIR");
    let tmp = common::run::TmpDir::new("paper");
    let list = std::process::Command::new("bash")
        .args(["scripts/paper.sh", "list"])
        .current_dir(root)
        .env("SNNC", env!("CARGO_BIN_EXE_snnc"))
        .output()
        .unwrap();
    assert!(list.status.success());
    let text = String::from_utf8(list.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 22, "{text}");
    let missing = tmp.0.join("no-such-data");
    for line in lines {
        // Into the temporary folder: the copied models, the runs, the data.
        let cmd = line
            .replace(
                "runs/paper-models",
                &tmp.0.join("models").display().to_string(),
            )
            .replace("--out runs/", &format!("--out {}/", tmp.0.display()))
            .replace("DATA_DIR", &missing.display().to_string());
        let out = std::process::Command::new("bash")
            .args(["-c", &cmd])
            .current_dir(root)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}\n{err}");
        assert!(err.contains("no-such-data"), "{cmd}\n{err}");
    }
}
