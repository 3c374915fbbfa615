//! Crash without loss (issue 8, item 1). The real `approval-host serve` runs under a steady mix
//! of agents' requests (allowed, denied by a plugin, sent to a guardian, tiny variations merged
//! into a pending one; idempotent retries) and
//! guardians' decisions (approve, deny, revise, or leave to time out), and is killed with SIGKILL
//! at random moments, then started again on the same database, over and over. After every restart
//! and at the end:
//!
//! - every outcome a client was told (a 200, 201 or 202, or an error carrying the record: its
//!   status, token, decider) is in the database as told, read back through the API, and in the
//!   audit log;
//! - nothing is half-applied: every record has exactly one request entry and exactly the entries
//!   its status calls for (one settlement for a settled request, none for a pending one), and no
//!   approval the log names lacks its record; requests cut off by a kill are wholly there or wholly
//!   absent;
//! - the log verifies offline with its public key, against every checkpoint kept from before the
//!   crashes (so a crash never forked or truncated it); at the end with `approval-host audit
//!   export` and `audit verify` on the stopped host's database;
//! - no approval is settled twice (in particular never both approved and timed out).
//!
//! On SQLite and on PostgreSQL. The kill moments come from a seeded RNG whose seed is printed;
//! `APPROVAL_HOST_CRASH_SEED=<seed>` replays them (the host's own timing still varies). Short
//! size: 3 kills per backend; long (`APPROVAL_HOST_RELIABILITY=long`): 30.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{
    self, Api, AuditIndex, Ledger, ProcessHost, Vendor, VendorSeed, eventually, guardian_session,
    load_policy,
};
use common::report;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_loses_nothing_to_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        data.path().join("approval-host.db").display()
    );
    crash_without_loss("crash-sqlite", "SQLite", data.path(), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_loses_nothing_to_sigkill() {
    let db = common::postgres().await;
    let data = tempfile::tempdir().unwrap();
    crash_without_loss("crash-postgres", "PostgreSQL", data.path(), &db.url).await;
}

/// The guardians of every device.
const GUARDIANS: [&str; 2] = ["mom", "dad"];
/// Agents sending requests at once.
const AGENTS: usize = 3;

/// Whether the guardians leave this approval to time out (a quarter of them, the same for both).
fn left_to_time_out(id: &str) -> bool {
    id.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 4
        == 0
}

/// The seed of this run: `APPROVAL_HOST_CRASH_SEED`, or the clock.
fn run_seed() -> u64 {
    std::env::var("APPROVAL_HOST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
                    % u128::from(u64::MAX),
            )
            .unwrap()
        })
}

