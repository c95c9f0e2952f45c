//! Convolutions and their gradients on oneDNN's direct convolution
//! kernels, where the machine's oneDNN (the library `sgemm` already
//! found) speaks its version-2 C API (Debian's `libdnnl2`). Elsewhere, or
//! with `SNNC_CONV=im2col`, the executor runs them as im2col and SGEMMs.
//! Two paths go first where they apply: one-input-channel forwards and
//! weight gradients on direct AVX-512 kernels (`conv_direct`, with or
//! without oneDNN), and forwards of bf16-exact inputs on oneDNN's AMX
//! kernels (`conv_bf16`).
//!
//! Why: the im2col path writes a column matrix k² times the input's size
//! and transposes the GEMM's channel-major result, so fmnist_csnn's second
//! convolution (batch 128, 32→64 channels, 14×14) spent 8.5 ms a call
//! beside 2.6 ms of arithmetic at the SGEMM floor. oneDNN's JIT kernels
//! read the input in place, in a channel-blocked layout (`nChw16c` on
//! AVX-512) that one cheap reorder makes, and ran the same call at
//! 190 GFLOP/s per core (a C program on the 2-core machine, 2026-12-07).
//!
//! Threads: like the SGEMM, each call is split over rayon's workers, by
//! samples, and each part runs on its worker alone (OpenMP set to one
//! thread there): a part's result is whole, so the sums do not depend on
//! how the parts are scheduled. The weight gradient is a sum over
//! samples: each part's is computed apart and the parts are added in
//! order, so it depends only on the number of parts (rayon's threads).
//!
//! Each worker thread keeps, per call shape, the primitives oneDNN made
//! for it (its "plans", made on the first call: a primitive runs on the
//! thread that made it, since oneDNN's default scratchpad is per thread;
//! running them on another thread corrupted memory). The blocked copies of
//! the operands go to one growing buffer per part of a call, by part index
//! (rayon may run a part on either thread; the buffers then grow once,
//! whatever the scheduling: `tests/alloc_peak.rs`).

use super::onednn::*;
use crate::codegen::backend::{ConvCall, ConvPass};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::sync::{Mutex, OnceLock};

/// The convolution path a call takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// oneDNN, forward calls whose input is exact in bf16 on its AMX
    /// kernels (`conv_bf16`): the default.
    OneDnn,
    /// oneDNN's f32 kernels only (`SNNC_AMX=off`).
    OneDnnF32,
    /// The executor's im2col + SGEMM (`SNNC_CONV=im2col`).
    Im2col,
}

/// The path `SNNC_CONV` (`onednn`, the default, or `im2col`) and
/// `SNNC_AMX` ask for; another value is an error. Read once per process,
/// as `SNNC_SGEMM` is (every convolution asks).
pub fn mode() -> Result<Mode, String> {
    static MODE: OnceLock<Result<Mode, String>> = OnceLock::new();
    MODE.get_or_init(
        || match std::env::var("SNNC_CONV").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("onednn") => Ok(match super::amx::enabled()? {
                true => Mode::OneDnn,
                false => Mode::OneDnnF32,
            }),
            Ok("im2col") => Ok(Mode::Im2col),
            Ok(other) => Err(format!(
                "SNNC_CONV=`{other}` names no convolution path (onednn, im2col)"
            )),
        },
    )
    .clone()
}

/// Whether convolutions run here (oneDNN loads with the version-2 API
/// and `SNNC_CONV` does not say `im2col`).
pub fn available() -> bool {
    mode() != Ok(Mode::Im2col) && api().is_ok()
}

/// The convolution path in one line, for the CPU backend's description.
pub fn describe() -> String {
    match (mode(), api()) {
        (Err(e), _) => e,
        (Ok(Mode::Im2col), _) => "im2col + SGEMM (SNNC_CONV)".into(),
        (Ok(Mode::OneDnnF32), Ok(api)) => format!("{} direct, f32 (SNNC_AMX=off)", api.version),
        (Ok(Mode::OneDnn), Ok(api)) => match super::conv_bf16::available(api) {
            Ok(imp) => format!(
                "{} direct; bf16-exact inputs (spikes) on {imp}, weights in three bf16 parts",
                api.version
            ),
            Err(why) => format!("{} direct ({why})", api.version),
        },
        (Ok(_), Err(why)) => format!("im2col + SGEMM ({why})"),
    }
}

