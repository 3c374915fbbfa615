//! Test component: exports `approval:risk/classifier@0.1.0` correctly, but its world also imports
//! `acme:secrets/vault@0.1.0`, which is not WASI. `classify` calls `vault.get`, so the import is
//! really used and kept in the component. The host's upload validation must reject it.

wit_bindgen::generate!({
    path: "wit",
    world: "forbidden-import",
    // The contract lives in another package (wit/deps/): generate its bindings here too.
    generate_all,
});

use acme::secrets::vault;
use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use exports::approval::risk::classifier::Guest;

struct Plugin;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "forbidden-import".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "Escalates when the vault holds a secret for the actor.".to_string(),
            }],
        }
    }

    fn classify(input: ClassifyInput) -> Result<Verdict, String> {
        let secret = vault::get(&input.request.actor);
        let (decision, rule_id) = if secret.is_empty() {
            (Decision::Allow, String::new())
        } else {
            (Decision::Escalate, "hostile.rule".to_string())
        };
        Ok(Verdict {
            decision,
            rule_id,
            reason: format!("the vault answered {} bytes", secret.len()),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
