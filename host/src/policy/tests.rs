use super::document::{OverridesDoc, TemplateDoc};
use super::*;
use crate::plugin::PluginError;

fn request(action: Action, tags: &[&str]) -> RiskRequest {
    RiskRequest {
        id: "r1".into(),
        vendor: "acme".into(),
        actor: "teddy".into(),
        device_context: tags.iter().map(|t| (*t).to_owned()).collect(),
        action,
        requested_at_ms: 0,
    }
}

fn pay(minor_units: u64, currency: &str) -> Action {
    Action::Payment {
        amount: Money::new(minor_units, currency),
        recipient: "shop".into(),
        merchant_category: None,
    }
}

fn fired(action: Action, tags: &[&str], policy: &EffectivePolicy) -> Vec<String> {
    builtin_hits(&Triggers::default(), policy, &request(action, tags))
        .into_iter()
        .map(|h| h.verdict.rule_id)
        .collect()
}

fn template(json: &str) -> Result<PolicyTemplate, PolicyError> {
    TemplateDoc::parse(json)?.to_template(&PluginLimits::platform_max())
}

#[test]
fn spend_threshold_fires_above_500_yuan_only() {
    let policy = EffectivePolicy::default();
    assert!(
        fired(pay(50_000, "CNY"), &[], &policy).is_empty(),
        "¥500 is allowed"
    );
    assert_eq!(
        fired(pay(50_001, "CNY"), &[], &policy),
        [rules::SPEND_THRESHOLD]
    );
    assert_eq!(
        fired(pay(60_000, "CNY"), &[], &policy),
        [rules::SPEND_THRESHOLD]
    );
}

#[test]
fn another_currency_is_never_converted() {
    let mut policy = EffectivePolicy::default();
    // 1 USD is far below ¥500 but there is no USD threshold: a human looks.
    assert_eq!(
        fired(pay(100, "USD"), &[], &policy),
        [rules::UNPRICED_CURRENCY]
    );
    policy.spend_thresholds.push(Money::new(7_000, "USD"));
    assert!(fired(pay(7_000, "USD"), &[], &policy).is_empty());
    assert_eq!(
        fired(pay(7_001, "USD"), &[], &policy),
        [rules::SPEND_THRESHOLD]
    );
}

#[test]
fn sensitive_credentials_escalate() {
    let policy = EffectivePolicy::default();
    let put = |category: &str| Action::CredentialPut {
        service: "bank.example".into(),
        category: category.into(),
    };
    for category in ["banking", "healthcare", "identity-document"] {
        assert_eq!(
            fired(put(category), &[], &policy),
            [rules::SENSITIVE_CREDENTIAL]
        );
    }
    assert!(fired(put("music"), &[], &policy).is_empty());
}

#[test]
fn family_writes_need_a_family_device() {
    let policy = EffectivePolicy::default();
    let write = |namespace: &str| Action::MemoryWrite {
        namespace: namespace.into(),
        key: "dinner".into(),
    };
    assert_eq!(
        fired(write("family"), &["kitchen"], &policy),
        [rules::FAMILY_WRITE]
    );
    assert!(fired(write("family"), &["kitchen", FAMILY_CONTEXT_TAG], &policy).is_empty());
    assert!(fired(write("scratch"), &[], &policy).is_empty());
}

#[test]
fn mint_at_90_percent_of_the_parent_escalates_and_beyond_it_is_denied() {
    let policy = EffectivePolicy::default();
    let mint = |requested_scope| Action::CapabilityMint {
        capability: "wallet".into(),
        requested_scope,
        parent_scope: 1_000,
    };
    assert!(fired(mint(899), &[], &policy).is_empty());
    assert_eq!(fired(mint(900), &[], &policy), [rules::MINT_NEAR_PARENT]);
    assert_eq!(fired(mint(1_000), &[], &policy), [rules::MINT_NEAR_PARENT]);
    let over = builtin_hits(&Triggers::default(), &policy, &request(mint(1_001), &[]));
    assert_eq!(over[0].verdict.rule_id, rules::MINT_EXCEEDS_PARENT);
    assert_eq!(over[0].verdict.decision, Decision::Deny);
}

#[test]
fn a_trigger_switched_off_does_not_fire() {
    let triggers = Triggers {
        spend_threshold: false,
        ..Triggers::default()
    };
    let hits = builtin_hits(
        &triggers,
        &EffectivePolicy::default(),
        &request(pay(1 << 40, "CNY"), &[]),
    );
    assert!(hits.is_empty());
}

