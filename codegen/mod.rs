//! The back-end: the kernel IR the fusion pass produces (`ir::kernel`), its
//! two printers (`render_c`, `render_cuda`), the [`exec`]utor that runs a
//! plan over a [`backend::Backend`], and the targets: `cuda` (a GPU, or its
//! CPU emulator) and `cpu` (generated C kernels and SGEMM).

pub mod backend;
pub mod cache;
pub mod cpu;
pub mod cuda;
pub mod exec;
pub mod library;
#[cfg(feature = "luminal")]
pub mod luminal;
pub mod render_c;
pub mod render_cuda;
