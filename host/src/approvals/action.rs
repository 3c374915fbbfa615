//! Reading a request's action kind and JSON params into the typed [`Action`] the policy and the
//! plugins classify, and checking that a guardian's revision only narrows what was asked.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::policy::is_currency_code;
use crate::risk::{Action, Money};
use crate::text;

pub use crate::risk::kinds;
pub use crate::risk::{MAX_KIND_LEN, is_action_kind};

/// The largest integer a param may hold, 2^53 − 1: RFC 8785 writes numbers as IEEE 754
/// doubles, so two larger integers can share a canonical form, and with it a `params_hash`.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn problem(text: impl Into<String>) -> String {
    text.into()
}

fn string(params: &Map<String, Value>, field: &str) -> Result<String, String> {
    match params.get(field) {
        Some(Value::String(s)) => {
            // The field's name is spelled out only for an error: this runs on every request.
            text::check(s, text::PARAM).map_err(|e| format!("params.{field} {e}"))?;
            Ok(s.clone())
        }
        Some(_) => Err(problem(format!("params.{field} must be a string"))),
        None => Err(problem(format!("params.{field} is required"))),
    }
}

fn optional_string(params: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match params.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(params, field).map(Some),
    }
}

fn count(params: &Map<String, Value>, field: &str) -> Result<u64, String> {
    match params.get(field) {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n <= MAX_SAFE_INTEGER)
            .ok_or_else(|| {
                problem(format!(
                    "params.{field} must be a whole number from 0 to {MAX_SAFE_INTEGER}"
                ))
            }),
        Some(_) => Err(problem(format!("params.{field} must be a whole number"))),
        None => Err(problem(format!("params.{field} is required"))),
    }
}

