//! The back-end. For now: the CPU executor (`cpu`), which runs a graph's
//! heavy ops (matmuls, convolutions and their gradients) with a blocked
//! SGEMM and everything else with the reference kernels. The kernel IR and
//! the C and CUDA renderers of DESIGN.md §2 come next and take over the
//! elementwise work.

pub mod cpu;
pub mod cuda;
