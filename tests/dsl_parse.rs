//! `.snn` text that parses, and the models it gives.

use snnc::dsl::{parse, parse_file, to_snn, ModelBuilder, LAYER_KEYWORDS};
use snnc::model::{
    Encoding, Layer, LayerKind, MaxPoolRule, Model, NeuronKind, NeuronOpts, Reset, SurrogateKind,
};

fn ok(src: &str) -> Model {
    match parse(src, "test.snn") {
        Ok(m) => m,
        Err(d) => panic!("{}", d.render("test.snn", src)),
    }
}

const FULL: &str = "\
# A small residual network using every feature of the format.
model full-net_2

input 2x32x32 encoding=poisson seed=42   # two channels
neuron lambda=0.5 theta=1.5 reset=hard v_reset=-0.25 detach_reset=false surrogate=atan alpha=2

conv2d 16 kernel=5 stride=2 padding=1 bias=false
batchnorm eps=1e-3 momentum=0.01
lif
residual {
    conv2d 16
    batchnorm
    lif lambda=0.9 surrogate=triangle
    residual {
        conv2d 16 kernel=1
    }
} shortcut {
    conv2d 16 kernel=1 padding=0
}
if theta=2 reset=soft
avgpool 2
maxpool 3 stride=1 padding=1 rate_rule=rates
flatten
dropout 0.25
linear 64 bias=false
if
linear 10
";

fn full_expected() -> Model {
    ModelBuilder::new("full-net_2")
        .input(&[2, 32, 32])
        .encoding(Encoding::Poisson { seed: 42 })
        .neuron(NeuronOpts {
            lambda: Some(0.5),
            theta: Some(1.5),
            reset: Some(Reset::Hard),
            v_reset: Some(-0.25),
            detach_reset: Some(false),
            surrogate: Some(SurrogateKind::Atan),
            alpha: Some(2.0),
        })
        .conv2d(16, 5, 2, 1, false)
        .layer(LayerKind::BatchNorm {
            eps: 1e-3,
            momentum: 0.01,
        })
        .lif()
        .residual(
            |main| {
                main.conv2d(16, 3, 1, 1, true)
                    .batchnorm()
                    .lif_with(NeuronOpts {
                        lambda: Some(0.9),
                        surrogate: Some(SurrogateKind::Triangle),
                        ..Default::default()
                    })
                    .residual(|inner| inner.conv2d(16, 1, 1, 0, true), |s| s)
            },
            |shortcut| shortcut.conv2d(16, 1, 1, 0, true),
        )
        .if_with(NeuronOpts {
            theta: Some(2.0),
            reset: Some(Reset::Soft),
            ..Default::default()
        })
        .avgpool(2)
        .layer(LayerKind::MaxPool {
            kernel: 3,
            stride: 1,
            padding: 1,
            rate_rule: MaxPoolRule::Rates,
        })
        .flatten()
        .dropout(0.25)
        .linear_nobias(64)
        .if_neuron()
        .linear(10)
        .build()
}

#[test]
fn full_featured_file() {
    let m = ok(FULL);
    assert_eq!(m, full_expected());
}

#[test]
fn full_featured_file_prints_back() {
    let m = ok(FULL);
    assert_eq!(ok(&to_snn(&m)), m);
    insta::assert_snapshot!(to_snn(&m));
}

#[test]
fn positions_are_keyword_positions() {
    let m = ok(FULL);
    let pos = |l: &Layer| (l.pos.line, l.pos.col);
    assert_eq!(pos(&m.layers[0]), (7, 1));
    assert_eq!(pos(&m.layers[3]), (10, 1));
    let LayerKind::Residual { main, shortcut } = &m.layers[3].kind else {
        panic!("layer 3 is not a residual: {:?}", m.layers[3]);
    };
    assert_eq!(pos(&main[0]), (11, 5));
    assert_eq!(pos(&main[3]), (14, 5));
    let LayerKind::Residual { main: inner, .. } = &main[3].kind else {
        panic!("nested layer is not a residual");
    };
    assert_eq!(pos(&inner[0]), (15, 9));
    assert_eq!(pos(&shortcut[0]), (18, 5));
}

