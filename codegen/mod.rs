//! The back-end: the kernel IR the fusion pass produces (`ir::kernel`), its
//! two printers (`render_c`, `render_cuda`), and the executors: `cpu` runs
//! a plan with the compiled C kernels and SGEMM-backed library kernels.

pub mod cpu;
pub mod cuda;
#[cfg(feature = "luminal")]
pub mod luminal;
pub mod render_c;
pub mod render_cuda;
