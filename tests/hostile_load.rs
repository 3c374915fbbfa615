//! Hostile plugins under load (issue 8): the real `approval-host serve` process on loopback, on
//! SQLite, while
//! - honest vendors' agents ask for decisions whose answers are known: vendor A runs the example
//!   plugin (`velocity`), vendor C runs none;
//! - hostile vendor B's agents ask too, and every one of B's requests runs seven active plugins
//!   that loop, grow memory, recurse, trap, sleep, answer an 8 MiB verdict and name an undeclared
//!   rule (B's fail mode is `deny`, so each request gets a clear answer);
//! - B uploads, without pause, components that must be refused: random bytes, truncated and
//!   byte-flipped valid components, core modules, random modules and components from
//!   `wasm-smith` (modules also wrapped as components), components over the upload limit (raw
//!   and multipart), a plugin that loops in its start-up code, a component of another world and
//!   one with a forbidden import.
//!
//! Asserted: every honest decision is the known one (status, deciding rule, the plugin's own
//! verdict, a token when allowed) and none failed; `/healthz` and `/readyz` answer throughout; the
//! host's resident memory stays under a fixed bound and does not climb from the first half of the
//! run to the second; every failed call of B's plugins has the cause expected of that plugin, and
//! the audit log holds that call with the same cause (receipts of a sample verify with the log's
//! key alone); every malformed upload gets a 4xx with a stable code, never a 5xx, and creates no
//! plugin version; the host's log holds no panic and it stops gracefully when asked.
//!
//! `cargo test` runs 20 s of load; `APPROVAL_HOST_RELIABILITY=long` runs 5 minutes with two
//! uploaders (`APPROVAL_HOST_HOSTILE_SECONDS` sets another length, `APPROVAL_HOST_HOSTILE_SEED`
//! the uploads' random seed). The figures go to the report section `hostile`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use approval_host::audit::Receipt;
use approval_host::audit::checkpoint::CheckpointVerifier;
use approval_host::audit::entry::{Event, PluginOutcome};
use common::ADMIN;
use common::process::{Api, ProcessHost};
use reqwest::Method;
use serde_json::{Value, json};

const VENDOR_A: &str = "honest-a";
const VENDOR_B: &str = "hostile-b";
const VENDOR_C: &str = "honest-c";

/// The hostile plugins B runs on every request, each with the causes its failure may have: its
/// own, or the deadline (a loaded machine can stretch any call past B's 10 ms).
const HOSTILE: [(&str, &str, &[&str]); 7] = [
    (
        "hostile_loop",
        "hostile-loop",
        &["plugin_deadline", "plugin_out_of_fuel"],
    ),
    (
        "hostile_memory_bomb",
        "hostile-memory-bomb",
        &["plugin_out_of_memory", "plugin_deadline"],
    ),
    (
        "hostile_recursion",
        "hostile-recursion",
        &["plugin_stack_overflow", "plugin_deadline"],
    ),
    (
        "hostile_trap",
        "hostile-trap",
        &["plugin_trap", "plugin_deadline"],
    ),
    (
        "hostile_huge_output",
        "hostile-huge-output",
        &["plugin_output_too_large", "plugin_deadline"],
    ),
    ("hostile_sleep", "hostile-sleep", &["plugin_deadline"]),
    (
        "hostile_unknown_rule",
        "hostile-unknown-rule",
        &["plugin_malformed_verdict", "plugin_deadline"],
    ),
];

/// The cause any of B's calls may have besides its own: no slot among B's own calls within the
/// queue timeout. (The breaker is off here, so no call is skipped as `plugin_suspended`.)
const ANY_PLUGIN_CAUSE: [&str; 1] = ["plugin_busy"];

/// The bound on the host's resident memory: generous (the pool of plugin memories alone may
/// touch 32 MiB per concurrent call), but far below what an unbounded leak reaches.
const RSS_BOUND_MIB: u64 = 1024;

/// After the load, the quiet host is given a few new valid versions to warm up, then
/// `NEW_VERSIONS` more, and its resident memory may grow by at most `NEW_VERSIONS_GROWTH_MIB`
/// over those: a stored version that is not live must not keep its compiled code in memory.
const NEW_VERSIONS_WARMUP: u64 = 10;
const NEW_VERSIONS: u64 = 100;
const NEW_VERSIONS_GROWTH_MIB: u64 = 16;

