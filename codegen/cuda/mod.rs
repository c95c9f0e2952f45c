//! The CUDA target: a [`Backend`] for the executor (`codegen::exec`).
//!
//! - the library kernels (`codegen::library`, `backend::KERNELS`) compiled
//!   by NVRTC; matmuls and the GEMM of each convolution are cuBLAS calls;
//! - [`nvrtc`]: run-time compilation to CUBIN/PTX for the device's
//!   architecture, with an on-disk cache;
//! - [`gemm`]: row-major products as column-major cuBLAS calls;
//! - [`fused`]: a plan's generated kernels as one CUDA module;
//! - [`device`]: the GPU backend (cudarc), with [`probe`];
//! - [`emu`]: the CPU emulator backend (kernels compiled by the host C++
//!   compiler, run sequentially), which lets everything but the cudarc calls
//!   be tested on a machine without a GPU.
//!
//! The commands that drive this backend (`snnc cuda-check`, the
//! device-copy bandwidth test, `snnc bench --device cuda`) live in
//! `src/cli`.

pub mod device;
pub mod emu;
pub mod fused;
pub mod gemm;
pub mod nvrtc;

pub use crate::codegen::backend::{check_args, Arg, Backend, BackendError, KERNELS};
pub use crate::codegen::exec::{Executor, MemStats, Outputs, Step};
pub use device::{missing_library, probe, Cuda, DeviceInfo};
pub use emu::Emu;

/// The library kernel source (also compiled as C++ by the emulator and the
/// CPU backend).
pub use crate::codegen::library::SOURCE as KERNELS_CU;

/// The executor on a GPU.
pub type CudaExecutor<'a> = Executor<'a, Cuda>;
