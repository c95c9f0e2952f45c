//! Dead-code elimination: drops nodes that no output depends on.

use super::{Pass, PassError, Program};

/// The pass: `Graph::remove_dead`.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn about(&self) -> &'static str {
        "remove nodes no output depends on"
    }
    fn run(&self, p: &mut Program) -> Result<(), PassError> {
        p.graph.remove_dead();
        Ok(())
    }
}
