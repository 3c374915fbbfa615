//! The rules of the vendor contract that types alone cannot express: what makes a plugin's
//! self-description and its verdicts acceptable. Pure functions; no I/O, no wasmtime.

use std::time::Duration;

use crate::risk::{Action, CounterOffer, Decision, PluginInfo, RiskRequest, Verdict};

/// The longest reason a verdict may carry, in bytes.
pub const MAX_REASON_BYTES: usize = 500;
/// The longest rule id, in bytes.
pub const MAX_RULE_ID_BYTES: usize = 64;
/// The most rules one plugin may declare.
pub const MAX_RULES: usize = 100;
/// The range a per-request TTL must fall in.
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));

/// The WIT bindings of a plugin's answers and their conversion into the domain types, as the
/// runtime lifts them before these checks: named here only for the fuzz tests of the plugin
/// boundary (`tests/fuzz.rs`). Not part of the API; everything else reaches WIT through `wit`.
#[doc(hidden)]
pub mod lifting {
    pub use super::super::wit::approval::risk::types::{
        CounterOffer, Decision, MoneyResult, PluginInfo, Rule, Verdict,
    };
    pub use super::super::wit::{plugin_info, verdict};
}

fn is_rule_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RULE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a plugin's answer to `describe`.
///
/// # Errors
/// A sentence naming the first problem found.
pub fn check_info(info: &PluginInfo) -> Result<(), String> {
    if !is_plugin_name(&info.name) {
        return Err(format!(
            "name {:?} must be 1-64 lowercase ASCII letters, digits or '-'",
            info.name
        ));
    }
    if info.version.is_empty() || info.version.len() > 64 {
        return Err("version must be 1-64 bytes".to_owned());
    }
    if info.rules.is_empty() {
        return Err(
            "it declares no rules; a verdict that escalates or denies must name one".into(),
        );
    }
    if info.rules.len() > MAX_RULES {
        return Err(format!(
            "it declares {} rules; at most {MAX_RULES}",
            info.rules.len()
        ));
    }
    for (i, rule) in info.rules.iter().enumerate() {
        if !is_rule_id(&rule.id) {
            return Err(format!(
                "rule id {:?} must be 1-{MAX_RULE_ID_BYTES} bytes of lowercase ASCII letters, \
                 digits, '.', '-' or '_'",
                rule.id
            ));
        }
        if info.rules[..i].iter().any(|r| r.id == rule.id) {
            return Err(format!("rule id {:?} is declared twice", rule.id));
        }
        if rule.description.len() > MAX_REASON_BYTES {
            return Err(format!(
                "rule {:?} has a description over {MAX_REASON_BYTES} bytes",
                rule.id
            ));
        }
    }
    Ok(())
}

