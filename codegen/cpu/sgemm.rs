//! SGEMM on the host: the executor's [`Gemm`] calls (row-major, strided,
//! batched) on the fastest implementation this machine has, and the FLOP
//! floor `snnc bench --floor` measures.
//!
//! Implementations: the `gemm` crate and matrixmultiply (built in), and
//! the system libraries [`system`] finds at run time (OpenBLAS, BLIS,
//! oneDNN, `libblas.so.3`). By default every call runs on one fixed
//! implementation ([`default_impl`]: oneDNN when installed, else the
//! `gemm` crate), so that two processes compute the same sums (a resumed
//! run continues bit for bit). `SNNC_SGEMM=auto` runs each call shape on the
//! implementation that was fastest on it ([`choose`]: timed once per
//! process, on first use), which is faster where a library wins but can
//! choose differently in another process; `SNNC_SGEMM=NAME` forces one.

mod choose;
pub(crate) mod system;

pub use choose::ChoiceReport;
pub use system::Kind as SystemKind;

use crate::codegen::backend::Gemm;
use rayon::prelude::*;
use std::sync::OnceLock;

/// The implementation every call runs on unless `SNNC_SGEMM` says
/// otherwise: oneDNN when the machine has it on OpenMP (run one thread per
/// rayon worker, see `system`), else the gemm crate. Either is one fixed
/// implementation, so every process on a machine computes the same sums
/// (a resumed run continues bit for bit). Side by side in training steps
/// (fmnist_csnn, batch 128, T = 4 and 8, both modes, 3 alternating rounds
/// on the 2-core machine, 2026-12-07), oneDNN so run took 0.67–0.73× the
/// gemm crate's time: its convolution products reach 240–280 GFLOP/s
/// between the executor's kernels, the gemm crate's about 100.
/// matrixmultiply is faster alone than the gemm crate but runs on threads
/// of its own beside rayon's pool: in training steps it took 0.96–1.03×
/// the gemm crate's time at load 2.
pub fn default_impl() -> Impl {
    static DEFAULT: OnceLock<Impl> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let onednn = system::probe().get(SystemKind::OneDnn);
        if onednn.is_some_and(|l| l.per_worker()) {
            Impl::System(SystemKind::OneDnn)
        } else {
            BUILTIN
        }
    })
}

/// The built-in crate that runs what a system library does not take
/// (strides BLAS rejects, a oneDNN error) and what runs inside rayon's
/// pool: the gemm crate, which nests into it.
pub const BUILTIN: Impl = Impl::Gemm;

/// An SGEMM implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Impl {
    /// The `gemm` crate (rayon-parallel).
    Gemm,
    /// matrixmultiply (its own threads).
    MatrixMultiply,
    /// A system library loaded at run time.
    System(SystemKind),
}

impl Impl {
    /// Every implementation, by the name `SNNC_SGEMM` takes.
    const NAMED: [(&'static str, Impl); 6] = [
        ("gemm", Impl::Gemm),
        ("matrixmultiply", Impl::MatrixMultiply),
        ("openblas", Impl::System(SystemKind::OpenBlas)),
        ("blis", Impl::System(SystemKind::Blis)),
        ("onednn", Impl::System(SystemKind::OneDnn)),
        ("blas", Impl::System(SystemKind::Blas)),
    ];

    /// The name `SNNC_SGEMM` takes.
    pub fn name(self) -> &'static str {
        Impl::NAMED
            .iter()
            .find(|(_, i)| *i == self)
            .map(|(n, _)| *n)
            .expect("every implementation is named")
    }

    /// What it is, in one line (system libraries: version, kernels, file).
    pub fn describe(self) -> String {
        match self {
            Impl::Gemm => "gemm crate, rayon threads".to_string(),
            Impl::MatrixMultiply => "matrixmultiply crate, its own threads".to_string(),
            Impl::System(kind) => system::probe()
                .get(kind)
                .map_or_else(|| format!("{} (not found)", kind.title()), |l| l.describe()),
        }
    }
}

/// `SNNC_SGEMM` names no implementation, or one this machine lacks.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SgemmError {
    #[error("SNNC_SGEMM=`{0}` names no SGEMM implementation (auto, gemm, matrixmultiply, openblas, blis, onednn, blas)")]
    Unknown(String),
    #[error("SNNC_SGEMM={name}: {title} is not installed on this machine: {why}")]
    Unavailable {
        name: String,
        title: &'static str,
        why: String,
    },
}