/// The AMX kernel that forward calls with bf16-exact inputs run on in the
/// default mode, or why there is none here.
pub fn amx() -> Result<String, String> {
    super::conv_bf16::available(api()?)
}

/// Which path the calling thread's last successful [`run`] took, for the
/// profile: `library` or `library, AMX bf16×3`.
pub fn last_path() -> &'static str {
    LAST_PATH.with(|p| p.get())
}

/// Whether the calling thread's last successful [`run`] wrote its
/// output's moments to `ConvCall::moments` (the AMX path and the direct
/// kernels do; oneDNN's f32 kernels write none).
pub fn last_wrote_moments() -> bool {
    LAST_MOMENTS.with(|m| m.get())
}

thread_local! {
    static LAST_PATH: std::cell::Cell<&'static str> = const { std::cell::Cell::new("library") };
    static LAST_MOMENTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `call` on oneDNN: false where this machine or the call's shape
/// has no oneDNN convolution (the caller then runs its own), an error
/// where `SNNC_CONV` is malformed or oneDNN fails during the call.
///
/// # Safety
/// The call's addresses must hold its operands (f32, NCHW and OIHW), the
/// output not overlapping the inputs.
pub unsafe fn run(call: &ConvCall) -> Result<bool, String> {
    run_in(call, mode()?)
}

/// [`run`] on the path `mode` names (tests compare the paths).
///
/// # Safety
/// As [`run`].
pub unsafe fn run_in(call: &ConvCall, mode: Mode) -> Result<bool, String> {
    if mode == Mode::Im2col {
        return Ok(false);
    }
    let parts = rayon::current_num_threads().min(call.b).max(1);
    let sizes: Vec<usize> = (0..parts)
        .map(|p| call.b / parts + usize::from(p < call.b % parts))
        .collect();
    let starts: Vec<usize> = sizes
        .iter()
        .scan(0, |at, &n| {
            let s = *at;
            *at += n;
            Some(s)
        })
        .collect();
    if super::conv_direct::takes(call) {
        super::conv_direct::run(call, &sizes, &starts);
        LAST_PATH.with(|p| p.set("direct, AVX-512"));
        LAST_MOMENTS.with(|m| m.set(call.pass == ConvPass::Forward && call.moments != 0));
        return Ok(true);
    }
    let Ok(api) = api() else {
        return Ok(false);
    };
    let Some(pad_r) = pad_right(call) else {
        return Ok(false);
    };
    if unsupported()
        .lock()
        .is_ok_and(|s| s.contains(&key(call, 0)))
    {
        return Ok(false);
    }
    if mode == Mode::OneDnn
        && call.pass == ConvPass::Forward
        && super::conv_bf16::forward(api, call, pad_r, &sizes, &starts)?
    {
        LAST_PATH.with(|p| p.set("library, AMX bf16×3"));
        LAST_MOMENTS.with(|m| m.set(call.moments != 0));
        return Ok(true);
    }
    LAST_PATH.with(|p| p.set("library"));
    LAST_MOMENTS.with(|m| m.set(false));
    let wlen = call.co * call.ci * call.k * call.k;
    // The weight gradient's parts past the first, summed into the output.
    let mut partial = match call.pass {
        ConvPass::GradWeight => vec![0f32; wlen * (parts - 1)],
        _ => Vec::new(),
    };
    let partial_at = partial.as_mut_ptr() as u64;
    let mut buffers = buffers().lock().map_err(|_| "a convolution panicked")?;
    if buffers.len() < parts {
        buffers.resize_with(parts, Vec::new);
    }
    let results: Vec<Result<bool, String>> = buffers[..parts]
        .par_iter_mut()
        .enumerate()
        .map(|(p, buffer)| {
            let part = Part {
                n: sizes[p],
                first: starts[p],
                out: match (call.pass, p) {
                    (ConvPass::GradWeight, 0) => call.out,
                    (ConvPass::GradWeight, p) => partial_at + (4 * wlen * (p - 1)) as u64,
                    _ => call.out,
                },
            };
            run_part(api, call, pad_r, part, buffer)
        })
        .collect();
    drop(buffers);
    for r in results {
        if !r? {
            if let Ok(mut s) = unsupported().lock() {
                s.insert(key(call, 0));
            }
            return Ok(false);
        }
    }
    if call.pass == ConvPass::GradWeight && parts > 1 && wlen > 0 {
        let out = std::slice::from_raw_parts_mut(call.out as *mut f32, wlen);
        for chunk in partial.chunks_exact(wlen) {
            for (o, v) in out.iter_mut().zip(chunk) {
                *o += v;
            }
        }
    }
    Ok(true)
}

/// One worker's samples: `n` from `first`, written to `out` (the output,
/// or for a weight gradient this part's own).
#[derive(Clone, Copy)]
struct Part {
    n: usize,
    first: usize,
    out: u64,
}

/// The bottom and right padding that make oneDNN's output `ho × wo`
/// (less than `pad` when the last window does not reach it); `None` when
/// one would be negative (oneDNN's kernels take no negative padding).
fn pad_right(c: &ConvCall) -> Option<[i64; 2]> {
    let pr = |n_out: usize, n_in: usize| -> i64 {
        (n_out as i64 - 1) * c.stride as i64 + c.k as i64 - n_in as i64 - c.pad as i64
    };
    let (ph, pw) = (pr(c.ho, c.h), pr(c.wo, c.w));
    (ph >= 0 && pw >= 0).then_some([ph, pw])
}

/// A call shape, with `n` samples (0: the whole call's, for the set of
/// shapes oneDNN refused).
type Key = (ConvPass, [usize; 10]);

fn key(c: &ConvCall, n: usize) -> Key {
    let n = if n == 0 { c.b } else { n };
    (
        c.pass,
        [n, c.ci, c.h, c.w, c.co, c.k, c.stride, c.pad, c.ho, c.wo],
    )
}

fn unsupported() -> &'static Mutex<HashSet<Key>> {
    static SET: OnceLock<Mutex<HashSet<Key>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

/// One operand of a planned call: the caller's plain (NCHW/OIHW) memory
/// and, where the primitive wants another layout, a blocked one with the
/// reorder between them and its offset in the worker's buffer.
struct Operand {
    /// The primitive's argument name (`DNNL_ARG_*`).
    arg: c_int,
    plain: Handle,
    blocked: Option<Blocked>,
}

struct Blocked {
    memory: Handle,
    reorder: Handle,
    /// Offset in the worker's buffer, in bytes.
    at: usize,
}

/// The primitives of one call shape on one worker.
struct Planned {
    conv: Handle,
    /// The two inputs, then the output.
    operands: [Operand; 3],
    /// Bytes of the worker's buffer this plan uses.
    bytes: usize,
}

struct Worker {
    stream: Handle,
    plans: HashMap<Key, Option<Planned>>,
}

/// 64 bytes, aligned as a cache line (oneDNN's kernels prefer it).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// The blocked operands' buffers, by part index. A call holds the lock
/// throughout.
fn buffers() -> &'static Mutex<Vec<Vec<Line>>> {
    static BUFFERS: OnceLock<Mutex<Vec<Vec<Line>>>> = OnceLock::new();
    BUFFERS.get_or_init(Default::default)
}

