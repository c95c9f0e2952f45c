//! NIR export/import, parameter files, gradients on given weights and
//! batch, the `tau=` option.
//!
//! Tolerances (per element, `snnc::compare`: |got − want| ≤ rel·max(|want|,
//! floor·max|want|)):
//! - f64 weights in the NIR file (`--f64`): rel 1e-9, floor 1e-6 — the
//!   executions differ only by summation order and the batch-norm fold
//!   (W·s·x against s·(W·x)), ~1e-15 relative; an input is used only when
//!   every spike input in snnc's run is more than 1e-9·(1 + θ) from its
//!   threshold (otherwise the next seed is drawn: a tie may be decided
//!   either way, and snnc fires at u = θ where NIR fires only at v > θ).
//! - f32 weights (the default export; the folded batch norm rounded to f32,
//!   6e-8 relative per weight): rel 1e-5, floor 1e-3, and inputs whose every
//!   spike input is more than `compare::TIE` = 1e-5·(1 + θ) from its
//!   threshold.
//!
//! Spike counts must be equal, neuron by neuron.

use snnc::compare::{self, Tol};
use snnc::init::Params;
use snnc::interop::{self, grad};
use snnc::model::{LayerKind, Model, Neuron, Reset};
use snnc::nir::{self, Arr, NirGraph, Node, Prim};
use snnc::passes::rate::Mode;
use snnc::rng::Rng;
use snnc::shape::Analysis;
use snnc::tensor::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const EXAMPLES: &[&str] = &[
    "digits_mlp",
    "fmnist_csnn",
    "resnet19",
    "vgg11",
    "vggsnn_dvs",
    "vggsnn_dvs34",
];

