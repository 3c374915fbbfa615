//! Test plugin: `classify` allocates 1 MiB chunks forever, touching every 4 KiB page and never
//! freeing. The host must cap the instance's memory; the allocation failure aborts (a trap).

wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use core::hint::black_box;
use exports::approval::risk::classifier::Guest;

struct Plugin;

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4 << 10;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-memory-bomb".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        while black_box(true) {
            let mut chunk = vec![0u8; CHUNK];
            for page in chunk.chunks_mut(PAGE) {
                page[0] = black_box(1);
            }
            hoard.push(black_box(chunk));
        }
        Ok(Verdict {
            decision: Decision::Allow,
            rule_id: String::new(),
            reason: format!("unreachable after {} MiB", black_box(hoard).len()),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
