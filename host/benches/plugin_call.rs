//! What one plugin call costs: the example plugin `velocity` called the production way (a fresh
//! store and instance per call), on one kept instance, and as the same logic in native Rust.
//!
//! Run with `cargo bench -p approval-host --bench plugin_call`; see BENCHMARKS.md for results.
//!
//! - `fresh_instance_call`: `PluginRuntime::classify`, the production path: call slot, sandbox
//!   (WASI context, RNG seeding), `Store`, instantiation from the pool, the guest's `classify`,
//!   contract checks, store drop.
//! - `reused_instance_call`: `ReusedInstance::classify`, the guest call alone on one instance
//!   (argument lowering, guest code, result lifting). Benchmark-only: the host never reuses.
//! - `native_rust`: velocity's rules ported to native Rust on the host's domain types.
//! - `fresh_describe_call`: `PluginRuntime::describe`, a fresh store and instance running the
//!   trivial `describe` export: the cost of a fresh call with almost no guest work.
//! - `instantiate_and_drop`: `PluginRuntime::reused_instance` then drop: sandbox, store,
//!   instantiation and teardown with no guest call at all.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use approval_host::plugin::{
    LoadedPlugin, PluginError, PluginLimits, PluginRuntime, ReusedInstance, RuntimeConfig,
    UploadError,
};
use approval_host::risk::{
    Action, Activity, ClassifyInput, CounterOffer, Decision, EffectivePolicy, History, Money,
    RiskRequest, Verdict,
};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};

const VELOCITY: &str = concat!(env!("APPROVAL_HOST_PLUGINS_DIR"), "/velocity.wasm");

/// A payment of 1_000 minor units (10.00 CNY) with no merchant category, a CNY hourly spend
/// limit and a little history: velocity checks all three rules and allows.
fn bench_input() -> ClassifyInput {
    ClassifyInput {
        request: RiskRequest {
            id: "bench-request-0001".into(),
            vendor: "acme-toys".into(),
            actor: "teddy-7".into(),
            device_context: vec!["family-context".into()],
            action: Action::Payment {
                amount: Money::new(1_000, "CNY"),
                recipient: "toy-shop".into(),
                merchant_category: None,
            },
            requested_at_ms: 1_795_000_000_123,
        },
        policy: EffectivePolicy {
            settings: vec![("max-hourly-spend.CNY".into(), "100000".into())],
            ..EffectivePolicy::default()
        },
        history: History {
            last_hour: Activity {
                requests: 3,
                payments: 2,
                denied: 0,
                approved_spend: vec![Money::new(30_000, "CNY"), Money::new(5_000, "USD")],
            },
            last_day: Activity {
                requests: 9,
                payments: 6,
                denied: 1,
                approved_spend: vec![Money::new(80_000, "CNY"), Money::new(5_000, "USD")],
            },
            pending: 0,
        },
    }
}

/// Inputs on which every rule fires once (and one broken setting): the native port must give
/// exactly the plugin's answers, or the baseline is not measuring the same logic.
fn cross_check_inputs() -> Vec<ClassifyInput> {
    let with_payment = |minor_units: u64, category: Option<&str>| {
        let mut input = bench_input();
        input.request.action = Action::Payment {
            amount: Money::new(minor_units, "CNY"),
            recipient: "toy-shop".into(),
            merchant_category: category.map(str::to_owned),
        };
        input
    };
    let mut busy = bench_input();
    busy.history.last_hour.payments = 5;
    let mut broken = bench_input();
    broken
        .policy
        .settings
        .push(("max-payments-per-hour".into(), "lots".into()));
    let mut memory = bench_input();
    memory.request.action = Action::MemoryWrite {
        namespace: "family".into(),
        key: "list".into(),
    };
    vec![
        bench_input(),
        with_payment(1_000, Some(" Gambling ")),
        with_payment(1_000, Some("groceries")),
        busy,
        with_payment(60_000, None),
        with_payment(70_000, None),
        with_payment(70_001, None),
        broken,
        memory,
    ]
}

