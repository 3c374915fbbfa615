//! # `velocity`: the example risk plugin
//!
//! This crate is the reference a vendor can copy to write their own risk plugin for
//! approval-host. It is a WebAssembly component implementing the `risk-classifier` world of
//! `approval:risk@0.1.0` (see `wit/risk-classifier.wit` at the root of the repository), built with
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! ## The contract, in short
//!
//! * `describe()` is called once, when the plugin is uploaded. It names the plugin and lists every
//!   rule a verdict may name. It must not depend on any input.
//! * `classify(input)` is called once per agent request, in a fresh sandbox each time: nothing
//!   survives between calls, so a plugin is stateless. Everything it may look at is in `input`:
//!   the request, the policy in force (including the vendor's own `settings`) and the actor's
//!   recent `history`, which the host computes so that velocity rules like the ones below need no
//!   state of their own.
//! * The answer is a `verdict` (allow / escalate / deny, the rule that decided, a reason a parent
//!   understands, optionally a TTL and a counter-offer), or `err(text)` when the plugin cannot
//!   decide, e.g. because its settings are broken. An `err`, a trap, or running out of fuel,
//!   time or memory is a plugin failure, which the vendor's fail mode turns into an escalation
//!   (default) or a denial. The host combines the verdict with its own built-in triggers; the most
//!   restrictive one wins, so a plugin can only add caution, never remove it.
//! * The sandbox is deterministic and closed: no filesystem, network or environment; clocks read
//!   the request time; stdout/stderr land in a small per-call log kept with the audit record.
//!
//! ## The rules of this plugin
//!
//! Only payments are checked; every other action is allowed. Rules are checked in this order and
//! the first that fires decides:
//!
//! 1. [`RULE_BLOCKED_MERCHANT`]: deny a payment to a blocked merchant category.
//! 2. [`RULE_PAYMENTS_PER_HOUR`]: escalate a payment that exceeds the hourly payment count.
//! 3. [`RULE_HOURLY_SPEND`]: escalate a payment that exceeds the hourly spend in its currency,
//!    offering the amount still allowed as a counter-offer.
//!
//! When none fires the verdict is `allow` with an empty rule id and the reason
//! `"no velocity rule fired"`.
//!
//! ## Settings
//!
//! Settings are key/value strings from the vendor's policy template, possibly overridden per actor
//! by the guardian (when a key appears twice, the last value wins). A setting is read only when
//! the rule using it is checked. A numeric setting that does not parse makes `classify` answer
//! `err("setting <key> is not a number: <value>")`, so a misconfigured policy fails loudly (and
//! the vendor's fail mode applies) rather than silently allowing.
//!
//! | key | used by | value | when absent |
//! | --- | --- | --- | --- |
//! | `blocked-merchant-categories` | blocked-merchant | comma-separated categories | `gambling` |
//! | `max-payments-per-hour` | payments-per-hour | count | 5 |
//! | `max-hourly-spend.<CURRENCY>`, e.g. `max-hourly-spend.CNY` | hourly-spend | minor units | no limit |
//!
//! ## Why `no_std`, and how to use `std` instead
//!
//! The host instantiates a plugin afresh for every call, so start-up is part of every call's cost,
//! and the plugin is built to start cheaply. On wasm32 it is `#![no_std]` with `alloc`: `String`,
//! `Vec` and `format!` work as usual, but nothing links Rust's standard library or wasi-libc's
//! runtime. Its component is then a single core module that imports nothing but the contract's
//! `approval:risk/types`. A `std` plugin on `wasm32-wasip2` links wasi-libc, imports about 13 WASI
//! interfaces (stdio, environment, exit, terminals, streams) and holds three core modules, all
//! instantiated and linked on every call. What `std` would provide, the crate provides itself
//! (`src/guest.rs`): a bump allocator (a fresh instance's memory is thrown away after the call,
//! so freeing costs nothing), the `cabi_realloc` through which the host writes the input into the
//! plugin's memory, and a panic handler that traps. `build.rs` gives it a 64 KiB stack instead of
//! Rust's default 1 MiB (overflowing it traps: the stack sits at the bottom of memory) and links
//! wasi-libc's `memcmp` and friends, which import nothing. Natively (`cargo test -p velocity`) it
//! is an ordinary `std` crate.
//!
//! `std` plugins work too, and are the easier start: they can `println!` into the call's log,
//! which a `no_std` plugin cannot. The price is a slower call, most of it spent instantiating
//! and linking the WASI imports; BENCHMARKS.md (plugin call) measures both builds of this crate.
//! The `std` feature builds it with `std` (`cargo build --release --target wasm32-wasip2 -p
//! velocity --features std`). To write a `std` plugin of your own, leave out the `no_std`
//! attribute, `extern crate alloc`, `mod guest` and `build.rs`; nothing else changes.

