#![allow(dead_code)]
// Reference code indexes several arrays in lockstep on purpose.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]
pub mod agree;
pub mod bptt;
pub mod case;
pub mod example;
pub mod gen;
pub mod idx;
pub mod rate_closed;
pub mod run;
pub mod shrink;
pub mod sim;