/// The upload limit of a default host (`limits.max_upload_bytes`).
const UPLOAD_LIMIT: usize = 20 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_and_uploads_under_honest_load() {
    let seconds = std::env::var("APPROVAL_HOST_HOSTILE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| common::report::scale(20, 300));
    let uploaders = common::report::scale(1, 2);
    let seed = std::env::var("APPROVAL_HOST_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE_u64);
    // The real binary on SQLite, with the plugin breaker off: every hostile plugin runs (to its
    // limit) on every call, not just until it is paused (tests/plugin_runtime.rs tests the
    // breaker).
    let data = tempfile::tempdir().unwrap();
    let database = format!(
        "sqlite://{}?mode=rwc",
        data.path().join("host.db").display()
    );
    let mut host =
        ProcessHost::start_with("hostile", data.path(), &database, "plugin_pause_after = 0").await;
    let pid = host.pid().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api::new(&host.url);
    let world = setup(&api).await;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let rss_start = status_kib(pid, "VmRSS").unwrap();

    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (n, token) in world.a.iter().enumerate() {
        let (api, token, stats) = (api.clone(), token.clone(), Arc::clone(&stats));
        tasks.push(tokio::spawn(async move {
            honest(&api, Who::A, &token, n as u64, until, &stats).await;
        }));
    }
    for (n, token) in world.c.iter().enumerate() {
        let (api, token, stats) = (api.clone(), token.clone(), Arc::clone(&stats));
        tasks.push(tokio::spawn(async move {
            honest(&api, Who::C, &token, n as u64, until, &stats).await;
        }));
    }
    for token in &world.b {
        let (api, token, stats) = (api.clone(), token.clone(), Arc::clone(&stats));
        tasks.push(tokio::spawn(async move {
            hostile(&api, &token, until, &stats).await;
        }));
    }
    for n in 0..uploaders {
        let (api, key, stats) = (api.clone(), world.b_key.clone(), Arc::clone(&stats));
        tasks.push(tokio::spawn(async move {
            upload_malformed(&api, &key, seed.wrapping_add(n), until, &stats).await;
        }));
    }
    let monitor = {
        let (api, stats) = (api.clone(), Arc::clone(&stats));
        tokio::spawn(async move { monitor(&api, pid, started, until, &stats).await })
    };
    for task in tasks {
        task.await.unwrap();
    }
    monitor.await.unwrap();
    let load_seconds = started.elapsed().as_secs_f64();
    let stats = Arc::try_unwrap(stats)
        .expect("every task ended")
        .into_inner()
        .unwrap();

    assert!(
        host.running(),
        "the host died under load; its log ends with:\n{}",
        host.log_tail()
    );
    let rss_end = status_kib(pid, "VmRSS").unwrap();
    let hwm = status_kib(pid, "VmHWM").unwrap();
    let new_versions = upload_new_versions(&api, &world.b_key, pid).await;
    let audited = audit_of_hostile_calls(&api).await;
    let receipts = check_receipts(&api, &stats.hostile).await;
    let versions = api.get("/v1/vendor/plugins", &world.b_key).await;
    assert_eq!(versions.0, 200, "{}", versions.1);
    let versions = versions.1.as_array().unwrap().len() as u64;
    let upload_entries = audit_entries(&api, "plugin_uploaded").await.len() as u64;
    let cache = dir_size(&data.path().join("plugin-cache"));
    // A graceful stop; `stop` asserts the exit is clean.
    host.stop().await;
    let log = std::fs::read_to_string(host.log_path()).unwrap_or_default();

    let report = Report {
        seconds: load_seconds,
        uploaders,
        seed,
        stats: &stats,
        audited: &audited,
        receipts,
        versions,
        upload_entries,
        new_versions,
        rss: (rss_start, rss_end, hwm),
        cache,
        log_bytes: log.len(),
    };
    common::report::write("hostile", &report.markdown());
    report.assert_all();
    assert!(
        !log.contains("panicked"),
        "the host's log holds a panic:\n{}",
        host.log_tail()
    );
}

// ---- the host process ----------------------------------------------------------------------

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Files and bytes under `dir`, recursively.
fn dir_size(dir: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (files, bytes) = dir_size(&entry.path());
            total = (total.0 + files, total.1 + bytes);
        } else {
            total = (total.0 + 1, total.1 + meta.len());
        }
    }
    total
}

// ---- the API -------------------------------------------------------------------------------

/// The answer to a call: status and JSON body, or the transport error.
type Answer = Result<(u16, Value), reqwest::Error>;

// ---- the world -----------------------------------------------------------------------------

struct World {
    /// Agent tokens of A's and C's devices.
    a: Vec<String>,
    c: Vec<String>,
    /// B's agent tokens and its vendor key (for uploads).
    b: Vec<String>,
    b_key: String,
}

async fn setup(api: &Api) -> World {
    let actors = |key: String, prefix: &'static str, count: usize| async move {
        let guardians = [format!("guardian-{prefix}")];
        let mut tokens = Vec::new();
        for n in 0..count {
            tokens.push(
                api.add_actor(&key, &format!("{prefix}-{n}"), &guardians)
                    .await,
            );
        }
        tokens
    };

    // A: velocity, which denies gambling and escalates any EUR payment over 1.00 (no EUR
    // payment is ever allowed, so the hour's EUR spend stays 0); its payment count never
    // fires. The deadline is the platform's longest, so a loaded machine cannot fail a call.
    let a_key = api.create_vendor(VENDOR_A).await;
    api.put_policy(
        &a_key,
        &json!({
            "spend_thresholds": {"CNY": 50_000, "EUR": 100_000_000},
            "max_approval_requests_per_hour": 1_000_000,
            "generic_actions": {"declared": ["lights.on"]},
            "plugin_limits": {"deadline_ms": 250},
            "settings": {
                "blocked-merchant-categories": "gambling",
                "max-payments-per-hour": "1000000000",
                "max-hourly-spend.EUR": "100",
            },
        }),
    )
    .await;
    api.activate_plugin(&a_key, common::plugin("velocity"))
        .await;
    let a = actors(a_key, "a", 3).await;

    // C: no plugin; the built-in triggers only.
    let c_key = api.create_vendor(VENDOR_C).await;
    api.put_policy(
        &c_key,
        &json!({"max_approval_requests_per_hour": 1_000_000,
            "generic_actions": {"declared": ["lights.on"]}}),
    )
    .await;
    let c = actors(c_key, "c", 2).await;

    // B: every hostile plugin active, default limits, and fail mode deny.
    let b_key = api.create_vendor(VENDOR_B).await;
    api.put_policy(
        &b_key,
        &json!({"plugin_fail_mode": "deny", "max_approval_requests_per_hour": 1_000_000,
            "generic_actions": {"declared": ["lights.on"]}}),
    )
    .await;
    for (file, _, _) in HOSTILE {
        api.activate_plugin(&b_key, common::plugin(file)).await;
    }
    let b = actors(b_key.clone(), "b", 2).await;
    World { a, c, b, b_key }
}

// ---- what the run counts -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    A,
    B,
    C,
}

