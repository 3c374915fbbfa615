//! Test plugin: `classify` writes 1 MiB of text to stdout, then answers `escalate` with an 8 MiB
//! reason. The host must cap the per-call log and reject (or truncate) the oversized verdict.

wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use core::hint::black_box;
use exports::approval::risk::classifier::Guest;
use std::io::Write;

struct Plugin;

/// Bytes written to stdout: 16384 lines of 64 bytes (63 characters and a newline).
const STDOUT_BYTES: usize = 1 << 20;
const LINE_BYTES: usize = 64;
/// Bytes in the reason.
const REASON_BYTES: usize = 8 << 20;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-huge-output".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        let dots = ".".repeat(LINE_BYTES - 12);
        let mut stdout = std::io::stdout().lock();
        for line in 0..black_box(STDOUT_BYTES / LINE_BYTES) {
            // "line 00000 " is 11 characters, padded with 52 dots to 63. Unlike `println!`, a
            // write error (a host that refuses more output) is ignored rather than a panic, so
            // the call goes on to answer its oversized verdict.
            let _ = writeln!(stdout, "line {line:05} {dots}");
        }
        let _ = stdout.flush();
        drop(stdout);
        Ok(Verdict {
            decision: Decision::Escalate,
            rule_id: "hostile.rule".to_string(),
            reason: "x".repeat(REASON_BYTES),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
