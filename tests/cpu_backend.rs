//! The CPU backend's library kernels (codegen/cpu/backend.rs: kernels.cu
//! compiled as C++, launches split into parallel ranges, and native.h's CPU
//! forms of the layout and reduction kernels) produce exactly the CUDA
//! emulator's results (the GPU form, run thread by thread with a tiny grid):
//! bit for bit, since both compute each element from the same terms in the
//! same order. Every launch is split into ranges of 256 threads, which
//! start and end inside rows and channels.
//!
//! Both backends need a C++ compiler (build.rs's `snnc_cxx`); without one
//! these tests are ignored with the reason.

use snnc::codegen::backend::{check_args, Arg, Backend};
use snnc::codegen::cpu::Cpu;
use snnc::codegen::cuda::Emu;
use snnc::rng::Rng;

/// Runs `kernel` with `threads` threads on `backend` over buffers holding
/// `inputs` (pointer arguments `Arg::P(k)` name buffer k) and returns every
/// buffer's contents after the launch.
fn run<B: Backend>(
    backend: &mut B,
    kernel: &'static str,
    threads: usize,
    bufs: &[Vec<f32>],
    args: &[Arg],
) -> Vec<Vec<f32>> {
    let mut held = Vec::new();
    for b in bufs {
        let mut buf = backend.alloc(b.len()).unwrap();
        backend.upload(&mut buf, b).unwrap();
        held.push(buf);
    }
    let args: Vec<Arg> = args
        .iter()
        .map(|a| match *a {
            Arg::P(k) if k < 100 => Arg::P(backend.ptr(&held[k as usize])),
            // Null pointers are written as P(1000).
            Arg::P(_) => Arg::P(0),
            a => a,
        })
        .collect();
    check_args(kernel, &args).unwrap();
    let grid = threads.div_ceil(256).min(backend.max_grid() as usize) as u32;
    backend.launch(kernel, grid, 256, &args).unwrap();
    let out = held
        .iter()
        .zip(bufs)
        .map(|(b, v)| backend.download(b, v.len()).unwrap())
        .collect();
    for b in held {
        backend.free(b);
    }
    out
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect()
}

/// Compares every buffer bit for bit.
fn same(kernel: &str, case: &str, cpu: &[Vec<f32>], emu: &[Vec<f32>]) {
    for (k, (a, b)) in cpu.iter().zip(emu).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x.to_bits() == y.to_bits(),
                "{kernel} {case}: buffer {k}[{i}]: CPU {x} vs emulator {y}"
            );
        }
    }
}