/// How the executor's GEMMs pick their implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The fastest per call shape ([`choose`]; `SNNC_SGEMM=auto`).
    Auto,
    /// `SNNC_SGEMM=NAME`: this one for every call.
    Forced(Impl),
}

/// The selection `SNNC_SGEMM` asks for (read once per process): an
/// unknown name, or a library that is not installed, is an error.
pub fn selection() -> Result<Selection, SgemmError> {
    static SELECTION: OnceLock<Result<Selection, SgemmError>> = OnceLock::new();
    SELECTION
        .get_or_init(|| match std::env::var("SNNC_SGEMM") {
            // Deterministic by default: the same implementation in every
            // process.
            Err(_) => Ok(Selection::Forced(default_impl())),
            Ok(name) => parse_selection(name.trim()),
        })
        .clone()
}

fn parse_selection(name: &str) -> Result<Selection, SgemmError> {
    if name.is_empty() {
        return Ok(Selection::Forced(default_impl()));
    }
    if name == "auto" {
        return Ok(Selection::Auto);
    }
    let want = if name == "dnnl" { "onednn" } else { name };
    let (_, imp) = *Impl::NAMED
        .iter()
        .find(|(n, _)| *n == want)
        .ok_or_else(|| SgemmError::Unknown(name.to_string()))?;
    if let Impl::System(kind) = imp {
        if system::probe().get(kind).is_none() {
            let why = system::probe()
                .missing
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(String::new(), |(_, w)| w.clone());
            return Err(SgemmError::Unavailable {
                name: name.to_string(),
                title: kind.title(),
                why,
            });
        }
    }
    Ok(Selection::Forced(imp))
}

/// The implementations this machine has: the default first, then the
/// built-in crates and the system libraries found.
pub fn available() -> Vec<Impl> {
    let mut v = vec![default_impl()];
    let rest = [Impl::Gemm, Impl::MatrixMultiply]
        .into_iter()
        .chain(system::probe().found.iter().map(|l| Impl::System(l.kind)));
    for imp in rest {
        if !v.contains(&imp) {
            v.push(imp);
        }
    }
    v
}

/// The system libraries not found, each with what was tried.
pub fn missing() -> Vec<String> {
    system::probe()
        .missing
        .iter()
        .map(|(k, why)| format!("{}: {why}", k.title()))
        .collect()
}

/// The implementations the automatic choice times: all available but the
/// reference BLAS (unblocked and single-threaded: it can only win on a
/// product too small to time reliably).
fn automatic_candidates() -> &'static [Impl] {
    static CANDIDATES: OnceLock<Vec<Impl>> = OnceLock::new();
    CANDIDATES.get_or_init(|| {
        available()
            .into_iter()
            .filter(|i| *i != Impl::System(SystemKind::Blas))
            .collect()
    })
}

/// The selection in one line, for the backend's description.
pub fn library() -> String {
    match selection() {
        Ok(Selection::Forced(i)) => {
            let set = std::env::var_os("SNNC_SGEMM").is_some_and(|v| !v.is_empty());
            let why = if set { "SNNC_SGEMM" } else { "the default" };
            format!("{} ({why})", i.name())
        }
        Ok(Selection::Auto) => format!(
            "fastest per shape of {}",
            automatic_candidates()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => e.to_string(),
    }
}

/// `C = α·op(A)·op(B) + β·C` on a built-in crate (`gemm_crate`, else
/// matrixmultiply), with `k` > 0; `par`: whether it may use threads. The
/// crates take any strides, so every call is theirs.
///
/// # Safety
/// The call's addresses must hold its matrices in live allocations, and C
/// must not overlap A or B.
unsafe fn builtin(gemm_crate: bool, call: &system::Call, par: bool) {
    let system::Call {
        m,
        n,
        k,
        alpha,
        beta,
        c,
        ldc,
        ..
    } = *call;
    // Transposes are strides: (row stride, column stride) of op(A), op(B).
    let (ars, acs) = if call.ta {
        (1, call.lda)
    } else {
        (call.lda, 1)
    };
    let (brs, bcs) = if call.tb {
        (1, call.ldb)
    } else {
        (call.ldb, 1)
    };
    let (ars, acs, brs, bcs) = (ars as isize, acs as isize, brs as isize, bcs as isize);
    let (ap, bp) = (call.a, call.b);
    if gemm_crate {
        // gemm computes dst = alpha·dst + beta·lhs·rhs (its alpha/beta are
        // BLAS's beta/alpha); strides are (column, row).
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            beta != 0.0,
            ap,
            acs,
            ars,
            bp,
            bcs,
            brs,
            beta,
            alpha,
            false,
            false,
            false,
            if par {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        )
    } else {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            ap,
            ars,
            acs,
            bp,
            brs,
            bcs,
            beta,
            c,
            ldc as isize,
            1,
        )
    }
}

