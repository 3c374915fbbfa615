//! The audit log on SQLite and PostgreSQL: every step of an approval becomes an entry in the same
//! transaction as the step, receipts verify with the public key alone, replicas append to one
//! unforked log, checkpoints are signed only over a log that extends the last one, redaction
//! keeps every proof, and the offline verifier names each kind of tampering: an edited entry, a
//! consistent rewrite, a deleted tail, an inserted row, a forked history signed again.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use approval_host::approvals::record::{Provenance, Status};
use approval_host::approvals::{ApprovalConfig, ApprovalService, GuardianDecision, NewRequest};
use approval_host::audit::checkpoint::LogKey;
use approval_host::audit::entry::{self, Entry, Event, PluginOutcome};
use approval_host::audit::merkle::{self, HashCache};
use approval_host::audit::verify::{Failure, Report, verify_export};
use approval_host::audit::{AuditError, AuditLog, Audited, Scope};
use approval_host::clock::ManualClock;
use approval_host::plugin::registry::{PluginRegistry, PluginState};
use approval_host::policy::document::TemplateDoc;
use approval_host::store::audit::StoredCheckpoint;
use approval_host::store::{Backend, StoreError};
use approval_host::token::{TokenConfig, TokenIssuer};
use common::{TestDb, plugin, runtime};
use serde_json::json;
use sqlx::{AnyConnection, Connection as _, Row as _};

const VENDOR: &str = "acme-toys";
const TEDDY: &str = "teddy-7";
const MOM: &str = "guardian-mom";
const T0: u64 = 1_795_000_000_000;

async fn export(log: &AuditLog) -> Vec<u8> {
    let mut out = Vec::new();
    log.export(&mut out).await.unwrap();
    out
}

async fn verify(log: &AuditLog, trusted: &[String]) -> Report {
    verify_export(&export(log).await[..], log.vkey(), trusted).unwrap()
}

fn kinds(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.event {
            Event::Decided { status, .. } => format!("decided:{status}"),
            other => other.kind().to_owned(),
        })
        .collect()
}

struct Host {
    service: ApprovalService,
    audit: Arc<AuditLog>,
    clock: ManualClock,
}

async fn host(db: &TestDb) -> Host {
    let clock = ManualClock::at(T0);
    let audit = common::audit_log_with(&db.db, Arc::new(clock.clone())).await;
    let registry = Arc::new(
        PluginRegistry::open(runtime(), db.db.clone(), Arc::clone(&audit))
            .await
            .unwrap(),
    );
    let version = registry
        .upload(VENDOR, &plugin("velocity"), None, T0)
        .await
        .unwrap();
    registry
        .set_state(
            VENDOR,
            ("velocity", version.version),
            PluginState::Active,
            T0,
        )
        .await
        .unwrap();
    let tokens = TokenIssuer::open(&db.db, TokenConfig::default(), T0)
        .await
        .unwrap();
    let service = ApprovalService::new(
        db.db.clone(),
        Arc::clone(&audit),
        registry,
        Arc::new(tokens),
        Arc::new(clock.clone()),
        ApprovalConfig::default(),
    );
    service.create_vendor(VENDOR, "Acme Toys").await.unwrap();
    let template = r#"{"plugin_limits":{"deadline_ms":10000},"max_approval_requests_per_hour":3}"#;
    service
        .set_template(
            VENDOR,
            &TemplateDoc::parse(template).unwrap(),
            "vendor-admin",
        )
        .await
        .unwrap();
    service
        .register_actor(VENDOR, TEDDY, &["toy".into()], &[MOM.into()])
        .await
        .unwrap();
    Host {
        service,
        audit,
        clock,
    }
}

fn pay(minor_units: u64, recipient: &str) -> NewRequest {
    NewRequest {
        vendor: VENDOR.into(),
        actor: TEDDY.into(),
        action: "payment".into(),
        params: json!({"amount": minor_units, "currency": "CNY", "recipient": recipient}),
        idempotency_key: None,
        provenance: Provenance {
            surface: "voice".into(),
            tool: Some("shop-skill".into()),
        },
    }
}

