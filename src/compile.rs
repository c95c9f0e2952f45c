//! The pipeline: unroll → autodiff → rate pass → dce → cse, stoppable after any
//! stage so that each intermediate graph can be printed and tested.

use crate::autodiff;
use crate::ir::{self, Graph};
use crate::model::{Layer, LayerKind, Model};
use crate::passes::rate::{self, Limits, Mode, RegionStats};
use crate::passes::{self, dce};
use crate::shape::ShapeError;
use crate::unroll::{self, Phase, UnrollConfig};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
pub enum Stage {
    /// The time-unrolled forward graph.
    Unrolled,
    /// Forward + loss + BPTT backward.
    Autodiff,
    /// After the rate pass (exact rules in bptt mode, + decorrelate in rate mode).
    Rate,
    /// After dead-code elimination.
    Dce,
    /// After common-subexpression elimination (time-invariant work hoisted
    /// out of the steps): the graph later stages consume.
    Cse,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub steps: usize,
    pub batch: usize,
    /// Evaluation graphs stop after unrolling (no loss, no backward).
    pub eval: bool,
    pub mode: Mode,
    pub after: Stage,
    pub limits: Limits,
}

impl Options {
    pub fn new(steps: usize, batch: usize, mode: Mode) -> Options {
        Options {
            steps,
            batch,
            eval: false,
            mode,
            after: Stage::Cse,
            limits: Limits::default(),
        }
    }
}

pub struct Compiled {
    pub graph: Graph,
    pub regions: Vec<RegionStats>,
    /// Seconds spent in each stage that ran.
    pub timings: Vec<(Stage, f64)>,
}

/// Layers that `mode` cannot compile yet, found before any pass runs, so
/// that the error names the layer's line rather than a region of the
/// backward graph: in rate mode, max pooling whose windows overlap or
/// leave gaps (stride ≠ kernel) has no rate rule (`maxpool-mask` needs
/// non-overlapping windows).
pub fn check_mode(model: &Model, mode: Mode) -> Result<(), ShapeError> {
    fn walk(list: &[Layer], prefix: &str, mode: Mode) -> Result<(), ShapeError> {
        for (i, layer) in list.iter().enumerate() {
            let path = format!("{prefix}{i}");
            match &layer.kind {
                LayerKind::MaxPool { kernel, stride } if mode == Mode::Rate && kernel != stride => {
                    let how = if stride < kernel {
                        "overlapping"
                    } else {
                        "gapped"
                    };
                    return Err(ShapeError {
                        path,
                        keyword: "maxpool",
                        pos: layer.pos,
                        message: format!(
                            "rate mode does not support max pooling with {how} windows yet \
                             (kernel {kernel}, stride {stride}): its rate rule needs \
                             stride = kernel"
                        ),
                        hint: Some(format!(
                            "train this model with `--mode bptt`, or write `maxpool {kernel}` \
                             (stride = kernel) or `avgpool {kernel} stride={stride}`"
                        )),
                    });
                }
                LayerKind::Residual { main, shortcut } => {
                    walk(main, &format!("{path}.main."), mode)?;
                    walk(shortcut, &format!("{path}.shortcut."), mode)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(&model.layers, "", mode)
}

/// A shape error as one line with its position, for callers that have no
/// source to render it against.
pub fn located(e: &ShapeError) -> String {
    if e.pos.line == 0 {
        format!("error: {e}")
    } else {
        format!(
            "error: {e}\n --> line {}, column {}{}",
            e.pos.line,
            e.pos.col,
            e.hint
                .as_ref()
                .map(|h| format!("\n  = hint: {h}"))
                .unwrap_or_default()
        )
    }
}

pub fn compile(model: &Model, opts: &Options) -> Result<Compiled, String> {
    if !opts.eval && opts.after > Stage::Autodiff {
        check_mode(model, opts.mode).map_err(|e| located(&e))?;
    }
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |stage, timings: &mut Vec<(Stage, f64)>| {
        timings.push((stage, clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    let cfg = UnrollConfig {
        steps: opts.steps,
        batch: opts.batch,
        phase: if opts.eval { Phase::Eval } else { Phase::Train },
    };
    let mut g = unroll::unroll_with(model, &cfg).map_err(|e| format!("error: {e}"))?;
    lap(Stage::Unrolled, &mut timings);
    let mut regions = Vec::new();
    if opts.after > Stage::Unrolled {
        if opts.eval {
            return Err("error: an evaluation graph has no backward; use --after unrolled".into());
        }
        g = autodiff::autodiff(&g).map_err(|e| format!("error: {e}"))?;
        lap(Stage::Autodiff, &mut timings);
    }
    if opts.after > Stage::Autodiff {
        let (r, stats) =
            rate::rate_pass(g, opts.mode, &opts.limits).map_err(|e| format!("error: {e}"))?;
        g = r;
        regions = stats;
        lap(Stage::Rate, &mut timings);
    }
    if opts.after > Stage::Rate {
        g = passes::run_pipeline(g, &[dce::PASS], None).map_err(|e| format!("error: {e}"))?;
        lap(Stage::Dce, &mut timings);
    }
    if opts.after > Stage::Dce {
        g = passes::run_pipeline(g, &[passes::cse::PASS], None)
            .map_err(|e| format!("error: {e}"))?;
        lap(Stage::Cse, &mut timings);
    }
    ir::verify(&g).map_err(|e| format!("error: internal: {e}"))?;
    Ok(Compiled {
        graph: g,
        regions,
        timings,
    })
}

/// [`crate::frontend::load`], and checks that every mode in `modes` can
/// compile the model ([`check_mode`]), with errors rendered at the layer's
/// line.
pub fn load_for(
    path: &std::path::Path,
    modes: &[Mode],
) -> Result<(crate::model::Model, crate::shape::Analysis), String> {
    let (model, analysis, source) = crate::frontend::load_with_source(path)?;
    let file = path.display().to_string();
    for &mode in modes {
        check_mode(&model, mode)
            .map_err(|e| crate::frontend::render_shape_error(&e, &file, &source))?;
    }
    Ok((model, analysis))
}