/// One of B's requests: its approval id and each plugin's cause, as the agent was told.
#[derive(Debug, Clone)]
struct HostileCall {
    id: String,
    runs: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Stats {
    requests: BTreeMap<Who, u64>,
    honest_by_case: BTreeMap<&'static str, u64>,
    honest_checked: u64,
    honest_correct: u64,
    honest_wrong: Vec<String>,
    hostile: Vec<HostileCall>,
    hostile_wrong: Vec<String>,
    /// Uploads by kind and outcome (`422 plugin_invalid`, `201 created`, …).
    uploads: BTreeMap<(Kind, String), u64>,
    upload_wrong: Vec<String>,
    /// Byte-flipped components that still formed a valid classifier: new versions.
    flips_created: u64,
    generated: BTreeMap<&'static str, u64>,
    /// Generator runs that produced nothing (a bare header was uploaded instead).
    generator_gave_up: BTreeMap<&'static str, u64>,
    health_checks: u64,
    health_failures: Vec<String>,
    /// (seconds since the load started, VmRSS in KiB).
    rss: Vec<(f64, u64)>,
}

/// Keeps the first few problems of a kind, counting the rest.
fn note(list: &mut Vec<String>, problem: String) {
    if list.len() < 20 {
        list.push(problem);
    } else if list.len() == 20 {
        list.push("(more)".to_owned());
    }
}

// ---- honest traffic ------------------------------------------------------------------------

/// What a request must get.
struct Expect {
    http: u16,
    status: &'static str,
    /// The deciding rule (`None`: none decided).
    rule: Option<&'static str>,
    /// For A: velocity's own verdict (decision, rule).
    velocity: Option<(&'static str, Option<&'static str>)>,
}

const fn expect(http: u16, status: &'static str, rule: Option<&'static str>) -> Expect {
    Expect {
        http,
        status,
        rule,
        velocity: None,
    }
}

/// The `n`th request of an honest vendor's device: (case name, body, what it must get). Every
/// body is distinct, so no request joins another's pending approval.
fn honest_case(who: Who, n: u64) -> (&'static str, Value, Expect) {
    let pay = |amount: u64, currency: &str, category: &str| {
        json!({"action": "payment", "params": {"amount": amount, "currency": currency,
               "recipient": format!("shop-{n}"), "merchant_category": category}})
    };
    let with_velocity = |mut e: Expect, decision: &'static str, rule: Option<&'static str>| {
        e.velocity = Some((decision, rule));
        e
    };
    match (who, n % 4, n % 7) {
        (Who::A, 0, _) => (
            "A small payment",
            pay(1_000 + n % 500, "CNY", "toys"),
            with_velocity(expect(200, "allowed", None), "allow", None),
        ),
        (Who::A, 1, _) => (
            "A payment over the threshold",
            pay(60_000 + n % 1_000, "CNY", "toys"),
            with_velocity(
                expect(202, "pending", Some("builtin.spend_threshold")),
                "allow",
                None,
            ),
        ),
        (Who::A, 2, _) => (
            "A gambling payment",
            pay(2_000, "CNY", "gambling"),
            with_velocity(
                expect(200, "denied", Some("velocity.blocked-merchant")),
                "deny",
                Some("velocity.blocked-merchant"),
            ),
        ),
        (Who::A, _, _) => (
            "A EUR payment over the hourly spend",
            pay(5_000 + n % 100, "EUR", "toys"),
            with_velocity(
                expect(202, "pending", Some("velocity.hourly-spend")),
                "escalate",
                Some("velocity.hourly-spend"),
            ),
        ),
        (_, _, 0) => (
            "C small payment",
            pay(1_000 + n % 500, "CNY", "toys"),
            expect(200, "allowed", None),
        ),
        (_, _, 1) => (
            "C payment over the threshold",
            pay(70_000 + n % 1_000, "CNY", "toys"),
            expect(202, "pending", Some("builtin.spend_threshold")),
        ),
        (_, _, 2) => (
            "C banking credential",
            json!({"action": "cred.put", "params": {"service": format!("bank-{n}"), "category": "banking"}}),
            expect(202, "pending", Some("builtin.sensitive_credential")),
        ),
        (_, _, 3) => (
            "C family write off family",
            json!({"action": "memory.write", "params": {"namespace": "family", "key": format!("k-{n}")}}),
            expect(202, "pending", Some("builtin.family_write_outside_family")),
        ),
        (_, _, 4) => (
            "C mint over the parent scope",
            json!({"action": "capability.mint", "params": {"capability": format!("cap-{n}"), "requested_scope": 200, "parent_scope": 100}}),
            expect(200, "denied", Some("builtin.mint_exceeds_parent_scope")),
        ),
        (_, _, 5) => (
            "C small mint",
            json!({"action": "capability.mint", "params": {"capability": format!("cap-{n}"), "requested_scope": 10, "parent_scope": 100}}),
            expect(200, "allowed", None),
        ),
        (_, _, _) => (
            "C generic action",
            json!({"action": "lights.on", "params": {"room": format!("room-{n}")}}),
            expect(200, "allowed", None),
        ),
    }
}

/// Why an honest answer is wrong, if it is.
fn check_honest(who: Who, answer: &Answer, expect: &Expect) -> Result<(), String> {
    let (http, body) = answer.as_ref().map_err(|e| format!("transport: {e}"))?;
    let got = (*http, body["status"].as_str(), body["rule"].as_str());
    if got != (expect.http, Some(expect.status), expect.rule) {
        return Err(format!("got {got:?}: {body}"));
    }
    if expect.status == "allowed" && body["token"]["token"].as_str().is_none_or(str::is_empty) {
        return Err(format!("allowed without a token: {body}"));
    }
    let runs = body["plugins"].as_array().cloned().unwrap_or_default();
    match (who, expect.velocity) {
        (Who::A, Some((decision, rule))) => {
            let [run] = runs.as_slice() else {
                return Err(format!("A's request ran {} plugins: {body}", runs.len()));
            };
            let seen = (
                run["name"].as_str(),
                run["error_code"].as_str(),
                run["decision"].as_str(),
                run["rule_id"].as_str(),
            );
            if seen != (Some("velocity"), None, Some(decision), rule) {
                return Err(format!("velocity's run is {seen:?}: {body}"));
            }
        }
        _ if !runs.is_empty() => return Err(format!("C's request ran plugins: {body}")),
        _ => {}
    }
    Ok(())
}

async fn honest(
    api: &Api,
    who: Who,
    token: &str,
    device: u64,
    until: Instant,
    stats: &Mutex<Stats>,
) {
    // Each device's own numbers: its bodies are its own, and every case comes in turn.
    let mut n = device * 1_000_000;
    while Instant::now() < until {
        let (case, body, expect) = honest_case(who, n);
        let answer = api
            .send(Method::POST, "/v1/approvals", token, Some(&body))
            .await;
        let verdict = check_honest(who, &answer, &expect);
        let mut s = stats.lock().unwrap();
        *s.requests.entry(who).or_default() += 1;
        *s.honest_by_case.entry(case).or_default() += 1;
        s.honest_checked += 1;
        match verdict {
            Ok(()) => s.honest_correct += 1,
            Err(problem) => note(&mut s.honest_wrong, format!("{case}: {problem}")),
        }
        n += 1;
    }
}

// ---- hostile traffic -----------------------------------------------------------------------

fn expected_causes(plugin: &str) -> Option<&'static [&'static str]> {
    HOSTILE
        .iter()
        .find(|(_, name, _)| *name == plugin)
        .map(|(_, _, causes)| *causes)
}

