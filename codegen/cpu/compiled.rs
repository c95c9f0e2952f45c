//! The fast CPU path: a fused plan (`passes/fuse`) whose kernels are
//! printed as C (`codegen/render_c`), compiled by the system C compiler into
//! a shared library cached by content hash, loaded at run time, and called
//! in parallel over blocks of elements. Nodes the plan leaves unfused run on
//! the executor's library kernels (SGEMM, im2col convolution, …).

use super::{compute, lookup_ref, Outputs, Val};
use crate::codegen::render_c;
use crate::interp::{InterpError, RunOptions};
use crate::ir::{Graph, NodeIndex, Op};
use crate::passes::fuse::{Plan, Unit};
use crate::passes::fuse_time;
use crate::passes::schedule::SchedOpts;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// `kernel(table, lo, hi, t0, t1, state)` (see `codegen/render_c`).
type KernelFn = unsafe extern "C" fn(
    *const *mut f32,
    std::ffi::c_long,
    std::ffi::c_long,
    std::ffi::c_long,
    std::ffi::c_long,
    *mut f32,
);

/// Flags the kernels are compiled with. No FMA contraction, no
/// reassociation, exact division: the kernels compute `λ·v + I` and batch
/// norm with the same roundings as the reference interpreter, so a membrane
/// at threshold fires the same way in both. `-ffast-math` is there for
/// glibc's vector `expf` (the sigmoid surrogate): without it GCC vectorises
/// no loop that calls `expf`.
const CFLAGS: &[&str] = &[
    "-O3",
    "-march=native",
    "-ffast-math",
    "-fno-associative-math",
    "-fno-reciprocal-math",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
];

/// A loaded library of a plan's kernels.
pub struct CLib {
    _lib: libloading::Library,
    fns: Vec<KernelFn>,
    pub path: PathBuf,
    /// Whether this build compiled (false: found in the cache).
    pub compiled: bool,
}

/// FNV-1a, 64 bits: a stable content hash for the cache (std's hasher may
/// change between releases).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `$SNNC_CACHE_DIR`, else `$XDG_CACHE_HOME/snnc`, else `~/.cache/snnc`,
/// else the temporary directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SNNC_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("snnc");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("snnc");
    }
    std::env::temp_dir().join("snnc-cache")
}

/// The C translation unit of a plan.
pub fn source(plan: &Plan) -> String {
    let mut s = render_c::header();
    for k in &plan.kernels {
        s.push('\n');
        s.push_str(&render_c::kernel(&k.kernel));
    }
    s
}

