//! The library kernels every backend runs: one source text (`kernels.cu`
//! with the elementwise kernels rendered from the op table, [`elementwise`])
//! that NVRTC compiles for the GPU and the host C++ compiler compiles for
//! the CPU backend and the CUDA emulator. Their signatures are
//! `backend::KERNELS`.

pub mod elementwise;
pub mod host;

/// The library's source: `kernels.cu` with the rendered elementwise
/// kernels in place of its `@ELEMENTWISE@` line.
pub static SOURCE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    include_str!("kernels.cu").replace("// @ELEMENTWISE@\n", &elementwise::source())
});
