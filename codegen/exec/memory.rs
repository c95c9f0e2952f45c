//! The executor's memory: the pool of leaf buffers, the arena (values,
//! workspaces and kernel states at planned offsets), and reference-counted
//! slots that name a value's memory.

use super::{check_shape, elems, int, ArenaState, ExecError, Executor, Mem, Slot};
use crate::codegen::backend::{Arg, Backend};
use crate::ir::{NodeIndex, Op};
use crate::passes::memplan;
use crate::tensor::Tensor;
use std::collections::HashMap;

impl<'a, B: Backend> Executor<'a, B> {
    // ---- the pool -------------------------------------------------------

    pub(super) fn alloc(&mut self, len: usize) -> Result<B::Buf, ExecError> {
        let len = len.max(1);
        int(len)?;
        let buf = match self.pool.get_mut(&len).and_then(Vec::pop) {
            Some(b) => b,
            None => {
                let b = self.backend.alloc(len).map_err(|source| ExecError::Alloc {
                    mib: (len * 4) >> 20,
                    live_mib: self.stats.live_bytes >> 20,
                    reserved_mib: self.stats.reserved_bytes >> 20,
                    source,
                })?;
                self.stats.device_allocs += 1;
                self.stats.reserved_bytes += 4 * len;
                self.stats.peak_reserved_bytes = self
                    .stats
                    .peak_reserved_bytes
                    .max(self.stats.reserved_bytes);
                b
            }
        };
        self.stats.live_bytes += 4 * len;
        self.stats.peak_live_bytes = self.stats.peak_live_bytes.max(self.stats.live_bytes);
        if self.poison {
            let p = self.backend.ptr(&buf);
            let filled = self.launch(
                "snnc_fill",
                len,
                &[Arg::P(p), Arg::I(len as i32), Arg::F(f32::NAN)],
            );
            if let Err(e) = filled {
                self.stats.live_bytes -= 4 * len;
                self.pool.entry(len).or_default().push(buf);
                return Err(e);
            }
        }
        Ok(buf)
    }

    pub(super) fn release(&mut self, buf: B::Buf, len: usize) {
        let len = len.max(1);
        if self.poison {
            let p = self.backend.ptr(&buf);
            // Best effort: a failure here shows up in the next launch.
            let _ = self.launch(
                "snnc_fill",
                len,
                &[Arg::P(p), Arg::I(len as i32), Arg::F(f32::NAN)],
            );
        }
        self.stats.live_bytes -= 4 * len;
        self.pool.entry(len).or_default().push(buf);
    }

    /// Returns every cached buffer to the device.
    pub fn trim(&mut self) {
        for (len, bufs) in std::mem::take(&mut self.pool) {
            for b in bufs {
                self.stats.reserved_bytes -= 4 * len;
                self.backend.free(b);
            }
        }
    }

    // ---- the arena ------------------------------------------------------

    /// Plans and allocates the arena: before the first run, and again when
    /// `conv_workspace` changed (nothing lives in the arena between runs).
    pub(super) fn ensure_arena(&mut self) -> Result<(), ExecError> {
        if matches!(&self.arena, Some(a) if a.conv_workspace == self.conv_workspace) {
            return Ok(());
        }
        let scratch = super::scratch::LibraryScratch {
            conv_workspace: self.conv_workspace,
        };
        let plan = memplan::units::arena(self.g, &self.plan, &self.life, &scratch);
        if let Some(a) = self.arena.take() {
            self.backend.free(a.buf);
            self.stats.reserved_bytes -= a.plan.mem.arena_bytes as usize;
        }
        let bytes = plan.mem.arena_bytes;
        let len = (bytes as usize).div_ceil(4).max(1);
        let buf = self.backend.alloc(len).map_err(|source| ExecError::Arena {
            mib: bytes >> 20,
            source,
        })?;
        self.stats.device_allocs += 1;
        self.stats.reserved_bytes += bytes as usize;
        self.stats.peak_reserved_bytes = self
            .stats
            .peak_reserved_bytes
            .max(self.stats.reserved_bytes);
        self.stats.arena_bytes = bytes as usize;
        self.stats.planned_peak_bytes = plan.mem.peak_bytes as usize;
        self.arena = Some(ArenaState {
            buf,
            plan,
            conv_workspace: self.conv_workspace,
        });
        Ok(())
    }

    /// The device address of arena offset `off`.
    pub(super) fn arena_addr(&self, off: u64) -> u64 {
        let a = self.arena.as_ref().expect("an arena");
        self.backend.ptr(&a.buf) + off
    }

    /// Counts `bytes` at `addr` in the arena as in use (poisoned when
    /// asked).
    pub(super) fn arena_take(&mut self, addr: u64, bytes: usize) -> Result<(), ExecError> {
        self.stats.live_bytes += bytes;
        self.stats.arena_live_bytes += bytes;
        self.stats.peak_live_bytes = self.stats.peak_live_bytes.max(self.stats.live_bytes);
        self.stats.peak_arena_live_bytes = self
            .stats
            .peak_arena_live_bytes
            .max(self.stats.arena_live_bytes);
        if self.poison {
            self.fill_nan(addr, bytes / 4)?;
        }
        Ok(())
    }

    /// Returns `bytes` at `addr` to the arena (poisoned when asked: a
    /// buffer planned over it while this one was live would read NaN).
    pub(super) fn arena_give(&mut self, addr: u64, bytes: usize) {
        if self.poison {
            // Best effort: a failure here shows up in the next launch.
            let _ = self.fill_nan(addr, bytes / 4);
        }
        self.stats.live_bytes -= bytes;
        self.stats.arena_live_bytes -= bytes;
    }

