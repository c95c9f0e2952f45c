//! The CPU's library convolutions (oneDNN's direct kernels,
//! `codegen/cpu/conv.rs`) compute what the interpreter computes in f64:
//! forward, input gradient and weight gradient, on batches that split
//! unevenly over the workers (1, 3, 5 samples), one input channel, channel
//! counts that are not multiples of the kernels' 16-channel blocks, 1×1,
//! 3×3 and 5×5 filters, stride 2 with windows that stop short of the
//! padding, a non-square image, and no padding. Tolerance: the tests' f32 tolerance
//! (`common::agree::F32`: every element within 1e-4 of the output's
//! largest magnitude). The output buffer starts as NaN, so an element the
//! library does not write fails.
//!
//! Forward calls whose input bf16 holds exactly (spikes, window averages
//! k/4) run on oneDNN's AMX kernels with weights in three bf16 parts
//! (`codegen/cpu/conv_bf16.rs`) where the machine has AMX: those agree
//! with the f32 kernels within 1e-6 of the output's largest magnitude
//! (both are f32-accurate; the sums' order differs), and a call with one
//! inexact element runs on the f32 kernels, bit for bit. Without AMX that
//! test prints that it skipped and why.
//!
//! One-input-channel forwards and weight gradients run on the direct
//! AVX-512 kernels (`codegen/cpu/conv_direct.rs`) where the CPU has
//! AVX-512: 3×3, 5×5 and 7×7 filters, widths that fill one, two and three
//! 16-column vectors with and without a remainder, against the interpreter
//! (the same f32 tolerance); the forward's moments equal the sums of the
//! output it wrote (within 1e-12 of Σ|x| and Σx²). Without AVX-512 that
//! test prints that it skipped and why. Without oneDNN's version-2 API the test
//! prints that it skipped and why; `SNNC_REQUIRE_ONEDNN_CONV=1` (CI, where
//! libdnnl2 is installed) makes that a failure.

mod common;

use snnc::codegen::backend::{ConvCall, ConvPass};
use snnc::codegen::cpu::conv;
use snnc::compare;
use snnc::interp::{eval_op, RunOptions};
use snnc::ir::Op;
use snnc::tensor::Tensor;

fn data(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut r = snnc::rng::Rng::new(seed);
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| r.uniform() * 2.0 - 1.0).collect())
}

/// (batch, ci, h, w, co, k, stride, pad)
const SHAPES: &[[usize; 8]] = &[
    [5, 32, 14, 14, 64, 3, 1, 1],
    [3, 1, 28, 28, 32, 3, 1, 1],
    [128, 1, 28, 28, 32, 3, 1, 1],
    [1, 3, 9, 9, 5, 3, 2, 1],
    [4, 20, 8, 8, 24, 1, 1, 0],
    [3, 7, 11, 11, 17, 5, 2, 2],
    [2, 16, 10, 10, 16, 3, 2, 0],
    [2, 4, 28, 27, 8, 3, 2, 1],
    [3, 33, 6, 6, 40, 3, 1, 1],
];

/// The library's result for `pass`, or `None` where it declined the shape.
fn library(
    pass: ConvPass,
    s: [usize; 8],
    ins: [&Tensor<f64>; 2],
    out_shape: &[usize],
) -> Option<Tensor<f64>> {
    library_in(pass, s, ins, out_shape, conv::Mode::OneDnn, None).map(|(t, _)| t)
}

/// `library` on the path `mode` names, with the path the call took.
fn library_in(
    pass: ConvPass,
    s: [usize; 8],
    ins: [&Tensor<f64>; 2],
    out_shape: &[usize],
    mode: conv::Mode,
    moments: Option<&mut [f64]>,
) -> Option<(Tensor<f64>, &'static str)> {
    let [b, ci, h, w, co, k, stride, pad] = s;
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let f32s = |t: &Tensor<f64>| t.data.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (a, bb) = (f32s(ins[0]), f32s(ins[1]));
    let mut out = vec![f32::NAN; out_shape.iter().product()];
    let call = ConvCall {
        pass,
        b,
        ci,
        h,
        w,
        co,
        k,
        stride,
        pad,
        ho,
        wo,
        ins: [a.as_ptr() as u64, bb.as_ptr() as u64],
        out: out.as_mut_ptr() as u64,
        moments: moments.map_or(0, |m| m.as_mut_ptr() as u64),
    };
    // SAFETY: the buffers hold the call's operands and outlive it.
    let done =
        unsafe { conv::run_in(&call, mode) }.unwrap_or_else(|e| panic!("{pass:?} {s:?}: {e}"));
    done.then(|| {
        (
            Tensor::from_vec(out_shape, out.iter().map(|&v| v as f64).collect()),
            conv::last_path(),
        )
    })
}