#![cfg_attr(all(target_arch = "wasm32", not(feature = "std")), no_std)]

extern crate alloc;

#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
mod guest;

// The bindings for the world, generated at compile time from the repository's WIT. They provide
// the types (`approval::risk::types::*`), the `Guest` trait to implement and the `export!` macro.
wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use alloc::string::{String, ToString as _};
use alloc::{format, vec};

use approval::risk::types::{
    Action, ClassifyInput, CounterOffer, Decision, Money, Payment, PluginInfo, Rule, Verdict,
};
use exports::approval::risk::classifier::Guest;

/// Deny a payment whose merchant category is blocked.
pub const RULE_BLOCKED_MERCHANT: &str = "velocity.blocked-merchant";
/// Escalate a payment that would exceed the number of payments allowed per hour.
pub const RULE_PAYMENTS_PER_HOUR: &str = "velocity.payments-per-hour";
/// Escalate a payment that would exceed the spend allowed per hour in its currency.
pub const RULE_HOURLY_SPEND: &str = "velocity.hourly-spend";

/// Setting: comma-separated merchant categories to deny (compared ignoring ASCII case).
pub const SETTING_BLOCKED_CATEGORIES: &str = "blocked-merchant-categories";
/// Categories blocked when [`SETTING_BLOCKED_CATEGORIES`] is absent.
pub const DEFAULT_BLOCKED_CATEGORIES: &str = "gambling";
/// Setting: the most payments allowed in one hour, this one included.
pub const SETTING_MAX_PAYMENTS_PER_HOUR: &str = "max-payments-per-hour";
/// The limit used when [`SETTING_MAX_PAYMENTS_PER_HOUR`] is absent.
pub const DEFAULT_MAX_PAYMENTS_PER_HOUR: u64 = 5;
/// Setting prefix: `max-hourly-spend.<CURRENCY>` is the most spend allowed in one hour in that
/// currency, in minor units, this payment included. No limit for a currency without the key.
pub const SETTING_MAX_HOURLY_SPEND_PREFIX: &str = "max-hourly-spend.";

/// The contract caps a reason at 500 bytes.
const MAX_REASON_BYTES: usize = 500;

/// The plugin. It holds no state: the host instantiates it afresh for every call.
struct Velocity;

impl Guest for Velocity {
    fn describe() -> PluginInfo {
        let rule = |id: &str, description: &str| Rule {
            id: id.to_string(),
            description: description.to_string(),
        };
        PluginInfo {
            name: "velocity".to_string(),
            version: "1.0.0".to_string(),
            rules: vec![
                rule(
                    RULE_BLOCKED_MERCHANT,
                    "Denies a payment whose merchant category is listed in the setting \
                     blocked-merchant-categories (comma-separated; default: gambling).",
                ),
                rule(
                    RULE_PAYMENTS_PER_HOUR,
                    "Escalates a payment when the payments of the last hour plus this one exceed \
                     the setting max-payments-per-hour (default: 5).",
                ),
                rule(
                    RULE_HOURLY_SPEND,
                    "Escalates a payment when the approved spend of the last hour in its currency \
                     plus this amount exceeds the setting max-hourly-spend.<CURRENCY> (minor \
                     units; no limit when absent), offering the remaining allowance instead.",
                ),
            ],
        }
    }

