//! Test plugin: `classify` panics. Built with `panic = "abort"`, the panic message goes to stderr
//! and the call ends in a wasm trap (`unreachable`), a plugin failure for the host.

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
            name: "hostile-trap".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(input: ClassifyInput) -> Result<Verdict, String> {
        if black_box(true) {
            panic!("plugin bug: index out of range");
        }
        Ok(Verdict {
            decision: Decision::Allow,
            rule_id: String::new(),
            reason: format!("unreachable for {}", input.request.id),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
