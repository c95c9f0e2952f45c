//! The CUDA backend on its CPU emulator: `kernels.cu` compiled as C++ by
//! the host compiler and run grid by grid, cuBLAS calls run as
//! column-major SGEMMs (codegen/cuda/emu.rs). Everything above the cudarc
//! calls is the code a GPU runs: the executor's schedule and buffer
//! lifetimes, launch arguments (checked against the kernels' C++ parameter
//! types), GEMM argument order, convolution chunking.
//!
//! - every op's kernel(s) against the reference interpreter on random
//!   inputs (odd sizes, overlapping and ragged pooling windows, ties, >8
//!   operands, strided/padded convolutions split into chunks), bit-exact
//!   where the kernel computes the interpreter's expression in its order;
//! - random models and the small example models against the CPU executor,
//!   every output and every node, with poisoned buffers and tiny grids;
//! - accuracy against the f64 interpreter: no worse than the CPU executor;
//! - the fusion plan (fused kernels from the generated module, the other
//!   nodes on kernels.cu) against the CPU executor: random models and the
//!   example models, both modes, T = 1 and 3, every kernel in isolation,
//!   layer-major and time-major (one kernel step per launch, the state in
//!   the arena between launches);
//! - the fusion plan's arena: the measured peak equals the planned peak,
//!   and no two buffers live at once overlap;
//! - the emulator's own checks catch what they are for.
//!
//! Without a C++ compiler (found by build.rs) these tests are ignored,
//! with the reason in `cargo test`'s summary; with SNNC_REQUIRE_EMU=1 (CI)
//! its absence fails the build.

mod common;

use common::example::SCHEDULES;
use common::gen;
use proptest::prelude::*;
use snnc::cli::cuda_check::{check_case, check_graph, rel_err, CheckOptions};
use snnc::codegen::backend::{check_args, Arg, Backend, Gemm};
use snnc::codegen::cuda::Emu;
use snnc::codegen::exec::Executor;
use snnc::compile::{compile, Options};
use snnc::interp::{self, RunOptions};
use snnc::ir::{DType, Graph, MaxPoolRule, Node, Op, Role};
use snnc::model::{Encoding, Surrogate, SurrogateKind};
use snnc::passes::rate::Mode;
use snnc::passes::schedule::SchedOpts;
use snnc::precision::Precision;
use snnc::rng::Rng;
use snnc::tensor::Tensor;
use std::collections::HashMap;
use std::path::Path;

fn emu() -> Option<Emu> {
    match Emu::new() {
        Ok(mut e) => {
            // Few blocks: every grid-stride loop takes several turns.
            e.set_max_grid(3);
            Some(e)
        }
        Err(e) => {
            // The build found a C++ compiler (else this test is ignored):
            // an emulator that does not build is an error, not a skip.
            panic!("the CUDA emulator does not build: {e}")
        }
    }
}

/// A graph of one `op` node reading inputs a0, a1, … of the given shapes.
fn op_graph(op: Op, shapes: &[Vec<usize>]) -> Graph {
    let mut g = Graph::new("op", 1, shapes.first().map_or(1, |s| s[0]));
    let ins: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            g.add(
                Node {
                    op: Op::Input {
                        name: format!("a{i}"),
                    },
                    shape: s.clone(),
                    dtype: DType::F32,
                    layer: None,
                    t: None,
                    role: Role::Input,
                },
                &[],
            )
        })
        .collect();
    let y = g.add_op("test", op, None, None, Role::Output, &ins);
    g.outputs.push(("y".into(), y));
    g
}

fn random(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor<f32> {
    let mut r = Rng::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| r.range(lo, hi) as f32).collect())
}

/// 0/1 values: ties everywhere (spike maps into max pooling).
fn binary(shape: &[usize], seed: u64) -> Tensor<f32> {
    let mut r = Rng::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n)
            .map(|_| f32::from(u8::from(r.uniform() < 0.4)))
            .collect(),
    )
}

/// Runs a one-op graph on the emulator (poisoned buffers, a convolution
/// workspace of `workspace` elements) and the interpreter; returns the
/// relative error, and whether the results are bit-identical.
fn run_op(
    emu: &mut Emu,
    op: Op,
    args: Vec<Tensor<f32>>,
    workspace: usize,
    seed: u64,
) -> (f32, bool) {
    let shapes: Vec<Vec<usize>> = args.iter().map(|t| t.shape.clone()).collect();
    let g = op_graph(op.clone(), &shapes);
    let inputs: HashMap<String, Tensor<f32>> = args
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("a{i}"), t))
        .collect();
    let opts = RunOptions::seeded(seed);
    let want = interp::run(&g, &inputs, &HashMap::new(), &opts).unwrap();
    let want = want.output(&g, "y").unwrap().clone();
    let mut ex = Executor::new(emu, &g).unwrap();
    ex.poison = true;
    ex.conv_workspace = workspace;
    let got = ex
        .run(&inputs, &HashMap::new(), &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", op.name()))
        .remove("y")
        .unwrap();
    let exact = got
        .data
        .iter()
        .zip(&want.data)
        .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
    (rel_err(&got, &want, 1e-2), exact)
}

