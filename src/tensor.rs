//! A dense row-major tensor: the value type of the reference interpreter
//! and of parameters. Deliberately minimal; fast paths live in codegen.

use num_traits::Float;

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<F> {
    pub shape: Vec<usize>,
    pub data: Vec<F>,
}

impl<F: Float> Tensor<F> {
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![F::zero(); shape.iter().product()],
        }
    }

    pub fn full(shape: &[usize], v: F) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![v; shape.iter().product()],
        }
    }

    /// Panics if `data.len()` does not match the shape: a programming error.
    pub fn from_vec(shape: &[usize], data: Vec<F>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data does not match shape {shape:?}"
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