/// B's request must be denied by its fail mode, every active plugin having failed with a cause
/// expected of it.
fn check_hostile(answer: &Answer) -> Result<HostileCall, String> {
    let (http, body) = answer.as_ref().map_err(|e| format!("transport: {e}"))?;
    let got = (*http, body["status"].as_str(), body["rule"].as_str());
    if got != (200, Some("denied"), Some("plugin.failed")) {
        return Err(format!("got {got:?}: {body}"));
    }
    let mut runs = Vec::new();
    for run in body["plugins"].as_array().into_iter().flatten() {
        let name = run["name"].as_str().unwrap_or_default();
        let code = run["error_code"].as_str().unwrap_or_default();
        let allowed = expected_causes(name)
            .is_some_and(|causes| causes.contains(&code) || ANY_PLUGIN_CAUSE.contains(&code));
        if !allowed {
            return Err(format!("plugin {name:?} answered cause {code:?}: {run}"));
        }
        runs.push((name.to_owned(), code.to_owned()));
    }
    let names: BTreeSet<&str> = runs.iter().map(|(n, _)| n.as_str()).collect();
    if runs.len() != HOSTILE.len() || names.len() != HOSTILE.len() {
        return Err(format!(
            "{} runs, not one of each of the {} active plugins: {body}",
            runs.len(),
            HOSTILE.len()
        ));
    }
    Ok(HostileCall {
        id: body["id"].as_str().unwrap_or_default().to_owned(),
        runs,
    })
}

async fn hostile(api: &Api, token: &str, until: Instant, stats: &Mutex<Stats>) {
    let mut n = 0u64;
    while Instant::now() < until {
        let body = if n % 3 == 2 {
            json!({"action": "lights.on", "params": {"room": format!("room-{n}")}})
        } else {
            json!({"action": "payment", "params": {"amount": 1_000 + n, "currency": "CNY", "recipient": "toy-shop"}})
        };
        let answer = api
            .send(Method::POST, "/v1/approvals", token, Some(&body))
            .await;
        let checked = check_hostile(&answer);
        let mut s = stats.lock().unwrap();
        *s.requests.entry(Who::B).or_default() += 1;
        match checked {
            Ok(call) => s.hostile.push(call),
            Err(problem) => note(&mut s.hostile_wrong, problem),
        }
        n += 1;
    }
}

// ---- malformed uploads ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    RandomBytes,
    JunkAfterComponentHeader,
    Truncated,
    ByteFlipped,
    SmithModule,
    SmithModuleAsComponent,
    SmithComponent,
    MultipartJunk,
    Oversized,
    OversizedMultipart,
    StartupLoop,
    WrongWorld,
    ForbiddenImport,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::RandomBytes => "random bytes (sometimes with a core module header)",
            Kind::JunkAfterComponentHeader => "a component header and random bytes",
            Kind::Truncated => "a valid component cut inside a section",
            Kind::ByteFlipped => "a valid component with 1 to 3 bytes flipped",
            Kind::SmithModule => "a wasm-smith core module",
            Kind::SmithModuleAsComponent => "a wasm-smith core module wrapped as a component",
            Kind::SmithComponent => "a wasm-smith component",
            Kind::MultipartJunk => "random bytes as a multipart `component` field",
            Kind::Oversized => "a component of the upload limit + 1 byte",
            Kind::OversizedMultipart => "the same as a multipart field",
            Kind::StartupLoop => "hostile-startup-loop (spins in start-up code)",
            Kind::WrongWorld => "wrong-world (exports another interface)",
            Kind::ForbiddenImport => "forbidden-import (imports a non-WASI interface)",
        }
    }

    /// The `i`th upload's kind: mostly generated components, now and then the expensive ones.
    fn nth(i: u64) -> Kind {
        match i % 20 {
            0..=3 => Kind::SmithModuleAsComponent,
            4..=6 => Kind::SmithComponent,
            7 | 8 => Kind::SmithModule,
            9..=11 => Kind::ByteFlipped,
            12 | 13 => Kind::Truncated,
            14 => Kind::RandomBytes,
            15 => Kind::JunkAfterComponentHeader,
            16 => Kind::MultipartJunk,
            17 => match (i / 20) % 4 {
                0 => Kind::Oversized,
                2 => Kind::OversizedMultipart,
                _ => Kind::WrongWorld,
            },
            18 => match (i / 20) % 2 {
                0 => Kind::StartupLoop,
                _ => Kind::ForbiddenImport,
            },
            _ => Kind::SmithModuleAsComponent,
        }
    }
}

/// SplitMix64: a small seeded generator, so that a failing run can be reproduced by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const COMPONENT_HEADER: [u8; 8] = [0, b'a', b's', b'm', 0x0d, 0, 0x01, 0];
const MODULE_HEADER: [u8; 8] = [0, b'a', b's', b'm', 1, 0, 0, 0];

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A component whose only section is `module` as a core module (section 1): valid whenever the
/// module is, and exporting nothing.
fn wrap_as_component(module: &[u8]) -> Vec<u8> {
    let mut out = COMPONENT_HEADER.to_vec();
    out.push(1);
    leb128(module.len(), &mut out);
    out.extend_from_slice(module);
    out
}

