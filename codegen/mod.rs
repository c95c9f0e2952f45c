//! The back-end: the kernel IR the fusion pass produces (`kernel_ir`), its
//! two printers (`render_c`, `render_cuda`), and the executors: `cpu` runs
//! a plan with the compiled C kernels and SGEMM-backed library kernels.

pub mod cpu;
pub mod cuda;
pub mod kernel_ir;
#[cfg(feature = "luminal")]
pub mod luminal;
pub mod render_c;
pub mod render_cuda;
