//! A fuzz target for the front end, run as a proptest with a fixed number
//! of cases (the seed comes from `PROPTEST_RNG_SEED` when it is set, as in
//! CI).
//!
//! Inputs come from two generators:
//!
//! - a grammar of the DSL (header lines, every layer with its options,
//!   nested `residual` blocks, sometimes nested past the limit), with
//!   numbers that are mostly plausible and sometimes 0, 2^32, 2^64−1,
//!   2^64, 99999999;
//! - mutations of the example models (lines deleted, duplicated, swapped;
//!   numbers replaced by those values; stray characters inserted — `×`, a
//!   BOM, braces, `=`; the text truncated).
//!
//! Each input goes through parsing and shape analysis, and, when the model
//! is accepted and tiny, unrolling, autodiff and the rate pass in both
//! modes, in process. The properties: nothing panics; every error of the
//! front end is located (line and column); every accepted model's sizes
//! are exact (element counts computed with checked arithmetic equal the
//! reported ones). Each compilation runs under a time bound, so a hang
//! fails the case instead of stalling CI.

use proptest::prelude::*;
use snnc::compile::{compile, Options};
use snnc::dsl::parse;
use snnc::passes::rate::{Limits, Mode};
use snnc::shape::{self, Analysis};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

/// Numbers that break arithmetic: zero, one, the 32-bit boundary, the
/// largest u64, one past it (does not parse), and a "valid but absurd" one.
const NASTY: &[&str] = &[
    "0",
    "1",
    "2",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999",
    "-1",
    "1.5",
];

/// Choices drawn by proptest, consumed by the grammar (shrinking shrinks
/// the choices, so failures shrink to small models).
struct Choices<'a> {
    v: &'a [u32],
    i: usize,
}

impl Choices<'_> {
    /// A value in `0..n` (0 once the choices run out).
    fn pick(&mut self, n: u32) -> u32 {
        let x = self.v.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        x % n.max(1)
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.pick(100) < percent
    }

    /// `plausible` mostly; a nasty number one time in 25.
    fn num(&mut self, plausible: u64) -> String {
        if self.chance(4) {
            NASTY[self.pick(NASTY.len() as u32) as usize].to_string()
        } else {
            plausible.to_string()
        }
    }

    fn float(&mut self, plausible: &str) -> String {
        match self.pick(40) {
            0 => "0".into(),
            1 => "1e999".into(),
            2 => "-0.5".into(),
            3 => "nan".into(),
            _ => plausible.into(),
        }
    }
}

/// The per-sample shape the grammar believes the next layer gets (it
/// stops tracking once a nasty number makes it unknowable).
#[derive(Clone)]
enum Cur {
    Flat(u64),
    Image(u64, u64, u64),
    Unknown,
}

fn neuron_opts(c: &mut Choices, out: &mut String, lambda_ok: bool) {
    let opts: [(&str, &[&str]); 7] = [
        ("lambda", &["0.2", "0.5", "1", "1.5"]),
        ("theta", &["1.0", "0.5", "0"]),
        ("reset", &["soft", "hard", "medium"]),
        ("v_reset", &["0", "-0.5"]),
        ("detach_reset", &["true", "false", "yes"]),
        ("surrogate", &["sigmoid", "atan", "triangle", "relu"]),
        ("alpha", &["4", "2", "-1"]),
    ];
    for (name, values) in opts {
        if !c.chance(20) || (name == "lambda" && !lambda_ok && !c.chance(20)) {
            continue;
        }
        // The first value is valid; the others are valid or not.
        let v = if c.chance(70) {
            values[0]
        } else {
            values[c.pick(values.len() as u32) as usize]
        };
        out.push_str(&format!(" {name}={v}"));
    }
}