/// Lets the load run, or parks every worker between two operations while the host is checked.
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    parked: AtomicUsize,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            open: tokio::sync::watch::Sender::new(true),
            parked: AtomicUsize::new(0),
        }
    }

    /// Waits while the gate is closed.
    async fn pass(&self) {
        if *self.open.borrow() {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Waits until `workers` workers are parked (each finishes what it was doing first; a
    /// request cut off by the kill is retried with its key until the host answers).
    async fn wait_parked(&self, workers: usize) {
        let parked = eventually(Duration::from_secs(120), || async {
            self.parked.load(Ordering::SeqCst) == workers
        })
        .await;
        assert!(parked, "the load did not pause");
    }
}

/// What the load did.
#[derive(Default)]
struct Counts {
    /// New requests sent by agents.
    requests: AtomicU64,
    /// Requests with an idempotency key sent again after their answer.
    retries: AtomicU64,
    /// Tiny variations of a request told pending (amount +5 %, the recipient in capitals), each
    /// with a key of its own.
    variations: AtomicU64,
    /// … answered with the pending request they varied (merged into it).
    merged: AtomicU64,
    /// Requests with a key cut off by a kill, then retried with their key until answered.
    recovered: AtomicU64,
    /// Requests without a key cut off by a kill (wholly there or wholly absent).
    abandoned: AtomicU64,
    /// Decisions sent by guardians.
    decisions: AtomicU64,
    /// Decisions cut off by a kill.
    decisions_cut: AtomicU64,
    /// Decisions answered `already_decided` (the other guardian got there first).
    conflicts: AtomicU64,
    /// Decisions answered `approval_timeout`.
    too_late: AtomicU64,
    /// 5xx answers (none expected).
    server_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The load's shared state.
struct Load {
    api: Api,
    vendor: Vendor,
    ledger: Mutex<Ledger>,
    gate: Gate,
    stop: AtomicBool,
    /// Pending approvals an agent was told of and waits on: (id, its device's index).
    waiting: Mutex<VecDeque<(String, usize)>>,
    /// Every approval ever put in `waiting`.
    watched: Mutex<HashSet<String>>,
    counts: Counts,
    /// Unexpected answers, reported at the next check.
    surprises: Mutex<Vec<String>>,
}

impl Load {
    fn tell(&self, view: &Value) {
        self.ledger.lock().unwrap().tell(view);
    }

    /// The agent will ask how this pending request ends (once per approval).
    fn wait_on(&self, view: &Value, device: usize) {
        let id = id_of(view);
        if self.watched.lock().unwrap().insert(id.clone()) {
            self.waiting.lock().unwrap().push_back((id, device));
        }
    }

    fn surprise(&self, what: String) {
        self.surprises.lock().unwrap().push(what);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// One agent: new requests of every kind, tiny variations of pending ones, and retries of
/// answered ones with their key.
async fn agent(load: Arc<Load>, worker: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Answered requests sent with a key: (body, approval id, device).
    let mut answered: Vec<(Value, String, usize)> = Vec::new();
    // Requests told pending: (body, approval id, device).
    let mut pending: Vec<(Value, String, usize)> = Vec::new();
    let mut n = 0u64;
    loop {
        load.gate.pass().await;
        if load.stopped() {
            return;
        }
        let device = rng.random_range(0..load.vendor.actors.len());
        let roll = rng.random_range(0..100);
        if roll < 15 && !answered.is_empty() {
            let (body, id, device) = answered[rng.random_range(0..answered.len())].clone();
            bump(&load.counts.retries);
            if let Some(view) = ask(&load, device, &body, true).await
                && view["id"].as_str() != Some(id.as_str())
            {
                load.surprise(format!(
                    "a retry with idempotency key {} was answered with a second request {} \
                     ({}), not with {id}, the first answer to that key",
                    body["idempotency_key"], view["id"], view["status"]
                ));
            }
            continue;
        }
        n += 1;
        if roll < 22 && !pending.is_empty() {
            // The agent asks again, a little differently, while its request waits: merged into
            // the pending one if it still waits. A retry of this key must answer the same.
            let (original, into, device) = pending[rng.random_range(0..pending.len())].clone();
            let mut body = original.clone();
            let params = &mut body["params"];
            params["amount"] = json!(params["amount"].as_u64().unwrap() * 105 / 100);
            params["recipient"] = json!(params["recipient"].as_str().unwrap().to_uppercase());
            body["idempotency_key"] = json!(format!("order-{worker}-{n}"));
            bump(&load.counts.variations);
            if let Some(view) = ask(&load, device, &body, true).await {
                if view["id"].as_str() == Some(into.as_str()) {
                    bump(&load.counts.merged);
                }
                answered.push((body, id_of(&view), device));
            }
            continue;
        }
        let (amount, category) = match roll {
            // Allowed: under the ¥500 threshold.
            0..50 => (rng.random_range(1_000..=40_000), "toys"),
            // Denied by the velocity plugin.
            50..62 => (rng.random_range(1_000..=40_000), "gambling"),
            // Sent to a guardian: over the threshold.
            _ => (rng.random_range(60_000..=95_000), "toys"),
        };
        let keyed = rng.random_range(0..10) != 0;
        let mut body = json!({
            "action": "payment",
            "params": {"amount": amount, "currency": "CNY", "recipient": format!("shop-{worker}-{n}"), "merchant_category": category},
            "provenance": {"surface": "voice", "tool": "crash-test"},
        });
        if keyed {
            body["idempotency_key"] = json!(format!("order-{worker}-{n}"));
        }
        bump(&load.counts.requests);
        let Some(view) = ask(&load, device, &body, keyed).await else {
            continue;
        };
        let id = id_of(&view);
        if view["status"] == "pending" {
            pending.push((body.clone(), id.clone(), device));
        }
        if keyed {
            answered.push((body, id, device));
        }
    }
}

fn id_of(view: &Value) -> String {
    view["id"].as_str().unwrap_or_default().to_owned()
}

/// Sends an agent's request until it is answered (a request with a key is retried with it
/// across a kill); the record told, or `None` for a request without a key cut off by a kill.
async fn ask(load: &Load, device: usize, body: &Value, keyed: bool) -> Option<Value> {
    let token = &load.vendor.actors[device].token;
    let mut cut = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match load
            .api
            .send(Method::POST, "/v1/approvals", token, Some(body))
            .await
        {
            Ok((200 | 202, view)) => {
                load.tell(&view);
                if view["status"] == "pending" {
                    load.wait_on(&view, device);
                }
                if cut {
                    bump(&load.counts.recovered);
                }
                return Some(view);
            }
            // A retry of a request that has since timed out: the record, as an error.
            Ok((410, error)) if error["code"] == "approval_timeout" => {
                load.tell(&error["approval"]);
                return Some(error["approval"].clone());
            }
            Ok((status, answer)) if status >= 500 => {
                bump(&load.counts.server_errors);
                load.surprise(format!("POST /v1/approvals {body}: {status} {answer}"));
            }
            Ok((status, answer)) => {
                load.surprise(format!("POST /v1/approvals {body}: {status} {answer}"));
                return None;
            }
            Err(_) if !keyed => {
                bump(&load.counts.abandoned);
                return None;
            }
            Err(_) => cut = true,
        }
        assert!(Instant::now() < deadline, "the host never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One guardian: reads the inbox and approves, denies or revises what it holds, leaving a quarter
/// to time out.
async fn guardian(load: Arc<Load>, id: &'static str, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let session = guardian_session(id);
    loop {
        load.gate.pass().await;
        if load.stopped() {
            return;
        }
        let pending = match load
            .api
            .send(Method::GET, "/v1/inbox", &session, None)
            .await
        {
            Ok((200, inbox)) => inbox["pending"].as_array().cloned().unwrap_or_default(),
            Ok((status, answer)) => {
                if status >= 500 {
                    bump(&load.counts.server_errors);
                }
                load.surprise(format!("GET /v1/inbox: {status} {answer}"));
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let mut open: Vec<&Value> = pending
            .iter()
            .filter(|p| !left_to_time_out(p["id"].as_str().unwrap_or_default()))
            .collect();
        for _ in 0..4 {
            if open.is_empty() {
                break;
            }
            let item = open.swap_remove(rng.random_range(0..open.len()));
            let approval = item["id"].as_str().unwrap();
            let decision = match rng.random_range(0..100) {
                0..50 => json!({"decision": "approve"}),
                50..80 => json!({"decision": "deny", "reason": "not today"}),
                _ => {
                    let mut params = item["params"].clone();
                    params["amount"] = json!(params["amount"].as_u64().unwrap() / 2);
                    json!({"decision": "revise", "params": params})
                }
            };
            bump(&load.counts.decisions);
            let path = format!("/v1/approvals/{approval}/decision");
            match load
                .api
                .send(Method::POST, &path, &session, Some(&decision))
                .await
            {
                Ok((200, settled)) => load.tell(&settled),
                Ok((409, error)) if error["code"] == "already_decided" => {
                    bump(&load.counts.conflicts);
                    load.tell(&error["approval"]);
                }
                Ok((410, error)) if error["code"] == "approval_timeout" => {
                    bump(&load.counts.too_late);
                    load.tell(&error["approval"]);
                }
                Ok((status, answer)) => {
                    if status >= 500 {
                        bump(&load.counts.server_errors);
                    }
                    load.surprise(format!("POST {path} {decision}: {status} {answer}"));
                }
                Err(_) => bump(&load.counts.decisions_cut),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
    }
}

/// The agents' side of waiting: asks about the pending approvals it was told of until each is
/// settled (approved, denied, revised, or timed out).
async fn waiter(load: Arc<Load>) {
    loop {
        load.gate.pass().await;
        if load.stopped() {
            return;
        }
        look_up(&load, 16).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks about up to `at_most` waited-on approvals; keeps those still pending.
async fn look_up(load: &Load, at_most: usize) {
    let batch: Vec<(String, usize)> = {
        let mut waiting = load.waiting.lock().unwrap();
        let n = waiting.len().min(at_most);
        waiting.drain(..n).collect()
    };
    for (id, device) in batch {
        let token = &load.vendor.actors[device].token;
        let path = format!("/v1/approvals/{id}");
        let settled = match load.api.send(Method::GET, &path, token, None).await {
            Ok((200, view)) => {
                load.tell(&view);
                true
            }
            Ok((410, error)) if error["code"] == "approval_timeout" => {
                load.tell(&error["approval"]);
                true
            }
            Ok((202, _)) | Err(_) => false,
            Ok((status, answer)) => {
                if status >= 500 {
                    bump(&load.counts.server_errors);
                }
                load.surprise(format!("GET {path}: {status} {answer}"));
                false
            }
        };
        if !settled {
            load.waiting.lock().unwrap().push_back((id, device));
        }
    }
}

/// The figures of one check.
struct Checked {
    told: usize,
    entries: u64,
    records: usize,
    settled_twice: usize,
}

/// Checks the host against what clients were told: the database, the API, the audit log and its
/// offline verification against the checkpoints kept so far (to which the newest is added).
async fn check(load: &Load, database_url: &str, key: &str, trusted: &mut Vec<String>) -> Checked {
    let surprises = std::mem::take(&mut *load.surprises.lock().unwrap());
    assert!(surprises.is_empty(), "unexpected answers: {surprises:#?}");
    let before = process::rows(database_url).await;
    let export = load.api.export().await;
    let after = process::rows(database_url).await;
    // Only the sweeper changes records while the load is parked; those are checked next time.
    let moving = process::moving(&before, &after);
    let report = process::verify(&export, key, trusted);
    assert!(report.ok(), "the audit log does not verify:\n{report}");
    assert_eq!(report.absent_payloads, 0, "{report}");
    let index = AuditIndex::of_export(&export);
    let half = process::half_applied(&after, &index, &moving);
    assert!(half.is_empty(), "half-applied writes: {half:#?}");
    let settled_twice = index
        .trails
        .values()
        .filter(|t| t.settlements().len() > 1)
        .count();
    assert_eq!(settled_twice, 0);
    let ledger = load.ledger.lock().unwrap().clone();
    assert!(
        ledger.contradictions.is_empty(),
        "clients were told contradicting outcomes: {:#?}",
        ledger.contradictions
    );
    let lost = process::lost(&ledger, &after);
    assert!(lost.is_empty(), "told outcomes lost: {lost:#?}");
    let unaudited = process::unaudited(&ledger, &index);
    assert!(
        unaudited.is_empty(),
        "told outcomes not in the log: {unaudited:#?}"
    );
    let keys = HashMap::from([(load.vendor.id.clone(), load.vendor.key.clone())]);
    let lost = process::read_back(&load.api, &ledger, &after, &keys).await;
    assert!(
        lost.is_empty(),
        "told outcomes read back otherwise: {lost:#?}"
    );
    trusted.push(load.api.checkpoint().await);
    Checked {
        told: ledger.told.len(),
        entries: index.entries,
        records: after.len(),
        settled_twice,
    }
}

async fn crash_without_loss(section: &str, backend: &str, data: &Path, database_url: &str) {
    let started = Instant::now();
    let seed = run_seed();
    let kills = report::scale(3, 30);
    println!("{section}: seed {seed} (APPROVAL_HOST_CRASH_SEED={seed} replays the kill moments)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut host = ProcessHost::start(section, &data.join("host"), database_url).await;
    let api = host.api();
    let vendor = api
        .seed(&VendorSeed {
            id: "acme-toys".into(),
            policy: load_policy(),
            actors: 4,
            guardians: GUARDIANS.iter().map(|g| (*g).to_owned()).collect(),
            plugin: Some(common::plugin("velocity")),
        })
        .await;
    let key = api.audit_key().await;
    let load = Arc::new(Load {
        api,
        vendor,
        ledger: Mutex::default(),
        gate: Gate::new(),
        stop: AtomicBool::new(false),
        waiting: Mutex::default(),
        watched: Mutex::default(),
        counts: Counts::default(),
        surprises: Mutex::default(),
    });
    let mut workers = Vec::new();
    for w in 0..AGENTS {
        workers.push(tokio::spawn(agent(
            Arc::clone(&load),
            w,
            seed ^ (w as u64 + 1),
        )));
    }
    for (g, id) in GUARDIANS.iter().enumerate() {
        workers.push(tokio::spawn(guardian(
            Arc::clone(&load),
            id,
            seed ^ (0x100 + g as u64),
        )));
    }
    workers.push(tokio::spawn(waiter(Arc::clone(&load))));

    let mut trusted = Vec::new();
    let mut told_checked = 0;
    let mut downtime = Duration::ZERO;
    for kill in 1..=kills {
        let delay = Duration::from_millis(rng.random_range(50..2_500));
        tokio::time::sleep(delay).await;
        host.kill().await;
        let down = Instant::now();
        // Down a moment: the load meets refused connections, and expiries pass unswept.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
        load.gate.set(false);
        host.restart().await;
        downtime += down.elapsed();
        load.gate.wait_parked(workers.len()).await;
        let checked = check(&load, database_url, &key, &mut trusted).await;
        told_checked += checked.told;
        println!(
            "{section}: kill {kill}/{kills} after {delay:?}: {} records, {} audit entries, {} told approvals as told",
            checked.records, checked.entries, checked.told
        );
        load.gate.set(true);
    }
    // Some load after the last restart, then settle: every pending request is decided or times
    // out (10 s), and the agents hear how.
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let settled = eventually(Duration::from_secs(60), || async {
        process::rows(database_url)
            .await
            .values()
            .all(|r| r.status != "pending")
    })
    .await;
    assert!(settled, "pending requests outlived their TTL");
    look_up(&load, usize::MAX).await;
    assert!(
        load.waiting.lock().unwrap().is_empty(),
        "an agent was not told how its request ended"
    );
    let last = check(&load, database_url, &key, &mut trusted).await;
    told_checked += last.told;

    // Offline: stop the host and verify its database's log with the CLI, against every
    // checkpoint kept through the crashes.
    host.stop().await;
    let offline = offline_verify(data, database_url, &key, &trusted).await;

    let ledger = load.ledger.lock().unwrap().clone();
    let index = AuditIndex::of_export(&offline.export);
    let rows = process::rows(database_url).await;
    assert!(process::half_applied(&rows, &index, &Default::default()).is_empty());
    assert!(process::lost(&ledger, &rows).is_empty());
    assert!(process::unaudited(&ledger, &index).is_empty());
    assert!(
        ledger.told.values().all(|t| t.outcome.is_some()),
        "an approval a client was told of is not settled"
    );
    let c = &load.counts;
    assert_eq!(read(&c.server_errors), 0, "5xx answers");
    let by = |status: &str, method: &str| index.count(status, method);
    let mut md = String::new();
    writeln!(
        md,
        "**Crash without loss, {backend}.** The real `approval-host serve` under a steady mix of \
         {AGENTS} agents (allowed, denied by the velocity plugin, sent to a guardian; tiny \
         variations of pending requests; 15 % idempotent retries), 2 guardians (approve, deny, revise, a quarter left to time out \
         after the 10 s TTL) and an agent waiting on its pending requests, killed with SIGKILL \
         {kills} times at random moments (seed {seed}) and restarted on the same database each \
         time. After every restart and at the end every told outcome was read back from the \
         database and the API and found in the audit log, every record's entries matched its \
         status, and the log verified offline against every checkpoint kept before the crashes \
         (at the end with `approval-host audit export` and `audit verify` on the stopped host's \
         database). {:.0} s in all, {:.1} s of it down.\n",
        started.elapsed().as_secs_f64(),
        downtime.as_secs_f64()
    )
    .unwrap();
    md.push_str("| what | count |\n| --- | ---: |\n");
    let rows_md: Vec<(String, String)> = vec![
        (
            "kills survived (SIGKILL, restart on the same database)".into(),
            kills.to_string(),
        ),
        (
            "requests sent by agents".into(),
            read(&c.requests).to_string(),
        ),
        (
            "idempotent retries of answered requests".into(),
            read(&c.retries).to_string(),
        ),
        (
            "tiny variations of pending requests / merged into them".into(),
            format!("{} / {}", read(&c.variations), read(&c.merged)),
        ),
        (
            "requests cut off by a kill, retried with their key and answered".into(),
            read(&c.recovered).to_string(),
        ),
        (
            "requests without a key cut off by a kill (wholly there or absent)".into(),
            read(&c.abandoned).to_string(),
        ),
        (
            "guardian decisions sent".into(),
            read(&c.decisions).to_string(),
        ),
        (
            "decisions cut off by a kill".into(),
            read(&c.decisions_cut).to_string(),
        ),
        (
            "decisions answered `already_decided` / `approval_timeout`".into(),
            format!("{} / {}", read(&c.conflicts), read(&c.too_late)),
        ),
        (
            "answers received and noted (told outcomes)".into(),
            ledger.tellings.to_string(),
        ),
        (
            "approvals told of, checked in the final check".into(),
            last.told.to_string(),
        ),
        (
            "told approvals checked, summed over all checks".into(),
            told_checked.to_string(),
        ),
        (
            "outcomes: allowed / denied by policy".into(),
            format!("{} / {}", by("allowed", "policy"), by("denied", "policy")),
        ),
        (
            "outcomes: approved / revised / denied by a guardian".into(),
            format!(
                "{} / {} / {}",
                by("approved", "human"),
                by("revised", "human"),
                by("denied", "human")
            ),
        ),
        (
            "outcomes: timed out".into(),
            by("timed_out", "timeout").to_string(),
        ),
        (
            "records in the database at the end".into(),
            rows.len().to_string(),
        ),
        (
            "audit entries verified offline (CLI)".into(),
            offline.entries.to_string(),
        ),
        (
            "checkpoints kept across crashes, verified against".into(),
            trusted.len().to_string(),
        ),
        ("told outcomes lost".into(), "0".into()),
        ("half-applied writes".into(), "0".into()),
        (
            "approvals settled twice (e.g. approved and timed out)".into(),
            last.settled_twice.to_string(),
        ),
        ("5xx answers".into(), "0".into()),
    ];
    for (what, count) in rows_md {
        writeln!(md, "| {what} | {count} |").unwrap();
    }
    println!("{md}");
    report::write(section, &md);
}

/// The export and entry count of `approval-host audit export` + `audit verify`.
struct Offline {
    export: Vec<u8>,
    entries: u64,
}

/// Runs the CLI on the stopped host's database: `audit key`, `audit export`, `audit verify` with
/// every kept checkpoint as `--trusted`.
async fn offline_verify(data: &Path, database_url: &str, key: &str, trusted: &[String]) -> Offline {
    let cli = |args: Vec<String>| async move {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_approval-host"))
            .args(&args)
            .env("RUST_LOG", "error")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "approval-host {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let db = database_url.to_owned();
    let printed = cli(vec![
        "audit".into(),
        "key".into(),
        "--db".into(),
        db.clone(),
    ])
    .await;
    assert_eq!(
        printed.trim(),
        key,
        "the CLI reads the log's key from the database"
    );
    let out = data.join("audit-export.jsonl");
    cli(vec![
        "audit".into(),
        "export".into(),
        "--db".into(),
        db,
        "--out".into(),
        out.display().to_string(),
    ])
    .await;
    let mut args = vec![
        "audit".into(),
        "verify".into(),
        "--export".into(),
        out.display().to_string(),
        "--key".into(),
        key.to_owned(),
    ];
    for (i, note) in trusted.iter().enumerate() {
        let path = data.join(format!("checkpoint-{i}.txt"));
        std::fs::write(&path, note).unwrap();
        args.push("--trusted".into());
        args.push(path.display().to_string());
    }
    let verified = cli(args).await;
    assert!(verified.starts_with("OK"), "{verified}");
    let export = std::fs::read(&out).unwrap();
    let entries = AuditIndex::of_export(&export).entries;
    Offline { export, entries }
}
