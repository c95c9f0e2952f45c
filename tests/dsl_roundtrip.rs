//! Any valid model printed with `to_snn` parses back to itself.

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use snnc::dsl::{parse, to_snn};
use snnc::model::{
    Encoding, Input, Layer, LayerKind, MaxPoolRule, Model, NeuronKind, NeuronOpts, Reset,
    SurrogateKind,
};

/// Values whose shortest decimal form is long, or that print in exponent
/// form, to catch a printer that loses precision.
const ODD: &[f64] = &[
    0.1,
    1e-7,
    0.30000000000000004,
    1.0 / 3.0,
    0.9999999999999999,
    5e-324,
    2.2250738585072014e-308,
];

fn unit() -> impl Strategy<Value = f64> {
    prop_oneof![select(ODD), select(&[0.0, 0.2, 0.5, 1.0][..]), 0.0..=1.0]
}

fn unit_open() -> impl Strategy<Value = f64> {
    prop_oneof![
        select(ODD),
        select(&[0.0, 0.5, 0.9999999999999999][..]),
        0.0..1.0
    ]
}

fn positive() -> impl Strategy<Value = f64> {
    prop_oneof![
        select(ODD),
        select(&[1.0, 4.0, 1e-5, 123456789.125, 1e20, 1.7976931348623157e308][..]),
        1e-9..1e9
    ]
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        positive(),
        positive().prop_map(|x| -x),
        select(&[0.0, -0.0][..])
    ]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![1..8usize, select(&[16, 128, 1000, usize::MAX][..])]
}

fn neuron_opts(with_lambda: bool) -> impl Strategy<Value = NeuronOpts> {
    (
        proptest::option::of(unit()),
        proptest::option::of(positive()),
        proptest::option::of(select(&[Reset::Soft, Reset::Hard][..])),
        proptest::option::of(any_float()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(select(
            &[
                SurrogateKind::Sigmoid,
                SurrogateKind::Atan,
                SurrogateKind::Triangle,
            ][..],
        )),
        proptest::option::of(positive()),
    )
        .prop_map(
            move |(lambda, theta, reset, v_reset, detach_reset, surrogate, alpha)| NeuronOpts {
                lambda: lambda.filter(|_| with_lambda),
                theta,
                reset,
                v_reset,
                detach_reset,
                surrogate,
                alpha,
            },
        )
}

fn leaf() -> impl Strategy<Value = LayerKind> {
    prop_oneof![
        (size(), size(), size(), 0..6usize, any::<bool>()).prop_map(
            |(out, kernel, stride, padding, bias)| LayerKind::Conv2d {
                out,
                kernel,
                stride,
                padding,
                bias,
            }
        ),
        // The default padding, which the printer leaves out.
        (size(), 1..8usize).prop_map(|(out, kernel)| LayerKind::Conv2d {
            out,
            kernel,
            stride: 1,
            padding: kernel / 2,
            bias: true,
        }),
        (size(), any::<bool>()).prop_map(|(out, bias)| LayerKind::Linear { out, bias }),
        (
            prop_oneof![Just(1e-5), positive()],
            prop_oneof![Just(0.1), unit()]
        )
            .prop_map(|(eps, momentum)| LayerKind::BatchNorm { eps, momentum }),
        (size(), size(), 0usize..3).prop_map(|(kernel, stride, padding)| LayerKind::AvgPool {
            kernel,
            stride,
            padding
        }),
        (size(), size(), 0usize..3, any::<bool>()).prop_map(|(kernel, stride, padding, rates)| {
            LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                rate_rule: if rates {
                    MaxPoolRule::Rates
                } else {
                    MaxPoolRule::Masks
                },
            }
        }),
        size().prop_map(|k| LayerKind::MaxPool {
            kernel: k,
            stride: k,
            padding: 0,
            rate_rule: MaxPoolRule::Masks,
        }),
        Just(LayerKind::Flatten),
        unit_open().prop_map(|p| LayerKind::Dropout { p }),
        neuron_opts(true).prop_map(|opts| LayerKind::Neuron {
            kind: NeuronKind::Lif,
            opts,
        }),
        neuron_opts(false).prop_map(|opts| LayerKind::Neuron {
            kind: NeuronKind::If,
            opts,
        }),
    ]
}

