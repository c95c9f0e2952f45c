//! `.snn` text to `Model`.
//!
//! Each line is one statement: a header (`model`, `input`, `neuron`), a
//! layer, or block punctuation for `residual`. Every line with arguments is
//! checked against a declarative `Spec`, so that unknown options, bad values
//! and range errors are reported the same way for every keyword.

use std::path::Path;

use super::diag::{closest, Diagnostic};
use super::lexer::{lex_line, Tok, TokKind};
use super::LAYER_KEYWORDS;
use crate::model::{
    Encoding, Input, Layer, LayerKind, MaxPoolRule, Model, NeuronKind, NeuronOpts, Pos, Reset,
    SurrogateKind,
};
use crate::shape::{nesting_hint, MAX_NESTING};

const HEADER_KEYWORDS: &[&str] = &["model", "input", "neuron"];

/// What a value must look like, and the range it must lie in.
#[derive(Clone, Copy)]
enum Kind {
    /// A non-negative integer that fits a `usize`; `nonzero` for counts
    /// and strides, not for padding.
    Size {
        nonzero: bool,
    },
    /// Any non-negative 64-bit integer.
    Seed,
    Float(Range),
    Bool,
    Choice(&'static [&'static str]),
    /// `N` or `CxHxW`.
    Shape,
    /// A model name: `[A-Za-z_][A-Za-z0-9_-]*`.
    Name,
}

#[derive(Clone, Copy)]
enum Range {
    Any,
    /// (0, ∞)
    Positive,
    /// [0, 1]
    Unit,
    /// [0, 1)
    UnitOpen,
    /// [1, ∞)
    AtLeastOne,
}

struct Param {
    name: &'static str,
    kind: Kind,
}

const fn param(name: &'static str, kind: Kind) -> Param {
    Param { name, kind }
}

struct Spec {
    keyword: &'static str,
    /// The one positional argument some keywords take: what it is (for
    /// messages) and its kind.
    positional: Option<(&'static str, Kind)>,
    options: &'static [Param],
    /// A complete line, shown when the positional argument is missing.
    example: &'static str,
}

const SIZE: Kind = Kind::Size { nonzero: true };

const NEURON_OPTIONS: &[Param] = &[
    param("lambda", Kind::Float(Range::Unit)),
    // The time constant form of the leak, λ = 1 − 1/τ (the paper's code,
    // spikingjelly); read as `lambda`.
    param("tau", Kind::Float(Range::AtLeastOne)),
    param("theta", Kind::Float(Range::Positive)),
    param("reset", Kind::Choice(&["soft", "hard"])),
    param("v_reset", Kind::Float(Range::Any)),
    param("detach_reset", Kind::Bool),
    param(
        "surrogate",
        Kind::Choice(&["sigmoid", "atan", "triangle", "fast_sigmoid"]),
    ),
    param("alpha", Kind::Float(Range::Positive)),
];

/// `if` takes every neuron option but `lambda` and `tau` (it fixes λ = 1).
const IF_OPTIONS: &[Param] = NEURON_OPTIONS.split_at(2).1;

const SPECS: &[Spec] = &[
    Spec {
        keyword: "model",
        positional: Some(("name", Kind::Name)),
        options: &[],
        example: "model my_net",
    },
    Spec {
        keyword: "input",
        positional: Some(("shape", Kind::Shape)),
        options: &[
            param("encoding", Kind::Choice(&["direct", "poisson", "events"])),
            param("seed", Kind::Seed),
        ],
        example: "input 1x28x28",
    },
    Spec {
        keyword: "neuron",
        positional: None,
        options: NEURON_OPTIONS,
        example: "neuron lambda=0.5",
    },
    Spec {
        keyword: "conv2d",
        positional: Some(("output channels", SIZE)),
        options: &[
            param("kernel", SIZE),
            param("stride", SIZE),
            param("padding", Kind::Size { nonzero: false }),
            param("bias", Kind::Bool),
        ],
        example: "conv2d 32 kernel=3",
    },
    Spec {
        keyword: "linear",
        positional: Some(("output features", SIZE)),
        options: &[param("bias", Kind::Bool)],
        example: "linear 10",
    },
    Spec {
        keyword: "batchnorm",
        positional: None,
        options: &[
            param("eps", Kind::Float(Range::Positive)),
            param("momentum", Kind::Float(Range::Unit)),
        ],
        example: "batchnorm",
    },
    Spec {
        keyword: "avgpool",
        positional: Some(("kernel size", SIZE)),
        options: &[
            param("stride", SIZE),
            param("padding", Kind::Size { nonzero: false }),
        ],
        example: "avgpool 2",
    },
    Spec {
        keyword: "maxpool",
        positional: Some(("kernel size", SIZE)),
        options: &[
            param("stride", SIZE),
            param("padding", Kind::Size { nonzero: false }),
            param("rate_rule", Kind::Choice(&["masks", "rates"])),
        ],
        example: "maxpool 2",
    },
    Spec {
        keyword: "flatten",
        positional: None,
        options: &[],
        example: "flatten",
    },
    Spec {
        keyword: "dropout",
        positional: Some(("probability", Kind::Float(Range::UnitOpen))),
        options: &[],
        example: "dropout 0.5",
    },
    Spec {
        keyword: "lif",
        positional: None,
        options: NEURON_OPTIONS,
        example: "lif",
    },
    Spec {
        keyword: "if",
        positional: None,
        options: IF_OPTIONS,
        example: "if",
    },
];

fn spec(keyword: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.keyword == keyword)
}