fn expect_allow(verdict: &Verdict) {
    assert_eq!(verdict.decision, Decision::Allow, "{verdict:?}");
    assert_eq!(verdict.rule_id, "");
    assert_eq!(verdict.reason, "no velocity rule fired");
}

/// Compiles and describes a component as acme-toys' plugin, version 1, as an upload does.
fn load(tokio: &tokio::runtime::Runtime, rt: &PluginRuntime, bytes: &[u8]) -> LoadedPlugin {
    let compiled = rt.compile(bytes).unwrap();
    let info = tokio
        .block_on(rt.describe(&compiled, &PluginLimits::at_upload()))
        .unwrap();
    LoadedPlugin::new("acme-toys", 1, compiled, info)
}

/// Registers `plugin`'s call on a fresh instance and on `reused` (an instance of it) in `group`.
fn fresh_and_reused(
    group: &mut BenchmarkGroup<'_, WallTime>,
    tokio: &tokio::runtime::Runtime,
    rt: &PluginRuntime,
    plugin: &LoadedPlugin,
    reused: &mut ReusedInstance,
    input: &ClassifyInput,
    limits: &PluginLimits,
) {
    group.bench_function("fresh_instance_call", |b| {
        b.iter(|| tokio.block_on(rt.classify(black_box(plugin), black_box(input), limits)));
    });
    group.bench_function("reused_instance_call", |b| {
        b.iter(|| tokio.block_on(reused.classify(black_box(input))).unwrap());
    });
}

fn bench_plugin_call(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let rt = PluginRuntime::new(RuntimeConfig::default()).unwrap();
    let bytes = std::fs::read(VELOCITY).unwrap_or_else(|e| panic!("{VELOCITY}: {e}"));
    let limits = PluginLimits::default();
    let plugin = load(&tokio, &rt, &bytes);
    let input = bench_input();

    // Every path must give the same answer before it is timed.
    let report = tokio.block_on(rt.classify(&plugin, &input, &limits));
    expect_allow(report.outcome.as_ref().unwrap());
    eprintln!(
        "first (cold) fresh call: fuel_used = {}, reported wall_time = {:?}",
        report.fuel_used, report.wall_time
    );
    let mut reused = tokio.block_on(rt.reused_instance(&plugin)).unwrap();
    expect_allow(&tokio.block_on(reused.classify(&input)).unwrap());
    expect_allow(&native::classify(&input).unwrap());
    for case in cross_check_inputs() {
        let plugin_answer = match tokio.block_on(rt.classify(&plugin, &case, &limits)).outcome {
            Ok(verdict) => Ok(verdict),
            Err(PluginError::Declined { message }) => Err(message),
            Err(other) => panic!("velocity failed: {other:?}"),
        };
        assert_eq!(
            native::classify(&case),
            plugin_answer,
            "the native port disagrees with velocity"
        );
    }

    let mut group = c.benchmark_group("plugin_call");
    group
        .sample_size(100)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    fresh_and_reused(
        &mut group,
        &tokio,
        &rt,
        &plugin,
        &mut reused,
        &input,
        &limits,
    );
    group.bench_function("native_rust", |b| {
        b.iter(|| native::classify(black_box(&input)).unwrap());
    });
    let at_upload = PluginLimits::at_upload();
    group.bench_function("fresh_describe_call", |b| {
        b.iter(|| {
            match tokio.block_on(rt.describe(black_box(&plugin.compiled), &at_upload)) {
                // On a loaded machine, one call in a million may be descheduled past the
                // deadline (fresh_instance_call reports such a call instead of failing).
                Ok(_) | Err(UploadError::DescribeFailed(PluginError::Deadline { .. })) => {}
                Err(other) => panic!("describe failed: {other:?}"),
            }
        });
    });
    group.bench_function("instantiate_and_drop", |b| {
        b.iter(|| {
            drop(
                tokio
                    .block_on(rt.reused_instance(black_box(&plugin)))
                    .unwrap(),
            )
        });
    });
    group.finish();
}

