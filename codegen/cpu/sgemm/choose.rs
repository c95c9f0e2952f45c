//! The automatic choice: each call shape (extents, transposes, strides,
//! batch) runs on the implementation that was fastest on it, timed once
//! per process the first time the shape is seen.
//!
//! Why timing and not a rule: which implementation wins depends on the
//! shape in ways no simple rule captures (on the 2-core development
//! machine oneDNN beats both built-in crates on 2048³ but not on most
//! training shapes once the executor's other kernels run between its
//! calls), on which libraries
//! the machine has and on how each detects the CPU (OpenBLAS 0.3.21 runs
//! its generic kernels on CPUs newer than it). Training runs a handful of
//! shapes thousands of times, so timing each once costs a fraction of a
//! step.
//!
//! How: on scratch buffers laid out like the call's operands (same
//! strides, same batch), each candidate runs once to warm up (threads,
//! packing buffers), then three rounds (one when a call takes over 20 ms)
//! run each once in turn; a candidate's median counts, and another
//! replaces the default ([`super::default_impl`], the first candidate) only
//! when at least 10 % faster. Calls under [`MIN_TIMED_FLOP`] are not timed
//! and run on the default: the difference between implementations there
//! is below what can be timed reliably. Calls made from inside rayon's pool (no executor GEMM is, but
//! a caller's parallel loop could) run on the gemm crate too: a system
//! library's own threads would compete with the busy rayon workers, and
//! the gemm crate nests into rayon's pool.
//!
//! One correction follows in place ([`observe`]): a chosen library whose
//! calls in the executor keep taking several times its timed median goes
//! back to the default for that shape.
//!
//! The choice is then fixed for the rest of the process (after a shape's
//! first 32 calls at the latest), so a process's runs after that are
//! reproducible; another process may time differently and choose
//! another implementation, whose sums round differently (`SNNC_SGEMM`
//! fixes one for bit-identical runs across processes).

use super::{run_with, Impl};
use crate::codegen::backend::Gemm;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Calls with fewer FLOPs (2·m·n·k·batch) run on the default untimed:
/// about 10 µs at the rates this machine reaches.
pub const MIN_TIMED_FLOP: f64 = 2e6;

/// A call's shape: everything but its addresses and scalars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Shape {
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    stride_a: usize,
    stride_b: usize,
    stride_c: usize,
    batch: usize,
}

impl Shape {
    fn of(g: &Gemm) -> Shape {
        Shape {
            ta: g.ta,
            tb: g.tb,
            m: g.m,
            n: g.n,
            k: g.k,
            lda: g.lda,
            ldb: g.ldb,
            ldc: g.ldc,
            stride_a: g.stride_a,
            stride_b: g.stride_b,
            stride_c: g.stride_c,
            batch: g.batch,
        }
    }

    fn flop(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.batch) as f64
    }
}

