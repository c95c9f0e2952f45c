//! `snnc rules`: the rate pass's rewrite rules.

use clap::Args;
use std::fmt::Write;

use crate::passes::rate::rules::{Tag, RULES};

#[derive(Args)]
pub struct RulesArgs {
    #[arg(long)]
    json: bool,
}

pub fn run(a: RulesArgs) {
    print!("{}", rules(a.json));
}

/// Every rewrite rule with its tag and identity.
fn rules(json: bool) -> String {
    let mut out = String::new();
    for r in RULES {
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({"name": r.name, "tag": r.tag, "identity": r.identity})
            );
        } else {
            let tag = match r.tag {
                Tag::Exact => "exact",
                Tag::Approximate => "approximate",
            };
            let _ = writeln!(out, "{:<18} {:<12} {}", r.name, tag, r.identity);
        }
    }
    out
}