#[test]
fn library_convolutions_equal_the_interpreter() {
    let probe = ConvCall {
        pass: ConvPass::Forward,
        b: 2,
        ci: 32,
        h: 14,
        w: 14,
        co: 64,
        k: 3,
        stride: 1,
        pad: 1,
        ho: 14,
        wo: 14,
        ins: [0; 2],
        out: 0,
        moments: 0,
    };
    let Some(imp) = conv::implementation(&probe) else {
        let why = conv::describe();
        assert!(
            std::env::var_os("SNNC_REQUIRE_ONEDNN_CONV").is_none(),
            "SNNC_REQUIRE_ONEDNN_CONV is set but the library convolutions are unavailable: {why}"
        );
        println!("skipped: no library convolutions on this machine ({why})");
        return;
    };
    println!(
        "{} (fmnist_csnn's second convolution: {imp})",
        conv::describe()
    );
    let opts = RunOptions::default();
    let mut failures = Vec::new();
    let mut declined = Vec::new();
    for (i, &s) in SHAPES.iter().enumerate() {
        let [b, ci, h, w, co, k, stride, pad] = s;
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let x = data(&[b, ci, h, w], 10 + i as u64);
        let wt = data(&[co, ci, k, k], 20 + i as u64);
        let dy = data(&[b, co, ho, wo], 30 + i as u64);
        let cases = [
            (
                ConvPass::Forward,
                Op::Conv2d {
                    stride,
                    padding: pad,
                },
                [&x, &wt],
                vec![b, co, ho, wo],
            ),
            (
                ConvPass::GradInput,
                Op::Conv2dGradInput {
                    stride,
                    padding: pad,
                    in_h: h,
                    in_w: w,
                },
                [&dy, &wt],
                vec![b, ci, h, w],
            ),
            (
                ConvPass::GradWeight,
                Op::Conv2dGradWeight {
                    stride,
                    padding: pad,
                    kernel: k,
                },
                [&x, &dy],
                vec![co, ci, k, k],
            ),
        ];
        for (pass, op, ins, shape) in cases {
            let want = eval_op(&op, &shape, &ins, &opts).expect("the interpreter runs it");
            match library(pass, s, ins, &shape) {
                None => declined.push(format!("{pass:?} {s:?}")),
                Some(got) => {
                    if let Err(m) = compare::check(&got, &want, common::agree::F32) {
                        failures.push(format!("{pass:?} {s:?}: {m}"));
                    }
                }
            }
        }
    }
    println!("declined (run as im2col by the executor): {declined:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The training shapes must not fall back.
    assert!(
        !declined
            .iter()
            .any(|d| d.contains("[5, 32, 14, 14, 64, 3, 1, 1]")),
        "oneDNN declined fmnist_csnn's convolution: {declined:?}"
    );
}

/// `snnc bench` on a tiny fmnist_csnn step with `var=value`, in a child
/// process (the variables are read once per process, and setting one here
/// would reach the other tests' threads): whether it succeeded, and what
/// it printed.
fn bench_with(var: &str, value: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snnc"))
        .args([
            "bench",
            "examples/models/fmnist_csnn.snn",
            "-T",
            "1",
            "--batch",
            "2",
            "--repeats",
            "1",
        ])
        .env(var, value)
        .output()
        .expect("snnc runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `bench_with(var, value)` fails and says `message`.
fn refused(var: &str, value: &str, message: &str) {
    let (ok, text) = bench_with(var, value);
    assert!(!ok, "{text}");
    assert!(text.contains(message), "{text}");
}

#[test]
fn an_unknown_conv_path_is_an_error_that_lists_the_names() {
    refused(
        "SNNC_CONV",
        "winograd",
        "SNNC_CONV=`winograd` names no convolution path (onednn, im2col)",
    );
}

#[test]
fn an_unknown_amx_switch_is_an_error() {
    refused(
        "SNNC_AMX",
        "maybe",
        "SNNC_AMX=`maybe` is neither `on` nor `off`",
    );
}

/// Spikes and their 2×2 window averages: k/4, k = 0..4, about half zero.
fn spikes(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut r = snnc::rng::Rng::new(seed);
    let n = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n)
            .map(|_| (r.uniform() * 10.0 - 5.0).max(0.0).floor() / 4.0)
            .collect(),
    )
}

#[test]
fn spike_inputs_on_amx_agree_with_the_f32_kernels() {
    let amx = match conv::amx() {
        Ok(imp) => imp,
        Err(why) => {
            println!("skipped: no AMX convolutions here ({why})");
            return;
        }
    };
    println!("AMX kernel: {amx}");
    let opts = RunOptions::default();
    // f32-accurate: measured ≤ 4.3e-7·S here; two bf16 parts per weight
    // (16 bits) give ≥ 1.7e-6·S, so this fails with a part missing.
    let tight = compare::Tol::new(1e-6, 1.0);
    // Batches of 19 and 128 split into uneven parts and chunks with a
    // remainder; the rest are the shapes above.
    let mut shapes = SHAPES.to_vec();
    shapes.push([19, 32, 14, 14, 64, 3, 1, 1]);
    shapes.push([128, 32, 14, 14, 64, 3, 1, 1]);
    let mut on_amx = 0;
    for (i, &s) in shapes.iter().enumerate() {
        let [b, ci, h, w, co, k, stride, pad] = s;
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let x = spikes(&[b, ci, h, w], 40 + i as u64);
        let wt = data(&[co, ci, k, k], 50 + i as u64);
        let shape = vec![b, co, ho, wo];
        let op = Op::Conv2d {
            stride,
            padding: pad,
        };
        let want = eval_op(&op, &shape, &[&x, &wt], &opts).expect("the interpreter runs it");
        let run =
            |x: &Tensor<f64>, mode| library_in(ConvPass::Forward, s, [x, &wt], &shape, mode, None);
        let (Some((got, path)), Some((f32s, _))) =
            (run(&x, conv::Mode::OneDnn), run(&x, conv::Mode::OneDnnF32))
        else {
            continue;
        };
        if path.contains("AMX") {
            on_amx += 1;
        }
        if let Err(m) = compare::check(&got, &want, common::agree::F32) {
            panic!("{s:?} against the interpreter: {m}");
        }
        let scale = compare::max_abs(&f32s);
        if let Err(m) = compare::check_scaled(&got, &f32s, tight, scale) {
            panic!("{s:?} against the f32 kernels: {m}");
        }
        // One inexact element (in the last sample): the f32 kernels, bit
        // for bit.
        let mut inexact = x.clone();
        let last = inexact.data.len() - 1;
        inexact.data[last] = 0.1;
        let (Some((got, path)), Some((f32s, _))) = (
            run(&inexact, conv::Mode::OneDnn),
            run(&inexact, conv::Mode::OneDnnF32),
        ) else {
            panic!("{s:?}: the f32 kernels declined what they ran before");
        };
        assert!(!path.contains("AMX"), "{s:?}: {path}");
        assert!(got.data == f32s.data, "{s:?}: not the f32 kernels' result");
    }
    // fmnist_csnn's second convolution at least (32 → 64 channels).
    println!("{on_amx} of {} shapes ran on AMX", shapes.len());
    assert!(on_amx >= 2, "only {on_amx} shapes ran on AMX");
}

/// `m` (Σx of each of `co` channels, then Σx²) against the sums of
/// `got` (`b` × `co` × `hw`) in f64: within 1e-12 of Σ|x| and of Σx².
fn check_moments(got: &Tensor<f64>, m: &[f64], [b, co, hw]: [usize; 3], what: &str) {
    for c in 0..co {
        let vals = (0..b).flat_map(|n| &got.data[(n * co + c) * hw..][..hw]);
        let (mut sum, mut abs, mut sq) = (0.0, 0.0, 0.0);
        for &v in vals {
            sum += v;
            abs += v.abs();
            sq += v * v;
        }
        let (ds, dq) = ((m[c] - sum).abs(), (m[co + c] - sq).abs());
        assert!(
            ds <= 1e-12 * abs,
            "{what} channel {c}: Σx {} vs {sum}",
            m[c]
        );
        assert!(
            dq <= 1e-12 * sq,
            "{what} channel {c}: Σx² {} vs {sq}",
            m[co + c]
        );
    }
}

/// A forward on the AMX path that is asked for its output's moments
/// (`ConvCall::moments`, summed per chunk while the chunk is in cache)
/// writes Σx and Σx² per channel equal to the sums of the output it
/// wrote, in double, within 1e-12 of Σ|x| and Σx² (measured: ≤ 1e-15;
/// summing one sample too few or leaving x² out fails by far more), and
/// the same output bit for bit as without; on the f32 kernels (an inexact
/// input) it says it wrote none.
#[test]
fn amx_forwards_sum_their_output_moments() {
    if let Err(why) = conv::amx() {
        println!("skipped: no AMX convolutions here ({why})");
        return;
    }
    let shapes = [[19, 32, 14, 14, 64, 3, 1, 1], [5, 32, 14, 14, 64, 3, 1, 1]];
    for (i, &s) in shapes.iter().enumerate() {
        let [b, ci, h, w, co, k, stride, pad] = s;
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let x = spikes(&[b, ci, h, w], 60 + i as u64);
        let wt = data(&[co, ci, k, k], 70 + i as u64);
        let shape = vec![b, co, ho, wo];
        let run = |x: &Tensor<f64>, m: Option<&mut [f64]>| {
            library_in(
                ConvPass::Forward,
                s,
                [x, &wt],
                &shape,
                conv::Mode::OneDnn,
                m,
            )
            .unwrap_or_else(|| panic!("{s:?}: oneDNN declined"))
        };
        let (plain, _) = run(&x, None);
        let mut m = vec![f64::NAN; 2 * co];
        let (got, path) = run(&x, Some(&mut m));
        assert_eq!(path, "library, AMX bf16×3", "{s:?}");
        assert!(conv::last_wrote_moments(), "{s:?}: no moments written");
        assert!(got.data == plain.data, "{s:?}: the output changed");
        check_moments(&got, &m, [b, co, ho * wo], &format!("{s:?}"));
        let mut inexact = x.clone();
        inexact.data[0] = 0.1;
        let (_, path) = run(&inexact, Some(&mut m));
        assert_eq!(path, "library", "{s:?}");
        assert!(
            !conv::last_wrote_moments(),
            "{s:?}: moments from the f32 kernels"
        );
    }
}

#[test]
fn one_channel_convolutions_run_direct_and_agree() {
    let opts = RunOptions::default();
    // (batch, ci, h, w, co, k, stride, pad): "same" and "valid" windows.
    let shapes = [
        [128, 1, 28, 28, 32, 3, 1, 1],
        [3, 1, 28, 28, 32, 3, 1, 1],
        [1, 1, 9, 16, 5, 3, 1, 1],
        [2, 1, 12, 33, 7, 5, 1, 2],
        [3, 1, 11, 13, 4, 7, 1, 3],
        [2, 1, 10, 20, 6, 3, 1, 0],
    ];
    for (i, &s) in shapes.iter().enumerate() {
        let [b, ci, h, w, co, k, stride, pad] = s;
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let x = data(&[b, ci, h, w], 80 + i as u64);
        let wt = data(&[co, ci, k, k], 90 + i as u64);
        let dy = data(&[b, co, ho, wo], 100 + i as u64);
        let op = Op::Conv2d {
            stride,
            padding: pad,
        };
        let want = eval_op(&op, &[b, co, ho, wo], &[&x, &wt], &opts).expect("runs");
        let mut m = vec![f64::NAN; 2 * co];
        let out_shape = [b, co, ho, wo];
        let Some((got, path)) = library_in(
            ConvPass::Forward,
            s,
            [&x, &wt],
            &out_shape,
            conv::Mode::OneDnn,
            Some(&mut m),
        ) else {
            panic!("{s:?}: declined");
        };
        if path != "direct, AVX-512" {
            println!("skipped: {s:?} ran on {path} (no AVX-512 here)");
            return;
        }
        if let Err(e) = compare::check(&got, &want, common::agree::F32) {
            panic!("{s:?} forward: {e}");
        }
        assert!(conv::last_wrote_moments(), "{s:?}: no moments");
        check_moments(&got, &m, [b, co, ho * wo], &format!("{s:?}"));
        let op = Op::Conv2dGradWeight {
            stride,
            padding: pad,
            kernel: k,
        };
        let shape = [co, ci, k, k];
        let want = eval_op(&op, &shape, &[&x, &dy], &opts).expect("runs");
        let run = library_in(
            ConvPass::GradWeight,
            s,
            [&x, &dy],
            &shape,
            conv::Mode::OneDnn,
            None,
        );
        let Some((got, path)) = run else {
            panic!("{s:?}: declined");
        };
        assert_eq!(path, "direct, AVX-512", "{s:?}");
        if let Err(e) = compare::check(&got, &want, common::agree::F32) {
            panic!("{s:?} weight gradient: {e}");
        }
    }
}
