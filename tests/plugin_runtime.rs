//! The plugin runtime against real compiled plugins: the example plugin's verdicts, every
//! hostile plugin contained with its typed error while the host keeps serving, the deterministic
//! deny-by-default sandbox, and upload validation.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use approval_host::plugin::{
    CallReport, LoadedPlugin, PluginError, PluginLimits, PluginRuntime, RuntimeConfig, UploadError,
};
use approval_host::risk::{Action, ClassifyInput, CounterOffer, Decision, Money, PluginInfo, Rule};
use common::{input, payment, plugin, runtime};

/// Compiles and describes a plugin the way an upload does.
async fn load(rt: &PluginRuntime, name: &str) -> LoadedPlugin {
    let compiled = rt.compile(&plugin(name)).unwrap();
    let info = rt.describe(&compiled, &common::relaxed()).await.unwrap();
    loaded(compiled, info)
}

fn loaded(compiled: approval_host::plugin::CompiledPlugin, info: PluginInfo) -> LoadedPlugin {
    LoadedPlugin::new("acme-toys", 1, compiled, info)
}

/// Loads a plugin whose `describe` cannot run, with a stand-in description.
fn load_undescribed(rt: &PluginRuntime, name: &str) -> LoadedPlugin {
    let compiled = rt.compile(&plugin(name)).unwrap();
    let info = PluginInfo {
        name: name.replace('_', "-"),
        version: "0".into(),
        rules: vec![Rule {
            id: "hostile.rule".into(),
            description: String::new(),
        }],
    };
    loaded(compiled, info)
}

async fn classify(rt: &PluginRuntime, plugin: &LoadedPlugin, input: &ClassifyInput) -> CallReport {
    rt.classify(plugin, input, &common::relaxed()).await
}

/// Limits where the 10 ms deadline, not fuel, is what stops a spinning guest.
fn deadline_first() -> PluginLimits {
    PluginLimits {
        fuel: PluginLimits::platform_max().fuel,
        ..PluginLimits::default()
    }
}

fn with_settings(mut input: ClassifyInput, settings: &[(&str, &str)]) -> ClassifyInput {
    input.policy.settings = settings
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    input
}

#[tokio::test]
async fn the_example_plugin_gives_the_expected_verdicts() {
    let rt = runtime();
    let velocity = load(&rt, "velocity").await;
    assert_eq!(velocity.info.name, "velocity");
    let rules: Vec<_> = velocity.info.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        rules,
        [
            "velocity.blocked-merchant",
            "velocity.payments-per-hour",
            "velocity.hourly-spend"
        ]
    );

    let small = classify(&rt, &velocity, &payment("r1", 1_000, Some("groceries"))).await;
    let verdict = small.outcome.unwrap();
    assert_eq!(
        (verdict.decision, verdict.rule_id.as_str()),
        (Decision::Allow, "")
    );
    assert!(small.fuel_used > 0);
    assert_eq!(small.plugin, velocity.identity);

    let gambling = classify(&rt, &velocity, &payment("r2", 1_000, Some("Gambling"))).await;
    let verdict = gambling.outcome.unwrap();
    assert_eq!(verdict.decision, Decision::Deny);
    assert_eq!(verdict.rule_id, "velocity.blocked-merchant");

    let mut busy = payment("r3", 1_000, None);
    busy.history.last_hour.payments = 5;
    let verdict = classify(&rt, &velocity, &busy).await.outcome.unwrap();
    assert_eq!(verdict.decision, Decision::Escalate);
    assert_eq!(verdict.rule_id, "velocity.payments-per-hour");

    let mut spender = with_settings(
        payment("r4", 60_000, None),
        &[("max-hourly-spend.CNY", "100000")],
    );
    spender.history.last_hour.approved_spend = vec![Money::new(70_000, "CNY")];
    let verdict = classify(&rt, &velocity, &spender).await.outcome.unwrap();
    assert_eq!(verdict.decision, Decision::Escalate);
    assert_eq!(verdict.rule_id, "velocity.hourly-spend");
    assert_eq!(
        verdict.counter_offer,
        Some(CounterOffer::Amount(Money::new(30_000, "CNY")))
    );

    let memory = input(
        "r5",
        Action::MemoryWrite {
            namespace: "family".into(),
            key: "shopping-list".into(),
        },
    );
    assert_eq!(
        classify(&rt, &velocity, &memory)
            .await
            .outcome
            .unwrap()
            .decision,
        Decision::Allow
    );

    let broken = with_settings(
        payment("r6", 1_000, None),
        &[("max-payments-per-hour", "lots")],
    );
    match classify(&rt, &velocity, &broken).await.outcome {
        Err(PluginError::Declined { message }) => {
            assert_eq!(
                message,
                "setting max-payments-per-hour is not a number: lots"
            );
        }
        other => panic!("expected the plugin to decline, got {other:?}"),
    }
}

