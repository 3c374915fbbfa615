//! Test plugin: `classify` spins forever in wasm code. The host must stop it (fuel or epoch
//! interruption) and treat it as a plugin failure.

wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use core::hint::black_box;
use exports::approval::risk::classifier::Guest;

struct Plugin;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-loop".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        let mut i: u64 = 0;
        loop {
            // black_box keeps the loop from being optimised away or proven infinite.
            i = black_box(i.wrapping_add(1));
            if black_box(false) {
                break;
            }
        }
        Ok(Verdict {
            decision: Decision::Allow,
            rule_id: String::new(),
            reason: format!("unreachable after {i} iterations"),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
