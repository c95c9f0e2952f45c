//! The `.snn` text format and the Rust builder.
//!
//! A `.snn` file is line oriented: `#` starts a comment, and each remaining
//! line is a header (`model`, `input`, `neuron`), a layer, or the braces of a
//! `residual` block:
//!
//! ```
//! let source = "
//! model tiny_resnet
//! input 1x28x28 encoding=poisson seed=7
//! neuron lambda=0.5 reset=hard   # defaults for every lif/if layer
//! conv2d 16 kernel=3
//! batchnorm
//! lif
//! residual {
//!     conv2d 16
//!     lif
//! } shortcut {
//!     conv2d 16 kernel=1
//! }
//! avgpool 2
//! flatten
//! dropout 0.2
//! linear 10
//! ";
//! let model = snnc::dsl::parse(source, "tiny.snn").unwrap();
//! assert_eq!(model.layers.len(), 8);
//! assert_eq!(snnc::dsl::parse(&snnc::dsl::to_snn(&model), "x.snn").unwrap(), model);
//! ```
//!
//! `parse` turns text into a [`Model`], `to_snn` prints one back, and
//! [`ModelBuilder`] builds the same models in Rust.

mod builder;
mod diag;
mod lexer;
mod parser;
mod printer;

use std::path::{Path, PathBuf};

use crate::model::Model;

pub use builder::{BlockBuilder, ModelBuilder};
pub use diag::{closest, Diagnostic};
pub use printer::to_snn;

/// Every keyword that starts a layer.
pub const LAYER_KEYWORDS: &[&str] = &[
    "conv2d",
    "linear",
    "batchnorm",
    "avgpool",
    "maxpool",
    "flatten",
    "dropout",
    "lif",
    "if",
    "residual",
];

/// `batchnorm`'s defaults; the printer omits them and the builder uses them.
pub(crate) const BATCHNORM_EPS: f64 = 1e-5;
pub(crate) const BATCHNORM_MOMENTUM: f64 = 0.1;

/// Parses `.snn` text. `file_name` only supplies the model's name when the
/// text has no `model` line (its stem, made into a valid name).
pub fn parse(source: &str, file_name: &str) -> Result<Model, Diagnostic> {
    parser::parse(source, file_name)
}

/// Where the shape of the `input` statement is in `.snn` text: 1-based
/// line and column (in characters) and length. The `Input` of a model
/// keeps no position; shape errors about it (a size too large) point here.
pub fn input_shape_span(source: &str) -> Option<(u32, u32, u32)> {
    strip_bom(source).lines().enumerate().find_map(|(i, l)| {
        let toks = lexer::lex_line(l, i as u32 + 1).ok()?;
        match toks.as_slice() {
            [kw, shape, ..] if kw.is_word("input") => Some((shape.line, shape.col, shape.len())),
            [kw] if kw.is_word("input") => Some((kw.line, kw.col, kw.len())),
            _ => None,
        }
    })
}

/// `source` without a leading UTF-8 byte-order mark (editors on Windows
/// write one); the lexer would otherwise see an unexpected character.
pub fn strip_bom(source: &str) -> &str {
    source.strip_prefix('\u{feff}').unwrap_or(source)
}

/// A `.snn` file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Displays as the located diagnostic: message, place, source line,
    /// caret, hint.
    #[error("{}", diag.located(file, text))]
    Parse {
        file: String,
        text: String,
        diag: Diagnostic,
    },
}

/// Reads and parses a `.snn` file, returning the source too so that later
/// errors (shape inference) can be rendered against it.
pub fn parse_file(path: &Path) -> Result<(Model, String), FileError> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| FileError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let source = strip_bom(&source).to_string();
    match parse(&source, &name) {
        Ok(model) => Ok((model, source)),
        Err(diag) => Err(FileError::Parse {
            file: name,
            text: source,
            diag,
        }),
    }
}
