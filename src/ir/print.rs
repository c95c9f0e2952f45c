//! Deterministic text and Graphviz forms of a graph.
//!
//! Nodes are numbered `%0, %1, …` in `Graph::topo_order` (ready node created
//! first), so the same graph always prints the same way; nodes no output
//! depends on are not printed.

use super::{Graph, Node, Role};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable;
use petgraph::Direction;
use std::collections::HashMap;
use std::fmt::Write;

/// Live nodes in canonical order, with their numbers.
fn numbering(g: &Graph) -> (Vec<NodeIndex>, HashMap<NodeIndex, usize>) {
    let mut live = vec![false; g.g.node_bound()];
    let mut stack: Vec<NodeIndex> = g.outputs.iter().map(|&(_, n)| n).collect();
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut live[n.index()], true) {
            stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        }
    }
    let order: Vec<NodeIndex> = g
        .topo_order()
        .expect("printing a cyclic graph")
        .into_iter()
        .filter(|n| live[n.index()])
        .collect();
    let num = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    (order, num)
}

fn shape_str(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

fn provenance(g: &Graph, n: &Node) -> String {
    let mut s = String::new();
    if let Some(l) = n.layer {
        let info = &g.layers[l];
        let _ = write!(s, "{}:{} ", info.path, info.keyword);
    }
    if let Some(t) = n.t {
        let _ = write!(s, "t={t} ");
    }
    s.push_str(n.role.short());
    s
}

pub fn to_text(g: &Graph) -> String {
    let (order, num) = numbering(g);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "graph {} steps={} batch={} nodes={} edges={}",
        g.name,
        g.steps,
        g.batch,
        order.len(),
        order.iter().map(|&n| g.operands(n).len()).sum::<usize>()
    );
    for &n in &order {
        let node = &g.g[n];
        let args: Vec<String> = g
            .operands(n)
            .iter()
            .map(|o| format!("%{}", num[o]))
            .collect();
        let attrs = node.op.attrs();
        let head = if attrs.is_empty() {
            format!("%{} = {}", num[&n], node.op.name())
        } else {
            format!("%{} = {}[{}]", num[&n], node.op.name(), attrs)
        };
        let call = if args.is_empty() {
            head
        } else {
            format!("{head}({})", args.join(", "))
        };
        let _ = writeln!(
            out,
            "  {:<48} : {:<16} # {}",
            call,
            shape_str(&node.shape),
            provenance(g, node)
        );
    }
    for (name, n) in &g.outputs {
        let _ = writeln!(out, "  output {name} = %{}", num[n]);
    }
    out
}

fn color(role: Role) -> &'static str {
    match role {
        Role::Input => "lightblue",
        Role::Param => "khaki",
        Role::Forward => "white",
        Role::State => "palegreen",
        Role::Output => "lightsalmon",
        Role::Backward => "lavender",
        Role::Gradient => "plum",
    }
}

/// `text` as a DOT double-quoted string: `"` and `\` escaped, line breaks
/// made DOT's `\n`. Every id and label goes through this, so layer paths
/// (`5.main.1`) and output names (`grad:0.weight`, where a bare `:` would
/// name a port) stay one id.
pub fn dot_quote(text: &str) -> String {
    let mut q = String::with_capacity(text.len() + 2);
    q.push('"');
    for c in text.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => {}
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A DOT label of several lines: each line escaped, joined by `\n`.
fn dot_label(lines: &[String]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|l| {
            let q = dot_quote(l);
            q[1..q.len() - 1].to_string()
        })
        .collect();
    format!("\"{}\"", escaped.join("\\n"))
}

/// Graphviz DOT; per-step nodes are grouped in one cluster per timestep.
/// Ids and labels are quoted: `n<k>` for the node printed as `%k`, and
/// `out:<name>` for each output.
pub fn to_dot(g: &Graph) -> String {
    let (order, num) = numbering(g);
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_quote(&g.name));
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"monospace\", fontsize=10];"
    );
    let id = |n: &NodeIndex| dot_quote(&format!("n{}", num[n]));
    let line = |n: NodeIndex| {
        let node = &g.g[n];
        let attrs = node.op.attrs();
        let mut lines = vec![
            if attrs.is_empty() {
                format!("%{} {}", num[&n], node.op.name())
            } else {
                format!("%{} {} {attrs}", num[&n], node.op.name())
            },
            shape_str(&node.shape),
        ];
        if let Some(l) = node.layer {
            lines.push(format!("{}:{}", g.layers[l].path, g.layers[l].keyword));
        }
        format!(
            "{} [label={}, fillcolor={}];",
            id(&n),
            dot_label(&lines),
            color(node.role)
        )
    };
    let mut steps: Vec<Vec<NodeIndex>> = vec![Vec::new(); g.steps];
    for &n in &order {
        match g.g[n].t {
            Some(t) if t < g.steps => steps[t].push(n),
            _ => {
                let _ = writeln!(out, "  {}", line(n));
            }
        }
    }
    for (t, ns) in steps.iter().enumerate() {
        if ns.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  subgraph \"cluster_t{t}\" {{");
        let _ = writeln!(out, "    label=\"t = {t}\"; style=dashed;");
        for &n in ns {
            let _ = writeln!(out, "    {}", line(n));
        }
        let _ = writeln!(out, "  }}");
    }
    for &n in &order {
        for (i, o) in g.operands(n).iter().enumerate() {
            let state = g.g[*o].role == Role::State;
            let _ = writeln!(
                out,
                "  {} -> {}{};",
                id(o),
                id(&n),
                if state {
                    " [style=bold, color=darkgreen]".to_string()
                } else if g.operands(n).len() > 1 {
                    format!(" [taillabel=\"{i}\", labelfontsize=8]")
                } else {
                    String::new()
                }
            );
        }
    }
    for (name, n) in &g.outputs {
        let out_id = dot_quote(&format!("out:{name}"));
        let _ = writeln!(
            out,
            "  {out_id} [label={}, shape=plaintext];",
            dot_quote(name)
        );
        let _ = writeln!(out, "  {} -> {out_id};", id(n));
    }
    let _ = writeln!(out, "}}");
    out
}