/// The top-level sections of a component: (payload start, payload end).
fn sections(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let (mut size, mut shift, mut p) = (0usize, 0, at + 1);
        while let Some(&b) = bytes.get(p) {
            size |= usize::from(b & 0x7f) << shift;
            shift += 7;
            p += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        found.push((p, (p + size).min(bytes.len())));
        at = p + size;
    }
    found
}

/// wasm-smith's configuration: its defaults, or (every other time) without the proposals
/// wasmtime refuses, so that the host's compiler gets to work on the module.
fn smith_config(rng: &mut Rng) -> wasm_smith::Config {
    let mut config = wasm_smith::Config::default();
    if rng.next().is_multiple_of(2) {
        config.gc_enabled = false;
        config.exceptions_enabled = false;
        config.threads_enabled = false;
        config.custom_page_sizes_enabled = false;
    }
    config
}

/// A wasm-smith module from seeded random bytes (`None`: the bytes ran out first).
fn smith_module(rng: &mut Rng) -> Option<Vec<u8>> {
    let len = 256 + rng.below(8 << 10);
    let seed = rng.bytes(len);
    let config = smith_config(rng);
    let mut u = arbitrary::Unstructured::new(&seed);
    wasm_smith::Module::new(config, &mut u)
        .ok()
        .map(|m| m.to_bytes())
}

/// A wasm-smith component (its component generator is a work in progress: whatever it makes,
/// valid or not, is something a vendor could upload). A panic of the generator counts as none.
fn smith_component(rng: &mut Rng) -> Option<Vec<u8>> {
    let len = 256 + rng.below(8 << 10);
    let seed = rng.bytes(len);
    let config = smith_config(rng);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut u = arbitrary::Unstructured::new(&seed);
        wasm_smith::Component::new(config, &mut u)
            .ok()
            .map(|c| c.to_bytes())
    }))
    .ok()
    .flatten()
}

/// An upload's body: raw bytes, or a multipart form with a `component` field.
enum Body {
    Raw(Vec<u8>),
    Multipart(Vec<u8>),
}

/// What an upload of `kind` must get: (HTTP status, stable code).
fn expected_upload(kind: Kind) -> (u16, &'static str) {
    match kind {
        Kind::Oversized | Kind::OversizedMultipart => (413, "plugin_too_large"),
        _ => (422, "plugin_invalid"),
    }
}

struct Uploader {
    rng: Rng,
    valid: Vec<Vec<u8>>,
    startup_loop: Vec<u8>,
    wrong_world: Vec<u8>,
    forbidden_import: Vec<u8>,
    oversized: Vec<u8>,
}

impl Uploader {
    fn new(seed: u64) -> Uploader {
        let mut oversized = wrap_as_component(&MODULE_HEADER);
        oversized.resize(UPLOAD_LIMIT + 1, 0);
        Uploader {
            rng: Rng(seed),
            valid: ["velocity", "hostile_trap", "hostile_loop"]
                .iter()
                .map(|name| common::plugin(name))
                .collect(),
            startup_loop: common::plugin("hostile_startup_loop"),
            wrong_world: common::plugin("wrong_world"),
            forbidden_import: common::plugin("forbidden_import"),
            oversized,
        }
    }

    /// The body of an upload of `kind`, and which generator made it, if one did (`false`: it
    /// gave up, and a bare header went instead).
    fn make(&mut self, kind: Kind) -> (Body, Option<(&'static str, bool)>) {
        let rng = &mut self.rng;
        match kind {
            Kind::RandomBytes => {
                let len = rng.below(16 << 10);
                let mut bytes = rng.bytes(len);
                if rng.next().is_multiple_of(2) && bytes.len() >= 8 {
                    bytes[..8].copy_from_slice(&MODULE_HEADER);
                }
                (Body::Raw(bytes), None)
            }
            Kind::JunkAfterComponentHeader => {
                let len = rng.below(16 << 10);
                let mut bytes = COMPONENT_HEADER.to_vec();
                bytes.extend(rng.bytes(len));
                (Body::Raw(bytes), None)
            }
            Kind::Truncated => {
                let valid = &self.valid[rng.below(self.valid.len())];
                let inside: Vec<_> = sections(valid)
                    .into_iter()
                    .filter(|(start, end)| end - start >= 2)
                    .collect();
                let (start, end) = inside[rng.below(inside.len())];
                let cut = start + 1 + rng.below(end - start - 1);
                (Body::Raw(valid[..cut].to_vec()), None)
            }
            Kind::ByteFlipped => {
                let mut bytes = self.valid[rng.below(self.valid.len())].clone();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 + rng.below(255) as u8;
                }
                (Body::Raw(bytes), None)
            }
            Kind::SmithModule => {
                let made = smith_module(rng);
                let generator = Some(("wasm-smith core modules", made.is_some()));
                let bytes = made.unwrap_or_else(|| MODULE_HEADER.to_vec());
                (Body::Raw(bytes), generator)
            }
            Kind::SmithModuleAsComponent => {
                let made = smith_module(rng);
                let generator = Some((
                    "wasm-smith core modules wrapped as components",
                    made.is_some(),
                ));
                let module = made.unwrap_or_else(|| MODULE_HEADER.to_vec());
                (Body::Raw(wrap_as_component(&module)), generator)
            }
            Kind::SmithComponent => {
                let made = smith_component(rng);
                let generator = Some(("wasm-smith components", made.is_some()));
                let bytes = made.unwrap_or_else(|| COMPONENT_HEADER.to_vec());
                (Body::Raw(bytes), generator)
            }
            Kind::MultipartJunk => {
                let len = 1 + rng.below(16 << 10);
                (Body::Multipart(rng.bytes(len)), None)
            }
            Kind::Oversized | Kind::OversizedMultipart => (Body::Raw(Vec::new()), None),
            Kind::StartupLoop => (Body::Raw(self.startup_loop.clone()), None),
            Kind::WrongWorld => (Body::Raw(self.wrong_world.clone()), None),
            Kind::ForbiddenImport => (Body::Raw(self.forbidden_import.clone()), None),
        }
    }
}