#[test]
fn comments_and_blank_lines() {
    let src =
        "\n# header comment\n\n   \t\ninput 64 # trailing\n\n# between\nlinear 10#no space\n\t\n";
    let m = ok(src);
    assert_eq!(m, ModelBuilder::new("test").input(&[64]).linear(10).build());
}

#[test]
fn crlf_line_endings() {
    let m = ok("input 64\r\nlinear 10 bias=false\r\nlif\r\n");
    assert_eq!(
        m,
        ModelBuilder::new("test")
            .input(&[64])
            .linear_nobias(10)
            .lif()
            .build()
    );
}

#[test]
fn defaults() {
    let m = ok("input 3x32x32\nconv2d 8\nconv2d 8 kernel=5\nconv2d 8 kernel=4 stride=2\nbatchnorm\navgpool 2\nmaxpool 3\nlif\n");
    let expected = ModelBuilder::new("test")
        .input(&[3, 32, 32])
        .conv2d(8, 3, 1, 1, true)
        .conv2d(8, 5, 1, 2, true)
        .conv2d(8, 4, 2, 2, true)
        .layer(LayerKind::BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
        })
        .layer(LayerKind::AvgPool {
            kernel: 2,
            stride: 2,
            padding: 0,
        })
        .layer(LayerKind::MaxPool {
            kernel: 3,
            stride: 3,
            padding: 0,
            rate_rule: MaxPoolRule::Masks,
        })
        .layer(LayerKind::Neuron {
            kind: NeuronKind::Lif,
            opts: NeuronOpts::default(),
        })
        .build();
    assert_eq!(m, expected);
    assert_eq!(m.input.encoding, Encoding::Direct);
    assert_eq!(m.neuron, NeuronOpts::default());
}

#[test]
fn encodings() {
    assert_eq!(ok("input 64\nflatten\n").input.encoding, Encoding::Direct);
    assert_eq!(
        ok("input 64 encoding=direct\nflatten\n").input.encoding,
        Encoding::Direct
    );
    assert_eq!(
        ok("input 64 encoding=poisson\nflatten\n").input.encoding,
        Encoding::Poisson { seed: 0 }
    );
    assert_eq!(
        ok("input 64 seed=18446744073709551615 encoding=poisson\nflatten\n")
            .input
            .encoding,
        Encoding::Poisson { seed: u64::MAX }
    );
    assert_eq!(
        ok("input 2x34x34 encoding=events\nflatten\n")
            .input
            .encoding,
        Encoding::Events
    );
}

#[test]
fn float_forms() {
    let m = ok("input 64\nlif lambda=1 theta=2.5e1 v_reset=-0.5 alpha=.5\ndropout 0\n");
    let LayerKind::Neuron { opts, .. } = m.layers[0].kind else {
        panic!("not a neuron");
    };
    assert_eq!(opts.lambda, Some(1.0));
    assert_eq!(opts.theta, Some(25.0));
    assert_eq!(opts.v_reset, Some(-0.5));
    assert_eq!(opts.alpha, Some(0.5));
    assert_eq!(m.layers[1].kind, LayerKind::Dropout { p: 0.0 });
}

#[test]
fn residual_without_shortcut() {
    let m = ok("input 64\nresidual {\n    linear 64\n    lif\n}\nlinear 10\n");
    let expected = ModelBuilder::new("test")
        .input(&[64])
        .residual(|b| b.linear(64).lif(), |s| s)
        .linear(10)
        .build();
    assert_eq!(m, expected);
}

#[test]
fn residual_with_shortcut_on_the_closing_line() {
    let m = ok("input 64\nresidual {\n    linear 32\n} shortcut {\n    linear 32\n}\n");
    let expected = ModelBuilder::new("test")
        .input(&[64])
        .residual(|b| b.linear(32), |s| s.linear(32))
        .build();
    assert_eq!(m, expected);
}

#[test]
fn residual_with_shortcut_on_the_next_line() {
    let src =
        "input 64\nresidual {\n    linear 32\n}\n# the shortcut\n\nshortcut {\n    linear 32\n}\n";
    let expected = ModelBuilder::new("test")
        .input(&[64])
        .residual(|b| b.linear(32), |s| s.linear(32))
        .build();
    assert_eq!(ok(src), expected);
}

