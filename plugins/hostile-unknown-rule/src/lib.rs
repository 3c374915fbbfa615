//! Test plugin: `describe` lists only `hostile.known`, but `classify` answers a rule id it never
//! declared, `hostile.made-up`. The host must treat the verdict as malformed.

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
            name: "hostile-unknown-rule".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.known".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        Ok(Verdict {
            decision: Decision::Escalate,
            rule_id: black_box("hostile.made-up").to_string(),
            reason: "a rule this plugin never declared fired".to_string(),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