fn layer_kind() -> impl Strategy<Value = LayerKind> {
    leaf().prop_recursive(3, 48, 4, |inner| {
        let layers = |min| prop::collection::vec(inner.clone().prop_map(Layer::new), min..4);
        (layers(1), layers(0)).prop_map(|(main, shortcut)| LayerKind::Residual { main, shortcut })
    })
}

fn model() -> impl Strategy<Value = Model> {
    let shape = prop_oneof![
        size().prop_map(|n| vec![n]),
        (size(), size(), size()).prop_map(|(c, h, w)| vec![c, h, w]),
    ];
    let encoding = prop_oneof![
        Just(Encoding::Direct),
        Just(Encoding::Events),
        Just(Encoding::Poisson { seed: 0 }),
        any::<u64>().prop_map(|seed| Encoding::Poisson { seed }),
    ];
    (
        "[A-Za-z_][A-Za-z0-9_-]{0,12}",
        shape,
        encoding,
        prop_oneof![Just(NeuronOpts::default()), neuron_opts(true)],
        prop::collection::vec(layer_kind().prop_map(Layer::new), 1..8),
    )
        .prop_map(|(name, shape, encoding, neuron, layers)| Model {
            name,
            input: Input { shape, encoding },
            neuron,
            layers,
        })
}

proptest! {
    // Failures are kept under `proptest-regressions/` at the crate root
    // (integration tests would otherwise put them next to this file).
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/dsl_roundtrip.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn print_then_parse_is_identity(m in model()) {
        let text = to_snn(&m);
        match parse(&text, "x.snn") {
            Ok(back) => prop_assert_eq!(back, m, "text:\n{}", text),
            Err(d) => prop_assert!(false, "{}\ntext:\n{}", d.render("x.snn", &text), text),
        }
    }

    /// Printing is canonical: a parsed model prints to the same text again.
    #[test]
    fn printing_is_stable(m in model()) {
        let text = to_snn(&m);
        let back = parse(&text, "x.snn")
            .map_err(|d| TestCaseError::fail(d.render("x.snn", &text)))?;
        prop_assert_eq!(to_snn(&back), text);
    }
}

/// Fragments of `.snn` text, glued together at random: mostly invalid
/// files, which must give an error rather than a panic.
fn token_soup() -> impl Strategy<Value = String> {
    let piece = select(
        &[
            "model",
            "input",
            "neuron",
            "conv2d",
            "linear",
            "batchnorm",
            "avgpool",
            "maxpool",
            "flatten",
            "dropout",
            "lif",
            "if",
            "residual",
            "shortcut",
            "{",
            "}",
            "=",
            "#",
            "x",
            "kernel",
            "stride",
            "padding",
            "bias",
            "lambda",
            "seed",
            "encoding",
            "poisson",
            "true",
            "0",
            "1",
            "3",
            "0.5",
            "-1",
            "1e-5",
            "1x28x28",
            "64",
            "@",
            "é",
            "\t",
        ][..],
    );
    let sep = select(&[" ", " ", "\n", "\n", "", "\r\n"][..]);
    prop::collection::vec((piece, sep), 0..40)
        .prop_map(|parts| parts.into_iter().map(|(p, s)| format!("{p}{s}")).collect())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/dsl_roundtrip.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics(src in token_soup()) {
        match parse(&src, "soup.snn") {
            Ok(m) => {
                let back = parse(&to_snn(&m), "x.snn")
                    .map_err(|d| TestCaseError::fail(d.render("x.snn", &to_snn(&m))))?;
                prop_assert_eq!(back, m);
            }
            Err(d) => {
                prop_assert!(d.line >= 1 && d.col >= 1 && d.len >= 1, "{:?}", d);
                prop_assert!(d.line as usize <= src.lines().count() + 1, "{:?}", d);
                let text = d.render("soup.snn", &src);
                prop_assert!(text.starts_with("error: "));
            }
        }
    }
}