/// Checks a verdict against the rules the plugin declared and the request it answers.
///
/// # Errors
/// A sentence naming the first problem found.
pub fn check_verdict(
    verdict: &Verdict,
    info: &PluginInfo,
    request: &RiskRequest,
) -> Result<(), String> {
    let declared = info.rules.iter().any(|r| r.id == verdict.rule_id);
    match verdict.decision {
        Decision::Allow if verdict.rule_id.is_empty() || declared => {}
        _ if verdict.rule_id.is_empty() => {
            return Err(format!(
                "a {} verdict must name a rule",
                verdict.decision.as_str()
            ));
        }
        _ if !declared => {
            return Err(format!(
                "rule {:?} is not one of the rules describe() declared",
                verdict.rule_id
            ));
        }
        _ => {}
    }
    if verdict.reason.len() > MAX_REASON_BYTES {
        return Err(format!(
            "the reason is {} bytes; at most {MAX_REASON_BYTES}",
            verdict.reason.len()
        ));
    }
    if verdict.decision != Decision::Allow && verdict.reason.trim().is_empty() {
        return Err("an escalation or denial must give a reason".to_owned());
    }
    if let Some(ttl) = verdict.ttl {
        if verdict.decision != Decision::Escalate {
            return Err("a TTL only makes sense with an escalation".to_owned());
        }
        if ttl < TTL_RANGE.0 || ttl > TTL_RANGE.1 {
            return Err(format!(
                "a TTL of {}s is outside 1s..=86400s",
                ttl.as_secs()
            ));
        }
    }
    match (&verdict.counter_offer, &request.action) {
        (None, _) => Ok(()),
        (Some(_), _) if verdict.decision == Decision::Allow => {
            Err("an allow cannot carry a counter-offer".to_owned())
        }
        (Some(CounterOffer::Amount(offer)), Action::Payment { amount, .. }) => {
            if offer.currency != amount.currency {
                Err(format!(
                    "the counter-offer is in {} but the payment is in {}",
                    offer.currency, amount.currency
                ))
            } else if offer.minor_units >= amount.minor_units {
                Err("a counter-offer amount must be lower than the amount asked".to_owned())
            } else {
                Ok(())
            }
        }
        (Some(CounterOffer::ParamsJson(params)), Action::Other { .. }) => {
            match serde_json::from_str::<serde_json::Value>(params) {
                Ok(serde_json::Value::Object(_)) => Ok(()),
                _ => Err("counter-offer params must be a JSON object".to_owned()),
            }
        }
        (Some(_), _) => Err("the counter-offer does not fit the action's kind".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::{Money, Rule};

    fn info() -> PluginInfo {
        PluginInfo {
            name: "velocity".into(),
            version: "1.0.0".into(),
            rules: vec![Rule {
                id: "velocity.hourly-spend".into(),
                description: "spend per hour".into(),
            }],
        }
    }

    fn payment(minor_units: u64) -> RiskRequest {
        RiskRequest {
            id: "r1".into(),
            vendor: "v".into(),
            actor: "a".into(),
            device_context: vec![],
            action: Action::Payment {
                amount: Money::new(minor_units, "CNY"),
                recipient: "shop".into(),
                merchant_category: None,
            },
            requested_at_ms: 0,
        }
    }

    fn escalate(rule: &str) -> Verdict {
        Verdict {
            decision: Decision::Escalate,
            rule_id: rule.into(),
            reason: "too much".into(),
            ttl: None,
            counter_offer: None,
        }
    }

    #[test]
    fn a_verdict_must_name_a_declared_rule() {
        let err = check_verdict(&escalate("made.up"), &info(), &payment(1)).unwrap_err();
        assert_eq!(
            err,
            "rule \"made.up\" is not one of the rules describe() declared"
        );
        assert!(check_verdict(&escalate("velocity.hourly-spend"), &info(), &payment(1)).is_ok());
        let err = check_verdict(&escalate(""), &info(), &payment(1)).unwrap_err();
        assert_eq!(err, "a escalate verdict must name a rule");
    }

    #[test]
    fn a_counter_offer_must_be_lower_and_in_the_same_currency() {
        let mut v = escalate("velocity.hourly-spend");
        v.counter_offer = Some(CounterOffer::Amount(Money::new(300, "CNY")));
        assert!(check_verdict(&v, &info(), &payment(600)).is_ok());
        assert!(check_verdict(&v, &info(), &payment(200)).is_err());
        v.counter_offer = Some(CounterOffer::Amount(Money::new(300, "USD")));
        assert!(check_verdict(&v, &info(), &payment(600)).is_err());
    }

    #[test]
    fn ttl_only_with_escalation_and_within_bounds() {
        let mut v = escalate("velocity.hourly-spend");
        v.ttl = Some(Duration::from_secs(60));
        assert!(check_verdict(&v, &info(), &payment(1)).is_ok());
        v.ttl = Some(Duration::from_secs(90_000));
        assert!(check_verdict(&v, &info(), &payment(1)).is_err());
        v.decision = Decision::Deny;
        v.ttl = Some(Duration::from_secs(60));
        assert!(check_verdict(&v, &info(), &payment(1)).is_err());
    }

    #[test]
    fn descriptions_are_checked() {
        assert!(check_info(&info()).is_ok());
        let mut bad = info();
        bad.rules.push(bad.rules[0].clone());
        assert_eq!(
            check_info(&bad).unwrap_err(),
            "rule id \"velocity.hourly-spend\" is declared twice"
        );
        bad.name = "Velocity!".into();
        assert!(check_info(&bad).is_err());
    }
}
