//! Forward convolutions of inputs that bf16 holds exactly (spikes, 0 or
//! 1, and their 2×2 window averages k/4) on oneDNN's AMX kernels, to f32
//! accuracy.
//!
//! Why: AMX multiplies bf16 pairs and accumulates in f32, many times the
//! f32 FMA rate. A spike is exact in bf16; a weight is not, so each weight
//! is split into three bf16 parts, w = hi + mid + lo (each the rounding of
//! what the parts before it leave, so the three hold 3 × 8 significant bits
//! plus signs, all of f32's 24), and the input is repeated three times
//! along its channels: one convolution over 3·C channels sums
//! x·hi + x·mid + x·lo, every product exact and the sums in f32. The result
//! is an f32 convolution's up to summation order (within 4.3e-7 of the
//! largest output of the f32 kernels in `tests/conv_library.rs`). In
//! `SNNC_PROFILE` on the 2-core machine, fmnist_csnn's second convolution
//! (batch 128, 32 → 64 channels, 14×14) took 18–21 ms for a rate step's
//! 8 calls against 29–30 ms on oneDNN's f32 kernels, and the step 76–77 ms
//! against 86–89 ms (3 alternating runs, `SNNC_AMX=off` for the f32 ones,
//! 2026-12-07, oneDNN 2.6.3, `brgconv:avx512_core_amx_bf16`).
//!
//! Not GEMMs: oneDNN's AMX matmul on the first linear layer's shape
//! (64 × 9408 by 9408 × 256, the parts included) took 0.5–0.8 ms on
//! nonzero data, no faster than the f32 SGEMM (0.24 ms on zeros: time
//! these on real values).
//!
//! A call takes this path only where every input element is exact in bf16
//! (the low 16 bits of every f32 zero, checked chunk by chunk before each
//! is converted; one inexact chunk sends the whole call to the f32
//! kernels), so its result does not depend on which samples share a
//! worker. oneDNN's AMX kernels want channels-last
//! (NHWC) operands: the input is converted to them and the output turned
//! back to NCHW, both per sample while the sample is in cache.
//! The output is turned in a buffer that stays in cache and streamed out
//! in whole lines (`layout::to_channel_first_streamed`); where the call
//! asks, each chunk's per-channel Σx and Σx² are summed while it is in
//! cache, for the batch norm that reads the output.

use super::amx::{self, PARTS};
use super::layout;
use super::onednn::{
    conv_dims, conv_forward_pd, impl_name, md_of, memory, reorder, thread_stream, Api, ExecArg,
    Handle, ARG_DST, ARG_FROM, ARG_SRC, ARG_TO, ARG_WEIGHTS, BF16, F32, QUERY_WEIGHTS_MD, TAG_ABCD,
    TAG_ACDB, TAG_ANY,
};
use crate::codegen::backend::ConvCall;
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The AMX implementation oneDNN picks for fmnist_csnn's second
/// convolution in bf16, or why there is none (no AMX on this machine, or
/// a oneDNN without AMX kernels).
pub(super) fn available(api: &Api) -> Result<String, String> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let probe = Shape {
                n: 2,
                ci: 32,
                h: 14,
                w: 14,
                co: 64,
                k: 3,
                stride: 1,
                pad: [1, 1, 1],
                ho: 14,
                wo: 14,
            };
            // SAFETY: descriptors only.
            match unsafe { descriptor(api, &probe) } {
                Some((pd, imp)) => {
                    // SAFETY: made above, not used after.
                    unsafe { (api.pd_destroy)(pd) };
                    Ok(imp)
                }
                None => Err("no AMX bf16 convolutions on this machine".into()),
            }
        })
        .clone()
}

/// A call's geometry for `n` samples (`pad`: left/top, bottom, right).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: [usize; 3],
    ho: usize,
    wo: usize,
}

impl Shape {
    fn of(c: &ConvCall, n: usize, pad_r: [i64; 2]) -> Shape {
        Shape {
            n,
            ci: c.ci,
            h: c.h,
            w: c.w,
            co: c.co,
            k: c.k,
            stride: c.stride,
            pad: [c.pad, pad_r[0] as usize, pad_r[1] as usize],
            ho: c.ho,
            wo: c.wo,
        }
    }
}

