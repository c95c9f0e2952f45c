//! Hardening of the front end: sizes that overflow or cannot fit, nesting,
//! hints that name real flags, located errors in rate mode, no Debug
//! formatting in messages, and the characters people paste into `.snn`
//! files.

mod common;
use common::run::{snnc, TmpDir};

use snnc::dsl::{parse, Diagnostic};
use snnc::model::{Layer, LayerKind, Model};
use snnc::passes::rate::Mode;
use snnc::shape::{self, elements, ShapeError, MAX_ELEMENTS, MAX_NESTING};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn write(dir: &TmpDir, name: &str, text: &str) -> PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Parse and analyse `src`: the error as (line, rendered text).
fn front_end(src: &str) -> Result<shape::Analysis, (u32, String)> {
    let model = parse(src, "m.snn").map_err(|d| (d.line, d.render("m.snn", src)))?;
    shape::analyze(&model).map_err(|e| {
        let text = snnc::frontend::shape_error(&e, "m.snn", src).to_string();
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("--> m.snn:"))
            .and_then(|l| l.split(':').next()?.parse().ok())
            .unwrap_or(0);
        (line, text)
    })
}

fn shape_error(src: &str) -> (u32, String) {
    match front_end(src) {
        Ok(a) => panic!("expected an error for\n{src}\ngot {a:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- sizes

#[test]
fn sizes_that_overflow_are_located_errors() {
    let max = usize::MAX;
    let cases: Vec<(String, u32, &str)> = vec![
        // The two examples: a padding that wrapped to a 4×4×4
        // output, and an input that flattened to 0 elements.
        (
            format!("input 1x4x4\nconv2d 4 kernel=3 padding={max}\nflatten\nlinear 2\n"),
            2,
            "padding",
        ),
        (
            "input 4294967296x4294967296x4294967296\nflatten\nlinear 2\n".into(),
            1,
            "too large",
        ),
        (
            "input 18446744073709551615\nlinear 2\n".into(),
            1,
            "too large",
        ),
        // A kernel whose fan-in (C·k·k) overflows.
        (
            format!(
                "input 3x2x2\nconv2d 1 kernel={} padding={}\nflatten\nlinear 2\n",
                1u64 << 32,
                1u64 << 31
            ),
            2,
            "too large",
        ),
        // Output channels × H × W overflow.
        (
            format!(
                "input 1x65536x65536\nconv2d {} kernel=1\nflatten\nlinear 2\n",
                1u64 << 40
            ),
            2,
            "too large",
        ),
        // A weight out × in that overflows, in a residual branch.
        (
            format!(
                "input {}\nresidual {{\n    linear {}\n    linear {}\n}}\nlinear 2\n",
                1u64 << 40,
                1u64 << 40,
                1u64 << 40
            ),
            3,
            "too large",
        ),
        // The parameter total overflows although each weight fits.
        (
            format!(
                "input {n}\n{}linear 2\n",
                "linear 536870912\nlinear 536870912\n".repeat(8),
                n = 1u64 << 30
            ),
            0,
            "too large",
        ),
    ];
    for (src, line, what) in cases {
        let (got_line, text) = shape_error(&src);
        assert!(got_line > 0, "not located:\n{text}");
        if line > 0 {
            assert_eq!(got_line, line, "{text}");
        }
        assert!(text.contains(what), "{text}");
        assert!(text.contains("--> m.snn:"), "{text}");
    }
}

#[test]
fn accepted_sizes_are_exact() {
    let a = front_end("input 3x32x32\nconv2d 64 kernel=3 stride=2 padding=1\nflatten\nlinear 10\n")
        .unwrap();
    for l in &a.layers {
        assert_eq!(elements(&l.output), Some(l.output.iter().product()));
    }
    assert_eq!(a.layers[0].output, vec![64, 16, 16]);
    assert_eq!(a.param_count(), 64 * 3 * 9 + 64 + 10 * 64 * 16 * 16 + 10);
    assert!(elements(&[1 << 20, 1 << 20, 1 << 19]).is_some());
    assert!(elements(&[1 << 20, 1 << 20, 1 << 20]).is_none());
    assert!(elements(&[1 << 21, 1 << 20, 1 << 20]).is_none());
    assert_eq!(MAX_ELEMENTS, isize::MAX as usize / 8);
}

#[test]
fn check_and_run_refuse_overflowing_sizes() {
    let dir = TmpDir::new("overflow");
    let pad = write(
        &dir,
        "pad.snn",
        "input 1x4x4\nconv2d 4 kernel=3 padding=18446744073709551615\nflatten\nlinear 2\n",
    );
    let big = write(
        &dir,
        "big.snn",
        "input 4294967296x4294967296x4294967296\nflatten\nlinear 2\n",
    );
    for f in [&pad, &big] {
        for cmd in ["check", "run"] {
            let (code, out, err) = snnc(&[cmd, f.to_str().unwrap()]);
            assert_eq!(code, 1, "{cmd} {}: {out}{err}", f.display());
            assert!(!out.contains("NaN"), "{out}");
            assert!(err.contains(".snn:") && err.contains("too large"), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn batch_that_overflows_is_an_unroll_error() {
    let model = parse("input 1x1024x1024\nflatten\nlinear 2\n", "m.snn").unwrap();
    let cfg = snnc::unroll::UnrollConfig {
        steps: 2,
        batch: 1 << 50,
        phase: snnc::unroll::Phase::Train,
    };
    let e = snnc::unroll::unroll_with(&model, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("too many elements"), "{e}");
    let events = parse(
        "input 2x1024x1024 encoding=events\nflatten\nlinear 2\n",
        "m.snn",
    )
    .unwrap();
    let cfg = snnc::unroll::UnrollConfig {
        steps: 1 << 20,
        batch: 1 << 20,
        phase: snnc::unroll::Phase::Train,
    };
    let e = snnc::unroll::unroll_with(&events, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch 1048576 × T 1048576"), "{e}");
}

// ------------------------------------------------------- memory check

/// A model that passes `check` but needs terabytes: refused, with both
/// numbers, by every command that allocates, before it allocates.
#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let dir = TmpDir::new("absurd");
    let conv = write(
        &dir,
        "conv.snn",
        "input 1x28x28\nconv2d 99999999 kernel=3\nlif\nflatten\nlinear 10\n",
    );
    let pad = write(
        &dir,
        "pad.snn",
        "input 1x28x28\nconv2d 4 kernel=3 padding=99999999\nlif\navgpool 100000000\nflatten\nlinear 10\n",
    );
    // 64 inputs like the digits set, so `train` gets past the data checks.
    let wide = write(
        &dir,
        "wide.snn",
        "input 64\nlinear 999999999999\nlif\nlinear 10\n",
    );
    let (code, _, err) = snnc(&["check", conv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let run_dir = dir.0.join("run");
    let f = |p: &Path| p.to_str().unwrap().to_string();
    let commands: Vec<Vec<String>> = vec![
        vec!["run".into(), f(&conv)],
        vec!["run".into(), f(&pad), "--f64".into()],
        vec!["grad-check".into(), f(&conv), "-T".into(), "2".into()],
        vec![
            "bench".into(),
            f(&pad),
            "-T".into(),
            "1".into(),
            "--mode".into(),
            "rate".into(),
            "--repeats".into(),
            "1".into(),
            "--batch".into(),
            "1".into(),
        ],
        vec![
            "train".into(),
            f(&wide),
            "--data".into(),
            "digits".into(),
            "--epochs".into(),
            "1".into(),
            "--out".into(),
            f(&run_dir),
        ],
    ];
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = snnc(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("not enough memory"), "{args:?}: {err}");
        assert!(err.contains("bytes) is available"), "{args:?}: {err}");
        assert!(
            !err.contains("capacity overflow") && !err.contains("panicked"),
            "{err}"
        );
    }
    // `eval` of a checkpoint whose model is absurd.
    let ck_dir = dir.0.join("ck");
    std::fs::create_dir_all(&ck_dir).unwrap();
    let cfg = snnc::runtime::train::TrainConfig {
        model_source: std::fs::read_to_string(&wide).unwrap(),
        model_file: "wide.snn".into(),
        data: "digits".into(),
        data_dir: None,
        mode: Mode::Rate,
        steps: 2,
        epochs: 1,
        batch: 32,
        lr: 0.1,
        optim: snnc::runtime::optim::OptimConfig {
            kind: snnc::runtime::optim::OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        schedule: snnc::runtime::optim::Schedule::Const,
        seed: 0,
        paper_grad_scale: false,
        order: Default::default(),
        precision: Default::default(),
        init: None,
    };
    snnc::runtime::checkpoint::save(
        &ck_dir,
        &snnc::runtime::checkpoint::Checkpoint {
            params: Default::default(),
            optim: Default::default(),
            epoch: 1,
            batch_in_epoch: 0,
            config: serde_json::to_string(&cfg).unwrap(),
            epoch_sums: None,
            metrics: None,
        },
    )
    .unwrap();
    let (code, _, err) = snnc(&["eval", ck_dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not enough memory for evaluation"), "{err}");
}

// ------------------------------------------------------------- nesting

fn nested_source(depth: usize) -> String {
    let mut s = String::from("input 8\n");
    for _ in 0..depth {
        s.push_str("residual {\n");
    }
    s.push_str("linear 8\n");
    for _ in 0..depth {
        s.push_str("}\n");
    }
    s.push_str("linear 2\n");
    s
}

#[test]
fn nesting_limit_in_the_parser() {
    assert!(front_end(&nested_source(MAX_NESTING)).is_ok());
    let d: Diagnostic = parse(&nested_source(MAX_NESTING + 1), "m.snn").unwrap_err();
    assert_eq!((d.line, d.col), (MAX_NESTING as u32 + 2, 1));
    assert!(d.message.contains("nested more than 64 deep"), "{d:?}");
}

/// The crash: a 20,000-deep file aborted `check` with a stack
/// overflow.
#[test]
fn twenty_thousand_deep_file_is_a_located_error() {
    let dir = TmpDir::new("nesting");
    let f = write(&dir, "deep.snn", &nested_source(20_000));
    let (code, _, err) = snnc(&["check", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nested more than 64 deep"), "{err}");
    assert!(err.contains("deep.snn:66:1"), "{err}");
    assert!(!err.contains("overflow"), "{err}");
}

/// Models built in Rust go through shape analysis, which enforces the
/// same limit (and stops recursing there).
#[test]
fn nesting_limit_in_shape_analysis() {
    let nest = |depth: usize| {
        let mut inner = vec![Layer::new(LayerKind::Linear { out: 8, bias: true })];
        for _ in 0..depth {
            inner = vec![Layer::new(LayerKind::Residual {
                main: inner,
                shortcut: Vec::new(),
            })];
        }
        let mut m = parse("input 8\nlinear 2\n", "m.snn").unwrap();
        m.layers.splice(0..0, inner);
        m
    };
    let ok: Model = nest(MAX_NESTING);
    assert!(shape::analyze(&ok).is_ok());
    let deep = nest(MAX_NESTING + 1);
    let e: ShapeError = shape::analyze(&deep).unwrap_err();
    assert_eq!(e.keyword, "residual");
    assert_eq!(e.path.matches(".main.").count(), MAX_NESTING);
    assert!(e.message.contains("nested more than 64 deep"), "{e}");
    // Deeper still: an error, not a stack overflow (built and dropped on a
    // thread with room for the model's own recursive drop).
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let very = nest(20_000);
            assert!(shape::analyze(&very).is_err());
        })
        .unwrap()
        .join()
        .unwrap();
}

// ----------------------------------------------------- rate mode, Debug

/// Every window geometry of max pooling compiles in rate mode (overlapping,
/// gapped, padded), through every command; a padding the window cannot
/// hold names its line and column.
#[test]
fn every_maxpool_geometry_compiles_in_rate_mode() {
    let dir = TmpDir::new("maxpool");
    for (name, pool) in [
        ("overlap.snn", "maxpool 3 stride=2"),
        ("stem.snn", "maxpool 3 stride=2 padding=1"),
        ("gapped.snn", "maxpool 2 stride=3 padding=1"),
        ("rates.snn", "maxpool 3 stride=2 padding=1 rate_rule=rates"),
    ] {
        let src = format!("input 1x9x9\nconv2d 4 kernel=3\n{pool}\nlif\nflatten\nlinear 10\n");
        let f = write(&dir, name, &src);
        let file = f.to_str().unwrap();
        for args in [
            vec!["check", file, "--mode", "rate"],
            vec!["graph", file, "-T", "2", "--after", "rate"],
            vec!["report", file, "-T", "2", "--mode", "rate"],
            vec!["grad-check", file, "-T", "2"],
        ] {
            let (code, _, err) = snnc(&args);
            assert_eq!(code, 0, "{args:?}: {err}");
        }
    }
    let f = write(
        &dir,
        "bad.snn",
        "input 1x9x9\nconv2d 4 kernel=3\nmaxpool 2 padding=2\nflatten\nlinear 10\n",
    );
    let (code, _, err) = snnc(&["check", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.snn:3:1"), "{err}");
    assert!(
        err.contains("padding 2 is more than half the kernel 2"),
        "{err}"
    );
}

/// Rust source files of the crate (src/, passes/, codegen/).
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for d in ["src", "passes", "codegen"] {
        walk(&root.join(d), &mut out);
    }
    out
}

/// The part of a file before its unit tests.
fn non_test(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Uses of Debug formatting that never reach a user as a message: keys,
/// number and literal printing, file-name tags, and dumps in internal
/// invariant failures of the CUDA backend.
const DEBUG_ALLOWED: &[(&str, &str)] = &[
    // f64's Debug form is the shortest text that parses back.
    ("src/dsl/printer.rs", "write!(f, \"{:?}\", self.0)"),
    // Hash/e-graph keys.
    ("passes/rate/lang.rs", "format!(\"{op:?}\")"),
    ("passes/cse.rs", "format!(\"{:?}\", node.op)"),
    ("passes/fuse.rs", "op => format!(\"{op:?}\")"),
    // dt in a NIR file's metadata (shortest round-trip form).
    (
        "src/nir/export.rs",
        "ex.g.metadata.insert(\"snnc_dt\".into(), format!(\"{dt:?}\"))",
    ),
    (
        "src/nir/export.rs",
        ".meta(\"snnc_dt\", format!(\"{dt:?}\"))",
    ),
    // egg's term parser (FromOp) for rule patterns: never user input.
    ("passes/rate/lang.rs", "#[error(\"unknown term {0:?}\")]"),
    // A safetensors dtype by its name (`BF16`), which is its Debug form.
    ("src/runtime/params.rs", "dtype: format!(\"{other:?}\")"),
    // A float literal in generated C (shortest round-trip form).
    ("src/ir/kernel.rs", "format!(\"{v:?}\")"),
    // Internal invariants: the offending cuBLAS call, for a bug report.
    ("codegen/cuda/gemm.rs", "{self:?}"),
    ("codegen/cuda/emu.rs", "is not in a live buffer: {call:?}"),
    ("codegen/cuda/emu.rs", "from there: {call:?}"),
    ("codegen/cuda/device.rs", "cuBLAS sgemm {c:?}"),
    ("codegen/cuda/device.rs", "cuBLAS gemm ({}) {c:?}"),
    // A comment explaining the float literal above.
    ("src/ir/kernel.rs", "// `{:?}` prints"),
];

/// `Some(1)`, `None` and quoted strings from `{:?}` must not reach users:
/// every Debug placeholder outside unit tests is in the allowlist above,
/// and every allowlist entry is still used.
#[test]
fn no_debug_formatting_in_messages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut used = vec![false; DEBUG_ALLOWED.len()];
    let mut bad = Vec::new();
    for (path, text) in sources() {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        for (i, line) in non_test(&text).lines().enumerate() {
            if !(line.contains(":?}") || line.contains(":#?}")) {
                continue;
            }
            match DEBUG_ALLOWED
                .iter()
                .position(|(f, s)| *f == rel && line.contains(s))
            {
                Some(k) => used[k] = true,
                None => bad.push(format!("{rel}:{}: {}", i + 1, line.trim())),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "Debug formatting in messages (format shapes with shape::list or dims, \
         options with their names, strings with escape_debug):\n{}",
        bad.join("\n")
    );
    let stale: Vec<_> = DEBUG_ALLOWED
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .collect();
    assert!(
        stale.is_empty(),
        "allowlist entries no longer used: {stale:?}"
    );
}

/// Messages that used to print Debug forms.
#[test]
fn messages_print_shapes_and_names() {
    let e = snnc::ir::Op::MatMul {
        ta: false,
        tb: false,
    }
    .infer_shape(&[&[2, 3], &[4, 5]])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "matmul inner dimensions differ: [2, 3] · [4, 5]"
    );
    let x = snnc::tensor::Tensor::<f32>::zeros(&[2, 3]);
    let mut inputs = std::collections::HashMap::new();
    inputs.insert("x".to_string(), x);
    let model = parse("input 4\nlinear 2\n", "m.snn").unwrap();
    let g = snnc::unroll::unroll(&model, 1).unwrap();
    let e = snnc::interp::run(&g, &inputs, &Default::default(), &Default::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e, "`x` has shape [2, 3], but the graph expects [1, 4]");
    let (code, out, _) = snnc(&[
        "graph",
        "examples/models/digits_mlp.snn",
        "-T",
        "2",
        "--after",
        "dce",
        "--format",
        "stats",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("graph digits_mlp steps=2 batch=1 after dce:"),
        "{out}"
    );
    assert!(out.contains("\n  autodiff "), "{out}");
}

// ------------------------------------------------------- pasted text

#[test]
fn byte_order_mark_is_accepted() {
    let src = "\u{feff}input 64\nlinear 10\n";
    let m = parse(src, "m.snn").unwrap();
    assert_eq!(m.input.shape, vec![64]);
    // Errors on the first line point at the right column.
    let d = parse("\u{feff}input 64 @\nlinear 10\n", "m.snn").unwrap_err();
    assert_eq!((d.line, d.col), (1, 10));
    let text = d.render("m.snn", "\u{feff}input 64 @\nlinear 10\n");
    assert!(text.contains("1 | input 64 @\n  |          ^"), "{text}");
    let dir = TmpDir::new("bom");
    let f = write(
        &dir,
        "bom.snn",
        "\u{feff}input 1x28x28\nflatten\nlinear 10\n",
    );
    let (code, out, err) = snnc(&["check", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("input 1×28×28"), "{out}");
}

#[test]
fn multiplication_sign_in_a_shape_gets_a_hint() {
    for (src, col, hint) in [
        ("input 1×28×28\nflatten\nlinear 10\n", 8, "write `1x28x28`"),
        ("input 1*28*28\nflatten\nlinear 10\n", 8, "write `1x28x28`"),
        ("input 3x32×32\nflatten\nlinear 10\n", 11, "write `3x32x32`"),
    ] {
        let d = parse(src, "m.snn").unwrap_err();
        assert_eq!((d.line, d.col), (1, col), "{src}");
        assert!(d.hint.as_deref().unwrap_or("").contains(hint), "{d:?}");
    }
    // The table `check` prints, pasted back: still a located hint.
    let (_, text) = front_end("input 64\nlinear 10\nlif ×\n").unwrap_err();
    assert!(
        text.contains("m.snn:3:5") && text.contains("letter `x`"),
        "{text}"
    );
}

// ----------------------------------------------------------- hints

/// The contents of every string literal in Rust source, with its line.
fn string_literals(src: &str) -> Vec<(usize, String)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    while i < c.len() {
        match c[i] {
            '\n' => line += 1,
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
                i += 2;
                continue;
            }
            '\'' => {
                // A char literal ('x', '\n', '\''), or a lifetime.
                if c.get(i + 1) == Some(&'\\') {
                    i += 2;
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                } else if c.get(i + 2) == Some(&'\'') {
                    i += 2;
                }
            }
            'r' if c.get(i + 1) == Some(&'"')
                || (c.get(i + 1) == Some(&'#') && c.get(i + 2) == Some(&'"')) =>
            {
                let hashes = usize::from(c[i + 1] == '#');
                let start = line;
                i += 2 + hashes;
                let mut s = String::new();
                while i < c.len() && !(c[i] == '"' && (hashes == 0 || c.get(i + 1) == Some(&'#'))) {
                    line += usize::from(c[i] == '\n');
                    s.push(c[i]);
                    i += 1;
                }
                i += 1 + hashes;
                out.push((start, s));
                continue;
            }
            '"' => {
                let start = line;
                let mut s = String::new();
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                        if c.get(i) == Some(&'\n') {
                            // A continuation: the newline and the
                            // indentation after it are not in the string.
                            line += 1;
                            while c.get(i + 1).is_some_and(|x| x.is_whitespace()) {
                                line += usize::from(c[i + 1] == '\n');
                                i += 1;
                            }
                            s.push(' ');
                        } else {
                            s.push('\\');
                            s.push(c[i]);
                        }
                    } else {
                        line += usize::from(c[i] == '\n');
                        s.push(c[i]);
                    }
                    i += 1;
                }
                out.push((start, s));
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// `--name` words in `text` (not `---`, not inside a word).
fn long_flags(text: &str) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for i in 0..c.len().saturating_sub(2) {
        let before_ok = i == 0 || !(c[i - 1].is_ascii_alphanumeric() || c[i - 1] == '-');
        if before_ok && c[i] == '-' && c[i + 1] == '-' && c[i + 2].is_ascii_lowercase() {
            let name: String = c[i + 2..]
                .iter()
                .take_while(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || **x == '-')
                .collect();
            out.push(name.trim_end_matches('-').to_string());
        }
    }
    out
}

/// Options of programs other than `snnc` that appear in string literals.
const OTHER_PROGRAMS: &[(&str, &str)] = &[
    ("codegen/cuda/nvrtc.rs", "gpu-architecture"),
    ("codegen/cuda/nvrtc.rs", "fmad"),
    ("codegen/cuda/nvrtc.rs", "std"),
    ("codegen/cuda/emu.rs", "version"),
];

/// Every long flag of every `snnc` subcommand, from `--help`.
fn cli_flags() -> BTreeSet<String> {
    fn commands(help: &str) -> Vec<String> {
        help.split("Commands:")
            .nth(1)
            .map(|rest| {
                rest.lines()
                    .skip(1)
                    .take_while(|l| l.starts_with("  "))
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|c| *c != "help")
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
    fn visit(path: Vec<String>, flags: &mut BTreeSet<String>) {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, help, err) = snnc(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        for l in help.lines().filter(|l| l.trim_start().starts_with('-')) {
            if let Some(f) = long_flags(l).first() {
                flags.insert(f.clone());
            }
        }
        for c in commands(&help) {
            let mut p = path.clone();
            p.push(c);
            visit(p, flags);
        }
    }
    let mut flags = BTreeSet::new();
    visit(Vec::new(), &mut flags);
    flags
}

/// Every flag a message, hint or help text names (`-T 100000` used to
/// suggest `--egraph-node-limit`, which did not exist) is a real flag.
#[test]
fn every_flag_named_in_a_message_exists() {
    let flags = cli_flags();
    for f in [
        "egraph-node-limit",
        "egraph-time-limit",
        "mode",
        "batch",
        "steps",
    ] {
        assert!(flags.contains(f), "--{f} missing from {flags:?}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut named = 0;
    let mut missing = Vec::new();
    for (path, text) in sources() {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let mut texts = string_literals(&text);
        if rel.starts_with("src/cli/") {
            // Doc comments there are the help text.
            texts.extend(
                text.lines()
                    .enumerate()
                    .filter_map(|(i, l)| Some((i + 1, l.trim().strip_prefix("///")?.to_string()))),
            );
        }
        for (line, s) in texts {
            for f in long_flags(&s) {
                if OTHER_PROGRAMS.contains(&(rel.as_str(), f.as_str())) {
                    continue;
                }
                named += 1;
                if !flags.contains(&f) {
                    missing.push(format!("{rel}:{line}: --{f} in {s:?}"));
                }
            }
        }
    }
    assert!(named > 20, "the scan found only {named} flags");
    assert!(
        missing.is_empty(),
        "flags that snnc does not have:\n{}",
        missing.join("\n")
    );
}

#[test]
fn string_literal_scanner() {
    let src = "let a = 'x'; let b: &'static str = \"use --mode \\\n   bptt\"; // \"--no\"\nlet c = r#\"--raw \"q\"\"#;";
    let lits = string_literals(src);
    assert_eq!(
        lits,
        vec![
            (1, "use --mode  bptt".to_string()),
            (3, "--raw \"q\"".to_string())
        ]
    );
    assert_eq!(long_flags("a --b-c, -T, x--y ---z --w"), vec!["b-c", "w"]);
}

/// The e-graph limit is a real knob: a tiny limit stops the rate pass
/// with a hint that names the flag, and the default gets through.
#[test]
fn egraph_node_limit_flag() {
    let (code, _, err) = snnc(&[
        "graph",
        "examples/models/digits_mlp.snn",
        "-T",
        "4",
        "--after",
        "rate",
        "--egraph-node-limit",
        "10",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("limit of 10 e-nodes"), "{err}");
    assert!(err.contains("--egraph-node-limit"), "{err}");
    assert!(
        !err.contains("Some(") && !err.contains("NodeLimit"),
        "{err}"
    );
    let (code, _, err) = snnc(&[
        "graph",
        "examples/models/digits_mlp.snn",
        "-T",
        "4",
        "--after",
        "rate",
        "--egraph-node-limit",
        "1000000",
        "--egraph-time-limit",
        "60",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = snnc(&[
        "check",
        "examples/models/digits_mlp.snn",
        "--egraph-time-limit",
        "0",
    ]);
    assert_eq!(code, 1, "{err}");
}

/// `-T` so large that the unrolled graph alone cannot fit: refused by the
/// same check, not a `Vec` capacity overflow.
#[test]
fn absurd_t_is_refused() {
    for t in ["18446744073709551615", "100000000000"] {
        let (code, _, err) = snnc(&["graph", "examples/models/digits_mlp.snn", "-T", t]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("not enough memory for the graph unrolled over T"),
            "{err}"
        );
        assert!(
            !err.contains("capacity overflow") && !err.contains("panicked"),
            "{err}"
        );
    }
}
