//! Guards snnc against rust-lang/rust#155241 (README, "Known toolchain
//! bugs"): rustc 1.95 miscompiles a closure call whose by-value argument is
//! larger than two machine words. This test reads snnc's own source
//! (`src/`, `passes/`, `codegen/`) and fails on a closure parameter or an
//! `Fn`/`FnMut`/`FnOnce` bound that takes such an argument by value: pass a
//! reference (or a `Box`) instead.
//!
//! "Small" is a fixed list of types known to fit in two words; anything
//! else is assumed large, so the test errs on the side of failing. It reads
//! text, not types: a closure parameter without a type annotation (`|op|`
//! inferred as `Op`) is not seen. The suite running in the release profile
//! (CI) is the backstop for those.

use std::path::{Path, PathBuf};

/// Types of at most two words (16 bytes on x86_64) that closures may take
/// by value.
const SMALL: &[&str] = &[
    "usize",
    "isize",
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "f32",
    "f64",
    "bool",
    "char",
    "()",
    "NodeIndex",
    "Id",
    "Option<f64>",
    "Option<f32>",
    "Option<usize>",
    "Option<NodeIndex>",
    "std::ffi::c_char",
    "Option<&str>",
    // A oneDNN handle (a raw pointer).
    "Handle",
    // Field-less or one-word enums and generic float parameters.
    "std::io::Error",
    "Role",
    "Init",
    "F",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Splits `a, b<c, d>, e` at top-level commas.
fn split_args(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in s.chars() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn by_value_large(ty: &str) -> bool {
    let ty = ty.trim();
    !(ty.is_empty()
        || ty.starts_with('&')
        || ty.starts_with("*const")
        || ty.starts_with("*mut")
        || ty.starts_with("impl ")
        || ty.starts_with("fn(")
        || ty.starts_with("Box<")
        || SMALL.contains(&ty))
}

/// Every by-value parameter type of a large type in one line of code:
/// closure parameters `|name: Type|` and `Fn*(Type, …)` bounds.
fn offenders(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    // Fn(…), FnMut(…), FnOnce(…) bounds.
    for kw in ["FnOnce(", "FnMut(", "Fn("] {
        let mut rest = code;
        while let Some(i) = rest.find(kw) {
            let before = &rest[..i];
            let after = &rest[i + kw.len()..];
            rest = after;
            // `FnOnce(` also contains `Fn(`? No: "FnOnce(" does not contain
            // "Fn(", but skip identifiers that merely end in Fn.
            if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut depth = 1;
            let end = after
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(j, _)| j);
            if let Some(end) = end {
                for a in split_args(&after[..end]) {
                    if by_value_large(&a) {
                        found.push(format!("{kw}…) takes `{a}` by value"));
                    }
                }
            }
        }
    }
    // Closure parameters with a type: `|x: T|`, `|x: T, y: U|`, `move |…|`.
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == '|' && (i + 1 < bytes.len() && bytes[i + 1] != '|') {
            if let Some(len) = bytes[i + 1..].iter().position(|&c| c == '|') {
                let params: String = bytes[i + 1..i + 1 + len].iter().collect();
                if params.contains(':') && !params.contains("::<") || params.contains(": ") {
                    for p in split_args(&params) {
                        // `name: Type`, not a path (`Op::Sub` in a pattern).
                        match (p.find("::"), p.find(": ")) {
                            (Some(path), Some(colon)) if path < colon => continue,
                            (Some(_), None) => continue,
                            _ => {}
                        }
                        if let Some((name, ty)) = p.split_once(':') {
                            let name = name.trim().trim_start_matches("mut ").trim();
                            if name.chars().all(|c| c.is_alphanumeric() || c == '_')
                                && by_value_large(ty)
                            {
                                found.push(format!("closure parameter `{p}`"));
                            }
                        }
                    }
                }
                i += len + 2;
                continue;
            }
        }
        i += 1;
    }
    found
}

#[test]
fn no_closure_takes_a_large_argument_by_value() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "passes", "codegen"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(files.len() > 20, "found only {} source files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (k, line) in text.lines().enumerate() {
            for o in offenders(line) {
                bad.push(format!(
                    "{}:{}: {o}",
                    f.strip_prefix(root).unwrap().display(),
                    k + 1
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "closures taking an argument larger than two words by value \
         (rust-lang/rust#155241; README, \"Known toolchain bugs\"):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_finds_the_shapes_it_guards_against() {
    assert_eq!(
        offenders("main: impl FnOnce(BlockBuilder) -> BlockBuilder,").len(),
        1
    );
    assert_eq!(offenders("let bad = |msg: String| err(msg);").len(), 1);
    assert_eq!(offenders("f: impl Fn(Graph, Vec<NodeIndex>) -> R").len(), 2);
    assert!(offenders("main: impl FnOnce(&mut BlockBuilder) -> &mut BlockBuilder,").is_empty());
    assert!(offenders("f: impl Fn(f32, f32) -> f32 + Sync").is_empty());
    assert!(offenders("let m = |x: &Tensor<f32>| x.len();").is_empty());
    assert!(offenders("a || b; x | y").is_empty());
    assert!(offenders("// |msg: String| in a comment").is_empty());
    assert!(offenders("matches!(op, Op::Sub | Op::Param { .. } | Op::Add)").is_empty());
}
