//! The `.snn` text format and the Rust builder (to be written).