/// The forward descriptor of `s` in bf16 (input NHWC over 3·ci channels,
/// weights in the layout oneDNN picks, f32 NHWC output) and its
/// implementation's name, where that is an AMX kernel.
unsafe fn descriptor(api: &Api, s: &Shape) -> Option<(Handle, String)> {
    let x = md_of(api, [s.n, PARTS * s.ci, s.h, s.w], BF16, TAG_ACDB)?;
    let wt = md_of(api, [s.co, PARTS * s.ci, s.k, s.k], BF16, TAG_ANY)?;
    let y = md_of(api, [s.n, s.co, s.ho, s.wo], F32, TAG_ACDB)?;
    let dims = conv_dims(s.stride, s.pad[0], [s.pad[1] as i64, s.pad[2] as i64]);
    let pd = conv_forward_pd(api, [&x, &wt, &y], &dims)?;
    match impl_name(api, pd) {
        Some(imp) if imp.contains("amx") => Some((pd, imp)),
        _ => {
            (api.pd_destroy)(pd);
            None
        }
    }
}

/// One worker's primitives for a chunk's shape: the convolution, the
/// reorder of the split weights into its layout, and their operands'
/// memories (handles set per call).
struct Plan {
    conv: Handle,
    x: Handle,
    w_reorder: Handle,
    w_plain: Handle,
    w: Handle,
    y: Handle,
    /// Bytes of the weights in the convolution's layout, of its NHWC
    /// output and of its input, in the part's buffer.
    w_bytes: usize,
    y_bytes: usize,
    x_bytes: usize,
}

unsafe fn plan(api: &Api, s: &Shape) -> Option<Plan> {
    let ok = |r: i32| (r == 0).then_some(());
    let (pd, _) = descriptor(api, s)?;
    let null = std::ptr::null_mut();
    let made = (|| {
        let x_md = md_of(api, [s.n, PARTS * s.ci, s.h, s.w], BF16, TAG_ACDB)?;
        let y_md = md_of(api, [s.n, s.co, s.ho, s.wo], F32, TAG_ACDB)?;
        let w_plain_md = md_of(api, [s.co, PARTS * s.ci, s.k, s.k], BF16, TAG_ABCD)?;
        let w_md = (api.pd_query_md)(pd, QUERY_WEIGHTS_MD, 0);
        if w_md.is_null() {
            return None;
        }
        let w_reorder = reorder(api, &w_plain_md, w_md)?;
        let mut conv = null;
        ok((api.primitive_create)(&mut conv, pd))?;
        Some(Plan {
            conv,
            x: memory(api, &x_md)?,
            w_reorder,
            w_plain: memory(api, &w_plain_md)?,
            w: memory(api, w_md)?,
            y: memory(api, &y_md)?,
            w_bytes: (api.md_get_size)(w_md).next_multiple_of(64),
            y_bytes: (api.md_get_size)(&y_md).next_multiple_of(64),
            x_bytes: (api.md_get_size)(&x_md).next_multiple_of(64),
        })
    })();
    (api.pd_destroy)(pd);
    made
}

