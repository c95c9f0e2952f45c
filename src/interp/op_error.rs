//! Why the interpreter could not evaluate one op on its operands.

use crate::ir::scalar_eval::ScalarError;
use crate::ir::ShapeRuleError;
use crate::shape::list;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum OpError {
    #[error(
        "operand {k} holds {len} elements but its shape {} needs {need}",
        list(shape)
    )]
    OperandLength {
        k: usize,
        len: usize,
        shape: Vec<usize>,
        need: usize,
    },
    /// An input or parameter whose data does not fill its shape.
    #[error(
        "`{name}` holds {len} elements but its shape {} needs {need}",
        list(shape)
    )]
    LeafLength {
        name: String,
        len: usize,
        shape: Vec<usize>,
        need: usize,
    },
    #[error("conv2d stride must be positive")]
    ZeroStride,
    #[error(transparent)]
    Shape(#[from] ShapeRuleError),
    #[error(
        "operands give shape {}, but the node is annotated {}",
        list(inferred),
        list(annotated)
    )]
    Annotated {
        inferred: Vec<usize>,
        annotated: Vec<usize>,
    },
    #[error("{0} is a leaf whose value is supplied to run(), not computed")]
    Leaf(&'static str),
    #[error(transparent)]
    Scalar(#[from] ScalarError),
    #[error("dropout p={0} is not in [0, 1)")]
    DropoutP(f64),
}