#[derive(Clone, Debug)]
enum Value<'a> {
    Size(usize),
    Seed(u64),
    Float(f64),
    Bool(bool),
    Choice(&'static str),
    Shape(Vec<usize>),
    Name(&'a str),
}

struct Opt<'a> {
    name: &'static str,
    /// The whole `key=value` token, for errors about the option itself.
    tok: Tok<'a>,
    value: Value<'a>,
}

/// A line checked against its `Spec`: every value has the right kind and
/// lies in range, no option is unknown or repeated.
struct Args<'a> {
    positional: Option<Value<'a>>,
    opts: Vec<Opt<'a>>,
}

impl<'a> Args<'a> {
    fn get(&self, name: &str) -> Option<&Opt<'a>> {
        self.opts.iter().find(|o| o.name == name)
    }

    fn value(&self, name: &str) -> Option<&Value<'a>> {
        self.get(name).map(|o| &o.value)
    }

    fn size(&self, name: &str) -> Option<usize> {
        match self.value(name) {
            Some(Value::Size(v)) => Some(*v),
            _ => None,
        }
    }

    fn float(&self, name: &str) -> Option<f64> {
        match self.value(name) {
            Some(Value::Float(v)) => Some(*v),
            _ => None,
        }
    }

    fn boolean(&self, name: &str) -> Option<bool> {
        match self.value(name) {
            Some(Value::Bool(v)) => Some(*v),
            _ => None,
        }
    }

    fn choice(&self, name: &str) -> Option<&'static str> {
        match self.value(name) {
            Some(Value::Choice(v)) => Some(v),
            _ => None,
        }
    }

    fn positional_size(&self) -> usize {
        match self.positional {
            Some(Value::Size(v)) => v,
            _ => 0,
        }
    }

    fn positional_float(&self) -> f64 {
        match self.positional {
            Some(Value::Float(v)) => v,
            _ => 0.0,
        }
    }
}

