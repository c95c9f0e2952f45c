//! Why a training run (or its evaluation) failed.

use crate::shape::dims;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "unknown dataset `{0}`; use digits, fashion-mnist, mnist, cifar10, cifar100, \
         cifar100-coarse, events:DIR or images:DIR"
    )]
    UnknownDataset(String),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The run's model text (kept in the config) does not parse or check.
    #[error(transparent)]
    Model(#[from] crate::frontend::FrontendError),
    #[error(transparent)]
    Compile(#[from] crate::compile::CompileError),
    #[error(transparent)]
    Memory(#[from] crate::passes::mem::MemoryError),
    #[error(transparent)]
    Interp(#[from] crate::interp::InterpError),
    #[error(transparent)]
    Checkpoint(#[from] crate::runtime::checkpoint::CheckpointError),
    #[error(transparent)]
    RunDir(#[from] crate::runtime::rundir::RunDirError),
    #[error(transparent)]
    Params(#[from] crate::runtime::params::ParamsError),
    #[error(transparent)]
    Exec(#[from] crate::codegen::exec::ExecError),
    #[error(
        "dataset `{data}` has samples of shape {}, but model `{model}` expects input {}",
        dims(has),
        dims(expects)
    )]
    InputShape {
        data: String,
        has: Vec<usize>,
        model: String,
        expects: Vec<usize>,
    },
    #[error(
        "dataset `{data}` has {classes} classes, but model `{model}` ends with {outputs} outputs"
    )]
    Classes {
        data: String,
        classes: usize,
        model: String,
        outputs: usize,
    },
    #[error("batch size {batch} does not fit {samples} training samples")]
    Batch { batch: usize, samples: usize },
    #[error("the loss became {loss} at epoch {epoch}, batch {batch}; lower --lr")]
    LossNotFinite {
        loss: f64,
        epoch: usize,
        batch: usize,
    },
    #[error("cannot open `{}`: {source}", path.display())]
    OpenMetrics {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write `{}`: {source} (the checkpoint has the epoch's metrics; \
         `--resume` restores the file)",
        path.display()
    )]
    WriteMetrics {
        path: PathBuf,
        source: std::io::Error,
    },
}