/// Why a fused CPU plan's kernels could not be built or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("cannot create the kernel cache `{}`: {source}", dir.display())]
    Cache {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run the C compiler `{cc}` ({source}); install gcc or clang, or set CC")]
    NoCompiler { cc: String, source: std::io::Error },
    #[error("the C compiler rejected the generated kernels (`{}`):\n{stderr}", path.display())]
    Rejected { path: PathBuf, stderr: String },
    #[error("cannot move `{}` into the kernel cache: {source}", path.display())]
    Move {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load `{}`: {source}", path.display())]
    Load {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error("`{}`: no kernel `{kernel}`: {source}", path.display())]
    NoKernel {
        path: PathBuf,
        kernel: String,
        source: libloading::Error,
    },
}

impl CLib {
    pub fn build(plan: &Plan) -> Result<CLib, CcError> {
        let src = source(plan);
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let flags = CFLAGS.join(" ");
        let key = fnv(&[src.as_bytes(), flags.as_bytes(), cc.as_bytes()]);
        let dir = cache_dir().join("c");
        std::fs::create_dir_all(&dir).map_err(|source| CcError::Cache {
            dir: dir.clone(),
            source,
        })?;
        let lib_path = dir.join(format!("{key:016x}.so"));
        let mut compiled = false;
        if !lib_path.exists() {
            // Unique names so that concurrent builds never see a partial file.
            let tag = format!(
                "{key:016x}.{}.{:?}",
                std::process::id(),
                std::thread::current().id()
            );
            let tag: String = tag
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            let c_path = dir.join(format!("{tag}.c"));
            let tmp = dir.join(format!("{tag}.so"));
            std::fs::write(&c_path, &src).map_err(|source| CcError::Write {
                path: c_path.clone(),
                source,
            })?;
            let out = std::process::Command::new(&cc)
                .args(CFLAGS)
                .arg("-o")
                .arg(&tmp)
                .arg(&c_path)
                .arg("-lm")
                .output()
                .map_err(|source| CcError::NoCompiler {
                    cc: cc.clone(),
                    source,
                })?;
            if !out.status.success() {
                return Err(CcError::Rejected {
                    path: c_path,
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            std::fs::rename(&tmp, &lib_path).map_err(|source| CcError::Move {
                path: tmp.clone(),
                source,
            })?;
            let _ = std::fs::remove_file(&c_path);
            compiled = true;
        }
        // SAFETY: the library is one this function compiled from generated
        // C; loading it runs no initialisers of ours.
        let lib =
            unsafe { libloading::Library::new(&lib_path) }.map_err(|source| CcError::Load {
                path: lib_path.clone(),
                source,
            })?;
        let mut fns = Vec::new();
        for k in &plan.kernels {
            // SAFETY: every kernel is defined with exactly this signature by
            // `render_c::kernel`.
            let f: libloading::Symbol<KernelFn> = unsafe { lib.get(k.kernel.name.as_bytes()) }
                .map_err(|source| CcError::NoKernel {
                    path: lib_path.clone(),
                    kernel: k.kernel.name.clone(),
                    source,
                })?;
            fns.push(*f);
        }
        Ok(CLib {
            _lib: lib,
            fns,
            path: lib_path,
            compiled,
        })
    }
}

/// A graph compiled for the CPU: its fused plan and the loaded kernels.
pub struct Compiled {
    pub plan: Plan,
    pub lib: Arc<CLib>,
    /// The graph the plan runs when the schedule lowered it (time-major);
    /// `None`: the caller's graph.
    pub graph: Option<Graph>,
    /// Nodes whose values `run` must return besides the outputs.
    keep: Vec<NodeIndex>,
}

/// The pointer table handed to a kernel; the kernel reads its read slots
/// and writes disjoint elements of its write slots from every thread.
struct Table(Vec<*mut f32>);
// SAFETY: each parallel call writes only elements [lo, hi) of the output
// tensors, which no other call touches, and reads tensors nobody writes.
unsafe impl Sync for Table {}
unsafe impl Send for Table {}

impl Compiled {
    /// Fuses `g` and builds its kernels; `keep` lists extra nodes whose
    /// values callers want back (they are stored, never kept in registers).
    pub fn new(g: &Graph, keep: &[NodeIndex]) -> Result<Compiled, CcError> {
        Compiled::scheduled(g, keep, SchedOpts::LAYER_MAJOR)
    }

    /// As `new`, for a schedule: layer-major runs each kernel's T steps in
    /// one call; time-major runs them one step at a time in a time-major
    /// order of a lowered copy of `g` (`passes/fuse_time`).
    pub fn scheduled(g: &Graph, keep: &[NodeIndex], opts: SchedOpts) -> Result<Compiled, CcError> {
        let lowered = Some(fuse_time::lower(g, opts));
        let plan = fuse_time::plan(lowered.as_ref().unwrap_or(g), keep, opts);
        let lib = Arc::new(CLib::build(&plan)?);
        Ok(Compiled {
            plan,
            lib,
            graph: lowered,
            keep: keep.to_vec(),
        })
    }

    /// The graph the plan runs: the lowered copy, or the caller's.
    pub fn graph<'a>(&'a self, g: &'a Graph) -> &'a Graph {
        self.graph.as_ref().unwrap_or(g)
    }

    /// Runs the plan; returns the outputs.
    pub fn run(
        &self,
        g: &Graph,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
    ) -> Result<Outputs, InterpError> {
        self.run_keeping(g, inputs, params, opts, false)
            .map(|(o, _)| o)
    }

    /// Runs the plan; returns the outputs and, when `extra`, the values of
    /// the nodes the plan was built to keep.
    pub fn run_keeping(
        &self,
        g: &Graph,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        extra: bool,
    ) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), InterpError> {
        let g = self.graph(g);
        // How many units read each value; freed when that reaches zero.
        let reads_of = |u: &Unit| -> Vec<NodeIndex> {
            match u {
                Unit::Node(n) => {
                    let mut v = g.operands(*n);
                    v.sort();
                    v.dedup();
                    v
                }
                Unit::Kernel(k) => self.plan.kernels[*k].reads(),
                Unit::Step(k, t) => self.plan.kernels[*k].step_access(*t).0,
            }
        };
        let mut remaining: HashMap<NodeIndex, usize> = HashMap::new();
        for u in &self.plan.units {
            for n in reads_of(u) {
                *remaining.entry(n).or_default() += 1;
            }
        }
        let keep: HashSet<NodeIndex> = g
            .outputs
            .iter()
            .map(|&(_, n)| n)
            .chain(self.keep.iter().copied())
            .collect();
        // Inputs and parameters are read in place, never copied.
        let mut vals: HashMap<NodeIndex, Val> = HashMap::new();
        let profile = std::env::var_os("SNNC_PROFILE").is_some();
        let mut spent: HashMap<String, (f64, usize)> = HashMap::new();
        // State of kernels run one step at a time, between their steps.
        let mut state: HashMap<usize, Vec<f32>> = HashMap::new();
        for u in &self.plan.units {
            let started = std::time::Instant::now();
            match *u {
                Unit::Node(n) => {
                    let node = &g.g[n];
                    let v = match &node.op {
                        Op::Input { name } => {
                            Val::Shared(lookup_ref(inputs, name, &node.shape, true)?)
                        }
                        Op::Param { name } => {
                            Val::Shared(lookup_ref(params, name, &node.shape, false)?)
                        }
                        op => {
                            let xs: Vec<&Tensor<f32>> =
                                g.operands(n).iter().map(|a| vals[a].get()).collect();
                            Val::Owned(compute(n, op, &node.shape, &xs, opts)?)
                        }
                    };
                    vals.insert(n, v);
                }
                Unit::Kernel(k) => {
                    let f = &self.plan.kernels[k];
                    let outs = f.outputs();
                    self.launch(g, k, &outs, &mut vals, (0, f.kernel.steps), None);
                }
                Unit::Step(k, t) => {
                    let f = &self.plan.kernels[k];
                    let outs: Vec<NodeIndex> = f
                        .step_access(t)
                        .1
                        .into_iter()
                        .filter(|n| !vals.contains_key(n))
                        .collect();
                    let steps = f.loop_steps();
                    let st = state
                        .entry(k)
                        .or_insert_with(|| vec![0f32; f.state_floats()]);
                    let st = (!st.is_empty()).then_some(st.as_mut_ptr());
                    self.launch(g, k, &outs, &mut vals, (t, t + 1), st);
                    if steps.last() == Some(&t) {
                        state.remove(&k);
                    }
                }
            }
            if profile {
                let name = match u {
                    Unit::Node(n) => g.g[*n].op.name().to_string(),
                    Unit::Kernel(k) | Unit::Step(k, _) => self.plan.kernels[*k].kernel.name.clone(),
                };
                let e = spent.entry(name).or_default();
                e.0 += started.elapsed().as_secs_f64();
                e.1 += 1;
            }
            for n in reads_of(u) {
                let r = remaining.get_mut(&n).expect("counted");
                *r -= 1;
                if *r == 0 && !keep.contains(&n) {
                    vals.remove(&n);
                }
            }
        }
        if profile {
            let mut v: Vec<_> = spent.into_iter().collect();
            v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            eprintln!("SNNC_PROFILE: seconds per op (launches)");
            for (name, (s, c)) in v {
                eprintln!("  {name:<22} {s:>8.4} s ({c})");
            }
        }
        let outs = g
            .outputs
            .iter()
            .map(|(name, n)| (name.clone(), vals[n].get().clone()))
            .collect();
        let extra = if extra {
            self.keep
                .iter()
                .filter_map(|n| vals.get(n).map(|v| (*n, v.get().clone())))
                .collect()
        } else {
            HashMap::new()
        };
        Ok((outs, extra))
    }

    /// Runs kernel `k` for steps `[t0, t1)`: allocates `outs` (zeroed),
    /// builds its pointer table from the live values (slots of steps not
    /// run stay null) and calls it.
    fn launch<'v>(
        &self,
        g: &Graph,
        k: usize,
        outs: &[NodeIndex],
        vals: &mut HashMap<NodeIndex, Val<'v>>,
        (t0, t1): (usize, usize),
        st: Option<*mut f32>,
    ) {
        let f = &self.plan.kernels[k];
        for &n in outs {
            vals.insert(n, Val::Owned(Tensor::zeros(&g.g[n].shape)));
        }
        let mut table = vec![std::ptr::null_mut::<f32>(); f.table.len()];
        for (s, slot) in f.table.iter().enumerate() {
            let Some(n) = slot else { continue };
            table[s] = match vals.get_mut(n) {
                Some(Val::Owned(t)) if f.writes[s] => t.data.as_mut_ptr(),
                // Read-only: the kernel never writes a read slot.
                Some(v) => v.get().data.as_ptr() as *mut f32,
                None => continue,
            };
        }
        self.call(k, f.kernel.n, &Table(table), (t0, t1), st);
    }

    /// Calls kernel `k` over `n` elements, in parallel blocks.
    fn call(
        &self,
        k: usize,
        n: usize,
        table: &Table,
        (t0, t1): (usize, usize),
        st: Option<*mut f32>,
    ) {
        let f = self.lib.fns[k];
        let st = Shared(st.unwrap_or(std::ptr::null_mut()));
        let threads = rayon::current_num_threads().max(1);
        // Small kernels run in one call; large ones in a few chunks per
        // thread (multiples of the C block).
        let chunk = if n < 1 << 14 {
            n.max(1)
        } else {
            (n.div_ceil(4 * threads)).div_ceil(256) * 256
        };
        let run = |lo: usize| {
            let hi = (lo + chunk).min(n);
            // SAFETY: the table holds live tensors of the kernel's declared
            // sizes (the plan built it from the graph's shapes), and `st`
            // the kernel's state when it runs part of its steps; [lo, hi)
            // is within them.
            unsafe {
                f(
                    table.0.as_ptr(),
                    lo as std::ffi::c_long,
                    hi as std::ffi::c_long,
                    t0 as std::ffi::c_long,
                    t1 as std::ffi::c_long,
                    st.get(),
                )
            }
        };
        if chunk >= n {
            run(0);
        } else {
            (0..n.div_ceil(chunk))
                .into_par_iter()
                .for_each(|c| run(c * chunk));
        }
    }
}

/// The state pointer shared by the parallel calls, which touch disjoint
/// elements of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: see `Table`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}
impl Shared {
    fn get(self) -> *mut f32 {
        self.0
    }
}
