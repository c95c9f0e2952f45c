//! The front-end driver: a model file to a shape-checked `Model`, with
//! every error rendered at its place in the source.

use crate::dsl::{self, Diagnostic};
use crate::model::Model;
use crate::shape::{self, Analysis, ShapeError};
use std::path::Path;

/// Renders a shape error at its layer's position in the source.
pub fn render_shape_error(e: &ShapeError, file: &str, source: &str) -> String {
    let (mut pos, mut len) = (e.pos, e.keyword.len() as u32);
    if pos.line == 0 && e.keyword == "input" {
        // `Input` keeps no position; errors about it point at its shape.
        if let Some((line, col, n)) = dsl::input_shape_span(source) {
            (pos, len) = (crate::model::Pos { line, col }, n);
        }
    }
    if pos.line == 0 {
        return format!("error: {e}");
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
    .render(file, source)
}

/// Parses and shape-checks a model file.
pub fn load(path: &Path) -> Result<(Model, Analysis), String> {
    load_with_source(path).map(|(m, a, _)| (m, a))
}

/// [`load`], with the file's text (for rendering later errors in it).
pub fn load_with_source(path: &Path) -> Result<(Model, Analysis, String), String> {
    let (model, source) = dsl::parse_file(path)?;
    let analysis = shape::analyze(&model)
        .map_err(|e| render_shape_error(&e, &path.display().to_string(), &source))?;
    Ok((model, analysis, source))
}
