//! The training runtime: optimizers, the training loop, checkpoints.

pub mod alloc;
pub mod checkpoint;
pub mod mem;
pub mod optim;
pub mod plots;
pub mod train;