/// Refuses a field of `params` that the typed action `kind` does not have: the guardian is shown
/// the typed action, and the token binds every field, so a field nobody reads must not ride along.
fn only_fields(kind: &str, params: &Map<String, Value>, fields: &[&str]) -> Result<(), String> {
    match params.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(unknown) => Err(problem(format!(
            "params.{} is not a field of {kind} (its fields: {})",
            unknown.chars().take(64).collect::<String>(),
            fields.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Refuses an integer anywhere in `value` beyond ±[`MAX_SAFE_INTEGER`], naming where it is.
fn safe_numbers(path: &mut String, value: &Value) -> Result<(), String> {
    match value {
        Value::Number(n) => {
            let unsafe_integer = n.as_u64().is_some_and(|n| n > MAX_SAFE_INTEGER)
                || n.as_i64()
                    .is_some_and(|n| n.unsigned_abs() > MAX_SAFE_INTEGER)
                || n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.abs() > 9.007_199_254_740_991e15);
            if unsafe_integer {
                return Err(problem(format!(
                    "{path} is beyond ±{MAX_SAFE_INTEGER}: send larger numbers as strings"
                )));
            }
            Ok(())
        }
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
            let len = path.len();
            let _ = write!(path, "[{i}]");
            let checked = safe_numbers(path, item);
            path.truncate(len);
            checked
        }),
        Value::Object(fields) => fields.iter().try_for_each(|(k, item)| {
            let len = path.len();
            path.push('.');
            path.extend(k.chars().take(64));
            let checked = safe_numbers(path, item);
            path.truncate(len);
            checked
        }),
        _ => Ok(()),
    }
}

/// Parses `kind` and `params` into an [`Action`].
///
/// # Errors
/// What is missing or malformed, in words an agent developer can act on.
pub fn parse(kind: &str, params: &Value) -> Result<Action, String> {
    if !is_action_kind(kind) {
        return Err(problem(
            "action must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-'",
        ));
    }
    let Value::Object(p) = params else {
        return Err(problem("params must be a JSON object"));
    };
    safe_numbers(&mut "params".to_owned(), params)?;
    Ok(match kind {
        kinds::PAYMENT => {
            only_fields(
                kind,
                p,
                &["amount", "currency", "recipient", "merchant_category"],
            )?;
            let currency = string(p, "currency")?;
            if !is_currency_code(&currency) {
                return Err(problem(
                    "params.currency must be a three-letter upper-case ISO 4217 code",
                ));
            }
            Action::Payment {
                amount: Money::new(count(p, "amount")?, &currency),
                recipient: string(p, "recipient")?,
                merchant_category: optional_string(p, "merchant_category")?,
            }
        }
        kinds::CREDENTIAL_PUT => {
            only_fields(kind, p, &["service", "category"])?;
            Action::CredentialPut {
                service: string(p, "service")?,
                category: string(p, "category")?,
            }
        }
        kinds::MEMORY_WRITE => {
            only_fields(kind, p, &["namespace", "key"])?;
            Action::MemoryWrite {
                namespace: string(p, "namespace")?,
                key: string(p, "key")?,
            }
        }
        kinds::CAPABILITY_MINT => {
            only_fields(kind, p, &["capability", "requested_scope", "parent_scope"])?;
            Action::CapabilityMint {
                capability: string(p, "capability")?,
                requested_scope: count(p, "requested_scope")?,
                parent_scope: count(p, "parent_scope")?,
            }
        }
        other => Action::Other {
            kind: other.to_owned(),
            params_json: params.to_string(),
        },
    })
}

/// Checks that `revised` asks for no more than `original`: a payment to the same recipient in the
/// same currency for at most the same amount; a mint of the same capability with at most the same
/// scope; the other built-in kinds unchanged except in fields that carry no risk. Generic actions
/// may be amended freely: the guardian sees both.
///
/// # Errors
/// How the revision widens the request.
pub fn check_narrower(original: &Action, revised: &Action) -> Result<(), String> {
    match (original, revised) {
        (
            Action::Payment {
                amount, recipient, ..
            },
            Action::Payment {
                amount: new_amount,
                recipient: new_recipient,
                ..
            },
        ) => {
            if new_amount.currency != amount.currency {
                Err(problem("a revised payment keeps its currency"))
            } else if new_recipient != recipient {
                Err(problem("a revised payment keeps its recipient"))
            } else if new_amount.minor_units > amount.minor_units {
                Err(problem(
                    "a revised payment cannot be larger than the one requested",
                ))
            } else {
                Ok(())
            }
        }
        (
            Action::CapabilityMint {
                capability,
                requested_scope,
                parent_scope,
            },
            Action::CapabilityMint {
                capability: new_capability,
                requested_scope: new_scope,
                parent_scope: new_parent,
            },
        ) => {
            if new_capability != capability || new_parent != parent_scope {
                Err(problem(
                    "a revised mint keeps its capability and parent scope",
                ))
            } else if new_scope > requested_scope {
                Err(problem("a revised mint cannot ask for a wider scope"))
            } else {
                Ok(())
            }
        }
        (Action::CredentialPut { service, .. }, Action::CredentialPut { service: s, .. })
            if s == service =>
        {
            Ok(())
        }
        (Action::MemoryWrite { namespace, .. }, Action::MemoryWrite { namespace: n, .. })
            if n == namespace =>
        {
            Ok(())
        }
        (Action::Other { kind, .. }, Action::Other { kind: k, .. }) if k == kind => Ok(()),
        _ => Err(problem("a revision keeps the action and its target")),
    }
}

/// Whether `b` is a tiny variation of `a`, the params of two requests of the same action kind:
/// the same fields, text equal but for case and surrounding spaces, numbers within 10% of each
/// other. An agent that asks again with such a variation while the first request waits for a
/// guardian is merged into it rather than notifying the guardian again.
pub fn is_tiny_variation(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| is_tiny_variation(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| is_tiny_variation(v, w))
        }
        (Value::String(x), Value::String(y)) => x.trim().to_lowercase() == y.trim().to_lowercase(),
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) if p.is_finite() && q.is_finite() => {
                p == q || (p.signum() == q.signum() && (p - q).abs() <= 0.1 * p.abs().max(q.abs()))
            }
            _ => x == y,
        },
        _ => a == b,
    }
}

