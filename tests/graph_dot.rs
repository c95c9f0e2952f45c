//! `snnc graph --format dot` read by Graphviz itself: every stage of every
//! example model must parse, and keep one DOT node per graph node (ids
//! like `grad:0.weight` or `5.main.1` used to split into ports or fail to
//! parse).
//!
//! Needs the `dot` binary (Debian: `apt-get install graphviz`). Without it
//! (as build.rs finds it) the tests that run it are ignored, with the reason
//! in `cargo test`'s summary; with SNNC_REQUIRE_DOT=1 (CI) its absence fails
//! the build.

mod common;
use common::run::snnc;

use snnc::compile::{compile, Options, Stage};
use snnc::passes::rate::Mode;
use std::io::Write;
use std::process::{Command, Stdio};

fn dot_available() -> bool {
    Command::new("dot")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `dot` runs (checked before each test that needs it).
fn need_dot() -> bool {
    if dot_available() {
        return true;
    }
    // build.rs found `dot` (else these tests are ignored, with the reason
    // in the summary): not finding it now is a failure, not a skip.
    panic!("the Graphviz `dot` binary was found when the tests were built, but does not run")
}

/// Graphviz's reading of `text`: the names of its nodes. `-Kosage` is a
/// cheap layout (dot's own takes minutes on resnet19's backward); `-Tjson0`
/// lists every node and cluster.
fn dot_nodes(text: &str, what: &str) -> Vec<String> {
    let mut child = Command::new("dot")
        .args(["-Kosage", "-Tjson0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dot");
    let mut stdin = child.stdin.take().unwrap();
    let input = text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("Error") && !err.contains("syntax"),
        "{what}: dot rejects the output: {err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dot's JSON");
    v["objects"]
        .as_array()
        .map(|objs| {
            objs.iter()
                // Clusters are objects too; they list their nodes.
                .filter(|o| o.get("nodes").is_none())
                .map(|o| o["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn examples() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snn"))
        .collect();
    v.sort();
    v
}

#[test]
#[cfg_attr(
    not(snnc_dot),
    ignore = "needs Graphviz's dot: apt-get install graphviz"
)]
fn every_stage_of_every_example_reads_back_in_dot() {
    if !need_dot() {
        return;
    }
    let configs = [
        (Stage::Unrolled, Mode::Rate),
        (Stage::Autodiff, Mode::Rate),
        (Stage::Rate, Mode::Rate),
        (Stage::Dce, Mode::Rate),
        (Stage::Cse, Mode::Rate),
        (Stage::Rate, Mode::Bptt),
        (Stage::Cse, Mode::Bptt),
    ];
    let models = examples();
    assert!(models.len() >= 6, "{models:?}");
    for path in &models {
        let (model, _) = snnc::frontend::load(path).unwrap();
        for (stage, mode) in configs {
            let what = format!("{} after {stage:?} ({mode})", model.name);
            let opts = Options {
                after: stage,
                ..Options::new(2, 1, mode)
            };
            let g = compile(&model, &opts).unwrap().graph;
            // The printers show the live nodes (those an output depends
            // on); the text form's header counts them.
            let text = snnc::ir::to_text(&g);
            let printed: usize = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("nodes="))
                .and_then(|n| n.parse().ok())
                .unwrap();
            let names = dot_nodes(&snnc::ir::to_dot(&g), &what);
            let ops = names.iter().filter(|n| n.starts_with('n')).count();
            let outs: Vec<&String> = names.iter().filter(|n| n.starts_with("out:")).collect();
            assert_eq!(ops, printed, "{what}: graph nodes in dot");
            assert_eq!(outs.len(), g.outputs.len(), "{what}: outputs in dot");
            assert_eq!(names.len(), printed + g.outputs.len(), "{what}");
            for (name, _) in &g.outputs {
                assert!(
                    outs.iter().any(|o| o.strip_prefix("out:") == Some(name)),
                    "{what}: output {name} is not a node of its own"
                );
            }
        }
    }
}

/// Through the binary, on the model whose nested layer paths made `dot`
/// fail with a syntax error.
#[test]
#[cfg_attr(
    not(snnc_dot),
    ignore = "needs Graphviz's dot: apt-get install graphviz"
)]
fn snnc_graph_dot_of_a_residual_model_parses() {
    if !need_dot() {
        return;
    }
    let (code, out, err) = snnc(&[
        "graph",
        "examples/models/resnet19.snn",
        "-T",
        "2",
        "--after",
        "autodiff",
        "--format",
        "dot",
    ]);
    assert_eq!(code, 0, "{err}");
    let names = dot_nodes(&out, "resnet19 after autodiff");
    assert!(names.iter().any(|n| n == "out:grad:0.weight"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("out:grad:3.main.")),
        "{names:?}"
    );
}

#[test]
fn ids_and_labels_are_quoted_and_escaped() {
    use snnc::ir::dot_quote;
    assert_eq!(dot_quote("grad:0.weight"), "\"grad:0.weight\"");
    assert_eq!(dot_quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
}