/// One layer (or a residual block) at nesting `depth`, appended to `out`.
fn layer(c: &mut Choices, out: &mut String, depth: usize, cur: &mut Cur) {
    let pad = "    ".repeat(depth);
    let line = |out: &mut String, text: String| out.push_str(&format!("{pad}{text}\n"));
    match c.pick(11) {
        0 | 1 => {
            let (co, k) = (1 + c.pick(4) as u64, [1, 3, 5][c.pick(3) as usize]);
            let mut s = format!("conv2d {}", c.num(co));
            let (mut stride, mut padding) = (1, k / 2);
            if c.chance(40) {
                s += &format!(" kernel={}", c.num(k));
            } else {
                padding = 1;
            }
            if c.chance(20) {
                stride = 1 + c.pick(2) as u64;
                s += &format!(" stride={}", c.num(stride));
            }
            if c.chance(30) {
                padding = c.pick(3) as u64;
                s += &format!(" padding={}", c.num(padding));
            }
            if c.chance(20) {
                s += " bias=false";
            }
            *cur = match cur {
                Cur::Image(_, h, w) if *h + 2 * padding >= k && *w + 2 * padding >= k => {
                    Cur::Image(
                        co,
                        (*h + 2 * padding - k) / stride + 1,
                        (*w + 2 * padding - k) / stride + 1,
                    )
                }
                _ => Cur::Unknown,
            };
            line(out, s);
        }
        2 | 3 => {
            let n = 1 + c.pick(16) as u64;
            let bias = if c.chance(20) { " bias=false" } else { "" };
            line(out, format!("linear {}{bias}", c.num(n)));
            *cur = Cur::Flat(n);
        }
        4 => {
            let mut s = "batchnorm".to_string();
            if c.chance(15) {
                s += &format!(" eps={}", c.float("1e-5"));
            }
            if c.chance(15) {
                s += &format!(" momentum={}", c.float("0.1"));
            }
            line(out, s);
        }
        5 => {
            let kw = if c.chance(50) { "avgpool" } else { "maxpool" };
            let k = 1 + c.pick(3) as u64;
            let mut s = format!("{kw} {}", c.num(k));
            let mut stride = k;
            if c.chance(25) {
                stride = 1 + c.pick(3) as u64;
                s += &format!(" stride={}", c.num(stride));
            }
            *cur = match cur {
                Cur::Image(ch, h, w) if *h >= k && *w >= k => {
                    Cur::Image(*ch, (*h - k) / stride + 1, (*w - k) / stride + 1)
                }
                _ => Cur::Unknown,
            };
            line(out, s);
        }
        6 => {
            line(out, "flatten".into());
            *cur = match *cur {
                Cur::Image(a, b, d) => Cur::Flat(a * b * d),
                Cur::Flat(n) => Cur::Flat(n),
                Cur::Unknown => Cur::Unknown,
            };
        }
        7 => line(out, format!("dropout {}", c.float("0.2"))),
        8 | 9 => {
            let mut s = if c.chance(80) { "lif" } else { "if" }.to_string();
            let lambda_ok = s == "lif";
            neuron_opts(c, &mut s, lambda_ok);
            line(out, s);
        }
        _ => residual(c, out, depth, cur),
    }
}

/// A residual block; its branches mostly keep the shape (so that blocks
/// are accepted often enough to reach the compiler).
fn residual(c: &mut Choices, out: &mut String, depth: usize, cur: &mut Cur) {
    let pad = "    ".repeat(depth);
    if depth >= 3 && !c.chance(5) {
        out.push_str(&format!("{pad}lif\n"));
        return;
    }
    out.push_str(&format!("{pad}residual {{\n"));
    let keep = |c: &mut Choices, out: &mut String, cur: &Cur| {
        let inner = "    ".repeat(depth + 1);
        match (c.pick(4), cur) {
            (0, Cur::Image(ch, _, _)) => {
                out.push_str(&format!("{inner}conv2d {ch} kernel=3 padding=1\n"))
            }
            (0, Cur::Flat(n)) => out.push_str(&format!("{inner}linear {n}\n")),
            (1, _) => out.push_str(&format!("{inner}batchnorm\n")),
            _ => out.push_str(&format!("{inner}lif\n")),
        }
    };
    let before = cur.clone();
    if c.chance(70) {
        for _ in 0..1 + c.pick(3) {
            keep(c, out, cur);
        }
    } else {
        for _ in 0..1 + c.pick(3) {
            layer(c, out, depth + 1, cur);
        }
    }
    out.push_str(&format!("{pad}}}"));
    if c.chance(40) {
        out.push_str(" shortcut {\n");
        let mut sc = before;
        keep(c, out, &sc);
        if c.chance(20) {
            layer(c, out, depth + 1, &mut sc);
        }
        out.push_str(&format!("{pad}}}"));
    }
    out.push('\n');
}