#[tokio::test]
async fn the_same_input_gives_the_same_verdict_and_fuel() {
    let rt = runtime();
    let velocity = load(&rt, "velocity").await;
    let input = payment("same", 42_000, Some("toys"));
    let first = classify(&rt, &velocity, &input).await;
    let second = classify(&rt, &velocity, &input).await;
    assert_eq!(first.outcome, second.outcome);
    assert_eq!(first.fuel_used, second.fuel_used);
}

/// Runs a hostile plugin and then checks the host still serves the example plugin.
async fn contained(
    rt: &PluginRuntime,
    hostile: &LoadedPlugin,
    limits: &PluginLimits,
) -> CallReport {
    let report = rt
        .classify(hostile, &payment("h", 1_000, None), limits)
        .await;
    assert!(
        report.wall_time < Duration::from_secs(2),
        "a hostile plugin held the host for {:?}",
        report.wall_time
    );
    let velocity = load(rt, "velocity").await;
    let after = classify(rt, &velocity, &payment("after", 1_000, None)).await;
    assert_eq!(
        after.outcome.unwrap().decision,
        Decision::Allow,
        "the host keeps serving"
    );
    report
}

#[tokio::test]
async fn an_infinite_loop_is_cut_off_at_the_deadline() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_loop").await;
    let report = rt
        .classify(&hostile, &payment("l", 1, None), &deadline_first())
        .await;
    assert_eq!(
        report.outcome,
        Err(PluginError::Deadline {
            limit: Duration::from_millis(10)
        })
    );
    contained(&rt, &hostile, &deadline_first()).await;
}

#[tokio::test]
async fn a_loop_that_runs_out_of_fuel_first_is_reported_as_such() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_loop").await;
    let limits = PluginLimits {
        fuel: 100_000,
        deadline: common::TEST_MAX_DEADLINE,
        ..PluginLimits::default()
    };
    let report = rt.classify(&hostile, &payment("f", 1, None), &limits).await;
    assert_eq!(
        report.outcome,
        Err(PluginError::OutOfFuel { limit: 100_000 })
    );
    assert_eq!(report.fuel_used, 100_000);
}

#[tokio::test]
async fn a_loop_during_start_up_is_cut_off_too() {
    let rt = runtime();
    let compiled = rt.compile(&plugin("hostile_startup_loop")).unwrap();
    let described = rt.describe(&compiled, &deadline_first()).await;
    assert_eq!(
        described,
        Err(UploadError::DescribeFailed(PluginError::Deadline {
            limit: Duration::from_millis(10)
        }))
    );
    let hostile = load_undescribed(&rt, "hostile_startup_loop");
    let report = rt
        .classify(&hostile, &payment("s", 1, None), &deadline_first())
        .await;
    assert_eq!(
        report.outcome,
        Err(PluginError::Deadline {
            limit: Duration::from_millis(10)
        })
    );
    assert!(
        report.fuel_used > 0,
        "the guest ran only during instantiation"
    );
    contained(&rt, &hostile, &deadline_first()).await;
}

