//! The CPU's library convolutions (oneDNN's direct kernels,
//! `codegen/cpu/conv.rs`) compute what the interpreter computes in f64:
//! forward, input gradient and weight gradient, on batches that split
//! unevenly over the workers (1, 3, 5 samples), one input channel, channel
//! counts that are not multiples of the kernels' 16-channel blocks, 1×1,
//! 3×3 and 5×5 filters, stride 2 with windows that stop short of the
//! padding, a non-square image, and no padding. Tolerance: the tests' f32 tolerance
//! (`common::agree::F32`: every element within 1e-4 of the output's
//! largest magnitude). The output buffer starts as NaN, so an element the
//! library does not write fails. Without oneDNN's version-2 API the test
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
    };
    // SAFETY: the buffers hold the call's operands and outlive it.
    let done = unsafe { conv::run(&call) }.unwrap_or_else(|e| panic!("{pass:?} {s:?}: {e}"));
    done.then(|| Tensor::from_vec(out_shape, out.iter().map(|&v| v as f64).collect()))
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

#[test]
fn an_unknown_conv_path_is_an_error_that_lists_the_names() {
    // In a child process: the variable is read once per process, and setting it
    // here would reach the other test's thread.
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
        .env("SNNC_CONV", "winograd")
        .output()
        .expect("snnc runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("SNNC_CONV=`winograd` names no convolution path (onednn, im2col)"),
        "{text}"
    );
}