/// A model from the grammar.
fn grammar_model(v: &[u32]) -> String {
    let mut c = Choices { v, i: 0 };
    let mut out = String::new();
    if c.chance(30) {
        let name = ["tiny", "net-2", "_x", "tiny2", "3bad", "a.b"][c.pick(6) as usize];
        out.push_str(&format!("model {name}\n"));
    }
    let mut cur = match c.pick(3) {
        0 => {
            let n = 1 + c.pick(32) as u64;
            out.push_str(&format!("input {}", c.num(n)));
            Cur::Flat(n)
        }
        _ => {
            let (ch, h, w) = (
                1 + c.pick(3) as u64,
                2 + c.pick(10) as u64,
                2 + c.pick(10) as u64,
            );
            let sep = if c.chance(2) { "×" } else { "x" };
            out.push_str(&format!(
                "input {}{sep}{}{sep}{}",
                c.num(ch),
                c.num(h),
                c.num(w)
            ));
            Cur::Image(ch, h, w)
        }
    };
    match c.pick(30) {
        0 | 1 => out.push_str(" encoding=poisson seed=3"),
        2 | 3 => out.push_str(" encoding=events"),
        4 => out.push_str(" seed=1"),
        _ => {}
    }
    out.push('\n');
    if c.chance(20) {
        let mut s = "neuron".to_string();
        neuron_opts(&mut c, &mut s, true);
        out.push_str(&s);
        out.push('\n');
    }
    if c.chance(3) {
        // Nested around the limit of 64.
        let depth = 60 + c.pick(10) as usize;
        out.push_str(&"residual {\n".repeat(depth));
        out.push_str("lif\n");
        out.push_str(&"}\n".repeat(depth));
    }
    for _ in 0..c.pick(7) {
        layer(&mut c, &mut out, 0, &mut cur);
    }
    if c.chance(85) {
        if !matches!(cur, Cur::Flat(_)) {
            out.push_str("flatten\n");
        }
        let classes = 1 + c.pick(10) as u64;
        out.push_str(&format!("linear {}\n", c.num(classes)));
    }
    out
}

fn examples() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models");
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snn"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replace the k-th number in the text by `NASTY[v]`.
    Number(usize, usize),
    Insert(usize, char),
    Truncate(usize),
}

