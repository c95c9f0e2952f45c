//! The front-end driver: a model file to a shape-checked `Model`, with
//! every error rendered at its place in the source.

use crate::dsl::{self, Diagnostic};
use crate::model::Model;
use crate::shape::{self, Analysis, ShapeError};
use std::path::Path;

/// Renders a shape error at its layer's position in the source.
pub fn render_shape_error(e: &ShapeError, file: &str, source: &str) -> String {
    if e.pos.line == 0 {
        return format!("error: {e}");
    }
    Diagnostic {
        message: format!("layer {} `{}`: {}", e.path, e.keyword, e.message),
        line: e.pos.line,
        col: e.pos.col,
        len: e.keyword.len() as u32,
        hint: e.hint.clone(),
    }
    .render(file, source)
}

/// Parses and shape-checks a model file.
pub fn load(path: &Path) -> Result<(Model, Analysis), String> {
    let (model, source) = dsl::parse_file(path)?;
    let analysis = shape::analyze(&model)
        .map_err(|e| render_shape_error(&e, &path.display().to_string(), &source))?;
    Ok((model, analysis))
}