/// Checks the tokens after a keyword against `spec`, left to right, so that
/// the first error reported is the leftmost one on the line.
fn scan<'a>(spec: &Spec, toks: &[Tok<'a>]) -> Result<Args<'a>, Diagnostic> {
    let kw = toks[0];
    let mut args = Args {
        positional: None,
        opts: Vec::new(),
    };
    for (i, &tok) in toks.iter().enumerate().skip(1) {
        if tok.kind != TokKind::Word {
            return Err(stray_brace(tok));
        }
        if let Some((key, text)) = tok.text.split_once('=') {
            if key.is_empty() {
                return Err(tok
                    .error("expected an option name before `=`")
                    .with_hint("options are written `key=value`, without spaces"));
            }
            let key_len = key.chars().count() as u32;
            let param = lookup(spec, key, tok)?;
            if text.is_empty() {
                return Err(tok
                    .error(format!("missing value for option `{key}`"))
                    .with_hint(value_hint(param)));
            }
            if let Some(first) = args.get(param.name) {
                return Err(Diagnostic::new(
                    format!("duplicate option `{key}` for `{}`", spec.keyword),
                    tok.line,
                    tok.col,
                    key_len,
                )
                .with_hint(format!(
                    "`{key}` is already set at column {} of this line",
                    first.tok.col
                )));
            }
            let at = ValueAt {
                text,
                line: tok.line,
                col: tok.col + key_len + 1,
            };
            let value = convert(param.kind, at, &format!("`{key}`"))?;
            let other = match param.name {
                "tau" => "lambda",
                "lambda" => "tau",
                _ => "",
            };
            if let Some(first) = args.get(other) {
                return Err(Diagnostic::new(
                    format!("`{key}` and `{other}` both set the leak"),
                    tok.line,
                    tok.col,
                    key_len,
                )
                .with_hint(format!(
                    "λ = 1 − 1/τ: keep one of them (`{other}` is set at column {})",
                    first.tok.col
                )));
            }
            args.opts.push(Opt {
                name: param.name,
                tok,
                value,
            });
            continue;
        }
        if let Some(param) = spec.options.iter().find(|p| p.name == tok.text) {
            let hint = match toks.get(i + 1) {
                Some(next) if next.text.starts_with('=') => {
                    // `key = value` lexes as three words; show them joined.
                    let value = match (next.text, toks.get(i + 2)) {
                        ("=", Some(v)) if v.kind == TokKind::Word => v.text,
                        _ => "",
                    };
                    format!(
                        "remove the spaces around `=`: `{}{}{value}`",
                        tok.text, next.text
                    )
                }
                _ => value_hint(param),
            };
            return Err(tok
                .error(format!("missing value for option `{}`", tok.text))
                .with_hint(hint));
        }
        if spec.keyword == "if" && (tok.text == "lambda" || tok.text == "tau") {
            return Err(lambda_on_if(tok));
        }
        match spec.positional {
            Some((what, kind)) if args.positional.is_none() => {
                let at = ValueAt {
                    text: tok.text,
                    line: tok.line,
                    col: tok.col,
                };
                let label = format!("`{}` {what}", spec.keyword);
                args.positional = Some(convert(kind, at, &label)?);
            }
            _ => return Err(extra_argument(spec, tok)),
        }
    }
    if let (Some((what, _)), None) = (spec.positional, &args.positional) {
        return Err(kw
            .error(format!("missing {what} for `{}`", spec.keyword))
            .with_hint(format!("write e.g. `{}`", spec.example)));
    }
    Ok(args)
}

fn lookup(spec: &Spec, key: &str, tok: Tok) -> Result<&'static Param, Diagnostic> {
    if let Some(p) = spec.options.iter().find(|p| p.name == key) {
        return Ok(p);
    }
    if spec.keyword == "if" && (key == "lambda" || key == "tau") {
        return Err(lambda_on_if(tok));
    }
    let names: Vec<&str> = spec.options.iter().map(|p| p.name).collect();
    let hint = if names.is_empty() {
        match spec.positional {
            Some(_) => format!(
                "`{}` takes no options; write e.g. `{}`",
                spec.keyword, spec.example
            ),
            None => format!("`{}` takes no options", spec.keyword),
        }
    } else if let Some(near) = closest(key, &names) {
        format!("did you mean `{near}`?")
    } else {
        format!("valid options for `{}`: {}", spec.keyword, names.join(", "))
    };
    Err(Diagnostic::new(
        format!("unknown option `{key}` for `{}`", spec.keyword),
        tok.line,
        tok.col,
        key.chars().count() as u32,
    )
    .with_hint(hint))
}

fn lambda_on_if(tok: Tok) -> Diagnostic {
    let key = tok.text.split('=').next().unwrap_or("lambda");
    Diagnostic::new(
        format!("`if` neurons have no `{key}` option"),
        tok.line,
        tok.col,
        key.chars().count() as u32,
    )
    .with_hint("an IF neuron never leaks (lambda = 1); use `lif lambda=...` for a leaky neuron")
}

