//! What a training loop needs to keep its step on the device: the
//! addresses of the resident parameters, their values when the host needs
//! them (checkpoints, evaluation), and a run that hands its outputs'
//! addresses to further launches (the optimizer) before they are released,
//! downloading only the outputs asked for.

use super::{ExecError, Executor, Mem, Outputs};
use crate::codegen::backend::Backend;
use crate::interp::RunOptions;
use crate::ir::NodeIndex;
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Called at the end of a run, with the backend and the device address of
/// every graph output (by name); what it launches runs after the graph's
/// last unit and before the outputs are released.
pub type AfterRun<'h, B> = dyn FnMut(&mut B, &HashMap<String, u64>) -> Result<(), ExecError> + 'h;

impl<'a, B: Backend> Executor<'a, B> {
    /// The device address of resident parameter `name`
    /// ([`Executor::set_resident_params`]).
    pub fn resident_ptr(&self, name: &str) -> Option<u64> {
        self.resident.get(name).map(|&id| self.ptr_of(id))
    }

    /// The current value of resident parameter `name` (waits for the work
    /// queued before).
    pub fn download_resident(&mut self, name: &str) -> Result<Option<Vec<f32>>, ExecError> {
        let Some(&id) = self.resident.get(name) else {
            return Ok(None);
        };
        // The slot and the backend are distinct fields: borrowed apart.
        let s = self.slots[id].as_ref().expect("live slot");
        match &s.buf {
            Mem::Own(buf) => Ok(Some(self.backend.download(buf, s.len)?)),
            // Resident parameters have buffers of their own.
            Mem::At(_) => unreachable!("a resident parameter lives in the arena"),
        }
    }

    /// As [`Executor::run_keeping`], but calls `after` once the graph has
    /// run (with every output still in device memory) and downloads only
    /// the outputs named in `fetch`.
    pub fn run_then(
        &mut self,
        inputs: &HashMap<String, Tensor<f32>>,
        params: &HashMap<String, Tensor<f32>>,
        opts: &RunOptions,
        extra: bool,
        fetch: &[&str],
        after: &mut AfterRun<'_, B>,
    ) -> Result<(Outputs, HashMap<NodeIndex, Tensor<f32>>), ExecError> {
        self.run_full(inputs, params, opts, None, extra, Some((fetch, after)))
    }

    /// The address of every graph output's value, by output name.
    pub(super) fn output_addrs(&self, vals: &HashMap<NodeIndex, usize>) -> HashMap<String, u64> {
        self.g
            .outputs
            .iter()
            .map(|(name, n)| (name.clone(), self.ptr_of(vals[n])))
            .collect()
    }
}
