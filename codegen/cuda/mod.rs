//! The CUDA backend: a node-level executor for compiled training graphs.
//!
//! - `kernels.cu`: one CUDA kernel per primitive op (matmuls and the GEMM of
//!   each convolution are cuBLAS calls), written so that the same text also
//!   compiles as C++;
//! - [`nvrtc`]: run-time compilation to CUBIN/PTX for the device's
//!   architecture, with an on-disk cache;
//! - [`gemm`]: row-major products as column-major cuBLAS calls;
//! - [`exec`]: the [`Executor`], generic over a [`Backend`]: graph nodes
//!   one by one, or a fusion plan (node units on these kernels, fused units
//!   on one generated module per plan, [`fused`]);
//! - [`arena`]: a fusion plan's device memory as one arena at planned
//!   offsets;
//! - [`device`]: the GPU backend (cudarc), with [`probe`];
//! - [`emu`]: the CPU emulator backend (kernels compiled by the host C++
//!   compiler, run sequentially), which lets everything but the cudarc calls
//!   be tested on a machine without a GPU.
//!
//! The commands that drive this backend (`snnc cuda-check`, the
//! device-copy bandwidth test, `snnc bench --device cuda`) live in
//! `src/cli`.

pub mod arena;
pub mod backend;
pub mod device;
pub mod emu;
pub mod exec;
pub mod fused;
pub mod gemm;
pub mod nvrtc;

pub use backend::{Arg, Backend, KERNELS, KERNELS_CU};
pub use device::{missing_library, probe, Cuda, DeviceInfo};
pub use emu::Emu;
pub use exec::{Executor, MemStats, Outputs, Step};

/// The executor on a GPU.
pub type CudaExecutor<'a> = Executor<'a, Cuda>;
