//! Launches of a plan's generated kernels: all steps at once, or one
//! step with the kernel's state in the arena.

use super::{elems, ExecError, Executor, BLOCK};
use crate::codegen::backend::{Arg, Backend};
use crate::ir::NodeIndex;
use std::collections::HashMap;

impl<'a, B: Backend> Executor<'a, B> {
    pub(super) fn exec_step(
        &mut self,
        i: usize,
        k: usize,
        t: usize,
        vals: &mut HashMap<NodeIndex, usize>,
        state: &mut HashMap<usize, u64>,
    ) -> Result<(), ExecError> {
        let f = &self.kernels()[k];
        let (floats, loop_steps) = (f.state_floats(), f.loop_steps());
        let st = if floats == 0 {
            0
        } else if let Some(&a) = state.get(&k) {
            a
        } else {
            let off = self
                .arena
                .as_ref()
                .and_then(|a| a.plan.state.get(&k).copied())
                .ok_or(ExecError::NoState(k))?;
            let addr = self.arena_addr(off);
            self.arena_take(addr, 4 * floats)?;
            state.insert(k, addr);
            addr
        };
        self.exec_kernel(i, k, vals, (t, t + 1), st)?;
        if loop_steps.last() == Some(&t) {
            if let Some(addr) = state.remove(&k) {
                self.arena_give(addr, 4 * floats);
            }
        }
        Ok(())
    }

    /// Launches fused kernel `k` for steps `[t0, t1)` (step `i` of the
    /// schedule) with state `st` (0: none): allocates what the step writes
    /// first, fills the step's pointer table (when the addresses changed)
    /// and launches one thread per element. A launch of every step needs
    /// every tensor of the table; one of a single step only the step's,
    /// and the others' slots stay null.
    pub(super) fn exec_kernel(
        &mut self,
        i: usize,
        k: usize,
        vals: &mut HashMap<NodeIndex, usize>,
        (t0, t1): (usize, usize),
        st: u64,
    ) -> Result<(), ExecError> {
        let f = &self.plan.kernels[k];
        let (table, n, all) = (f.table.clone(), f.kernel.n, t1 - t0 == f.kernel.steps);
        for o in self.life.fresh[i].clone() {
            let len = elems(&self.g.node(o).shape);
            let buf = self.value_buffer(o, len)?;
            let id = self.new_slot(buf, len, false);
            vals.insert(o, id);
        }
        let words: Vec<u64> = table
            .iter()
            .map(|slot| match slot {
                None => Ok(0),
                Some(v) => match vals.get(v) {
                    Some(&id) => Ok(self.ptr_of(id)),
                    None if !all => Ok(0),
                    None => Err(ExecError::NotLive(v.index())),
                },
            })
            .collect::<Result<_, ExecError>>()?;
        if n == 0 {
            return Ok(());
        }
        let grid = u32::try_from(n.div_ceil(BLOCK as usize))
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or(ExecError::TooManyBlocks(n))?;
        let tb = self.tables.get_mut(&i).expect("a table per fused step");
        if self.uploaded.get(&i) != Some(&words) {
            self.backend.upload_words(tb, &words)?;
            self.uploaded.insert(i, words);
        }
        let tp = self.backend.ptr(tb);
        let module = self.module.expect("a module for a plan with kernels");
        let before = if self.profile {
            Some(self.backend.mark()?)
        } else {
            None
        };
        let args = [
            Arg::P(tp),
            Arg::L(n as i64),
            Arg::I(t0 as i32),
            Arg::I(t1 as i32),
            Arg::P(st),
        ];
        self.backend.launch_module(module, k, grid, BLOCK, &args)?;
        if let Some(a) = before {
            let b = self.backend.mark()?;
            self.marks.push((i, a, b));
        }
        Ok(())
    }
}