#[test]
fn residual_with_empty_shortcut_is_identity() {
    let m = ok("input 64\nresidual {\n    linear 64\n} shortcut {\n}\n");
    let expected = ModelBuilder::new("test")
        .input(&[64])
        .residual(|b| b.linear(64), |s| s)
        .build();
    assert_eq!(m, expected);
}

#[test]
fn braces_need_no_spaces() {
    let m = ok("input 64\nresidual{\n    linear 32\n}shortcut{\n    linear 32\n}\n");
    let expected = ModelBuilder::new("test")
        .input(&[64])
        .residual(|b| b.linear(32), |s| s.linear(32))
        .build();
    assert_eq!(m, expected);
}

#[test]
fn nested_residual() {
    let src = "\
input 8x8x8
residual {
    residual {
        conv2d 8
        residual {
            lif
        }
    } shortcut {
        conv2d 8 kernel=1
    }
    lif
} shortcut {
    residual {
        if
    }
    shortcut {
        batchnorm
    }
}
flatten
";
    let expected = ModelBuilder::new("test")
        .input(&[8, 8, 8])
        .residual(
            |b| {
                b.residual(
                    |b| b.conv2d(8, 3, 1, 1, true).residual(|b| b.lif(), |s| s),
                    |s| s.conv2d(8, 1, 1, 0, true),
                )
                .lif()
            },
            |s| s.residual(|b| b.if_neuron(), |s| s.batchnorm()),
        )
        .flatten()
        .build();
    assert_eq!(ok(src), expected);
}

#[test]
fn name_from_model_line_or_file_stem() {
    let src = "input 64\nlinear 10\n";
    assert_eq!(parse(src, "examples/models/foo.snn").unwrap().name, "foo");
    assert_eq!(parse(src, "bar").unwrap().name, "bar");
    assert_eq!(parse(src, "").unwrap().name, "model");
    assert_eq!(parse(src, "dir/v1.2.snn").unwrap().name, "v1_2");
    let named = format!("model explicit\n{src}");
    assert_eq!(
        parse(&named, "examples/models/foo.snn").unwrap().name,
        "explicit"
    );
}

#[test]
fn headers_in_any_order() {
    let a = ok("neuron theta=2\ninput 64\nmodel m\nlinear 10\n");
    let b = ok("model m\ninput 64\nneuron theta=2\nlinear 10\n");
    assert_eq!(a, b);
}

#[test]
fn positional_argument_may_follow_options() {
    assert_eq!(
        ok("input 3x8x8\nconv2d kernel=1 4\n"),
        ok("input 3x8x8\nconv2d 4 kernel=1\n")
    );
}

#[test]
fn layer_keywords_cover_every_layer() {
    let m = full_expected();
    fn walk(layers: &[Layer], seen: &mut Vec<&'static str>) {
        for l in layers {
            seen.push(l.kind.keyword());
            if let LayerKind::Residual { main, shortcut } = &l.kind {
                walk(main, seen);
                walk(shortcut, seen);
            }
        }
    }
    let mut seen = Vec::new();
    walk(&m.layers, &mut seen);
    for kw in LAYER_KEYWORDS {
        assert!(seen.contains(kw), "the full example has no `{kw}`");
    }
    for kw in &seen {
        assert!(
            LAYER_KEYWORDS.contains(kw),
            "`{kw}` is not in LAYER_KEYWORDS"
        );
    }
}

#[test]
fn parse_file_returns_model_and_source() {
    let dir = std::env::temp_dir().join(format!("snnc-dsl-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny_net.snn");
    let src = "input 64\nlinear 10\n";
    std::fs::write(&path, src).unwrap();
    let result = parse_file(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let (m, source) = result.unwrap();
    assert_eq!(m.name, "tiny_net");
    assert_eq!(source, src);
}

#[test]
fn example_models_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "snn") {
            let (m, _) = parse_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                parse(&to_snn(&m), "x.snn").unwrap(),
                m,
                "{}",
                path.display()
            );
            count += 1;
        }
    }
    let any_files = std::fs::read_dir(&dir).unwrap().next().is_some();
    if any_files {
        assert!(count > 0, "{} has files but no .snn models", dir.display());
    }
}
