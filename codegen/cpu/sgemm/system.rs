//! System SGEMM libraries, found at run time: OpenBLAS, BLIS, oneDNN and
//! whatever `libblas.so.3` is (the reference BLAS unless the system's
//! alternatives point it at OpenBLAS or BLIS). Opened with `dlopen`
//! (libloading), never linked: snnc builds and runs with none installed.
//!
//! Each library is named by what it exports, not by its file name, so
//! that `libblas.so.3` pointing at OpenBLAS counts as OpenBLAS (already
//! found) rather than as a second library.
//!
//! Opening a library runs its initialisers, so its environment variables
//! apply to every snnc process that runs a GEMM: `OPENBLAS_CORETYPE`
//! chooses OpenBLAS's kernels (0.3.21 runs generic ones on CPUs newer
//! than it), and a `BLIS_ARCH_TYPE` BLIS does not know aborts the process.
//!
//! Threads: each library runs on as many threads as rayon's pool has (the
//! machine's cores unless `RAYON_NUM_THREADS` says otherwise). OpenBLAS's
//! count is global and set once when it is opened; BLIS's is set before
//! each call on the calling thread when it differs (BLIS keeps it per
//! application thread in some versions, globally in others). oneDNN in
//! Debian runs on OpenMP; snnc sets OpenMP's thread count to one on each
//! thread that calls it ([`SystemLib::per_worker`]) and splits every call
//! over rayon's workers instead ([`Call::split`]): with OpenMP's own
//! threads, which keep spinning for a while after each call, the
//! executor's kernels that follow and the GEMM's threads competed for the
//! cores (fmnist_csnn, rate, T = 8, 2 cores: the convolution GEMMs ran at
//! 100 GFLOP/s in training steps against 300 alone). The caller (`sgemm`)
//! calls the other libraries only from threads outside rayon's pool, so
//! their threads never run beside busy rayon workers of the same call.

use libloading::Library;
use std::cell::Cell;
use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

/// Which system library a loaded file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    OpenBlas,
    Blis,
    OneDnn,
    /// A `libblas.so.3` that is neither OpenBLAS nor BLIS: the reference
    /// BLAS (or another that exports `cblas_sgemm`).
    Blas,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::OpenBlas, Kind::Blis, Kind::OneDnn, Kind::Blas];

    /// What the library is called in reports.
    pub fn title(self) -> &'static str {
        match self {
            Kind::OpenBlas => "OpenBLAS",
            Kind::Blis => "BLIS",
            Kind::OneDnn => "oneDNN",
            Kind::Blas => "libblas.so.3 (reference BLAS)",
        }
    }

    /// The files tried for this library, in order (`dlopen`'s search
    /// path, then Debian's alternatives directories).
    fn files(self) -> &'static [&'static str] {
        match self {
            Kind::OpenBlas => &[
                "libopenblas.so.0",
                "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
                "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
                "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
                "libopenblas.so",
            ],
            Kind::Blis => &[
                "libblis.so.4",
                "/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4",
                "/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4",
                "libblis.so",
            ],
            Kind::OneDnn => &["libdnnl.so.3", "libdnnl.so.2", "libdnnl.so"],
            Kind::Blas => &[
                "libblas.so.3",
                "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3",
            ],
        }
    }
}

/// `cblas_sgemm` (row-major calls only: layout 101).
type CblasSgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// `dnnl_sgemm`: row-major, transposes as 'N'/'T', 64-bit extents; returns
/// a `dnnl_status_t` (0: success).
type DnnlSgemm = unsafe extern "C" fn(
    c_char,
    c_char,
    i64,
    i64,
    i64,
    f32,
    *const f32,
    i64,
    *const f32,
    i64,
    f32,
    *mut f32,
    i64,
) -> c_int;

#[derive(Clone, Copy)]
enum Entry {
    Cblas(CblasSgemm),
    Dnnl(DnnlSgemm),
}

/// A loaded system library and its SGEMM.
pub struct SystemLib {
    pub kind: Kind,
    /// The file it was opened as.
    pub file: &'static str,
    /// Version and configuration, as the library reports them.
    pub detail: String,
    entry: Entry,
    /// BLIS's thread-count setter and getter, called before each call.
    blis_threads: Option<(unsafe extern "C" fn(i64), unsafe extern "C" fn() -> i64)>,
    /// oneDNN's OpenMP `omp_set_num_threads`, set to one on each calling
    /// thread before its first call (see [`SystemLib::per_worker`]).
    omp_threads: Option<unsafe extern "C" fn(c_int)>,
    threads: usize,
    _lib: Library,
}

