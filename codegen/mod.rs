//! The back-end: the kernel IR the fusion pass produces (`ir::kernel`), its
//! two printers (`render_c`, `render_cuda`), the [`exec`]utor that runs a
//! plan over a [`backend::Backend`], the [`library`] kernels every backend
//! runs, and the targets: `cpu` (generated C, the library as C++, SGEMM)
//! and `cuda` (a GPU, or its CPU emulator).

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