/// Runs one part on the calling thread; false where oneDNN has no
/// convolution for the shape.
fn run_part(
    api: &Api,
    call: &ConvCall,
    pad_r: [i64; 2],
    part: Part,
    buffer: &mut Vec<Line>,
) -> Result<bool, String> {
    if part.n == 0 {
        return Ok(true);
    }
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        if w.is_none() {
            let stream = thread_stream(api).ok_or("oneDNN made no stream")?;
            *w = Some(Worker {
                stream,
                plans: HashMap::new(),
            });
        }
        let w = w.as_mut().expect("made above");
        let k = key(call, part.n);
        let p = w
            .plans
            .entry(k)
            // SAFETY: `plan` makes descriptors and primitives only.
            .or_insert_with(|| unsafe { plan(api, call, part.n, pad_r) });
        let Some(p) = p.as_ref() else {
            return Ok(false);
        };
        let lines = p.bytes.div_ceil(64);
        if buffer.len() < lines {
            buffer.resize(lines, Line([0.0; 16]));
        }
        let base = buffer.as_mut_ptr() as usize;
        // SAFETY: the caller's operands hold this part's samples at the
        // offsets below; the blocked copies lie inside `buffer`.
        unsafe { execute(api, w.stream, p, base, operands(call, part)) }.map(|()| true)
    })
}

