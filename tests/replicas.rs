//! Two replicas, one PostgreSQL (issue 8, item 2). Two real `approval-host serve` processes on
//! different ports share one PostgreSQL schema:
//!
//! - push crosses replicas: guardians streaming `/v1/inbox/stream` from one replica hear of the
//!   requests agents make on the other, and of their settlements;
//! - racing decisions on one approval sent to both replicas at once have exactly one winner; the
//!   loser gets `already_decided` with the winner;
//! - a vendor's `max_approval_requests_per_hour` counts one device's requests across both;
//! - a plugin activated through one replica decides on the other;
//! - short-TTL requests expire and the sweepers of both settle each exactly once (one timeout
//!   entry per request);
//! - the audit log stays one log: both replicas serve the same key, checkpoints fetched from
//!   either are consistent (each later one extends each earlier one, by the consistency proof
//!   endpoint), and the export verifies against all of them;
//! - one replica killed (SIGKILL) mid-load: the other keeps answering every request, agents cut
//!   off fail over to it with their idempotency key, everything told is persisted, and the
//!   restarted replica rejoins (push crosses again in both directions).
//!
//! Short size: a few hundred requests and one kill; long (`APPROVAL_HOST_RELIABILITY=long`):
//! thousands, and kills alternating between the replicas.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use approval_host::audit::merkle::verify_consistency;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::process::{
    self, Api, AuditIndex, Ledger, ProcessHost, Vendor, VendorSeed, eventually, guardian_session,
    load_policy,
};
use common::{ADMIN, report};
use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::Method;
use serde_json::{Value, json};

/// What a guardian's push stream carried.
#[derive(Debug, Default)]
struct Heard {
    pending: HashSet<String>,
    /// id → status.
    settled: HashMap<String, String>,
    ended: bool,
}

/// Reads a guardian's push stream in the background.
async fn listen(api: &Api, guardian: &str) -> Arc<Mutex<Heard>> {
    let mut stream = api.inbox_stream(&guardian_session(guardian)).await;
    let (name, _) = stream
        .next_within(30)
        .await
        .expect("the stream starts with the inbox");
    assert_eq!(name, "inbox");
    let heard = Arc::new(Mutex::new(Heard::default()));
    let into = Arc::clone(&heard);
    tokio::spawn(async move {
        while let Some((name, data)) = stream.next().await {
            let id = data["id"].as_str().unwrap_or_default().to_owned();
            let mut heard = into.lock().unwrap();
            match name.as_str() {
                "pending" => {
                    heard.pending.insert(id);
                }
                "settled" => {
                    let status = data["status"].as_str().unwrap_or_default().to_owned();
                    heard.settled.insert(id, status);
                }
                _ => {}
            }
        }
        into.lock().unwrap().ended = true;
    });
    heard
}

/// Waits until `heard` holds every one of `ids` as `what` wants.
async fn hears(heard: &Arc<Mutex<Heard>>, ids: &[String], what: impl Fn(&Heard, &str) -> bool) {
    let all = eventually(Duration::from_secs(30), || async {
        let heard = heard.lock().unwrap();
        ids.iter().all(|id| what(&heard, id))
    })
    .await;
    let heard = heard.lock().unwrap();
    let missing: Vec<&String> = ids.iter().filter(|id| !what(&heard, id)).collect();
    assert!(
        all,
        "push never brought {} of {}: {missing:?}",
        missing.len(),
        ids.len()
    );
}

/// A payment's request body: over the ¥500 threshold (`pending`) or under it.
fn payment(amount: u64, recipient: &str, key: Option<&str>) -> Value {
    let mut body = json!({
        "action": "payment",
        "params": {"amount": amount, "currency": "CNY", "recipient": recipient, "merchant_category": "toys"},
    });
    if let Some(key) = key {
        body["idempotency_key"] = json!(key);
    }
    body
}

/// Asks through `api` and expects an answer (`200` or `202`); notes it in `ledger`.
async fn ask(api: &Api, token: &str, body: &Value, ledger: &Mutex<Ledger>) -> Value {
    let (status, view) = api.post("/v1/approvals", token, body).await;
    assert!(matches!(status, 200 | 202), "{status} {view}");
    ledger.lock().unwrap().tell(&view);
    view
}