thread_local! {
    /// Whether this thread has set OpenMP's thread count to one.
    static OMP_ONE_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// What probing found: the libraries that loaded, and for each kind not
/// found, why.
pub struct Probe {
    pub found: Vec<SystemLib>,
    pub missing: Vec<(Kind, String)>,
}

impl Probe {
    pub fn get(&self, kind: Kind) -> Option<&SystemLib> {
        self.found.iter().find(|l| l.kind == kind)
    }
}

/// The system libraries, probed once per process.
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let threads = rayon::current_num_threads();
        let mut found: Vec<SystemLib> = Vec::new();
        let mut missing = Vec::new();
        for kind in Kind::ALL {
            if found.iter().any(|l| l.kind == kind) {
                continue;
            }
            let (mut absent, mut other) = (Vec::new(), Vec::new());
            for &file in kind.files() {
                match open(file, threads) {
                    Ok(lib) if lib.kind == kind => {
                        found.push(lib);
                        break;
                    }
                    // libblas.so.3 that is OpenBLAS or BLIS: the same
                    // library again unless that one was not found.
                    Ok(lib) => {
                        other.push(format!("{file} is {}", lib.kind.title()));
                        if !found.iter().any(|l| l.kind == lib.kind) {
                            found.push(lib);
                        }
                    }
                    Err(Unusable::Absent) => absent.push(file),
                    Err(Unusable::NoSgemm) => other.push(format!("{file} has no cblas_sgemm")),
                }
            }
            if !found.iter().any(|l| l.kind == kind) {
                if !absent.is_empty() {
                    other.insert(0, format!("none of {} loads", absent.join(", ")));
                }
                missing.push((kind, other.join("; ")));
            }
        }
        missing.retain(|(k, _)| !found.iter().any(|l| l.kind == *k));
        found.sort_by_key(|l| Kind::ALL.iter().position(|&k| k == l.kind));
        Probe { found, missing }
    })
}

/// Why a file gives no SGEMM.
enum Unusable {
    /// It is not there (or does not load).
    Absent,
    /// It loads but exports no SGEMM this module knows.
    NoSgemm,
}

/// Opens `file` and names it by its symbols.
fn open(file: &'static str, threads: usize) -> Result<SystemLib, Unusable> {
    // SAFETY: loading a system BLAS runs its initialisers, which set up
    // its thread pool and read its environment variables.
    let lib = unsafe { Library::new(file) }.map_err(|_| Unusable::Absent)?;
    // SAFETY (all `sym` calls): each name is looked up with its C type.
    unsafe fn sym<F: Copy>(lib: &Library, name: &str) -> Option<F> {
        lib.get::<F>(name.as_bytes()).ok().map(|s| *s)
    }
    unsafe fn text(f: Option<unsafe extern "C" fn() -> *const c_char>) -> String {
        f.map(|f| f())
            .filter(|p| !p.is_null())
            .map(|p| CStr::from_ptr(p).to_string_lossy().trim().to_string())
            .unwrap_or_default()
    }
    let mut blis_threads = None;
    let mut omp_threads = None;
    let (kind, entry, detail) = unsafe {
        let cblas = sym::<CblasSgemm>(&lib, "cblas_sgemm").map(Entry::Cblas);
        if let Some(config) = sym(&lib, "openblas_get_config") {
            if let Some(set) = sym::<unsafe extern "C" fn(c_int)>(&lib, "openblas_set_num_threads")
            {
                set(threads as c_int);
            }
            // Its configuration names the kernels (the core it detected).
            let detail = format!("{}, {threads} threads", text(Some(config)));
            (Kind::OpenBlas, cblas, detail)
        } else if let Some(version) = sym(&lib, "bli_info_get_version_str") {
            let set = sym::<unsafe extern "C" fn(i64)>(&lib, "bli_thread_set_num_threads");
            let get = sym::<unsafe extern "C" fn() -> i64>(&lib, "bli_thread_get_num_threads");
            blis_threads = set.zip(get);
            let arch = match (
                sym::<unsafe extern "C" fn() -> c_int>(&lib, "bli_arch_query_id"),
                sym::<unsafe extern "C" fn(c_int) -> *const c_char>(&lib, "bli_arch_string"),
            ) {
                (Some(id), Some(name)) => {
                    let p = name(id());
                    if p.is_null() {
                        String::new()
                    } else {
                        format!(", {} kernels", CStr::from_ptr(p).to_string_lossy())
                    }
                }
                _ => String::new(),
            };
            (
                Kind::Blis,
                cblas,
                format!("BLIS {}{arch}, {threads} threads", text(Some(version))),
            )
        } else if let Some(f) = sym::<DnnlSgemm>(&lib, "dnnl_sgemm") {
            // Looked up through the library: its OpenMP runtime is one of
            // its dependencies (none for a oneDNN built on TBB or threads).
            omp_threads = sym::<unsafe extern "C" fn(c_int)>(&lib, "omp_set_num_threads");
            let mut detail = dnnl_version(&lib);
            if omp_threads.is_some() {
                detail.push_str(&format!(", one thread per rayon worker ({threads})"));
            }
            (Kind::OneDnn, Some(Entry::Dnnl(f)), detail)
        } else {
            (Kind::Blas, cblas, String::new())
        }
    };
    let entry = entry.ok_or(Unusable::NoSgemm)?;
    Ok(SystemLib {
        kind,
        file,
        detail,
        entry,
        blis_threads,
        omp_threads,
        threads,
        _lib: lib,
    })
}

