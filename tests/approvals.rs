//! The approval engine on SQLite and PostgreSQL: built-in triggers at their boundaries, template
//! and override precedence, idempotency and join-pending, exactly one winning decision, TTL
//! expiry with a controlled clock and across a restart, revisions, rate limits, plugins and
//! their fail mode, and the tokens minted for what was approved.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use approval_host::approvals::record::{Method, Route, Status};
use approval_host::approvals::{
    ApprovalConfig, ApprovalError, ApprovalEvent, ApprovalService, GuardianDecision, NewRequest,
    Relation, Requested,
};
use approval_host::clock::{Clock as _, ManualClock};
use approval_host::plugin::registry::{PluginRegistry, PluginState};
use approval_host::policy::document::{OverridesDoc, TemplateDoc};
use approval_host::store::approvals::FlagScope;
use approval_host::token::{TokenConfig, TokenIssuer};
use common::{TestDb, plugin, runtime};
use serde_json::{Value, json};

const VENDOR: &str = "acme-toys";
const TEDDY: &str = "teddy-7";
const MOM: &str = "guardian-mom";
const DAD: &str = "guardian-dad";
const T0: u64 = 1_795_000_000_000;

/// One host's services over a test database, with a clock the test moves.
struct Host {
    service: Arc<ApprovalService>,
    registry: Arc<PluginRegistry>,
    clock: ManualClock,
}

async fn host_with(db: &TestDb, clock: ManualClock, config: ApprovalConfig) -> Host {
    host_on(db.db.clone(), clock, config).await
}

async fn host_on(db: approval_host::store::Db, clock: ManualClock, config: ApprovalConfig) -> Host {
    let audit = common::audit_log_with(&db, Arc::new(clock.clone())).await;
    let registry = Arc::new(
        PluginRegistry::open(runtime(), db.clone(), Arc::clone(&audit))
            .await
            .unwrap(),
    );
    let tokens = TokenIssuer::open(&db, TokenConfig::default(), clock.now_ms())
        .await
        .unwrap();
    let service = Arc::new(ApprovalService::new(
        db.clone(),
        audit,
        Arc::clone(&registry),
        Arc::new(tokens),
        Arc::new(clock.clone()),
        config,
    ));
    Host {
        service,
        registry,
        clock,
    }
}

