//! Argument types and argument groups that more than one command takes.
//! Library types stay free of clap: the CLI's own enums convert into them.

use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

use super::CliError;
use crate::compile;
use crate::passes::rate::Mode;
use crate::runtime::optim::{OptimizerKind, Schedule};

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Bptt,
    Rate,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Bptt => Mode::Bptt,
            ModeArg::Rate => Mode::Rate,
        }
    }
}

/// The modes of a comma-separated `--mode` list.
pub fn modes(list: &[ModeArg]) -> Vec<Mode> {
    list.iter().map(|&m| m.into()).collect()
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adamw,
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(o: OptimizerArg) -> OptimizerKind {
        match o {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adamw => OptimizerKind::Adamw,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    /// Cosine decay to zero over the run.
    Cosine,
    /// The same cosine, updated once per epoch (the official code's
    /// `CosineAnnealingLR`).
    CosineEpochs,
    /// ×0.1 at 50 % and 75 % of the run.
    Step,
    Const,
}

impl From<ScheduleArg> for Schedule {
    fn from(s: ScheduleArg) -> Schedule {
        match s {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::CosineEpochs => Schedule::CosineEpochs,
            ScheduleArg::Step => Schedule::Step,
            ScheduleArg::Const => Schedule::Const,
        }
    }
}

/// One model compiled at one T, mode and batch (`graph`, `plan`).
#[derive(Args)]
pub struct UnrollArgs {
    pub file: PathBuf,
    /// Timesteps to unroll.
    #[arg(short = 'T', long = "steps", default_value_t = 4)]
    pub steps: usize,
    /// bptt: exact rewrites only; rate: rate-based backpropagation.
    #[arg(long, value_enum, default_value_t = ModeArg::Rate)]
    pub mode: ModeArg,
    /// Batch size the shapes are given for.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
}

impl UnrollArgs {
    /// Compiler options stopping after `after`.
    pub fn options(&self, after: compile::Stage, eval: bool) -> compile::Options {
        compile::Options {
            eval,
            after,
            ..compile::Options::new(self.steps, self.batch, self.mode.into())
        }
    }
}

/// A sweep over T and modes at one batch size (`bench`, `report`).
#[derive(Args)]
pub struct SweepArgs {
    pub file: PathBuf,
    /// Comma-separated list of T.
    #[arg(
        short = 'T',
        long = "steps",
        value_delimiter = ',',
        default_value = "1,2,4,8"
    )]
    pub steps: Vec<usize>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bptt,rate")]
    pub mode: Vec<ModeArg>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
}

/// `-o FILE`: where a command's text goes instead of standard output.
#[derive(Args)]
pub struct OutputArg {
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

impl OutputArg {
    pub fn write(&self, text: &str) -> Result<(), CliError> {
        write_out(self.output.as_deref(), text)
    }
}

fn write_out(path: Option<&Path>, text: &str) -> Result<(), CliError> {
    match path {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(p) => std::fs::write(p, text).map_err(|e| CliError::Write {
            path: p.to_path_buf(),
            source: e,
        }),
    }
}