/// One decision of the automatic choice, for reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChoiceReport {
    /// `m×n×k`, transposes (`NN`, `TN`, …) and the batch.
    pub shape: String,
    pub chosen: &'static str,
    /// The implementation chosen first when it was slow in the executor
    /// and the shape went back to the default: (name, slow calls,
    /// calls).
    pub slow_in_place: Option<(&'static str, u32, u32)>,
    /// Each candidate's median time (seconds; a candidate out after
    /// its warm-up or first round: that time), in the candidates' order.
    pub seconds: Vec<(&'static str, f64)>,
}

struct Decision {
    chosen: Impl,
    seconds: Vec<(Impl, f64)>,
    /// The chosen one's timed median, what its calls should take.
    expected: Duration,
    /// Where a chosen implementation that is slow in place goes back to
    /// (the first candidate: the default).
    fallback: Impl,
    /// The executor's calls of this shape on `chosen`, and how many took
    /// over [`SLOW_IN_PLACE`] times `expected`.
    calls: u32,
    slow: u32,
    /// The implementation that was chosen first when it was slow in place.
    demoted: Option<Impl>,
}

/// A call that takes this many times its implementation's timed median
/// counts as slow in place.
const SLOW_IN_PLACE: u32 = 3;

/// Calls of a shape after which its choice is final (a few training
/// steps): runs in a process after that compute the same sums.
const SETTLED_AFTER: u32 = 32;

fn table() -> &'static Mutex<HashMap<Shape, Decision>> {
    static TABLE: OnceLock<Mutex<HashMap<Shape, Decision>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The implementation for `g`'s shape among `candidates` (the first is
/// the fallback), timing them if the shape is new.
pub fn choice(g: &Gemm, candidates: &[Impl]) -> Impl {
    let shape = Shape::of(g);
    if rayon::current_thread_index().is_some() {
        return super::BUILTIN;
    }
    if candidates.len() < 2 || shape.flop() < MIN_TIMED_FLOP {
        return candidates.first().copied().unwrap_or(super::default_impl());
    }
    let lock = || table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = lock().get(&shape) {
        return d.chosen;
    }
    // Timed without the lock (a thread that needs another shape is not
    // held up; two threads timing the same shape both time it, and the
    // first to finish decides for both).
    let decision = time(g, candidates);
    lock().entry(shape).or_insert(decision).chosen
}

/// Records that an executor call of `g`'s shape on `imp` took `took`. The
/// timing runs each candidate back to back, its threads awake; in the
/// executor a GEMM follows kernels on rayon's pool, and a library whose
/// threads sleep or spin meanwhile (oneDNN's OpenMP threads on a busy
/// machine: 8 ms and more for a 0.7 ms product) can be far slower there.
/// When at least 3 calls, and at least a quarter of the calls, took over
/// [`SLOW_IN_PLACE`]× the timed median, the shape goes back to the gemm
/// crate for the rest of the process; only the first [`SETTLED_AFTER`]
/// calls of a shape are watched, so the choice settles.
pub fn observe(g: &Gemm, imp: Impl, took: Duration) {
    let shape = Shape::of(g);
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    let Some(d) = table.get_mut(&shape) else {
        return;
    };
    if d.chosen != imp || imp == d.fallback || d.calls >= SETTLED_AFTER {
        return;
    }
    d.calls += 1;
    if took > d.expected.saturating_mul(SLOW_IN_PLACE) {
        d.slow += 1;
    }
    if d.slow >= 3 && 4 * d.slow >= d.calls {
        d.demoted = Some(d.chosen);
        d.chosen = d.fallback;
    }
}

/// Times every candidate on `g`'s shape.
fn time(g: &Gemm, candidates: &[Impl]) -> Decision {
    let span = |rows: usize, cols: usize, ld: usize, stride: usize| {
        (g.batch - 1) * stride + (rows - 1) * ld + cols
    };
    let (ra, ca) = if g.ta { (g.k, g.m) } else { (g.m, g.k) };
    let (rb, cb) = if g.tb { (g.n, g.k) } else { (g.k, g.n) };
    let fill = |len: usize, p: usize| -> Vec<f32> {
        (0..len).map(|i| ((i % p) as f32 - 3.0) * 0.1).collect()
    };
    let a = fill(span(ra, ca, g.lda, g.stride_a), 7);
    let b = fill(span(rb, cb, g.ldb, g.stride_b), 5);
    let mut c = vec![0f32; span(g.m, g.n, g.ldc, g.stride_c)];
    let call = Gemm {
        a: a.as_ptr() as u64,
        b: b.as_ptr() as u64,
        c: c.as_mut_ptr() as u64,
        ..*g
    };
    let once = |imp, call: &Gemm| {
        let t0 = Instant::now();
        // SAFETY: a, b and c span the call's operands at its strides (a
        // call with fewer batch entries spans less).
        unsafe { run_with(imp, call) };
        t0.elapsed()
    };
    let first = Gemm { batch: 1, ..call };
    // Each candidate warms up (threads, packing buffers, JIT), and is out
    // when even that is 4× the best warm-up: a system library's batch,
    // whose entries run one after another, is first timed on one entry
    // (oneDNN takes milliseconds per tiny product on OpenMP).
    let mut out: Vec<(Impl, Duration)> = Vec::new();
    let mut live: Vec<(Impl, Vec<Duration>)> = Vec::new();
    let mut reference = Duration::MAX;
    for &imp in candidates {
        if matches!(imp, Impl::System(_)) && g.batch > 1 {
            let batch = once(imp, &first).saturating_mul(g.batch as u32);
            if batch > reference.saturating_mul(4) {
                out.push((imp, batch));
                continue;
            }
        }
        let warm = once(imp, &call);
        reference = reference.min(warm);
        if warm > reference.saturating_mul(4) {
            out.push((imp, warm));
        } else {
            live.push((imp, Vec::new()));
        }
    }
    // Rounds in which each runs once in turn (a change in the machine's
    // load falls on all alike); after the first, those 4× behind the best
    // are out. A candidate's time is its median: what a call typically
    // takes here, including how much it loses when another process holds
    // a core (libraries that split the work into fixed parts per thread
    // wait for the slowest; rayon's work stealing does not).
    let rounds = if reference < Duration::from_millis(20) {
        3
    } else {
        1
    };
    for round in 0..rounds {
        for (imp, times) in &mut live {
            times.push(once(*imp, &call));
        }
        if round == 0 {
            let best = live
                .iter()
                .map(|(_, t)| t[0])
                .min()
                .unwrap_or(Duration::MAX);
            let (keep, slow): (Vec<_>, Vec<_>) = live
                .into_iter()
                .partition(|(_, t)| t[0] <= best.saturating_mul(4));
            out.extend(slow.into_iter().map(|(imp, t)| (imp, t[0])));
            live = keep;
        }
    }
    let median = |times: &[Duration]| {
        let mut t = times.to_vec();
        t.sort();
        t[t.len() / 2]
    };
    let timed: Vec<(Impl, Duration)> = live
        .iter()
        .map(|(imp, times)| (*imp, median(times)))
        .collect();
    // The first candidate (the default) stays unless another beats it
    // by a tenth: closer than that the order changes from run to run on a
    // shared machine, and a stable choice keeps processes' sums alike.
    let fastest = timed.iter().min_by_key(|(_, t)| *t).copied();
    let first = timed.iter().find(|(imp, _)| *imp == candidates[0]).copied();
    let chosen = match (fastest, first) {
        (Some((imp, t)), Some((_, t0))) if t.mul_f64(1.1) < t0 => imp,
        (_, Some((imp, _))) => imp,
        (Some((imp, _)), None) => imp,
        (None, None) => candidates[0],
    };
    let mut seconds: Vec<(Impl, f64)> = timed
        .into_iter()
        .chain(out)
        .map(|(imp, t)| (imp, t.as_secs_f64()))
        .collect();
    seconds.sort_by_key(|(imp, _)| candidates.iter().position(|c| c == imp));
    let expected = seconds
        .iter()
        .find(|(imp, _)| *imp == chosen)
        .map_or(Duration::MAX, |(_, t)| Duration::from_secs_f64(*t));
    Decision {
        chosen,
        seconds,
        expected,
        fallback: candidates[0],
        calls: 0,
        slow: 0,
        demoted: None,
    }
}

/// The decisions so far, largest shapes first.
pub fn report() -> Vec<ChoiceReport> {
    let table = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<(&Shape, &Decision)> = table.iter().collect();
    rows.sort_by(|x, y| y.0.flop().total_cmp(&x.0.flop()));
    rows.into_iter()
        .map(|(s, d)| ChoiceReport {
            shape: format!(
                "{}×{}×{} {}{}{}",
                s.m,
                s.n,
                s.k,
                if s.ta { 'T' } else { 'N' },
                if s.tb { 'T' } else { 'N' },
                if s.batch > 1 {
                    format!(" ×{}", s.batch)
                } else {
                    String::new()
                }
            ),
            chosen: d.chosen.name(),
            slow_in_place: d.demoted.map(|i| (i.name(), d.slow, d.calls)),
            seconds: d.seconds.iter().map(|(i, t)| (i.name(), *t)).collect(),
        })
        .collect()
}