/// A host with one vendor, whose plugins may take the test runtime's long deadline, and a toy
/// (not a family device) guarded by mom and dad.
async fn host(db: &TestDb) -> Host {
    let host = host_with(db, ManualClock::at(T0), ApprovalConfig::default()).await;
    host.service
        .create_vendor(VENDOR, "Acme Toys")
        .await
        .unwrap();
    set_template(&host, r#"{"plugin_limits":{"deadline_ms":10000}}"#).await;
    host.service
        .register_actor(VENDOR, TEDDY, &["toy".into()], &[MOM.into(), DAD.into()])
        .await
        .unwrap();
    host
}

/// [`host`] with a vendor template allowing `per_hour` requests for a guardian per actor.
async fn host_allowing(db: &TestDb, per_hour: u32) -> Host {
    let host = host(db).await;
    set_template(
        &host,
        &format!(
            r#"{{"plugin_limits":{{"deadline_ms":10000}},"max_approval_requests_per_hour":{per_hour}}}"#
        ),
    )
    .await;
    host
}

async fn set_template(host: &Host, json: &str) -> u32 {
    host.service
        .set_template(VENDOR, &TemplateDoc::parse(json).unwrap(), "vendor-admin")
        .await
        .unwrap()
}

fn request(action: &str, params: Value) -> NewRequest {
    NewRequest {
        vendor: VENDOR.into(),
        actor: TEDDY.into(),
        action: action.into(),
        params,
        idempotency_key: None,
        provenance: approval_host::approvals::record::Provenance {
            surface: "voice".into(),
            tool: Some("shop-skill".into()),
        },
    }
}

fn pay(minor_units: u64) -> NewRequest {
    request(
        "payment",
        json!({"amount": minor_units, "currency": "CNY", "recipient": "toy-shop"}),
    )
}

async fn ask(host: &Host, new: NewRequest) -> Requested {
    host.service.request(new).await.unwrap()
}

/// Checks the record's token against the published keys with `params`.
fn token_binds(
    host: &Host,
    record: &approval_host::approvals::record::ApprovalRecord,
    params: &Value,
) -> bool {
    let token = record.token.as_ref().expect("a token was minted");
    let now = host.clock.now_ms();
    let expected = approval_host::token::Expected {
        actor: &record.actor,
        action: &record.action,
        params,
    };
    host.service
        .tokens()
        .verifier(now, &record.vendor)
        .verify(&token.token, &expected, now)
        .is_ok()
}

on_both_backends!(spend_threshold_boundary, spend_threshold);
async fn spend_threshold(db: TestDb) {
    let host = host(&db).await;
    let allowed = ask(&host, pay(50_000)).await.record;
    assert_eq!(allowed.status, Status::Allowed, "¥500.00 is allowed");
    assert_eq!(allowed.route, Route::Allow);
    assert_eq!(allowed.decision_method, Some(Method::Policy));
    assert!(token_binds(&host, &allowed, &pay(50_000).params));
    assert_eq!(allowed.provenance.tool.as_deref(), Some("shop-skill"));

    let pending = ask(&host, pay(50_001)).await;
    assert_eq!(pending.relation, Relation::Created);
    let pending = pending.record;
    assert_eq!(pending.status, Status::Pending, "¥500.01 needs a guardian");
    assert_eq!(pending.route, Route::HumanReview);
    assert_eq!(
        pending.rule_fired.as_deref(),
        Some("builtin.spend_threshold")
    );
    assert_eq!(
        pending.expires_at_ms,
        Some(T0 + 300_000),
        "default TTL is 5 minutes"
    );
    assert!(pending.token.is_none());
    assert_eq!(pending.amount.as_ref().map(|m| m.minor_units), Some(50_001));
    assert_eq!(pending.recipient.as_deref(), Some("toy-shop"));
    assert_eq!(
        host.service.get(&pending.id).await.unwrap(),
        pending,
        "the record is stored as returned"
    );

    let usd = request(
        "payment",
        json!({"amount": 1, "currency": "USD", "recipient": "toy-shop"}),
    );
    let usd = ask(&host, usd).await.record;
    assert_eq!(
        usd.status,
        Status::Pending,
        "no USD threshold: never converted, a human looks"
    );
}

on_both_backends!(other_builtin_triggers, other_triggers);
async fn other_triggers(db: TestDb) {
    let host = host(&db).await;
    let bank = ask(
        &host,
        request(
            "cred.put",
            json!({"service": "mybank", "category": "banking"}),
        ),
    )
    .await;
    assert_eq!(
        bank.record.rule_fired.as_deref(),
        Some("builtin.sensitive_credential")
    );
    let music = ask(
        &host,
        request("cred.put", json!({"service": "tunes", "category": "music"})),
    )
    .await;
    assert_eq!(music.record.status, Status::Allowed);

    let family = json!({"namespace": "family", "key": "dinner"});
    let from_toy = ask(&host, request("memory.write", family.clone())).await;
    assert_eq!(
        from_toy.record.rule_fired.as_deref(),
        Some("builtin.family_write_outside_family")
    );
    host.service
        .register_actor(
            VENDOR,
            "kitchen-hub",
            &["family-context".into()],
            &[MOM.into()],
        )
        .await
        .unwrap();
    let mut from_hub = request("memory.write", family);
    from_hub.actor = "kitchen-hub".into();
    assert_eq!(
        ask(&host, from_hub.clone()).await.record.status,
        Status::Allowed
    );
    // A device's tags are cached: changing them is seen by its next request.
    host.service
        .register_actor(VENDOR, "kitchen-hub", &[], &[MOM.into()])
        .await
        .unwrap();
    assert_eq!(
        ask(&host, from_hub).await.record.rule_fired.as_deref(),
        Some("builtin.family_write_outside_family"),
        "no longer a family device"
    );

    let mint = |scope: u64| {
        request(
            "capability.mint",
            json!({"capability": "wallet", "requested_scope": scope, "parent_scope": 1000}),
        )
    };
    assert_eq!(ask(&host, mint(899)).await.record.status, Status::Allowed);
    let near = ask(&host, mint(900)).await.record;
    assert_eq!(
        near.rule_fired.as_deref(),
        Some("builtin.mint_near_parent_scope")
    );
    assert!(token_binds(
        &host,
        &ask(&host, mint(10)).await.record,
        &mint(10).params
    ));

    let bad = host
        .service
        .request(request("payment", json!({"amount": "lots"})))
        .await;
    assert_eq!(bad.unwrap_err().code(), "invalid_request");
    let mut stranger = pay(1);
    stranger.actor = "nobody".into();
    assert_eq!(
        host.service.request(stranger).await.unwrap_err().code(),
        "actor_not_found"
    );
}

on_both_backends!(template_and_override_precedence, precedence);
async fn precedence(db: TestDb) {
    let host = host(&db).await;
    let v2 = set_template(
        &host,
        r#"{"plugin_limits":{"deadline_ms":10000},"spend_thresholds":{"CNY":20000},
            "override_bounds":{"spend_thresholds":{"CNY":{"min":5000,"max":40000}}}}"#,
    )
    .await;
    assert_eq!(v2, 2, "every template change is a new version");
    let record = ask(&host, pay(20_001)).await.record;
    assert_eq!(
        record.status,
        Status::Pending,
        "the vendor's template applies"
    );
    assert_eq!(record.policy_version, 2);

    let looser = OverridesDoc::parse(r#"{"spend_thresholds":{"CNY":40000}}"#).unwrap();
    assert_eq!(
        host.service
            .set_overrides(VENDOR, TEDDY, MOM, &looser)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ask(&host, pay(30_000)).await.record.status,
        Status::Allowed,
        "the guardian's override wins"
    );
    assert_eq!(ask(&host, pay(40_001)).await.record.status, Status::Pending);

    let too_loose = OverridesDoc::parse(r#"{"spend_thresholds":{"CNY":40001}}"#).unwrap();
    let err = host
        .service
        .set_overrides(VENDOR, TEDDY, DAD, &too_loose)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "override_out_of_bounds");
    assert!(err.to_string().contains("5000 to 40000"), "{err}");
    let stranger = host
        .service
        .set_overrides(VENDOR, TEDDY, "someone-else", &looser)
        .await;
    assert_eq!(
        stranger.unwrap_err().code(),
        "actor_not_found",
        "not their device: 404, not 403"
    );

    let tighter = OverridesDoc::parse(r#"{"spend_thresholds":{"CNY":10000}}"#).unwrap();
    assert_eq!(
        host.service
            .set_overrides(VENDOR, TEDDY, DAD, &tighter)
            .await
            .unwrap(),
        2
    );
    assert_eq!(ask(&host, pay(10_001)).await.record.status, Status::Pending);
    let (version, overrides) = host.service.overrides(VENDOR, TEDDY).await.unwrap();
    assert_eq!(
        (version, overrides.spend_thresholds[0].minor_units),
        (2, 10_000)
    );
    // The actor's tags and its overrides are read together: a change of the one keeps the other.
    host.service
        .register_actor(VENDOR, TEDDY, &["toy".into()], &[MOM.into(), DAD.into()])
        .await
        .unwrap();
    assert_eq!(ask(&host, pay(10_002)).await.record.status, Status::Pending);
    assert_eq!(ask(&host, pay(9_999)).await.record.status, Status::Allowed);
    assert_eq!(
        host.service.overrides(VENDOR, TEDDY).await.unwrap().0,
        2,
        "still the newest version"
    );
    let (none, _) = host
        .service
        .overrides(VENDOR, "unregistered")
        .await
        .unwrap();
    assert_eq!(none, 0, "an actor without overrides is at version 0");

    let bad = TemplateDoc::parse(r#"{"mint_ratio_percent": 150}"#).unwrap();
    let err = host
        .service
        .set_template(VENDOR, &bad, "vendor-admin")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "policy_invalid");
    assert_eq!(
        host.service
            .template_versions(VENDOR, 10)
            .await
            .unwrap()
            .len(),
        2,
        "nothing stored"
    );
}

on_both_backends!(idempotency_and_join_pending, idempotency);
async fn idempotency(db: TestDb) {
    let host = host(&db).await;
    let mut events = host.service.subscribe();
    let keyed = |amount| NewRequest {
        idempotency_key: Some("order-17".into()),
        ..pay(amount)
    };
    let first = ask(&host, keyed(60_000)).await;
    let retry = ask(&host, keyed(60_000)).await;
    assert_eq!(retry.relation, Relation::Replayed);
    assert_eq!(retry.record.id, first.record.id);
    let reused = host.service.request(keyed(70_000)).await.unwrap_err();
    assert_eq!(reused.code(), "idempotency_key_reused");

    // The same request again without a key joins the pending one: no second notification.
    let joined = ask(&host, pay(60_000)).await;
    assert_eq!(joined.relation, Relation::JoinedPending);
    assert_eq!(joined.record.id, first.record.id);
    assert!(matches!(events.try_recv(), Ok(ApprovalEvent::Pending(r)) if r.id == first.record.id));
    assert!(events.try_recv().is_err(), "the guardian was notified once");

    // Params spelled differently are the same request.
    let reordered = request(
        "payment",
        json!({"recipient": "toy-shop", "currency": "CNY", "amount": 60000}),
    );
    assert_eq!(ask(&host, reordered).await.record.id, first.record.id);

    // Once decided, a retry with the key returns the outcome as it is now.
    host.service
        .decide(&first.record.id, MOM, GuardianDecision::Approve)
        .await
        .unwrap();
    let after = ask(&host, keyed(60_000)).await.record;
    assert_eq!(after.status, Status::Approved);
    assert!(after.token.is_some());
    // And an identical request now is a new one.
    let fresh = ask(&host, pay(60_000)).await;
    assert_eq!(fresh.relation, Relation::Created);
    assert_ne!(fresh.record.id, first.record.id);
}

on_both_backends!(
    concurrent_retries_of_an_answered_request_get_one_answer,
    concurrent_retries
);
/// Allowed requests are written many to a statement; retries with one idempotency key that
/// land in the same write still get one record, and every retry its answer.
async fn concurrent_retries(db: TestDb) {
    let host = host(&db).await;
    let keyed = || NewRequest {
        idempotency_key: Some("order-18".into()),
        ..pay(1_000)
    };
    let asked = futures_util::future::join_all((0..10).map(|_| ask(&host, keyed()))).await;
    let first = &asked[0].record;
    assert_eq!(first.status, Status::Allowed);
    assert!(asked.iter().all(|a| a.record.id == first.id), "one record");
    let created = asked
        .iter()
        .filter(|a| a.relation == Relation::Created)
        .count();
    assert_eq!(created, 1, "the others are replays");
    assert!(asked.iter().all(|a| a.record.token.is_some()));
}

on_both_backends!(
    one_hundred_concurrent_decisions_one_winner,
    concurrent_decisions
);
async fn concurrent_decisions(db: TestDb) {
    let host = host(&db).await;
    let id = ask(&host, pay(60_000)).await.record.id;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let service = Arc::clone(&host.service);
        let id = id.clone();
        tasks.spawn(async move {
            let (guardian, decision) = match i % 3 {
                0 => (MOM, GuardianDecision::Approve),
                1 => (DAD, GuardianDecision::Deny { reason: Some(format!("no {i}")) }),
                _ => (MOM, GuardianDecision::Revise { params: json!({"amount": 30000, "currency": "CNY", "recipient": "toy-shop"}) }),
            };
            service.decide(&id, guardian, decision).await
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(record) => winners.push(record),
            Err(ApprovalError::AlreadyDecided(record)) => losers.push(*record),
            Err(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decision wins");
    assert_eq!(losers.len(), 99);
    let winner = &winners[0];
    assert!(
        losers.iter().all(|l| l.status == winner.status
            && l.decider == winner.decider
            && l.token == winner.token),
        "every loser is told the winning decision"
    );
    assert_eq!(host.service.get(&id).await.unwrap(), *winner);
}

on_both_backends!(ttl_expiry_with_a_controlled_clock, ttl_expiry);
async fn ttl_expiry(db: TestDb) {
    let host = host(&db).await;
    set_template(
        &host,
        r#"{"plugin_limits":{"deadline_ms":10000},"ttl_seconds":{"default":600,"payment":60}}"#,
    )
    .await;
    let payment = ask(&host, pay(60_000)).await.record;
    assert_eq!(payment.expires_at_ms, Some(T0 + 60_000), "per-action TTL");
    let cred = ask(
        &host,
        request(
            "cred.put",
            json!({"service": "mybank", "category": "banking"}),
        ),
    )
    .await
    .record;
    assert_eq!(
        cred.expires_at_ms,
        Some(T0 + 600_000),
        "template default TTL"
    );

    host.clock.advance(Duration::from_millis(59_999));
    assert_eq!(
        host.service.get(&payment.id).await.unwrap().status,
        Status::Pending
    );
    host.clock.advance(Duration::from_millis(1));
    let expired = host.service.get(&payment.id).await.unwrap();
    assert_eq!(
        expired.status,
        Status::TimedOut,
        "an agent asking after expiry sees the timeout"
    );
    assert_eq!(expired.decision_method, Some(Method::Timeout));
    assert_eq!(
        expired.decided_at_ms,
        Some(T0 + 60_000),
        "settled at the moment it expired"
    );
    assert!(expired.token.is_none());

    let late = host
        .service
        .decide(&payment.id, MOM, GuardianDecision::Approve)
        .await
        .unwrap_err();
    assert_eq!(late.code(), "approval_timeout", "never a late approval");
    assert_eq!(
        host.service.inbox(MOM).await.unwrap().len(),
        1,
        "only the credential is waiting"
    );
    assert_eq!(host.service.inbox("stranger").await.unwrap().len(), 0);
}

on_both_backends!(ttl_expiry_while_no_host_was_running, expiry_after_restart);
async fn expiry_after_restart(db: TestDb) {
    let clock = ManualClock::at(T0);
    let id = {
        let host = host(&db).await;
        ask(&host, pay(60_000)).await.record.id
    }; // the host stops here
    clock.advance(Duration::from_secs(3600));
    let restarted = host_with(&db, clock.clone(), ApprovalConfig::default()).await;
    let mut events = restarted.service.subscribe();
    assert_eq!(
        restarted.service.sweep().await.unwrap(),
        1,
        "the next start settles it"
    );
    assert!(
        matches!(events.try_recv(), Ok(ApprovalEvent::Settled(r)) if r.status == Status::TimedOut)
    );
    let record = restarted.service.get(&id).await.unwrap();
    assert_eq!(
        (record.status, record.decided_at_ms),
        (Status::TimedOut, Some(T0 + 300_000))
    );
    assert_eq!(
        restarted.service.sweep().await.unwrap(),
        0,
        "settled exactly once"
    );
}

on_both_backends!(revise_mints_the_amended_token_only, revise);
async fn revise(db: TestDb) {
    let host = host(&db).await;
    let id = ask(&host, pay(60_000)).await.record.id;
    let wider = json!({"amount": 70000, "currency": "CNY", "recipient": "toy-shop"});
    let err = host
        .service
        .decide(&id, MOM, GuardianDecision::Revise { params: wider })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "revision_not_narrower");

    let amended = json!({"amount": 30000, "currency": "CNY", "recipient": "toy-shop"});
    let record = host
        .service
        .decide(
            &id,
            MOM,
            GuardianDecision::Revise {
                params: amended.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (record.status, record.route),
        (Status::Revised, Route::Revise)
    );
    assert_eq!(
        record.params,
        pay(60_000).params,
        "the record keeps what was asked"
    );
    assert_eq!(
        record.revised_params,
        Some(amended.clone()),
        "and what was approved"
    );
    assert_eq!(
        record.decider.as_deref(),
        Some(MOM),
        "the guardian's own id"
    );
    assert!(token_binds(&host, &record, &amended));
    assert!(
        !token_binds(&host, &record, &pay(60_000).params),
        "never the original ¥600"
    );

    let denied_id = ask(&host, pay(70_000)).await.record.id;
    let denied = host
        .service
        .decide(
            &denied_id,
            DAD,
            GuardianDecision::Deny {
                reason: Some("too much".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (denied.status, denied.decision_reason.as_deref()),
        (Status::Denied, Some("too much"))
    );
    assert!(denied.token.is_none());
    let err = host
        .service
        .decide(&denied_id, "stranger", GuardianDecision::Approve)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "approval_not_found",
        "a stranger cannot even see it"
    );
}

on_both_backends!(rate_limit_and_retry_after, rate_limit);
async fn rate_limit(db: TestDb) {
    let host = host_allowing(&db, 3).await;
    for i in 0..3u64 {
        assert_eq!(
            ask(&host, pay(60_000 + i)).await.record.status,
            Status::Pending
        );
        host.clock.advance(Duration::from_secs(60));
        // Requests that need no human do not count.
        assert_eq!(
            ask(&host, pay(100 + i)).await.record.status,
            Status::Allowed
        );
    }
    let limited = ask(&host, pay(99_999)).await.record;
    assert_eq!(limited.status, Status::RateLimited);
    assert_eq!(
        limited.retry_after_ms,
        Some(T0 + 3_600_000),
        "when the first request leaves the hour"
    );
    assert_eq!(
        limited.retry_after(host.clock.now_ms()),
        Some(Duration::from_secs(3_600 - 180))
    );
    assert_eq!(
        host.service.get(&limited.id).await.unwrap().status,
        Status::RateLimited,
        "recorded"
    );

    host.clock.set(T0 + 3_600_001);
    assert_eq!(
        ask(&host, pay(99_999)).await.record.status,
        Status::Pending,
        "the window moved on"
    );
}

on_both_backends!(rate_limit_holds_under_concurrency, rate_limit_concurrent);
async fn rate_limit_concurrent(db: TestDb) {
    let host = host_allowing(&db, 5).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u64 {
        let service = Arc::clone(&host.service);
        tasks.spawn(async move { service.request(pay(60_000 + i)).await });
    }
    let mut pending = 0;
    let mut limited = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap().unwrap().record.status {
            Status::Pending => pending += 1,
            Status::RateLimited => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((pending, limited), (5, 15));
}

on_both_backends!(
    rate_limit_exact_for_actors_near_and_far_from_it_at_once,
    rate_limit_mixed
);
async fn rate_limit_mixed(db: TestDb) {
    let host = host_allowing(&db, 12).await;
    let robot = "robot-7";
    host.service
        .register_actor(VENDOR, robot, &["toy".into()], &[MOM.into()])
        .await
        .unwrap();
    // Distinct recipients: no request is a tiny variation of another.
    let ask_for = |actor: &str, n: u64| NewRequest {
        actor: actor.into(),
        ..request(
            "payment",
            json!({"amount": 60_000, "currency": "CNY", "recipient": format!("shop-{n}")}),
        )
    };
    for n in 0..10 {
        assert_eq!(
            ask(&host, ask_for(TEDDY, n)).await.record.status,
            Status::Pending
        );
    }
    // Teddy (10 of 12 used) and the robot (none used) ask 6 times each, all at once: written
    // together where they share a batch, counted exactly either way.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 100..106 {
        for actor in [TEDDY, robot] {
            let service = Arc::clone(&host.service);
            let new = ask_for(actor, n);
            tasks.spawn(async move { service.request(new).await });
        }
    }
    let mut outcomes = std::collections::BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        let record = result.unwrap().unwrap().record;
        *outcomes
            .entry((record.actor.clone(), record.status.as_str()))
            .or_insert(0) += 1;
    }
    assert_eq!(
        outcomes.into_iter().collect::<Vec<_>>(),
        [
            ((robot.to_owned(), "pending"), 6),
            ((TEDDY.to_owned(), "pending"), 2),
            ((TEDDY.to_owned(), "rate_limited"), 4),
        ]
    );
}

on_both_backends!(plugins_and_their_fail_mode, plugins);
async fn plugins(db: TestDb) {
    let host = host(&db).await;
    let velocity = host
        .registry
        .upload(VENDOR, &plugin("velocity"), None, T0)
        .await
        .unwrap();
    host.registry
        .set_state(
            VENDOR,
            ("velocity", velocity.version),
            PluginState::Active,
            T0,
        )
        .await
        .unwrap();
    let trap = host
        .registry
        .upload(VENDOR, &plugin("hostile_trap"), None, T0)
        .await
        .unwrap();
    host.registry
        .set_state(VENDOR, (&trap.name, trap.version), PluginState::Shadow, T0)
        .await
        .unwrap();

    let casino = request(
        "payment",
        json!({"amount": 100, "currency": "CNY", "recipient": "casino", "merchant_category": "gambling"}),
    );
    let denied = ask(&host, casino).await.record;
    assert_eq!(denied.status, Status::Denied);
    assert_eq!(denied.route, Route::Stop);
    assert_eq!(
        denied.rule_fired.as_deref(),
        Some("velocity.blocked-merchant")
    );
    assert_eq!(
        denied.rules[0].source,
        format!("plugin:velocity@{}", velocity.version)
    );
    assert_eq!(
        denied.plugins.len(),
        2,
        "the shadow plugin ran and was recorded"
    );
    let shadow = denied.plugins.iter().find(|p| p.shadow).unwrap();
    assert_eq!(
        shadow.error.as_ref().map(|e| e.0.as_str()),
        Some("plugin_trap")
    );
    assert_eq!(
        denied.plugins.iter().find(|p| !p.shadow).unwrap().sha256,
        velocity.sha256
    );

    let fine = ask(&host, pay(100)).await.record;
    assert_eq!(
        fine.status,
        Status::Allowed,
        "a failing shadow plugin changes nothing"
    );

    // The trap made active: its failure takes the vendor's fail mode, never an allow.
    host.registry
        .set_state(VENDOR, (&trap.name, trap.version), PluginState::Active, T0)
        .await
        .unwrap();
    let escalated = ask(&host, pay(101)).await.record;
    assert_eq!(escalated.status, Status::Pending);
    assert_eq!(escalated.rule_fired.as_deref(), Some("plugin.failed"));
    set_template(
        &host,
        r#"{"plugin_limits":{"deadline_ms":10000},"plugin_fail_mode":"deny"}"#,
    )
    .await;
    assert_eq!(ask(&host, pay(102)).await.record.status, Status::Denied);
}

on_both_backends!(unusual_volume_is_flagged, volume_flag);
async fn volume_flag(db: TestDb) {
    let config = ApprovalConfig {
        flag_min_requests: 10,
        flag_factor: 5,
    };
    let host = host_with(&db, ManualClock::at(T0), config).await;
    host.service.create_vendor(VENDOR, "Acme").await.unwrap();
    host.service
        .register_actor(VENDOR, TEDDY, &[], &[MOM.into()])
        .await
        .unwrap();
    let mut events = host.service.subscribe();
    for i in 0..9u64 {
        ask(&host, pay(i + 1)).await;
    }
    assert!(
        host.service
            .flags(FlagScope::Vendor(VENDOR), 0)
            .await
            .unwrap()
            .is_empty(),
        "nine is normal"
    );
    for i in 0..5u64 {
        ask(&host, pay(i + 100)).await;
    }
    let flags = host
        .service
        .flags(FlagScope::Vendor(VENDOR), 0)
        .await
        .unwrap();
    assert_eq!(flags.len(), 1, "flagged once, not on every request");
    assert_eq!((flags[0].actor.as_str(), flags[0].last_hour), (TEDDY, 10));
    let flagged = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, ApprovalEvent::Flagged(_)))
        .count();
    assert_eq!(flagged, 1);
}

on_both_backends!(
    two_replicas_agree_on_one_winner_and_one_timeout,
    two_replicas
);
async fn two_replicas(db: TestDb) {
    let a = host(&db).await;
    // A second host process: its own connection pool, registry, key cache and clock.
    let other_pool = approval_host::store::Db::connect(&db.url).await.unwrap();
    let b = host_on(other_pool, a.clock.clone(), ApprovalConfig::default()).await;
    let id = ask(&a, pay(60_000)).await.record.id;
    let joined = ask(&b, pay(60_000)).await;
    assert_eq!(
        (joined.relation, joined.record.id.as_str()),
        (Relation::JoinedPending, id.as_str())
    );

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let service = Arc::clone(if i % 2 == 0 { &a.service } else { &b.service });
        let id = id.clone();
        let decision = if i % 4 < 2 {
            GuardianDecision::Approve
        } else {
            GuardianDecision::Deny { reason: None }
        };
        tasks.spawn(async move { service.decide(&id, MOM, decision).await.is_ok() });
    }
    let mut winners = 0;
    while let Some(won) = tasks.join_next().await {
        winners += usize::from(won.unwrap());
    }
    assert_eq!(winners, 1, "one winner across both replicas");

    // Both sweepers run at once over requests that expired: each is settled exactly once.
    // (Amounts far apart: tiny variations would be merged into one request.)
    for i in 0..10u64 {
        ask(if i % 2 == 0 { &a } else { &b }, pay(70_000 << i)).await;
    }
    a.clock.advance(Duration::from_secs(301));
    let (sa, sb) = tokio::join!(a.service.sweep(), b.service.sweep());
    assert_eq!(sa.unwrap() + sb.unwrap(), 10);
}