on_both_backends!(every_step_of_an_approval_is_an_entry, every_step);
async fn every_step(db: TestDb) {
    let host = host(&db).await;
    let verifier = host.audit.verifier();
    let receipt_of = |id: String| {
        let audit = Arc::clone(&host.audit);
        let verifier = verifier.clone();
        async move {
            let receipt = audit.receipt(&id).await.unwrap();
            receipt.verify(&verifier).unwrap()
        }
    };

    // Allowed by policy: the request, the plugin's verdict, the decision with its token.
    let allowed = host
        .service
        .request(pay(2_000, "toy-shop"))
        .await
        .unwrap()
        .record;
    let entries = receipt_of(allowed.id.clone()).await;
    assert_eq!(
        kinds(&entries),
        ["request_received", "plugin_classified", "decided:allowed"]
    );
    let Event::PluginClassified {
        plugin,
        plugin_version,
        sha256,
        result: PluginOutcome::Verdict { decision, .. },
        fuel_used,
        ..
    } = &entries[1].event
    else {
        panic!("{:?}", entries[1]);
    };
    assert_eq!((plugin.as_str(), *plugin_version), ("velocity", 1));
    assert_eq!(sha256, &allowed.plugins[0].sha256);
    assert_eq!(decision, "allow");
    assert!(*fuel_used > 0);
    let Event::Decided {
        method, token_id, ..
    } = &entries[2].event
    else {
        panic!()
    };
    assert_eq!(method, "policy");
    assert_eq!(
        token_id.as_deref(),
        Some(allowed.token.as_ref().unwrap().id.as_str())
    );
    // The params are a payload named by params_hash.
    let Event::RequestReceived { params_hash, .. } = &entries[0].event else {
        panic!()
    };
    assert_eq!(params_hash, &allowed.params_hash);
    let params = host.audit.payload(params_hash).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&params).unwrap(),
        allowed.params
    );

    // ¥600 waits for a guardian, who denies it with a reason: the decider is recorded.
    let big = host
        .service
        .request(pay(60_000, "toy-shop"))
        .await
        .unwrap()
        .record;
    host.service
        .decide(
            &big.id,
            MOM,
            GuardianDecision::Deny {
                reason: Some("not before your birthday".into()),
            },
        )
        .await
        .unwrap();
    let entries = receipt_of(big.id.clone()).await;
    assert_eq!(
        kinds(&entries),
        [
            "request_received",
            "plugin_classified",
            "rule_fired",
            "decided:pending",
            "decided:denied"
        ]
    );
    let Event::Decided {
        decider,
        method,
        guardian_reason_sha256: Some(reason),
        ..
    } = &entries[4].event
    else {
        panic!("{:?}", entries[4]);
    };
    assert_eq!((decider.as_deref(), method.as_str()), (Some(MOM), "human"));
    assert_eq!(
        host.audit.payload(reason).await.unwrap().unwrap(),
        b"not before your birthday"
    );

    // A revision records the amended params it grants.
    let other = host
        .service
        .request(pay(55_000, "book-shop"))
        .await
        .unwrap()
        .record;
    let amended = json!({"amount": 30_000, "currency": "CNY", "recipient": "book-shop"});
    let revised = host
        .service
        .decide(&other.id, MOM, GuardianDecision::Revise { params: amended })
        .await
        .unwrap();
    let entries = receipt_of(other.id.clone()).await;
    let Event::Decided {
        status,
        granted_params_hash,
        ..
    } = &entries.last().unwrap().event
    else {
        panic!()
    };
    assert_eq!(status, "revised");
    assert_eq!(granted_params_hash, &revised.revised_params_hash);

    // Nobody answers: a timeout entry, at the moment it expired.
    let late = host
        .service
        .request(pay(70_000, "toy-shop"))
        .await
        .unwrap()
        .record;
    host.clock.advance(Duration::from_secs(3600));
    assert_eq!(host.service.sweep().await.unwrap(), 1);
    let entries = receipt_of(late.id.clone()).await;
    assert_eq!(kinds(&entries).last().unwrap(), "decided:timed_out");
    let Event::Decided { method, .. } = &entries.last().unwrap().event else {
        panic!()
    };
    assert_eq!(method, "timeout");
    assert_eq!(entries.last().unwrap().at_ms, late.expires_at_ms.unwrap());

    // Over the hourly limit of 3 requests for a guardian: a rate-limit refusal.
    for amount in [80_000, 81_000, 82_000] {
        host.service.request(pay(amount, "toy-shop")).await.unwrap();
    }
    let refused = host
        .service
        .request(pay(83_000, "toy-shop"))
        .await
        .unwrap()
        .record;
    assert_eq!(refused.status, Status::RateLimited);
    let entries = receipt_of(refused.id.clone()).await;
    let Event::RateLimited { limit, .. } = &entries.last().unwrap().event else {
        panic!("{:?}", entries.last());
    };
    assert_eq!(*limit, 3);

    // The whole log verifies offline and holds the policy and plugin changes too.
    host.audit.checkpoint().await.unwrap();
    let report = verify(&host.audit, &[]).await;
    assert!(report.ok(), "{report}");
    assert_eq!(report.entries, host.audit.size().await.unwrap());
    assert_eq!(report.unsigned_entries, 0);
    let all: Vec<Entry> = host
        .audit
        .entries(0, report.entries)
        .await
        .unwrap()
        .iter()
        .map(|e| entry::decode(&e.bytes).unwrap())
        .collect();
    let all_kinds = kinds(&all);
    for kind in ["plugin_uploaded", "plugin_state_changed", "policy_changed"] {
        assert!(
            all_kinds.iter().any(|k| k == kind),
            "{kind} in {all_kinds:?}"
        );
    }
}

