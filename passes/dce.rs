//! Dead-code elimination: drops nodes that no output depends on.

use super::{Pass, PassError};
use crate::ir::Graph;

pub const PASS: Pass = Pass {
    name: "dce",
    about: "remove nodes no output depends on",
    run,
};

fn run(mut g: Graph) -> Result<Graph, PassError> {
    g.remove_dead();
    Ok(g)
}
