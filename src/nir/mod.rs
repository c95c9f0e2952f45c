//! NIR interop: the Neuromorphic Intermediate Representation (NIR 1.0,
//! <https://github.com/neuromorphs/NIR>, Python package `nir` 1.0.x), the
//! graph format snnTorch, Norse, Sinabs, Rockpool, Spyx and Lava exchange.
//!
//! - [`NirGraph`]/[`Node`]/[`Prim`]: the NIR primitives, as the `nir`
//!   package's dataclasses define them (`nir/ir/*.py`).
//! - [`hdf5`]: the file format of `nir.write`/`nir.read`
//!   (`nir/serialization.py`): an HDF5 file with a `version` string and a
//!   group `node` holding the graph: `type` (a string), one dataset per field,
//!   `nodes/<name>/…` and `edges` (an N×2 array of strings).
//! - [`export`]: a snnc model with its parameters → NIR (batch norm folded).
//! - [`import`]: NIR → a `.snn` model and its parameters.
//!
//! The LIF mapping at a step `dt` is documented in [`export`].

/// A NIR file that could not be read, a graph snnc cannot import, or a
/// model NIR cannot express.
#[derive(Debug, thiserror::Error)]
pub enum NirError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("`{file}` is not a NIR file: {why}")]
    NotNir { file: String, why: String },
    /// Something about the file or graph as a whole.
    #[error("`{file}`: {msg}")]
    File { file: String, msg: String },
    /// A node of the file (`at`: its path of node names).
    #[error("`{file}`: node `{at}`: {msg}")]
    Node {
        file: String,
        at: String,
        msg: String,
    },
    /// A primitive the import cannot turn into a layer.
    #[error("`{file}`: node `{node}` ({prim}): {msg}")]
    Prim {
        file: String,
        node: String,
        prim: String,
        msg: String,
    },
    #[error("--dt must be a positive number, got {0}")]
    BadDt(f64),
    #[error("the parameters have no `{0}`")]
    MissingParam(String),
    /// A layer NIR has no primitive for.
    #[error("layer {path} `{keyword}` of model `{model}`: {why}")]
    Unsupported {
        path: String,
        keyword: &'static str,
        model: String,
        why: &'static str,
    },
    #[error("cannot encode the NIR file: {0}")]
    Encode(String),
    #[error(transparent)]
    Write(#[from] crate::runtime::checkpoint::CheckpointError),
    /// A broken invariant (a bug in snnc).
    #[error("internal: {0}")]
    Internal(String),
}

pub mod export;
pub mod hdf5;
pub mod import;

use std::collections::BTreeMap;

/// A dense array (row-major), kept in f64 whatever the file stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Arr {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Arr {
    pub fn new(shape: &[usize], data: Vec<f64>) -> Arr {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "array size");
        Arr {
            shape: shape.to_vec(),
            data,
        }
    }

    pub fn full(shape: &[usize], v: f64) -> Arr {
        Arr::new(shape, vec![v; shape.iter().product()])
    }

    /// The one value every element has, if they all agree.
    pub fn uniform(&self) -> Option<f64> {
        let first = *self.data.first()?;
        self.data.iter().all(|&x| x == first).then_some(first)
    }
}

/// Conv2d padding: NIR allows two integers or `"same"`/`"valid"`.
#[derive(Clone, Debug, PartialEq)]
pub enum Padding {
    Explicit([usize; 2]),
    Same,
    Valid,
}

/// One NIR primitive with its parameters (names as in the `nir` package).
#[derive(Clone, Debug, PartialEq)]
pub enum Prim {
    Input {
        shape: Vec<usize>,
    },
    Output {
        shape: Vec<usize>,
    },
    /// y = W·x + b; weight (out, in).
    Affine {
        weight: Arr,
        bias: Arr,
    },
    /// y = W·x.
    Linear {
        weight: Arr,
    },
    /// y = x ⊙ scale.
    Scale {
        scale: Arr,
    },
    Conv2d {
        /// Spatial input (H, W); optional in NIR.
        input_shape: Option<[usize; 2]>,
        /// (C_out, C_in, kH, kW).
        weight: Arr,
        stride: [usize; 2],
        padding: Padding,
        dilation: [usize; 2],
        groups: usize,
        bias: Arr,
    },
    Flatten {
        /// Shape of the input (without a batch axis), optional in NIR.
        input_type: Option<Vec<usize>>,
        start_dim: i64,
        end_dim: i64,
    },
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    SumPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// z = H(x − threshold), stateless.
    Threshold {
        threshold: Arr,
    },
    /// dv/dt = R·I; fires when v > v_threshold, then v = v_reset.
    If {
        r: Arr,
        v_threshold: Arr,
        v_reset: Arr,
    },
    /// τ·dv/dt = (v_leak − v) + R·I; fires when v > v_threshold, then
    /// v = v_reset.
    Lif {
        tau: Arr,
        r: Arr,
        v_leak: Arr,
        v_threshold: Arr,
        v_reset: Arr,
    },
    /// A nested graph.
    Graph(NirGraph),
    /// A primitive snnc reads but cannot express (CubaLIF, CubaLI, LI, I,
    /// Delay, Conv1d): kept so that import can name it in its error.
    Other {
        type_name: String,
    },
}

impl Prim {
    /// The NIR type name (`type` in the file).
    pub fn type_name(&self) -> &str {
        match self {
            Prim::Input { .. } => "Input",
            Prim::Output { .. } => "Output",
            Prim::Affine { .. } => "Affine",
            Prim::Linear { .. } => "Linear",
            Prim::Scale { .. } => "Scale",
            Prim::Conv2d { .. } => "Conv2d",
            Prim::Flatten { .. } => "Flatten",
            Prim::AvgPool2d { .. } => "AvgPool2d",
            Prim::SumPool2d { .. } => "SumPool2d",
            Prim::Threshold { .. } => "Threshold",
            Prim::If { .. } => "IF",
            Prim::Lif { .. } => "LIF",
            Prim::Graph(_) => "NIRGraph",
            Prim::Other { type_name } => type_name,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub prim: Prim,
    /// NIR's free-form `metadata` (string values here).
    pub metadata: BTreeMap<String, String>,
}

impl Node {
    pub fn new(prim: Prim) -> Node {
        Node {
            prim,
            metadata: BTreeMap::new(),
        }
    }

    pub fn meta(mut self, key: &str, value: impl ToString) -> Node {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }
}

/// A NIR graph: named nodes and directed edges (source, target). Edges are
/// identity maps; a node with several incoming edges receives their sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NirGraph {
    pub nodes: BTreeMap<String, Node>,
    pub edges: Vec<(String, String)>,
    pub metadata: BTreeMap<String, String>,
}

/// The default time step `dt` of the discrete ↔ continuous neuron mapping
/// (1e-4). The discrete model depends only on dt/τ and dt·R, so any `dt`
/// round-trips as long as the reader simulates at the `dt` the writer used
/// (snnc records it in each neuron's metadata as `snnc_dt`).
pub const DEFAULT_DT: f64 = 1e-4;
