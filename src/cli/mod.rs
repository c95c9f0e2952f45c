//! The `snnc` command line: one module per command, each with its clap
//! arguments and its body; argument groups several commands share are in
//! `args`; every error is rendered once, in `error`.

mod args;
mod bench;
mod check;
pub mod cuda_check;
mod data;
mod emit;
mod error;
mod eval;
mod export;
mod grad_check;
mod graph;
mod import;
mod plan;
mod report;
mod rules;
mod run;
mod train;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

pub use bench::BenchPlan;
pub use error::{render, CliError};
pub use train::DEFAULT_MODEL;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Parser)]
#[command(
    name = "snnc",
    version,
    about = "Compile and train deep spiking neural networks",
    long_about = "snnc compiles a spiking network written in the .snn DSL: it unrolls the model \
over T timesteps, differentiates it, and (in rate mode) collapses the temporal backward \
into rate-based derivatives.\n\nRun `snnc check FILE` to see a model's layers and sizes."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// The rate pass's limit on e-nodes per region (default 200000). Its
    /// e-graphs grow with T: raise it when a large -T stops at the limit.
    #[arg(long, global = true, value_name = "N")]
    egraph_node_limit: Option<usize>,
    /// Seconds the rate pass may rewrite one region (default 30).
    #[arg(long, global = true, value_name = "SECS")]
    egraph_time_limit: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse a model, infer its shapes and print a layer table.
    Check(check::CheckArgs),
    /// Print the graph after a compiler stage, as text, Graphviz DOT or stats.
    Graph(graph::GraphArgs),
    /// Print a schedule's execution order and memory plan: every node with
    /// the bytes live while it runs, then every buffer with its size, arena
    /// offset and lifetime.
    Plan(plan::PlanArgs),
    /// Run the forward pass on a random input with the reference interpreter
    /// and print the outputs and per-layer firing rates.
    Run(run::RunArgs),
    /// Write a trained network as a NIR graph (batch norm folded into the
    /// layer before it).
    Export(export::ExportArgs),
    /// Read a NIR graph as a .snn model and a parameter file.
    Import(import::ImportArgs),
    /// Train a model (default: the 8×8-digits MLP on the embedded digits set).
    Train(Box<train::TrainArgs>),
    /// Test accuracy of a checkpoint (a run folder or its .safetensors file).
    Eval(eval::EvalArgs),
    /// List the rate pass's rewrite rules: name, exact or approximate, identity.
    Rules(rules::RulesArgs),
    /// Per parameter, cosine similarity and norm ratio of rate vs BPTT
    /// gradients on a random batch (random initialisation).
    GradCheck(grad_check::GradCheckArgs),
    /// Median training-step time of the CPU executor, per mode and T.
    Bench(bench::BenchArgs),
    /// Run the example models on the GPU and on the CPU executor and compare
    /// every output and every node (exits non-zero on a mismatch; without a
    /// GPU it says why and skips, unless --require-gpu).
    CudaCheck(cuda_check::CudaCheckArgs),
    /// Write the generated kernels (one file per kernel) and a manifest of
    /// launches and buffers.
    Emit(emit::EmitArgs),
    /// Datasets: make the synthetic event set, inspect event files.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Bytes kept for the backward and FLOPs, per mode and T.
    Report(report::ReportArgs),
}

/// Parses the command line, runs the command, and prints its error.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let args = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match dispatch(args, &matches) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", render(&e));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: Cli, matches: &clap::ArgMatches) -> Result<ExitCode, CliError> {
    if let Some(s) = args.egraph_time_limit {
        if !(s.is_finite() && s > 0.0) {
            return Err(CliError::usage(format!(
                "--egraph-time-limit must be a positive number of seconds, got {s}"
            )));
        }
    }
    crate::passes::rate::set_default_limits(
        args.egraph_node_limit,
        args.egraph_time_limit
            .map(std::time::Duration::from_secs_f64),
    );
    match args.cmd {
        Cmd::Check(a) => check::run(a)?,
        Cmd::Graph(a) => graph::run(a)?,
        Cmd::Plan(a) => plan::run(a)?,
        Cmd::Run(a) => run::run(a)?,
        Cmd::Export(a) => export::run(a)?,
        Cmd::Import(a) => import::run(a)?,
        Cmd::Train(a) => {
            let sub = matches.subcommand_matches("train").expect("train");
            if train::run(*a, train::explicit_flags(sub))? {
                // Interrupted: the checkpoint is saved and the message printed.
                return Ok(ExitCode::from(130));
            }
        }
        Cmd::Eval(a) => eval::run(a)?,
        Cmd::Rules(a) => rules::run(a),
        Cmd::GradCheck(a) => grad_check::run(a)?,
        Cmd::Bench(a) => bench::run(a)?,
        Cmd::CudaCheck(a) => cuda_check::run(a)?,
        Cmd::Emit(a) => emit::run(a)?,
        Cmd::Data(c) => data::run(c)?,
        Cmd::Report(a) => report::run(a)?,
    }
    Ok(ExitCode::SUCCESS)
}