/// A worker thread's stream and primitives per chunk shape. A primitive
/// runs on the thread that made it (oneDNN's default scratchpad is per
/// thread; running one on another thread corrupted memory).
struct Worker {
    stream: Handle,
    plans: HashMap<Shape, Option<Plan>>,
    turned: Vec<f32>,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// What the calls share, under one lock (a call holds it throughout): the
/// split weights (OIHW over 3·ci input channels, made once per call for
/// every part) and each part's buffer (the weights in the convolution's
/// layout, a chunk's NHWC output and input), by part index: rayon may run
/// a part on either thread, and the buffers then grow once whatever the
/// scheduling (`tests/alloc_peak.rs`).
#[derive(Default)]
struct State {
    split: Vec<u16>,
    /// The shape (co, ci, k²) and bits of the weights `split` was made
    /// from: a layer's T calls in a step share its weights, split once.
    split_from: ([usize; 3], Vec<u32>),
    buffers: Vec<Vec<Line>>,
    /// Each part's Σx and Σx² per output channel, where the call asks
    /// for its output's moments (`ConvCall::moments`).
    sums: Vec<Vec<f64>>,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

/// Samples per convolution a part runs: their converted input (37 KB a
/// sample for fmnist_csnn's second convolution) and NHWC output (50 KB),
/// ~0.7 MB for 8, stay in the core's 2 MB L2 cache between the
/// conversion, the convolution and the turn back to NCHW.
const CHUNK: usize = 8;

/// `w` (OIHW) as three bf16 parts per weight, OIHW over 3·ci input
/// channels: input channel c + p·ci holds part p of channel c's weights.
fn split_weights(w: &[f32], co: usize, ci: usize, kk: usize, out: &mut Vec<u16>) {
    out.clear();
    out.resize(co * PARTS * ci * kk, 0);
    for o in 0..co {
        for c in 0..ci {
            for q in 0..kk {
                let parts = amx::split(w[(o * ci + c) * kk + q]);
                for (p, part) in parts.into_iter().enumerate() {
                    out[((o * PARTS * ci) + p * ci + c) * kk + q] = part;
                }
            }
        }
    }
}

/// Runs a forward call on the AMX kernels where its input is exact in
/// bf16 and oneDNN has an AMX kernel for its shape; false otherwise (the
/// output then holds whatever the parts wrote before one found an
/// inexact element: the caller's f32 path overwrites it). `sizes` and
/// `starts` split the samples over rayon's workers. Where the call asks
/// for them (`call.moments`), a call that ran also wrote its output's
/// moments there: each part sums its chunks as it turns them back to
/// NCHW, in order, and the parts are added in order, so the sums depend
/// only on `sizes`.
pub(super) fn forward(
    api: &Api,
    call: &ConvCall,
    pad_r: [i64; 2],
    sizes: &[usize],
    starts: &[usize],
) -> Result<bool, String> {
    if available(api).is_err() || call.b == 0 {
        return Ok(false);
    }
    // SAFETY: the weights hold co·ci·k² values (f32), as `conv::run`
    // requires.
    let w = unsafe {
        std::slice::from_raw_parts(
            call.ins[1] as *const f32,
            call.co * call.ci * call.k * call.k,
        )
    };
    let mut state = state().lock().map_err(|_| "a convolution panicked")?;
    let State {
        split,
        split_from,
        buffers,
        sums,
    } = &mut *state;
    if buffers.len() < sizes.len() {
        buffers.resize_with(sizes.len(), Vec::new);
    }
    let want_moments = call.moments != 0;
    if sums.len() < sizes.len() {
        sums.resize_with(sizes.len(), Vec::new);
    }
    for s in sums.iter_mut() {
        s.clear();
        if want_moments {
            s.resize(2 * call.co, 0.0);
        }
    }
    let shape = [call.co, call.ci, call.k * call.k];
    let same = split_from.0 == shape
        && split_from
            .1
            .iter()
            .copied()
            .eq(w.iter().map(|v| v.to_bits()));
    if !same {
        split_weights(w, call.co, call.ci, call.k * call.k, split);
        split_from.0 = shape;
        split_from.1.clear();
        split_from.1.extend(w.iter().map(|v| v.to_bits()));
    }
    let ws = split.as_ptr() as usize;
    let inexact = AtomicBool::new(false);
    let ran = buffers[..sizes.len()]
        .par_iter_mut()
        .zip(sums[..sizes.len()].par_iter_mut())
        .enumerate()
        .all(|(p, (buffer, sums))| {
            let (n, first) = (sizes[p], starts[p]);
            // SAFETY: this part's samples of the caller's input and output
            // (NCHW), apart from the other parts'; the split weights.
            n == 0
                || unsafe {
                    run_part(
                        api,
                        call,
                        pad_r,
                        [first, n],
                        ws as *const u16,
                        &inexact,
                        buffer,
                        sums,
                    )
                }
        });
    let ran = ran && !inexact.load(Ordering::Relaxed);
    if ran && want_moments {
        // SAFETY: the caller's 2·co doubles (`ConvCall::moments`).
        let out = unsafe { std::slice::from_raw_parts_mut(call.moments as *mut f64, 2 * call.co) };
        out.fill(0.0);
        for part in &sums[..sizes.len()] {
            for (o, v) in out.iter_mut().zip(part) {
                *o += v;
            }
        }
    }
    Ok(ran)
}

/// Adds the per-channel Σx and Σx² of `y` (pixels of `co` channels,
/// channels last) to `sums` (Σx for each channel, then Σx²), in double as
/// the executor's moments pass sums them.
fn add_moments(y: &[f32], co: usize, sums: &mut [f64]) {
    let (s, q) = sums.split_at_mut(co);
    for px in y.chunks_exact(co) {
        for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(px) {
            let v = f64::from(v);
            *s += v;
            *q += v * v;
        }
    }
}

/// One part's samples [first, first + n), on the calling thread's
/// primitives, CHUNK at a time: checked exact, turned into the part's
/// `buffer` (NHWC bf16, three times), through the
/// convolution with the split weights `w`, then turned into the caller's
/// output (NCHW), its moments added to `sums` where that is not empty.
/// False where oneDNN fails or an input is inexact
/// (then `inexact` is set, and the other parts stop at their next chunk).
#[allow(clippy::too_many_arguments)]
unsafe fn run_part(
    api: &Api,
    call: &ConvCall,
    pad_r: [i64; 2],
    [first, n]: [usize; 2],
    w: *const u16,
    inexact: &AtomicBool,
    buffer: &mut Vec<Line>,
    sums: &mut [f64],
) -> bool {
    let sample_in = call.ci * call.h * call.w;
    let sample_y = call.co * call.ho * call.wo;
    let x = std::slice::from_raw_parts(
        (call.ins[0] as *const f32).add(first * sample_in),
        n * sample_in,
    );
    let out = (call.out as *mut f32).add(first * sample_y);
    WORKER.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let Some(stream) = thread_stream(api) else {
                return false;
            };
            *cell = Some(Worker {
                stream,
                plans: HashMap::new(),
                turned: Vec::new(),
            });
        }
        let Some(wk) = cell.as_mut() else {
            return false;
        };
        let ran = run_chunks(api, call, pad_r, x, out, w, inexact, buffer, sums, wk);
        // The output's streamed stores, before another thread reads it.
        layout::fence();
        ran
    })
}