/// oneDNN's version, from `dnnl_version()`.
fn dnnl_version(lib: &Library) -> String {
    dnnl_version_numbers(lib)
        .map(|[major, minor, patch]| format!("oneDNN {major}.{minor}.{patch}"))
        .unwrap_or_default()
}

/// oneDNN's (major, minor, patch), from `dnnl_version()`; `None` where the
/// library does not export it.
pub(crate) fn dnnl_version_numbers(lib: &Library) -> Option<[c_int; 3]> {
    #[repr(C)]
    struct Version {
        major: c_int,
        minor: c_int,
        patch: c_int,
        hash: *const c_char,
        cpu_runtime: u32,
        gpu_runtime: u32,
    }
    // SAFETY: dnnl_version returns a pointer to a static dnnl_version_t.
    unsafe {
        let f = lib
            .get::<unsafe extern "C" fn() -> *const Version>(b"dnnl_version")
            .ok()?;
        let v = f();
        if v.is_null() {
            return None;
        }
        let v = &*v;
        Some([v.major, v.minor, v.patch])
    }
}

/// One row-major product on a system library: `C[m×n] = α·op(A)·op(B) +
/// β·C` with leading dimensions `lda`, `ldb`, `ldc` (as BLAS defines
/// them: [`takes`] says whether a call qualifies).
#[derive(Clone, Copy)]
pub struct Call {
    pub ta: bool,
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub beta: f32,
    pub c: *mut f32,
    pub ldc: usize,
}

impl Call {
    /// Whether BLAS accepts the call as given: extents that fit a C `int`
    /// and leading dimensions at least the stored rows' lengths (the
    /// built-in crates take any strides; BLAS rejects these, printing a
    /// message and leaving C alone).
    pub fn takes(&self) -> bool {
        let fits = |x: usize| x <= i32::MAX as usize;
        let row_a = if self.ta { self.m } else { self.k };
        let row_b = if self.tb { self.k } else { self.n };
        [self.m, self.n, self.k, self.lda, self.ldb, self.ldc]
            .into_iter()
            .all(fits)
            && self.lda >= row_a.max(1)
            && self.ldb >= row_b.max(1)
            && self.ldc >= self.n.max(1)
    }