/// The caller's addresses of a part's two inputs and its output.
fn operands(c: &ConvCall, part: Part) -> [u64; 3] {
    let x_len = (c.ci * c.h * c.w * 4) as u64;
    let y_len = (c.co * c.ho * c.wo * 4) as u64;
    let first = part.first as u64;
    match c.pass {
        ConvPass::Forward => [c.ins[0] + first * x_len, c.ins[1], part.out + first * y_len],
        ConvPass::GradInput => [c.ins[0] + first * y_len, c.ins[1], part.out + first * x_len],
        ConvPass::GradWeight => [c.ins[0] + first * x_len, c.ins[1] + first * y_len, part.out],
    }
}

/// Runs a planned call: reorders the inputs that need it into the
/// buffer at `base`, runs the convolution, reorders its output back.
unsafe fn execute(
    api: &Api,
    stream: Handle,
    p: &Planned,
    base: usize,
    addr: [u64; 3],
) -> Result<(), String> {
    let check = |s: i32, what: &str| match s {
        0 => Ok(()),
        s => Err(format!("oneDNN {what} failed (status {s})")),
    };
    let mut args = Vec::with_capacity(3);
    for (i, (o, &a)) in p.operands.iter().zip(&addr).enumerate() {
        check((api.set_handle)(o.plain, a as Handle), "set_data_handle")?;
        let Some(b) = &o.blocked else {
            args.push(ExecArg {
                arg: o.arg,
                memory: o.plain,
            });
            continue;
        };
        check(
            (api.set_handle)(b.memory, (base + b.at) as Handle),
            "set_data_handle",
        )?;
        if i < 2 {
            let r = [
                ExecArg {
                    arg: ARG_FROM,
                    memory: o.plain,
                },
                ExecArg {
                    arg: ARG_TO,
                    memory: b.memory,
                },
            ];
            check((api.execute)(b.reorder, stream, 2, r.as_ptr()), "reorder")?;
        }
        args.push(ExecArg {
            arg: o.arg,
            memory: b.memory,
        });
    }
    check(
        (api.execute)(p.conv, stream, 3, args.as_ptr()),
        "convolution",
    )?;
    if let Some(b) = &p.operands[2].blocked {
        let r = [
            ExecArg {
                arg: ARG_FROM,
                memory: b.memory,
            },
            ExecArg {
                arg: ARG_TO,
                memory: p.operands[2].plain,
            },
        ];
        check((api.execute)(b.reorder, stream, 2, r.as_ptr()), "reorder")?;
    }
    check((api.stream_wait)(stream), "stream wait")
}

/// The layouts-to-be-chosen of a call shape with `n` samples and the
/// forward primitive descriptor oneDNN picks for it (every pass's hint).
struct Forward {
    x: Md,
    y: Md,
    w: Md,
    /// Strides, left/top and right/bottom padding.
    dims: [Dims; 3],
    pd: Handle,
}

unsafe fn md(api: &Api, dims: [usize; 4], tag: c_int) -> Option<Md> {
    md_of(api, dims, F32, tag)
}

unsafe fn forward(api: &Api, c: &ConvCall, n: usize, pad_r: [i64; 2]) -> Option<Forward> {
    let x = md(api, [n, c.ci, c.h, c.w], TAG_ANY)?;
    let y = md(api, [n, c.co, c.ho, c.wo], TAG_ANY)?;
    let w = md(api, [c.co, c.ci, c.k, c.k], TAG_ANY)?;
    let dims = conv_dims(c.stride, c.pad, pad_r);
    let pd = conv_forward_pd(api, [&x, &w, &y], &dims)?;
    Some(Forward { x, y, w, dims, pd })
}