/// Velocity's three rules in native Rust on the host's domain types.
///
/// This mirrors plugins/velocity/src/lib.rs rule for rule (same order, settings parsing, reasons,
/// counter-offer, reason truncation) and exists ONLY as the baseline of this benchmark: the
/// plugin is the implementation; keep this in step with it when it changes.
mod native {
    use super::{Action, ClassifyInput, CounterOffer, Decision, Money, Verdict};

    const RULE_BLOCKED_MERCHANT: &str = "velocity.blocked-merchant";
    const RULE_PAYMENTS_PER_HOUR: &str = "velocity.payments-per-hour";
    const RULE_HOURLY_SPEND: &str = "velocity.hourly-spend";
    const SETTING_BLOCKED_CATEGORIES: &str = "blocked-merchant-categories";
    const DEFAULT_BLOCKED_CATEGORIES: &str = "gambling";
    const SETTING_MAX_PAYMENTS_PER_HOUR: &str = "max-payments-per-hour";
    const DEFAULT_MAX_PAYMENTS_PER_HOUR: u64 = 5;
    const SETTING_MAX_HOURLY_SPEND_PREFIX: &str = "max-hourly-spend.";
    const MAX_REASON_BYTES: usize = 500;

    pub fn classify(input: &ClassifyInput) -> Result<Verdict, String> {
        let Action::Payment {
            amount,
            merchant_category,
            ..
        } = &input.request.action
        else {
            return Ok(no_rule_fired());
        };
        let settings = Settings(&input.policy.settings);
        if let Some(verdict) = blocked_merchant(merchant_category.as_deref(), &settings) {
            return Ok(verdict);
        }
        if let Some(verdict) = payments_per_hour(input, &settings)? {
            return Ok(verdict);
        }
        if let Some(verdict) = hourly_spend(amount, input, &settings)? {
            return Ok(verdict);
        }
        Ok(no_rule_fired())
    }

    fn blocked_merchant(category: Option<&str>, settings: &Settings<'_>) -> Option<Verdict> {
        let category = category?.trim();
        let blocked = settings
            .get(SETTING_BLOCKED_CATEGORIES)
            .unwrap_or(DEFAULT_BLOCKED_CATEGORIES);
        let is_blocked = blocked
            .split(',')
            .map(str::trim)
            .any(|b| !b.is_empty() && b.eq_ignore_ascii_case(category));
        is_blocked.then(|| {
            verdict(
                Decision::Deny,
                RULE_BLOCKED_MERCHANT,
                format!("payments to merchants of category \"{category}\" are blocked"),
                None,
            )
        })
    }

    fn payments_per_hour(
        input: &ClassifyInput,
        settings: &Settings<'_>,
    ) -> Result<Option<Verdict>, String> {
        let max = settings
            .number(SETTING_MAX_PAYMENTS_PER_HOUR)?
            .unwrap_or(DEFAULT_MAX_PAYMENTS_PER_HOUR);
        let count = u64::from(input.history.last_hour.payments) + 1;
        if count <= max {
            return Ok(None);
        }
        Ok(Some(verdict(
            Decision::Escalate,
            RULE_PAYMENTS_PER_HOUR,
            format!("this would be payment number {count} in the last hour; the limit is {max}"),
            None,
        )))
    }