#[tokio::test]
async fn a_plugin_asleep_in_a_host_call_is_cut_off() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_sleep").await;
    let report = rt
        .classify(&hostile, &payment("z", 1, None), &PluginLimits::default())
        .await;
    contained(&rt, &hostile, &deadline_first()).await;
    assert_eq!(
        report.outcome,
        Err(PluginError::Deadline {
            limit: Duration::from_millis(10)
        })
    );
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_cap() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_memory_bomb").await;
    let limits = PluginLimits {
        deadline: common::TEST_MAX_DEADLINE,
        ..PluginLimits::default()
    };
    let report = rt.classify(&hostile, &payment("m", 1, None), &limits).await;
    assert_eq!(
        report.outcome,
        Err(PluginError::OutOfMemory {
            limit_bytes: 32 << 20
        })
    );
    contained(&rt, &hostile, &common::relaxed()).await;
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_recursion").await;
    let report = contained(&rt, &hostile, &common::relaxed()).await;
    assert_eq!(report.outcome, Err(PluginError::StackOverflow));
}

#[tokio::test]
async fn a_trap_is_reported_with_the_guest_log() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_trap").await;
    let report = contained(&rt, &hostile, &common::relaxed()).await;
    match &report.outcome {
        Err(PluginError::Trap { message }) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(
        report.log.contains("plugin bug: index out of range"),
        "log: {}",
        report.log
    );
}

#[tokio::test]
async fn huge_output_is_refused_and_the_log_is_capped() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_huge_output").await;
    let limits = PluginLimits {
        deadline: common::TEST_MAX_DEADLINE,
        ..PluginLimits::default()
    };
    let report = rt.classify(&hostile, &payment("o", 1, None), &limits).await;
    assert_eq!(
        report.outcome,
        Err(PluginError::OutputTooLarge {
            bytes: (8 << 20) + "hostile.rule".len(),
            limit: 16 << 10
        })
    );
    assert!(report.log_truncated);
    assert_eq!(report.log.len(), 4 << 10);
}

#[tokio::test]
async fn a_verdict_naming_an_undeclared_rule_is_malformed() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_unknown_rule").await;
    let report = contained(&rt, &hostile, &common::relaxed()).await;
    assert_eq!(
        report.outcome,
        Err(PluginError::MalformedVerdict {
            problem: "rule \"hostile.made-up\" is not one of the rules describe() declared".into()
        })
    );
}

#[tokio::test]
async fn an_oversized_request_never_reaches_the_plugin() {
    let rt = runtime();
    let velocity = load(&rt, "velocity").await;
    let big = input(
        "big",
        Action::Other {
            kind: "notes.write".into(),
            params_json: format!("{{\"text\":\"{}\"}}", "a".repeat(70_000)),
        },
    );
    let report = classify(&rt, &velocity, &big).await;
    assert!(matches!(
        report.outcome,
        Err(PluginError::InputTooLarge { limit: 65_536, .. })
    ));
    assert_eq!(report.fuel_used, 0);
}

/// The `probe {json}` line the WASI probe prints.
fn probe(report: &CallReport) -> serde_json::Value {
    let line = report
        .log
        .lines()
        .find_map(|l| l.strip_prefix("probe {"))
        .unwrap();
    serde_json::from_str(&format!("{{{line}")).unwrap()
}