    /// The call as at most `parts` calls on disjoint blocks of C: its
    /// columns split if C is at least as wide as tall, else its rows, in
    /// multiples of [`SPLIT_ALIGN`] (the width of the libraries' register
    /// blocks) and none narrower than [`SPLIT_MIN`]. The parts compute
    /// what the call computes, element for element: each element's sum
    /// over `k` is one part's, whole.
    pub fn split(&self, parts: usize) -> Vec<Call> {
        let by_cols = self.n >= self.m;
        let len = if by_cols { self.n } else { self.m };
        let parts = parts.min(len / SPLIT_MIN).max(1);
        let step = len.div_ceil(parts).next_multiple_of(SPLIT_ALIGN);
        let mut out = Vec::with_capacity(parts);
        let mut at = 0;
        while at < len {
            let w = step.min(len - at);
            let mut p = *self;
            // SAFETY (the `add`s): `at` < the extent split, so every offset
            // stays inside the operand that `self` describes.
            unsafe {
                if by_cols {
                    p.n = w;
                    // op(B)'s columns: B's columns, or its rows if stored
                    // transposed.
                    p.b = self.b.add(if self.tb { at * self.ldb } else { at });
                    p.c = self.c.add(at);
                } else {
                    p.m = w;
                    p.a = self.a.add(if self.ta { at } else { at * self.lda });
                    p.c = self.c.add(at * self.ldc);
                }
            }
            out.push(p);
            at += w;
        }
        out
    }
}

/// Parts of a split call ([`Call::split`]) are multiples of this many
/// columns or rows.
pub const SPLIT_ALIGN: usize = 16;

/// No part of a split call is narrower than this: below, a part's
/// packing and call overhead outweigh a second core.
pub const SPLIT_MIN: usize = 32;

// SAFETY: a call is addresses and extents; the parts of a split call
// write disjoint blocks of C and only read A and B, so they may run on
// different threads at once.
unsafe impl Send for Call {}
unsafe impl Sync for Call {}

impl SystemLib {
    /// Whether calls should be split over rayon's workers
    /// ([`Call::split`]), each part on its worker's thread alone: oneDNN
    /// on OpenMP, whose count this library sets to one on every calling
    /// thread. The others run each call on their own threads.
    pub fn per_worker(&self) -> bool {
        self.omp_threads.is_some()
    }

    /// Sets OpenMP's thread count to one on the calling thread, once (a
    /// oneDNN on OpenMP; nothing for the others): every oneDNN call runs on
    /// the thread that makes it.
    pub fn one_omp_thread(&self) {
        if let Some(set) = self.omp_threads {
            OMP_ONE_THREAD.with(|one| {
                if !one.get() {
                    // SAFETY: omp_set_num_threads(int) from the library's
                    // OpenMP runtime, which applies to the calling thread.
                    unsafe { set(1) };
                    one.set(true);
                }
            });
        }
    }

    /// Runs `call` (one that [`Call::takes`]); false if the library
    /// reported an error (oneDNN: out of memory), C then unspecified.
    ///
    /// # Safety
    /// The pointers must hold the call's matrices; C must not overlap A
    /// or B.
    pub unsafe fn sgemm(&self, call: &Call) -> bool {
        debug_assert!(call.takes());
        let Call {
            ta,
            tb,
            m,
            n,
            k,
            alpha,
            a,
            lda,
            b,
            ldb,
            beta,
            c,
            ldc,
        } = *call;
        match self.entry {
            Entry::Cblas(f) => {
                if let Some((set, get)) = self.blis_threads {
                    if get() != self.threads as i64 {
                        set(self.threads as i64);
                    }
                }
                let t = |x: bool| if x { 112 } else { 111 };
                f(
                    101,
                    t(ta),
                    t(tb),
                    m as c_int,
                    n as c_int,
                    k as c_int,
                    alpha,
                    a,
                    lda as c_int,
                    b,
                    ldb as c_int,
                    beta,
                    c,
                    ldc as c_int,
                );
                true
            }
            Entry::Dnnl(f) => {
                self.one_omp_thread();
                let t = |x: bool| (if x { b'T' } else { b'N' }) as c_char;
                f(
                    t(ta),
                    t(tb),
                    m as i64,
                    n as i64,
                    k as i64,
                    alpha,
                    a,
                    lda as i64,
                    b,
                    ldb as i64,
                    beta,
                    c,
                    ldc as i64,
                ) == 0
            }
        }
    }

    /// The library in one line: what it reports and the file it came from.
    pub fn describe(&self) -> String {
        let detail = if self.detail.is_empty() {
            self.kind.title().to_string()
        } else {
            self.detail.clone()
        };
        format!("{detail}; {}", self.file)
    }
}
