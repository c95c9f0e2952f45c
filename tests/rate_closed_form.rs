//! The rate pass against rate-based backpropagation in closed form.
//!
//! `rate_pass(.., Mode::Rate, ..)` rewrites the BPTT training graph; run by
//! the reference interpreter, its `grad:*` outputs must equal the gradients
//! computed by hand from the time-averaged forward quantities (x̄, g, r) in
//! tests/common/rate_closed.rs (docs/math.md: "for any T, the rate gradient
//! equals the closed form above computed independently from (x̄, g, r)"),
//! per element within `TOL·max(S, 1)` (TOL = 1e-10, S the tensor's largest
//! magnitude; `snnc::compare`): absolute below a scale of 1, where f64
//! gradients that are zero in exact arithmetic (a bias before batch norm)
//! come out as rounding noise.

mod common;

use common::rate_closed::{closed_form, closed_form_with, Closed, Params, Perturb};
use common::{bptt, gen};
use proptest::prelude::*;
use snnc::autodiff::autodiff;
use snnc::interp::{self, RunOptions};
use snnc::model::*;
use snnc::passes::rate::{rate_pass, Limits, Mode};
use snnc::tensor::Tensor;
use snnc::unroll::{unroll_with, Phase, UnrollConfig};
use std::collections::{BTreeSet, HashMap};

const TOL: f64 = 1e-10;

/// The two sides when the closed form is checked against the BPTT oracle.
const CF_BPTT: (&str, &str) = ("closed form", "BPTT");

use common::case::Case;

fn case(model: &Model, batch: usize, seed: u64, scale: f64) -> Case {
    common::case::case(model, batch, seed, scale, 0xC105_ED00)
}

/// Per element `|a − b| ≤ TOL·max(S, 1)` (`snnc::compare`), `a` the rate
/// graph, `b` the closed form and S its largest magnitude.
fn close(what: &str, got: &Tensor<f64>, want: &Tensor<f64>) -> Result<(), String> {
    close_as(what, ("rate graph", "closed form"), got, want)
}

/// [`close`], naming the two sides.
fn close_as(
    what: &str,
    (a, b): (&str, &str),
    got: &Tensor<f64>,
    want: &Tensor<f64>,
) -> Result<(), String> {
    snnc::compare::check(got, want, snnc::compare::Tol::new(TOL, 1.0).with_abs(1.0)).map_err(|m| {
        format!(
            "{what}: {a} vs {b}: {m}\n  {a}: {:?}\n  {b}: {:?}",
            got.data, want.data
        )
    })
}

/// Runs the rate-mode training graph and compares loss, logits and every
/// `grad:*` output with `want`.
fn check(model: &Model, steps: usize, c: &Case, want: &Closed) -> Result<(), String> {
    let cfg = UnrollConfig {
        steps,
        batch: c.x.shape[0],
        phase: Phase::Train,
    };
    let fwd = unroll_with(model, &cfg).map_err(|e| format!("unroll: {e}"))?;
    let train = autodiff(&fwd).map_err(|e| format!("autodiff: {e}"))?;
    let (g, _stats) =
        rate_pass(train, Mode::Rate, &Limits::default()).map_err(|e| format!("rate pass: {e}"))?;
    let inputs = HashMap::from([
        ("x".to_string(), c.x.clone()),
        ("labels".to_string(), c.labels.clone()),
    ]);
    let vals = interp::run::<f64>(&g, &inputs, &c.params, &RunOptions::default())
        .map_err(|e| format!("interp: {e}"))?;
    let out = |name: &str| {
        vals.output(&g, name)
            .ok_or_else(|| format!("the rate graph has no output `{name}`"))
    };
    close("logits", out("logits")?, &want.logits)?;
    close(
        "loss",
        out("loss")?,
        &Tensor::from_vec(&[1], vec![want.loss]),
    )?;
    let graph_grads: BTreeSet<String> = g
        .outputs
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("grad:").map(str::to_string))
        .collect();
    let closed_grads: BTreeSet<String> = want.grads.keys().cloned().collect();
    if graph_grads != closed_grads {
        return Err(format!(
            "gradient sets differ: graph {graph_grads:?}, closed form {closed_grads:?}"
        ));
    }
    for name in &graph_grads {
        close(
            &format!("grad:{name}"),
            out(&format!("grad:{name}"))?,
            &want.grads[name],
        )?;
    }
    Ok(())
}

