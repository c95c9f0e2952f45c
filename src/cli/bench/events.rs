//! `snnc bench --events`: where a convolution over sparse inputs (spikes)
//! is faster as events than dense (oneDNN's convolution where the CPU
//! backend has it, else im2col + SGEMM).
//!
//! For every distinct forward convolution of the model (at the bench's
//! batch size), the two paths run the same op on random inputs of each
//! density in [`DENSITIES`] (each element nonzero with that probability,
//! uniform in (0, 1] then: spike counts over steps, pooled spikes), side
//! by side; the table gives the median times and the crossover density,
//! the number `exec::EVENT_DENSITY` (beside im2col + SGEMM) and
//! `exec::EVENT_DENSITY_LIBRARY` (beside oneDNN) are set from.

use crate::cli::CliError;
use crate::codegen::cpu::Cpu;
use crate::codegen::exec::Executor;
use crate::interp::RunOptions;
use crate::ir::{Graph, Op};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Input densities (fractions of nonzero elements) the bench times.
pub const DENSITIES: [f64; 8] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6];

/// One convolution's times at one density.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EventsRow {
    /// `ci×h×w → co×ho×wo, k, stride, padding`.
    pub conv: String,
    pub batch: usize,
    pub density: f64,
    pub dense_seconds: f64,
    pub events_seconds: f64,
}

