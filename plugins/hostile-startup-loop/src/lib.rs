//! Test plugin: spins forever during start-up, before any export runs.
//!
//! A function registered in the `.init_array` link section is a static constructor: wasm-ld
//! gathers constructors into the synthesized `__wasm_call_ctors`. A Rust cdylib built with
//! wit-bindgen only calls that lazily, on entry to the first export, so this plugin also exports
//! the reactor entry point `_initialize` (as wasi-libc's reactors do), which runs the
//! constructors. wit-component turns an exported `_initialize` into a start function of the
//! component, so the loop runs while the host *instantiates* the component, before `describe` or
//! `classify` is reached. The host must bound instantiation (fuel / epoch deadline) like a call.

wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use core::hint::black_box;
use exports::approval::risk::classifier::Guest;

/// The constructor: never returns.
extern "C" fn spin_forever() {
    let mut i: u64 = 0;
    while black_box(true) {
        i = black_box(i.wrapping_add(1));
    }
    black_box(i);
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = spin_forever;

unsafe extern "C" {
    /// Synthesized by wasm-ld: runs every `.init_array` constructor.
    fn __wasm_call_ctors();
}

/// The reactor initializer, called by the component's start function during instantiation.
#[unsafe(export_name = "_initialize")]
extern "C" fn initialize() {
    // SAFETY: the linker-provided constructor runner, called once at start-up before any export.
    unsafe { __wasm_call_ctors() }
}

struct Plugin;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-startup-loop".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        Ok(Verdict {
            decision: Decision::Allow,
            rule_id: String::new(),
            reason: "start-up finished (it never should)".to_string(),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
