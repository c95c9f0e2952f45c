//! The training runtime: optimizers, the training loop, checkpoints.

pub mod alloc;
pub mod checkpoint;
pub mod device_optim;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod plots;
pub mod rundir;
pub mod step;
pub mod train;
pub mod train_error;