/// The rate graph against the closed form; returns the closed form.
fn compare(model: &Model, steps: usize, c: &Case) -> Result<Closed, String> {
    let want = closed_form(model, &c.params, &c.x, &c.labels, steps);
    check(model, steps, c, &want)?;
    Ok(want)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn rate_pass_matches_closed_form(
        r in gen::recipe(), steps in 1usize..=8, batch in 1usize..=3, seed in any::<u64>()
    ) {
        let mut model = gen::build(&r);
        model.input.encoding = Encoding::Direct;
        let c = case(&model, batch, seed, 2.0);
        if let Err(e) = compare(&model, steps, &c) {
            return Err(TestCaseError::fail(format!("{e}\nT = {steps}, batch = {batch}\nmodel: {model:#?}")));
        }
    }
}

// ------------------------------------------------------------ fixed models

use common::case::{RESETS, SURROGATES};

const STEPS: [usize; 3] = [2, 4, 8];

/// Neuron options of a fixed model.
#[derive(Clone, Copy, Debug)]
struct Opts {
    reset: Reset,
    detach: bool,
    surrogate: (SurrogateKind, f64),
}

fn lif(o: Opts, theta: f64) -> Layer {
    Layer::new(LayerKind::Neuron {
        kind: NeuronKind::Lif,
        opts: NeuronOpts {
            lambda: Some(0.6),
            theta: Some(theta),
            reset: Some(o.reset),
            v_reset: Some(-0.1),
            detach_reset: Some(o.detach),
            surrogate: Some(o.surrogate.0),
            alpha: Some(o.surrogate.1),
        },
    })
}

fn model(name: &str, input: Vec<usize>, layers: Vec<Layer>) -> Model {
    Model {
        name: name.into(),
        input: Input {
            shape: input,
            encoding: Encoding::Direct,
        },
        neuron: NeuronOpts::default(),
        layers,
    }
}

fn linear(out: usize, bias: bool) -> Layer {
    Layer::new(LayerKind::Linear { out, bias })
}

fn conv(out: usize, bias: bool) -> Layer {
    Layer::new(LayerKind::Conv2d {
        out,
        kernel: 3,
        stride: 1,
        padding: 1,
        bias,
    })
}

fn bn() -> Layer {
    Layer::new(LayerKind::BatchNorm {
        eps: 1e-5,
        momentum: 0.1,
    })
}

fn avg_pool() -> Layer {
    Layer::new(LayerKind::AvgPool {
        kernel: 2,
        stride: 2,
        padding: 0,
    })
}

fn flatten() -> Layer {
    Layer::new(LayerKind::Flatten)
}

/// linear → LIF → linear → LIF → linear.
fn mlp(o: Opts) -> Model {
    model(
        "mlp",
        vec![6],
        vec![
            linear(10, true),
            lif(o, 0.5),
            linear(8, false),
            lif(o, 0.3),
            linear(3, true),
        ],
    )
}

/// conv → BN → LIF → avgpool → flatten → linear → LIF → linear.
fn conv_net(o: Opts) -> Model {
    model(
        "convnet",
        vec![2, 6, 6],
        vec![
            conv(4, true),
            bn(),
            lif(o, 0.8),
            avg_pool(),
            flatten(),
            linear(8, true),
            lif(o, 0.3),
            linear(3, true),
        ],
    )
}

/// conv → BN → LIF → residual{conv → BN → LIF → conv → BN | identity} →
/// LIF → avgpool → flatten → linear.
fn res_net(o: Opts) -> Model {
    let block = LayerKind::Residual {
        main: vec![conv(4, false), bn(), lif(o, 0.6), conv(4, false), bn()],
        shortcut: vec![],
    };
    model(
        "resnet",
        vec![2, 6, 6],
        vec![
            conv(4, false),
            bn(),
            lif(o, 0.7),
            Layer::new(block),
            lif(o, 0.9),
            avg_pool(),
            flatten(),
            linear(3, true),
        ],
    )
}