fn example(name: &str) -> (Model, Analysis) {
    snnc::frontend::load(Path::new(&format!("examples/models/{name}.snn"))).unwrap()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snnc-nir-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Seeded parameters with batch-norm statistics and affine parameters away
/// from the identity, so that the fold is exercised.
fn params_with_bn(a: &Analysis, seed: u64) -> Params {
    let mut p = snnc::init::init_params(a, seed);
    let mut r = Rng::new(seed ^ 0xb4);
    for (name, t) in p.iter_mut() {
        let (lo, hi) = if name.ends_with(".gamma") {
            (0.5, 1.5)
        } else if name.ends_with(".beta") {
            (-0.2, 0.2)
        } else if name.ends_with(".running_mean") {
            (-0.3, 0.3)
        } else if name.ends_with(".running_var") {
            (0.5, 2.0)
        } else {
            continue;
        };
        t.data.iter_mut().for_each(|v| *v = r.range(lo, hi));
    }
    p
}

fn input_shape(model: &Model, a: &Analysis, t: usize, b: usize) -> Vec<usize> {
    let mut s = vec![b];
    if matches!(model.input.encoding, snnc::model::Encoding::Events) {
        s.push(t);
    }
    s.extend(&a.input);
    s
}

/// An input on which snnc's run stays `margin` away from every threshold.
fn input_without_ties(
    model: &Model,
    a: &Analysis,
    params: &Params,
    t: usize,
    b: usize,
    margin: f64,
) -> (Tensor<f64>, interop::Inference, u64) {
    let shape = input_shape(model, a, t, b);
    let events = matches!(model.input.encoding, snnc::model::Encoding::Events);
    for seed in 0..20 {
        let x = snnc::interp::random_values(&shape, events, seed + 100);
        let inf = interop::infer(model, params, &x, t, true).unwrap();
        if inf.margin > margin {
            return (x, inf, seed);
        }
    }
    panic!(
        "{}: 20 inputs all came within {margin} of a threshold",
        model.name
    );
}

fn agree(what: &str, got: &Tensor<f64>, want: &Tensor<f64>, tol: Tol) {
    if let Err(m) = compare::check(got, want, tol) {
        panic!("{what}: {m} ({tol})");
    }
}

// ------------------------------------------------------------------ round trip

/// `.snn → NIR → .snn` keeps every example model's inference: the same
/// readout (f64 weights: rel 1e-9) and the same spikes, neuron by neuron.
#[test]
fn roundtrip_snn_nir_snn_is_identity_on_inference() {
    let dir = tmp("roundtrip");
    for name in EXAMPLES {
        let (model, a) = example(name);
        let params = params_with_bn(&a, 3);
        let ex = nir::export::export(&model, &a, &params, nir::DEFAULT_DT).unwrap();
        let file = dir.join(format!("{name}.nir"));
        nir::hdf5::write(&file, &ex.graph, true).unwrap();
        let g = nir::hdf5::read(&file).unwrap();
        let im = nir::import::import(&g, "t", name, nir::DEFAULT_DT).unwrap();
        // The imported model prints as a .snn that parses back to itself.
        let text = snnc::dsl::to_snn(&im.model);
        assert_eq!(
            snnc::dsl::parse(&text, "back.snn").unwrap(),
            im.model,
            "{text}"
        );
        let (t, b) = if *name == "digits_mlp" || *name == "fmnist_csnn" {
            (3, 2)
        } else {
            (2, 1)
        };
        let (x, want, _) = input_without_ties(&model, &a, &params, t, b, 1e-9);
        let got = interop::infer(&im.model, &im.params, &x, t, true).unwrap();
        agree(
            &format!("{name} readout"),
            &got.logits,
            &want.logits,
            Tol::new(1e-9, 1e-6),
        );
        assert_eq!(
            got.spikes.len(),
            want.spikes.len(),
            "{name}: spiking layers"
        );
        let mut total = 0.0;
        for ((lg, sg), (lw, sw)) in got.spikes.iter().zip(&want.spikes) {
            assert_eq!(sg.shape, sw.shape, "{name}: {lg} vs {lw}");
            assert_eq!(
                sg.data, sw.data,
                "{name}: spikes of {lg} (imported) vs {lw}"
            );
            total += sw.data.iter().sum::<f64>();
        }
        assert!(
            total > 0.0,
            "{name}: no spikes at all: the comparison says nothing"
        );
        // Batch norm is folded: no batchnorm layer comes back.
        let bn = a.layers.iter().filter(|l| l.keyword == "batchnorm").count();
        assert!(bn == 0 || !text.contains("batchnorm"), "{text}");
        eprintln!(
            "{name}: {} nodes, readout and {} spikes equal; {} batch norms folded",
            ex.graph.nodes.len(),
            total,
            bn
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a batch norm to fold, f32 weights travel exactly.
#[test]
fn digits_mlp_roundtrips_exactly_in_f32() {
    let (model, a) = example("digits_mlp");
    let params: Params = snnc::init::init_params(&a, 5)
        .into_iter()
        .map(|(k, v)| (k, v.cast::<f32>().cast::<f64>()))
        .collect();
    let ex = nir::export::export(&model, &a, &params, 1e-3).unwrap();
    let dir = tmp("f32");
    let file = dir.join("d.nir");
    nir::hdf5::write(&file, &ex.graph, false).unwrap();
    let im = nir::import::import(&nir::hdf5::read(&file).unwrap(), "d.nir", "d", 1e-3).unwrap();
    // The same layers and, resolved, the same neurons (the import writes
    // only options that differ from the defaults).
    let resolved = |m: &Model| -> Vec<(String, Option<Neuron>)> {
        m.layers
            .iter()
            .map(|l| match &l.kind {
                LayerKind::Neuron { kind, opts } => (
                    l.kind.keyword().to_string(),
                    Some(Neuron::resolve(*kind, opts, &m.neuron)),
                ),
                k => (format!("{k:?}"), None),
            })
            .collect()
    };
    assert_eq!(
        resolved(&im.model),
        resolved(&model),
        "the same model comes back"
    );
    for (k, v) in &params {
        assert_eq!(&im.params[k], v, "{k}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ errors

#[test]
fn export_refuses_what_nir_cannot_express() {
    let (m, a) = {
        let model = snnc::dsl::parse(
            "input 1x8x8\nconv2d 2\nlif\nmaxpool 2\nflatten\nlinear 3\n",
            "mp.snn",
        )
        .unwrap();
        let a = snnc::shape::analyze(&model).unwrap();
        (model, a)
    };
    let e = nir::export::export(&m, &a, &snnc::init::init_params(&a, 0), 1e-4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 2 `maxpool`") && e.contains("no max pooling"),
        "{e}"
    );
    let model = snnc::dsl::parse(
        "input 1x8x8\nconv2d 2\nlif\navgpool 2\nbatchnorm\nflatten\nlinear 3\n",
        "bn.snn",
    )
    .unwrap();
    let a = snnc::shape::analyze(&model).unwrap();
    let e = nir::export::export(&model, &a, &snnc::init::init_params(&a, 0), 1e-4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 3 `batchnorm`") && e.contains("folds one only"),
        "{e}"
    );
}

fn chain(mid: Vec<(&str, Node)>) -> NirGraph {
    let mut g = NirGraph::default();
    g.nodes
        .insert("input".into(), Node::new(Prim::Input { shape: vec![3] }));
    g.nodes.insert(
        "fc".into(),
        Node::new(Prim::Affine {
            weight: Arr::full(&[3, 3], 0.5),
            bias: Arr::full(&[3], 0.0),
        }),
    );
    g.edges.push(("input".into(), "fc".into()));
    let mut last = "fc".to_string();
    for (name, n) in mid {
        g.nodes.insert(name.into(), n);
        g.edges.push((last, name.into()));
        last = name.into();
    }
    g.nodes
        .insert("output".into(), Node::new(Prim::Output { shape: vec![3] }));
    g.edges.push((last, "output".into()));
    g
}

fn lif(tau: Vec<f64>, v_leak: f64) -> Node {
    let n = tau.len();
    Node::new(Prim::Lif {
        tau: Arr::new(&[n], tau),
        r: Arr::full(&[n], 1.0),
        v_leak: Arr::full(&[n], v_leak),
        v_threshold: Arr::full(&[n], 1.0),
        v_reset: Arr::full(&[n], 0.0),
    })
}

#[test]
fn import_errors_name_the_node_and_the_problem() {
    let imp = |g: &NirGraph| nir::import::import(g, "g.nir", "g", 1e-3);
    // Per-neuron time constants.
    let e = imp(&chain(vec![("n1", lif(vec![2e-3, 3e-3, 2e-3], 0.0))]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`g.nir`")
            && e.contains("node `n1` (LIF)")
            && e.contains("`tau` differs between neurons"),
        "{e}"
    );
    // A leak to a non-zero potential.
    let e = imp(&chain(vec![("n1", lif(vec![2e-3; 3], 0.5))]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node `n1` (LIF)") && e.contains("v_leak = 0.5"),
        "{e}"
    );
    // τ < dt: forward Euler would give λ < 0.
    let e = imp(&chain(vec![("n1", lif(vec![1e-4; 3], 0.0))]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tau = 0.0001 < dt = 0.001"), "{e}");
    // An unsupported primitive.
    let e = imp(&chain(vec![(
        "cu",
        Node::new(Prim::Other {
            type_name: "CubaLIF".into(),
        }),
    )]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("node `cu` (CubaLIF)") && e.contains("cannot express NIR primitive `CubaLIF`"),
        "{e}"
    );
    // A cycle.
    let mut g = chain(vec![("n1", lif(vec![2e-3; 3], 0.0))]);
    g.edges.push(("n1".into(), "fc".into()));
    let e = imp(&g).unwrap_err().to_string();
    assert!(e.contains("cycle") && e.contains("feed-forward"), "{e}");
    // An edge to a node that is not there.
    let mut g = chain(vec![]);
    g.edges.push(("fc".into(), "ghost".into()));
    let e = imp(&g).unwrap_err().to_string();
    assert!(e.contains("`ghost`"), "{e}");
    // Three consumers of one value.
    let mut g = chain(vec![("a", lif(vec![2e-3; 3], 0.0))]);
    for extra in ["b", "c"] {
        g.nodes.insert(extra.into(), lif(vec![2e-3; 3], 0.0));
        g.edges.push(("fc".into(), extra.into()));
        g.edges.push((extra.into(), "output".into()));
    }
    let e = imp(&g).unwrap_err().to_string();
    assert!(
        e.contains("node `fc` (Affine)") && e.contains("feeds 3 nodes"),
        "{e}"
    );
    // Not a NIR file at all.
    let dir = tmp("notnir");
    let f = dir.join("x.nir");
    std::fs::write(&f, b"hello").unwrap();
    let e = nir::hdf5::read(&f).unwrap_err().to_string();
    assert!(e.contains("x.nir") && e.contains("not HDF5"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------ parameter files

#[test]
fn parameter_files_round_trip_and_refuse_mismatches() {
    let dir = tmp("params");
    let (_, a) = example("fmnist_csnn");
    let p = params_with_bn(&a, 1);
    let f = dir.join("p.safetensors");
    interop::save_params(&f, &p, "fmnist_csnn").unwrap();
    let back = interop::load_params(&f, &a).unwrap();
    for (k, v) in &p {
        let want: Vec<f64> = v.data.iter().map(|&x| f64::from(x as f32)).collect();
        assert_eq!(back[k].data, want, "{k}");
    }
    // A parameter missing, one of the wrong shape, one unknown.
    let mut t: BTreeMap<String, Tensor<f64>> =
        p.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    t.remove("1.running_var");
    interop::write_tensors(&f, &t, HashMap::new(), false).unwrap();
    let e = interop::load_params(&f, &a).unwrap_err().to_string();
    assert!(e.contains("lacks parameter(s) `1.running_var`"), "{e}");
    t.insert("1.running_var".into(), Tensor::zeros(&[3]));
    interop::write_tensors(&f, &t, HashMap::new(), false).unwrap();
    let e = interop::load_params(&f, &a).unwrap_err().to_string();
    assert!(
        e.contains("`1.running_var` has shape 3, the model needs 32"),
        "{e}"
    );
    t.insert("1.running_var".into(), Tensor::zeros(&[32]));
    t.insert("12.weight".into(), Tensor::zeros(&[1]));
    interop::write_tensors(&f, &t, HashMap::new(), false).unwrap();
    let e = interop::load_params(&f, &a).unwrap_err().to_string();
    assert!(
        e.contains("tensor `12.weight`, which the model has no parameter for"),
        "{e}"
    );
    // A flipped bit fails its checksum.
    interop::save_params(&f, &p, "fmnist_csnn").unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::write(&f, &bytes).unwrap();
    let e = interop::load_params(&f, &a).unwrap_err().to_string();
    assert!(e.contains("fails its checksum"), "{e}");
    // The table lists every name with its layer.
    let table = interop::param_table(&a, false);
    for name in ["0.weight", "1.gamma", "1.running_mean", "11.weight"] {
        assert!(table.contains(name), "{table}");
    }
    assert_eq!(
        interop::param_table(&a, true).lines().count(),
        a.params().count()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// -------------------------------------------------------------- grad dump

/// Given weights and batch give the gradients of the same weights and batch
/// drawn at random (the same numbers, bit for bit); the dump holds every
/// gradient, the statistics and the loss; --paper-grad-scale divides rate
/// gradients by T.
#[test]
fn grad_dump_on_given_weights_and_batch() {
    let dir = tmp("grad");
    let file = PathBuf::from("examples/models/fmnist_csnn.snn");
    let (model, a) = example("fmnist_csnn");
    let (t, b, seed) = (2, 2, 4);
    fn req<'a>(
        file: &'a Path,
        params: Option<&'a Path>,
        batch: Option<&'a Path>,
        dump: Option<&'a Path>,
        scale: bool,
    ) -> grad::GradRequest<'a> {
        grad::GradRequest {
            file,
            params,
            batch_file: batch,
            steps: 2,
            batch: 2,
            seed: 4,
            modes: vec![Mode::Bptt, Mode::Rate],
            wide: true,
            paper_grad_scale: scale,
            dump,
        }
    }
    let random = grad::compute(&req(&file, None, None, None, false)).unwrap();
    // The same weights and batch, from files (labels as class indices).
    let pf = dir.join("p.safetensors");
    let params = snnc::init::init_params(&a, seed);
    let wide: BTreeMap<String, Tensor<f64>> =
        params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    interop::write_tensors(&pf, &wide, HashMap::new(), true).unwrap();
    let bf = dir.join("b.safetensors");
    let classes = a.output[0];
    let labels: Vec<f64> = random
        .labels
        .data
        .chunks(classes)
        .map(|r| r.iter().position(|&v| v == 1.0).unwrap() as f64)
        .collect();
    let batch = BTreeMap::from([
        ("x".to_string(), random.x.clone()),
        ("labels".to_string(), Tensor::from_vec(&[b], labels)),
    ]);
    interop::write_tensors(&bf, &batch, HashMap::new(), true).unwrap();
    let out = dir.join("dump.safetensors");
    grad::grad_dump(&req(&file, Some(&pf), Some(&bf), Some(&out), false)).unwrap();
    let (dump, meta) = interop::read_tensors(&out).unwrap();
    assert_eq!(meta["format"], grad::DUMP_FORMAT);
    assert_eq!(dump["loss"].data[0], random.loss);
    assert_eq!(dump["logits"].data, random.logits.data);
    for p in a.params().filter(|p| p.trainable) {
        for m in ["bptt", "rate"] {
            let g = &dump[&format!("{m}/grad/{}", p.name)];
            assert_eq!(g.shape, p.shape);
            assert_eq!(
                g.data,
                random.grads[&(m.to_string(), p.name.clone())].data,
                "{m} {}",
                p.name
            );
        }
    }
    for bn in ["1", "5"] {
        assert_eq!(
            dump[&format!("bn/{bn}.mean")].shape,
            vec![if bn == "1" { 32 } else { 64 }]
        );
        assert!(dump[&format!("bn/{bn}.var")].data.iter().all(|&v| v > 0.0));
    }
    // The loss is the mean cross-entropy of the logits (recomputed here).
    let mut ce = 0.0;
    for (row, lab) in dump["logits"]
        .data
        .chunks(classes)
        .zip(dump["labels"].data.chunks(classes))
    {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = row.iter().map(|z| (z - m).exp()).sum::<f64>().ln() + m;
        ce -= row.iter().zip(lab).map(|(z, y)| y * (z - lse)).sum::<f64>();
    }
    assert!((ce / b as f64 - dump["loss"].data[0]).abs() < 1e-12);
    // --paper-grad-scale: rate gradients / T, BPTT's unchanged.
    let scaled = grad::compute(&req(&file, Some(&pf), Some(&bf), None, true)).unwrap();
    for ((m, p), g) in &scaled.grads {
        let want = &random.grads[&(m.clone(), p.clone())];
        let k = if m == "rate" { 1.0 / t as f64 } else { 1.0 };
        for (x, y) in g.data.iter().zip(&want.data) {
            assert!((x - y * k).abs() <= 1e-15 * y.abs().max(1e-300), "{m} {p}");
        }
    }
    // Bad labels are named.
    let bad = BTreeMap::from([
        ("x".to_string(), random.x.clone()),
        (
            "labels".to_string(),
            Tensor::from_vec(&[b], vec![0.0, 10.0]),
        ),
    ]);
    interop::write_tensors(&bf, &bad, HashMap::new(), true).unwrap();
    let e = grad::compute(&req(&file, Some(&pf), Some(&bf), None, false))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("label 10 of sample 1 is not a class index in 0..10"),
        "{e}"
    );
    let _ = model;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- tau=

#[test]
fn tau_option_is_lambda_one_minus_one_over_tau() {
    let m = snnc::dsl::parse(
        "input 4\nneuron tau=4\nlinear 3\nlif tau=2\nlif\nlinear 2\n",
        "t.snn",
    )
    .unwrap();
    let lambdas: Vec<f64> = m
        .layers
        .iter()
        .filter_map(|l| match &l.kind {
            LayerKind::Neuron { kind, opts } => {
                Some(Neuron::resolve(*kind, opts, &m.neuron).lambda)
            }
            _ => None,
        })
        .collect();
    assert_eq!(lambdas, vec![0.5, 0.75]);
    let e = snnc::dsl::parse(
        "input 4\nlinear 3\nlif lambda=0.5 tau=2\nlinear 2\n",
        "t.snn",
    )
    .unwrap_err();
    assert!(
        e.message.contains("`tau` and `lambda` both set the leak"),
        "{}",
        e.message
    );
    let e = snnc::dsl::parse("input 4\nlinear 3\nif tau=2\nlinear 2\n", "t.snn").unwrap_err();
    assert!(
        e.message.contains("`if` neurons have no `tau` option"),
        "{}",
        e.message
    );
    let e = snnc::dsl::parse("input 4\nlinear 3\nlif tau=0.5\nlinear 2\n", "t.snn").unwrap_err();
    assert!(e.message.contains("at least 1"), "{}", e.message);
}

// --------------------------------------------------- against the `nir` package

#[cfg(snnc_nir)]
fn python() -> std::process::Command {
    let mut c = std::process::Command::new(env!("SNNC_NIR_PYTHON"));
    c.arg("tests/nir/nir_check.py");
    c
}

#[cfg(snnc_nir)]
fn run_python(c: &mut std::process::Command) -> serde_json::Value {
    let out = c.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nir_check.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON line")
}

/// Writes what `nir_check.py export` checks against: the input, snnc's
/// readout and spike counts (by NIR node name), the raw parameters, and per
/// layer what its node must be.
#[cfg_attr(not(snnc_nir), allow(dead_code))]
#[allow(clippy::too_many_arguments)]
fn write_expect(
    path: &Path,
    model: &Model,
    a: &Analysis,
    params: &Params,
    x: &Tensor<f64>,
    inf: &interop::Inference,
    t: usize,
    tol: Tol,
    weight_rel: f64,
) {
    let mut layers = Vec::new();
    fn walk(
        list: &[snnc::model::Layer],
        prefix: &str,
        model: &Model,
        a: &Analysis,
        out: &mut Vec<serde_json::Value>,
    ) {
        for (i, l) in list.iter().enumerate() {
            let path = format!("{prefix}{i}");
            let ls = a.layers.iter().find(|s| s.path == path).unwrap();
            let mut v =
                serde_json::json!({"path": path, "keyword": ls.keyword, "output": ls.output});
            match &l.kind {
                LayerKind::Conv2d {
                    kernel,
                    stride,
                    padding,
                    bias,
                    ..
                } => {
                    v["kernel"] = (*kernel).into();
                    v["stride"] = (*stride).into();
                    v["padding"] = (*padding).into();
                    v["bias"] = (*bias).into();
                }
                LayerKind::Linear { bias, .. } => v["bias"] = (*bias).into(),
                LayerKind::AvgPool { kernel, .. } => v["kernel"] = (*kernel).into(),
                LayerKind::Neuron { kind, opts } => {
                    let n = Neuron::resolve(*kind, opts, &model.neuron);
                    v["neuron"] = serde_json::json!({"lambda": n.lambda, "theta": n.theta,
                        "reset": if n.reset == Reset::Soft { "soft" } else { "hard" }, "v_reset": n.v_reset});
                }
                _ => {}
            }
            if let Some(snnc::model::Layer {
                kind: LayerKind::BatchNorm { eps, .. },
                ..
            }) = list.get(i + 1)
            {
                if matches!(l.kind, LayerKind::Conv2d { .. } | LayerKind::Linear { .. }) {
                    v["bn_after"] =
                        serde_json::json!({"path": format!("{prefix}{}", i + 1), "eps": eps});
                }
            }
            out.push(v);
            if let LayerKind::Residual { main, shortcut } = &l.kind {
                walk(main, &format!("{path}.main."), model, a, out);
                walk(shortcut, &format!("{path}.shortcut."), model, a, out);
            }
        }
    }
    walk(&model.layers, "", model, a, &mut layers);
    let mut f = hdf5_pure::FileBuilder::new();
    let arr = |g: &mut hdf5_pure::GroupBuilder, k: &str, t: &Tensor<f64>| {
        let s: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        g.create_dataset(k).with_f64_data(&t.data).with_shape(&s);
    };
    let x_shape: Vec<u64> = x.shape.iter().map(|&d| d as u64).collect();
    f.create_dataset("x")
        .with_f64_data(&x.data)
        .with_shape(&x_shape);
    let l_shape: Vec<u64> = inf.logits.shape.iter().map(|&d| d as u64).collect();
    f.create_dataset("logits")
        .with_f64_data(&inf.logits.data)
        .with_shape(&l_shape);
    f.create_dataset("T").with_i64_data(&[t as i64]);
    f.create_dataset("rel").with_f64_data(&[tol.rel]);
    f.create_dataset("floor").with_f64_data(&[tol.floor]);
    f.create_dataset("weight_rel").with_f64_data(&[weight_rel]);
    let events = matches!(model.input.encoding, snnc::model::Encoding::Events);
    f.create_dataset("events")
        .with_i64_data(&[i64::from(events)]);
    let json = serde_json::to_string(&layers).unwrap();
    f.create_dataset("layers")
        .with_vlen_strings(&[json.as_str()])
        .with_shape(&[]);
    let mut sp = f.create_group("spikes");
    for (label, t) in &inf.spikes {
        let (path, kw) = label.split_once(':').unwrap();
        arr(&mut sp, &nir::export::node_name(kw, path), t);
    }
    f.add_group(sp.finish());
    let mut pg = f.create_group("params");
    for (k, t) in params {
        arr(&mut pg, k, t);
    }
    f.add_group(pg.finish());
    std::fs::write(path, f.finish().unwrap()).unwrap();
}

/// (a) Every example model's export, read by `nir.read`: node types, shapes
/// and parameters as snnc's model says (the batch-norm fold recomputed in
/// NumPy), and a NumPy simulation of NIR's semantics gives snnc's spike
/// counts and readout. For digits_mlp and fmnist_csnn, `snnc run` on the
/// same input gives the simulation's readout too.
#[cfg_attr(
    not(snnc_nir),
    ignore = "needs a Python with the `nir` package (SNNC_PYTHON; .ci/run installs one)"
)]
#[test]
fn nir_package_reads_and_simulates_every_example_export() {
    #[cfg(snnc_nir)]
    {
        let dir = tmp("pyexport");
        for name in EXAMPLES {
            let case = dir.join(name);
            std::fs::create_dir_all(&case).unwrap();
            let (model, a) = example(name);
            let small = *name == "digits_mlp" || *name == "fmnist_csnn";
            let params = params_with_bn(&a, 11);
            // The small models go through f32 weights, the others f64.
            let (wide, tol, margin, wrel) = if small {
                (false, Tol::new(1e-5, 1e-3), compare::TIE, 1e-6)
            } else {
                (true, Tol::new(1e-9, 1e-6), 1e-9, 1e-12)
            };
            let params: Params = if wide {
                params
            } else {
                params
                    .into_iter()
                    .map(|(k, v)| (k, v.cast::<f32>().cast::<f64>()))
                    .collect()
            };
            let (t, b) = if *name == "digits_mlp" {
                (4, 3)
            } else {
                (2, 1)
            };
            let ex = nir::export::export(&model, &a, &params, nir::DEFAULT_DT).unwrap();
            nir::hdf5::write(&case.join("model.nir"), &ex.graph, wide).unwrap();
            let (x, inf, seed) = input_without_ties(&model, &a, &params, t, b, margin);
            write_expect(
                &case.join("expect.h5"),
                &model,
                &a,
                &params,
                &x,
                &inf,
                t,
                tol,
                wrel,
            );
            std::fs::copy(
                format!("examples/models/{name}.snn"),
                case.join("model.snn"),
            )
            .unwrap();
            interop::save_params(&case.join("params.safetensors"), &params, name).unwrap();
            let mut c = python();
            c.arg("export").arg(&case);
            if small {
                c.arg(env!("CARGO_BIN_EXE_snnc"));
            }
            let r = run_python(&mut c);
            eprintln!(
                "{name} (input seed {seed}, {}): {r}",
                if wide { "f64 weights" } else { "f32 weights" }
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// (b) Graphs built with the `nir` package (Affine+LIF MLP, Conv2d + IF +
/// SumPool2d + Flatten + Scale + Linear + Threshold, a residual sum, a
/// nested graph with AvgPool2d) import and give the NumPy simulation's
/// spike counts and readout; CubaLIF, CubaLI, LI, I and Delay are refused,
/// naming the node and the primitive.
#[cfg_attr(
    not(snnc_nir),
    ignore = "needs a Python with the `nir` package (SNNC_PYTHON; .ci/run installs one)"
)]
#[test]
fn python_built_nir_graphs_import_and_match() {
    #[cfg(snnc_nir)]
    {
        let dir = tmp("pybuild");
        let r = run_python(python().arg("build").arg(&dir));
        let cases = r["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let t = c["T"].as_u64().unwrap() as usize;
            let dt = c["dt"].as_f64().unwrap();
            let file = dir.join(format!("{name}.nir"));
            let g = nir::hdf5::read(&file).unwrap();
            let im = nir::import::import(&g, name, name, dt).unwrap();
            let h5 = hdf5_pure::File::open(dir.join(format!("{name}.expect.h5"))).unwrap();
            let read = |d: hdf5_pure::Dataset| {
                let s: Vec<usize> = d.shape().unwrap().iter().map(|&v| v as usize).collect();
                Tensor::from_vec(&s, d.read_f64().unwrap())
            };
            let x = read(h5.dataset("x").unwrap());
            let want = read(h5.dataset("logits").unwrap());
            let got = interop::infer(&im.model, &im.params, &x, t, true).unwrap();
            assert!(
                got.margin > 1e-9,
                "{name}: snnc's run came within {} of a threshold",
                got.margin
            );
            agree(
                &format!("{name} readout"),
                &got.logits,
                &want,
                Tol::new(1e-9, 1e-6),
            );
            let spikes = h5.group("spikes").unwrap();
            let mut names = spikes.datasets().unwrap();
            names.sort();
            let mut matched = Vec::new();
            for (label, s) in &got.spikes {
                let path = label.split_once(':').unwrap().0;
                let node = im.origin.get(path).unwrap_or_else(|| {
                    panic!("{name}: layer {path} has no origin: {:?}", im.origin)
                });
                let w = read(spikes.dataset(node).unwrap());
                assert_eq!(
                    s.data, w.data,
                    "{name}: spikes of layer {label} (node {node})"
                );
                matched.push(node.clone());
            }
            matched.sort();
            assert_eq!(matched, names, "{name}: every neuron node matched");
            eprintln!(
                "{name}: readout within {}, {} spikes equal; as .snn:\n{}",
                Tol::new(1e-9, 1e-6),
                c["spikes"],
                snnc::dsl::to_snn(&im.model)
            );
        }
        for typ in r["unsupported"].as_array().unwrap() {
            let typ = typ.as_str().unwrap();
            let file = dir.join(format!("bad_{typ}.nir"));
            let g = nir::hdf5::read(&file).unwrap();
            let e = nir::import::import(&g, &file.display().to_string(), "bad", 1e-3)
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains(&format!("node `x_node` ({typ})"))
                    && e.contains(&format!("cannot express NIR primitive `{typ}`"))
                    && e.contains(&format!("bad_{typ}.nir")),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