async fn upload_malformed(api: &Api, key: &str, seed: u64, until: Instant, stats: &Mutex<Stats>) {
    let mut uploader = Uploader::new(seed);
    let mut i = seed % 20;
    while Instant::now() < until {
        let kind = Kind::nth(i);
        i += 1;
        let (body, generator) = uploader.make(kind);
        let request = api.request(Method::POST, "/v1/vendor/plugins", key);
        let request = match (kind, body) {
            (Kind::Oversized, _) => request
                .header("content-type", "application/wasm")
                .body(uploader.oversized.clone()),
            (Kind::OversizedMultipart, _) => {
                request.multipart(reqwest::multipart::Form::new().part(
                    "component",
                    reqwest::multipart::Part::bytes(uploader.oversized.clone()),
                ))
            }
            (_, Body::Raw(bytes)) => request
                .header("content-type", "application/wasm")
                .body(bytes),
            (_, Body::Multipart(bytes)) => request.multipart(
                reqwest::multipart::Form::new()
                    .part("component", reqwest::multipart::Part::bytes(bytes)),
            ),
        };
        let answer = Api::answer(request).await;
        let expected = expected_upload(kind);
        let mut s = stats.lock().unwrap();
        match generator {
            Some((generator, true)) => *s.generated.entry(generator).or_default() += 1,
            Some((generator, false)) => *s.generator_gave_up.entry(generator).or_default() += 1,
            None => {}
        }
        let outcome = match &answer {
            Ok((status, body)) => format!(
                "{status} {} ({})",
                body["code"].as_str().unwrap_or(""),
                refusal(body["message"].as_str().unwrap_or(""))
            ),
            Err(_) => "no answer".to_owned(),
        };
        let outcome = match &answer {
            // A flip may leave a valid classifier: the host then stores it as a version.
            Ok((201, _)) if kind == Kind::ByteFlipped => {
                s.flips_created += 1;
                "201 created (still valid)".to_owned()
            }
            Ok((200, _)) if kind == Kind::ByteFlipped => "200 existing (still valid)".to_owned(),
            Ok((status, body))
                if (*status, body["code"].as_str()) == (expected.0, Some(expected.1)) =>
            {
                outcome
            }
            _ => {
                note(&mut s.upload_wrong, format!("{}: {answer:?}", kind.label()));
                format!("{outcome} (wrong)")
            }
        };
        *s.uploads.entry((kind, outcome)).or_default() += 1;
    }
}

/// What a refusal's message says, in a few words (the messages of `UploadError`).
fn refusal(message: &str) -> &'static str {
    const REASONS: [(&str, &str); 10] = [
        ("larger than", "too large"),
        ("is empty", "empty"),
        ("not WebAssembly", "not wasm"),
        ("core WebAssembly module", "a core module"),
        ("not valid WebAssembly", "does not validate"),
        ("does not implement", "no classifier export"),
        ("does not match wit", "wrong export type"),
        ("which the host does not provide", "forbidden import"),
        ("describe() failed", "describe() failed"),
        ("describe() answer", "bad describe() answer"),
    ];
    REASONS
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or("other", |(_, reason)| reason)
}

