//! Every op of the reference interpreter against small hand-computed cases.

use snnc::interp::{eval_op, RunOptions};
use snnc::ir::{MaxPoolRule, Op};
use snnc::model::{Surrogate, SurrogateKind};
use snnc::tensor::Tensor;

fn t64(shape: &[usize], data: &[f64]) -> Tensor<f64> {
    Tensor::from_vec(shape, data.to_vec())
}

/// Evaluates `op` in f64 with seed 0, inferring the annotated shape from the
/// operands (leaves are given their shape explicitly elsewhere).
fn eval(op: Op, xs: &[&Tensor<f64>]) -> Tensor<f64> {
    let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape.as_slice()).collect();
    let shape = op.infer_shape(&shapes).unwrap().unwrap();
    eval_op(&op, &shape, xs, &RunOptions::default()).unwrap()
}

fn iota(shape: &[usize], start: f64) -> Tensor<f64> {
    let n: usize = shape.iter().product();
    t64(shape, &(0..n).map(|i| start + i as f64).collect::<Vec<_>>())
}

/// Per element within 1e-12 of the expected tensor's largest magnitude
/// (`snnc::compare`).
fn assert_close(a: &Tensor<f64>, shape: &[usize], want: &[f64]) {
    assert_eq!(a.shape, shape);
    let want = Tensor::from_vec(shape, want.to_vec());
    if let Err(m) = snnc::compare::check(a, &want, snnc::compare::Tol::new(1e-12, 1.0)) {
        panic!("{m}: got {:?}, want {:?}", a.data, want.data);
    }
}

const SIG: Surrogate = Surrogate {
    kind: SurrogateKind::Sigmoid,
    alpha: 4.0,
};

#[test]
fn elementwise() {
    let a = t64(&[2, 2], &[1.0, -2.0, 3.5, 0.0]);
    let b = t64(&[2, 2], &[0.5, 4.0, -1.0, 2.0]);
    assert_close(&eval(Op::Add, &[&a, &b]), &[2, 2], &[1.5, 2.0, 2.5, 2.0]);
    assert_close(&eval(Op::Sub, &[&a, &b]), &[2, 2], &[0.5, -6.0, 4.5, -2.0]);
    assert_close(&eval(Op::Mul, &[&a, &b]), &[2, 2], &[0.5, -8.0, -3.5, 0.0]);
    assert_close(
        &eval(Op::Scale(0.5), &[&a]),
        &[2, 2],
        &[0.5, -1.0, 1.75, 0.0],
    );
    assert_close(
        &eval(Op::AddScalar(-1.0), &[&a]),
        &[2, 2],
        &[0.0, -3.0, 2.5, -1.0],
    );
    assert_eq!(eval(Op::Detach, &[&a]), a);
}

#[test]
fn spike_is_heaviside_with_h0_equal_one() {
    let x = t64(&[5], &[0.999, 1.0, 1.001, -3.0, 7.0]);
    let op = Op::Spike {
        theta: 1.0,
        surrogate: SIG,
    };
    assert_close(&eval(op, &[&x]), &[5], &[0.0, 1.0, 1.0, 0.0, 1.0]);
}

#[test]
fn time_slice_takes_frame_t() {
    // [B=2, T=3, 2]: frame 1 of batch 0 is elements 2,3; of batch 1, 8,9.
    let x = iota(&[2, 3, 2], 0.0);
    assert_close(
        &eval(Op::TimeSlice { t: 1 }, &[&x]),
        &[2, 2],
        &[2.0, 3.0, 8.0, 9.0],
    );
    let x = iota(&[1, 2, 2, 2], 0.0);
    assert_close(
        &eval(Op::TimeSlice { t: 1 }, &[&x]),
        &[1, 2, 2],
        &[4.0, 5.0, 6.0, 7.0],
    );
}