fn extra_argument(spec: &Spec, tok: Tok) -> Diagnostic {
    let hint = match spec.positional {
        Some((what, _)) => format!(
            "`{}` takes one argument ({what}); options are written `key=value`",
            spec.keyword
        ),
        None if spec.options.is_empty() => format!("`{}` takes no arguments", spec.keyword),
        None => format!("`{}` takes only options, written `key=value`", spec.keyword),
    };
    tok.error(format!(
        "unexpected argument `{}` for `{}`",
        tok.text, spec.keyword
    ))
    .with_hint(hint)
}

fn stray_brace(tok: Tok) -> Diagnostic {
    let hint = match tok.kind {
        TokKind::Close => "a closing `}` goes on its own line (or before `shortcut {`)",
        _ => "only `residual` and `shortcut` open a block, as the last thing on their line",
    };
    tok.error(format!("unexpected `{}`", tok.text))
        .with_hint(hint)
}

fn value_hint(param: &Param) -> String {
    let name = param.name;
    match param.kind {
        Kind::Bool => format!("write `{name}=true` or `{name}=false`"),
        Kind::Choice(choices) => {
            let forms: Vec<String> = choices.iter().map(|c| format!("`{name}={c}`")).collect();
            format!("write one of {}", forms.join(", "))
        }
        Kind::Size { .. } | Kind::Seed => format!("`{name}` takes an integer, written `{name}=N`"),
        _ => format!("`{name}` takes a number, written `{name}=X`"),
    }
}

/// Where a value's text sits, so that errors underline just the value.
#[derive(Clone, Copy)]
struct ValueAt<'a> {
    text: &'a str,
    line: u32,
    col: u32,
}

impl<'a> ValueAt<'a> {
    fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(
            message,
            self.line,
            self.col,
            self.text.chars().count() as u32,
        )
    }
}

/// Text that could be meant as a number: lets `3.5` for an integer say
/// "expected an integer" and keeps `inf`/`nan`, which `f64::from_str` would
/// take, out of the language.
fn numeric(text: &str) -> bool {
    text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
}

fn convert<'a>(kind: Kind, at: ValueAt<'a>, label: &str) -> Result<Value<'a>, Diagnostic> {
    let text = at.text;
    match kind {
        Kind::Size { nonzero } => {
            let v: usize = integer(at, label)?;
            if nonzero && v == 0 {
                return Err(at.error(format!("{label} must be greater than 0, found `{text}`")));
            }
            Ok(Value::Size(v))
        }
        Kind::Seed => Ok(Value::Seed(integer(at, label)?)),
        Kind::Float(range) => {
            let v = match text.parse::<f64>() {
                Ok(v) if numeric(text) => v,
                _ => return Err(at.error(format!("expected a number for {label}, found `{text}`"))),
            };
            if !v.is_finite() {
                return Err(at.error(format!("number `{text}` for {label} is too large")));
            }
            let (ok, bounds) = match range {
                Range::Any => (true, ""),
                Range::Positive => (v > 0.0, "greater than 0"),
                Range::Unit => ((0.0..=1.0).contains(&v), "between 0 and 1"),
                Range::UnitOpen => ((0.0..1.0).contains(&v), "at least 0 and less than 1"),
                Range::AtLeastOne => (v >= 1.0 && v.is_finite(), "at least 1"),
            };
            if !ok {
                return Err(at.error(format!("{label} must be {bounds}, found `{text}`")));
            }
            Ok(Value::Float(v))
        }
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(at
                .error(format!(
                    "expected `true` or `false` for {label}, found `{text}`"
                ))
                .with_hint("booleans are written `true|false`")),
        },
        Kind::Choice(choices) => {
            if let Some(c) = choices.iter().find(|&&c| c == text) {
                return Ok(Value::Choice(c));
            }
            let hint = match closest(text, choices) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("{label} is one of: {}", choices.join(", ")),
            };
            Err(at
                .error(format!("unknown value `{text}` for {label}"))
                .with_hint(hint))
        }
        Kind::Shape => shape(at).map(Value::Shape),
        Kind::Name => {
            let mut chars = text.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
                Ok(Value::Name(text))
            } else {
                Err(at.error(format!("invalid model name `{text}`")).with_hint(
                    "a name starts with a letter or `_`, followed by letters, digits, `_` or `-`",
                ))
            }
        }
    }
}