/// Uploads new valid versions to the quiet host (`hostile-huge-output` with a custom section
/// naming each: the same code, new bytes): `NEW_VERSIONS_WARMUP`, then `NEW_VERSIONS` over
/// which the growth of its VmRSS is measured. Returns (versions created, growth in KiB).
async fn upload_new_versions(api: &Api, key: &str, pid: u32) -> (u64, i64) {
    let bytes = common::plugin("hostile_huge_output");
    let mut before = 0;
    for n in 0..NEW_VERSIONS_WARMUP + NEW_VERSIONS {
        if n == NEW_VERSIONS_WARMUP {
            before = status_kib(pid, "VmRSS").unwrap();
        }
        let (status, body) = Api::answer(
            api.request(Method::POST, "/v1/vendor/plugins", key)
                .header("content-type", "application/wasm")
                .body(common::variant(&bytes, &format!("new-version-{n}"))),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let after = status_kib(pid, "VmRSS").unwrap();
    (
        NEW_VERSIONS_WARMUP + NEW_VERSIONS,
        i64::try_from(after).unwrap() - i64::try_from(before).unwrap(),
    )
}

// ---- the monitor ---------------------------------------------------------------------------

/// Every 200 ms until the end: `/healthz` and `/readyz` must answer 200, and the host's
/// resident memory is sampled.
async fn monitor(api: &Api, pid: u32, started: Instant, until: Instant, stats: &Mutex<Stats>) {
    while Instant::now() < until {
        for path in ["/healthz", "/readyz"] {
            let answer = Api::answer(api.request(Method::GET, path, "")).await;
            let mut s = stats.lock().unwrap();
            s.health_checks += 1;
            match answer {
                Ok((200, _)) => {}
                other => note(
                    &mut s.health_failures,
                    format!(
                        "{path} at {:.1} s: {other:?}",
                        started.elapsed().as_secs_f64()
                    ),
                ),
            }
        }
        if let Some(rss) = status_kib(pid, "VmRSS") {
            let at = started.elapsed().as_secs_f64();
            stats.lock().unwrap().rss.push((at, rss));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- the audit -----------------------------------------------------------------------------

/// B's plugin calls as the audit log holds them: approval id → (plugin, cause) of each failed
/// call (a call that answered is recorded with the cause `answered`).
async fn audit_of_hostile_calls(api: &Api) -> HashMap<String, Vec<(String, String)>> {
    let mut calls: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for entry in audit_entries(api, "plugin_classified").await {
        let event = &entry["entry"]["event"];
        let cause = match event["result"]["type"].as_str() {
            Some("error") => event["result"]["code"].as_str().unwrap_or_default(),
            _ => "answered",
        };
        calls
            .entry(event["approval_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                event["plugin"].as_str().unwrap().to_owned(),
                cause.to_owned(),
            ));
    }
    calls
}

/// Every audit entry of vendor B of type `kind`, page by page.
async fn audit_entries(api: &Api, kind: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = None;
    loop {
        let mut path = format!("/v1/audit/entries?vendor={VENDOR_B}&type={kind}&limit=1000");
        if let Some(after) = after {
            write!(path, "&after={after}").unwrap();
        }
        let (status, mut page) = api.get(&path, ADMIN).await;
        assert_eq!(status, 200, "{page}");
        entries.append(page["entries"].as_array_mut().unwrap());
        match page["next_after"].as_u64() {
            Some(next) => after = Some(next),
            None => return entries,
        }
    }
}

/// Verifies the receipts of a sample of B's approvals (one per cause seen, and a few more) with
/// the log's published key alone, and checks that each holds its plugins' causes. Returns how
/// many were verified.
async fn check_receipts(api: &Api, calls: &[HostileCall]) -> u64 {
    let key = reqwest::get(format!("{}/.well-known/audit-log-key", api.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let verifier = CheckpointVerifier::new(key.trim()).unwrap();
    let mut seen = BTreeSet::new();
    let mut sample = Vec::new();
    for (n, call) in calls.iter().enumerate() {
        let new_cause = call.runs.iter().any(|(_, c)| !seen.contains(c));
        if new_cause || n % (calls.len() / 5).max(1) == 0 {
            seen.extend(call.runs.iter().map(|(_, c)| c.clone()));
            sample.push(call);
        }
    }
    for call in &sample {
        let (status, body) = api
            .get(&format!("/v1/approvals/{}/receipt", call.id), ADMIN)
            .await;
        assert_eq!(status, 200, "{body}");
        let receipt = Receipt::from_json(&body["receipt"].to_string()).unwrap();
        let mut recorded: Vec<(String, String)> = receipt
            .verify(&verifier)
            .unwrap()
            .into_iter()
            .filter_map(|entry| match entry.event {
                Event::PluginClassified {
                    plugin,
                    result: PluginOutcome::Error { code, .. },
                    ..
                } => Some((plugin, code)),
                _ => None,
            })
            .collect();
        let mut told = call.runs.clone();
        recorded.sort();
        told.sort();
        assert_eq!(recorded, told, "the receipt of {}", call.id);
    }
    sample.len() as u64
}

// ---- the report ----------------------------------------------------------------------------

struct Report<'a> {
    seconds: f64,
    uploaders: u64,
    seed: u64,
    stats: &'a Stats,
    audited: &'a HashMap<String, Vec<(String, String)>>,
    receipts: u64,
    /// B's plugin versions after the run, and its `plugin_uploaded` entries.
    versions: u64,
    upload_entries: u64,
    /// New valid versions uploaded after the load, and the VmRSS growth (KiB) over the last
    /// `NEW_VERSIONS` of them.
    new_versions: (u64, i64),
    /// VmRSS at the start and the end, and VmHWM, in KiB.
    rss: (u64, u64, u64),
    /// The compiled-plugin cache after the run: (files, bytes).
    cache: (u64, u64),
    log_bytes: usize,
}

impl Report<'_> {
    /// B's calls whose causes the audit log holds exactly as the agent was told.
    fn audited_calls(&self) -> (u64, Vec<String>) {
        let mut matched = 0;
        let mut missing = Vec::new();
        for call in &self.stats.hostile {
            let mut told = call.runs.clone();
            told.sort();
            let mut recorded = self.audited.get(&call.id).cloned().unwrap_or_default();
            recorded.sort();
            if told == recorded {
                matched += 1;
            } else {
                note(
                    &mut missing,
                    format!("{}: told {told:?}, audited {recorded:?}", call.id),
                );
            }
        }
        (matched, missing)
    }

    fn causes(&self) -> BTreeMap<(&str, &str), u64> {
        let mut causes = BTreeMap::new();
        for call in &self.stats.hostile {
            for (plugin, cause) in &call.runs {
                *causes.entry((plugin.as_str(), cause.as_str())).or_default() += 1;
            }
        }
        causes
    }

    /// (peak, mean of the first half, mean of the second half) of the sampled VmRSS, in KiB.
    /// The halves are those of the run after its first quarter, the warm-up, in which the pool
    /// of plugin memories, the database's caches and the allocator's arenas fill.
    fn rss_profile(&self) -> (u64, u64, u64) {
        let peak = self.stats.rss.iter().map(|s| s.1).max().unwrap_or(0);
        let samples = &self.stats.rss[self.stats.rss.len() / 4..];
        let half = samples.len() / 2;
        let mean = |part: &[(f64, u64)]| {
            part.iter().map(|s| s.1).sum::<u64>() / (part.len().max(1) as u64)
        };
        (peak, mean(&samples[..half]), mean(&samples[half..]))
    }

    fn markdown(&self) -> String {
        let s = self.stats;
        let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
        let (peak, first, second) = self.rss_profile();
        let (audited, _) = self.audited_calls();
        let hostile_calls: usize = s.hostile.iter().map(|c| c.runs.len()).sum();
        let uploads: u64 = s.uploads.values().sum();
        let refused: u64 = s
            .uploads
            .iter()
            .filter(|((_, outcome), _)| outcome.starts_with('4'))
            .map(|(_, n)| n)
            .sum();
        let generated: u64 = s.generated.values().sum();
        let mut md = String::new();
        writeln!(
            md,
            "The real `approval-host serve` on SQLite under {:.0} s of load: honest vendor A's 3 devices \
             (example plugin `velocity`) and C's 2 (no plugin) asking for decisions whose answers are known, \
             hostile vendor B's 2 devices whose every request runs 7 active hostile plugins (loop, memory bomb, \
             recursion, trap, 8 MiB verdict, sleep, undeclared rule; fail mode deny), and {} uploader(s) of B \
             sending malformed, oversized and wasm-smith-generated components without pause (seed {:#x}). \
             Every honest decision was checked, every failed hostile call looked up in the audit log, \
             receipts of a sample verified with the log's key alone; `/healthz` and `/readyz` polled and the \
             host's VmRSS sampled every 200 ms.\n",
            self.seconds, self.uploaders, self.seed
        )
        .unwrap();
        md.push_str("| what | count |\n| --- | --- |\n");
        for (who, n) in &s.requests {
            writeln!(md, "| requests of vendor {who:?} | {n} |").unwrap();
        }
        writeln!(
            md,
            "| honest decisions checked / correct | {} / {} |",
            s.honest_checked, s.honest_correct
        )
        .unwrap();
        for (case, n) in &s.honest_by_case {
            writeln!(md, "| — {case} | {n} |").unwrap();
        }
        writeln!(
            md,
            "| B's requests answered `denied` by `plugin.failed`, each naming its 7 plugins' causes | {} |",
            s.hostile.len()
        )
        .unwrap();
        writeln!(
            md,
            "| hostile plugin calls (every one run: the plugin breaker is off), all failed | {hostile_calls} |"
        )
        .unwrap();
        for ((plugin, cause), n) in self.causes() {
            writeln!(md, "| — {plugin}: `{cause}` | {n} |").unwrap();
        }
        writeln!(
            md,
            "| B's requests whose every failure the audit log holds with the same cause | {audited} |"
        )
        .unwrap();
        writeln!(
            md,
            "| receipts verified offline (sample) | {} |",
            self.receipts
        )
        .unwrap();
        writeln!(
            md,
            "| uploads / refused with a 4xx | {uploads} / {refused} |"
        )
        .unwrap();
        for ((kind, outcome), n) in &s.uploads {
            writeln!(md, "| — {}: {outcome} | {n} |", kind.label()).unwrap();
        }
        writeln!(md, "| generated components uploaded | {generated} |").unwrap();
        for (generator, n) in &s.generated {
            writeln!(md, "| — {generator} | {n} |").unwrap();
        }
        for (generator, n) in &s.generator_gave_up {
            writeln!(
                md,
                "| — {generator}: the generator gave up (a bare header was uploaded) | {n} |"
            )
            .unwrap();
        }
        writeln!(
            md,
            "| B's plugin versions after the run (7 + byte flips that stayed valid: {} + new versions: {}) / `plugin_uploaded` entries | {} / {} |",
            s.flips_created, self.new_versions.0, self.versions, self.upload_entries
        )
        .unwrap();
        writeln!(
            md,
            "| host VmRSS growth over {NEW_VERSIONS} new valid versions uploaded after the load (after {NEW_VERSIONS_WARMUP} to warm up) | {:+.1} MiB |",
            self.new_versions.1 as f64 / 1024.0
        )
        .unwrap();
        writeln!(
            md,
            "| `/healthz` + `/readyz` checks / failures | {} / {} |",
            s.health_checks,
            s.health_failures.len()
        )
        .unwrap();
        writeln!(
            md,
            "| host VmRSS at start / peak / end (VmHWM) | {} / {} / {} ({}) |",
            mib(self.rss.0),
            mib(peak),
            mib(self.rss.1),
            mib(self.rss.2)
        )
        .unwrap();
        writeln!(
            md,
            "| host VmRSS mean, first / second half of the run after its first quarter | {} / {} |",
            mib(first),
            mib(second)
        )
        .unwrap();
        let tenths: Vec<String> = s
            .rss
            .chunks(s.rss.len().div_ceil(10).max(1))
            .map(|part| mib(part.iter().map(|s| s.1).max().unwrap_or(0)))
            .collect();
        writeln!(
            md,
            "| host VmRSS peak by tenth of the run | {} |",
            tenths.join(" → ")
        )
        .unwrap();
        writeln!(
            md,
            "| compiled-plugin cache on disk after the run, for {} stored versions of all vendors (refused uploads' code is cached too) | {} files, {} |",
            self.versions + 1,
            self.cache.0,
            mib(self.cache.1 / 1024)
        )
        .unwrap();
        writeln!(md, "| host log | {} KiB, no panic |", self.log_bytes / 1024).unwrap();
        let wrong = s.honest_wrong.len() + s.hostile_wrong.len() + s.upload_wrong.len();
        writeln!(
            md,
            "\nNothing lost: {} wrong answers, {} health failures, no 5xx.",
            wrong,
            s.health_failures.len()
        )
        .unwrap();
        md
    }

    fn assert_all(&self) {
        let s = self.stats;
        assert!(
            s.honest_wrong.is_empty(),
            "honest decisions were wrong:\n{}",
            s.honest_wrong.join("\n")
        );
        assert!(s.honest_checked > 0 && s.honest_checked == s.honest_correct);
        assert!(
            s.hostile_wrong.is_empty(),
            "B's requests got unclear answers:\n{}",
            s.hostile_wrong.join("\n")
        );
        assert!(!s.hostile.is_empty(), "no hostile request got through");
        let (_, missing) = self.audited_calls();
        assert!(
            missing.is_empty(),
            "failed plugin calls the audit log does not hold with their cause:\n{}",
            missing.join("\n")
        );
        assert!(
            s.upload_wrong.is_empty(),
            "malformed uploads were not refused with a 4xx and a stable code:\n{}",
            s.upload_wrong.join("\n")
        );
        assert_eq!(
            self.versions,
            HOSTILE.len() as u64 + s.flips_created + self.new_versions.0,
            "a refused upload created a plugin version"
        );
        assert_eq!(self.upload_entries, self.versions);
        assert!(
            s.health_failures.is_empty(),
            "the host did not answer its health checks:\n{}",
            s.health_failures.join("\n")
        );
        assert!(
            self.new_versions.1 < (NEW_VERSIONS_GROWTH_MIB << 10) as i64,
            "{NEW_VERSIONS} new plugin versions, none of them live, grew the host's resident \
             memory by {} MiB",
            self.new_versions.1 >> 10
        );
        let (peak, first, second) = self.rss_profile();
        assert!(
            peak < RSS_BOUND_MIB << 10,
            "the host's resident memory reached {} MiB",
            peak >> 10
        );
        // Steady growth (memory kept per request or per upload) shows as a second half well
        // above the first; the warm-up is left out, and the allocator's arenas and wasmtime's
        // compiler caches, which fill slowly over tens of thousands of compilations, stay
        // within the margin.
        assert!(
            second <= first + first / 4 + (32 << 10),
            "the host's resident memory grew from a mean of {} MiB in the first half of the run \
             (after its first quarter) to {} MiB in the second",
            first >> 10,
            second >> 10
        );
    }
}