/// `run_part`'s chunks on this thread's worker `wk`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_chunks(
    api: &Api,
    call: &ConvCall,
    pad_r: [i64; 2],
    x: &[f32],
    out: *mut f32,
    w: *const u16,
    inexact: &AtomicBool,
    buffer: &mut Vec<Line>,
    sums: &mut [f64],
    wk: &mut Worker,
) -> bool {
    let (hw_in, hw_out) = (call.h * call.w, call.ho * call.wo);
    let sample_in = call.ci * hw_in;
    let sample_x = PARTS * sample_in;
    let sample_y = call.co * hw_out;
    let ok = |r: i32| r == 0;
    let run = |r: Handle, args: &[(c_int, Handle)]| {
        let args: Vec<ExecArg> = args
            .iter()
            .map(|&(arg, memory)| ExecArg { arg, memory })
            .collect();
        ok((api.execute)(
            r,
            wk.stream,
            args.len() as c_int,
            args.as_ptr(),
        ))
    };
    let mut weights_for = None;
    for (i, x) in x.chunks(CHUNK * sample_in).enumerate() {
        if inexact.load(Ordering::Relaxed) {
            return false;
        }
        if !amx::exact_in_bf16(x) {
            inexact.store(true, Ordering::Relaxed);
            return false;
        }
        let m = x.len() / sample_in;
        let shape = Shape::of(call, m, pad_r);
        let Some(plan) = wk.plans.entry(shape).or_insert_with(|| plan(api, &shape)) else {
            return false;
        };
        let lines = (plan.w_bytes + plan.y_bytes + plan.x_bytes).div_ceil(64);
        if buffer.len() < lines {
            buffer.resize(lines, Line([0.0; 16]));
        }
        let base = buffer.as_mut_ptr() as usize;
        let (w_at, y_at) = (base, base + plan.w_bytes);
        let x_at = y_at + plan.y_bytes;
        let handles = [
            (plan.x, x_at),
            (plan.w_plain, w as usize),
            (plan.w, w_at),
            (plan.y, y_at),
        ];
        if !handles
            .iter()
            .all(|&(m, at)| ok((api.set_handle)(m, at as Handle)))
        {
            return false;
        }
        let xb = std::slice::from_raw_parts_mut(x_at as *mut u16, m * sample_x);
        for (x, xb) in x.chunks_exact(sample_in).zip(xb.chunks_exact_mut(sample_x)) {
            layout::to_channel_last_bf16(x, call.ci, hw_in, PARTS, xb);
        }
        // The weights in the convolution's layout, once per part and
        // plan (the last chunk's plan may want another layout).
        let weighted = weights_for == Some(shape)
            || run(
                plan.w_reorder,
                &[(ARG_FROM, plan.w_plain), (ARG_TO, plan.w)],
            );
        weights_for = Some(shape);
        let done = weighted
            && run(
                plan.conv,
                &[(ARG_SRC, plan.x), (ARG_WEIGHTS, plan.w), (ARG_DST, plan.y)],
            )
            && ok((api.stream_wait)(wk.stream));
        if done {
            let y = std::slice::from_raw_parts(y_at as *const f32, m * sample_y);
            let out = std::slice::from_raw_parts_mut(out.add(i * CHUNK * sample_y), m * sample_y);
            for (y, out) in y.chunks_exact(sample_y).zip(out.chunks_exact_mut(sample_y)) {
                layout::to_channel_first_streamed(y, call.co, hw_out, out, &mut wk.turned);
            }
            if !sums.is_empty() {
                add_moments(y, call.co, sums);
            }
        }
        if !done {
            return false;
        }
    }
    true
}