fn integer<T: std::str::FromStr>(at: ValueAt, label: &str) -> Result<T, Diagnostic> {
    let text = at.text;
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| at.error(format!("integer `{text}` for {label} is too large")));
    }
    if let Some(digits) = text.strip_prefix('-') {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(at.error(format!("{label} must not be negative, found `{text}`")));
        }
    }
    let d = at.error(format!("expected an integer for {label}, found `{text}`"));
    if numeric(text) && text.parse::<f64>().is_ok() {
        Err(d.with_hint(format!("{label} takes a whole number")))
    } else {
        Err(d)
    }
}

fn shape(at: ValueAt) -> Result<Vec<usize>, Diagnostic> {
    let text = at.text;
    let well_formed = text
        .split('x')
        .all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        return Err(at
            .error(format!("expected an input shape, found `{text}`"))
            .with_hint("write `N` for flat input or `CxHxW` for images, e.g. `64` or `1x28x28`"));
    }
    let mut dims = Vec::new();
    let mut col = at.col;
    for d in text.split('x') {
        let part = ValueAt { text: d, col, ..at };
        let v: usize = integer(part, "an input dimension")?;
        if v == 0 {
            return Err(part.error("input dimensions must be greater than 0, found `0`"));
        }
        dims.push(v);
        col += d.len() as u32 + 1;
    }
    if dims.len() != 1 && dims.len() != 3 {
        let d = at.error(format!(
            "input shape must have 1 or 3 dimensions (`N` or `CxHxW`), found {}",
            dims.len()
        ));
        return Err(if dims.len() == 2 {
            d.with_hint(format!(
                "for a single-channel image write `1x{}x{}`",
                dims[0], dims[1]
            ))
        } else {
            d
        });
    }
    Ok(dims)
}

/// An open `residual` block.
struct Frame {
    pos: Pos,
    main: Vec<Layer>,
    /// `Some` once `shortcut {` has been seen: layers now go here.
    shortcut: Option<Vec<Layer>>,
}

struct Parser {
    name: Option<(String, u32)>,
    input: Option<(Input, u32)>,
    neuron: Option<(NeuronOpts, u32)>,
    first_layer: Option<(Pos, &'static str)>,
    layers: Vec<Layer>,
    stack: Vec<Frame>,
    /// The previous line closed a residual's main branch with no shortcut
    /// on the same line, so a `shortcut {` line may still reopen it.
    after_main: bool,
}

pub(crate) fn parse(source: &str, file_name: &str) -> Result<Model, Diagnostic> {
    let mut p = Parser {
        name: None,
        input: None,
        neuron: None,
        first_layer: None,
        layers: Vec::new(),
        stack: Vec::new(),
        after_main: false,
    };
    let mut line_count = 0;
    for (i, text) in super::strip_bom(source).lines().enumerate() {
        line_count = i as u32 + 1;
        let toks = lex_line(text, line_count)?;
        if !toks.is_empty() {
            p.statement(&toks)?;
        }
    }
    p.finish(line_count + 1, file_name)
}

impl Parser {
    fn statement(&mut self, toks: &[Tok]) -> Result<(), Diagnostic> {
        let after_main = std::mem::take(&mut self.after_main);
        let first = toks[0];
        match first.kind {
            TokKind::Close => return self.close(toks),
            TokKind::Open => return Err(stray_brace(first)),
            TokKind::Word => {}
        }
        match first.text {
            "shortcut" if after_main => self.reopen_for_shortcut(toks),
            "shortcut" => Err(first
                .error("`shortcut` without a preceding `residual` block")
                .with_hint(
                    "`shortcut { ... }` must follow the `}` that closes a `residual` block",
                )),
            "model" | "input" | "neuron" => self.header(toks),
            "residual" => {
                self.note_layer(first, "residual");
                expect_open(first, &toks[1..])?;
                // An explicit stack, so deep nesting cannot overflow the
                // parser; the limit keeps the recursive passes that walk
                // the resulting tree safe.
                if self.stack.len() >= MAX_NESTING {
                    return Err(first
                        .error(format!(
                            "`residual` blocks are nested more than {MAX_NESTING} deep"
                        ))
                        .with_hint(nesting_hint()));
                }
                self.stack.push(Frame {
                    pos: pos(first),
                    main: Vec::new(),
                    shortcut: None,
                });
                Ok(())
            }
            kw => match spec(kw) {
                Some(spec) => {
                    self.note_layer(first, spec.keyword);
                    let args = scan(spec, toks)?;
                    let layer = Layer {
                        kind: layer_kind(spec.keyword, &args),
                        pos: pos(first),
                    };
                    self.current().push(layer);
                    Ok(())
                }
                None => Err(self.unknown_keyword(first, after_main)),
            },
        }
    }