#[test]
fn the_strictest_verdict_wins_and_every_rule_is_kept() {
    let escalate = builtin_hits(
        &Triggers::default(),
        &EffectivePolicy::default(),
        &request(pay(60_000, "CNY"), &[]),
    );
    let plugin = |name: &str, outcome| PluginVerdict {
        name: name.into(),
        version: 1,
        sha256: "00".into(),
        outcome,
    };
    let deny = Verdict {
        decision: Decision::Deny,
        rule_id: "velocity.blocked".into(),
        reason: "blocked merchant".into(),
        ttl: None,
        counter_offer: None,
    };
    let allow = Verdict {
        decision: Decision::Allow,
        rule_id: String::new(),
        reason: String::new(),
        ttl: None,
        counter_offer: None,
    };
    let a = combine(
        escalate.clone(),
        &[plugin("a", Ok(allow.clone())), plugin("b", Ok(deny))],
        FailMode::Escalate,
    );
    assert_eq!(a.decision, Decision::Deny);
    assert_eq!(a.hits.len(), 3);
    assert_eq!(
        a.deciding_hit().map(|h| h.verdict.rule_id.as_str()),
        Some("velocity.blocked")
    );

    let quiet = combine(Vec::new(), &[plugin("a", Ok(allow))], FailMode::Escalate);
    assert_eq!(quiet.decision, Decision::Allow);
    assert!(quiet.deciding_hit().is_none());
}

#[test]
fn a_failed_plugin_takes_the_vendors_fail_mode_never_allow() {
    let failed = PluginVerdict {
        name: "velocity".into(),
        version: 3,
        sha256: "ab".into(),
        outcome: Err(PluginError::OutOfFuel { limit: 10 }),
    };
    let escalated = combine(
        Vec::new(),
        std::slice::from_ref(&failed),
        FailMode::Escalate,
    );
    assert_eq!(escalated.decision, Decision::Escalate);
    assert_eq!(escalated.hits[0].verdict.rule_id, rules::PLUGIN_FAILED);
    assert!(
        escalated.hits[0]
            .verdict
            .reason
            .contains("plugin_out_of_fuel")
    );
    let denied = combine(Vec::new(), &[failed], FailMode::Deny);
    assert_eq!(denied.decision, Decision::Deny);
}

#[test]
fn an_empty_template_is_the_documented_default() {
    let t = template("{}").expect("valid");
    assert_eq!(t, PolicyTemplate::default());
    assert_eq!(t.ttl_for("payment"), Duration::from_secs(300));
}

#[test]
fn template_values_and_per_action_ttls_apply() {
    let t = template(
        r#"{"spend_thresholds":{"CNY":20000,"USD":3000},"ttl_seconds":{"default":600,"payment":60},
            "triggers":{"family_write":false},"plugin_fail_mode":"deny","mint_ratio_percent":80}"#,
    )
    .expect("valid");
    assert_eq!(t.ttl_for("payment"), Duration::from_secs(60));
    assert_eq!(t.ttl_for("cred.put"), Duration::from_secs(600));
    assert!(!t.triggers.family_write && t.triggers.spend_threshold);
    assert_eq!(t.plugin_fail_mode, FailMode::Deny);
    let policy = t.effective(&ActorOverrides::default());
    assert_eq!(policy.mint_ratio_percent, 80);
    assert_eq!(
        fired(pay(20_001, "CNY"), &[], &policy),
        [rules::SPEND_THRESHOLD]
    );
}

