//! The front-end driver: a model file (or a model's text kept in a
//! checkpoint) to a shape-checked `Model`, with every error located at its
//! place in the source.

use crate::dsl::{self, Diagnostic, FileError};
use crate::model::Model;
use crate::shape::{self, Analysis, ShapeError};
use std::path::Path;

/// A model that could not be read, parsed or shape-checked. Parse and
/// shape errors display as located diagnostics (message, place, source
/// line, caret, hint); the CLI adds `error: ` when it prints one.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}", located_shape_error(error, file, text))]
    // Boxed: every stage's error embeds this one, and a `Result` should
    // stay small (clippy::result_large_err).
    Shape {
        file: String,
        text: String,
        error: Box<ShapeError>,
    },
}

/// A shape error in the model `file` whose text is `source`.
pub fn shape_error(e: &ShapeError, file: &str, source: &str) -> FrontendError {
    FrontendError::Shape {
        file: file.to_string(),
        text: source.to_string(),
        error: Box::new(e.clone()),
    }
}

/// A shape error at its layer's position in the source.
fn located_shape_error(e: &ShapeError, file: &str, source: &str) -> String {
    let (mut pos, mut len) = (e.pos, e.keyword.len() as u32);
    if pos.line == 0 && e.keyword == "input" {
        // `Input` keeps no position; errors about it point at its shape.
        if let Some((line, col, n)) = dsl::input_shape_span(source) {
            (pos, len) = (crate::model::Pos { line, col }, n);
        }
    }
    if pos.line == 0 {
        return e.to_string();
    }
    let message = if e.keyword == "input" {
        e.message.clone()
    } else {
        format!("layer {} `{}`: {}", e.path, e.keyword, e.message)
    };
    Diagnostic {
        message,
        line: pos.line,
        col: pos.col,
        len,
        hint: e.hint.clone(),
    }
    .located(file, source)
}

/// Parses and shape-checks a model file.
pub fn load(path: &Path) -> Result<(Model, Analysis), FrontendError> {
    load_with_source(path).map(|(m, a, _)| (m, a))
}

/// [`load`], with the file's text (for locating later errors in it).
pub fn load_with_source(path: &Path) -> Result<(Model, Analysis, String), FrontendError> {
    let (model, source) = dsl::parse_file(path)?;
    let analysis = shape::analyze(&model)
        .map_err(|e| shape_error(&e, &path.display().to_string(), &source))?;
    Ok((model, analysis, source))
}

/// Parses a model's text (a checkpoint's copy of its `.snn` file; `file`
/// names it in errors).
pub fn parse_source(source: &str, file: &str) -> Result<Model, FrontendError> {
    dsl::parse(source, file).map_err(|diag| {
        FrontendError::File(FileError::Parse {
            file: file.to_string(),
            text: source.to_string(),
            diag,
        })
    })
}

/// [`parse_source`] and shape inference.
pub fn check_source(source: &str, file: &str) -> Result<(Model, Analysis), FrontendError> {
    let model = parse_source(source, file)?;
    let a = shape::analyze(&model).map_err(|e| shape_error(&e, file, source))?;
    Ok((model, a))
}