#[tokio::test]
async fn the_sandbox_denies_everything_and_is_deterministic() {
    let rt = runtime();
    let probe_plugin = load(&rt, "hostile_wasi_probe").await;
    let first = classify(&rt, &probe_plugin, &payment("req-1", 1, None)).await;
    assert_eq!(first.outcome.as_ref().unwrap().decision, Decision::Allow);
    let seen = probe(&first);
    assert_eq!(seen["env_vars"], 0);
    assert!(seen["args"].as_u64().unwrap() <= 1);
    for denied in ["read_root", "read_file", "create_file", "tcp", "udp", "dns"] {
        assert_eq!(seen[denied], "err", "{denied} must be denied");
    }
    assert_eq!(seen["stdin_bytes"], 0);
    assert_eq!(
        seen["wall_ms"], 1_795_000_000_123u64,
        "the clock reads the request time"
    );
    assert!(first.log.contains("probe stderr"), "stderr is captured");

    let again = probe(&classify(&rt, &probe_plugin, &payment("req-1", 1, None)).await);
    let other = probe(&classify(&rt, &probe_plugin, &payment("req-2", 1, None)).await);
    for random in ["random_u64", "insecure_random_u64"] {
        assert_eq!(
            seen[random].as_u64(),
            again[random].as_u64(),
            "{random} is seeded per request"
        );
        assert_ne!(
            seen[random].as_u64(),
            other[random].as_u64(),
            "{random} differs across requests"
        );
    }
}

#[tokio::test]
async fn many_concurrent_calls_share_a_small_pool() {
    let rt = common::runtime_with(RuntimeConfig {
        max_concurrent_calls: 2,
        ..common::test_config()
    });
    let velocity = Arc::new(load(&rt, "velocity").await);
    let calls = (0..64).map(|i| {
        let (rt, velocity) = (Arc::clone(&rt), Arc::clone(&velocity));
        tokio::spawn(async move {
            let amount = if i % 2 == 0 { 1_000 } else { 2_000 };
            rt.classify(
                &velocity,
                &payment(&format!("c{i}"), amount, None),
                &common::relaxed(),
            )
            .await
        })
    });
    for call in calls {
        assert_eq!(
            call.await.unwrap().outcome.unwrap().decision,
            Decision::Allow
        );
    }
}

#[test]
fn uploads_that_are_not_risk_classifiers_are_refused_in_plain_words() {
    let rt = runtime();
    let refusal = |bytes: &[u8]| rt.compile(bytes).unwrap_err().to_string();
    assert_eq!(refusal(b""), "the upload is empty");
    assert_eq!(
        refusal(b"MZ\x90\0 not wasm"),
        "the upload is not WebAssembly (it does not start with the bytes \\0asm)"
    );
    assert_eq!(
        refusal(b"\0asm\x01\0\0\0"),
        "the upload is a core WebAssembly module, not a component: build it for the wasm32-wasip2 \
         target (or wrap it with `wasm-tools component new`)"
    );
    assert_eq!(
        refusal(&plugin("wrong_world")),
        "the component does not implement the `risk-classifier` world: it must export \
         `approval:risk/classifier@0.1.0`, but it exports `acme:greeter/greeter@0.1.0`"
    );
    assert_eq!(
        refusal(&plugin("forbidden_import")),
        "the component imports `acme:secrets/vault@0.1.0`, which the host does not provide: \
         plugins may import only WASI interfaces (wasi:*)"
    );
    let velocity = plugin("velocity");
    let truncated = refusal(&velocity[..velocity.len() / 2]);
    assert!(
        truncated.starts_with("the component is not valid WebAssembly: "),
        "{truncated}"
    );

    let small = common::runtime_with(RuntimeConfig {
        max_component_bytes: 1_000,
        ..RuntimeConfig::default()
    });
    assert_eq!(
        small.compile(&velocity).unwrap_err(),
        UploadError::TooLarge {
            bytes: velocity.len(),
            limit: 1_000
        }
    );
}