on_both_backends!(redaction_keeps_every_proof, redaction);
async fn redaction(db: TestDb) {
    let host = host(&db).await;
    let big = host
        .service
        .request(pay(60_000, "toy-shop"))
        .await
        .unwrap()
        .record;
    host.service
        .decide(
            &big.id,
            MOM,
            GuardianDecision::Deny {
                reason: Some("my child's name is Mia".into()),
            },
        )
        .await
        .unwrap();
    let before = host.audit.receipt(&big.id).await.unwrap();
    let reason = events_reason(&before.verify(&host.audit.verifier()).unwrap());

    assert!(
        host.audit
            .redact(&reason, "privacy-officer", "erasure request 7")
            .await
            .unwrap()
    );
    assert!(
        !host
            .audit
            .redact(&reason, "privacy-officer", "again")
            .await
            .unwrap()
    );
    assert_eq!(host.audit.payload(&reason).await.unwrap(), None);

    // The receipt still verifies, against a newer checkpoint too; the export reports the
    // redaction and nothing else.
    before.verify(&host.audit.verifier()).unwrap();
    host.audit.checkpoint().await.unwrap();
    let after = host.audit.receipt(&big.id).await.unwrap();
    assert_eq!(after.entries.len(), before.entries.len());
    after.verify(&host.audit.verifier()).unwrap();
    let report = verify(&host.audit, std::slice::from_ref(&before.checkpoint)).await;
    assert!(report.ok(), "{report}");
    assert_eq!((report.redacted_payloads, report.absent_payloads), (1, 0));
}

fn events_reason(entries: &[Entry]) -> String {
    entries
        .iter()
        .find_map(|e| match &e.event {
            Event::Decided {
                guardian_reason_sha256: Some(r),
                ..
            } => Some(r.clone()),
            _ => None,
        })
        .unwrap()
}

fn note(i: u64) -> Entry {
    Entry::new(
        T0 + i,
        Event::RuleFired {
            approval_id: format!("apr_{i}"),
            vendor: VENDOR.into(),
            actor: TEDDY.into(),
            rule_id: "builtin.spend_threshold".into(),
            decision: "escalate".into(),
            reason: format!("payment {i} is above the threshold"),
        },
    )
}

on_both_backends!(replicas_append_to_one_unforked_log, replicas);
async fn replicas(db: TestDb) {
    let first = common::audit_log(&db.db).await;
    let other_db = approval_host::store::Db::connect(&db.url).await.unwrap();
    let second = common::audit_log(&other_db).await;
    assert_eq!(first.vkey(), second.vkey(), "replicas share one key");

    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let log = Arc::clone(if task % 2 == 0 { &first } else { &second });
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            for i in 0..25 {
                let n = task * 100 + i;
                ranges.push(log.append(vec![note(n), note(n + 50)]).await.unwrap());
            }
            ranges
        }));
    }
    let mut indexes = Vec::new();
    for task in tasks {
        for range in task.await.unwrap() {
            assert_eq!(range.end - range.start, 2, "a write's entries are adjacent");
            indexes.extend(range);
        }
    }
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        (0..400).collect::<Vec<_>>(),
        "every index once, no gaps"
    );
    // Checkpoints from both replicas describe one growing log.
    first.checkpoint().await.unwrap();
    second.append(vec![note(9_999)]).await.unwrap();
    let latest = second.checkpoint().await.unwrap().unwrap();
    assert_eq!(latest.size, 401);
    let report = verify(&first, &[]).await;
    assert!(report.ok(), "{report}");
    assert_eq!((report.entries, report.checkpoints_verified), (401, 2));
}