    fn hourly_spend(
        amount: &Money,
        input: &ClassifyInput,
        settings: &Settings<'_>,
    ) -> Result<Option<Verdict>, String> {
        let currency = amount.currency.as_str();
        let mut key = String::with_capacity(SETTING_MAX_HOURLY_SPEND_PREFIX.len() + currency.len());
        key.push_str(SETTING_MAX_HOURLY_SPEND_PREFIX);
        key.push_str(currency);
        let Some(limit) = settings.number(&key)? else {
            return Ok(None);
        };
        let spent = input
            .history
            .last_hour
            .approved_spend
            .iter()
            .filter(|m| m.currency == currency)
            .fold(0u64, |sum, m| sum.saturating_add(m.minor_units));
        let total = spent.saturating_add(amount.minor_units);
        if total <= limit {
            return Ok(None);
        }
        let remaining = limit.saturating_sub(spent);
        let counter_offer =
            (remaining > 0).then(|| CounterOffer::Amount(Money::new(remaining, currency)));
        let mut reason = format!(
            "this payment would bring the last hour's spend to {}, above the hourly limit of {}",
            money(total, currency),
            money(limit, currency),
        );
        if remaining > 0 {
            reason.push_str(&format!(
                "; up to {} more would be allowed",
                money(remaining, currency)
            ));
        }
        Ok(Some(verdict(
            Decision::Escalate,
            RULE_HOURLY_SPEND,
            reason,
            counter_offer,
        )))
    }

    fn no_rule_fired() -> Verdict {
        verdict(
            Decision::Allow,
            "",
            "no velocity rule fired".to_string(),
            None,
        )
    }

    fn verdict(
        decision: Decision,
        rule_id: &str,
        mut reason: String,
        counter_offer: Option<CounterOffer>,
    ) -> Verdict {
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Verdict {
            decision,
            rule_id: rule_id.to_string(),
            reason,
            ttl: None,
            counter_offer,
        }
    }

    struct Settings<'a>(&'a [(String, String)]);

    impl<'a> Settings<'a> {
        fn get(&self, key: &str) -> Option<&'a str> {
            self.0
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }

        fn number(&self, key: &str) -> Result<Option<u64>, String> {
            match self.get(key) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| format!("setting {key} is not a number: {value}")),
            }
        }
    }

    fn money(minor_units: u64, currency: &str) -> String {
        let decimals: u32 = match currency {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF"
            | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        };
        if decimals == 0 {
            return format!("{minor_units} {currency}");
        }
        let scale = 10u64.pow(decimals);
        format!(
            "{}.{:0width$} {currency}",
            minor_units / scale,
            minor_units % scale,
            width = decimals as usize
        )
    }
}

/// The same rules in Python (plugins/velocity-py, built by `scripts/bench` with componentize-py
/// into `target/bench-plugins/velocity_py.wasm`): a fresh-instance call and a reused instance.
/// Skipped when the component has not been built.
fn bench_python_plugin(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("bench-plugins/velocity_py.wasm");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!(
            "{} is not built: skipping plugin_call_python",
            path.display()
        );
        return;
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let rt = PluginRuntime::new(RuntimeConfig::default()).unwrap();
    // The same default limits as the Rust plugin: CPython fits them (about 370,000 fuel and
    // 1 ms a call).
    let limits = PluginLimits::default();
    let plugin = load(&tokio, &rt, &bytes);
    let input = bench_input();
    let report = tokio.block_on(rt.classify(&plugin, &input, &limits));
    let verdict = report.outcome.as_ref().unwrap();
    assert_eq!(verdict.decision, Decision::Allow, "{verdict:?}");
    eprintln!(
        "python: first fresh call: fuel_used = {}, wall_time = {:?}",
        report.fuel_used, report.wall_time
    );
    let mut reused = tokio.block_on(rt.reused_instance(&plugin)).unwrap();
    let mut group = c.benchmark_group("plugin_call_python");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    fresh_and_reused(
        &mut group,
        &tokio,
        &rt,
        &plugin,
        &mut reused,
        &input,
        &limits,
    );
    group.finish();
}

criterion_group!(benches, bench_plugin_call, bench_python_plugin);
criterion_main!(benches);