#[test]
fn an_undeclared_generic_action_is_denied_by_default_never_allowed() {
    let lights = Action::Other {
        kind: "lights.on".into(),
        params_json: "{}".into(),
    };
    let pay = Action::Other {
        kind: "pay".into(),
        params_json: r#"{"amount":6000000,"currency":"CNY","recipient":"x"}"#.into(),
    };
    let hit = |template: &PolicyTemplate, action: &Action| {
        undeclared_hit(&template.generic_actions, action)
            .map(|h| (h.verdict.rule_id, h.verdict.decision))
    };
    let default = template("{}").unwrap();
    let denied = Some((rules::UNDECLARED_ACTION.to_owned(), Decision::Deny));
    assert_eq!(hit(&default, &lights), denied);
    assert_eq!(hit(&default, &pay), denied);
    assert_eq!(
        hit(&default, &super::tests::pay(100, "CNY")),
        None,
        "typed kinds"
    );
    let declared = template(r#"{"generic_actions":{"declared":["lights.on"]}}"#).unwrap();
    assert_eq!(hit(&declared, &lights), None);
    assert_eq!(hit(&declared, &pay), denied);
    let escalating =
        template(r#"{"generic_actions":{"declared":["lights.on"],"undeclared":"escalate"}}"#)
            .unwrap();
    assert_eq!(
        hit(&escalating, &pay),
        Some((rules::UNDECLARED_ACTION.to_owned(), Decision::Escalate))
    );
}

#[test]
fn bad_templates_are_refused_naming_the_field() {
    let cases = [
        (r#"{"spend_thresholds":{"yen":1}}"#, "spend_thresholds"),
        (r#"{"mint_ratio_percent":0}"#, "mint_ratio_percent"),
        (r#"{"ttl_seconds":{"payment":1}}"#, "ttl_seconds.payment"),
        (
            r#"{"max_approval_requests_per_hour":0}"#,
            "max_approval_requests_per_hour",
        ),
        (
            r#"{"plugin_limits":{"deadline_ms":100000}}"#,
            "plugin_limits.deadline_ms",
        ),
        (r#"{"plugin_limits":{"fuel":0}}"#, "plugin_limits"),
        (
            r#"{"override_bounds":{"spend_thresholds":{"CNY":{"min":0,"max":100}}}}"#,
            "override_bounds.spend_thresholds.CNY",
        ),
        (r#"{"spend_treshold":{"CNY":1}}"#, "spend_treshold"),
        (r#"{"plugin_fail_mode":"allow"}"#, "plugin_fail_mode"),
        (
            r#"{"spend_thresholds":{"CNY":"lots"}}"#,
            "spend_thresholds.CNY",
        ),
        (r#"not json"#, "template"),
        (
            r#"{"generic_actions":{"declared":["payment"]}}"#,
            "generic_actions.declared",
        ),
        (
            r#"{"generic_actions":{"declared":["Lights On"]}}"#,
            "generic_actions.declared",
        ),
        (
            r#"{"generic_actions":{"declared":["a","a"]}}"#,
            "generic_actions.declared",
        ),
        (
            r#"{"generic_actions":{"undeclared":"allow"}}"#,
            "generic_actions.undeclared",
        ),
    ];
    for (json, field) in cases {
        match template(json) {
            Err(PolicyError::Invalid {
                field: got,
                problem,
            }) => {
                assert_eq!(got, field, "{json}: {problem}");
                assert!(!problem.is_empty());
            }
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn overrides_tighten_freely_but_loosen_only_within_the_vendors_bounds() {
    let strict = template("{}").expect("valid");
    let tighter = OverridesDoc::parse(r#"{"spend_thresholds":{"CNY":10000}}"#)
        .expect("doc")
        .to_overrides();
    strict
        .check_overrides(&tighter)
        .expect("tightening is always allowed");
    assert_eq!(
        strict.effective(&tighter).spend_thresholds,
        vec![Money::new(10_000, "CNY")],
        "the override takes precedence over the template"
    );
    let looser = OverridesDoc::parse(r#"{"spend_thresholds":{"CNY":80000}}"#)
        .expect("doc")
        .to_overrides();
    assert_eq!(
        strict.check_overrides(&looser),
        Err(PolicyError::OutOfBounds {
            field: "spend_thresholds.CNY".into(),
            value: 80_000,
            min: 0,
            max: 50_000
        })
    );

    let generous = template(
        r#"{"override_bounds":{"spend_thresholds":{"CNY":{"min":10000,"max":100000}},"mint_ratio_percent":{"min":50,"max":95}}}"#,
    )
    .expect("valid");
    generous
        .check_overrides(&looser)
        .expect("within the vendor's bounds");
    assert_eq!(
        generous.effective(&looser).spend_thresholds,
        vec![Money::new(80_000, "CNY")]
    );
    // Below the vendor's `min` is tighter still: a guardian may always ask to be asked more.
    let below_min = ActorOverrides {
        spend_thresholds: vec![Money::new(5_000, "CNY")],
        mint_ratio_percent: Some(10),
    };
    generous
        .check_overrides(&below_min)
        .expect("tightening below min is allowed");
    let policy = generous.effective(&below_min);
    assert_eq!(policy.spend_thresholds, vec![Money::new(5_000, "CNY")]);
    assert_eq!(policy.mint_ratio_percent, 10);
    let too_loose = ActorOverrides {
        spend_thresholds: vec![Money::new(5_000, "CNY")],
        mint_ratio_percent: Some(99),
    };
    assert!(matches!(
        generous.check_overrides(&too_loose),
        Err(PolicyError::OutOfBounds { .. })
    ));
    // Stored before the vendor narrowed its bounds: brought down to its `max`, never loosened
    // by a `min` the vendor raised.
    let stored = ActorOverrides {
        spend_thresholds: vec![Money::new(90_000, "CNY")],
        mint_ratio_percent: Some(99),
    };
    let policy = generous.effective(&stored);
    assert_eq!(policy.spend_thresholds, vec![Money::new(90_000, "CNY")]);
    assert_eq!(policy.mint_ratio_percent, 95);
    let raised = template(
        r#"{"override_bounds":{"spend_thresholds":{"CNY":{"min":40000,"max":50000}},"mint_ratio_percent":{"min":90,"max":95}}}"#,
    )
    .expect("valid");
    let policy = raised.effective(&below_min);
    assert_eq!(policy.spend_thresholds, vec![Money::new(5_000, "CNY")]);
    assert_eq!(policy.mint_ratio_percent, 10);
    assert_eq!(
        raised.effective(&stored).spend_thresholds,
        vec![Money::new(50_000, "CNY")]
    );
}

#[test]
fn documents_round_trip() {
    let json = r#"{"spend_thresholds":{"CNY":30000},"mint_ratio_percent":70}"#;
    let doc = OverridesDoc::parse(json).expect("doc");
    assert_eq!(OverridesDoc::from_overrides(&doc.to_overrides()), doc);
    assert_eq!(OverridesDoc::parse(&doc.to_json()), Ok(doc));
}