    /// Remembers the first layer: headers must come before it, and a
    /// missing `input` is reported there.
    fn note_layer(&mut self, kw: Tok, keyword: &'static str) {
        self.first_layer.get_or_insert((pos(kw), keyword));
    }

    fn current(&mut self) -> &mut Vec<Layer> {
        match self.stack.last_mut() {
            None => &mut self.layers,
            Some(Frame {
                shortcut: Some(s), ..
            }) => s,
            Some(f) => &mut f.main,
        }
    }

    fn unknown_keyword(&self, tok: Tok, after_main: bool) -> Diagnostic {
        let mut candidates: Vec<&str> = LAYER_KEYWORDS.to_vec();
        if after_main {
            candidates.push("shortcut");
        }
        if self.first_layer.is_none() {
            candidates.extend_from_slice(HEADER_KEYWORDS);
        }
        let looks_like_word = tok
            .text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !looks_like_word || tok.text.contains('=') {
            let d = tok.error(format!("expected a layer, found `{}`", tok.text));
            return if tok.text.contains('=') {
                d.with_hint("options go on the same line as their layer, after its arguments")
            } else {
                d.with_hint(format!(
                    "a line starts with a keyword: {}",
                    candidates.join(", ")
                ))
            };
        }
        let near = closest(tok.text, &candidates);
        let hint = match near {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("expected one of: {}", candidates.join(", ")),
        };
        let what = match near {
            Some(near) if HEADER_KEYWORDS.contains(&near) => "keyword",
            _ => "layer",
        };
        tok.error(format!("unknown {what} `{}`", tok.text))
            .with_hint(hint)
    }

    fn header(&mut self, toks: &[Tok]) -> Result<(), Diagnostic> {
        let kw = toks[0];
        let seen = match kw.text {
            "model" => self.name.as_ref().map(|n| n.1),
            "input" => self.input.as_ref().map(|n| n.1),
            _ => self.neuron.as_ref().map(|n| n.1),
        };
        if let Some(line) = seen {
            return Err(kw
                .error(format!("duplicate `{}` line", kw.text))
                .with_hint(format!("`{}` was already given on line {line}", kw.text)));
        }
        if let Some((first, keyword)) = self.first_layer {
            return Err(kw
                .error(format!("`{}` must come before the first layer", kw.text))
                .with_hint(format!(
                    "move it above the `{keyword}` on line {}",
                    first.line
                )));
        }
        let spec = spec(kw.text).expect("every header keyword has a spec");
        let args = scan(spec, toks)?;
        match kw.text {
            "model" => {
                if let Some(Value::Name(name)) = args.positional {
                    self.name = Some((name.to_string(), kw.line));
                }
            }
            "input" => {
                let shape = match &args.positional {
                    Some(Value::Shape(s)) => s.clone(),
                    _ => Vec::new(),
                };
                let seed = args.get("seed");
                let encoding = match args.choice("encoding") {
                    Some("poisson") => Encoding::Poisson {
                        seed: match seed.map(|o| &o.value) {
                            Some(Value::Seed(s)) => *s,
                            _ => 0,
                        },
                    },
                    Some("events") => Encoding::Events,
                    _ => Encoding::Direct,
                };
                if let (Some(seed), false) = (seed, matches!(encoding, Encoding::Poisson { .. })) {
                    let key = seed.tok;
                    return Err(Diagnostic::new(
                        "`seed` only applies to `encoding=poisson`",
                        key.line,
                        key.col,
                        4,
                    )
                    .with_hint("add `encoding=poisson`, or remove `seed`"));
                }
                self.input = Some((Input { shape, encoding }, kw.line));
            }
            _ => self.neuron = Some((neuron_opts(&args), kw.line)),
        }
        Ok(())
    }