/// Batch entry `q` of `g` on `imp`; `par`: whether a built-in crate may
/// use threads (false when batch entries already run in parallel).
///
/// # Safety
/// As [`run`].
unsafe fn entry(imp: Impl, g: &Gemm, q: usize, par: bool) {
    let a = (g.a as *const f32).add(q * g.stride_a);
    let b = (g.b as *const f32).add(q * g.stride_b);
    let c = (g.c as *mut f32).add(q * g.stride_c);
    if g.m == 0 || g.n == 0 {
        return;
    }
    if g.k == 0 {
        // No products: C = β·C (not read when β = 0).
        for i in 0..g.m {
            for j in 0..g.n {
                let p = c.add(i * g.ldc + j);
                *p = if g.beta == 0.0 { 0.0 } else { g.beta * *p };
            }
        }
        return;
    }
    let call = system::Call {
        ta: g.ta,
        tb: g.tb,
        m: g.m,
        n: g.n,
        k: g.k,
        alpha: g.alpha,
        a,
        lda: g.lda,
        b,
        ldb: g.ldb,
        beta: g.beta,
        c,
        ldc: g.ldc,
    };
    // A system library that does not take the call falls back to the
    // default crate.
    if let Impl::System(kind) = imp {
        if let Some(lib) = system::probe().get(kind) {
            if call.takes() {
                if lib.per_worker() {
                    let parts = call.split(rayon::current_num_threads());
                    parts.par_iter().for_each(|p| {
                        if !lib.sgemm(p) {
                            builtin(BUILTIN == Impl::Gemm, p, false);
                        }
                    });
                    return;
                }
                if lib.sgemm(&call) {
                    return;
                }
            }
        }
    }
    let crate_imp = if matches!(imp, Impl::System(_)) {
        BUILTIN
    } else {
        imp
    };
    builtin(crate_imp == Impl::Gemm, &call, par)
}

/// Runs an executor GEMM on host memory with the selected implementation
/// (`SNNC_SGEMM`: [`default_impl`] unless set, or the fastest for the call's
/// shape with `auto`).
///
/// # Safety
/// The addresses must be host pointers to matrices of the call's extents.
///
/// # Panics
/// If `SNNC_SGEMM` is invalid ([`selection`]; `Cpu::new` reports that as
/// an error first).
pub unsafe fn run(g: &Gemm) {
    match selection().unwrap_or_else(|e| panic!("{e}")) {
        Selection::Forced(imp) => run_with(imp, g),
        Selection::Auto => run_auto(g),
    }
}

/// Runs an executor GEMM on the implementation fastest for its shape
/// ([`choose`]), watching the first calls of each shape.
///
/// # Safety
/// As [`run`].
pub unsafe fn run_auto(g: &Gemm) {
    let imp = choose::choice(g, automatic_candidates());
    let t0 = std::time::Instant::now();
    run_with(imp, g);
    choose::observe(g, imp, t0.elapsed());
}

/// Runs an executor GEMM on `imp`. The built-in crates run the entries of
/// a batch in parallel when their outputs are disjoint (each product
/// single-threaded, as many small products as the batch has), else one
/// after another, each multithreaded; a system library runs them one
/// after another on all its threads (its thread count is global: entries
/// on rayon's workers, each on the library's threads, would oversubscribe
/// the cores).
///
/// # Safety
/// As [`run`]; `imp` should be [`available`] (a system library that is
/// not runs the call on the default).
pub unsafe fn run_with(imp: Impl, g: &Gemm) {
    let disjoint = g.stride_c >= g.m.saturating_sub(1) * g.ldc + g.n;
    let builtin = matches!(imp, Impl::Gemm | Impl::MatrixMultiply);
    if builtin && g.batch > 1 && disjoint {
        (0..g.batch)
            .into_par_iter()
            .for_each(|q| entry(imp, g, q, false));
    } else {
        for q in 0..g.batch {
            entry(imp, g, q, true);
        }
    }
}

