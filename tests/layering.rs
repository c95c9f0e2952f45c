//! The crate's layers point one way: front-end → IR → passes → codegen →
//! runtime → CLI (README, "Architecture"). This test reads every module's
//! `crate::…` and `super::…` paths and fails on an edge from a lower layer
//! to a higher one, and on a cycle between modules that are not parent and
//! child (a `mod.rs` re-exporting its children is not a cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer, lowest first. A module may use its own layer
/// and the ones before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("base", &["rng"]),
    (
        "front-end",
        &[
            "dsl",
            "model",
            "shape",
            "tensor",
            "init",
            "frontend",
            "precision",
        ],
    ),
    ("ir", &["ir", "interp", "compare"]),
    ("passes", &["unroll", "autodiff", "passes", "compile"]),
    ("codegen", &["codegen"]),
    ("runtime", &["runtime", "data", "nir", "interop"]),
    ("cli", &["cli", "main"]),
];

fn layer_of(module: &[String]) -> usize {
    let top = module.first().map(String::as_str).unwrap_or("");
    LAYERS
        .iter()
        .position(|(_, mods)| mods.contains(&top))
        .unwrap_or_else(|| panic!("module `{top}` is in no layer of tests/layering.rs"))
}

/// Every module of the crate (`["passes", "rate", "rules"]`) with its source.
fn modules() -> BTreeMap<Vec<String>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                let mut q = prefix.to_vec();
                q.push(name);
                walk(&p, &q, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let mut q = prefix.to_vec();
                if name != "mod" && name != "lib" {
                    q.push(name);
                }
                out.insert(q, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    walk(&root.join("src"), &[], &mut out);
    walk(&root.join("passes"), &["passes".to_string()], &mut out);
    walk(&root.join("codegen"), &["codegen".to_string()], &mut out);
    out
}

/// The paths a source mentions: `crate::a::b`, `super::c`, and the names
/// inside `use crate::a::{b, c::d}` groups, resolved against `module`.
fn paths(module: &[String], is_mod_file: bool, src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // Code only: drop comments and the unit tests at the end of a file.
    let code: String = src
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            // The path: identifiers separated by `::`, then maybe a `{` group.
            let mut base: Vec<String> = if start == "crate::" {
                Vec::new()
            } else {
                // `super` of a file module is its parent; of a mod.rs, the
                // parent of the folder.
                let keep = module.len().saturating_sub(if is_mod_file { 2 } else { 1 });
                module[..keep].to_vec()
            };
            let mut rest = &code[from..];
            // Chained `super::super::`.
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let mut segs = base;
            loop {
                let id: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if id.is_empty() {
                    break;
                }
                segs.push(id.clone());
                rest = &rest[id.len()..];
                match rest.strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            if rest.starts_with('{') {
                let end = rest.find('}').unwrap_or(rest.len());
                for item in rest[1..end].split(',') {
                    let first = item.trim().split("::").next().unwrap_or("").trim();
                    if !first.is_empty() && first != "self" {
                        let mut p = segs.clone();
                        p.push(first.to_string());
                        out.push(p);
                    }
                }
            }
            out.push(segs);
        }
    }
    out
}

/// The module a path refers to: its longest prefix that is a module.
fn resolve(path: &[String], mods: &BTreeMap<Vec<String>, String>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|p| mods.contains_key(p))
}

fn is_ancestor(a: &[String], b: &[String]) -> bool {
    a.len() < b.len() && b.starts_with(a)
}

/// Module dependency edges (from, to), self-edges dropped.
fn edges() -> BTreeSet<(Vec<String>, Vec<String>)> {
    let mods = modules();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = BTreeSet::new();
    for (m, src) in &mods {
        // A module is a mod.rs file when it has children.
        let is_mod_file = mods.keys().any(|k| is_ancestor(m, k))
            || (m.len() == 1 && root.join("src").join(&m[0]).join("mod.rs").is_file());
        for p in paths(m, is_mod_file, src) {
            if let Some(to) = resolve(&p, &mods) {
                if &to != m && !to.is_empty() {
                    out.insert((m.clone(), to));
                }
            }
        }
    }
    out
}

#[test]
fn layers_point_one_way() {
    let mut bad = Vec::new();
    for (from, to) in edges() {
        if from.is_empty() {
            continue;
        }
        let (lf, lt) = (layer_of(&from), layer_of(&to));
        if lt > lf {
            bad.push(format!(
                "{} ({}) uses {} ({})",
                from.join("::"),
                LAYERS[lf].0,
                to.join("::"),
                LAYERS[lt].0
            ));
        }
    }
    assert!(bad.is_empty(), "upward edges:\n{}", bad.join("\n"));
}

#[test]
fn no_cycles_between_modules() {
    let edges: Vec<_> = edges()
        .into_iter()
        .filter(|(a, b)| !a.is_empty() && !is_ancestor(a, b) && !is_ancestor(b, a))
        .collect();
    let mut succ: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (a, b) in &edges {
        succ.entry(a).or_default().push(b);
    }
    // A cycle is an edge a → b with a path b → … → a.
    let reaches = |from: &Vec<String>, to: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                stack.extend(succ.get(n).into_iter().flatten().copied());
            }
        }
        false
    };
    let cycles: Vec<String> = edges
        .iter()
        .filter(|(a, b)| reaches(b, a))
        .map(|(a, b)| format!("{} → {} → … → {}", a.join("::"), b.join("::"), a.join("::")))
        .collect();
    assert!(cycles.is_empty(), "cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_scanner_sees_use_groups_and_inline_paths() {
    let m = vec!["passes".to_string(), "memplan".to_string()];
    let p = paths(
        &m,
        false,
        "use super::schedule::{self, SchedOpts};\nlet x = crate::codegen::cpu::kernels::f();\n// crate::cli in a comment\n",
    );
    let s: Vec<String> = p.iter().map(|p| p.join("::")).collect();
    assert!(
        s.contains(&"passes::schedule::SchedOpts".to_string()),
        "{s:?}"
    );
    assert!(s.contains(&"codegen::cpu::kernels::f".to_string()), "{s:?}");
    assert!(!s.iter().any(|p| p.starts_with("cli")), "{s:?}");
    // The real crate: edges the scan must see, and the order of the layers.
    let e = edges();
    let v = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    assert!(e.contains(&(v("passes::fuse"), v("ir::kernel"))));
    assert!(e.contains(&(v("codegen::exec::scratch"), v("passes::memplan"))));
    assert!(layer_of(&v("codegen")) > layer_of(&v("passes")));
    assert!(layer_of(&v("cli")) > layer_of(&v("runtime")));
}