/// Random values: each element nonzero with probability `density`.
fn sparse(shape: &[usize], density: f64, seed: u64) -> Tensor<f32> {
    let mut r = crate::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            if r.range(0.0, 1.0) < density {
                r.range(0.0, 1.0) as f32 + f32::EPSILON
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(shape, data)
}

/// The distinct forward convolutions of `g`: (input shape, weight shape,
/// stride, padding).
fn convolutions(g: &Graph) -> Vec<(Vec<usize>, Vec<usize>, usize, usize)> {
    let mut out: Vec<(Vec<usize>, Vec<usize>, usize, usize)> = Vec::new();
    for n in g.g.node_indices() {
        if let Op::Conv2d { stride, padding } = g.node(n).op {
            let ops = g.operands(n);
            let key = (
                g.node(ops[0]).shape.clone(),
                g.node(ops[1]).shape.clone(),
                stride,
                padding,
            );
            if !out.contains(&key) {
                out.push(key);
            }
        }
    }
    out
}

/// Median seconds of `repeats` runs of `g` with the event threshold set
/// to `threshold` (negative: always dense; 1: events wherever allowed).
fn time_path(
    cpu: &mut Cpu,
    g: &Graph,
    inputs: &HashMap<String, Tensor<f32>>,
    params: &HashMap<String, Tensor<f32>>,
    threshold: f64,
    repeats: usize,
) -> Result<(f64, Tensor<f32>), CliError> {
    // The convolution's own unit (inputs: the copies a run makes of them
    // are not the convolution's time).
    let conv = g.outputs[0].1;
    let order: Vec<_> = g.topo_order().expect("a convolution graph is acyclic");
    let unit = order.iter().position(|&n| n == conv).expect("in the order");
    let mut ex = Executor::with_order(cpu, g, order)?;
    ex.event_density = threshold;
    ex.time_units = true;
    let mut out = ex.run(inputs, params, &RunOptions::seeded(0))?;
    let mut times = Vec::new();
    for _ in 0..repeats {
        out = ex.run(inputs, params, &RunOptions::seeded(0))?;
        times.push(ex.unit_seconds()[unit]);
    }
    times.sort_by(f64::total_cmp);
    let y = out.remove("y").expect("the graph's output");
    Ok((times[times.len() / 2], y))
}

/// Times both paths of every convolution of `g` at every density.
pub fn bench_events(g: &Graph, repeats: usize) -> Result<Vec<EventsRow>, CliError> {
    let mut cpu = Cpu::new().map_err(|source| CliError::Backend {
        command: "bench --events",
        source,
    })?;
    let mut rows = Vec::new();
    for (x, w, stride, padding) in convolutions(g) {
        let fwd = Graph::single_op(
            "snnc bench --events",
            Op::Conv2d { stride, padding },
            &x,
            &w,
        );
        let y = fwd.node(fwd.outputs[0].1).shape.clone();
        let conv = format!(
            "{}×{}×{} → {}×{}×{}, k {}, stride {stride}, padding {padding}",
            x[1], x[2], x[3], y[1], y[2], y[3], w[2]
        );
        time_densities(&mut cpu, &conv, &fwd, (&x, &w), repeats, &mut rows)?;
    }
    Ok(rows)
}

/// Both paths of the convolution op of `cg` at every density: `x` the
/// sparse input's shape, `other` the second operand's (dense).
fn time_densities(
    cpu: &mut Cpu,
    conv: &str,
    cg: &Graph,
    (x, other): (&[usize], &[usize]),
    repeats: usize,
    rows: &mut Vec<EventsRow>,
) -> Result<(), CliError> {
    let params = HashMap::from([("w".to_string(), sparse(other, 1.0, 1))]);
    {
        for (i, &density) in DENSITIES.iter().enumerate() {
            let inputs = HashMap::from([("x".to_string(), sparse(x, density, 2 + i as u64))]);
            let (dense, yd) = time_path(cpu, cg, &inputs, &params, -1.0, repeats)?;
            let (events, ye) = time_path(cpu, cg, &inputs, &params, 1.0, repeats)?;
            // The two paths add the same products in different orders.
            let err = crate::compare::rel_err(&ye, &yd, 1e-2, 0.0);
            if err > 1e-4 {
                return Err(CliError::Msg(format!(
                    "{conv}: the event path differs from the dense one by {err:e}"
                )));
            }
            rows.push(EventsRow {
                conv: conv.to_string(),
                batch: x[0],
                density,
                dense_seconds: dense,
                events_seconds: events,
            });
        }
    }
    Ok(())
}

/// The table, and per convolution the density where the event path stops
/// being faster.
pub fn print(rows: &[EventsRow]) {
    let (dense, threshold) = match crate::codegen::cpu::conv::available() {
        true => (
            crate::codegen::cpu::conv::describe(),
            "EVENT_DENSITY_LIBRARY",
        ),
        false => ("im2col + SGEMM".to_string(), "EVENT_DENSITY"),
    };
    let limit = match crate::codegen::cpu::conv::available() {
        true => crate::codegen::exec::EVENT_DENSITY_LIBRARY,
        false => crate::codegen::exec::EVENT_DENSITY,
    };
    println!(
        "Convolutions over sparse inputs on the CPU: median of the forward dense ({dense}) and as events (snnc_conv_events: each nonzero input adds its weight rows); snnc uses events up to {:.0} % nonzero here (exec::{threshold})",
        100.0 * limit
    );
    println!(
        "{:<48} {:>6} {:>9} {:>10} {:>10} {:>8}",
        "convolution", "batch", "nonzero", "dense ms", "events ms", "events/dense"
    );
    let mut convs: Vec<&str> = Vec::new();
    for r in rows {
        if !convs.contains(&r.conv.as_str()) {
            convs.push(&r.conv);
        }
        println!(
            "{:<48} {:>6} {:>8.0}% {:>10.3} {:>10.3} {:>8.2}",
            r.conv,
            r.batch,
            100.0 * r.density,
            r.dense_seconds * 1e3,
            r.events_seconds * 1e3,
            r.events_seconds / r.dense_seconds
        );
    }
    for c in convs {
        let faster: Vec<f64> = rows
            .iter()
            .filter(|r| r.conv == c && r.events_seconds < r.dense_seconds)
            .map(|r| r.density)
            .collect();
        match faster
            .iter()
            .cloned()
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))))
        {
            Some(d) => println!("{c}: events faster up to {:.0} % nonzero", 100.0 * d),
            None => println!("{c}: events never faster"),
        }
    }
}