    pub(super) fn fill_nan(&mut self, p: u64, len: usize) -> Result<(), ExecError> {
        if len == 0 {
            return Ok(());
        }
        self.launch(
            "snnc_fill",
            len,
            &[Arg::P(p), Arg::I(int(len)?), Arg::F(f32::NAN)],
        )
    }

    /// A value's buffer: its planned place in the arena when running a
    /// fusion plan, else one from the pool.
    pub(super) fn value_buffer(
        &mut self,
        n: NodeIndex,
        len: usize,
    ) -> Result<Mem<B::Buf>, ExecError> {
        let planned = self
            .arena
            .as_ref()
            .and_then(|a| a.plan.value.get(&n).copied());
        let off = planned.ok_or(ExecError::NotPlaced(n.index()))?;
        let addr = self.arena_addr(off);
        self.arena_take(addr, 4 * len)?;
        Ok(Mem::At(addr))
    }

    /// Scratch space of `len` floats for the node running now: the next
    /// piece of its planned workspace in the arena, else a pool buffer.
    pub(super) fn take_scratch(&mut self, len: usize) -> Result<Mem<B::Buf>, ExecError> {
        let bytes = super::scratch::piece_bytes(len);
        let (base, size, used) = self.scratch.unwrap_or((0, 0, 0));
        if used + bytes > size {
            return Err(ExecError::Workspace {
                need: used + bytes,
                size,
            });
        }
        self.arena_take(base + used as u64, bytes)?;
        self.scratch = Some((base, size, used + bytes));
        Ok(Mem::At(base + used as u64))
    }

    pub(super) fn give_scratch(&mut self, m: Mem<B::Buf>, len: usize) {
        match m {
            Mem::Own(b) => self.release(b, len),
            Mem::At(addr) => self.arena_give(addr, super::scratch::piece_bytes(len)),
        }
    }

    pub(super) fn mem_ptr(&self, m: &Mem<B::Buf>) -> u64 {
        match m {
            Mem::Own(b) => self.backend.ptr(b),
            Mem::At(a) => *a,
        }
    }

    // ---- slots ------------------------------------------------------------

    pub(super) fn new_slot(&mut self, buf: Mem<B::Buf>, len: usize, pinned: bool) -> usize {
        let slot = Slot {
            buf,
            len,
            refs: 1,
            pinned,
        };
        match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    pub(super) fn slot(&self, id: usize) -> &Slot<B::Buf> {
        self.slots[id].as_ref().expect("live slot")
    }

    pub(super) fn ptr_of(&self, id: usize) -> u64 {
        self.mem_ptr(&self.slot(id).buf)
    }

    pub(super) fn retain(&mut self, id: usize) -> usize {
        self.slots[id].as_mut().expect("live slot").refs += 1;
        id
    }

    pub(super) fn drop_ref(&mut self, id: usize) {
        let s = self.slots[id].as_mut().expect("live slot");
        s.refs -= 1;
        if s.refs == 0 && !s.pinned {
            let s = self.slots[id].take().expect("live slot");
            self.free_value(s.buf, s.len);
        }
    }

    /// Frees the memory of a value of `len` floats.
    pub(super) fn free_value(&mut self, m: Mem<B::Buf>, len: usize) {
        match m {
            Mem::Own(b) => self.release(b, len),
            Mem::At(addr) => self.arena_give(addr, 4 * len),
        }
    }

    // ---- resident parameters --------------------------------------------

    /// Uploads the graph's parameters once; later runs use these copies and
    /// ignore the `params` they are given for the same names.
    pub fn set_resident_params(
        &mut self,
        params: &HashMap<String, Tensor<f32>>,
    ) -> Result<(), ExecError> {
        self.clear_resident_params();
        let g = self.g;
        for n in g.g.node_indices() {
            let node = g.node(n);
            let Op::Param { name } = &node.op else {
                continue;
            };
            if self.resident.contains_key(name) {
                continue;
            }
            let t = params
                .get(name)
                .ok_or_else(|| ExecError::MissingParam(name.clone()))?;
            check_shape(name, &node.shape, t)?;
            let mut buf = self.alloc(t.len())?;
            self.backend.upload(&mut buf, &t.data)?;
            let id = self.new_slot(Mem::Own(buf), t.len(), true);
            self.resident.insert(name.clone(), id);
        }
        Ok(())
    }

    pub fn clear_resident_params(&mut self) {
        for (_, id) in std::mem::take(&mut self.resident) {
            let s = self.slots[id].as_mut().expect("resident slot");
            s.pinned = false;
            self.drop_ref(id);
        }
    }

    // ---- running ----------------------------------------------------------

    pub(super) fn download_value(
        &mut self,
        n: NodeIndex,
        id: usize,
    ) -> Result<Tensor<f32>, ExecError> {
        let shape = &self.g.node(n).shape;
        let data = match &self.slots[id].as_ref().expect("live slot").buf {
            Mem::Own(buf) => self.backend.download(buf, elems(shape))?,
            Mem::At(addr) => {
                let a = self.arena.as_ref().expect("an arena");
                let start = (addr - self.backend.ptr(&a.buf)) as usize / 4;
                self.backend.download_range(&a.buf, start, elems(shape))?
            }
        };
        Ok(Tensor::from_vec(shape, data))
    }

    pub(super) fn upload_leaf(
        &mut self,
        name: &str,
        shape: &[usize],
        t: &Tensor<f32>,
    ) -> Result<usize, ExecError> {
        check_shape(name, shape, t)?;
        let mut buf = self.alloc(t.len())?;
        if let Err(e) = self.backend.upload(&mut buf, &t.data) {
            self.release(buf, t.len());
            return Err(e.into());
        }
        Ok(self.new_slot(Mem::Own(buf), t.len(), false))
    }
}