/// Inserts `vendor`'s row through the log with `entry`, failing with `failure` if given.
async fn insert_vendor(
    log: Arc<AuditLog>,
    vendor: &'static str,
    entry: Entry,
    failure: Option<StoreError>,
) -> Result<approval_host::audit::Committed<&'static str>, StoreError> {
    log.commit(
        Scope::Vendor(vendor.into()),
        move |conn: &mut AnyConnection| {
            Box::pin(async move {
                sqlx::query("INSERT INTO vendors (id, name, created_at_ms) VALUES ($1, $1, 0)")
                    .bind(vendor)
                    .execute(&mut *conn)
                    .await?;
                if let Some(failure) = failure {
                    return Err(failure);
                }
                Ok(Audited {
                    value: vendor,
                    entries: vec![entry],
                    payloads: Vec::new(),
                })
            })
        },
    )
    .await
}

on_both_backends!(
    a_failed_write_leaves_nothing_and_its_batch_goes_on,
    failed_write
);
async fn failed_write(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    let write = |vendor: &'static str, fail: bool| {
        let failure = fail.then(|| StoreError::Corrupt("the write changed its mind".into()));
        insert_vendor(Arc::clone(&log), vendor, note(1), failure)
    };
    let vendors = || async {
        sqlx::query("SELECT id FROM vendors ORDER BY id")
            .fetch_all(&mut AnyConnection::connect(&db.url).await.unwrap())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("id"))
            .collect::<Vec<_>>()
    };
    let (a, b, c) = tokio::join!(write("v-a", false), write("v-b", true), write("v-c", false));
    assert_eq!(a.unwrap().value, "v-a");
    assert!(matches!(b, Err(StoreError::Corrupt(_))));
    assert_eq!(c.unwrap().value, "v-c");
    assert_eq!(
        vendors().await,
        ["v-a", "v-c"],
        "the failed write left no row"
    );
    assert_eq!(log.size().await.unwrap(), 2, "and no entry");
    // Alone in its batch (no savepoint around it), a failed write leaves nothing either, and
    // the next batch goes on.
    assert!(matches!(
        write("v-d", true).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(write("v-e", false).await.unwrap().value, "v-e");
    assert_eq!(
        vendors().await,
        ["v-a", "v-c", "v-e"],
        "the lone failed write left no row"
    );
    assert_eq!(log.size().await.unwrap(), 3);
    // Once closed, the log refuses writes rather than losing them.
    log.close().await.unwrap();
    assert!(matches!(
        log.append(vec![note(2)]).await,
        Err(StoreError::Closed)
    ));
}

on_both_backends!(
    the_log_never_appends_an_entry_its_verifier_refuses,
    oversized_entry
);
async fn oversized_entry(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    let huge = |i: u64| {
        let mut entry = note(i);
        if let Event::RuleFired { reason, .. } = &mut entry.event {
            *reason = "x".repeat(entry::MAX_ENTRY_LEN);
        }
        entry
    };
    // Entries alone, and a write with its own SQL: the write is undone, its batch goes on.
    let write =
        |vendor: &'static str, entry: Entry| insert_vendor(Arc::clone(&log), vendor, entry, None);
    let (alone, big, small) = tokio::join!(
        log.append(vec![note(1), huge(2)]),
        write("v-big", huge(3)),
        write("v-small", note(4)),
    );
    assert!(
        matches!(alone, Err(StoreError::EntryTooLarge(_))),
        "{alone:?}"
    );
    assert!(matches!(big, Err(StoreError::EntryTooLarge(_))), "{big:?}");
    small.unwrap();
    let vendors: Vec<String> = sqlx::query("SELECT id FROM vendors ORDER BY id")
        .fetch_all(&mut AnyConnection::connect(&db.url).await.unwrap())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("id"))
        .collect();
    assert_eq!(vendors, ["v-small"], "the refused write left no row");
    assert_eq!(log.size().await.unwrap(), 1);
    log.checkpoint().await.unwrap();
    let report = verify(&log, &[]).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

on_both_backends!(writes_naming_the_same_payload_store_it_once, shared_payload);
async fn shared_payload(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    let bytes = b"{\"amount\":600}".to_vec();
    let name = approval_host::audit::events::payload_name(&bytes);
    let write = |n: u64| {
        let log = Arc::clone(&log);
        let payload = (name.clone(), bytes.clone());
        async move {
            log.commit(
                Scope::Vendor("v".into()),
                move |_conn: &mut AnyConnection| {
                    Box::pin(async move {
                        Ok(Audited {
                            value: n,
                            entries: vec![note(n)],
                            payloads: vec![payload.clone(), payload],
                        })
                    })
                },
            )
            .await
        }
    };
    // Concurrent writes share batches: the payload is named several times in one statement.
    let written = futures_util::future::join_all((0..20).map(write)).await;
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    // And once more, when it is already stored.
    write(20).await.unwrap();
    assert_eq!(log.payload(&name).await.unwrap(), Some(bytes));
    let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_payloads")
        .fetch_one(&mut AnyConnection::connect(&db.url).await.unwrap())
        .await
        .unwrap()
        .get("n");
    assert_eq!(stored, 1);
    assert_eq!(log.size().await.unwrap(), 21);
}

/// A log whose checkpointer ticks every 2 ms.
async fn ticking_log(db: &TestDb) -> Arc<AuditLog> {
    let config = approval_host::audit::AuditConfig {
        checkpoint_every: Duration::from_millis(2),
        ..approval_host::audit::AuditConfig::default()
    };
    AuditLog::open(db.db.clone(), config, Arc::new(ManualClock::at(T0)))
        .await
        .unwrap()
}

/// The newest checkpoint once the checkpointer has signed one of `size` entries (a bounded wait
/// for it, not a timing claim).
async fn signed_by_checkpointer(log: &AuditLog, size: u64) -> StoredCheckpoint {
    let mut newest = None;
    for _ in 0..5_000 {
        newest = log.latest_checkpoint().await.unwrap();
        if newest.as_ref().is_some_and(|c| c.size >= size) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    newest.expect("the checkpointer signed the log")
}

on_both_backends!(
    checkpoints_come_while_the_log_grows_and_at_shutdown,
    checkpoints
);
async fn checkpoints(db: TestDb) {
    let log = ticking_log(&db).await;
    assert_eq!(log.checkpoint().await.unwrap(), None, "nothing to sign yet");
    log.append((0..10).map(note).collect()).await.unwrap();
    let ticker = log.spawn_checkpointer();
    let first = signed_by_checkpointer(&log, 10).await;
    assert_eq!(first.size, 10);
    // Without new entries, no new checkpoint: the same one comes back.
    assert_eq!(log.checkpoint().await.unwrap().unwrap().size, 10);
    ticker.abort();

    // Shutting down commits what is queued and signs the last state.
    log.append((10..15).map(note).collect()).await.unwrap();
    let last = log.close().await.unwrap().unwrap();
    assert_eq!(last.size, 15);
    let proof: Vec<[u8; 32]> = log
        .consistency_proof(10, 15)
        .await
        .unwrap()
        .iter()
        .map(|h| h.0)
        .collect();
    merkle::verify_consistency(10, 15, &proof, &first.root.0, &last.root.0).unwrap();
    let report = verify(&log, &[]).await;
    assert!(report.ok(), "{report}");
    assert_eq!(report.checkpoints_verified, 2);
}

// ---- tampering -----------------------------------------------------------------------------

/// A log of 40 entries with checkpoints at 10, 25 and 40; returns the three signed notes.
async fn forty(log: &AuditLog) -> Vec<String> {
    let mut notes = Vec::new();
    let mut at = 0;
    for upto in [10, 25, 40] {
        log.append((at..upto).map(note).collect()).await.unwrap();
        notes.push(log.checkpoint().await.unwrap().unwrap().note);
        at = upto;
    }
    let report = verify(log, &[]).await;
    assert!(report.ok(), "{report}");
    assert_eq!(report.checkpoints_verified, 3);
    notes
}

/// A connection as an attacker with database access: the append-only guards dropped.
async fn attacker(db: &TestDb) -> AnyConnection {
    let mut conn = AnyConnection::connect(&db.url).await.unwrap();
    let refused = sqlx::query("UPDATE audit_entries SET at_ms = 0 WHERE idx = 0")
        .execute(&mut conn)
        .await;
    assert!(refused.is_err(), "the append-only trigger refuses updates");
    let refused = sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&mut conn)
        .await;
    assert!(refused.is_err(), "the append-only trigger refuses deletes");
    let drops: &[&str] = match db.db.backend() {
        Backend::Sqlite => &[
            "DROP TRIGGER audit_entries_append_only_u",
            "DROP TRIGGER audit_entries_append_only_d",
            "DROP TRIGGER audit_hashes_append_only_u",
            "DROP TRIGGER audit_hashes_append_only_d",
            "DROP TRIGGER audit_checkpoints_append_only_u",
            "DROP TRIGGER audit_checkpoints_append_only_d",
        ],
        Backend::Postgres => &[
            "DROP TRIGGER audit_entries_append_only ON audit_entries",
            "DROP TRIGGER audit_hashes_append_only ON audit_hashes",
            "DROP TRIGGER audit_checkpoints_append_only ON audit_checkpoints",
        ],
    };
    for drop in drops {
        sqlx::query(drop).execute(&mut conn).await.unwrap();
    }
    conn
}

async fn stored_entries(conn: &mut AnyConnection) -> Vec<Vec<u8>> {
    sqlx::query("SELECT entry FROM audit_entries ORDER BY idx")
        .fetch_all(conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<Vec<u8>, _>("entry"))
        .collect()
}

async fn set_entry(conn: &mut AnyConnection, index: u64, entry: &Entry) {
    sqlx::query("UPDATE audit_entries SET entry = $1 WHERE idx = $2")
        .bind(entry.encode())
        .bind(i64::try_from(index).unwrap())
        .execute(conn)
        .await
        .unwrap();
}

/// Recomputes every stored hash from the stored entries: a rewrite that leaves the database
/// self-consistent.
async fn rehash(conn: &mut AnyConnection) {
    let leaves: Vec<_> = stored_entries(conn)
        .await
        .iter()
        .map(|e| merkle::leaf_hash(e))
        .collect();
    let hashes = merkle::append(0, &leaves, &HashCache::new()).unwrap();
    sqlx::query("DELETE FROM audit_hashes")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (index, hash) in hashes {
        sqlx::query("INSERT INTO audit_hashes (idx, hash) VALUES ($1, $2)")
            .bind(i64::try_from(index).unwrap())
            .bind(hash.0.to_vec())
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_head SET size = $1")
        .bind(i64::try_from(leaves.len()).unwrap())
        .execute(&mut *conn)
        .await
        .unwrap();
}

fn approved(i: u64) -> Entry {
    Entry::new(
        T0 + i,
        Event::Decided {
            approval_id: format!("apr_{i}"),
            vendor: VENDOR.into(),
            actor: TEDDY.into(),
            status: "approved".into(),
            method: "human".into(),
            decider: Some(MOM.into()),
            rule_id: None,
            reason: None,
            guardian_reason_sha256: None,
            granted_params_hash: None,
            token_id: None,
            expires_at_ms: None,
        },
    )
}

on_both_backends!(an_edited_entry_is_named, edited_entry);
async fn edited_entry(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    forty(&log).await;
    let mut conn = attacker(&db).await;
    set_entry(&mut conn, 12, &approved(12)).await;
    let report = verify(&log, &[]).await;
    assert_eq!(
        report.failures[0],
        Failure::EditedEntry { index: 12 },
        "{report}"
    );
    assert!(report.failures.contains(&Failure::CheckpointMismatch {
        size: 25,
        after: 10
    }));
    assert!(
        report
            .to_string()
            .starts_with("FAILED: entry 12 does not verify"),
        "{report}"
    );
    // The host notices too: it refuses to sign a checkpoint over the altered log.
    log.append(vec![note(40)]).await.unwrap();
    set_entry(&mut conn, 40, &approved(40)).await;
    assert!(matches!(
        log.checkpoint().await,
        Err(AuditError::Inconsistent(_))
    ));
}

on_both_backends!(
    checkpoints_check_every_new_entry_across_pages,
    entries_across_pages
);
/// The check before signing reads the new entries a page (2,000) at a time and rebuilds the tree
/// onto the stored right edge of the last checkpoint (here at 1,234, not a power of two); the
/// periodic checkpointer does the same in the background, between decisions.
async fn entries_across_pages(db: TestDb) {
    let log = ticking_log(&db).await;
    log.append((0..1_234).map(note).collect()).await.unwrap();
    assert_eq!(log.checkpoint().await.unwrap().unwrap().size, 1_234);
    log.append((1_234..5_678).map(note).collect())
        .await
        .unwrap();
    let ticker = log.spawn_checkpointer();
    assert_eq!(signed_by_checkpointer(&log, 5_678).await.size, 5_678);
    ticker.abort();

    // An entry altered on the third page of the next check: the host will not sign.
    log.append((5_678..10_000).map(note).collect())
        .await
        .unwrap();
    let mut conn = attacker(&db).await;
    set_entry(&mut conn, 9_876, &approved(9_876)).await;
    let refused = log.checkpoint().await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("entries 5678..10000 do not hash"),
        "{refused}"
    );
    assert_eq!(log.latest_checkpoint().await.unwrap().unwrap().size, 5_678);
}

on_both_backends!(
    a_consistent_rewrite_is_caught_by_the_signed_checkpoints,
    rewrite
);
async fn rewrite(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    forty(&log).await;
    let mut conn = attacker(&db).await;
    set_entry(&mut conn, 12, &approved(12)).await;
    rehash(&mut conn).await;
    let report = verify(&log, &[]).await;
    assert_eq!(
        report.failures,
        [
            Failure::CheckpointMismatch {
                size: 25,
                after: 10
            },
            Failure::CheckpointMismatch {
                size: 40,
                after: 10
            }
        ],
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("an entry from 10 to 24 was altered"),
        "{report}"
    );
    // The host will not sign over it: the new tree does not extend the signed one.
    log.append(vec![note(40)]).await.unwrap();
    let refused = log.checkpoint().await.unwrap_err();
    assert!(matches!(refused, AuditError::Inconsistent(_)), "{refused}");
}

on_both_backends!(deleted_rows_in_the_middle_are_named, deleted_middle);
/// The export goes on after a gap longer than its page (it looks up the next stored entry,
/// however far) and the verifier names where the indexes jump.
async fn deleted_middle(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    forty(&log).await;
    log.append((40..7_000).map(note).collect()).await.unwrap();
    log.checkpoint().await.unwrap();
    let mut conn = attacker(&db).await;
    sqlx::query("DELETE FROM audit_entries WHERE idx >= 12 AND idx < 5500")
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&log, &[]).await;
    assert!(
        matches!(
            report.failures.first(),
            Some(Failure::OutOfOrder {
                expected: 12,
                found: 5_500,
                ..
            })
        ),
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("expected entry 12 but found entry 5500"),
        "{report}"
    );
}

