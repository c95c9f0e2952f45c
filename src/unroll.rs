//! unroll(model, T) (to be written).
