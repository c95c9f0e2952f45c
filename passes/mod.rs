//! The middle-end: passes over the graph IR.
//!
//! A pass is a named function `Graph -> Result<Graph, PassError>`; the
//! driver runs a list of them, verifying the graph after each, and can stop
//! after any one so that `snnc graph --after NAME` shows its result.

pub mod cost;
pub mod cse;
pub mod dce;
pub mod fuse;
pub mod fuse_time;
pub mod mem;
pub mod memplan;
pub mod rate;
pub mod schedule;

use crate::ir::{self, Graph};

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("pass `{pass}` produced an invalid graph: {err}")]
    Invalid {
        pass: &'static str,
        err: ir::VerifyError,
    },
    #[error("pass `{pass}`: {msg}")]
    Failed { pass: &'static str, msg: String },
}

pub struct Pass {
    pub name: &'static str,
    /// One line for `snnc` help and docs.
    pub about: &'static str,
    pub run: fn(Graph) -> Result<Graph, PassError>,
}

/// Runs `passes` in order, verifying after each; stops after the pass named
/// `after` when given.
pub fn run_pipeline(
    mut g: Graph,
    passes: &[Pass],
    after: Option<&str>,
) -> Result<Graph, PassError> {
    for p in passes {
        g = (p.run)(g)?;
        ir::verify(&g).map_err(|err| PassError::Invalid { pass: p.name, err })?;
        if after == Some(p.name) {
            break;
        }
    }
    Ok(g)
}