    fn close(&mut self, toks: &[Tok]) -> Result<(), Diagnostic> {
        let brace = toks[0];
        let Some(mut frame) = self.stack.pop() else {
            return Err(brace
                .error("unexpected `}`")
                .with_hint("there is no open `residual` block to close"));
        };
        let rest = &toks[1..];
        match frame.shortcut.take() {
            None => {
                if frame.main.is_empty() {
                    return Err(
                        Diagnostic::at("`residual` block has no layers", frame.pos, 8).with_hint(
                            "the main branch of a residual block needs at least one layer",
                        ),
                    );
                }
                if rest.is_empty() {
                    self.current()
                        .push(residual(frame.pos, frame.main, Vec::new()));
                    self.after_main = true;
                } else {
                    let Some(&kw) = rest.first().filter(|t| t.is_word("shortcut")) else {
                        return Err(after_close(rest[0]));
                    };
                    expect_open(kw, &rest[1..])?;
                    frame.shortcut = Some(Vec::new());
                    self.stack.push(frame);
                }
            }
            Some(shortcut) => {
                if let Some(&next) = rest.first() {
                    return Err(if next.is_word("shortcut") {
                        next.error("this `residual` block already has a `shortcut`")
                    } else {
                        after_close(next)
                    });
                }
                self.current()
                    .push(residual(frame.pos, frame.main, shortcut));
            }
        }
        Ok(())
    }

    /// `}` then `shortcut {` on the next line: take back the residual just
    /// closed and continue it with its shortcut branch.
    fn reopen_for_shortcut(&mut self, toks: &[Tok]) -> Result<(), Diagnostic> {
        expect_open(toks[0], &toks[1..])?;
        let Some(Layer {
            kind: LayerKind::Residual { main, .. },
            pos,
        }) = self.current().pop()
        else {
            unreachable!("`after_main` is only set right after pushing a residual");
        };
        self.stack.push(Frame {
            pos,
            main,
            shortcut: Some(Vec::new()),
        });
        Ok(())
    }

