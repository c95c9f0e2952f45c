//! Errors that point into a `.snn` source, rendered the way rustc does.
//!
//! The parser produces them, and later stages (shape inference) reuse them to
//! point at a layer's `Pos`, so nothing here knows about the `.snn` grammar.

use std::fmt;

use crate::model::{Layer, Pos};

/// An error at a place in a source file.
///
/// `line` and `col` are 1-based and count characters, not bytes; `len` is how
/// many characters the caret underlines. A `line` of 0 means "no position"
/// (a model built in Rust): `render` then prints only the message and hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub line: u32,
    pub col: u32,
    pub len: u32,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, line: u32, col: u32, len: u32) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            line,
            col,
            len: len.max(1),
            hint: None,
        }
    }

    /// An error `len` characters wide starting at `pos`.
    pub fn at(message: impl Into<String>, pos: Pos, len: u32) -> Diagnostic {
        Diagnostic::new(message, pos.line, pos.col, len)
    }

    /// An error underlining the keyword that starts `layer`.
    pub fn at_layer(message: impl Into<String>, layer: &Layer) -> Diagnostic {
        let len = layer.kind.keyword().chars().count() as u32;
        Diagnostic::at(message, layer.pos, len)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// The error as a user sees it: message, location, the source line with a
    /// caret under the offending text, and the hint. No colors and no
    /// trailing newline, so the output is stable enough for snapshots.
    pub fn render(&self, file_name: &str, source: &str) -> String {
        format!("error: {}", self.located(file_name, source))
    }

    /// [`render`](Diagnostic::render) without the leading `error: `: the
    /// message, then the location, source line, caret and hint. This is
    /// how the error displays inside a stage's error type; the CLI adds
    /// the prefix when it prints.
    pub fn located(&self, file_name: &str, source: &str) -> String {
        let source = super::strip_bom(source);
        let mut out = self.message.clone();
        let line_no = self.line.to_string();
        let pad = " ".repeat(line_no.len());
        if self.line > 0 {
            let col = self.col.max(1);
            // Tabs become one space because the lexer counts a tab as one
            // column; anything wider would push the caret off its token.
            let text: String = source
                .lines()
                .nth(self.line as usize - 1)
                .unwrap_or("")
                .chars()
                .map(|c| if c == '\t' || c == '\r' { ' ' } else { c })
                .collect();
            out.push_str(&format!("\n{pad}--> {file_name}:{}:{col}", self.line));
            out.push_str(&format!("\n{pad} |"));
            out.push_str(format!("\n{line_no} | {text}").trim_end());
            out.push_str(&format!(
                "\n{pad} | {}{}",
                " ".repeat(col as usize - 1),
                "^".repeat(self.len.max(1) as usize)
            ));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("\n{pad} = hint: {hint}"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// The candidate nearest to `word` by edit distance, if it is near enough to
/// be a plausible typo: within `max(2, len/3)` edits, and fewer edits than
/// `word` has characters (so `x` does not become `if`). Ties go to the
/// earliest candidate.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let len = word.chars().count();
    let limit = 2.max(len / 3);
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|&(d, _)| d <= limit && (d < len || d == 0))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("conv3d", "conv2d"), 1);
    }

    #[test]
    fn suggestions() {
        let kws = ["conv2d", "linear", "lif", "if"];
        assert_eq!(closest("conv3d", &kws), Some("conv2d"));
        assert_eq!(closest("lienar", &kws), Some("linear"));
        assert_eq!(closest("lf", &kws), Some("lif"));
        assert_eq!(closest("x", &kws), None);
        assert_eq!(closest("banana", &kws), None);
        assert_eq!(closest("if", &kws), Some("if"));
    }

    #[test]
    fn render_without_position() {
        let d = Diagnostic::new("something broke", 0, 0, 1).with_hint("try again");
        assert_eq!(
            d.render("m.snn", ""),
            "error: something broke\n  = hint: try again"
        );
    }

    #[test]
    fn render_wide_gutter_and_tabs() {
        let src = "\n\n\n\n\n\n\n\n\n\tlinear 10 @\n";
        let d = Diagnostic::new("unexpected character `@`", 10, 12, 1);
        assert_eq!(
            d.render("m.snn", src),
            "error: unexpected character `@`\n  --> m.snn:10:12\n   |\n10 |  linear 10 @\n   |            ^"
        );
    }
}
