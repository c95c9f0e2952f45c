//! Splits one line of a `.snn` file into tokens.
//!
//! The format is line oriented, so the lexer never sees more than a line:
//! the parser hands it each line in turn and gets back words and braces.

use super::diag::Diagnostic;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokKind {
    /// A run of word characters: keyword, number, shape or `key=value`.
    Word,
    Open,
    Close,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Tok<'a> {
    pub kind: TokKind,
    pub text: &'a str,
    pub line: u32,
    /// 1-based, in characters.
    pub col: u32,
}

impl<'a> Tok<'a> {
    pub fn len(&self) -> u32 {
        self.text.chars().count() as u32
    }

    /// The column just past the token, where a missing follower would go.
    pub fn end_col(&self) -> u32 {
        self.col + self.len()
    }

    pub fn is_word(&self, text: &str) -> bool {
        self.kind == TokKind::Word && self.text == text
    }

    /// An error underlining this whole token.
    pub fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(message, self.line, self.col, self.len())
    }
}

/// Characters that may appear inside a word. Kept narrow so that stray
/// punctuation (`@`, `,`, quotes) is reported where it is rather than being
/// swallowed into a token that later fails with a vaguer message.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '=')
}

pub(crate) fn lex_line(text: &str, line: u32) -> Result<Vec<Tok<'_>>, Diagnostic> {
    let mut toks = Vec::new();
    let mut word: Option<(usize, u32)> = None;
    let mut col = 0;
    for (i, c) in text.char_indices() {
        col += 1;
        if is_word_char(c) {
            word.get_or_insert((i, col));
            continue;
        }
        let interrupted = word;
        if let Some((start, start_col)) = word.take() {
            toks.push(Tok {
                kind: TokKind::Word,
                text: &text[start..i],
                line,
                col: start_col,
            });
        }
        let kind = match c {
            '#' => return Ok(toks),
            ' ' | '\t' | '\r' => continue,
            '{' => TokKind::Open,
            '}' => TokKind::Close,
            '×' | '*' => return Err(times_sign(text, i, interrupted, line, col)),
            _ => return Err(bad_char(c, line, col)),
        };
        toks.push(Tok {
            kind,
            text: &text[i..i + c.len_utf8()],
            line,
            col,
        });
    }
    if let Some((start, start_col)) = word {
        toks.push(Tok {
            kind: TokKind::Word,
            text: &text[start..],
            line,
            col: start_col,
        });
    }
    Ok(toks)
}

/// `1×28×28` (as `snnc check` prints shapes) or `1*28*28`: point at the
/// sign and show the shape written with `x`. `word` is the start of the
/// word the sign interrupts, if it follows one.
fn times_sign(
    text: &str,
    at: usize,
    word: Option<(usize, u32)>,
    line: u32,
    col: u32,
) -> Diagnostic {
    let c = text[at..].chars().next().unwrap_or('×');
    let start = word.map_or(at, |(s, _)| s);
    let end = text[at..]
        .char_indices()
        .find(|&(_, c)| !(is_word_char(c) || c == '×' || c == '*'))
        .map_or(text.len(), |(j, _)| at + j);
    let shape: String = text[start..end]
        .chars()
        .map(|c| if c == '×' || c == '*' { 'x' } else { c })
        .collect();
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    // `input 1×28×28`: the word before the shape is not part of it.
    let shape = shape.rsplit('=').next().unwrap_or_default();
    let d = bad_char(c, line, col);
    if shape.split('x').all(digits) {
        d.with_hint(format!(
            "write `{shape}`: dimensions are separated by the letter `x`"
        ))
    } else if c == '×' {
        d.with_hint("dimensions are separated by the letter `x`, e.g. `1x28x28`")
    } else {
        d
    }
}

fn bad_char(c: char, line: u32, col: u32) -> Diagnostic {
    let d = Diagnostic::new(
        format!("unexpected character `{}`", c.escape_debug()),
        line,
        col,
        1,
    );
    match c {
        ',' | ';' => d.with_hint("separate arguments and options with spaces"),
        ':' => d.with_hint("options are written `key=value`"),
        '"' | '\'' => d.with_hint("values are written without quotes"),
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<(&str, u32)> {
        lex_line(line, 1)
            .unwrap()
            .into_iter()
            .map(|t| (t.text, t.col))
            .collect()
    }

    #[test]
    fn words_braces_and_comments() {
        assert_eq!(
            texts("\tconv2d 32 kernel=3# c"),
            [("conv2d", 2), ("32", 9), ("kernel=3", 12)]
        );
        assert_eq!(texts("}shortcut{"), [("}", 1), ("shortcut", 2), ("{", 10)]);
        assert_eq!(texts("   # only a comment"), []);
        assert_eq!(texts("v_reset=-1e-5\r"), [("v_reset=-1e-5", 1)]);
    }

    #[test]
    fn bad_character() {
        let e = lex_line("linear 10 @", 4).unwrap_err();
        assert_eq!((e.line, e.col, e.len), (4, 11, 1));
        let e = lex_line("lif θ=1", 1).unwrap_err();
        assert_eq!((e.col, e.message.as_str()), (5, "unexpected character `θ`"));
    }
}