/// What every tiny variation of `params` of `action` has in common (see
/// [`is_tiny_variation`]), hashed: the action, the fields and their kinds, the text of each
/// string trimmed and lowercased; not the numbers. Requests for a guardian are stored with it,
/// so that looking for the pending request a new one may be merged into reads only the few
/// that could be, not every pending request of the actor. Two params with the same key still
/// have to be compared.
pub fn variation_key(action: &str, params: &Value) -> String {
    use sha2::{Digest as _, Sha256};
    fn text(hash: &mut Sha256, tag: u8, text: &str) {
        hash.update([tag]);
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    }
    fn shape(hash: &mut Sha256, value: &Value) {
        match value {
            Value::Null => hash.update(b"n"),
            Value::Bool(b) => hash.update(if *b { b"t" } else { b"f" }),
            // Any two numbers may be within 10 % of each other: numbers are compared later.
            Value::Number(_) => hash.update(b"#"),
            Value::String(s) => text(hash, b's', &s.trim().to_lowercase()),
            Value::Array(items) => {
                hash.update(b"[");
                hash.update((items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| shape(hash, item));
            }
            Value::Object(fields) => {
                hash.update(b"{");
                hash.update((fields.len() as u64).to_le_bytes());
                let mut sorted: Vec<_> = fields.iter().collect();
                sorted.sort_unstable_by_key(|(k, _)| k.as_str());
                for (k, v) in sorted {
                    text(hash, b'k', k);
                    shape(hash, v);
                }
            }
        }
    }
    let mut hash = Sha256::new();
    text(&mut hash, b'a', action);
    shape(&mut hash, params);
    hex::encode(&hash.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_in_kinds_are_typed() {
        let pay = parse(
            "payment",
            &json!({"amount": 60000, "currency": "CNY", "recipient": "toy-shop"}),
        );
        assert_eq!(
            pay,
            Ok(Action::Payment {
                amount: Money::new(60_000, "CNY"),
                recipient: "toy-shop".into(),
                merchant_category: None
            })
        );
        let other = parse("lights.on", &json!({"room": "kitchen"}));
        assert!(matches!(other, Ok(Action::Other { ref kind, .. }) if kind == "lights.on"));
    }

    #[test]
    fn malformed_params_are_explained() {
        let cases = [
            (
                "payment",
                json!({"amount": -5, "currency": "CNY", "recipient": "x"}),
                "params.amount",
            ),
            (
                "payment",
                json!({"amount": 1.5, "currency": "CNY", "recipient": "x"}),
                "params.amount",
            ),
            (
                "payment",
                json!({"amount": 5, "currency": "yuan", "recipient": "x"}),
                "params.currency",
            ),
            (
                "payment",
                json!({"amount": 5, "currency": "CNY"}),
                "params.recipient",
            ),
            ("cred.put", json!({"service": "bank"}), "params.category"),
            (
                "capability.mint",
                json!({"capability": "c", "requested_scope": "9"}),
                "params.requested_scope",
            ),
            ("payment", json!([1, 2]), "JSON object"),
            (
                "payment",
                json!({"amount": 5, "currency": "CNY", "recipient": "shop\u{202E}"}),
                "params.recipient must not contain bidirectional controls",
            ),
            (
                "payment",
                json!({"amount": 5, "currency": "CNY", "recipient": "x".repeat(257)}),
                "params.recipient is 257 bytes",
            ),
            ("Pay Now!", json!({}), "action must be"),
        ];
        for (kind, params, needle) in cases {
            let err = parse(kind, &params).expect_err(kind);
            assert!(err.contains(needle), "{kind} {params}: {err}");
        }
    }

    #[test]
    fn a_typed_action_with_a_field_the_guardian_is_not_shown_is_refused() {
        let err = parse(
            "payment",
            &json!({"amount": 60000, "currency": "CNY", "recipient": "toy-shop", "recurring": "daily"}),
        )
        .expect_err("an unknown field");
        assert!(
            err.starts_with("params.recurring is not a field of payment"),
            "{err}"
        );
        for (kind, params) in [
            (
                "cred.put",
                json!({"service": "bank", "category": "login", "scope": "all"}),
            ),
            (
                "memory.write",
                json!({"namespace": "family", "key": "k", "value": 1}),
            ),
            (
                "capability.mint",
                json!({"capability": "c", "requested_scope": 1, "parent_scope": 2, "ttl": 9}),
            ),
        ] {
            assert!(parse(kind, &params).is_err(), "{kind}");
        }
        // A generic action's params are the vendor's to define: every field is kept and bound.
        assert!(parse("lights.on", &json!({"room": "hall", "anything": [1]})).is_ok());
    }

    #[test]
    fn integers_beyond_two_to_the_53_are_refused_anywhere_in_params() {
        let max = MAX_SAFE_INTEGER;
        let pay = |amount: Value| json!({"amount": amount, "currency": "CNY", "recipient": "x"});
        assert!(parse("payment", &pay(json!(max))).is_ok());
        let err = parse("payment", &pay(json!(max + 1))).expect_err("2^53");
        assert!(err.contains("params.amount"), "{err}");
        // Both would hash alike: RFC 8785 writes them as the same double.
        assert!(parse("payment", &pay(json!(9_007_199_254_740_993_u64))).is_err());
        let err = parse(
            "x.y",
            &json!({"n": {"list": [1, -9_007_199_254_740_993_i64]}}),
        )
        .expect_err("nested");
        assert!(err.starts_with("params.n.list[1] is beyond"), "{err}");
        assert!(parse("x.y", &json!({"n": 1.0e300})).is_err());
        assert!(parse("x.y", &json!({"n": 1.5, "m": -3})).is_ok());
    }

    #[test]
    fn revisions_only_narrow() {
        let pay = |amount, recipient: &str| Action::Payment {
            amount: Money::new(amount, "CNY"),
            recipient: recipient.into(),
            merchant_category: None,
        };
        assert!(check_narrower(&pay(60_000, "shop"), &pay(30_000, "shop")).is_ok());
        assert!(check_narrower(&pay(60_000, "shop"), &pay(60_001, "shop")).is_err());
        assert!(check_narrower(&pay(60_000, "shop"), &pay(100, "elsewhere")).is_err());
        let mint = |scope| Action::CapabilityMint {
            capability: "wallet".into(),
            requested_scope: scope,
            parent_scope: 1000,
        };
        assert!(check_narrower(&mint(950), &mint(500)).is_ok());
        assert!(check_narrower(&mint(950), &mint(960)).is_err());
        assert!(check_narrower(&mint(950), &pay(1, "shop")).is_err());
    }

    #[test]
    fn tiny_variations_are_recognised_and_real_differences_are_not() {
        let pay =
            |units: u64, to: &str| json!({"amount": units, "currency": "CNY", "recipient": to});
        assert!(is_tiny_variation(
            &pay(60_000, "toy-shop"),
            &pay(60_000, "toy-shop")
        ));
        assert!(is_tiny_variation(
            &pay(60_000, "toy-shop"),
            &pay(61_000, " Toy-Shop")
        ));
        assert!(is_tiny_variation(
            &pay(60_000, "toy-shop"),
            &pay(54_000, "toy-shop")
        ));
        assert!(!is_tiny_variation(
            &pay(60_000, "toy-shop"),
            &pay(53_000, "toy-shop")
        ));
        assert!(!is_tiny_variation(
            &pay(60_000, "toy-shop"),
            &pay(60_000, "candy-shop")
        ));
        assert!(!is_tiny_variation(
            &pay(60_000, "toy-shop"),
            &json!({"amount": 60_000, "currency": "CNY"})
        ));
        assert!(!is_tiny_variation(&json!({"n": 1}), &json!({"n": -1})));
        assert!(!is_tiny_variation(&json!({"n": 0}), &json!({"n": 1})));
        assert!(is_tiny_variation(
            &json!({"rooms": ["Hall", 3]}),
            &json!({"rooms": ["hall ", 3]})
        ));
        assert!(!is_tiny_variation(
            &json!({"rooms": ["hall"]}),
            &json!({"rooms": ["hall", "attic"]})
        ));
        assert!(!is_tiny_variation(
            &json!({"on": true}),
            &json!({"on": false})
        ));
    }

    #[test]
    fn variation_keys_tell_apart_what_can_never_be_merged() {
        let pay =
            |units: u64, to: &str| json!({"amount": units, "currency": "CNY", "recipient": to});
        let key = |params: &Value| variation_key("payment", params);
        assert_eq!(
            key(&pay(60_000, "toy-shop")),
            key(&pay(61_000, " Toy-Shop"))
        );
        assert_ne!(
            key(&pay(60_000, "toy-shop")),
            key(&pay(60_000, "candy-shop"))
        );
        assert_ne!(
            key(&pay(60_000, "toy-shop")),
            variation_key("refund", &pay(60_000, "toy-shop"))
        );
        assert_ne!(
            key(&json!({"room": "hall-1-1"})),
            key(&json!({"room": "hall-1-2"}))
        );
        assert_ne!(
            key(&json!({"a": "b", "c": ""})),
            key(&json!({"a": "", "c": "b"}))
        );
        assert_ne!(key(&json!({"on": true})), key(&json!({"on": "true"})));
    }

    /// JSON values of a few kinds, nested, with the few strings and numbers that make tiny
    /// variations likely.
    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..=3).prop_map(|n| json!(n * 50)),
            prop::sample::select(vec![0.0, -0.0, 1.5, 100.0, 105.0, 1e300])
                .prop_map(|f: f64| json!(f)),
            prop::sample::select(vec!["hall", " Hall", "HALL ", "attic", ""])
                .prop_map(|s: &str| json!(s)),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec!["a", "b", "room"]).prop_map(str::to_owned),
                    inner,
                    0..3
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A tiny variation of `value`: its strings' case and spaces changed and its numbers moved
    /// by up to 5 %, as `seed`'s bits say.
    fn vary(value: &Value, seed: &mut u64) -> Value {
        *seed = seed.rotate_left(7) ^ 0x9e37_79b9;
        match value {
            Value::String(s) if seed.is_multiple_of(2) => json!(format!(" {} ", s.to_uppercase())),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() && seed.is_multiple_of(3) => json!(f * 1.05),
                _ => value.clone(),
            },
            Value::Array(items) => Value::Array(items.iter().map(|v| vary(v, seed)).collect()),
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), vary(v, seed)))
                    .collect(),
            ),
            _ => value.clone(),
        }
    }

    proptest::proptest! {
        /// The key only ever rules out what [`is_tiny_variation`] would refuse.
        #[test]
        fn tiny_variations_share_their_variation_key(a in json_value(), b in json_value()) {
            if is_tiny_variation(&a, &b) {
                proptest::prop_assert_eq!(variation_key("x", &a), variation_key("x", &b));
            }
        }

        #[test]
        fn varied_params_keep_their_variation_key(a in json_value(), mut seed in proptest::prelude::any::<u64>()) {
            let b = vary(&a, &mut seed);
            proptest::prop_assert!(is_tiny_variation(&a, &b), "{a} {b}");
            proptest::prop_assert_eq!(variation_key("x", &a), variation_key("x", &b));
        }
    }
}