/// conv → BN → LIF → maxpool 3/2/1 (the ImageNet stem's overlapping,
/// padded windows) → conv → LIF → maxpool 2/3 (gapped) → flatten → linear,
/// every max pool with the given rate rule.
fn max_pool_net(o: Opts, rule: MaxPoolRule) -> Model {
    let pool = |kernel, stride, padding| {
        Layer::new(LayerKind::MaxPool {
            kernel,
            stride,
            padding,
            rate_rule: rule,
        })
    };
    model(
        "maxpoolnet",
        vec![2, 8, 8],
        vec![
            conv(4, true),
            bn(),
            lif(o, 0.6),
            pool(3, 2, 1),
            conv(4, true),
            lif(o, 0.4),
            pool(2, 3, 0),
            flatten(),
            linear(3, true),
        ],
    )
}

fn max_pool_masks(o: Opts) -> Model {
    max_pool_net(o, MaxPoolRule::Masks)
}

fn max_pool_rates(o: Opts) -> Model {
    max_pool_net(o, MaxPoolRule::Rates)
}

type Build = fn(Opts) -> Model;

/// Every reset variant × T ∈ {2, 4, 8}, cycling through the surrogates;
/// each spiking layer must fire some but not all of the time, so that
/// gradients go through spikes and through the reset. Reports every
/// failing combination at once.
fn fixed(build: Build, spiking: usize, batch: usize, seed: u64) {
    let mut failures = Vec::new();
    let mut runs = 0;
    for (i, (reset, detach)) in RESETS.into_iter().enumerate() {
        for (j, steps) in STEPS.into_iter().enumerate() {
            let o = Opts {
                reset,
                detach,
                surrogate: SURROGATES[(i + j) % SURROGATES.len()],
            };
            let m = build(o);
            let c = case(&m, batch, seed, 2.0);
            let what = format!("{} {o:?} T={steps}", m.name);
            runs += 1;
            match compare(&m, steps, &c) {
                Err(e) => failures.push(format!("{what}: {e}")),
                Ok(r) => {
                    assert_eq!(r.firing.len(), spiking, "{what}");
                    for (path, fired, total) in &r.firing {
                        assert!(
                            *fired > 0 && fired < total,
                            "{what}: layer {path} fired {fired} of {total} neuron-steps"
                        );
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} combinations disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn reset_variants_on_a_linear_mlp() {
    fixed(mlp, 2, 2, 7);
}

#[test]
fn reset_variants_on_a_conv_net() {
    fixed(conv_net, 2, 2, 11);
}

#[test]
fn reset_variants_on_a_residual_net() {
    fixed(res_net, 3, 2, 5);
}

/// `maxpool-mask` (gapped windows) and `maxpool-route` (overlapping,
/// padded ones) with `decorrelate`: the mean of every step's routing.
#[test]
fn reset_variants_on_a_max_pool_net() {
    fixed(max_pool_masks, 2, 2, 13);
}

/// `maxpool-rates`: routing by the arg-max of the rates, and the max of
/// the rates read by the layers above.
#[test]
fn reset_variants_on_a_max_pool_net_with_the_official_rule() {
    fixed(max_pool_rates, 2, 2, 13);
}

// ------------------------------------------------- the check itself

/// With one step the rate approximation is exact (docs/math.md): the closed
/// form equals the independent hand-written BPTT oracle. This checks the
/// closed form without the rate pass.
#[test]
fn closed_form_equals_bptt_at_one_step() {
    for (reset, detach) in RESETS {
        let o = Opts {
            reset,
            detach,
            surrogate: SURROGATES[0],
        };
        for m in [mlp(o), conv_net(o), res_net(o)] {
            let c = case(&m, 3, 13, 2.0);
            let rate = closed_form(&m, &c.params, &c.x, &c.labels, 1);
            let want = bptt::bptt(&m, &c.params, &c.x, &c.labels, 1);
            let what = format!("{} {o:?}", m.name);
            close_as(
                &format!("{what} logits"),
                CF_BPTT,
                &rate.logits,
                &want.logits,
            )
            .unwrap();
            assert!((rate.loss - want.loss).abs() <= TOL, "{what} loss");
            assert_eq!(
                rate.grads.keys().collect::<BTreeSet<_>>(),
                want.grads.keys().collect::<BTreeSet<_>>()
            );
            for (name, g) in &want.grads {
                close_as(
                    &format!("{what} grad:{name}"),
                    CF_BPTT,
                    &rate.grads[name],
                    g,
                )
                .unwrap();
            }
        }
    }
}

/// Where both decorrelate steps are exact (docs/math.md: every weight
/// layer's input constant over time, and the only spiking layer feeding the
/// readout through linear maps, so that its δs_t = δr/T) the closed form
/// equals BPTT for any T. This checks ρ and k of every reset variant, the
/// batch-norm formula and the residual sum without the rate pass.
#[test]
fn closed_form_equals_bptt_where_rate_is_exact() {
    for (reset, detach) in RESETS {
        for (i, surrogate) in SURROGATES.into_iter().enumerate() {
            let o = Opts {
                reset,
                detach,
                surrogate,
            };
            let mlp1 = model(
                "linear-lif-linear",
                vec![6],
                vec![linear(10, true), lif(o, 0.5), linear(3, true)],
            );
            let block = LayerKind::Residual {
                main: vec![conv(3, false), bn()],
                shortcut: vec![],
            };
            let conv1 = model(
                "conv-bn-residual-lif-pool",
                vec![2, 6, 6],
                vec![
                    conv(3, true),
                    bn(),
                    Layer::new(block),
                    lif(o, 0.4),
                    avg_pool(),
                    flatten(),
                    linear(3, true),
                ],
            );
            for m in [mlp1, conv1] {
                for steps in STEPS {
                    let c = case(&m, 2, 17 + i as u64, 2.0);
                    let rate = closed_form(&m, &c.params, &c.x, &c.labels, steps);
                    let want = bptt::bptt(&m, &c.params, &c.x, &c.labels, steps);
                    let what = format!("{} {o:?} T={steps}", m.name);
                    let (_, fired, total) = &rate.firing[0];
                    assert!(
                        *fired > 0 && fired < total,
                        "{what}: fired {fired} of {total}"
                    );
                    for (name, g) in &want.grads {
                        close_as(
                            &format!("{what} grad:{name}"),
                            CF_BPTT,
                            &rate.grads[name],
                            g,
                        )
                        .unwrap();
                    }
                }
            }
        }
    }
}

/// With T > 1 the closed form is an approximation, not BPTT: the two must
/// differ (otherwise the comparison above could not tell rate from BPTT).
#[test]
fn closed_form_differs_from_bptt_with_several_steps() {
    let o = Opts {
        reset: Reset::Soft,
        detach: true,
        surrogate: SURROGATES[0],
    };
    let m = conv_net(o);
    let c = case(&m, 2, 11, 2.0);
    let rate = closed_form(&m, &c.params, &c.x, &c.labels, 4);
    let want = bptt::bptt(&m, &c.params, &c.x, &c.labels, 4);
    close_as("logits", CF_BPTT, &rate.logits, &want.logits).unwrap();
    let differ = want
        .grads
        .iter()
        .any(|(name, g)| close_as(name, CF_BPTT, &rate.grads[name], g).is_err());
    assert!(differ, "rate and BPTT gradients agree at T = 4");
}

/// The comparison can fail: each deliberate mistake in the closed form is
/// caught on some fixed model, reset variant and T.
#[test]
fn perturbed_closed_forms_are_caught() {
    let builds: [Build; 3] = [mlp, conv_net, res_net];
    for perturb in [
        Perturb::NoRho,
        Perturb::DetachedK,
        Perturb::LastInput,
        Perturb::BnNoVariance,
    ] {
        let mut caught = Vec::new();
        for build in builds {
            for (reset, detach) in RESETS {
                let o = Opts {
                    reset,
                    detach,
                    surrogate: SURROGATES[0],
                };
                let m = build(o);
                let c = case(&m, 2, 3, 2.0);
                let wrong = closed_form_with(&m, &c.params, &c.x, &c.labels, 4, perturb);
                if check(&m, 4, &c, &wrong).is_err() {
                    caught.push(format!("{} {reset:?} detach={detach}", m.name));
                }
            }
        }
        assert!(
            !caught.is_empty(),
            "{perturb:?} was never caught: the rate graph agrees with the perturbed closed form on every model"
        );
        if perturb == Perturb::DetachedK {
            // Only the variants whose reset is not detached can see it.
            assert!(
                caught.iter().all(|w| w.ends_with("detach=false")),
                "{caught:?}"
            );
        }
    }
}

// ------------------------------------------------- minimal failing cases

/// linear(1 → 1) → LIF (soft reset, *not* detached) → linear(1 → 2), one
/// sample, T = 2, hand-picked numbers. The input is constant over time and
/// the LIF layer feeds the readout, so both decorrelate steps are exact
/// (docs/math.md): the rate gradient must equal BPTT's.
///
/// x = 0.8, W₀ = 1, λ = 0.5, θ = 1, sigmoid α = 4: u₁ = 0.8 (no spike),
/// u₂ = 1.2 (spike); σ'₁ = σ'₂ = 0.85564; k₁ = 1 − θ·σ'₁ = 0.14436,
/// ρ₂ = 1 + λ·k₁ = 1.07218, g = σ'·(1 + ρ₂)/2 = 0.88652. With W₂ = (1, −1)ᵀ,
/// b₂ = 0, label 0: r = 0.5, δlogits = (−0.26894, 0.26894), δr = −0.53788,
/// ∂W₀ = g·δr·x̄ = −0.38148 (BPTT: −0.38148). A reset path dropped (k₁ = 1,
/// ρ₂ = 1.5, g = 1.06955) would give −0.46024.
#[test]
fn non_detached_reset_minimal() {
    let neuron = Layer::new(LayerKind::Neuron {
        kind: NeuronKind::Lif,
        opts: NeuronOpts {
            lambda: Some(0.5),
            theta: Some(1.0),
            reset: Some(Reset::Soft),
            v_reset: Some(0.0),
            detach_reset: Some(false),
            surrogate: Some(SurrogateKind::Sigmoid),
            alpha: Some(4.0),
        },
    });
    let m = model(
        "non-detached",
        vec![1],
        vec![linear(1, false), neuron, linear(2, true)],
    );
    let params = Params::from([
        ("0.weight".to_string(), Tensor::from_vec(&[1, 1], vec![1.0])),
        (
            "2.weight".to_string(),
            Tensor::from_vec(&[2, 1], vec![1.0, -1.0]),
        ),
        ("2.bias".to_string(), Tensor::from_vec(&[2], vec![0.0, 0.0])),
    ]);
    let c = Case {
        params,
        x: Tensor::from_vec(&[1, 1], vec![0.8]),
        labels: Tensor::from_vec(&[1, 2], vec![1.0, 0.0]),
    };
    let want = closed_form(&m, &c.params, &c.x, &c.labels, 2);
    let exact = bptt::bptt(&m, &c.params, &c.x, &c.labels, 2);
    let w0 = want.grads["0.weight"].data[0];
    assert!((w0 - (-0.38148)).abs() < 1e-5, "closed form ∂W₀ = {w0}");
    for (name, g) in &exact.grads {
        close_as(name, CF_BPTT, &want.grads[name], g).unwrap();
    }
    check(&m, 2, &c, &want).unwrap();
}

/// One step: the rate backward is BPTT's (docs/math.md); the pass must
/// accept it.
#[test]
fn one_step() {
    let o = Opts {
        reset: Reset::Soft,
        detach: true,
        surrogate: SURROGATES[0],
    };
    let m = model("lif-linear", vec![3], vec![lif(o, 0.5), linear(2, true)]);
    let c = case(&m, 1, 1, 2.0);
    compare(&m, 1, &c).unwrap();
    for build in [mlp, conv_net, res_net] {
        let m = build(o);
        let c = case(&m, 2, 1, 2.0);
        compare(&m, 1, &c).unwrap();
    }
}

/// Batch norm with one pixel per channel (a flat `[B, C]` input, or a
/// `1×1` feature map) after a parameterised layer, no neurons at all: the
/// batch-norm region's e-graph has blown up (node limit at B = 2, T = 2;
/// time limit at B = 1, T = 4; at B = 1, T = 2 unbounded recursion in the
/// pass's `rules::lin`, a stack overflow in about half the runs).
fn bn_one_pixel(image: bool) -> Model {
    if image {
        let c = Layer::new(LayerKind::Conv2d {
            out: 2,
            kernel: 3,
            stride: 1,
            padding: 0,
            bias: true,
        });
        model(
            "conv-bn-1x1",
            vec![2, 3, 3],
            vec![c, bn(), flatten(), linear(3, true)],
        )
    } else {
        model(
            "linear-bn",
            vec![4],
            vec![linear(5, true), bn(), linear(3, true)],
        )
    }
}

#[test]
fn batch_norm_over_one_pixel() {
    let mut failures = Vec::new();
    for image in [false, true] {
        for steps in [2, 4] {
            let m = bn_one_pixel(image);
            let c = case(&m, 2, 1, 2.0);
            if let Err(e) = compare(&m, steps, &c) {
                failures.push(format!("{} T={steps}: {e}", m.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