fn backends() -> (Cpu, Emu) {
    let mut cpu = Cpu::new().expect("the CPU backend builds");
    cpu.set_min_parallel(1);
    let mut emu = Emu::new().expect("the emulator builds");
    emu.set_max_grid(7);
    (cpu, emu)
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the library kernels ($CXX, c++, g++ or clang++)"
)]
fn convolution_layout_kernels_equal_the_gpu_form() {
    use Arg::{I, P};
    let (mut cpu, mut emu) = backends();
    // (nb, ci, h, w, k, stride, pad)
    for &(nb, ci, h, w, k, s, pad) in &[
        (3, 4, 13, 11, 3, 1, 1),
        (2, 3, 17, 16, 3, 2, 1),
        (4, 2, 9, 10, 5, 2, 3),
        (2, 5, 12, 12, 1, 1, 0),
        (3, 3, 8, 7, 3, 3, 0),
        (2, 3, 10, 9, 5, 1, 2),
        (1, 2, 4, 5, 7, 1, 3),
        (2, 2, 6, 6, 3, 1, 4),
    ] {
        let ho = (h + 2 * pad - k) / s + 1;
        let wo = (w + 2 * pad - k) / s + 1;
        let (rows, cols) = (ci * k * k, ho * wo);
        let geo = |n: usize| {
            [ci, h, w, k, s, pad, ho, wo, nb, n]
                .iter()
                .map(|&v| I(v as i32))
                .collect::<Vec<_>>()
        };
        let case = format!("nb={nb} ci={ci} {h}x{w} k={k} s={s} pad={pad}");
        let x = data(nb * ci * h * w, 1);
        let col = vec![f32::NAN; rows * nb * cols];
        let n = rows * nb * cols;
        let mut args = vec![P(0), P(1)];
        args.extend(geo(n));
        let bufs = [x.clone(), col.clone()];
        same(
            "snnc_im2col",
            &case,
            &run(&mut cpu, "snnc_im2col", n, &bufs, &args),
            &run(&mut emu, "snnc_im2col", n, &bufs, &args),
        );
        let n = nb * ci * h * w;
        let mut args = vec![P(0), P(1)];
        args.extend(geo(n));
        let bufs = [data(rows * nb * cols, 2), vec![f32::NAN; n]];
        same(
            "snnc_col2im",
            &case,
            &run(&mut cpu, "snnc_col2im", n, &bufs, &args),
            &run(&mut emu, "snnc_col2im", n, &bufs, &args),
        );
        let (c, r) = (ci, h * w);
        let n = nb * c * r;
        let args = [
            P(0),
            P(1),
            I(nb as i32),
            I(c as i32),
            I(r as i32),
            I(n as i32),
        ];
        let bufs = [x.clone(), vec![f32::NAN; n]];
        same(
            "snnc_bc_swap",
            &case,
            &run(&mut cpu, "snnc_bc_swap", n, &bufs, &args),
            &run(&mut emu, "snnc_bc_swap", n, &bufs, &args),
        );
        // The event convolution, on an input with two thirds zeros.
        let co = 5;
        let sparse: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 3 == 0 { v } else { 0.0 })
            .collect();
        let n = nb * ho;
        let mut args = vec![P(0), P(1), P(2)];
        args.extend(
            [ci, h, w, co, k, s, pad, ho, wo, n]
                .iter()
                .map(|&v| I(v as i32)),
        );
        let bufs = [sparse, data(rows * co, 3), vec![f32::NAN; nb * co * cols]];
        same(
            "snnc_conv_events",
            &case,
            &run(&mut cpu, "snnc_conv_events", n, &bufs, &args),
            &run(&mut emu, "snnc_conv_events", n, &bufs, &args),
        );
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the library kernels ($CXX, c++, g++ or clang++)"
)]
fn pooling_kernels_equal_the_gpu_form() {
    use Arg::{I, P};
    let (mut cpu, mut emu) = backends();
    // (planes, h, w, k, stride, padding): tiling, overlapping, ragged and
    // padded windows.
    for &(planes, h, w, k, s, p) in &[
        (40, 28, 28, 2, 2, 0),
        (33, 15, 17, 3, 2, 0),
        (20, 9, 9, 2, 3, 0),
        (64, 16, 16, 4, 4, 0),
        (24, 15, 14, 3, 2, 1),
        (9, 9, 10, 2, 2, 1),
        (10, 15, 13, 2, 2, 0),
        (7, 11, 11, 3, 3, 0),
        // Tiling 2×2 (the CPU form's pairs of rows) with launches split
        // below (ranges that start inside a pair of rows).
        (5, 14, 14, 2, 2, 0),
    ] {
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let case = format!("{planes} planes {h}x{w} k={k} s={s} p={p}");
        let geo = [h, w, ho, wo, k, s, p].map(|v| I(v as i32));
        for is_max in [0, 1] {
            let n = planes * ho * wo;
            let mut args = vec![P(0), P(1), I(n as i32)];
            args.extend(geo);
            args.push(I(is_max));
            let bufs = [data(planes * h * w, 3), vec![f32::NAN; n]];
            same(
                "snnc_pool",
                &case,
                &run(&mut cpu, "snnc_pool", n, &bufs, &args),
                &run(&mut emu, "snnc_pool", n, &bufs, &args),
            );
        }
        let n = planes * h * w;
        let mut args = vec![P(0), P(1), I(n as i32)];
        args.extend(geo);
        let bufs = [data(planes * ho * wo, 4), vec![f32::NAN; n]];
        same(
            "snnc_avgpool_grad",
            &case,
            &run(&mut cpu, "snnc_avgpool_grad", n, &bufs, &args),
            &run(&mut emu, "snnc_avgpool_grad", n, &bufs, &args),
        );
        // Times a tensor of the result's shape (the lowering's fused form).
        let mut args = vec![P(0), P(1), P(2), I(n as i32)];
        args.extend(geo);
        let bufs = [data(planes * ho * wo, 4), data(n, 5), vec![f32::NAN; n]];
        same(
            "snnc_avgpool_grad_mul",
            &case,
            &run(&mut cpu, "snnc_avgpool_grad_mul", n, &bufs, &args),
            &run(&mut emu, "snnc_avgpool_grad_mul", n, &bufs, &args),
        );
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the library kernels ($CXX, c++, g++ or clang++)"
)]
fn channel_reductions_equal_the_gpu_form() {
    use Arg::{I, P};
    let (mut cpu, mut emu) = backends();
    // (b, c, r, parts): parts dividing the channel or not, one part;
    // ranges of several groups of channels (the CPU form sums 4096 / parts
    // channels at a time); more parts than the CPU form's group holds.
    for &(b, c, r, parts) in &[
        (16, 70, 49, 13),
        (3, 5, 1000, 256),
        (128, 9, 10, 1),
        (7, 300, 5, 64),
        (4, 300, 100, 256),
        (2, 3, 3000, 5000),
    ] {
        let case = format!("b={b} c={c} r={r} parts={parts}");
        let n = b * c * r;
        let threads = c * parts;
        // Partial sums are doubles: two floats each.
        let part = vec![f32::NAN; 2 * threads];
        let geo = [c, b, r, parts].map(|v| I(v as i32));
        let x = data(n, 5);
        // (kernel, buffers, pointer arguments; P(1000) is a null pointer).
        let cases = [
            (
                "snnc_chan_partial",
                vec![x.clone(), part.clone()],
                vec![P(0), P(1000), P(1)],
            ),
            (
                "snnc_chan_partial",
                vec![x.clone(), data(c, 6), part.clone()],
                vec![P(0), P(1), P(2)],
            ),
            (
                "snnc_chan_dot_partial",
                vec![x.clone(), data(n, 7), part.clone()],
                vec![P(0), P(1), P(2)],
            ),
            // The moments' pass 1: sums of x, and of x² into the second
            // buffer.
            (
                "snnc_chan_moments_partial",
                vec![x.clone(), part.clone(), part.clone()],
                vec![P(0), P(1), P(2)],
            ),
            // A channel sum and a channel dot in one read: sums of x into
            // the third buffer, of x·y into the fourth.
            (
                "snnc_chan_sum_dot_partial",
                vec![x.clone(), data(n, 8), part.clone(), part.clone()],
                vec![P(0), P(1), P(2), P(3)],
            ),
        ];
        for (kernel, bufs, mut args) in cases {
            args.extend(geo);
            same(
                kernel,
                &case,
                &run(&mut cpu, kernel, threads, &bufs, &args),
                &run(&mut emu, kernel, threads, &bufs, &args),
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(snnc_cxx),
    ignore = "needs a C++ compiler for the library kernels ($CXX, c++, g++ or clang++)"
)]
fn per_channel_elementwise_kernels_equal_the_gpu_form() {
    use snnc::codegen::backend::KERNELS;
    use snnc::codegen::library::elementwise::cpu_forms;
    let forms = cpu_forms();
    for k in [
        "snnc_bias_add",
        "snnc_channel_scale",
        "snnc_channel_broadcast",
        "snnc_normalize",
    ] {
        assert!(forms.iter().any(|f| f == k), "{k} has no CPU form");
    }
    let (mut cpu, mut emu) = backends();
    // (b, c, r): one element per row (with more channels than a launch
    // range), rows shorter than and not a multiple of a vector, one
    // channel, rows longer than a launch range (256).
    for &(b, c, r) in &[
        (5, 7, 1),
        (3, 300, 1),
        (700, 1, 1),
        (3, 6, 7),
        (4, 1, 37),
        (2, 3, 300),
        (9, 5, 16),
        (1, 2, 1000),
    ] {
        let n = b * c * r;
        let case = format!("b={b} c={c} r={r}");
        for form in &forms {
            let (kernel, sig) = *KERNELS
                .iter()
                .find(|(k, _)| k == form)
                .expect("a rendered kernel is in the table");
            // Operands of n elements (a per-channel one reads its first c),
            // positive so that a variance plus ε has a square root.
            let ptrs = sig.chars().filter(|&s| s == 'p').count();
            let mut bufs: Vec<Vec<f32>> = (0..ptrs - 1)
                .map(|k| data(n, 10 + k as u64).iter().map(|v| v.abs()).collect())
                .collect();
            bufs.push(vec![f32::NAN; n]);
            let mut ints = [n, c, r].into_iter();
            let mut p = 0;
            let args: Vec<Arg> = sig
                .chars()
                .map(|s| match s {
                    'p' => {
                        p += 1;
                        Arg::P(p - 1)
                    }
                    'i' => Arg::I(ints.next().expect("n, c, r") as i32),
                    'f' => Arg::F(1e-5),
                    'd' => Arg::D(1e-5),
                    other => panic!("{kernel}: unexpected parameter kind {other}"),
                })
                .collect();
            same(
                kernel,
                &case,
                &run(&mut cpu, kernel, n, &bufs, &args),
                &run(&mut emu, kernel, n, &bufs, &args),
            );
        }
    }
}
