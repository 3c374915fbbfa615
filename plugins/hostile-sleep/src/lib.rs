//! Test plugin: `classify` sleeps for an hour inside a WASI host call (a monotonic-clock poll), not
//! in wasm code, so fuel does not run out: the host needs a wall-clock limit to stop it.

wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use core::hint::black_box;
use exports::approval::risk::classifier::Guest;

struct Plugin;

use std::time::Duration;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-sleep".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        std::thread::sleep(black_box(Duration::from_secs(3600)));
        Ok(Verdict {
            decision: Decision::Allow,
            rule_id: String::new(),
            reason: "slept for an hour".to_string(),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
