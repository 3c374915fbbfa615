//! Test plugin: `classify` recurses without bound (and not in tail position) until the stack
//! overflows, which must be a trap the host survives.

wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use core::hint::black_box;
use exports::approval::risk::classifier::Guest;

struct Plugin;

/// Recurses until the stack runs out. The frame holds a buffer and the result is used after the
/// call, so the recursion can be neither turned into a loop nor removed.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 16]);
    if black_box(depth) == u64::MAX {
        return frame[0];
    }
    let below = recurse(black_box(depth + 1));
    black_box(below.wrapping_add(frame[15]))
}

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-recursion".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        let depth = recurse(0);
        Ok(Verdict {
            decision: Decision::Allow,
            rule_id: String::new(),
            reason: format!("unreachable: {depth}"),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