    fn classify(input: ClassifyInput) -> Result<Verdict, String> {
        let Action::Payment(payment) = &input.request.action else {
            return Ok(no_rule_fired());
        };
        let settings = Settings(&input.policy.settings);

        if let Some(verdict) = blocked_merchant(payment, &settings) {
            return Ok(verdict);
        }
        if let Some(verdict) = payments_per_hour(&input, &settings)? {
            return Ok(verdict);
        }
        if let Some(verdict) = hourly_spend(payment, &input, &settings)? {
            return Ok(verdict);
        }
        Ok(no_rule_fired())
    }
}

/// Rule 1, [`RULE_BLOCKED_MERCHANT`]: deny a payment to a blocked merchant category. A payment
/// whose category the agent does not know passes this rule.
fn blocked_merchant(payment: &Payment, settings: &Settings<'_>) -> Option<Verdict> {
    let category = payment.merchant_category.as_deref()?.trim();
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

/// Rule 2, [`RULE_PAYMENTS_PER_HOUR`]: escalate when the payments of the last hour plus this one
/// exceed the hourly limit.
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

/// Rule 3, [`RULE_HOURLY_SPEND`]: escalate when the spend approved in the last hour in the
/// payment's currency plus this amount exceeds the hourly limit for that currency. When some
/// allowance remains, the plugin counter-offers it: a payment of that amount would pass.
fn hourly_spend(
    payment: &Payment,
    input: &ClassifyInput,
    settings: &Settings<'_>,
) -> Result<Option<Verdict>, String> {
    let currency = payment.amount.currency.as_str();
    let mut key = String::with_capacity(SETTING_MAX_HOURLY_SPEND_PREFIX.len() + currency.len());
    key.push_str(SETTING_MAX_HOURLY_SPEND_PREFIX);
    key.push_str(currency);
    let Some(limit) = settings.number(&key)? else {
        return Ok(None); // no limit for this currency
    };

    // The host sends one entry per currency; summing is harmless if it ever sent more.
    let spent = input
        .history
        .last_hour
        .approved_spend
        .iter()
        .filter(|m| m.currency == currency)
        .fold(0u64, |sum, m| sum.saturating_add(m.minor_units));
    let total = spent.saturating_add(payment.amount.minor_units);
    if total <= limit {
        return Ok(None);
    }

    let remaining = limit.saturating_sub(spent);
    let counter_offer = (remaining > 0).then(|| {
        CounterOffer::Amount(Money {
            minor_units: remaining,
            currency: currency.to_string(),
        })
    });
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

/// The verdict when no rule fires.
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
    // A category comes from the agent and could be long: keep within the contract's limit.
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
        ttl_seconds: None,
        counter_offer,
    }
}

/// The policy's settings, looked up by key.
struct Settings<'a>(&'a [(String, String)]);

