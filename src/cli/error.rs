//! The CLI's one error type, and the one place errors become text on
//! standard error.

use std::path::PathBuf;

/// Every way an `snnc` command fails: each stage's typed error (so `?`
/// works on all of them), the CLI's own refusals, and text from stages
/// that still report errors as strings.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Frontend(#[from] crate::frontend::FrontendError),
    #[error(transparent)]
    Checkpoint(#[from] crate::runtime::checkpoint::CheckpointError),
    #[error(transparent)]
    Params(#[from] crate::runtime::params::ParamsError),
    #[error(transparent)]
    RunDir(#[from] crate::runtime::rundir::RunDirError),
    // Boxed: interop embeds most other stages' errors; every command
    // returns this type (clippy::result_large_err).
    #[error(transparent)]
    Interop(Box<crate::interop::InteropError>),
    #[error(transparent)]
    Nir(#[from] crate::nir::NirError),
    /// A flag or a combination of flags the command refuses.
    #[error("{0}")]
    Usage(String),
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create `{}`: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config in checkpoint: {0}")]
    BadConfig(serde_json::Error),
    #[error("cannot list `{}` (run from the repository root): {source}", dir.display())]
    ListModels {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The CUDA backend (GPU or emulator) refused to start or to run.
    #[error("{command}: {source}")]
    Backend {
        command: &'static str,
        source: crate::codegen::backend::BackendError,
    },
    #[error("cuda-check: some cases failed (table above)")]
    CudaCheckFailed,
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    BadRunConfig {
        what: String,
        source: serde_json::Error,
    },
    #[error(
        "`{}` holds no run to resume (no {} or {})",
        .0.display(),
        crate::runtime::checkpoint::FILE,
        crate::runtime::rundir::CONFIG
    )]
    NoRun(PathBuf),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Train(#[from] crate::runtime::train::TrainError),
    #[error(transparent)]
    Exec(#[from] crate::codegen::exec::ExecError),
    #[error(transparent)]
    Device(#[from] crate::codegen::backend::BackendError),
    /// A broken invariant (a bug in snnc, not in the input).
    #[error("internal: {0}")]
    Internal(String),
    #[error(transparent)]
    Verify(#[from] crate::ir::VerifyError),
    #[error(transparent)]
    Unroll(#[from] crate::unroll::UnrollError),
    #[error(transparent)]
    Interp(#[from] crate::interp::InterpError),
    #[error(transparent)]
    Pass(#[from] crate::passes::PassError),
    #[error(transparent)]
    Compile(#[from] crate::compile::CompileError),
    #[error(transparent)]
    Memory(#[from] crate::passes::mem::MemoryError),
    /// A stage that reports its errors as text (converted stage by stage).
    #[error("{0}")]
    Msg(String),
    /// An error and what to try instead, printed on the line below it.
    #[error("{source}\n  = hint: {hint}")]
    Hinted {
        source: Box<CliError>,
        hint: &'static str,
    },
}

impl From<crate::interop::InteropError> for CliError {
    fn from(e: crate::interop::InteropError) -> CliError {
        CliError::Interop(Box::new(e))
    }
}

impl From<String> for CliError {
    fn from(s: String) -> CliError {
        CliError::Msg(s)
    }
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> CliError {
        CliError::Usage(msg.into())
    }
}

/// How an error reads on standard error: `error: ` and the message (a
/// `.snn` error with its location, source line and caret; a hint on its
/// own line). The prefix is written here only: no stage writes it.
pub fn render(e: &CliError) -> String {
    format!("error: {}", e.to_string().trim_end())
}
