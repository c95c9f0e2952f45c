//! The CUDA target: a [`Backend`] for the executor (`codegen::exec`).
//!
//! - `kernels.cu`: the library kernels (`backend::KERNELS`; matmuls and the
//!   GEMM of each convolution are cuBLAS calls), written so that the same
//!   text also compiles as C++; its elementwise kernels are rendered from the op
//!   table ([`elementwise`]);
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
pub mod elementwise;
pub mod emu;
pub mod fused;
pub mod gemm;
pub mod nvrtc;

pub use crate::codegen::backend::{check_args, Arg, Backend, BackendError, KERNELS};
pub use crate::codegen::exec::{Executor, MemStats, Outputs, Step};
pub use device::{missing_library, probe, Cuda, DeviceInfo};
pub use emu::Emu;

/// The library kernel source (also compiled as C++ by the emulator).
pub static KERNELS_CU: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    include_str!("kernels.cu").replace("// @ELEMENTWISE@\n", &elementwise::source())
});

/// The executor on a GPU.
pub type CudaExecutor<'a> = Executor<'a, Cuda>;
