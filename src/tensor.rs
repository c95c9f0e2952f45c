//! A dense row-major tensor: the value type of the reference interpreter
//! and of parameters. Deliberately minimal; fast paths live in codegen.

use num_traits::Float;

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<F> {
    pub shape: Vec<usize>,
    pub data: Vec<F>,
}

/// The element count of `shape`, checked: a shape whose product does not
/// fit is a programming error (shape analysis and the graph verifier
/// refuse such sizes long before a tensor is made), never a wrapped size.
fn len_of(shape: &[usize]) -> usize {
    crate::shape::elements(shape)
        .unwrap_or_else(|| panic!("tensor shape {} is too large", crate::shape::dims(shape)))
}

impl<F: Float> Tensor<F> {
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![F::zero(); len_of(shape)],
        }
    }

    pub fn full(shape: &[usize], v: F) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![v; len_of(shape)],
        }
    }

    /// Panics if `data.len()` does not match the shape: a programming error.
    pub fn from_vec(shape: &[usize], data: Vec<F>) -> Self {
        assert_eq!(
            len_of(shape),
            data.len(),
            "tensor data does not match shape {}",
            crate::shape::dims(shape)
        );
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Converts element type (f32 <-> f64).
    pub fn cast<G: Float>(&self) -> Tensor<G> {
        Tensor {
            shape: self.shape.clone(),
            data: self
                .data
                .iter()
                .map(|&x| G::from(x).expect("float cast"))
                .collect(),
        }
    }
}