on_both_backends!(a_deleted_tail_is_named, deleted_tail);
async fn deleted_tail(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    let notes = forty(&log).await;
    let mut conn = attacker(&db).await;
    for sql in [
        "DELETE FROM audit_entries WHERE idx >= 30",
        "UPDATE audit_head SET size = 30",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    rehash(&mut conn).await;
    let report = verify(&log, &[]).await;
    assert_eq!(
        report.failures,
        [Failure::Truncated {
            checkpoint: 40,
            entries: 30
        }],
        "{report}"
    );
    assert!(
        report.to_string().contains("entries 30 to 39 were deleted"),
        "{report}"
    );

    // Deleting the checkpoints too hides it from the database alone, not from an auditor who
    // kept a checkpoint (from any receipt they were given).
    sqlx::query("DELETE FROM audit_checkpoints WHERE tree_size > 25")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(verify(&log, &[]).await.ok());
    let report = verify(&log, std::slice::from_ref(&notes[2])).await;
    assert_eq!(
        report.failures,
        [Failure::Truncated {
            checkpoint: 40,
            entries: 30
        }],
        "{report}"
    );
}

on_both_backends!(an_inserted_row_is_named, inserted_row);
async fn inserted_row(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    forty(&log).await;
    let mut conn = attacker(&db).await;
    // Make room at 15 (moving rows from the end), then slip a forged approval in.
    for index in (15..40).rev() {
        sqlx::query("UPDATE audit_entries SET idx = idx + 1 WHERE idx = $1")
            .bind(index)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO audit_entries (idx, entry, kind, at_ms) VALUES (15, $1, 'decided', 0)",
    )
    .bind(approved(15).encode())
    .execute(&mut conn)
    .await
    .unwrap();
    let report = verify(&log, &[]).await;
    assert_eq!(
        report.failures[0],
        Failure::EditedEntry { index: 15 },
        "{report}"
    );
    assert!(report.failures.contains(&Failure::CheckpointMismatch {
        size: 25,
        after: 10
    }));
    // With the hashes rebuilt to match, the checkpoints still catch it.
    rehash(&mut conn).await;
    let report = verify(&log, &[]).await;
    assert_eq!(
        report.failures[0],
        Failure::CheckpointMismatch {
            size: 25,
            after: 10
        },
        "{report}"
    );
}

on_both_backends!(a_forked_history_signed_again_is_named, fork);
async fn fork(db: TestDb) {
    let log = common::audit_log(&db.db).await;
    let notes = forty(&log).await;
    // The attacker has the database and the signing key: they rewrite entry 5, rebuild the
    // tree, append, and sign a checkpoint over the forked log.
    let mut conn = attacker(&db).await;
    set_entry(&mut conn, 5, &approved(5)).await;
    rehash(&mut conn).await;
    let skey: String = sqlx::query("SELECT skey FROM audit_log_key")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get("skey");
    let key = LogKey::from_skey(&skey).unwrap();
    let forged = |size: u64| {
        let log = Arc::clone(&log);
        let key = key.clone();
        async move { key.sign(size, &log.root(size).await.unwrap()) }
    };
    log.append((40..45).map(note).collect()).await.unwrap();
    let forged_45 = forged(45).await;
    sqlx::query("INSERT INTO audit_checkpoints (tree_size, root, note, signed_at_ms) VALUES (45, $1, $2, 0)")
        .bind(log.root(45).await.unwrap().0.to_vec())
        .bind(&forged_45)
        .execute(&mut conn)
        .await
        .unwrap();
    let report = verify(&log, &[]).await;
    assert_eq!(
        report.failures,
        [
            Failure::Fork {
                older: 10,
                newer: 45
            },
            Failure::Fork {
                older: 25,
                newer: 45
            },
            Failure::Fork {
                older: 40,
                newer: 45
            },
        ],
        "{report}"
    );
    assert!(
        report.to_string().starts_with("FAILED: forked history"),
        "{report}"
    );

    // Hiding the old checkpoints does not help against an auditor who kept one.
    sqlx::query("DELETE FROM audit_checkpoints WHERE tree_size < 45")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(verify(&log, &[]).await.ok());
    let report = verify(&log, std::slice::from_ref(&notes[1])).await;
    assert_eq!(
        report.failures,
        [Failure::Fork {
            older: 25,
            newer: 45
        }],
        "{report}"
    );
}

#[tokio::test]
async fn the_cli_exports_and_verifies_offline() {
    let db = common::sqlite().await;
    let log = common::audit_log(&db.db).await;
    forty(&log).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export.jsonl");
    let bin = env!("CARGO_BIN_EXE_approval-host");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let export = run(&[
        "audit",
        "export",
        "--db",
        &db.url,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{export:?}");
    let key = run(&["audit", "key", "--db", &db.url]);
    let vkey = String::from_utf8(key.stdout).unwrap().trim().to_owned();
    assert_eq!(vkey, log.vkey());

    let ok = run(&[
        "audit",
        "verify",
        "--export",
        out.to_str().unwrap(),
        "--key",
        &vkey,
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(stdout.starts_with("OK: the audit log"), "{stdout}");

    // One byte changed in entry 7 of the file: exit code 1, and the entry named.
    let text = std::fs::read_to_string(&out).unwrap();
    let line = text.lines().nth(8).unwrap();
    let tampered_line = {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let entry = approved(7).encode();
        use base64::Engine as _;
        v["entry"] = base64::engine::general_purpose::STANDARD
            .encode(entry)
            .into();
        v.to_string()
    };
    std::fs::write(&out, text.replacen(line, &tampered_line, 1)).unwrap();
    let failed = run(&[
        "audit",
        "verify",
        "--export",
        out.to_str().unwrap(),
        "--key",
        &vkey,
    ]);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("FAILED: entry 7 does not verify"),
        "{stdout}"
    );

    // A wrong key is refused before anything is read as verified.
    let other = LogKey::from_seed("approval-host.local/audit", &[9; 32]).unwrap();
    let wrong = run(&[
        "audit",
        "verify",
        "--export",
        out.to_str().unwrap(),
        "--key",
        other.vkey(),
    ]);
    assert!(!wrong.status.success());
}
