//! Why a plan could not be prepared or run.

use super::MAX_ELEMS;
use crate::codegen::backend::BackendError;
use crate::passes::memplan::UnitsError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Plan(#[from] UnitsError),
    #[error(transparent)]
    Shape(#[from] crate::ir::ShapeRuleError),
    #[error("the graph has a cycle")]
    Cyclic,
    #[error("node {0} is scheduled before an operand or twice")]
    Order(usize),
    #[error("the order has {got} of the graph's {want} nodes")]
    Incomplete { got: usize, want: usize },
    #[error("size {0} exceeds the executor's 32-bit indexing limit ({MAX_ELEMS})")]
    TooBig(usize),
    #[error("node {node} ({op}) has {elems} elements, more than the executor's limit {MAX_ELEMS}")]
    NodeTooBig {
        node: usize,
        op: &'static str,
        elems: usize,
    },
    #[error(
        "allocating {mib} MiB failed ({live_mib} MiB live, {reserved_mib} MiB reserved): {source}"
    )]
    Alloc {
        mib: usize,
        live_mib: usize,
        reserved_mib: usize,
        source: BackendError,
    },
    #[error("allocating the arena of {mib} MiB failed: {source}")]
    Arena { mib: u64, source: BackendError },
    #[error("allocating a pointer table: {0}")]
    Table(BackendError),
    #[error("node {0} has no place in the arena")]
    NotPlaced(usize),
    #[error("kernel {0} has no state in the arena")]
    NoState(usize),
    #[error("a workspace of {need} bytes exceeds the {size} planned")]
    Workspace { need: usize, size: usize },
    #[error("no kernel `{0}` in the library kernel table")]
    NoKernel(String),
    #[error("{0} has no library kernel")]
    NoLibraryKernel(&'static str),
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("missing param `{0}`")]
    MissingParam(String),
    #[error("the graph has no output `{0}`")]
    MissingOutput(String),
    #[error("`{name}` has shape {got} ({len} elements), but the graph expects {want}")]
    BadShape {
        name: String,
        got: String,
        len: usize,
        want: String,
    },
    #[error("node {0} is not live")]
    NotLive(usize),
    #[error("{0} elements need too many blocks")]
    TooManyBlocks(usize),
    #[error("dropout p={0} is not in [0, 1)")]
    Dropout(f64),
    #[error("conv2d stride must be positive")]
    ZeroStride,
    #[error("node {node} ({op} {attrs}): {source}")]
    AtNode {
        node: usize,
        op: &'static str,
        attrs: String,
        source: Box<ExecError>,
    },
    #[error("fused kernel {kernel} ({name}): {source}")]
    AtKernel {
        kernel: usize,
        name: String,
        source: Box<ExecError>,
    },
}