#[test]
fn compiled_artifacts_are_reused_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let first = common::runtime_with(config.clone());
    let compiled = first.compile(&plugin("velocity")).unwrap();
    let engine_dirs: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(
        engine_dirs.len(),
        1,
        "one directory per engine compatibility hash"
    );
    let artifact = engine_dirs[0]
        .path()
        .join(format!("{}.cwasm", compiled.sha256_hex()));
    assert!(artifact.exists());

    // A corrupt artifact is discarded and recompiled, never trusted.
    std::fs::write(&artifact, b"garbage").unwrap();
    let second = common::runtime_with(config);
    let recompiled = second.compile(&plugin("velocity")).unwrap();
    assert_eq!(recompiled.sha256_hex(), compiled.sha256_hex());
    assert!(
        std::fs::metadata(&artifact).unwrap().len() > 1_000,
        "the artifact was rewritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_whose_plugin_spins_holds_only_its_own_slots() {
    let config = common::test_config();
    let rt = common::runtime_with(RuntimeConfig {
        max_calls_per_vendor: 1,
        queue_timeout: Duration::from_millis(100),
        platform_max: PluginLimits {
            fuel: u64::MAX / 2,
            ..config.platform_max
        },
        ..config
    });
    let spinning = Arc::new(load(&rt, "hostile_loop").await);
    let mut neighbour = load(&rt, "velocity").await;
    neighbour.identity.vendor = format!("{}-neighbour", spinning.identity.vendor);
    // Fuel without end: each call spins to its 1 s deadline, ten times the queue timeout.
    let long = PluginLimits {
        fuel: u64::MAX / 2,
        deadline: Duration::from_secs(1),
        ..PluginLimits::default()
    };
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let (rt, spinning, long) = (Arc::clone(&rt), Arc::clone(&spinning), long);
            tokio::spawn(async move {
                rt.classify(&spinning, &payment(&format!("s{i}"), 1, None), &long)
                    .await
                    .outcome
            })
        })
        .collect();
    // Another vendor's call runs meanwhile.
    let other = rt
        .classify(&neighbour, &payment("n1", 1_000, None), &common::relaxed())
        .await;
    assert_eq!(other.outcome.unwrap().decision, Decision::Allow);
    let mut spun = 0;
    for call in calls {
        match call.await.unwrap() {
            Err(PluginError::OutOfFuel { .. } | PluginError::Deadline { .. }) => spun += 1,
            Err(PluginError::Busy { waited }) => assert_eq!(waited, Duration::from_millis(100)),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The vendor's one slot ran one spinning call; the others found no slot in time.
    assert_eq!(spun, 1);
}

#[tokio::test]
async fn a_plugin_that_keeps_running_out_of_time_is_paused_then_probed() {
    let rt = runtime();
    let hostile = load(&rt, "hostile_loop").await;
    let at = |ms: u64, id: &str| {
        let mut input = payment(id, 1, None);
        input.request.requested_at_ms += ms;
        input
    };
    for i in 0..3 {
        let report = rt
            .classify(&hostile, &at(i, &format!("spin{i}")), &deadline_first())
            .await;
        assert_eq!(report.outcome.unwrap_err().code(), "plugin_deadline");
    }
    // Paused: the host answers at once, without running the guest, and says until when.
    let paused = rt
        .classify(&hostile, &at(5_000, "paused"), &deadline_first())
        .await;
    let start = payment("", 1, None).request.requested_at_ms;
    assert_eq!(
        paused.outcome,
        Err(PluginError::Suspended {
            until_ms: start + 2 + 10_000,
            failures: 3
        })
    );
    assert_eq!((paused.fuel_used, paused.wall_time), (0, Duration::ZERO));
    assert_eq!(
        paused.outcome.unwrap_err().fault(),
        approval_host::plugin::Fault::Guest
    );
    // Other plugins of the same runtime are not paused.
    let velocity = load(&rt, "velocity").await;
    let other = classify(&rt, &velocity, &at(5_000, "other")).await;
    assert_eq!(other.outcome.unwrap().decision, Decision::Allow);
    // After the pause one call probes the plugin; it spins again, so the next pause is longer.
    let probe = rt
        .classify(&hostile, &at(10_002, "probe"), &deadline_first())
        .await;
    assert_eq!(probe.outcome.unwrap_err().code(), "plugin_deadline");
    let again = rt
        .classify(&hostile, &at(10_003, "again"), &deadline_first())
        .await;
    assert_eq!(
        again.outcome,
        Err(PluginError::Suspended {
            until_ms: start + 10_002 + 20_000,
            failures: 4
        })
    );
}
