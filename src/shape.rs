//! Shape inference over a Model (to be written).
