//! snnc: a compiler that trains deep spiking neural networks.
//!
//! Front-end and runtime live in `src/`, the middle-end in `passes/`, the
//! back-end in `codegen/` (see README, "Architecture").

pub mod autodiff;
pub mod cli;
pub mod compare;
pub mod compile;
pub mod data;
pub mod dsl;
pub mod frontend;
pub mod init;
pub mod interop;
pub mod interp;
pub mod ir;
pub mod model;
pub mod nir;
pub mod precision;
pub mod rng;
pub mod runtime;
pub mod shape;
pub mod tensor;
pub mod unroll;

#[path = "../passes/mod.rs"]
pub mod passes;

#[path = "../codegen/mod.rs"]
pub mod codegen;