/// The automatic choice's decisions so far in this process, per call
/// shape, with each candidate's time.
pub fn choices() -> Vec<ChoiceReport> {
    choose::report()
}

/// GFLOP/s of an `m`×`k` by `k`×`n` SGEMM with the selected
/// implementation, median of `repeats` after a warm-up.
pub fn gflops_mkn(m: usize, k: usize, n: usize, repeats: usize) -> f64 {
    rates(&[None], m, k, n, repeats)[0].gflops
}

/// An SGEMM rate and how it was measured.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub gflops: f64,
    /// Timed calls the figure is the median of: `repeats`, or 1 when the
    /// warm-up call alone took over a second (the reference BLAS; its
    /// first-call costs are then negligible and the warm-up is the figure).
    pub calls: usize,
}

/// GFLOP/s of an `m`×`k` by `k`×`n` SGEMM on each of `imps` (None: the
/// executor's selection): each warms up once, then `repeats` rounds time
/// each once in turn (so that a change in the machine's load falls on all
/// alike), and each rate is its median.
pub fn rates(imps: &[Option<Impl>], m: usize, k: usize, n: usize, repeats: usize) -> Vec<Rate> {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let call = Gemm::dense(
        false,
        false,
        m,
        n,
        k,
        a.as_ptr() as u64,
        b.as_ptr() as u64,
        c.as_mut_ptr() as u64,
    );
    let once = |imp: &Option<Impl>| {
        let t0 = std::time::Instant::now();
        // SAFETY: a, b and c hold the m×k, k×n and m×n matrices.
        unsafe {
            match imp {
                Some(imp) => run_with(*imp, &call),
                None => run(&call),
            }
        }
        t0.elapsed().as_secs_f64()
    };
    // Over a second warming up: that call is the figure, not repeated.
    let warm: Vec<f64> = imps.iter().map(once).collect();
    let slow: Vec<bool> = warm.iter().map(|&w| w > 1.0).collect();
    let mut times: Vec<Vec<f64>> = warm
        .iter()
        .zip(&slow)
        .map(|(&w, &slow)| if slow { vec![w] } else { Vec::new() })
        .collect();
    for _ in 0..repeats.max(1) {
        for ((imp, t), &slow) in imps.iter().zip(&mut times).zip(&slow) {
            if !slow {
                t.push(once(imp));
            }
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            Rate {
                gflops: 2.0 * (m * k * n) as f64 / t[t.len() / 2] / 1e9,
                calls: t.len(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..len).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect()
    }

    /// Every transpose combination, α, β, strided and batched entries
    /// against a direct triple loop.
    #[test]
    fn gemm_calls_equal_the_triple_loop() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (m, n, k, batch) = (5, 7, 3, 3);
            let a = data(batch * m * k, 1);
            let b = data(batch * k * n, 2);
            let c0 = data(batch * m * n, 3);
            let mut c = c0.clone();
            let (alpha, beta) = (0.5, 2.0);
            let call = Gemm {
                alpha,
                beta,
                stride_a: m * k,
                stride_b: k * n,
                stride_c: m * n,
                batch,
                ..Gemm::dense(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    a.as_ptr() as u64,
                    b.as_ptr() as u64,
                    c.as_mut_ptr() as u64,
                )
            };
            // SAFETY: the buffers hold `batch` matrices of these sizes.
            unsafe { run(&call) };
            for q in 0..batch {
                let (aq, bq) = (&a[q * m * k..], &b[q * k * n..]);
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0.0f64;
                        for p in 0..k {
                            let av = if ta { aq[p * m + i] } else { aq[i * k + p] };
                            let bv = if tb { bq[j * k + p] } else { bq[p * n + j] };
                            s += f64::from(av) * f64::from(bv);
                        }
                        let want =
                            alpha as f64 * s + beta as f64 * c0[q * m * n + i * n + j] as f64;
                        let got = c[q * m * n + i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "ta={ta} tb={tb} q={q} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