fn expect(emu: &mut Emu, op: Op, args: Vec<Tensor<f32>>, exact: bool) {
    expect_ws(emu, op, args, exact, 1 << 20)
}

fn expect_ws(emu: &mut Emu, op: Op, args: Vec<Tensor<f32>>, exact: bool, workspace: usize) {
    let desc = format!(
        "{} {} on {:?}",
        op.name(),
        op.attrs(),
        args.iter().map(|t| t.shape.clone()).collect::<Vec<_>>()
    );
    let (err, bits) = run_op(emu, op, args, workspace, 7);
    assert!(err < 1e-4, "{desc}: relative error {err:e}");
    if exact {
        assert!(
            bits,
            "{desc}: not bit-identical to the interpreter (error {err:e})"
        );
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn elementwise_kernels_match_the_interpreter() {
    let Some(mut emu) = emu() else { return };
    let s = vec![3, 5, 7];
    let (a, b) = (random(&s, 1, -2.0, 2.0), random(&s, 2, -2.0, 2.0));
    for op in [Op::Add, Op::Sub, Op::Mul] {
        expect(&mut emu, op, vec![a.clone(), b.clone()], true);
    }
    expect(&mut emu, Op::Scale(0.37), vec![a.clone()], true);
    expect(&mut emu, Op::AddScalar(-0.2), vec![a.clone()], true);
    expect(&mut emu, Op::Detach, vec![a.clone()], true);
    expect(
        &mut emu,
        Op::Reshape { shape: vec![15, 7] },
        vec![a.clone()],
        true,
    );
    // Values exactly at the threshold fire.
    let mut at = a.clone();
    for v in at.data.iter_mut().step_by(3) {
        *v = 0.3;
    }
    for kind in [
        SurrogateKind::Sigmoid,
        SurrogateKind::Atan,
        SurrogateKind::Triangle,
    ] {
        for (theta, alpha) in [(1.0, 4.0), (0.3, 2.0)] {
            let surrogate = Surrogate { kind, alpha };
            expect(
                &mut emu,
                Op::Spike { theta, surrogate },
                vec![at.clone()],
                true,
            );
            expect(
                &mut emu,
                Op::SurrogateGrad { theta, surrogate },
                vec![at.clone()],
                false,
            );
        }
    }
    expect(
        &mut emu,
        Op::Rsqrt { eps: 1e-5 },
        vec![random(&s, 3, 0.0, 3.0)],
        true,
    );
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn channel_kernels_match_the_interpreter() {
    let Some(mut emu) = emu() else { return };
    for x in [vec![2, 3, 4, 5], vec![4, 6], vec![3, 2, 7]] {
        let c = x[1];
        let (t, v) = (random(&x, 4, -1.0, 1.0), random(&[c], 5, -1.0, 1.0));
        expect(&mut emu, Op::BiasAdd, vec![t.clone(), v.clone()], true);
        expect(&mut emu, Op::ChannelScale, vec![t.clone(), v.clone()], true);
        expect(
            &mut emu,
            Op::ChannelBroadcast { shape: x.clone() },
            vec![v.clone()],
            true,
        );
        let var = random(&[c], 6, 0.1, 2.0);
        expect(
            &mut emu,
            Op::Normalize { eps: 1e-5 },
            vec![t.clone(), v.clone(), var],
            true,
        );
        expect(&mut emu, Op::ChannelSum, vec![t.clone()], false);
    }
    // Reductions: one and several operands; few and many elements per
    // channel (one to 256 partial sums per channel); an offset mean.
    for x in [
        vec![1, 3, 1, 1],
        vec![2, 3, 4, 4],
        vec![4, 3, 40, 40],
        vec![16, 2, 64, 64],
    ] {
        for ops in [1, 3] {
            let xs: Vec<Tensor<f32>> = (0..ops).map(|k| random(&x, 10 + k, 0.5, 2.0)).collect();
            expect(&mut emu, Op::ChannelMean, xs.clone(), false);
            let mean = random(&[x[1]], 20, 1.0, 1.5);
            let mut args = vec![mean];
            args.extend(xs);
            expect(&mut emu, Op::ChannelVar, args, false);
        }
        expect(
            &mut emu,
            Op::ChannelSum,
            vec![random(&x, 30, -1.0, 1.0)],
            false,
        );
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn time_and_random_kernels_match_the_interpreter() {
    let Some(mut emu) = emu() else { return };
    let s = vec![4, 9];
    // n-ary sums: the kernel takes 8 operands a call, so 1, 8, 9, 17 cover
    // the chaining.
    for n in [1u64, 2, 8, 9, 17] {
        let xs: Vec<Tensor<f32>> = (0..n).map(|k| random(&s, 40 + k, -1.0, 1.0)).collect();
        expect(&mut emu, Op::TimeMean, xs.clone(), true);
        expect(&mut emu, Op::Sum, xs, true);
    }
    let mut p = random(&[5, 37], 50, -0.5, 1.5);
    p.data[3] = f32::NAN;
    expect(&mut emu, Op::Poisson { stream: 0xabc }, vec![p], true);
    // A generated leaf: the node carries the shape.
    let mut g = Graph::new("dropout", 1, 5);
    let n = g.add(
        Node {
            op: Op::DropoutMask { p: 0.3, stream: 77 },
            shape: vec![5, 37],
            dtype: DType::F32,
            layer: None,
            t: None,
            role: Role::Output,
        },
        &[],
    );
    g.outputs.push(("y".into(), n));
    let opts = RunOptions::seeded(9);
    let want = interp::run::<f32>(&g, &HashMap::new(), &HashMap::new(), &opts).unwrap();
    let got = Executor::new(&mut emu, &g)
        .unwrap()
        .run(&HashMap::new(), &HashMap::new(), &opts)
        .unwrap();
    assert_eq!(&got["y"], want.output(&g, "y").unwrap(), "dropout mask");
    expect(
        &mut emu,
        Op::TimeSlice { t: 2 },
        vec![random(&[2, 4, 3, 5], 60, 0.0, 1.0)],
        true,
    );
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn pooling_kernels_match_the_interpreter() {
    let Some(mut emu) = emu() else { return };
    // (input, kernel, stride, padding): tiled, overlapping, ragged (a row
    // and column no window reaches), stride 1, gapped, and padded (the
    // ImageNet stem's 3/2/1, tiles and gaps with padding).
    for (x, k, st, p) in [
        (vec![2, 3, 6, 6], 2, 2, 0),
        (vec![2, 2, 7, 7], 3, 2, 0),
        (vec![1, 2, 5, 5], 2, 2, 0),
        (vec![1, 1, 5, 4], 2, 1, 0),
        (vec![1, 2, 7, 6], 2, 3, 0),
        (vec![2, 2, 7, 8], 3, 2, 1),
        (vec![1, 2, 5, 5], 2, 2, 1),
        (vec![1, 1, 6, 7], 2, 3, 1),
    ] {
        let (ho, wo) = ((x[2] + 2 * p - k) / st + 1, (x[3] + 2 * p - k) / st + 1);
        let d = random(&[x[0], x[1], ho, wo], 70, -1.0, 1.0);
        let (kernel, stride, padding) = (k, st, p);
        let rule = MaxPoolRule::Masks;
        for input in [random(&x, 71, -1.0, 1.0), binary(&x, 72)] {
            let ops = [
                Op::AvgPool {
                    kernel,
                    stride,
                    padding,
                },
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                    rule,
                },
                Op::MaxPoolMask {
                    kernel,
                    stride,
                    padding,
                },
                Op::MaxPoolSelect {
                    kernel,
                    stride,
                    padding,
                },
            ];
            for op in ops {
                expect(&mut emu, op, vec![input.clone()], true);
            }
            let op = Op::MaxPoolGrad {
                kernel,
                stride,
                padding,
                rule,
            };
            expect(&mut emu, op, vec![input, d.clone()], true);
        }
        // A time-averaged selection: fractions, not one-hot.
        let sel = random(&[x[0], x[1], ho, wo, k * k], 73, 0.0, 1.0);
        let (in_h, in_w) = (x[2], x[3]);
        let op = Op::MaxPoolRoute {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
        };
        expect(&mut emu, op, vec![sel, d.clone()], true);
        let op = Op::AvgPoolGrad {
            kernel,
            stride,
            padding,
            in_h,
            in_w,
        };
        expect(&mut emu, op, vec![d], true);
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn loss_kernels_match_the_interpreter() {
    let Some(mut emu) = emu() else { return };
    let z = random(&[4, 10], 80, -3.0, 3.0);
    let mut y = Tensor::zeros(&[4, 10]);
    for b in 0..4 {
        y.data[b * 10 + (3 * b + 1) % 10] = 1.0;
    }
    expect(
        &mut emu,
        Op::SoftmaxCrossEntropy,
        vec![z.clone(), y.clone()],
        false,
    );
    expect(
        &mut emu,
        Op::SoftmaxCrossEntropyGrad,
        vec![z.clone(), y],
        false,
    );
    // A soft target distribution.
    let soft = Tensor::full(&[4, 10], 0.1f32);
    expect(
        &mut emu,
        Op::SoftmaxCrossEntropy,
        vec![z.clone(), soft.clone()],
        false,
    );
    expect(&mut emu, Op::SoftmaxCrossEntropyGrad, vec![z, soft], false);
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn matmul_in_every_transposition() {
    let Some(mut emu) = emu() else { return };
    let (m, k, n) = (5, 7, 3);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = random(&if ta { vec![k, m] } else { vec![m, k] }, 90, -1.0, 1.0);
        let b = random(&if tb { vec![n, k] } else { vec![k, n] }, 91, -1.0, 1.0);
        expect(&mut emu, Op::MatMul { ta, tb }, vec![a, b], false);
    }
    // Degenerate sizes: a single row, a single inner element.
    expect(
        &mut emu,
        Op::MatMul {
            ta: false,
            tb: true,
        },
        vec![
            random(&[1, 4], 92, -1.0, 1.0),
            random(&[6, 4], 93, -1.0, 1.0),
        ],
        false,
    );
    expect(
        &mut emu,
        Op::MatMul {
            ta: true,
            tb: false,
        },
        vec![
            random(&[1, 4], 94, -1.0, 1.0),
            random(&[1, 6], 95, -1.0, 1.0),
        ],
        false,
    );
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn convolutions_and_their_gradients_in_chunks() {
    let Some(mut emu) = emu() else { return };
    // (x, co, k, stride, padding)
    for (x, co, k, st, pad) in [
        (vec![3, 2, 7, 6], 4, 3, 1, 1),
        (vec![3, 2, 7, 6], 4, 3, 2, 0),
        (vec![3, 2, 7, 6], 3, 1, 2, 0),
        (vec![2, 3, 8, 8], 2, 3, 2, 1),
        (vec![2, 1, 6, 5], 2, 5, 1, 2),
    ] {
        let w = random(&[co, x[1], k, k], 100, -1.0, 1.0);
        let xt = random(&x, 101, -1.0, 1.0);
        let (ho, wo) = ((x[2] + 2 * pad - k) / st + 1, (x[3] + 2 * pad - k) / st + 1);
        let d = random(&[x[0], co, ho, wo], 102, -1.0, 1.0);
        let per_sample = x[1] * k * k * ho * wo;
        // Workspaces of one sample, two samples (a ragged last chunk) and
        // the whole batch.
        for ws in [1, 2 * per_sample, 1 << 20] {
            expect_ws(
                &mut emu,
                Op::Conv2d {
                    stride: st,
                    padding: pad,
                },
                vec![xt.clone(), w.clone()],
                false,
                ws,
            );
            let gi = Op::Conv2dGradInput {
                stride: st,
                padding: pad,
                in_h: x[2],
                in_w: x[3],
            };
            expect_ws(&mut emu, gi, vec![d.clone(), w.clone()], false, ws);
            let gw = Op::Conv2dGradWeight {
                stride: st,
                padding: pad,
                kernel: k,
            };
            expect_ws(&mut emu, gw, vec![xt.clone(), d.clone()], false, ws);
        }
    }
}

fn case_opts(seed: u64) -> CheckOptions {
    CheckOptions {
        models: vec![],
        steps: vec![],
        modes: vec![],
        batch: 0,
        seed,
        per_node: true,
        tol: 1e-4,
        fused: false,
        schedule: SchedOpts::LAYER_MAJOR,
        precision: Precision::Fp32,
    }
}

/// How [`check_model`] runs a model: the convolution workspace cap, the
/// fusion plan's schedule (none: node by node) and the GEMMs' precision.
#[derive(Clone, Copy)]
struct Run {
    workspace: usize,
    fused: Option<SchedOpts>,
    precision: Precision,
}

fn check_model(
    emu: &mut Emu,
    model: &snnc::model::Model,
    steps: usize,
    batch: usize,
    mode: Mode,
    seed: u64,
    run: Run,
) -> Result<(), String> {
    let Run {
        workspace,
        fused,
        precision,
    } = run;
    let g = compile(model, &Options::new(steps, batch, mode))
        .map_err(|e| e.to_string())?
        .graph;
    let a = snnc::shape::analyze(model).map_err(|e| e.to_string())?;
    let params: HashMap<String, Tensor<f32>> =
        snnc::init::cast_params(&snnc::init::init_params(&a, seed));
    let mut x = snnc::interp::random_input(&g, model.input.encoding == Encoding::Events, seed)
        .cast::<f32>();
    x.data.iter_mut().for_each(|v| *v *= 2.0);
    let labels = snnc::interp::random_labels(batch, a.output[0], seed).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let opts = CheckOptions {
        fused: fused.is_some(),
        schedule: fused.unwrap_or(SchedOpts::LAYER_MAJOR),
        precision,
        ..case_opts(seed)
    };
    let r = check_graph(emu, &g, &inputs, &params, &opts, true, |ex| {
        ex.conv_workspace = workspace
    })
    .map_err(|e| e.to_string())?;
    if r.passed {
        Ok(())
    } else {
        Err(format!("{}: {r:?}", r.verdict))
    }
}

/// Does a batch norm follow a bias or another batch norm with only affine
/// layers in between? Then the earlier parameters' gradients are 0 in exact
/// arithmetic (the batch norm subtracts what they add), and what each
/// implementation computes for them is rounding noise, amplified by
/// 1/sqrt(var + eps) where a channel is constant. No comparison can judge
/// noise against noise, so the property leaves such models out.
fn cancels_parameters(layers: &[snnc::model::Layer], mut shifted: bool) -> bool {
    use snnc::model::LayerKind as L;
    for l in layers {
        match &l.kind {
            L::BatchNorm { .. } if shifted => return true,
            L::BatchNorm { .. } => shifted = true,
            L::Conv2d { bias, .. } | L::Linear { bias, .. } => shifted |= *bias,
            L::Flatten | L::AvgPool { .. } | L::MaxPool { .. } => {}
            L::Residual { main, shortcut } => {
                if cancels_parameters(main, shifted) || cancels_parameters(shortcut, shifted) {
                    return true;
                }
                shifted = false;
            }
            L::Neuron { .. } | L::Dropout { .. } => shifted = false,
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    #[cfg_attr(not(snnc_cxx), ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)")]
    fn random_models_match_the_cpu_executor(r in gen::recipe(), steps in 1usize..=3, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000, ws in 1usize..400) {
        let Some(mut emu) = emu() else { return Ok(()) };
        let model = gen::build(&r);
        prop_assume!(!cancels_parameters(&model.layers, false));
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        let run = Run { workspace: ws, fused: None, precision: Precision::Fp32 };
        check_model(&mut emu, &model, steps, batch, mode, seed, run).map_err(TestCaseError::fail)?;
        prop_assert!(emu.damage.is_empty(), "{:?}", emu.damage);
        prop_assert_eq!(emu.live_buffers(), 0);
    }

    /// The fusion plan of random models in each schedule and precision:
    /// every fused kernel against the CPU executor on its own inputs (so
    /// both round the same GEMM operands), every output end to end.
    #[test]
    #[cfg_attr(not(snnc_cxx), ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)")]
    fn random_models_fused_match_the_cpu_executor(r in gen::recipe(), steps in 1usize..=3, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000, sched in 0usize..3, prec in 0usize..3) {
        let Some(mut emu) = emu() else { return Ok(()) };
        let model = gen::build(&r);
        prop_assume!(!cancels_parameters(&model.layers, false));
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        let run = Run { workspace: 1 << 20, fused: Some(SCHEDULES[sched]), precision: Precision::ALL[prec] };
        check_model(&mut emu, &model, steps, batch, mode, seed, run).map_err(TestCaseError::fail)?;
        prop_assert!(emu.damage.is_empty(), "{:?}", emu.damage);
        prop_assert_eq!(emu.live_buffers(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Windowed kernels (a LIF layer's `avgpool 2` in its kernel) in the
    /// CUDA form, one thread per window (`Kernel::per_window`), against the
    /// CPU executor's C form, whole rows of windows per block: every fused
    /// kernel on its own inputs, every output end to end, every schedule.
    #[test]
    #[cfg_attr(not(snnc_cxx), ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)")]
    fn windowed_kernels_match_the_cpu_executor(wd in gen::windowed(), steps in 1usize..=3, batch in 1usize..=3, rate in any::<bool>(), seed in 0u64..1000, sched in 0usize..3) {
        let Some(mut emu) = emu() else { return Ok(()) };
        let model = wd.model();
        let mode = if rate { Mode::Rate } else { Mode::Bptt };
        let run = Run { workspace: 1 << 20, fused: Some(SCHEDULES[sched]), precision: Precision::Fp32 };
        check_model(&mut emu, &model, steps, batch, mode, seed, run).map_err(TestCaseError::fail)?;
        prop_assert!(emu.damage.is_empty(), "{:?}", emu.damage);
        prop_assert_eq!(emu.live_buffers(), 0);
    }
}

/// Fusion plans of the example models in every schedule — layer-major,
/// and time-major (each multi-step kernel one step per launch, its
/// registers and accumulators in the arena between launches, on the graph
/// `fuse_time::lower` makes) — against the CPU executor on the same graph:
/// every kernel on its own inputs (a split kernel as a whole after its last
/// step), every output end to end.
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn example_models_fused_match_the_cpu_executor() {
    let Some(mut emu) = emu() else { return };
    emu.set_max_grid(64);
    for name in ["digits_mlp", "fmnist_csnn", "vggsnn_dvs34"] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/models/{name}.snn"));
        for schedule in SCHEDULES {
            for mode in [Mode::Bptt, Mode::Rate] {
                for steps in [1, 3] {
                    let opts = CheckOptions {
                        batch: 2,
                        fused: true,
                        schedule,
                        ..case_opts(3)
                    };
                    let launches = emu.module_launches;
                    let r = check_case(&mut emu, &path, steps, mode, &opts, true).unwrap();
                    println!("{name} {schedule} {mode} T={steps}: {}", r.verdict);
                    assert!(r.passed, "{name} {schedule} {mode} T={steps}: {r:?}");
                    assert!(
                        emu.module_launches > launches,
                        "{name} {schedule}: no fused kernel ran"
                    );
                }
            }
        }
    }
    assert!(emu.damage.is_empty(), "{:?}", emu.damage);
    assert_eq!(emu.live_buffers(), 0);
}

/// `--precision tf32` and `bf16`: the fusion plans of the example models
/// on the emulator (its GEMMs rounding their operands) against the CPU
/// executor rounding the same operands, every kernel and output.
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn example_models_fused_match_the_cpu_executor_in_every_precision() {
    let Some(mut emu) = emu() else { return };
    emu.set_max_grid(64);
    for name in ["digits_mlp", "fmnist_csnn"] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/models/{name}.snn"));
        for precision in [Precision::Tf32, Precision::Bf16] {
            for mode in [Mode::Bptt, Mode::Rate] {
                for steps in [1, 3] {
                    let opts = CheckOptions {
                        batch: 2,
                        fused: true,
                        precision,
                        ..case_opts(3)
                    };
                    let r = check_case(&mut emu, &path, steps, mode, &opts, true).unwrap();
                    println!("{name} {precision} {mode} T={steps}: {}", r.verdict);
                    assert!(r.passed, "{name} {precision} {mode} T={steps}: {r:?}");
                }
            }
        }
    }
    assert!(emu.damage.is_empty(), "{:?}", emu.damage);
    assert_eq!(emu.live_buffers(), 0);
}

/// The arena of a fusion plan, in every schedule: the peak measured in it
/// during a run equals the planned peak, no two buffers live at once
/// overlap (checked on the plan, and on the device by poisoning every
/// buffer with NaN when it is freed), what a run uses is returned, and the
/// outputs equal the CPU executor's on the same graph.
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn the_arena_holds_the_planned_peak() {
    let Some(mut emu) = emu() else { return };
    emu.set_max_grid(64);
    for name in ["digits_mlp", "fmnist_csnn"] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/models/{name}.snn"));
        let (model, a) = snnc::frontend::load(&path).unwrap();
        let params = snnc::init::cast_params::<f32>(&snnc::init::init_params(&a, 0));
        for mode in [Mode::Bptt, Mode::Rate] {
            let g = compile(&model, &Options::new(3, 2, mode)).unwrap().graph;
            let x = snnc::interp::random_input(&g, false, 0).cast::<f32>();
            let labels = snnc::interp::random_labels(2, a.output[0], 0).cast::<f32>();
            let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
            let opts = RunOptions::seeded(0);
            for schedule in SCHEDULES {
                let what = format!("{name} {mode} {schedule}");
                let lowered = snnc::passes::fuse_time::lower(&g, schedule);
                let plan = snnc::passes::fuse_time::plan(&lowered, &[], schedule);
                let want = snnc::codegen::cpu::run(&lowered, &inputs, &params, &opts).unwrap();
                let mut ex = Executor::with_plan(&mut emu, &lowered, plan, &[]).unwrap();
                ex.poison = true;
                // A small im2col chunk: convolutions take several turns
                // through their planned workspace.
                ex.conv_workspace = 1000;
                let got = ex.run(&inputs, &params, &opts).unwrap();
                let stats = ex.stats();
                let mem = ex.arena_plan().expect("an arena").clone();
                mem.check_arena().unwrap();
                let units = ex.steps().len();
                let per_step = ex
                    .steps()
                    .iter()
                    .filter(|s| matches!(s, snnc::codegen::cuda::Step::KernelStep(..)))
                    .count();
                println!(
                    "{what}: {units} units ({per_step} kernel steps), planned peak {} B, measured {} B, arena {} B",
                    stats.planned_peak_bytes, stats.peak_arena_live_bytes, stats.arena_bytes
                );
                assert_eq!(
                    per_step > 0,
                    schedule != SchedOpts::LAYER_MAJOR,
                    "{what}: kernel steps"
                );
                assert!(stats.planned_peak_bytes > 0, "{what}");
                assert_eq!(
                    stats.peak_arena_live_bytes, stats.planned_peak_bytes,
                    "{what}: measured and planned peaks differ"
                );
                assert_eq!(stats.arena_bytes as u64, mem.arena_bytes, "{what}");
                assert!(mem.arena_bytes >= mem.peak_bytes, "{what}");
                assert_eq!(stats.arena_live_bytes, 0, "{what}: the arena is not empty");
                assert_eq!(stats.live_bytes, 0, "{what}: buffers outlive the run");
                // Again, with the arena planned for another workspace size.
                ex.conv_workspace = 1 << 20;
                let again = ex.run(&inputs, &params, &opts).unwrap();
                assert_eq!(
                    ex.stats().peak_arena_live_bytes,
                    ex.stats().planned_peak_bytes,
                    "{what}: second plan"
                );
                drop(ex);
                for (k, v) in &want {
                    assert!(rel_err(&got[k], v, 1e-1) < 1e-4, "{what}: {k}");
                    assert!(rel_err(&again[k], v, 1e-1) < 1e-4, "{what}: {k} (again)");
                }
            }
        }
    }
    assert!(emu.damage.is_empty(), "{:?}", emu.damage);
    assert_eq!(emu.live_buffers(), 0);
}

/// Named tensors (parameters, inputs, outputs).
type Named = HashMap<String, Tensor<f32>>;

/// fmnist_csnn in rate mode at batch 2: the graph, parameters, inputs and
/// the CPU executor's outputs (seed 0).
fn fmnist_rate_case(steps: usize) -> (Graph, Named, Named, Named) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models/fmnist_csnn.snn");
    let (model, a) = snnc::frontend::load(&path).unwrap();
    let g = compile(&model, &Options::new(steps, 2, Mode::Rate))
        .unwrap()
        .graph;
    let params = snnc::init::cast_params::<f32>(&snnc::init::init_params(&a, 0));
    let x = snnc::interp::random_input(&g, false, 0).cast::<f32>();
    let labels = snnc::interp::random_labels(2, 10, 0).cast::<f32>();
    let inputs = HashMap::from([("x".to_string(), x), ("labels".to_string(), labels)]);
    let want = snnc::codegen::cpu::run(&g, &inputs, &params, &RunOptions::seeded(0)).unwrap();
    (g, params, inputs, want)
}

/// Repeated runs of a fused plan: the same results, no new allocations,
/// and between runs only the resident parameters and the pointer tables
/// are held.
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn fused_runs_reuse_buffers_and_tables() {
    let Some(mut emu) = emu() else { return };
    let (g, params, inputs, want) = fmnist_rate_case(3);
    let opts = RunOptions::seeded(0);
    {
        let mut ex = Executor::fused(&mut emu, &g, &[]).unwrap();
        let kernels = ex.kernels().len();
        assert!(kernels > 0);
        ex.set_resident_params(&params).unwrap();
        let first = ex.run(&inputs, &HashMap::new(), &opts).unwrap();
        let allocs = ex.stats().device_allocs;
        for _ in 0..2 {
            let again = ex.run(&inputs, &HashMap::new(), &opts).unwrap();
            assert_eq!(again, first, "a repeated run differs");
        }
        assert_eq!(ex.stats().device_allocs, allocs, "repeated runs allocate");
        for (k, v) in &want {
            assert!(rel_err(&first[k], v, 1e-1) < 1e-4, "{k}");
        }
        // Profiling times every fused launch once.
        ex.profile = true;
        ex.run(&inputs, &HashMap::new(), &opts).unwrap();
        let times = ex.kernel_times().unwrap();
        assert_eq!(times.len(), kernels);
        assert!(times
            .iter()
            .all(|(s, _)| matches!(s, snnc::codegen::cuda::Step::Kernel(_))));
        assert!(times.iter().all(|(_, t)| *t >= 0.0));
        ex.clear_resident_params();
        assert_eq!(ex.stats().live_bytes, 0);
        // The tables are the executor's, outside the pool.
        drop(ex);
    }
    assert_eq!(emu.live_buffers(), 0, "buffers outlive the executor");
    assert!(emu.damage.is_empty(), "{:?}", emu.damage);
}

/// The emulator rejects a generated kernel whose pointer table points
/// outside every buffer.
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn the_emulator_checks_pointer_tables() {
    let Some(mut emu) = emu() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models/digits_mlp.snn");
    let (model, _) = snnc::frontend::load(&path).unwrap();
    let g = compile(&model, &Options::new(1, 2, Mode::Rate))
        .unwrap()
        .graph;
    let plan = snnc::passes::fuse::fuse(&g);
    let m = snnc::codegen::cuda::fused::module(&plan);
    let id = emu.load_module(&m.source, &m.names).unwrap();
    assert_eq!(
        emu.load_module(&m.source, &m.names).unwrap(),
        id,
        "loaded twice"
    );
    let slots = plan.kernels[0].kernel.slots;
    let mut table = emu.alloc(2 * slots).unwrap();
    emu.upload_words(&mut table, &vec![8u64; slots]).unwrap();
    let tp = emu.ptr(&table);
    let steps = plan.kernels[0].kernel.steps as i32;
    let e = emu
        .launch_module(
            id,
            0,
            1,
            256,
            &[Arg::P(tp), Arg::L(2), Arg::I(0), Arg::I(steps), Arg::P(0)],
        )
        .unwrap_err();
    assert!(e.to_string().contains("not in a live buffer"), "{e}");
    let e = emu
        .launch_module(id, 0, 1, 256, &[Arg::P(tp), Arg::I(2)])
        .unwrap_err();
    assert!(e.to_string().contains("pointer table, long long"), "{e}");
    emu.free(table);
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn example_models_match_the_cpu_executor() {
    let Some(mut emu) = emu() else { return };
    emu.set_max_grid(64);
    for name in ["digits_mlp", "fmnist_csnn"] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/models/{name}.snn"));
        for mode in [Mode::Bptt, Mode::Rate] {
            for steps in [1, 2] {
                let opts = CheckOptions {
                    batch: 2,
                    ..case_opts(3)
                };
                let r = check_case(&mut emu, &path, steps, mode, &opts, true).unwrap();
                assert!(r.passed, "{name} {mode} T={steps}: {r:?}");
            }
        }
    }
    assert!(emu.damage.is_empty(), "{:?}", emu.damage);
}

/// The executor's outputs against the f64 interpreter, next to the CPU
/// executor's (printed): both are f32 with different summation orders, so
/// neither is closer everywhere. The CUDA executor stays within 1e-4 of each
/// tensor's scale (elements below 1e-2 of it compared at that scale); the
/// CPU executor is printed for comparison (about 1.2e-4 on fmnist_csnn's
/// first weight gradient).
#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn close_to_the_f64_interpreter() {
    let Some(mut emu) = emu() else { return };
    emu.set_max_grid(64);
    for (name, steps) in [("digits_mlp", 3), ("fmnist_csnn", 2)] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/models/{name}.snn"));
        let (model, a) = snnc::frontend::load(&path).unwrap();
        let g = compile(&model, &Options::new(steps, 2, Mode::Bptt))
            .unwrap()
            .graph;
        let p64 = snnc::init::init_params(&a, 0);
        let p32 = snnc::init::cast_params::<f32>(&p64);
        let x = snnc::interp::random_input(&g, false, 0);
        let labels = snnc::interp::random_labels(2, a.output[0], 0);
        let in64 = HashMap::from([
            ("x".to_string(), x.clone()),
            ("labels".to_string(), labels.clone()),
        ]);
        let in32 = HashMap::from([
            ("x".to_string(), x.cast::<f32>()),
            ("labels".to_string(), labels.cast::<f32>()),
        ]);
        let opts = RunOptions::seeded(0);
        let truth = interp::run(&g, &in64, &p64, &opts).unwrap();
        let cpu = snnc::codegen::cpu::run(&g, &in32, &p32, &opts).unwrap();
        let got = Executor::new(&mut emu, &g)
            .unwrap()
            .run(&in32, &p32, &opts)
            .unwrap();
        for (out, n) in &g.outputs {
            let t = truth.get(*n).unwrap().cast::<f32>();
            let (ec, ee) = (rel_err(&cpu[out], &t, 1e-2), rel_err(&got[out], &t, 1e-2));
            println!("{name} {out}: CUDA executor {ee:.2e}, CPU executor {ec:.2e} from the f64 interpreter");
            assert!(
                ee < 1e-4,
                "{name} {out}: CUDA executor {ee:e} (CPU executor {ec:e}) from the f64 interpreter"
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn buffers_are_reused_and_released() {
    let Some(mut emu) = emu() else { return };
    let (g, params, inputs, want) = fmnist_rate_case(2);
    let opts = RunOptions::seeded(0);
    {
        let mut ex = Executor::new(&mut emu, &g).unwrap();
        ex.set_resident_params(&params).unwrap();
        let first = ex.run(&inputs, &HashMap::new(), &opts).unwrap();
        let allocs = ex.stats().device_allocs;
        for _ in 0..2 {
            let again = ex.run(&inputs, &HashMap::new(), &opts).unwrap();
            assert_eq!(again, first, "a repeated run differs");
        }
        let s = ex.stats();
        assert_eq!(s.device_allocs, allocs, "repeated runs allocate: {s:?}");
        assert!(
            s.peak_live_bytes > 0 && s.peak_live_bytes <= s.peak_reserved_bytes,
            "{s:?}"
        );
        let param_bytes: usize =
            g.g.node_weights()
                .filter(|n| matches!(n.op, Op::Param { .. }))
                .map(|n| 4 * n.shape.iter().product::<usize>())
                .sum();
        // Between runs only the resident parameters are live.
        assert_eq!(s.live_bytes, param_bytes, "{s:?}");
        for (k, v) in &want {
            assert!(rel_err(&first[k], v, 1e-1) < 1e-4, "{k}");
        }
        ex.clear_resident_params();
        assert_eq!(ex.stats().live_bytes, 0);
    }
    assert_eq!(emu.live_buffers(), 0, "buffers outlive the executor");
    assert!(emu.damage.is_empty(), "{:?}", emu.damage);
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the CUDA emulator ($CXX, c++, g++ or clang++)"
)]
fn the_emulator_catches_what_it_checks() {
    let Some(mut emu) = emu() else { return };
    // Argument types against the signature table.
    assert!(check_args("snnc_add", &[Arg::P(0), Arg::P(0), Arg::P(0), Arg::F(1.0)]).is_err());
    assert!(check_args("snnc_add", &[Arg::P(0), Arg::P(0), Arg::P(0), Arg::I(1)]).is_ok());
    assert!(check_args("snnc_nope", &[]).is_err());
    let buf = emu.alloc(10).unwrap();
    let p = emu.ptr(&buf);
    // A write past the end of a buffer.
    let e = emu
        .launch("snnc_fill", 1, 32, &[Arg::P(p), Arg::I(12), Arg::F(0.0)])
        .unwrap_err();
    assert!(e.to_string().contains("wrote outside"), "{e}");
    // A pointer that is in no buffer.
    let e = emu
        .launch("snnc_fill", 1, 32, &[Arg::P(8), Arg::I(1), Arg::F(0.0)])
        .unwrap_err();
    assert!(e.to_string().contains("not in a live buffer"), "{e}");
    // A GEMM reading past its operand.
    let other = emu.alloc(10).unwrap();
    let p = emu.ptr(&other);
    let call = Gemm::dense(false, false, 4, 4, 4, p, p, p);
    let e = emu.gemm(&call).unwrap_err();
    assert!(e.to_string().contains("needs 16 elements"), "{e}");
    emu.free(other);
    assert!(emu.damage.is_empty());
    emu.free(buf);
    assert_eq!(
        emu.damage.len(),
        1,
        "the overwritten guard is reported when freed"
    );
}