    fn finish(self, eof_line: u32, file_name: &str) -> Result<Model, Diagnostic> {
        if let Some(frame) = self.stack.last() {
            let message = if frame.shortcut.is_some() {
                "`residual` block is not closed (its `shortcut` branch is still open)"
            } else {
                "`residual` block is not closed"
            };
            return Err(Diagnostic::at(message, frame.pos, 8)
                .with_hint("add a line with `}` after the block's last layer"));
        }
        let Some((input, _)) = self.input else {
            return Err(match self.first_layer {
                Some((pos, keyword)) => {
                    Diagnostic::at("missing `input` line", pos, keyword.chars().count() as u32)
                        .with_hint("add e.g. `input 1x28x28` above the first layer")
                }
                None => Diagnostic::new("missing `input` line", eof_line, 1, 1)
                    .with_hint("a model starts with e.g. `input 1x28x28`, followed by its layers"),
            });
        };
        if self.layers.is_empty() {
            return Err(Diagnostic::new("model has no layers", eof_line, 1, 1)
                .with_hint("add layers after the `input` line, e.g. `linear 10`"));
        }
        Ok(Model {
            name: match self.name {
                Some((name, _)) => name,
                None => name_from_path(file_name),
            },
            input,
            neuron: self.neuron.map(|n| n.0).unwrap_or_default(),
            layers: self.layers,
        })
    }
}

fn pos(tok: Tok) -> Pos {
    Pos {
        line: tok.line,
        col: tok.col,
    }
}

fn residual(pos: Pos, main: Vec<Layer>, shortcut: Vec<Layer>) -> Layer {
    Layer {
        kind: LayerKind::Residual { main, shortcut },
        pos,
    }
}

/// The rest of a line that opens a block must be exactly `{`.
fn expect_open(kw: Tok, rest: &[Tok]) -> Result<(), Diagnostic> {
    match rest {
        [] => Err(Diagnostic::new(
            format!("expected `{{` after `{}`", kw.text),
            kw.line,
            kw.end_col(),
            1,
        )
        .with_hint(format!(
            "write `{} {{` and put the block's layers on the lines below",
            kw.text
        ))),
        [open, more @ ..] if open.kind == TokKind::Open => match more.first() {
            None => Ok(()),
            Some(t) => Err(t
                .error(format!("unexpected `{}` after `{{`", t.text))
                .with_hint("`{` ends its line; put each layer of the block on its own line")),
        },
        [t, ..] => Err(t
            .error(format!("unexpected `{}` after `{}`", t.text, kw.text))
            .with_hint(format!(
                "`{}` takes no arguments; write `{} {{`",
                kw.text, kw.text
            ))),
    }
}

fn after_close(tok: Tok) -> Diagnostic {
    tok.error(format!("unexpected `{}` after `}}`", tok.text))
        .with_hint("`}` stands alone on its line, or is followed by `shortcut {`")
}

fn neuron_opts(args: &Args) -> NeuronOpts {
    NeuronOpts {
        lambda: args
            .float("lambda")
            .or_else(|| args.float("tau").map(|tau| 1.0 - 1.0 / tau)),
        theta: args.float("theta"),
        reset: args.choice("reset").and_then(|r| match r {
            "soft" => Some(Reset::Soft),
            "hard" => Some(Reset::Hard),
            _ => None,
        }),
        v_reset: args.float("v_reset"),
        detach_reset: args.boolean("detach_reset"),
        surrogate: args.choice("surrogate").and_then(SurrogateKind::from_name),
        alpha: args.float("alpha"),
    }
}

/// The layer a checked line describes, with the DSL's defaults filled in.
fn layer_kind(keyword: &str, args: &Args) -> LayerKind {
    match keyword {
        "conv2d" => {
            let kernel = args.size("kernel").unwrap_or(3);
            LayerKind::Conv2d {
                out: args.positional_size(),
                kernel,
                stride: args.size("stride").unwrap_or(1),
                padding: args.size("padding").unwrap_or(kernel / 2),
                bias: args.boolean("bias").unwrap_or(true),
            }
        }
        "linear" => LayerKind::Linear {
            out: args.positional_size(),
            bias: args.boolean("bias").unwrap_or(true),
        },
        "batchnorm" => LayerKind::BatchNorm {
            eps: args.float("eps").unwrap_or(super::BATCHNORM_EPS),
            momentum: args.float("momentum").unwrap_or(super::BATCHNORM_MOMENTUM),
        },
        "avgpool" | "maxpool" => {
            let kernel = args.positional_size();
            let stride = args.size("stride").unwrap_or(kernel);
            let padding = args.size("padding").unwrap_or(0);
            if keyword == "avgpool" {
                LayerKind::AvgPool {
                    kernel,
                    stride,
                    padding,
                }
            } else {
                LayerKind::MaxPool {
                    kernel,
                    stride,
                    padding,
                    rate_rule: args
                        .choice("rate_rule")
                        .and_then(MaxPoolRule::from_name)
                        .unwrap_or_default(),
                }
            }
        }
        "flatten" => LayerKind::Flatten,
        "dropout" => LayerKind::Dropout {
            p: args.positional_float(),
        },
        "lif" => LayerKind::Neuron {
            kind: NeuronKind::Lif,
            opts: neuron_opts(args),
        },
        "if" => LayerKind::Neuron {
            kind: NeuronKind::If,
            opts: neuron_opts(args),
        },
        _ => unreachable!("`{keyword}` has a spec but no layer"),
    }
}

/// The model name implied by a file name: its stem, with characters a
/// `model` line would reject replaced, so that printing the model and
/// parsing it again keeps the name.
fn name_from_path(file_name: &str) -> String {
    let stem = Path::new(file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        return "model".to_string();
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        name.insert(0, '_');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(name_from_path("examples/models/foo.snn"), "foo");
        assert_eq!(name_from_path("a/resnet.v2.snn"), "resnet_v2");
        assert_eq!(name_from_path("3layers.snn"), "_3layers");
        assert_eq!(name_from_path(""), "model");
        assert_eq!(name_from_path("<stdin>"), "_stdin_");
    }

    #[test]
    fn if_options_skip_lambda_and_tau() {
        assert!(IF_OPTIONS
            .iter()
            .all(|p| p.name != "lambda" && p.name != "tau"));
        assert_eq!(IF_OPTIONS.len(), NEURON_OPTIONS.len() - 2);
    }
}