#[test]
fn matmul_with_each_transpose_flag() {
    let a = t64(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let at = t64(&[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let b = t64(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let bt = t64(&[2, 3], &[7.0, 9.0, 11.0, 8.0, 10.0, 12.0]);
    // [[1,2,3],[4,5,6]]·[[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    let want = [58.0, 64.0, 139.0, 154.0];
    let mm = |ta, tb, x: &Tensor<f64>, y: &Tensor<f64>| eval(Op::MatMul { ta, tb }, &[x, y]);
    assert_close(&mm(false, false, &a, &b), &[2, 2], &want);
    assert_close(&mm(true, false, &at, &b), &[2, 2], &want);
    assert_close(&mm(false, true, &a, &bt), &[2, 2], &want);
    assert_close(&mm(true, true, &at, &bt), &[2, 2], &want);
    // The other order gives a 3×3 product: B·A.
    let ba = mm(false, false, &b, &a);
    assert_close(
        &ba,
        &[3, 3],
        &[39.0, 54.0, 69.0, 49.0, 68.0, 87.0, 59.0, 82.0, 105.0],
    );
}

#[test]
fn bias_add_broadcasts_over_axis_1() {
    let x = iota(&[2, 3, 2], 0.0);
    let b = t64(&[3], &[10.0, 20.0, 30.0]);
    assert_close(
        &eval(Op::BiasAdd, &[&x, &b]),
        &[2, 3, 2],
        &[
            10.0, 11.0, 22.0, 23.0, 34.0, 35.0, 16.0, 17.0, 28.0, 29.0, 40.0, 41.0,
        ],
    );
    let x = iota(&[2, 2], 0.0);
    let b = t64(&[2], &[1.0, -1.0]);
    assert_close(
        &eval(Op::BiasAdd, &[&x, &b]),
        &[2, 2],
        &[1.0, 0.0, 3.0, 2.0],
    );
}

fn conv(stride: usize, padding: usize, x: &Tensor<f64>, w: &Tensor<f64>) -> Tensor<f64> {
    eval(Op::Conv2d { stride, padding }, &[x, w])
}

#[test]
fn conv2d_single_channel_by_hand() {
    // x = [[1,2,3],[4,5,6],[7,8,9]]
    let x = iota(&[1, 1, 3, 3], 1.0);
    // w = [[1,2],[3,4]]
    let w = iota(&[1, 1, 2, 2], 1.0);
    assert_close(
        &conv(1, 0, &x, &w),
        &[1, 1, 2, 2],
        &[37.0, 47.0, 67.0, 77.0],
    );
    // Stride 2, padding 1: windows at padded (0,0), (0,2), (2,0), (2,2).
    // (0,0) sees only x00·w11 = 4; (0,1) x01·w10 + x02·w11 = 6 + 12;
    // (1,0) x10·w01 + x20·w11 = 8 + 28; (1,1) the full 5,6,8,9 window = 77.
    assert_close(&conv(2, 1, &x, &w), &[1, 1, 2, 2], &[4.0, 18.0, 36.0, 77.0]);
    // A 3×3 box filter with padding 1 gives neighbourhood sums.
    let ones = Tensor::full(&[1, 1, 3, 3], 1.0);
    assert_close(
        &conv(1, 1, &x, &ones),
        &[1, 1, 3, 3],
        &[12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0],
    );
    // Stride 2 with the box filter: the corners of that map.
    assert_close(
        &conv(2, 1, &x, &ones),
        &[1, 1, 2, 2],
        &[12.0, 16.0, 24.0, 28.0],
    );
}

#[test]
fn conv2d_channels_and_batch() {
    // B=2, Ci=2, 2×2 images; a 1×1 kernel mixes channels:
    // out_o = w[o,0]·x_0 + w[o,1]·x_1.
    let x = iota(&[2, 2, 2, 2], 0.0);
    let w = t64(&[3, 2, 1, 1], &[1.0, 0.0, 0.0, 1.0, 1.0, -1.0]);
    let y = conv(1, 0, &x, &w);
    let mut want = Vec::new();
    for b in 0..2 {
        let x0: Vec<f64> = (0..4).map(|i| (b * 8 + i) as f64).collect();
        let x1: Vec<f64> = (0..4).map(|i| (b * 8 + 4 + i) as f64).collect();
        want.extend(&x0);
        want.extend(&x1);
        want.extend(x0.iter().zip(&x1).map(|(a, c)| a - c));
    }
    assert_close(&y, &[2, 3, 2, 2], &want);
}

#[test]
fn pooling_by_hand() {
    // 1..16 in a 4×4 image.
    let x = iota(&[1, 1, 4, 4], 1.0);
    let maxp = |k, s| maxpool(&x, k, s, 0);
    let avgp = |k, s| {
        eval(
            Op::AvgPool {
                kernel: k,
                stride: s,
                padding: 0,
            },
            &[&x],
        )
    };
    assert_close(&maxp(2, 2), &[1, 1, 2, 2], &[6.0, 8.0, 14.0, 16.0]);
    assert_close(&avgp(2, 2), &[1, 1, 2, 2], &[3.5, 5.5, 11.5, 13.5]);
    assert_close(&maxp(3, 1), &[1, 1, 2, 2], &[11.0, 12.0, 15.0, 16.0]);
    assert_close(&avgp(3, 1), &[1, 1, 2, 2], &[6.0, 7.0, 10.0, 11.0]);
    // Windows that do not fit are dropped (no padding): 4 with k3 s2 → 1.
    assert_close(&maxp(3, 2), &[1, 1, 1, 1], &[11.0]);
}

fn maxpool(x: &Tensor<f64>, kernel: usize, stride: usize, padding: usize) -> Tensor<f64> {
    let op = Op::MaxPool {
        kernel,
        stride,
        padding,
        rule: MaxPoolRule::Masks,
    };
    eval(op, &[x])
}

#[test]
fn padded_pooling_by_hand() {
    // 1..16 in a 4×4 image; kernel 3, stride 2, padding 1 (the ImageNet
    // stem's pool): windows cover rows/columns {0,1} and {1,2,3}.
    let x = iota(&[1, 1, 4, 4], 1.0);
    assert_close(
        &maxpool(&x, 3, 2, 1),
        &[1, 1, 2, 2],
        &[6.0, 8.0, 14.0, 16.0],
    );
    // Padding never wins a max, even over negative values.
    let neg = t64(
        &[1, 1, 4, 4],
        &x.data.iter().map(|v| -v).collect::<Vec<_>>(),
    );
    assert_close(
        &maxpool(&neg, 3, 2, 1),
        &[1, 1, 2, 2],
        &[-1.0, -2.0, -5.0, -6.0],
    );
    // Average pooling counts padded positions as zeros and divides by k².
    let avg = eval(
        Op::AvgPool {
            kernel: 3,
            stride: 2,
            padding: 1,
        },
        &[&x],
    );
    let sums = [1.0 + 2.0 + 5.0 + 6.0, 30.0, 57.0, 99.0];
    assert_close(&avg, &[1, 1, 2, 2], &sums.map(|s| s / 9.0));
    // The selection is one-hot at each window's maximum: offset (2, 2) = 8
    // in every window here; routing δ by it lands on 6, 8, 14 and 16.
    let win = (3, 2, 1);
    let sel = eval(select(win), &[&x]);
    assert_eq!(sel.shape, [1, 1, 2, 2, 9]);
    for w in 0..4 {
        let row = &sel.data[w * 9..(w + 1) * 9];
        assert_eq!(row.iter().position(|&v| v == 1.0), Some(8), "window {w}");
        assert_eq!(row.iter().sum::<f64>(), 1.0);
    }
    let d = t64(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let routed = eval(route(win, 4, 4), &[&sel, &d]);
    let mut want = vec![0.0; 16];
    for (i, v) in [(5, 1.0), (7, 2.0), (13, 3.0), (15, 4.0)] {
        want[i] = v;
    }
    assert_close(&routed, &[1, 1, 4, 4], &want);
}

fn select((kernel, stride, padding): (usize, usize, usize)) -> Op {
    Op::MaxPoolSelect {
        kernel,
        stride,
        padding,
    }
}

fn route((kernel, stride, padding): (usize, usize, usize), in_h: usize, in_w: usize) -> Op {
    Op::MaxPoolRoute {
        kernel,
        stride,
        padding,
        in_h,
        in_w,
    }
}

/// `maxpool-route`'s identity, `maxpool_grad(x, δ) = route(select(x), δ)`,
/// holds exactly on every window geometry, ties included (small integer
/// values tie often); so does `maxpool-mask`'s where windows do not
/// overlap.
#[test]
fn route_of_select_is_maxpool_grad() {
    let mut state = 7u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64
    };
    for (k, s, p) in [
        (2, 1, 0),
        (3, 1, 1),
        (3, 2, 1),
        (3, 2, 0),
        (2, 2, 1),
        (2, 3, 0),
        (2, 3, 1),
    ] {
        let (h, w) = (7, 6);
        let x = t64(
            &[2, 2, h, w],
            &(0..2 * 2 * h * w)
                .map(|_| (next() % 4.0) - 2.0)
                .collect::<Vec<_>>(),
        );
        let ho = (h + 2 * p - k) / s + 1;
        let wo = (w + 2 * p - k) / s + 1;
        let d = t64(
            &[2, 2, ho, wo],
            &(0..4 * ho * wo)
                .map(|_| next() % 9.0 - 4.0)
                .collect::<Vec<_>>(),
        );
        let grad = eval(
            Op::MaxPoolGrad {
                kernel: k,
                stride: s,
                padding: p,
                rule: MaxPoolRule::Masks,
            },
            &[&x, &d],
        );
        let sel = eval(select((k, s, p)), &[&x]);
        let routed = eval(route((k, s, p), h, w), &[&sel, &d]);
        assert_eq!(routed.data, grad.data, "k{k} s{s} p{p}");
        if s >= k {
            let mask = eval(
                Op::MaxPoolMask {
                    kernel: k,
                    stride: s,
                    padding: p,
                },
                &[&x],
            );
            let up = eval(
                Op::AvgPoolGrad {
                    kernel: k,
                    stride: s,
                    padding: p,
                    in_h: h,
                    in_w: w,
                },
                &[&d],
            );
            let kk = (k * k) as f64;
            let by_mask: Vec<f64> = mask
                .data
                .iter()
                .zip(&up.data)
                .map(|(m, u)| kk * (m * u))
                .collect();
            assert_eq!(by_mask, grad.data, "mask rule k{k} s{s} p{p}");
        }
    }
}

#[test]
fn pooling_keeps_planes_apart() {
    // B=1, C=2: the second plane is the first negated.
    let mut data: Vec<f64> = (1..=4).map(f64::from).collect();
    data.extend((1..=4).map(|v| -f64::from(v)));
    let x = t64(&[1, 2, 2, 2], &data);
    assert_close(&maxpool(&x, 2, 2, 0), &[1, 2, 1, 1], &[4.0, -1.0]);
    assert_close(
        &eval(
            Op::AvgPool {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
            &[&x],
        ),
        &[1, 2, 1, 1],
        &[2.5, -2.5],
    );
}

#[test]
fn reshape_keeps_data() {
    let x = iota(&[2, 3, 2], 0.0);
    let y = eval(Op::Reshape { shape: vec![2, 6] }, &[&x]);
    assert_eq!(y.shape, [2, 6]);
    assert_eq!(y.data, x.data);
}

#[test]
fn channel_mean_and_var_over_two_operands() {
    // [B=2, C=2]: channel 0 sees 1,3 and 5,7; channel 1 sees 2,4 and 6,8.
    let x1 = t64(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let x2 = t64(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
    let mean = eval(Op::ChannelMean, &[&x1, &x2]);
    assert_close(&mean, &[2], &[4.0, 5.0]);
    // Deviations ±3, ±1 in both channels: (9+1+1+9)/4 = 5.
    let var = eval(Op::ChannelVar, &[&mean, &x1, &x2]);
    assert_close(&var, &[2], &[5.0, 5.0]);
    // The variance is taken around the *given* mean, not a recomputed one.
    let zero = t64(&[2], &[0.0, 0.0]);
    let raw = eval(Op::ChannelVar, &[&zero, &x1, &x2]);
    assert_close(&raw, &[2], &[21.0, 30.0]);
}

#[test]
fn channel_stats_over_spatial_axes() {
    // [B=1, C=2, 2, 2]: channel 0 = 0..3, channel 1 = 4..7; one operand.
    let x = iota(&[1, 2, 2, 2], 0.0);
    let mean = eval(Op::ChannelMean, &[&x]);
    assert_close(&mean, &[2], &[1.5, 5.5]);
    let var = eval(Op::ChannelVar, &[&mean, &x]);
    assert_close(&var, &[2], &[1.25, 1.25]);
}

#[test]
fn batchnorm_normalises_each_channel() {
    let x = t64(&[2, 2, 2], &[1.0, 3.0, 10.0, 10.0, 5.0, 7.0, 20.0, 40.0]);
    let mean = eval(Op::ChannelMean, &[&x]);
    let var = eval(Op::ChannelVar, &[&mean, &x]);
    assert_close(&mean, &[2], &[4.0, 20.0]);
    assert_close(&var, &[2], &[5.0, 150.0]);
    let y = eval(Op::Normalize { eps: 0.0 }, &[&x, &mean, &var]);
    let m2 = eval(Op::ChannelMean, &[&y]);
    let v2 = eval(Op::ChannelVar, &[&m2, &y]);
    assert_close(&m2, &[2], &[0.0, 0.0]);
    assert_close(&v2, &[2], &[1.0, 1.0]);

    // (x − mean)/sqrt(var + eps), then ·gamma, then +beta, with round numbers:
    // channel 0: 2·(x − 1)/sqrt(3 + 1) + 1; channel 1: −1·(x − 0)/sqrt(0 + 1).
    let x = t64(&[1, 2, 2], &[3.0, 5.0, 2.0, -4.0]);
    let xhat = eval(
        Op::Normalize { eps: 1.0 },
        &[&x, &t64(&[2], &[1.0, 0.0]), &t64(&[2], &[3.0, 0.0])],
    );
    assert_close(&xhat, &[1, 2, 2], &[1.0, 2.0, 2.0, -4.0]);
    let scaled = eval(Op::ChannelScale, &[&xhat, &t64(&[2], &[2.0, -1.0])]);
    let y = eval(Op::BiasAdd, &[&scaled, &t64(&[2], &[1.0, 0.0])]);
    assert_close(&y, &[1, 2, 2], &[3.0, 5.0, -2.0, 4.0]);
}

#[test]
fn time_mean_averages_operands() {
    let a = t64(&[3], &[1.0, 0.0, 1.0]);
    let b = t64(&[3], &[1.0, 1.0, 0.0]);
    let c = t64(&[3], &[1.0, 0.0, 0.0]);
    assert_close(
        &eval(Op::TimeMean, &[&a, &b, &c]),
        &[3],
        &[1.0, 1.0 / 3.0, 1.0 / 3.0],
    );
    assert_close(&eval(Op::TimeMean, &[&a]), &[3], &a.data);
}

fn poisson<F: num_traits::Float>(x: &Tensor<F>, stream: u64, seed: u64) -> Tensor<F> {
    eval_op(
        &Op::Poisson { stream },
        &x.shape,
        &[x],
        &RunOptions::seeded(seed),
    )
    .unwrap()
}

#[test]
fn poisson_rate_matches_intensity() {
    let n = 100_000;
    for p in [0.1, 0.3, 0.75] {
        let x = Tensor::full(&[n], p);
        let s = poisson(&x, 7, 42);
        assert!(s.data.iter().all(|&v| v == 0.0 || v == 1.0));
        let frac = s.data.iter().sum::<f64>() / n as f64;
        assert!((frac - p).abs() < 0.01, "p={p}: fraction of ones {frac}");
    }
    // Intensities are clamped to [0, 1].
    let x = t64(&[4], &[-1.0, 0.0, 1.0, 2.0]);
    assert_close(&poisson(&x, 7, 42), &[4], &[0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn poisson_is_reproducible_across_types_and_seeds() {
    let n = 10_000;
    let x64 = Tensor::from_vec(&[100, 100], (0..n).map(|i| i as f64 / n as f64).collect());
    let x32: Tensor<f32> = x64.cast();
    let a = poisson(&x64, 3, 11);
    let b = poisson(&x32, 3, 11).cast::<f64>();
    assert_eq!(a, b, "f32 and f64 draw different spikes");
    assert_eq!(a, poisson(&x64, 3, 11), "same seed, different spikes");
    assert_ne!(a, poisson(&x64, 3, 12), "another seed, same spikes");
    assert_ne!(a, poisson(&x64, 4, 11), "another stream, same spikes");
}

fn mask<F: num_traits::Float>(shape: &[usize], p: f64, seed: u64) -> Tensor<F> {
    eval_op(
        &Op::DropoutMask { p, stream: 9 },
        shape,
        &[],
        &RunOptions::seeded(seed),
    )
    .unwrap()
}

#[test]
fn dropout_mask_values_and_mean() {
    let n = 100_000;
    for p in [0.0, 0.25, 0.5] {
        let m: Tensor<f64> = mask(&[100, n / 100], p, 5);
        assert_eq!(m.shape, [100, n / 100]);
        let keep = 1.0 / (1.0 - p);
        assert!(m.data.iter().all(|&v| v == 0.0 || v == keep));
        let mean = m.data.iter().sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.02, "p={p}: mask mean {mean}");
    }
    let a: Tensor<f64> = mask(&[1000], 0.5, 5);
    let b: Tensor<f32> = mask(&[1000], 0.5, 5);
    assert_eq!(a, b.cast::<f64>());
    assert_eq!(a, mask(&[1000], 0.5, 5));
    assert_ne!(a, mask(&[1000], 0.5, 6));
}

#[test]
fn eval_op_reports_bad_operands() {
    let a = t64(&[2, 2], &[0.0; 4]);
    let b = t64(&[2, 3], &[0.0; 6]);
    let opts = RunOptions::default();
    let err = eval_op(&Op::Add, &[2, 2], &[&a], &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "add takes 2 operands, got 1");
    let err = eval_op(&Op::Add, &[2, 2], &[&a, &b], &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "operand shapes differ: [2, 2] vs [2, 3]");
    let err = eval_op(&Op::Scale(2.0), &[4], &[&a], &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "operands give shape [2, 2], but the node is annotated [4]"
    );
    let err = eval_op::<f64>(&Op::Input { name: "x".into() }, &[2], &[], &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "input is a leaf whose value is supplied to run(), not computed"
    );
    let err = eval_op::<f64>(&Op::DropoutMask { p: 1.0, stream: 0 }, &[2], &[], &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "dropout p=1 is not in [0, 1)");
    let w = t64(&[1, 2, 1, 1], &[0.0; 2]);
    let x = t64(&[1, 2, 2, 2], &[0.0; 8]);
    let op = Op::Conv2d {
        stride: 0,
        padding: 0,
    };
    let err = eval_op(&op, &[1, 1, 2, 2], &[&x, &w], &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "conv2d stride must be positive");
    // A tensor whose data does not fill its shape is refused, not indexed.
    let bad = Tensor {
        shape: vec![2, 2],
        data: vec![0.0; 3],
    };
    let err = eval_op(&Op::Detach, &[2, 2], &[&bad], &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "operand 0 holds 3 elements but its shape [2, 2] needs 4"
    );
}