const STRAY: &[char] = &[
    '×', '\u{feff}', '{', '}', '=', '#', '\t', '@', 'x', '0', '9', ' ', '\n', 'é', '-', '.',
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = 0usize..10_000;
    prop_oneof![
        i.clone().prop_map(Mutation::Delete),
        i.clone().prop_map(Mutation::Duplicate),
        (i.clone(), i.clone()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (i.clone(), 0..NASTY.len()).prop_map(|(a, b)| Mutation::Number(a, b)),
        (i.clone(), 0..STRAY.len()).prop_map(|(a, b)| Mutation::Insert(a, STRAY[b])),
        i.prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, ms: &[Mutation]) -> String {
    let mut s = text.to_string();
    for m in ms {
        let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
        let n = lines.len().max(1);
        match *m {
            Mutation::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Swap(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Mutation::Number(k, v) => {
                // Byte ranges of the digit runs.
                let mut runs = Vec::new();
                let b = s.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i].is_ascii_digit() {
                        let j = i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                        runs.push((i, j));
                        i = j;
                    } else {
                        i += 1;
                    }
                }
                if let Some(&(i, j)) = runs.get(k % runs.len().max(1)) {
                    s.replace_range(i..j, NASTY[v]);
                }
                continue;
            }
            Mutation::Insert(at, ch) => {
                let chars: Vec<char> = s.chars().collect();
                let at = at % (chars.len() + 1);
                s = chars[..at]
                    .iter()
                    .chain([ch].iter())
                    .chain(&chars[at..])
                    .collect();
                continue;
            }
            Mutation::Truncate(at) => {
                let chars: Vec<char> = s.chars().collect();
                s = chars[..at % (chars.len() + 1)].iter().collect();
                continue;
            }
            _ => {}
        }
        s = lines.join("\n");
        s.push('\n');
    }
    s
}

/// The element count of `shape` with checked arithmetic.
fn checked(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Accepted sizes are exact: every count the analysis reports equals the
/// checked product or sum.
fn sizes_are_exact(a: &Analysis) -> Result<(), String> {
    let mut params = Some(0usize);
    let mut neurons = Some(0usize);
    for l in &a.layers {
        if l.keyword != "residual" && shape::elements(&l.output) != checked(&l.output) {
            return Err(format!("layer {} output {:?} wraps", l.path, l.output));
        }
        for p in &l.params {
            let n = checked(&p.shape).ok_or(format!("param {} wraps", p.name))?;
            if p.trainable {
                params = params.and_then(|s| s.checked_add(n));
            }
        }
        if l.neurons > 0 && Some(l.neurons) != checked(&l.output) {
            return Err(format!(
                "layer {}: {} neurons for {:?}",
                l.path, l.neurons, l.output
            ));
        }
        if l.keyword == "flatten" && Some(l.output[0]) != checked(&l.input) {
            return Err(format!(
                "layer {}: flatten of {:?} to {:?}",
                l.path, l.input, l.output
            ));
        }
        neurons = neurons.and_then(|s| s.checked_add(l.neurons));
    }
    if params != Some(a.param_count()) || neurons != Some(a.neuron_count()) {
        return Err(format!(
            "totals: {params:?} params / {neurons:?} neurons, reported {} / {}",
            a.param_count(),
            a.neuron_count()
        ));
    }
    Ok(())
}

/// Small enough to compile in milliseconds (compiling is symbolic: its
/// cost grows with the layers and T, not with the sizes, but sizes stay
/// small so that nothing downstream could allocate much).
fn tiny(a: &Analysis) -> bool {
    let small = |s: &[usize]| checked(s).is_some_and(|n| n <= 1 << 20);
    a.layers.len() <= 24
        && a.param_count() <= 1 << 22
        && a.layers.iter().all(|l| small(&l.output))
        && small(&a.input)
}

/// What one input does; `Err` is a violated property.
fn check(text: &str) -> Result<(), String> {
    let model = match parse(text, "fuzz.snn") {
        Err(d) => {
            if d.line == 0 || d.col == 0 {
                return Err(format!("parse error without a position: {d:?}"));
            }
            let shown = d.render("fuzz.snn", text);
            if !shown.contains("--> fuzz.snn:") {
                return Err(format!("parse error rendered without a position:\n{shown}"));
            }
            return Ok(());
        }
        Ok(m) => m,
    };
    let a = match shape::analyze(&model) {
        Err(e) => {
            let shown = snnc::frontend::shape_error(&e, "fuzz.snn", text).to_string();
            if !shown.contains("--> fuzz.snn:") {
                return Err(format!("shape error without a position:\n{shown}"));
            }
            return Ok(());
        }
        Ok(a) => a,
    };
    sizes_are_exact(&a)?;
    if !tiny(&a) {
        return Ok(());
    }
    for mode in [Mode::Bptt, Mode::Rate] {
        let model = model.clone();
        let (tx, rx) = mpsc::channel();
        // A generous bound: these models compile in milliseconds.
        std::thread::spawn(move || {
            let opts = Options {
                limits: Limits {
                    time: Duration::from_secs(10),
                    ..Limits::default()
                },
                ..Options::new(2, 1, mode)
            };
            let r = catch_unwind(AssertUnwindSafe(|| {
                compile(&model, &opts)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }));
            let _ = tx.send(r);
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Err(_) => return Err(format!("{mode} compilation took over 60 s")),
            Ok(Err(_)) => return Err(format!("{mode} compilation panicked")),
            Ok(Ok(Err(e))) if e.contains("Some(") || e.contains("None") => {
                return Err(format!("{mode}: Debug formatting in `{e}`"))
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

fn run_case(text: &str) -> Result<(), TestCaseError> {
    match catch_unwind(AssertUnwindSafe(|| check(text))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(TestCaseError::fail(format!("{why}\n--- input:\n{text}"))),
        Err(_) => Err(TestCaseError::fail(format!("panicked on\n{text}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn grammar_models(choices in proptest::collection::vec(any::<u32>(), 0..200)) {
        run_case(&grammar_model(&choices))?;
    }

    #[test]
    fn mutated_examples(
        which in 0usize..64,
        ms in proptest::collection::vec(mutation(), 1..6),
    ) {
        let ex = examples();
        let (_, text) = &ex[which % ex.len()];
        run_case(&mutate(text, &ms))?;
    }
}

/// The generators reach every outcome: parse errors, shape errors, and
/// models that compile.
#[test]
fn generators_cover_every_outcome() {
    let (mut parse_err, mut shape_err, mut compiled) = (0, 0, 0);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let v: Vec<u32> = (0..200)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u32
            })
            .collect();
        let text = grammar_model(&v);
        match parse(&text, "g.snn") {
            Err(_) => parse_err += 1,
            Ok(m) => match shape::analyze(&m) {
                Err(_) => shape_err += 1,
                Ok(a) if tiny(&a) => compiled += 1,
                Ok(_) => {}
            },
        }
    }
    assert!(
        parse_err > 10 && shape_err > 10 && compiled > 10,
        "parse errors {parse_err}, shape errors {shape_err}, tiny models {compiled}"
    );
}

#[test]
fn mutations_apply() {
    let t = "input 64\nlinear 10\n";
    assert_eq!(mutate(t, &[Mutation::Delete(1)]), "input 64\n");
    assert_eq!(
        mutate(t, &[Mutation::Number(1, 3)]),
        "input 64\nlinear 4294967296\n"
    );
    assert_eq!(
        mutate(t, &[Mutation::Insert(0, '\u{feff}')]),
        "\u{feff}input 64\nlinear 10\n"
    );
    assert_eq!(mutate(t, &[Mutation::Truncate(8)]), "input 64");
    assert_eq!(mutate(t, &[Mutation::Swap(0, 1)]), "linear 10\ninput 64\n");
}