impl<'a> Settings<'a> {
    /// The value of `key`; when the key appears more than once, the last one (an override) wins.
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` as a non-negative integer, `Ok(None)` when absent.
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

/// An amount in minor units written in major units for a reason, e.g. `1200.50 CNY`. Currencies
/// without minor units (JPY, KRW, ...) or with three decimals (KWD, BHD, ...) are written as such.
fn money(minor_units: u64, currency: &str) -> String {
    let decimals: u32 = match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
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

export!(Velocity);

#[cfg(test)]
mod tests {
    //! The rules, checked natively: `cargo test -p velocity` (no wasm needed).

    use super::*;
    use approval::risk::types::{Activity, GenericAction, History, Policy, Request};

    fn activity(payments: u32, spend: &[(u64, &str)]) -> Activity {
        Activity {
            requests: payments,
            payments,
            denied: 0,
            approved_spend: spend
                .iter()
                .map(|&(minor_units, currency)| Money {
                    minor_units,
                    currency: currency.to_string(),
                })
                .collect(),
        }
    }

    fn input(action: Action, settings: &[(&str, &str)], last_hour: Activity) -> ClassifyInput {
        ClassifyInput {
            request: Request {
                id: "req-1".to_string(),
                vendor: "acme".to_string(),
                actor: "tablet".to_string(),
                device_context: vec![],
                action,
                requested_at_ms: 1_700_000_000_000,
            },
            policy: Policy {
                spend_thresholds: vec![],
                sensitive_categories: vec![],
                mint_ratio_percent: 50,
                default_ttl_seconds: 3600,
                settings: settings
                    .iter()
                    .map(|&(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            history: History {
                last_hour: last_hour.clone(),
                last_day: last_hour,
                pending: 0,
            },
        }
    }

    fn pay(minor_units: u64, currency: &str, category: Option<&str>) -> Action {
        Action::Payment(Payment {
            amount: Money {
                minor_units,
                currency: currency.to_string(),
            },
            recipient: "shop".to_string(),
            merchant_category: category.map(str::to_string),
        })
    }

    fn classify(action: Action, settings: &[(&str, &str)], last_hour: Activity) -> Verdict {
        Velocity::classify(input(action, settings, last_hour)).expect("a verdict")
    }

    #[test]
    fn describe_lists_the_three_rules() {
        let info = Velocity::describe();
        assert_eq!(
            (info.name.as_str(), info.version.as_str()),
            ("velocity", "1.0.0")
        );
        let ids: Vec<_> = info.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                RULE_BLOCKED_MERCHANT,
                RULE_PAYMENTS_PER_HOUR,
                RULE_HOURLY_SPEND
            ]
        );
    }

    #[test]
    fn non_payment_and_quiet_payment_allow() {
        let other = Action::Other(GenericAction {
            kind: "calendar.share".to_string(),
            params_json: "{}".to_string(),
        });
        for action in [other, pay(100, "CNY", Some("groceries"))] {
            let v = classify(action, &[], activity(0, &[]));
            assert_eq!(v.decision, Decision::Allow);
            assert_eq!(v.rule_id, "");
            assert_eq!(v.reason, "no velocity rule fired");
        }
    }

    #[test]
    fn gambling_is_blocked_by_default_and_the_setting_replaces_the_default() {
        let v = classify(pay(100, "CNY", Some("gambling")), &[], activity(0, &[]));
        assert_eq!(
            (v.decision, v.rule_id.as_str()),
            (Decision::Deny, RULE_BLOCKED_MERCHANT)
        );
        assert!(v.reason.contains("gambling"), "{}", v.reason);

        let settings = [(SETTING_BLOCKED_CATEGORIES, "crypto, weapons")];
        let v = classify(
            pay(100, "CNY", Some("weapons")),
            &settings,
            activity(0, &[]),
        );
        assert_eq!(v.rule_id, RULE_BLOCKED_MERCHANT);
        assert!(v.reason.contains("weapons"), "{}", v.reason);
        let v = classify(
            pay(100, "CNY", Some("gambling")),
            &settings,
            activity(0, &[]),
        );
        assert_eq!(v.decision, Decision::Allow);
    }

    #[test]
    fn blocked_merchant_wins_over_velocity() {
        let settings = [("max-hourly-spend.CNY", "1")];
        let v = classify(
            pay(100, "CNY", Some("gambling")),
            &settings,
            activity(99, &[]),
        );
        assert_eq!(
            (v.decision, v.rule_id.as_str()),
            (Decision::Deny, RULE_BLOCKED_MERCHANT)
        );
    }

    #[test]
    fn payments_per_hour() {
        let v = classify(pay(100, "CNY", None), &[], activity(4, &[]));
        assert_eq!(v.decision, Decision::Allow);
        let v = classify(pay(100, "CNY", None), &[], activity(5, &[]));
        assert_eq!(
            (v.decision, v.rule_id.as_str()),
            (Decision::Escalate, RULE_PAYMENTS_PER_HOUR)
        );
        assert!(v.counter_offer.is_none());
        let settings = [(SETTING_MAX_PAYMENTS_PER_HOUR, "10")];
        let v = classify(pay(100, "CNY", None), &settings, activity(9, &[]));
        assert_eq!(v.decision, Decision::Allow);
    }

    #[test]
    fn hourly_spend_counter_offers_the_remaining_allowance() {
        let settings = [("max-hourly-spend.CNY", "100000")];
        let spent = activity(1, &[(5000, "USD"), (70000, "CNY")]);
        let v = classify(pay(30000, "CNY", None), &settings, spent.clone());
        assert_eq!(v.decision, Decision::Allow);

        let v = classify(pay(30001, "CNY", None), &settings, spent.clone());
        assert_eq!(
            (v.decision, v.rule_id.as_str()),
            (Decision::Escalate, RULE_HOURLY_SPEND)
        );
        assert!(
            matches!(
                &v.counter_offer,
                Some(CounterOffer::Amount(Money { minor_units: 30000, currency })) if currency == "CNY"
            ),
            "{:?}",
            v.counter_offer
        );
        assert!(v.reason.contains("1000.00 CNY"), "{}", v.reason);

        // Nothing left: escalate without a counter-offer.
        let v = classify(
            pay(1, "CNY", None),
            &[("max-hourly-spend.CNY", "70000")],
            spent.clone(),
        );
        assert_eq!(v.rule_id, RULE_HOURLY_SPEND);
        assert!(v.counter_offer.is_none());

        // No limit for a currency without a key.
        let v = classify(pay(u64::MAX, "USD", None), &settings, spent);
        assert_eq!(v.decision, Decision::Allow);
    }

    #[test]
    fn a_setting_that_is_not_a_number_is_an_error() {
        let err = Velocity::classify(input(
            pay(100, "CNY", None),
            &[(SETTING_MAX_PAYMENTS_PER_HOUR, "lots")],
            activity(0, &[]),
        ))
        .expect_err("an error");
        assert_eq!(err, "setting max-payments-per-hour is not a number: lots");

        let err = Velocity::classify(input(
            pay(100, "CNY", None),
            &[("max-hourly-spend.CNY", "-1")],
            activity(0, &[]),
        ))
        .expect_err("an error");
        assert_eq!(err, "setting max-hourly-spend.CNY is not a number: -1");
    }

    #[test]
    fn the_last_value_of_a_repeated_setting_wins() {
        let settings = [
            (SETTING_MAX_PAYMENTS_PER_HOUR, "1"),
            (SETTING_MAX_PAYMENTS_PER_HOUR, "100"),
        ];
        let v = classify(pay(100, "CNY", None), &settings, activity(50, &[]));
        assert_eq!(v.decision, Decision::Allow);
    }

    #[test]
    fn a_long_category_keeps_the_reason_within_500_bytes() {
        let category = "é".repeat(400);
        let settings = [(SETTING_BLOCKED_CATEGORIES, category.as_str())];
        let v = classify(
            pay(100, "CNY", Some(&category)),
            &settings,
            activity(0, &[]),
        );
        assert_eq!(v.rule_id, RULE_BLOCKED_MERCHANT);
        assert!(v.reason.len() <= MAX_REASON_BYTES);
    }

    #[test]
    fn money_is_written_in_major_units() {
        assert_eq!(money(120050, "CNY"), "1200.50 CNY");
        assert_eq!(money(5, "USD"), "0.05 USD");
        assert_eq!(money(1500, "JPY"), "1500 JPY");
        assert_eq!(money(1500, "KWD"), "1.500 KWD");
    }
}
