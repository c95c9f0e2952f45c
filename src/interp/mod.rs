//! The reference interpreter: executes any `Graph` in f32 or f64.
//!
//! This is the oracle that every later pass and backend is checked against,
//! so each op is written as the plainest loop that matches its definition in
//! `ir::Op`, never as a clever one. Every node's value is kept (not just the
//! outputs) because passes are checked by comparing intermediate values.

pub(crate) mod grad_ops;
mod op_error;
pub(crate) mod ops;
mod pool;
mod random;
mod scalar;

pub use random::{random_input, random_labels, random_values};

pub use op_error::OpError;
pub use ops::eval_op;

use crate::ir::{Graph, Op};
use crate::model::Surrogate;
use crate::precision::Precision;
use crate::tensor::Tensor;
use num_traits::Float;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable;
use std::collections::HashMap;

/// Settings of one run that are not part of the graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Run seed for the counter-based generator behind `Poisson` and
    /// `DropoutMask`: the same seed gives the same bits in every backend.
    pub seed: u64,
    /// The precision of matrix products: their operands are rounded to it
    /// (`crate::precision`), here and on every backend.
    pub precision: Precision,
}

impl RunOptions {
    /// f32 products and run seed `seed`.
    pub fn seeded(seed: u64) -> RunOptions {
        RunOptions {
            seed,
            precision: Precision::Fp32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("missing param `{0}`")]
    MissingParam(String),
    #[error(
        "`{name}` has shape {}, but the graph expects {}",
        crate::shape::list(got),
        crate::shape::list(expected)
    )]
    BadShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("the graph has a cycle")]
    Cyclic,
    #[error("node {node} ({op}): {source}")]
    Op {
        /// petgraph index of the failing node.
        node: usize,
        op: String,
        source: OpError,
    },
}

/// The value of every node after a run, indexed by petgraph node index.
/// Slots of removed nodes (a `StableDiGraph` leaves holes) stay `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct Values<F> {
    vals: Vec<Option<Tensor<F>>>,
}

impl<F> Values<F> {
    pub fn get(&self, n: NodeIndex) -> Option<&Tensor<F>> {
        self.vals.get(n.index()).and_then(Option::as_ref)
    }

    /// The value of the graph output called `name`.
    pub fn output(&self, g: &Graph, name: &str) -> Option<&Tensor<F>> {
        g.output(name).and_then(|n| self.get(n))
    }
}

/// Evaluates every node of `g` in its canonical topological order.
pub fn run<F: Float>(
    g: &Graph,
    inputs: &HashMap<String, Tensor<F>>,
    params: &HashMap<String, Tensor<F>>,
    opts: &RunOptions,
) -> Result<Values<F>, InterpError> {
    let order = g.topo_order().ok_or(InterpError::Cyclic)?;
    let mut vals: Vec<Option<Tensor<F>>> = vec![None; g.g.node_bound()];
    for n in order {
        let node = g.node(n);
        let value = match &node.op {
            Op::Input { name } => {
                let t = inputs
                    .get(name)
                    .ok_or_else(|| InterpError::MissingInput(name.clone()))?;
                check_leaf(n, &node.op, name, &node.shape, t)?;
                t.clone()
            }
            Op::Param { name } => {
                let t = params
                    .get(name)
                    .ok_or_else(|| InterpError::MissingParam(name.clone()))?;
                check_leaf(n, &node.op, name, &node.shape, t)?;
                t.clone()
            }
            // Everything else, including the generated `DropoutMask` leaf,
            // is a function of its operands, the node shape and the seed.
            op => {
                let operands = g.operands(n);
                let args: Vec<&Tensor<F>> = operands
                    .iter()
                    .map(|o| {
                        vals[o.index()]
                            .as_ref()
                            .expect("topological order evaluates operands first")
                    })
                    .collect();
                eval_op(op, &node.shape, &args, opts).map_err(|source| InterpError::Op {
                    node: n.index(),
                    op: op.name().to_string(),
                    source,
                })?
            }
        };
        vals[n.index()] = Some(value);
    }
    Ok(Values { vals })
}