/// Makes the primitives of a call shape with `n` samples, or `None` when
/// oneDNN has no convolution for it (or fails to make one).
unsafe fn plan(api: &Api, c: &ConvCall, n: usize, pad_r: [i64; 2]) -> Option<Planned> {
    let ok = |s: i32| (s == 0).then_some(());
    let x = [n, c.ci, c.h, c.w];
    let y = [n, c.co, c.ho, c.wo];
    let wt = [c.co, c.ci, c.k, c.k];
    let fwd = forward(api, c, n, pad_r)?;
    let [strides, pad_l, pad_r] = &fwd.dims;
    let null = std::ptr::null_mut();
    let pd = match c.pass {
        ConvPass::Forward => fwd.pd,
        pass => {
            let mut desc = OpDesc([0; 16384]);
            let made = match pass {
                ConvPass::GradInput => (api.conv_backward_data)(
                    &mut desc,
                    CONVOLUTION_DIRECT,
                    &fwd.x,
                    &fwd.w,
                    &fwd.y,
                    strides.as_ptr(),
                    pad_l.as_ptr(),
                    pad_r.as_ptr(),
                ),
                _ => (api.conv_backward_weights)(
                    &mut desc,
                    CONVOLUTION_DIRECT,
                    &fwd.x,
                    &fwd.w,
                    std::ptr::null(),
                    &fwd.y,
                    strides.as_ptr(),
                    pad_l.as_ptr(),
                    pad_r.as_ptr(),
                ),
            };
            let mut pd = null;
            let r = ok(made)
                .and_then(|()| ok((api.pd_create)(&mut pd, &desc, null, api.engine, fwd.pd)));
            if r.is_none() {
                (api.pd_destroy)(fwd.pd);
                return None;
            }
            pd
        }
    };
    // (argument, query, plain layout) of the two inputs and the output.
    let roles: [(c_int, c_int, [usize; 4]); 3] = match c.pass {
        ConvPass::Forward => [
            (ARG_SRC, QUERY_SRC_MD, x),
            (ARG_WEIGHTS, QUERY_WEIGHTS_MD, wt),
            (ARG_DST, QUERY_DST_MD, y),
        ],
        ConvPass::GradInput => [
            (ARG_DIFF_DST, QUERY_DIFF_DST_MD, y),
            (ARG_WEIGHTS, QUERY_WEIGHTS_MD, wt),
            (ARG_DIFF_SRC, QUERY_DIFF_SRC_MD, x),
        ],
        ConvPass::GradWeight => [
            (ARG_SRC, QUERY_SRC_MD, x),
            (ARG_DIFF_DST, QUERY_DIFF_DST_MD, y),
            (ARG_DIFF_WEIGHTS, QUERY_DIFF_WEIGHTS_MD, wt),
        ],
    };
    let planned = (|| {
        let mut bytes = 0;
        let mut operands = Vec::with_capacity(3);
        for (i, (arg, query, dims)) in roles.into_iter().enumerate() {
            let want = (api.pd_query_md)(pd, query, 0);
            if want.is_null() {
                return None;
            }
            let plain_md = md(api, dims, TAG_ABCD)?;
            let plain = memory(api, &plain_md)?;
            let blocked = if (api.md_equal)(want, &plain_md) != 0 {
                None
            } else {
                let (from, to): (*const Md, *const Md) = match i {
                    2 => (want, &plain_md),
                    _ => (&plain_md, want),
                };
                let reorder = reorder(api, from, to)?;
                let memory = memory(api, want)?;
                let at = bytes;
                bytes += (api.md_get_size)(want).next_multiple_of(64);
                Some(Blocked {
                    memory,
                    reorder,
                    at,
                })
            };
            operands.push(Operand {
                arg,
                plain,
                blocked,
            });
        }
        let mut conv = null;
        ok((api.primitive_create)(&mut conv, pd))?;
        let operands: [Operand; 3] = operands.try_into().ok()?;
        Some(Planned {
            conv,
            operands,
            bytes,
        })
    })();
    // The forward descriptor is the backward one's hint: destroyed only
    // after the primitive is made.
    (api.pd_destroy)(pd);
    if pd != fwd.pd {
        (api.pd_destroy)(fwd.pd);
    }
    planned
}

/// The implementation oneDNN picks for a forward call shape (its
/// `impl_info_str`, e.g. `jit:avx512_core`), for benches and tests.
pub fn implementation(c: &ConvCall) -> Option<String> {
    let api = api().ok()?;
    let pad_r = pad_right(c)?;
    // SAFETY: descriptors only; the string is the library's, copied.
    unsafe {
        let fwd = forward(api, c, c.b, pad_r)?;
        let name = impl_name(api, fwd.pd);
        (api.pd_destroy)(fwd.pd);
        name
    }
}