fn id_of(view: &Value) -> String {
    view["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres() {
    let started = Instant::now();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    println!("replicas: seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = common::postgres().await;
    let data = tempfile::tempdir().unwrap();
    // Both start at once on the fresh schema: they race to create the log's and the tokens' keys.
    let (dir_a, dir_b) = (data.path().join("a"), data.path().join("b"));
    let (a, b) = tokio::join!(
        ProcessHost::start("replica-a", &dir_a, &db.url),
        ProcessHost::start("replica-b", &dir_b, &db.url),
    );
    let mut hosts = [a, b];
    let apis = [hosts[0].api(), hosts[1].api()];
    let key = apis[0].audit_key().await;
    assert_eq!(key, apis[1].audit_key().await, "the replicas sign one log");
    let (_, jwks_a) = apis[0].get("/.well-known/jwks.json", "").await;
    let (_, jwks_b) = apis[1].get("/.well-known/jwks.json", "").await;
    assert_eq!(
        jwks_a, jwks_b,
        "the replicas sign tokens with the same keys"
    );

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acme = apis[0]
        .seed(&VendorSeed {
            id: "acme-toys".into(),
            policy: load_policy(),
            actors: 4,
            guardians: vec!["mom".into(), "dad".into()],
            plugin: None,
        })
        .await;
    let limit = report::scale(10, 50);
    let chatty = apis[1]
        .seed(&VendorSeed {
            id: "chatty-toys".into(),
            policy: json!({"ttl_seconds": {"default": 10}, "max_approval_requests_per_hour": limit}),
            actors: 1,
            guardians: vec!["nana".into()],
            plugin: None,
        })
        .await;
    let vendor_keys = HashMap::from([
        (acme.id.clone(), acme.key.clone()),
        (chatty.id.clone(), chatty.key.clone()),
    ]);
    let mut checkpoints = vec![apis[0].checkpoint().await];
    let mut requests = 0u64;

    // ---- push across replicas, and requests left to expire ----------------------------------
    let mom = listen(&apis[0], "mom").await;
    let dad = listen(&apis[1], "dad").await;
    let expiring_n = report::scale(40, 400);
    let mut expiring = Vec::new();
    let mut made_on = [Vec::new(), Vec::new()];
    for i in 0..expiring_n {
        let r = usize::try_from(i % 2).unwrap();
        let device = &acme.actors[usize::try_from(i % 4).unwrap()];
        let view = ask(
            &apis[r],
            &device.token,
            &payment(60_000 + i, &format!("expiring-{i}"), None),
            &ledger,
        )
        .await;
        assert_eq!(view["status"], "pending");
        made_on[r].push(id_of(&view));
        expiring.push(id_of(&view));
    }
    requests += expiring_n;
    // Mom listens on A, dad on B: each hears the other replica's requests.
    hears(&mom, &made_on[1], |h, id| h.pending.contains(id)).await;
    hears(&dad, &made_on[0], |h, id| h.pending.contains(id)).await;
    hears(&mom, &made_on[0], |h, id| h.pending.contains(id)).await;
    hears(&dad, &made_on[1], |h, id| h.pending.contains(id)).await;

    // ---- racing decisions ------------------------------------------------------------------
    // Each approval is raced as soon as it is made (well within its 10 s TTL however slow the
    // machine): an approval on A and a denial on B at once.
    let races = report::scale(60, 600);
    let (mom_session, dad_session) = (guardian_session("mom"), guardian_session("dad"));
    let outcomes: Vec<(String, usize)> = futures_util::stream::iter(0..races)
        .map(|i| {
            let (apis, ledger, acme) = (&apis, &ledger, &acme);
            let (mom_session, dad_session) = (&mom_session, &dad_session);
            async move {
                let device = &acme.actors[usize::try_from(i % 4).unwrap()];
                let view = ask(
                    &apis[usize::try_from(i % 2).unwrap()],
                    &device.token,
                    &payment(70_000 + i, &format!("race-{i}"), None),
                    ledger,
                )
                .await;
                let id = id_of(&view);
                let path = format!("/v1/approvals/{id}/decision");
                let (approve, deny) = (
                    json!({"decision": "approve"}),
                    json!({"decision": "deny", "reason": "no"}),
                );
                let (on_a, on_b) = tokio::join!(
                    apis[0].post(&path, mom_session, &approve),
                    apis[1].post(&path, dad_session, &deny),
                );
                let (winner, won, lost) = match (on_a.0, on_b.0) {
                    (200, 409) => (0, on_a.1, on_b.1),
                    (409, 200) => (1, on_b.1, on_a.1),
                    _ => panic!("{id}: not exactly one winner: A {on_a:?}, B {on_b:?}"),
                };
                assert_eq!(lost["code"], "already_decided", "{lost}");
                assert_eq!(lost["approval"]["status"], won["status"], "{lost}");
                assert_eq!(lost["approval"]["decider"], won["decider"], "{lost}");
                let mut ledger = ledger.lock().unwrap();
                ledger.tell(&won);
                ledger.tell(&lost["approval"]);
                (id, winner)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    requests += races;
    let raced: Vec<String> = outcomes.iter().map(|(id, _)| id.clone()).collect();
    let won_on_a = outcomes.iter().filter(|(_, r)| *r == 0).count();
    // Both streams hear every settlement, wherever it was decided.
    for heard in [&mom, &dad] {
        hears(heard, &raced, |h, id| h.settled.contains_key(id)).await;
    }

    // ---- one device's rate limit across both replicas ---------------------------------------
    let device = chatty.actors[0].clone();
    let sent = 3 * limit;
    let answers: Vec<(u16, Value)> = futures_util::stream::iter(0..sent)
        .map(|i| {
            let (api, token) = (&apis[usize::try_from(i % 2).unwrap()], &device.token);
            async move {
                api.post(
                    "/v1/approvals",
                    token,
                    &payment(60_000 + i, &format!("chatty-{i}"), None),
                )
                .await
            }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    requests += sent;
    let mut chatty_pending = Vec::new();
    let mut refused = 0;
    for (status, body) in &answers {
        match status {
            202 => {
                ledger.lock().unwrap().tell(body);
                chatty_pending.push(id_of(body));
            }
            429 => {
                assert_eq!(body["code"], "rate_limited", "{body}");
                ledger.lock().unwrap().tell(&body["approval"]);
                refused += 1;
            }
            _ => panic!("{status} {body}"),
        }
    }
    assert_eq!(
        (chatty_pending.len() as u64, refused),
        (limit, sent - limit),
        "the hourly limit of {limit} counts across both replicas"
    );

    // ---- a plugin activated through one replica decides on the other -------------------------
    apis[0]
        .activate_plugin(&acme.key, common::plugin("velocity"))
        .await;
    let plugin_started = Instant::now();
    let mut asked_before_denied = 0u64;
    let followed = eventually(Duration::from_secs(30), || {
        asked_before_denied += 1;
        let body = json!({
            "action": "payment",
            "params": {"amount": 1_000, "currency": "CNY", "recipient": format!("casino-{asked_before_denied}"), "merchant_category": "gambling"},
        });
        let (api, token, ledger) = (&apis[1], &acme.actors[0].token, &ledger);
        async move {
            let view = ask(api, token, &body, ledger).await;
            view["status"] == "denied" && view["rule"] == "velocity.blocked-merchant"
        }
    })
    .await;
    requests += asked_before_denied;
    assert!(
        followed,
        "replica B still classifies without the plugin activated through replica A \
         ({asked_before_denied} gambling payments answered without it)"
    );
    let plugin_followed_in = plugin_started.elapsed();

    // ---- expiry: both sweepers, one timeout each ---------------------------------------------
    let mut expired: Vec<String> = expiring.clone();
    expired.extend(chatty_pending.iter().cloned());
    let all_expired = eventually(Duration::from_secs(60), || async {
        let rows = process::rows(&db.url).await;
        expired.iter().all(|id| rows[id].status == "timed_out")
    })
    .await;
    assert!(all_expired, "requests outlived their TTL");
    for heard in [&mom, &dad] {
        hears(heard, &expiring, |h, id| {
            h.settled.get(id).map(String::as_str) == Some("timed_out")
        })
        .await;
    }
    let export = apis[1].export().await;
    let index = AuditIndex::of_export(&export);
    for id in &expired {
        let trail = &index.trails[id];
        let timeouts: Vec<_> = trail.settlements();
        assert!(
            timeouts.len() == 1 && timeouts[0].method == "timeout",
            "{id}: settled {timeouts:?}"
        );
    }
    // The agents hear it from either replica.
    for (i, id) in expiring.iter().enumerate() {
        let token = &acme.actors[i % 4].token;
        for api in &apis {
            let (status, body) = api.get(&format!("/v1/approvals/{id}"), token).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (410, Some("approval_timeout"))
            );
            ledger.lock().unwrap().tell(&body["approval"]);
        }
    }
    checkpoints.push(apis[1].checkpoint().await);

    // ---- one replica killed mid-load ---------------------------------------------------------
    let rounds = report::scale(1, 6);
    let load = Arc::new(KillLoad {
        apis: [Api::unpooled(&hosts[0].url), Api::unpooled(&hosts[1].url)],
        vendor: acme.clone(),
        ledger: Arc::clone(&ledger),
        down: AtomicUsize::new(NONE),
        stop: AtomicBool::new(false),
        counts: KillCounts::default(),
        failures: Mutex::default(),
    });
    let mut workers = Vec::new();
    for r in 0..2 {
        for w in 0..2 {
            workers.push(tokio::spawn(kill_agent(
                Arc::clone(&load),
                r,
                w,
                seed ^ (r * 2 + w) as u64,
            )));
        }
        workers.push(tokio::spawn(kill_guardian(
            Arc::clone(&load),
            r,
            seed ^ (0x10 + r as u64),
        )));
    }
    let mut victims = Vec::new();
    for round in 0..rounds {
        // B first, then A, then B again...
        let victim = if round % 2 == 0 { 1 } else { 0 };
        let (before, down_for, after) = if report::long() {
            (2_000..5_000, 3_000, 2_000)
        } else {
            (500..1_500, 1_000, 1_000)
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(before))).await;
        checkpoints.push(load.apis[victim].checkpoint().await);
        load.down.store(victim, Ordering::SeqCst);
        hosts[victim].kill().await;
        let answered_before = load.counts.survivor_answers.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(down_for)).await;
        // However slow the machine, the survivor goes on answering while the other is down.
        let answering = eventually(Duration::from_secs(30), || async {
            load.counts.survivor_answers.load(Ordering::SeqCst) >= answered_before + 20
        })
        .await;
        assert!(answering, "the surviving replica stopped answering");
        let answered_alone = load.counts.survivor_answers.load(Ordering::SeqCst) - answered_before;
        hosts[victim].restart().await;
        assert_eq!(hosts[victim].url, apis[victim].url, "the same port again");
        load.down.store(NONE, Ordering::SeqCst);
        checkpoints.push(load.apis[1 - victim].checkpoint().await);
        checkpoints.push(load.apis[victim].checkpoint().await);
        victims.push((victim, answered_alone));
        tokio::time::sleep(Duration::from_millis(after)).await;
    }
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    // Fresh clients: no pooled connection to a killed process is left to fail on first use.
    let apis = [hosts[0].api(), hosts[1].api()];
    let failures = std::mem::take(&mut *load.failures.lock().unwrap());
    assert!(failures.is_empty(), "{failures:#?}");
    let kc = &load.counts;
    requests += kc.sent.load(Ordering::SeqCst);

    // Whatever is still pending is decided; every told pending request is looked up.
    let drained = eventually(Duration::from_secs(30), || async {
        let (_, inbox) = apis[0].get("/v1/inbox", &mom_session).await;
        let pending = inbox["pending"].as_array().cloned().unwrap_or_default();
        for item in &pending {
            let id = item["id"].as_str().unwrap();
            let (status, body) = apis[0]
                .post(
                    &format!("/v1/approvals/{id}/decision"),
                    &mom_session,
                    &json!({"decision": "approve"}),
                )
                .await;
            match status {
                200 => ledger.lock().unwrap().tell(&body),
                409 | 410 => ledger.lock().unwrap().tell(&body["approval"]),
                _ => panic!("{status} {body}"),
            }
        }
        pending.is_empty()
    })
    .await;
    assert!(drained);
    let unsettled: Vec<String> = ledger
        .lock()
        .unwrap()
        .told
        .iter()
        .filter(|(_, t)| t.outcome.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let rows = process::rows(&db.url).await;
    for id in unsettled {
        let row = &rows[&id];
        let vendor = if row.vendor == acme.id {
            &acme
        } else {
            &chatty
        };
        let token = &vendor
            .actors
            .iter()
            .find(|a| a.id == row.actor)
            .unwrap()
            .token;
        let (status, body) = apis[1].get(&format!("/v1/approvals/{id}"), token).await;
        match status {
            200 => ledger.lock().unwrap().tell(&body),
            410 => ledger.lock().unwrap().tell(&body["approval"]),
            _ => panic!("{id} is still {status} {body}"),
        }
    }

    // ---- the restarted replica rejoins ------------------------------------------------------
    let mom_b = listen(&apis[1], "mom").await;
    let dad_a = listen(&apis[0], "dad").await;
    let mut rejoined = [Vec::new(), Vec::new()];
    for i in 0..4 {
        let r = i % 2;
        let view = ask(
            &apis[r],
            &acme.actors[i].token,
            &payment(80_000 + i as u64, &format!("rejoin-{i}"), None),
            &ledger,
        )
        .await;
        rejoined[r].push(id_of(&view));
    }
    requests += 4;
    hears(&mom_b, &rejoined[0], |h, id| h.pending.contains(id)).await;
    hears(&dad_a, &rejoined[1], |h, id| h.pending.contains(id)).await;
    for ids in &rejoined {
        for id in ids {
            let (status, body) = apis[1]
                .post(
                    &format!("/v1/approvals/{id}/decision"),
                    &mom_session,
                    &json!({"decision": "approve"}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            ledger.lock().unwrap().tell(&body);
        }
    }

    // ---- one log -----------------------------------------------------------------------------
    checkpoints.push(apis[0].checkpoint().await);
    checkpoints.push(apis[1].checkpoint().await);
    let mut opened: Vec<(u64, Vec<u8>)> = checkpoints
        .iter()
        .map(|note| process::open_checkpoint(&key, note))
        .collect();
    opened.sort();
    opened.dedup();
    let mut proofs = 0;
    for (i, pair) in opened.windows(2).enumerate() {
        let ((old_size, old_root), (size, root)) = (&pair[0], &pair[1]);
        // Ask each replica in turn for the proof that the later extends the earlier.
        let (status, body) = apis[i % 2]
            .get(
                &format!("/v1/audit/proofs/consistency?old_size={old_size}&size={size}"),
                ADMIN,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let proof: Vec<Vec<u8>> = body["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| STANDARD.decode(h.as_str().unwrap()).unwrap())
            .collect();
        verify_consistency(*old_size, *size, &proof, old_root, root).unwrap_or_else(|e| {
            panic!("the checkpoint of {size} entries does not extend the one of {old_size}: {e}")
        });
        proofs += 1;
    }
    let export_a = apis[0].export().await;
    let export_b = apis[1].export().await;
    let mut entries = 0;
    for export in [&export_a, &export_b] {
        let verified = process::verify(export, &key, &checkpoints);
        assert!(verified.ok(), "{verified}");
        assert_eq!(verified.absent_payloads, 0, "{verified}");
        entries = entries.max(verified.entries);
    }
    let index = AuditIndex::of_export(&export_b);
    let rows = process::rows(&db.url).await;
    let ledger = ledger.lock().unwrap().clone();
    assert!(
        ledger.contradictions.is_empty(),
        "{:#?}",
        ledger.contradictions
    );
    let half = process::half_applied(&rows, &index, &HashSet::new());
    assert!(half.is_empty(), "half-applied writes: {half:#?}");
    let lost = process::lost(&ledger, &rows);
    assert!(lost.is_empty(), "told outcomes lost: {lost:#?}");
    let unaudited = process::unaudited(&ledger, &index);
    assert!(
        unaudited.is_empty(),
        "told outcomes not in the log: {unaudited:#?}"
    );
    for api in &apis {
        let lost = process::read_back(api, &ledger, &rows, &vendor_keys).await;
        assert!(
            lost.is_empty(),
            "{}: told outcomes read back otherwise: {lost:#?}",
            api.url
        );
    }
    let settled_twice = index
        .trails
        .values()
        .filter(|t| t.settlements().len() > 1)
        .count();
    assert_eq!(settled_twice, 0);
    for host in &mut hosts {
        host.stop().await;
    }

    let victims_md = victims
        .iter()
        .map(|(v, n)| format!("{} ({n} answered alone)", ["A", "B"][*v]))
        .collect::<Vec<_>>()
        .join(", ");
    let mut md = String::new();
    writeln!(
        md,
        "**Two replicas, one PostgreSQL.** Two real `approval-host serve` processes on one \
         PostgreSQL schema, started at once on the empty schema (they agree on the log's and the \
         tokens' keys). Guardians streamed from one replica while agents asked on the other; \
         decisions on one approval raced on both; one device's hourly limit was spent through \
         both; a plugin was activated through one and used by the other; short-TTL requests \
         expired under both sweepers; then each round killed one replica (SIGKILL) under load \
         from agents and guardians on both, and restarted it. {:.0} s in all.\n",
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    md.push_str("| what | count |\n| --- | ---: |\n");
    let table: Vec<(String, String)> = vec![
        ("requests made".into(), requests.to_string()),
        ("requests and settlements pushed across replicas (pending both ways; raced and expired settled, heard on both)".into(), format!("{expiring_n} / {}", races + expiring_n)),
        ("racing decisions (approve on A, deny on B, at once)".into(), races.to_string()),
        ("… won on A / on B; losers answered `already_decided` with the winner".into(), format!("{won_on_a} / {} ; {races}", races - u64::try_from(won_on_a).unwrap())),
        ("rate limit: requests of one device through both / limit / accepted / refused".into(), format!("{sent} / {limit} / {} / {refused}", chatty_pending.len())),
        ("plugin activated on A, used by B (gambling payments asked on B until denied)".into(), format!("{asked_before_denied} ({} ms)", plugin_followed_in.as_millis())),
        ("short-TTL requests expired / timeout entries each".into(), format!("{} / 1", expired.len())),
        ("kills of one replica under load (victim, requests the other answered alone)".into(), format!("{rounds}: {victims_md}")),
        ("load: requests / guardian decisions".into(), format!("{} / {}", kc.sent.load(Ordering::SeqCst), kc.decisions.load(Ordering::SeqCst))),
        ("requests cut off by a kill or refused while down, failed over to the other with their key".into(), kc.failed_over.load(Ordering::SeqCst).to_string()),
        ("requests the surviving replica failed to answer".into(), "0".into()),
        ("approvals told of, read back from both replicas as told".into(), ledger.told.len().to_string()),
        ("checkpoints fetched from both replicas (distinct) / consistency proofs verified".into(), format!("{} ({}) / {proofs}", checkpoints.len(), opened.len())),
        ("audit entries verified (one log)".into(), entries.to_string()),
        ("told outcomes lost / half-applied writes / settled twice".into(), "0 / 0 / 0".into()),
    ];
    for (what, count) in table {
        writeln!(md, "| {what} | {count} |").unwrap();
    }
    println!("{md}");
    report::write("replicas", &md);
}

/// No replica is down.
const NONE: usize = usize::MAX;

#[derive(Default)]
struct KillCounts {
    sent: AtomicU64,
    decisions: AtomicU64,
    /// Requests cut off on the killed replica and sent to the other with their key.
    failed_over: AtomicU64,
    /// Answers from the replica that stayed up while the other was down.
    survivor_answers: AtomicU64,
}

/// The load of the kill rounds.
struct KillLoad {
    apis: [Api; 2],
    vendor: Vendor,
    ledger: Arc<Mutex<Ledger>>,
    /// The replica killed now, or [`NONE`].
    down: AtomicUsize,
    stop: AtomicBool,
    counts: KillCounts,
    /// Failures of a replica that was up.
    failures: Mutex<Vec<String>>,
}

impl KillLoad {
    fn up(&self, replica: usize) -> bool {
        self.down.load(Ordering::SeqCst) != replica
    }

    /// Notes an answer from `replica`.
    fn answered(&self, replica: usize, view: &Value) {
        self.ledger.lock().unwrap().tell(view);
        let down = self.down.load(Ordering::SeqCst);
        if down != NONE && down != replica {
            self.counts.survivor_answers.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn failed(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// An agent asking through `replica`; cut off by a kill, it asks the other with the same key.
async fn kill_agent(load: Arc<KillLoad>, replica: usize, worker: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) {
        n += 1;
        let device = &load.vendor.actors[rng.random_range(0..load.vendor.actors.len())];
        let amount = if rng.random_bool(0.5) {
            rng.random_range(1_000..=40_000)
        } else {
            rng.random_range(60_000..=95_000)
        };
        let key = format!("kill-{replica}-{worker}-{n}");
        let body = payment(amount, &format!("load-{replica}-{worker}-{n}"), Some(&key));
        load.counts.sent.fetch_add(1, Ordering::SeqCst);
        let mut target = replica;
        loop {
            let answer = load.apis[target]
                .send(Method::POST, "/v1/approvals", &device.token, Some(&body))
                .await;
            match answer {
                Ok((200 | 202, view)) => {
                    load.answered(target, &view);
                    break;
                }
                Ok((status, body)) => {
                    load.failed(format!("replica {target}: {status} {body}"));
                    break;
                }
                Err(e) if target == replica && !load.up(replica) => {
                    // Cut off by the kill: the other replica, with the same key.
                    let _ = e;
                    load.counts.failed_over.fetch_add(1, Ordering::SeqCst);
                    target = 1 - replica;
                }
                Err(e) if load.up(target) => {
                    load.failed(format!("replica {target} did not answer: {e}"));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// A guardian deciding through `replica` whatever its inbox there holds.
async fn kill_guardian(load: Arc<KillLoad>, replica: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let session = guardian_session(["mom", "dad"][replica]);
    let api = &load.apis[replica];
    while !load.stop.load(Ordering::SeqCst) {
        let pending = match api.send(Method::GET, "/v1/inbox", &session, None).await {
            Ok((200, inbox)) => inbox["pending"].as_array().cloned().unwrap_or_default(),
            Ok((status, body)) => {
                load.failed(format!("inbox on replica {replica}: {status} {body}"));
                Vec::new()
            }
            Err(e) => {
                if load.up(replica) {
                    load.failed(format!("inbox on replica {replica}: {e}"));
                }
                Vec::new()
            }
        };
        for item in pending.iter().take(8) {
            let id = item["id"].as_str().unwrap();
            let decision = match rng.random_range(0..3) {
                0 => json!({"decision": "approve"}),
                1 => json!({"decision": "deny"}),
                _ => {
                    let mut params = item["params"].clone();
                    params["amount"] = json!(params["amount"].as_u64().unwrap() / 2);
                    json!({"decision": "revise", "params": params})
                }
            };
            load.counts.decisions.fetch_add(1, Ordering::SeqCst);
            let path = format!("/v1/approvals/{id}/decision");
            match api
                .send(Method::POST, &path, &session, Some(&decision))
                .await
            {
                Ok((200, view)) => load.answered(replica, &view),
                Ok((409 | 410, error)) => load.answered(replica, &error["approval"]),
                Ok((status, body)) => load.failed(format!("{path} on {replica}: {status} {body}")),
                Err(e) => {
                    if load.up(replica) {
                        load.failed(format!("{path} on replica {replica}: {e}"));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