/// A supplied input or parameter must have the node's shape, and (since
/// `Tensor`'s fields are public) its data must actually fill that shape, or
/// later kernels would index out of bounds.
fn check_leaf<F>(
    n: NodeIndex,
    op: &Op,
    name: &str,
    shape: &[usize],
    t: &Tensor<F>,
) -> Result<(), InterpError> {
    if t.shape != shape {
        return Err(InterpError::BadShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            got: t.shape.clone(),
        });
    }
    let need: usize = shape.iter().product();
    if t.data.len() != need {
        return Err(InterpError::Op {
            node: n.index(),
            op: op.name().to_string(),
            source: OpError::LeafLength {
                name: name.to_string(),
                len: t.data.len(),
                shape: shape.to_vec(),
                need,
            },
        });
    }
    Ok(())
}

/// Derivative of the surrogate spike function at `x` (= membrane − θ), in
/// f64: its one definition (`ir::scalar::surrogate_derivative`) evaluated.
pub fn surrogate_grad(s: &Surrogate, x: f64) -> f64 {
    crate::ir::scalar_eval::surrogate_derivative_f64(s.kind, s.alpha, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SurrogateKind;
    use std::f64::consts::{FRAC_PI_2, PI};

    /// The smooth step each surrogate is the derivative of.
    fn primitive(s: &Surrogate, x: f64) -> f64 {
        let a = s.alpha;
        match s.kind {
            SurrogateKind::Sigmoid => 1.0 / (1.0 + (-a * x).exp()),
            SurrogateKind::Atan => (FRAC_PI_2 * a * x).atan() / PI + 0.5,
            SurrogateKind::Triangle => {
                // Integral of the triangle from −∞: 0 left of −1/α, 1 right
                // of 1/α, two parabolic pieces meeting at 1/2 in between.
                let w = 1.0 / a;
                if x <= -w {
                    0.0
                } else if x >= w {
                    1.0
                } else if x < 0.0 {
                    0.5 + a * x + 0.5 * a * a * x * x
                } else {
                    0.5 + a * x - 0.5 * a * a * x * x
                }
            }
            // x / (1 + α|x|) has derivative 1 / (1 + α|x|)² on both sides.
            SurrogateKind::FastSigmoid => x / (1.0 + a * x.abs()),
        }
    }

    #[test]
    fn surrogate_grad_matches_finite_differences() {
        let h = 1e-6;
        for kind in SurrogateKind::ALL {
            for alpha in [1.0, 2.0, 4.0] {
                let s = Surrogate { kind, alpha };
                // Avoid the triangle's kinks at 0 and ±1/α, where the
                // central difference averages two one-sided slopes.
                for x in [-1.3, -0.7, -0.3, -0.1, 0.05, 0.15, 0.35, 0.6, 2.0] {
                    let kink = (x.abs() - 1.0 / alpha).abs() < 1e-3;
                    if kind == SurrogateKind::Triangle && kink {
                        continue;
                    }
                    let fd = (primitive(&s, x + h) - primitive(&s, x - h)) / (2.0 * h);
                    let g = surrogate_grad(&s, x);
                    assert!(
                        (fd - g).abs() < 1e-6 * g.abs().max(1.0),
                        "{kind:?} α={alpha} x={x}: grad {g}, finite difference {fd}"
                    );
                }
            }
        }
    }

    #[test]
    fn surrogate_grad_peaks_at_alpha_shape() {
        // At x = 0: sigmoid gives α/4, atan α/2, triangle α.
        let at0 = |kind| surrogate_grad(&Surrogate { kind, alpha: 4.0 }, 0.0);
        assert_eq!(at0(SurrogateKind::Sigmoid), 1.0);
        assert_eq!(at0(SurrogateKind::Atan), 2.0);
        assert_eq!(at0(SurrogateKind::Triangle), 4.0);
        assert_eq!(at0(SurrogateKind::FastSigmoid), 1.0);
        let tri = Surrogate {
            kind: SurrogateKind::Triangle,
            alpha: 4.0,
        };
        assert_eq!(surrogate_grad(&tri, 0.3), 0.0);
    }
}
