//! Fuzzing (issue 8): generated and mutated inputs for every JSON body and query parameter of the
//! API (the table below is checked against `/openapi.json`), the MCP endpoint, path ids and
//! credentials; and, in the library, the canonical params encoding, the audit entry decoding, the
//! signed-note checkpoint parser, receipts and exports, and the WIT verdict lifted from plugins.
//!
//! Over HTTP no input may get a 5xx, drop the connection (what a panicking handler does) or go
//! unanswered (a hang); every 4xx is JSON with a stable `code` and a message, and the host still
//! answers `/healthz` after each target. Library functions may only return their typed errors,
//! and their results must keep their properties (one encoding per entry, no forged checkpoint,
//! receipt or export verifies, equal params hash equally). A panic fails the property, and a run
//! that does not end names the input it was on.
//!
//! Cases come from proptest with a new random seed on every run; a failing case is shrunk,
//! printed and written to the report (`target/reliability-report/fuzz.md`) before the test fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use approval_host::audit::checkpoint::{CheckpointVerifier, LogKey};
use approval_host::audit::entry::{self, DecodeError, Entry, Event, MAX_ENTRY_LEN, PluginOutcome};
use approval_host::audit::merkle::{self, HashCache, TreeOp};
use approval_host::audit::verify::{FORMAT, verify_export};
use approval_host::audit::{Receipt, ReceiptEntry};
use approval_host::canonical::{CanonicalError, canonical_bytes, params_hash};
use approval_host::clock::{Clock as _, ManualClock};
use approval_host::plugin::contract::{self, lifting};
use approval_host::plugin::{Fault, PluginError, PluginLimits, UploadError};
use approval_host::risk::{self, Action, Decision, Money, RiskRequest};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{ADMIN, TestDb, TestHost};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

// ---- the report ----------------------------------------------------------------------------

/// What one target saw.
#[derive(Debug, Default, Clone)]
struct Figures {
    executions: u64,
    /// Outcome (a status and error code, or a library result) and how often it came.
    outcomes: BTreeMap<String, u64>,
    /// Each failure with its minimal input.
    failures: Vec<String>,
    seconds: f64,
}

impl Figures {
    /// Counts one execution's outcome; a failure is also listed, described by `what`.
    fn note(&mut self, outcome: Result<String, String>, what: impl FnOnce(String) -> String) {
        match outcome {
            Ok(o) => *self.outcomes.entry(o).or_default() += 1,
            Err(e) => {
                *self.outcomes.entry("FAILED".into()).or_default() += 1;
                self.failures.push(what(e));
            }
        }
    }
}

/// Sends `request`: its status and error `code`, or why the answer is not a JSON error (the
/// start of its body, at most `max` bytes, quoted), or that none came.
async fn coded_answer(
    request: reqwest::RequestBuilder,
    max: usize,
) -> Result<(u16, String), String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    error_code(&bytes).map(|code| (status, code)).map_err(|e| {
        format!(
            "{status} {e}: {}",
            shortened(&String::from_utf8_lossy(&bytes), max)
        )
    })
}

/// The groups of targets, in report order.
const GROUPS: [&str; 3] = ["library", "HTTP, SQLite", "HTTP, PostgreSQL"];

/// Every target's figures so far, by (group, order, name): each test adds its own and rewrites
/// the report, so the last test to finish writes all of them.
static REPORT: Mutex<BTreeMap<(usize, usize, String), Figures>> = Mutex::new(BTreeMap::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn publish(group: &str, order: usize, target: &str, figures: &Figures) {
    let group = GROUPS
        .iter()
        .position(|g| *g == group)
        .unwrap_or(GROUPS.len());
    let mut all = lock(&REPORT);
    all.insert((group, order, target.to_owned()), figures.clone());
    common::report::write("fuzz", &render(&all));
}

fn render(all: &BTreeMap<(usize, usize, String), Figures>) -> String {
    let executions: u64 = all.values().map(|f| f.executions).sum();
    let failures: Vec<&String> = all.values().flat_map(|f| &f.failures).collect();
    let mut out = format!(
        "Fuzzing (`tests/fuzz.rs`, proptest, a new random seed each run): {} targets, \
         {executions} executions.\n\n\
         Each HTTP target sends generated and mutated inputs to one endpoint of a real host \
         with a vendor, an actor with a guardian, an active plugin and a pending approval: \
         random JSON; valid bodies with fields dropped or added, wrong types, huge, negative \
         and fractional numbers, deep nesting, long, unicode and NUL strings; corrupted text \
         and invalid UTF-8; wrong content types; random query strings, path ids and \
         credentials. A failure is a 5xx, a dropped connection (a panicking handler), no \
         answer within {HANG_SECONDS} s (a hang), or a 4xx without a JSON `code` and \
         `message`; `/healthz` is checked after every target. Library targets call the \
         parsers and encoders directly; a failure is a panic, a broken property or a run \
         that does not end.\n\n",
        all.len()
    );
    if failures.is_empty() {
        out.push_str(
            "Found: nothing. No input got a 5xx, panicked, hung or broke a property; \
             nothing lost.\n\n",
        );
    } else {
        out.push_str(&format!(
            "Found: {} failure(s), listed under the table.\n\n",
            failures.len()
        ));
    }
    out.push_str(
        "| group | target | executions | seconds | outcomes (most frequent first) | failures |\n",
    );
    out.push_str("| --- | --- | ---: | ---: | --- | ---: |\n");
    for ((group, _, target), figures) in all {
        let mut outcomes: Vec<(&String, &u64)> = figures.outcomes.iter().collect();
        outcomes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = outcomes
            .iter()
            .take(8)
            // (A count of 0 marks a note, such as a tool's version.)
            .map(|(o, n)| match n {
                0 => o.replace('|', "/"),
                n => format!("{} ×{n}", o.replace('|', "/")),
            })
            .collect();
        let more = outcomes.len().saturating_sub(8);
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {}{} | {} |\n",
            GROUPS.get(*group).unwrap_or(&"other"),
            target.replace('|', "/"),
            figures.executions,
            figures.seconds,
            shown.join(", "),
            if more > 0 {
                format!(", and {more} more")
            } else {
                String::new()
            },
            figures.failures.len()
        ));
    }
    for failure in failures {
        out.push_str(&format!("\n- {}\n", failure.replace('\n', " ")));
    }
    out
}

// ---- running properties -----------------------------------------------------------------------

/// Runs `cases` inputs of `strategy` through `check`, which names the outcome or says what is
/// wrong. A failing input is shrunk to a minimal one (shrinking runs count as executions).
/// `current` holds the input being checked, for the watchdog.
fn fuzz<S>(
    cases: u64,
    strategy: &S,
    current: &Mutex<String>,
    check: impl Fn(&S::Value) -> Result<String, String>,
) -> Figures
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let started = Instant::now();
    let figures = Mutex::new(Figures::default());
    let mut runner = TestRunner::new(Config {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        failure_persistence: None,
        max_shrink_iters: 256,
        max_shrink_time: 60_000,
        ..Config::default()
    });
    let result = runner.run(strategy, |input| {
        *lock(current) = shortened(&format!("{input:?}"), 4_000);
        lock(&figures).executions += 1;
        let outcome = check(&input);
        let mut figures = lock(&figures);
        match outcome {
            Ok(outcome) => {
                *figures.outcomes.entry(outcome).or_default() += 1;
                Ok(())
            }
            Err(problem) => {
                *figures.outcomes.entry("FAILED".to_owned()).or_default() += 1;
                Err(TestCaseError::fail(problem))
            }
        }
    });
    let mut figures = figures.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = result {
        let text = shortened(&e.to_string(), 6_000);
        eprintln!("fuzz failure: {text}");
        figures.failures.push(text);
    }
    figures.seconds = started.elapsed().as_secs_f64();
    figures
}

fn shortened(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Runs `work` on a thread of its own and waits at most `bound` for it (a bound for a broken
/// test, not a timing claim): a call that never returns is a hang, named by its input.
fn watched<T: Send + 'static>(
    name: &str,
    bound: Duration,
    work: impl FnOnce(Arc<Mutex<String>>) -> T + Send + 'static,
) -> T {
    let current = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let slot = Arc::clone(&current);
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(64 << 20)
        .spawn(move || {
            let _ = tx.send(work(slot));
        })
        .unwrap();
    match rx.recv_timeout(bound) {
        Ok(out) => out,
        Err(RecvTimeoutError::Timeout) => {
            let failure = format!(
                "{name}: no end within {bound:?}: a hang on input {}",
                lock(&current)
            );
            publish(
                "library",
                99,
                name,
                &Figures {
                    failures: vec![failure.clone()],
                    ..Figures::default()
                },
            );
            panic!("{failure}");
        }
        Err(RecvTimeoutError::Disconnected) => panic!("{name}: the fuzzing thread died"),
    }
}

/// Runs library targets under the watchdog, reports them and fails on any failure.
fn library(
    name: &'static str,
    order: usize,
    work: impl FnOnce(&Mutex<String>) -> Vec<(&'static str, Figures)> + Send + 'static,
) {
    let bound = Duration::from_secs(common::report::scale(300, 7_200));
    let results = watched(name, bound, move |current| work(&current));
    let mut failures = Vec::new();
    for (n, (target, figures)) in results.iter().enumerate() {
        publish("library", order * 10 + n, target, figures);
        failures.extend(figures.failures.iter().cloned());
        eprintln!(
            "{target}: {} executions in {:.1} s, outcomes {:?}",
            figures.executions, figures.seconds, figures.outcomes
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---- generated JSON ---------------------------------------------------------------------------

/// Field names of the API's bodies and of the library's formats, so that random objects often
/// name a real field.
const FIELDS: &str = "action params amount currency recipient merchant_category \
    idempotency_key provenance surface tool decision reason id name guardians context_tags \
    issue_token url spend_thresholds mint_ratio_percent CNY triggers ttl_seconds default \
    plugin_limits deadline_ms fuel memory_bytes override_bounds min max settings \
    max_approval_requests_per_hour plugin_fail_mode sensitive_categories service category \
    namespace key capability requested_scope parent_scope jsonrpc method arguments approval_id \
    wait_seconds v at_ms event type index entry proof checkpoint leaf payload bytes";

/// Strings of every kind: short words, arbitrary unicode, control characters and NUL, long runs.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        5 => "[a-z0-9._@-]{0,12}",
        3 => any::<String>(),
        1 => prop::collection::vec(prop::char::range('\0', '\u{1f}'), 0..6)
            .prop_map(String::from_iter),
        1 => (any::<char>(), 200..20_000usize).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => prop::sample::select(&[
            "\0",
            "\u{feff}\u{202e}\u{1F600}\u{10FFFF}",
            "\"\\/\u{7f}\u{2028}\u{2029}",
            "guardian-mom",
            "teddy-7",
            "payment",
            "approve",
            "CNY",
            " ",
        ][..])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Numbers of every kind JSON holds: integers to the ends of both 64-bit ranges, fractions,
/// the largest and smallest doubles, negative zero.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (0..100_000u64).prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        2 => any::<u64>().prop_map(Value::from),
        2 => any::<f64>().prop_filter_map("a finite double", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        1 => prop::sample::select(
            &[0.0, -0.0, 0.5, -1.5, 1e21, 1e308, -1e308, 5e-324, 9_007_199_254_740_993.0][..]
        )
        .prop_map(|f| json!(f)),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(FIELDS.split(' ').collect::<Vec<_>>()).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Any JSON object.
fn json_object() -> BoxedStrategy<Value> {
    prop::collection::btree_map(key(), json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .boxed()
}

/// A value at the edge of what a field expects.
#[derive(Debug, Clone)]
enum Edge {
    MaxU64,
    MinI64,
    Negative,
    Fraction,
    Huge,
    Tiny,
    MinusZero,
    Deep(u16),
    Long(char, u16),
    Unicode,
    Nul,
    Empty,
    EmptyObject,
    EmptyArray,
    Null,
    True,
    NumberAsText,
}

fn edge() -> BoxedStrategy<Edge> {
    prop_oneof![
        Just(Edge::MaxU64),
        Just(Edge::MinI64),
        Just(Edge::Negative),
        Just(Edge::Fraction),
        Just(Edge::Huge),
        Just(Edge::Tiny),
        Just(Edge::MinusZero),
        (1..400u16).prop_map(Edge::Deep),
        (any::<char>(), 1..20_000u16).prop_map(|(c, n)| Edge::Long(c, n)),
        Just(Edge::Unicode),
        Just(Edge::Nul),
        Just(Edge::Empty),
        prop_oneof![
            Just(Edge::EmptyObject),
            Just(Edge::EmptyArray),
            Just(Edge::Null),
            Just(Edge::True),
            Just(Edge::NumberAsText),
        ],
    ]
    .boxed()
}

impl Edge {
    fn value(&self, old: &Value) -> Value {
        match self {
            Edge::MaxU64 => json!(u64::MAX),
            Edge::MinI64 => json!(i64::MIN),
            Edge::Negative => json!(-old.as_f64().unwrap_or(1.0).abs().max(1.0)),
            Edge::Fraction => json!(old.as_f64().unwrap_or(0.0) + 0.5),
            Edge::Huge => json!(1e308),
            Edge::Tiny => json!(5e-324),
            Edge::MinusZero => json!(-0.0),
            Edge::Deep(depth) => (0..*depth).fold(old.clone(), |v, _| json!([v])),
            Edge::Long(c, n) => json!(c.to_string().repeat(usize::from(*n))),
            Edge::Unicode => json!(format!(
                "{}\u{202e}\u{1F600}\u{10FFFF}",
                old.as_str().unwrap_or("x")
            )),
            Edge::Nul => json!(format!("{}\0", old.as_str().unwrap_or(""))),
            Edge::Empty => json!(""),
            Edge::EmptyObject => json!({}),
            Edge::EmptyArray => json!([]),
            Edge::Null => Value::Null,
            Edge::True => json!(true),
            Edge::NumberAsText => json!(old.to_string()),
        }
    }
}

/// A structural change to a JSON value; the `u16` picks a node (in pre-order, modulo the count).
#[derive(Debug, Clone)]
enum Mutation {
    Drop(u16),
    Replace(u16, Value),
    Edge(u16, Edge),
    Add(u16, String, Value),
    Wrap(u16),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        3 => any::<u16>().prop_map(Mutation::Drop),
        2 => (any::<u16>(), json_value()).prop_map(|(n, v)| Mutation::Replace(n, v)),
        4 => (any::<u16>(), edge()).prop_map(|(n, e)| Mutation::Edge(n, e)),
        2 => (any::<u16>(), key(), json_value()).prop_map(|(n, k, v)| Mutation::Add(n, k, v)),
        1 => any::<u16>().prop_map(Mutation::Wrap),
    ]
    .boxed()
}

/// The JSON pointers of every node of `value`, in pre-order.
fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: &str, out: &mut Vec<String>) {
        out.push(at.to_owned());
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let escaped = k.replace('~', "~0").replace('/', "~1");
                    walk(v, &format!("{at}/{escaped}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out
}

fn pick(pointers: &[String], n: u16) -> &str {
    &pointers[usize::from(n) % pointers.len()]
}

/// `value` with `mutations` applied in order.
fn mutate(mut value: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        let all = pointers(&value);
        match m {
            Mutation::Drop(n) => {
                if all.len() < 2 {
                    continue;
                }
                let at = pick(&all[1..], *n).to_owned();
                let (parent, last) = at.rsplit_once('/').unwrap_or(("", &at));
                let last = last.replace("~1", "/").replace("~0", "~");
                match value.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>()
                            && i < items.len()
                        {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
            Mutation::Replace(n, new) => {
                if let Some(node) = value.pointer_mut(pick(&all, *n)) {
                    *node = new.clone();
                }
            }
            Mutation::Edge(n, edge) => {
                if let Some(node) = value.pointer_mut(pick(&all, *n)) {
                    *node = edge.value(node);
                }
            }
            Mutation::Add(n, k, v) => {
                if let Some(node) = value.pointer_mut(pick(&all, *n)) {
                    match node {
                        Value::Object(map) => {
                            map.insert(k.clone(), v.clone());
                        }
                        other => *other = json!({ k.clone(): v.clone() }),
                    }
                }
            }
            Mutation::Wrap(n) => {
                if let Some(node) = value.pointer_mut(pick(&all, *n)) {
                    *node = json!([node.take()]);
                }
            }
        }
    }
    value
}

/// Byte snippets that break JSON text in interesting ways.
const SNIPPETS: &[&[u8]] = &[
    b"\\u0000",
    b"\\ud800",
    b"\\udc00\\ud800",
    b"1e999",
    b"-",
    b"NaN",
    b"Infinity",
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\0",
    b",",
    b"{",
    b"}",
    b"]",
    b"\"",
    b"\\",
    b"/*x*/",
    b"\xef\xbb\xbf",
    b" \n\t",
    b"00",
    b"+1",
    b"1.0e+",
    b"null",
];

/// A change to JSON text.
#[derive(Debug, Clone)]
enum Garble {
    Truncate(u16),
    Insert(u16, &'static [u8]),
    Delete(u16, u8),
    Flip(u16, u8),
    DuplicateFirstKey,
    Prefix(&'static [u8]),
    Suffix(&'static [u8]),
}

fn garbling() -> BoxedStrategy<Garble> {
    let snippet = || prop::sample::select(SNIPPETS);
    prop_oneof![
        any::<u16>().prop_map(Garble::Truncate),
        (any::<u16>(), snippet()).prop_map(|(at, s)| Garble::Insert(at, s)),
        (any::<u16>(), 1..8u8).prop_map(|(at, n)| Garble::Delete(at, n)),
        (any::<u16>(), 1..=255u8).prop_map(|(at, x)| Garble::Flip(at, x)),
        Just(Garble::DuplicateFirstKey),
        snippet().prop_map(Garble::Prefix),
        snippet().prop_map(Garble::Suffix),
    ]
    .boxed()
}

fn garble(mut bytes: Vec<u8>, garbles: &[Garble]) -> Vec<u8> {
    for g in garbles {
        let at = |n: u16| usize::from(n) % (bytes.len() + 1);
        match g {
            Garble::Truncate(n) => bytes.truncate(at(*n)),
            Garble::Insert(n, s) => {
                let i = at(*n);
                bytes.splice(i..i, s.iter().copied());
            }
            Garble::Delete(n, len) => {
                let i = at(*n);
                let end = (i + usize::from(*len)).min(bytes.len());
                bytes.drain(i..end);
            }
            Garble::Flip(n, x) => {
                if !bytes.is_empty() {
                    let i = usize::from(*n) % bytes.len();
                    bytes[i] ^= x;
                }
            }
            Garble::DuplicateFirstKey => {
                let first = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.as_object().and_then(|m| m.keys().next().cloned()));
                if let (Some(k), Some(b'{')) = (first, bytes.first()) {
                    let dup = format!("{}:1,", json!(k));
                    bytes.splice(1..1, dup.into_bytes());
                }
            }
            Garble::Prefix(s) => {
                bytes.splice(0..0, s.iter().copied());
            }
            Garble::Suffix(s) => bytes.extend_from_slice(s),
        }
    }
    bytes
}

/// Variations on a valid document: itself, structurally mutated, replaced by random JSON,
/// corrupted as text, random bytes, nesting far deeper than any parser allows.
fn json_bytes(valid: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    let to_vec = |v: &Value| serde_json::to_vec(v).unwrap();
    prop_oneof![
        3 => valid.clone().prop_map(move |v| to_vec(&v)),
        5 => (valid.clone(), prop::collection::vec(mutation(), 1..4))
            .prop_map(move |(v, m)| to_vec(&mutate(v, &m))),
        1 => json_value().prop_map(move |v| to_vec(&v)),
        2 => (valid, prop::collection::vec(garbling(), 1..4))
            .prop_map(move |(v, g)| garble(to_vec(&v), &g)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (1..100_000usize, prop::sample::select(&["[", "{\"a\":", "[{\"params\":"][..]))
            .prop_map(|(n, open)| open.repeat(n).into_bytes()),
    ]
    .boxed()
}

// ---- library: the canonical params encoding --------------------------------------------------

/// `value` written as JSON text with its object members in another order, whitespace between
/// tokens, some characters escaped and whole numbers spelled as decimals: the same params.
fn respell(value: &Value, seed: u64, out: &mut String) {
    let mut bits = seed;
    let mut next = |n: u64| {
        bits = bits
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (bits >> 33) % n
    };
    fn string(s: &str, escape_all: bool, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if escape_all => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn go(value: &Value, next: &mut dyn FnMut(u64) -> u64, out: &mut String) {
        let space = |next: &mut dyn FnMut(u64) -> u64, out: &mut String| {
            out.push_str([" ", "", "\n", "\t ", ""][usize::try_from(next(5)).unwrap_or(0)]);
        };
        space(next, out);
        match value {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                for i in (1..members.len()).rev() {
                    let j = usize::try_from(next(i as u64 + 1)).unwrap_or(0);
                    members.swap(i, j);
                }
                out.push('{');
                for (n, (k, v)) in members.into_iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    space(next, out);
                    string(k, next(3) == 0, out);
                    space(next, out);
                    out.push(':');
                    go(v, next, out);
                }
                space(next, out);
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (n, v) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    go(v, next, out);
                }
                out.push(']');
            }
            Value::String(s) => string(s, next(3) == 0, out),
            Value::Number(n) if n.is_f64() => match (n.as_f64(), next(2)) {
                // The same double in exponent notation (its shortest digits).
                (Some(f), 0) => out.push_str(&format!("{f:e}")),
                _ => out.push_str(&n.to_string()),
            },
            Value::Number(n) => match n.as_u64() {
                // Exactly representable whole numbers, spelled as decimals or with an exponent.
                Some(u) if u < (1 << 53) => match next(3) {
                    0 => out.push_str(&format!("{u}.0")),
                    1 if u % 10 == 0 && u > 0 => out.push_str(&format!("{}e1", u / 10)),
                    _ => out.push_str(&u.to_string()),
                },
                _ => out.push_str(&n.to_string()),
            },
            other => out.push_str(&other.to_string()),
        }
        space(next, out);
    }
    go(value, &mut next, out);
}

/// The first leaf (or member) of `value` at or after node `n`, changed to a value whose
/// canonical form differs.
fn changed(mut value: Value, n: u16) -> Value {
    let all = pointers(&value);
    let at = pick(&all, n).to_owned();
    let node = value.pointer_mut(&at).unwrap();
    *node = match node.take() {
        Value::Null => json!(false),
        Value::Bool(b) => json!(!b),
        Value::Number(n) => json!(format!("{n}")),
        Value::String(s) => json!(format!("{s}x")),
        Value::Array(mut items) => {
            items.push(Value::Null);
            Value::Array(items)
        }
        Value::Object(mut map) => {
            let mut k = String::from("added");
            while map.contains_key(&k) {
                k.push('_');
            }
            map.insert(k, Value::Null);
            Value::Object(map)
        }
    };
    value
}

#[test]
fn canonical_params_encoding() {
    library("canonical", 1, |current| {
        let cases = common::report::scale(1_000, 50_000);
        let any_value = fuzz(cases, &json_value(), current, |v| {
            let hashed = params_hash(v);
            match (v.is_object(), hashed) {
                (false, Err(CanonicalError::NotAnObject)) => Ok("not an object".into()),
                (true, Ok(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    // The canonical form is a fixed point: read back and canonicalized again,
                    // the same bytes.
                    let bytes = canonical_bytes(v).map_err(|e| e.to_string())?;
                    let again: Value =
                        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable: {e}"))?;
                    if canonical_bytes(&again).map_err(|e| e.to_string())? != bytes {
                        return Err("the canonical form is not a fixed point".into());
                    }
                    Ok("hashed".into())
                }
                (true, Err(CanonicalError::Unrepresentable(_))) => Ok("unrepresentable".into()),
                (object, other) => Err(format!("object: {object}, hash: {other:?}")),
            }
        });
        let spellings = (json_object(), any::<u64>());
        let respelled = fuzz(cases, &spellings, current, |(v, seed)| {
            let mut text = String::new();
            respell(v, *seed, &mut text);
            let read: Value =
                serde_json::from_str(&text).map_err(|e| format!("{text:?} unreadable: {e}"))?;
            let (a, b) = (params_hash(v), params_hash(&read));
            if a == b {
                Ok("same hash".into())
            } else {
                Err(format!("{text:?} hashes to {b:?}, not {a:?}"))
            }
        });
        let changes = (
            json_object().prop_filter("a member", |v| !v.as_object().unwrap().is_empty()),
            any::<u16>(),
        );
        let changed_value = fuzz(cases, &changes, current, |(v, n)| {
            let other = changed(v.clone(), *n);
            match (params_hash(v), params_hash(&other)) {
                (Ok(a), Ok(b)) if a != b => Ok("different hash".into()),
                (Err(e), _) | (_, Err(e)) => Ok(format!("error {e}")),
                (Ok(a), Ok(_)) => Err(format!("{other} hashes like the original: {a}")),
            }
        });
        vec![
            ("params_hash: any JSON value", any_value),
            ("params_hash: the same params respelled", respelled),
            ("params_hash: a value changed", changed_value),
        ]
    });
}

// ---- library: audit entries -------------------------------------------------------------------

fn entry_text() -> BoxedStrategy<String> {
    prop_oneof![
        5 => "[a-z0-9_.-]{0,16}",
        2 => any::<String>(),
        1 => prop::collection::vec(prop::char::range('\0', '\u{1f}'), 0..6)
            .prop_map(String::from_iter),
        1 => Just("\"\\/\u{7f}\u{2028}\u{2029}\u{feff}\0".to_owned()),
    ]
    .boxed()
}

fn event() -> BoxedStrategy<Event> {
    let t = entry_text;
    let opt = || prop::option::of(entry_text());
    let outcome = prop_oneof![
        (t(), t(), t()).prop_map(|(decision, rule_id, reason)| PluginOutcome::Verdict {
            decision,
            rule_id,
            reason
        }),
        (t(), t()).prop_map(|(code, message)| PluginOutcome::Error { code, message }),
    ];
    prop_oneof![
        ((t(), t(), t(), t(), t()), (opt(), t(), opt(), any::<u32>())).prop_map(
            |((approval_id, vendor, actor, action, params_hash), (key, surface, tool, version))| {
                Event::RequestReceived {
                    approval_id,
                    vendor,
                    actor,
                    action,
                    params_hash,
                    idempotency_key: key,
                    surface,
                    tool,
                    policy_version: version,
                }
            }
        ),
        (
            (t(), t(), t(), t(), any::<u32>(), t(), any::<bool>()),
            (outcome, any::<u64>(), any::<u64>())
        )
            .prop_map(
                |(
                    (approval_id, vendor, actor, plugin, plugin_version, sha256, shadow),
                    (result, fuel_used, wall_time_us),
                )| Event::PluginClassified {
                    approval_id,
                    vendor,
                    actor,
                    plugin,
                    plugin_version,
                    sha256,
                    shadow,
                    result,
                    fuel_used,
                    wall_time_us,
                }
            ),
        (t(), t(), t(), t(), t(), t()).prop_map(
            |(approval_id, vendor, actor, rule_id, decision, reason)| Event::RuleFired {
                approval_id,
                vendor,
                actor,
                rule_id,
                decision,
                reason
            }
        ),
        (
            (t(), t(), t(), t(), t()),
            (
                opt(),
                opt(),
                opt(),
                opt(),
                opt(),
                opt(),
                prop::option::of(any::<u64>())
            )
        )
            .prop_map(
                |(
                    (approval_id, vendor, actor, status, method),
                    (decider, rule_id, reason, guardian_reason, granted, token_id, expires),
                )| Event::Decided {
                    approval_id,
                    vendor,
                    actor,
                    status,
                    method,
                    decider,
                    rule_id,
                    reason,
                    guardian_reason_sha256: guardian_reason,
                    granted_params_hash: granted,
                    token_id,
                    expires_at_ms: expires,
                }
            ),
        (t(), t(), t(), any::<u32>(), any::<u64>()).prop_map(
            |(approval_id, vendor, actor, limit, retry_after_ms)| Event::RateLimited {
                approval_id,
                vendor,
                actor,
                limit,
                retry_after_ms
            }
        ),
        (t(), any::<u32>(), t(), t()).prop_map(|(vendor, version, changed_by, document)| {
            Event::PolicyChanged {
                vendor,
                version,
                changed_by,
                document_sha256: document,
            }
        }),
        (t(), t(), any::<u32>(), t(), t()).prop_map(
            |(vendor, actor, version, changed_by, document)| Event::OverridesChanged {
                vendor,
                actor,
                version,
                changed_by,
                document_sha256: document,
            }
        ),
        (
            (t(), t(), any::<u32>(), t()),
            (
                any::<u64>(),
                any::<bool>(),
                prop::collection::vec(t(), 0..4)
            )
        )
            .prop_map(
                |((vendor, plugin, plugin_version, sha256), (size_bytes, signed, rules))| {
                    Event::PluginUploaded {
                        vendor,
                        plugin,
                        plugin_version,
                        sha256,
                        size_bytes,
                        signed,
                        rules,
                    }
                }
            ),
        (t(), t(), any::<u32>(), t()).prop_map(|(vendor, plugin, plugin_version, state)| {
            Event::PluginStateChanged {
                vendor,
                plugin,
                plugin_version,
                state,
            }
        }),
        (t(), t(), t()).prop_map(|(sha256, by, reason)| Event::PayloadRedacted {
            sha256,
            by,
            reason
        }),
    ]
    .boxed()
}

fn an_entry() -> BoxedStrategy<Entry> {
    (any::<u64>(), event())
        .prop_map(|(at, e)| Entry::new(at, e))
        .boxed()
}

/// A change to bytes: flips, insertions, deletions, truncation.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(u32, u8),
    Insert(u32, u8),
    Delete(u32),
    Truncate(u32),
}

fn byte_edit() -> BoxedStrategy<ByteEdit> {
    prop_oneof![
        (any::<u32>(), 1..=255u8).prop_map(|(at, x)| ByteEdit::Flip(at, x)),
        (any::<u32>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Insert(at, b)),
        any::<u32>().prop_map(ByteEdit::Delete),
        any::<u32>().prop_map(ByteEdit::Truncate),
    ]
    .boxed()
}

fn edit_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        let at = |n: u32| usize::try_from(n).unwrap_or(0) % (len + 1);
        match e {
            ByteEdit::Flip(n, x) if len > 0 => {
                let i = usize::try_from(*n).unwrap_or(0) % len;
                bytes[i] ^= x;
            }
            ByteEdit::Insert(n, b) => bytes.insert(at(*n), *b),
            ByteEdit::Delete(n) if len > 0 => {
                bytes.remove(usize::try_from(*n).unwrap_or(0) % len);
            }
            ByteEdit::Truncate(n) => bytes.truncate(at(*n)),
            _ => {}
        }
    }
    bytes
}

/// What `decode` says of bytes that are not `original`'s encoding: any answer but a panic, and
/// an entry only if the bytes are exactly that entry's one encoding.
fn decoded_once(bytes: &[u8]) -> Result<String, String> {
    match entry::decode(bytes) {
        Ok(e) if e.encode() == bytes => Ok("decoded (its own encoding)".into()),
        Ok(e) => Err(format!(
            "decoded {e:?} from bytes that are not its encoding: {:?}",
            String::from_utf8_lossy(bytes)
        )),
        Err(DecodeError::TooLong(_)) => Ok("too long".into()),
        Err(DecodeError::Malformed(_)) => Ok("malformed".into()),
        Err(DecodeError::UnknownVersion(_)) => Ok("unknown version".into()),
        Err(DecodeError::NotCanonical) => Ok("not canonical".into()),
    }
}

#[test]
fn audit_entry_decoding() {
    library("audit entries", 2, |current| {
        let cases = common::report::scale(1_000, 50_000);
        let round_trip = fuzz(cases, &an_entry(), current, |e| {
            let bytes = e.encode();
            let decoded = entry::decode(&bytes);
            if bytes.len() > MAX_ENTRY_LEN {
                return match decoded {
                    Err(DecodeError::TooLong(n)) if n == bytes.len() => Ok("too long".into()),
                    other => Err(format!("{} bytes decoded as {other:?}", bytes.len())),
                };
            }
            match decoded {
                Ok(back) if back == *e => Ok(format!("round trip {}", e.event.kind())),
                other => Err(format!("encoded as {:?}, decoded as {other:?}", {
                    String::from_utf8_lossy(&bytes)
                })),
            }
        });
        let byte_mutants = (an_entry(), prop::collection::vec(byte_edit(), 1..5));
        let mutated_bytes = fuzz(cases, &byte_mutants, current, |(e, edits)| {
            let bytes = edit_bytes(e.encode(), edits);
            if bytes == e.encode() {
                return Ok("unchanged".into());
            }
            decoded_once(&bytes)
        });
        let json_mutants = (an_entry(), prop::collection::vec(mutation(), 1..4));
        let mutated_json = fuzz(cases, &json_mutants, current, |(e, m)| {
            let value: Value = serde_json::from_slice(&e.encode()).unwrap();
            let bytes = serde_json::to_vec(&mutate(value, m)).unwrap();
            decoded_once(&bytes)
        });
        let text_mutants = (an_entry(), prop::collection::vec(garbling(), 1..4));
        let garbled = fuzz(cases, &text_mutants, current, |(e, g)| {
            let bytes = garble(e.encode(), g);
            if bytes == e.encode() {
                return Ok("unchanged".into());
            }
            decoded_once(&bytes)
        });
        let random = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            json_object().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            (json_object(), any::<u64>()).prop_map(|(event, at)| {
                serde_json::to_vec(&json!({"v": 1, "at_ms": at, "event": event})).unwrap()
            }),
        ];
        let arbitrary = fuzz(cases, &random, current, |bytes| decoded_once(bytes));
        vec![
            ("entry: decode(encode(e)) == e", round_trip),
            ("entry: decode of byte-mutated encodings", mutated_bytes),
            ("entry: decode of JSON-mutated encodings", mutated_json),
            ("entry: decode of garbled encodings", garbled),
            ("entry: decode of arbitrary bytes and JSON", arbitrary),
        ]
    });
}

// ---- library: checkpoints, receipts and exports ----------------------------------------------

const ORIGIN: &str = "fuzz.example/log";

fn key_of(seed: &[u8; 32]) -> LogKey {
    LogKey::from_seed(ORIGIN, seed).unwrap()
}

/// Signs `text` as a note with `key` (whatever the text says), if the note format allows it.
fn sign_text(key: &LogKey, text: &str) -> Option<String> {
    let signer = signed_note::StandardSigner::new(key.skey()).ok()?;
    let mut note = signed_note::Note::new(text.as_bytes(), &[]).ok()?;
    note.add_sigs(&[&signer]).ok()?;
    String::from_utf8(note.to_bytes()).ok()
}

/// A change to a signed note's lines.
#[derive(Debug, Clone)]
enum NoteEdit {
    Bytes(Vec<ByteEdit>),
    Text(Vec<Garble>),
    DropLine(u8),
    DuplicateLine(u8),
    SwapLines(u8, u8),
    /// Another key's valid signature added (C2SP says unknown signers are ignored).
    Cosigned([u8; 32]),
    /// The signature lines put under another checkpoint's text.
    OtherText(u64),
}

fn note_edit() -> BoxedStrategy<NoteEdit> {
    prop_oneof![
        3 => prop::collection::vec(byte_edit(), 1..4).prop_map(NoteEdit::Bytes),
        2 => prop::collection::vec(garbling(), 1..3).prop_map(NoteEdit::Text),
        1 => any::<u8>().prop_map(NoteEdit::DropLine),
        1 => any::<u8>().prop_map(NoteEdit::DuplicateLine),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| NoteEdit::SwapLines(a, b)),
        1 => any::<[u8; 32]>().prop_map(NoteEdit::Cosigned),
        1 => any::<u64>().prop_map(NoteEdit::OtherText),
    ]
    .boxed()
}

fn edit_note(key: &LogKey, note: &str, edit: &NoteEdit) -> String {
    let lines = || note.split('\n').map(str::to_owned).collect::<Vec<_>>();
    match edit {
        NoteEdit::Bytes(edits) => {
            String::from_utf8_lossy(&edit_bytes(note.as_bytes().to_vec(), edits)).into_owned()
        }
        NoteEdit::Text(g) => {
            String::from_utf8_lossy(&garble(note.as_bytes().to_vec(), g)).into_owned()
        }
        NoteEdit::DropLine(n) => {
            let mut l = lines();
            l.remove(usize::from(*n) % l.len());
            l.join("\n")
        }
        NoteEdit::DuplicateLine(n) => {
            let mut l = lines();
            let i = usize::from(*n) % l.len();
            l.insert(i, l[i].clone());
            l.join("\n")
        }
        NoteEdit::SwapLines(a, b) => {
            let mut l = lines();
            let n = l.len();
            l.swap(usize::from(*a) % n, usize::from(*b) % n);
            l.join("\n")
        }
        NoteEdit::Cosigned(seed) => {
            let other = LogKey::from_seed("witness.example/w", seed).unwrap();
            let (text, sigs) = note.split_once("\n\n").unwrap_or((note, ""));
            let cosigned = sign_text(&other, &format!("{text}\n")).unwrap_or_default();
            let other_sig = cosigned.split_once("\n\n").map_or("", |(_, s)| s);
            format!("{text}\n\n{sigs}{other_sig}")
        }
        NoteEdit::OtherText(size) => {
            let (_, sigs) = note.split_once("\n\n").unwrap_or(("", note));
            let other = key.sign(*size, &merkle::leaf_hash(&size.to_be_bytes()));
            let (text, _) = other.split_once("\n\n").unwrap_or((&other, ""));
            format!("{text}\n\n{sigs}")
        }
    }
}

/// Text that might be a checkpoint body: an origin, a size, a root, extension lines.
fn checkpoint_text() -> BoxedStrategy<String> {
    let origin = prop_oneof![3 => Just(ORIGIN.to_owned()), 1 => text()];
    let size = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("01".to_owned()),
        Just(String::new()),
        text(),
    ];
    let root = prop_oneof![
        any::<[u8; 32]>().prop_map(|h| STANDARD.encode(h)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|h| STANDARD.encode(h)),
        text(),
    ];
    let extra = prop::collection::vec("[ -~]{0,40}", 0..3);
    (origin, size, root, extra)
        .prop_map(|(o, s, r, e)| {
            let mut text = format!("{o}\n{s}\n{r}\n");
            for line in e {
                text.push_str(&line);
                text.push('\n');
            }
            text
        })
        .boxed()
}

#[test]
fn signed_notes_and_checkpoints() {
    library("checkpoints", 3, |current| {
        let cases = common::report::scale(500, 20_000);
        let round_trip = (any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>());
        let signed = fuzz(cases, &round_trip, current, |(seed, size, root)| {
            let key = key_of(seed);
            let root = merkle::Hash(*root);
            let note = key.sign(*size, &root);
            let opened = CheckpointVerifier::new(key.vkey())
                .map_err(|e| e.to_string())?
                .open(&note)
                .map_err(|e| format!("{note:?}: {e}"))?;
            if (opened.size, opened.root, opened.note.as_str()) == (*size, root, note.as_str()) {
                Ok("opened as signed".into())
            } else {
                Err(format!("{note:?} opened as {opened:?}"))
            }
        });
        let mutants = (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            prop::collection::vec(note_edit(), 1..3),
        );
        let mutated = fuzz(cases, &mutants, current, |(seed, size, root, edits)| {
            let key = key_of(seed);
            let root = merkle::Hash(*root);
            let mut note = key.sign(*size, &root);
            for e in edits {
                note = edit_note(&key, &note, e);
            }
            match CheckpointVerifier::new(key.vkey()).unwrap().open(&note) {
                Ok(c) if (c.size, c.root) == (*size, root) => Ok("opened, unchanged".into()),
                Ok(c) => Err(format!(
                    "a forged checkpoint opened: {note:?} as size {} root {:?}",
                    c.size, c.root
                )),
                Err(e) => Ok(format!("refused: {}", error_kind(&e.to_string()))),
            }
        });
        let texts = (any::<[u8; 32]>(), checkpoint_text());
        let resigned = fuzz(cases, &texts, current, |(seed, text)| {
            let key = key_of(seed);
            let Some(note) = sign_text(&key, text) else {
                return Ok("not a note's text".into());
            };
            match CheckpointVerifier::new(key.vkey()).unwrap().open(&note) {
                Ok(c) if text.starts_with(&format!("{ORIGIN}\n{}\n", c.size)) => {
                    Ok("a checkpoint".into())
                }
                Ok(c) => Err(format!("{text:?} opened as {c:?}")),
                Err(e) => Ok(format!("refused: {}", error_kind(&e.to_string()))),
            }
        });
        let keys = (
            any::<[u8; 32]>(),
            prop_oneof![
                text().prop_map(|t| (t, None)),
                prop::collection::vec(byte_edit(), 0..4).prop_map(|e| (String::new(), Some(e))),
            ],
            any::<bool>(),
        );
        let key_texts = fuzz(cases, &keys, current, |(seed, (random, edits), private)| {
            let key = key_of(seed);
            let text = match edits {
                None => random.clone(),
                Some(e) => {
                    let original = if *private { key.skey() } else { key.vkey() };
                    String::from_utf8_lossy(&edit_bytes(original.as_bytes().to_vec(), e))
                        .into_owned()
                }
            };
            let note = key.sign(7, &merkle::leaf_hash(b"x"));
            if *private {
                match LogKey::from_skey(&text) {
                    // A key read back must sign what its own public key opens.
                    Ok(k) => {
                        let signed = k.sign(3, &merkle::leaf_hash(b"y"));
                        CheckpointVerifier::new(k.vkey())
                            .and_then(|v| v.open(&signed))
                            .map(|_| "a private key".to_owned())
                            .map_err(|e| format!("{text:?} signs what its key refuses: {e}"))
                    }
                    Err(_) => Ok("not a private key".into()),
                }
            } else {
                match CheckpointVerifier::new(&text) {
                    Ok(v) => match v.open(&note) {
                        Ok(c) if c.size == 7 => Ok("a key that opens the note".into()),
                        Ok(c) => Err(format!("{text:?} opened {c:?}")),
                        Err(_) => Ok("a key that refuses the note".into()),
                    },
                    Err(_) => Ok("not a key".into()),
                }
            }
        });
        let arbitrary = (any::<[u8; 32]>(), text());
        let random = fuzz(
            cases,
            &arbitrary,
            current,
            |(seed, note)| match CheckpointVerifier::new(key_of(seed).vkey())
                .unwrap()
                .open(note)
            {
                Ok(c) => Err(format!("random text opened: {c:?}")),
                Err(e) => Ok(format!("refused: {}", error_kind(&e.to_string()))),
            },
        );
        vec![
            ("checkpoint: sign and open", signed),
            ("checkpoint: open mutated notes", mutated),
            ("checkpoint: open any signed text", resigned),
            ("checkpoint: read mutated and random keys", key_texts),
            ("checkpoint: open random text", random),
        ]
    });
}

/// The first words of an error's text: its kind, without the details.
fn error_kind(text: &str) -> String {
    let head = text.split([':', '{', '"']).next().unwrap_or("").trim();
    head.split(' ')
        .map(|w| {
            if w.contains('+') {
                "<key>"
            } else if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
                "N"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A small log: its entries' bytes, a checkpoint over all of them, and each entry's proof.
#[derive(Debug)]
struct SmallLog {
    key: LogKey,
    entries: Vec<Vec<u8>>,
    note: String,
    proofs: Vec<Vec<merkle::Hash>>,
}

fn small_log(seed: &[u8; 32], events: &[(bool, Event)]) -> SmallLog {
    let key = key_of(seed);
    let entries: Vec<Vec<u8>> = events
        .iter()
        .enumerate()
        .map(|(i, (ours, event))| {
            let event = if *ours {
                Event::Decided {
                    approval_id: "apr_ours".into(),
                    vendor: "acme".into(),
                    actor: "teddy".into(),
                    status: "approved".into(),
                    method: "human".into(),
                    decider: Some("mom".into()),
                    rule_id: None,
                    reason: None,
                    guardian_reason_sha256: None,
                    granted_params_hash: Some(hex::encode(Sha256::digest(b"params"))),
                    token_id: None,
                    expires_at_ms: None,
                }
            } else {
                event.clone()
            };
            Entry::new(1_795_000_000_000 + i as u64, event).encode()
        })
        .collect();
    let cache = HashCache::new();
    let leaves: Vec<merkle::Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    merkle::append(0, &leaves, &cache).unwrap();
    let size = entries.len() as u64;
    let root = TreeOp::Root { size }.run(&cache).unwrap()[0];
    let proofs = (0..size)
        .map(|index| TreeOp::Inclusion { index, size }.run(&cache).unwrap())
        .collect();
    SmallLog {
        note: key.sign(size, &root),
        key,
        entries,
        proofs,
    }
}

fn receipt_of(log: &SmallLog) -> Receipt {
    Receipt {
        approval_id: "apr_ours".into(),
        checkpoint: log.note.clone(),
        entries: log
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                entry::decode(e).is_ok_and(|e| e.event.index().approval_id == Some("apr_ours"))
            })
            .map(|(i, e)| ReceiptEntry {
                index: i as u64,
                entry: e.clone(),
                proof: log.proofs[i].clone(),
            })
            .collect(),
    }
}

fn log_events() -> BoxedStrategy<Vec<(bool, Event)>> {
    prop::collection::vec((any::<bool>(), event()), 1..8)
        .prop_map(|mut events| {
            events[0].0 = true;
            events
        })
        .boxed()
}

/// A change to a receipt's or an export's JSON.
#[derive(Debug, Clone)]
enum DocEdit {
    Json(Vec<Mutation>),
    Text(Vec<Garble>),
}

fn doc_edit() -> BoxedStrategy<DocEdit> {
    prop_oneof![
        3 => prop::collection::vec(mutation(), 1..4).prop_map(DocEdit::Json),
        1 => prop::collection::vec(garbling(), 1..4).prop_map(DocEdit::Text),
    ]
    .boxed()
}

fn edit_doc(text: &str, edit: &DocEdit) -> String {
    match edit {
        DocEdit::Json(m) => match serde_json::from_str::<Value>(text) {
            Ok(v) => mutate(v, m).to_string(),
            Err(_) => text.to_owned(),
        },
        DocEdit::Text(g) => String::from_utf8_lossy(&garble(text.as_bytes().to_vec(), g)).into(),
    }
}

/// A change to a receipt.
#[derive(Debug, Clone)]
enum ReceiptEdit {
    Index(u8, u64),
    Entry(u8, Vec<ByteEdit>),
    /// Another entry of the log in its place, with that entry's proof or keeping its own.
    Other(u8, u8, bool),
    Proof(u8, u8, u8, u8),
    DropProof(u8, u8),
    DropEntry(u8),
    DuplicateEntry(u8),
    Note(NoteEdit),
    Approval(String),
    Json(DocEdit),
}

fn receipt_edit() -> BoxedStrategy<ReceiptEdit> {
    prop_oneof![
        (any::<u8>(), prop_oneof![0..10u64, any::<u64>()])
            .prop_map(|(i, n)| ReceiptEdit::Index(i, n)),
        (any::<u8>(), prop::collection::vec(byte_edit(), 1..3))
            .prop_map(|(i, e)| ReceiptEdit::Entry(i, e)),
        (any::<u8>(), any::<u8>(), any::<bool>())
            .prop_map(|(i, j, proof)| ReceiptEdit::Other(i, j, proof)),
        (any::<u8>(), any::<u8>(), any::<u8>(), 1..=255u8)
            .prop_map(|(i, k, at, x)| ReceiptEdit::Proof(i, k, at, x)),
        (any::<u8>(), any::<u8>()).prop_map(|(i, k)| ReceiptEdit::DropProof(i, k)),
        any::<u8>().prop_map(ReceiptEdit::DropEntry),
        any::<u8>().prop_map(ReceiptEdit::DuplicateEntry),
        note_edit().prop_map(ReceiptEdit::Note),
        prop_oneof![Just("apr_other".to_owned()), text()].prop_map(ReceiptEdit::Approval),
        doc_edit().prop_map(ReceiptEdit::Json),
    ]
    .boxed()
}

/// The JSON of `log`'s receipt with `edits` applied.
fn edited_receipt(log: &SmallLog, edits: &[ReceiptEdit]) -> String {
    let mut json = receipt_of(log).to_json();
    for edit in edits {
        if let ReceiptEdit::Json(e) = edit {
            json = edit_doc(&json, e);
            continue;
        }
        let Ok(mut r) = Receipt::from_json(&json) else {
            continue;
        };
        let n = r.entries.len();
        let at = |i: u8| usize::from(i) % n.max(1);
        match edit {
            ReceiptEdit::Index(i, index) if n > 0 => r.entries[at(*i)].index = *index,
            ReceiptEdit::Entry(i, e) if n > 0 => {
                let entry = &mut r.entries[at(*i)].entry;
                *entry = edit_bytes(std::mem::take(entry), e);
            }
            ReceiptEdit::Other(i, j, with_proof) if n > 0 => {
                let j = usize::from(*j) % log.entries.len();
                let e = &mut r.entries[at(*i)];
                e.entry.clone_from(&log.entries[j]);
                if *with_proof {
                    e.index = j as u64;
                    e.proof.clone_from(&log.proofs[j]);
                }
            }
            ReceiptEdit::Proof(i, k, byte, x) if n > 0 => {
                let proof = &mut r.entries[at(*i)].proof;
                if !proof.is_empty() {
                    let k = usize::from(*k) % proof.len();
                    proof[k].0[usize::from(*byte) % 32] ^= x;
                }
            }
            ReceiptEdit::DropProof(i, k) if n > 0 => {
                let proof = &mut r.entries[at(*i)].proof;
                if !proof.is_empty() {
                    proof.remove(usize::from(*k) % proof.len());
                }
            }
            ReceiptEdit::DropEntry(i) if n > 0 => {
                r.entries.remove(at(*i));
            }
            ReceiptEdit::DuplicateEntry(i) if n > 0 => {
                let e = r.entries[at(*i)].clone();
                r.entries.push(e);
            }
            ReceiptEdit::Note(e) => r.checkpoint = edit_note(&log.key, &r.checkpoint, e),
            ReceiptEdit::Approval(id) => r.approval_id.clone_from(id),
            _ => {}
        }
        json = r.to_json();
    }
    json
}

/// Every entry a verified receipt returns is one of the log's, at its index, about the
/// receipt's approval.
fn receipt_outcome(log: &SmallLog, json: &str) -> Result<String, String> {
    let receipt = match Receipt::from_json(json) {
        Ok(r) => r,
        Err(e) => return Ok(format!("unreadable: {}", error_kind(&e.to_string()))),
    };
    let verifier = CheckpointVerifier::new(log.key.vkey()).unwrap();
    match receipt.verify(&verifier) {
        Ok(decoded) => {
            for (e, d) in receipt.entries.iter().zip(&decoded) {
                let original = usize::try_from(e.index)
                    .ok()
                    .and_then(|i| log.entries.get(i));
                if original != Some(&e.entry)
                    || d.event.index().approval_id != Some(receipt.approval_id.as_str())
                {
                    return Err(format!("a forged receipt verified: {json}"));
                }
            }
            Ok("verified".into())
        }
        Err(e) => Ok(format!("refused: {}", error_kind(&e.to_string()))),
    }
}

/// The export of a small log, in the format of `audit::verify`.
fn export_of(log: &SmallLog, payload: &[u8]) -> String {
    let mut out = format!(
        "{}\n",
        json!({"format": FORMAT, "version": 1, "origin": ORIGIN, "vkey": log.key.vkey(),
            "size": log.entries.len()})
    );
    for (i, e) in log.entries.iter().enumerate() {
        out.push_str(&format!(
            "{}\n",
            json!({"index": i, "entry": STANDARD.encode(e),
                "leaf": STANDARD.encode(merkle::leaf_hash(e).0)})
        ));
    }
    out.push_str(&format!("{}\n", json!({"checkpoint": log.note})));
    out.push_str(&format!(
        "{}\n",
        json!({"payload": hex::encode(Sha256::digest(payload)), "bytes": STANDARD.encode(payload)})
    ));
    out
}

/// A change to an export's lines.
#[derive(Debug, Clone)]
enum ExportEdit {
    Drop(u8),
    Duplicate(u8),
    Swap(u8, u8),
    Line(u8, DocEdit),
    /// An entry under the checkpoint replaced by another (with its leaf recomputed or not).
    Replace(u8, Box<Event>, bool),
    Bytes(Vec<ByteEdit>),
}

fn export_edit() -> BoxedStrategy<ExportEdit> {
    prop_oneof![
        1 => any::<u8>().prop_map(ExportEdit::Drop),
        1 => any::<u8>().prop_map(ExportEdit::Duplicate),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| ExportEdit::Swap(a, b)),
        3 => (any::<u8>(), doc_edit()).prop_map(|(n, e)| ExportEdit::Line(n, e)),
        2 => (any::<u8>(), event(), any::<bool>())
            .prop_map(|(n, e, leaf)| ExportEdit::Replace(n, Box::new(e), leaf)),
        1 => prop::collection::vec(byte_edit(), 1..4).prop_map(ExportEdit::Bytes),
    ]
    .boxed()
}

fn edit_export(export: &str, entries: usize, edit: &ExportEdit) -> String {
    let mut lines: Vec<String> = export.lines().map(str::to_owned).collect();
    let n = lines.len();
    if n == 0 {
        // Earlier edits dropped every line: nothing is left to edit.
        return export.to_owned();
    }
    let at = |i: u8| usize::from(i) % n;
    match edit {
        ExportEdit::Drop(i) => {
            lines.remove(at(*i));
        }
        ExportEdit::Duplicate(i) => {
            let i = at(*i);
            lines.insert(i, lines[i].clone());
        }
        ExportEdit::Swap(a, b) => lines.swap(at(*a), at(*b)),
        ExportEdit::Line(i, e) => {
            let i = at(*i);
            lines[i] = edit_doc(&lines[i], e);
        }
        ExportEdit::Replace(i, event, recompute_leaf) => {
            let index = usize::from(*i) % entries;
            if 1 + index >= lines.len() {
                return export.to_owned();
            }
            let bytes = Entry::new(1, (**event).clone()).encode();
            let leaf = if *recompute_leaf {
                merkle::leaf_hash(&bytes)
            } else {
                merkle::leaf_hash(&[])
            };
            lines[1 + index] = json!({"index": index, "entry": STANDARD.encode(&bytes),
                "leaf": STANDARD.encode(leaf.0)})
            .to_string();
        }
        ExportEdit::Bytes(edits) => {
            return String::from_utf8_lossy(&edit_bytes(export.as_bytes().to_vec(), edits))
                .into_owned();
        }
    }
    lines.join("\n") + "\n"
}

/// The (index, bytes) of every entry line of an export that reads as one.
fn entry_lines(export: &str) -> Vec<(u64, Vec<u8>)> {
    export
        .lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let index = v.get("index")?.as_u64()?;
            let bytes = STANDARD.decode(v.get("entry")?.as_str()?).ok()?;
            Some((index, bytes))
        })
        .collect()
}

#[test]
fn receipts_and_exports() {
    library("receipts and exports", 4, |current| {
        let cases = common::report::scale(500, 20_000);
        // The logs built here verify as built: the fuzzing below starts from valid documents.
        let sanity = small_log(
            &[1; 32],
            &[(
                true,
                Event::PayloadRedacted {
                    sha256: "x".into(),
                    by: "y".into(),
                    reason: "z".into(),
                },
            )],
        );
        let verifier = CheckpointVerifier::new(sanity.key.vkey()).unwrap();
        receipt_of(&sanity).verify(&verifier).unwrap();
        let report =
            verify_export(export_of(&sanity, b"p").as_bytes(), sanity.key.vkey(), &[]).unwrap();
        assert!(report.ok() && report.checkpoints_verified == 1, "{report}");

        let receipts = (
            any::<[u8; 32]>(),
            log_events(),
            prop::collection::vec(receipt_edit(), 0..3),
        );
        let mutated_receipts = fuzz(cases, &receipts, current, |(seed, events, edits)| {
            let log = small_log(seed, events);
            receipt_outcome(&log, &edited_receipt(&log, edits))
        });
        let random_receipts = fuzz(
            cases,
            &(any::<[u8; 32]>(), json_value()),
            current,
            |(seed, v)| {
                let log = small_log(
                    seed,
                    &[(
                        true,
                        Event::PayloadRedacted {
                            sha256: String::new(),
                            by: String::new(),
                            reason: String::new(),
                        },
                    )],
                );
                receipt_outcome(&log, &v.to_string())
            },
        );
        let exports = (
            any::<[u8; 32]>(),
            log_events(),
            prop::collection::vec(any::<u8>(), 0..32),
            prop::collection::vec(export_edit(), 1..3),
        );
        let mutated_exports = fuzz(
            cases,
            &exports,
            current,
            |(seed, events, payload, edits)| {
                let log = small_log(seed, events);
                let original = export_of(&log, payload);
                let mut export = original.clone();
                for e in edits {
                    export = edit_export(&export, log.entries.len(), e);
                }
                match verify_export(export.as_bytes(), log.key.vkey(), &[]) {
                    Ok(report) if report.ok() => {
                        // A clean report: every entry under a verified checkpoint is the log's
                        // own. (Entries after the last checkpoint, or in an export stripped of
                        // its checkpoints, are reported as unsigned: nothing vouches for them.)
                        let forged = entry_lines(&export).iter().any(|(i, b)| {
                            *i < report.verified_size
                                && log.entries.get(usize::try_from(*i).unwrap_or(usize::MAX))
                                    != Some(b)
                        });
                        if forged {
                            Err(format!("an edited export verified: {export}"))
                        } else if report.verified_size == log.entries.len() as u64 {
                            Ok("verified, all signed".into())
                        } else {
                            Ok("verified, some unsigned".into())
                        }
                    }
                    Ok(report) => Ok(format!(
                        "failures found: {}",
                        report
                            .failures
                            .first()
                            .map(|f| error_kind(&f.to_string()))
                            .unwrap_or_default()
                    )),
                    Err(e) => Ok(format!("refused: {}", error_kind(&e.to_string()))),
                }
            },
        );
        let random_exports = (
            any::<[u8; 32]>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..1024),
                prop::collection::vec(json_value(), 0..6).prop_map(|lines| {
                    lines
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                        .into_bytes()
                }),
            ],
        );
        let arbitrary_exports = fuzz(cases, &random_exports, current, |(seed, bytes)| {
            let header = format!(
                "{}\n",
                json!({"format": FORMAT, "version": 1, "origin": ORIGIN,
                    "vkey": key_of(seed).vkey(), "size": 0})
            );
            let vkey = key_of(seed).vkey().to_owned();
            let bare = verify_export(bytes.as_slice(), &vkey, &[]);
            let headed = verify_export([header.as_bytes(), bytes].concat().as_slice(), &vkey, &[]);
            Ok(format!(
                "{} / {}",
                bare.map_or_else(
                    |e| error_kind(&e.to_string()),
                    |r| format!("ok: {}", r.ok())
                ),
                headed.map_or_else(
                    |e| error_kind(&e.to_string()),
                    |r| format!("ok: {}", r.ok())
                )
            ))
        });
        vec![
            (
                "receipt: parse and verify mutated receipts",
                mutated_receipts,
            ),
            ("receipt: parse random JSON", random_receipts),
            ("export: verify mutated exports", mutated_exports),
            ("export: verify arbitrary bytes", arbitrary_exports),
        ]
    });
}

// ---- library: the WIT verdict lifted from plugins --------------------------------------------

/// A verdict as a guest may return it (mirrors the binding, which proptest cannot build).
#[derive(Debug, Clone)]
struct RawVerdict {
    decision: u8,
    rule_id: String,
    reason: String,
    ttl_seconds: Option<u32>,
    counter_offer: Option<RawOffer>,
}

#[derive(Debug, Clone)]
enum RawOffer {
    Amount(u64, String),
    ParamsJson(String),
}

impl RawVerdict {
    fn binding(&self) -> lifting::Verdict {
        lifting::Verdict {
            decision: match self.decision % 3 {
                0 => lifting::Decision::Allow,
                1 => lifting::Decision::Escalate,
                _ => lifting::Decision::Deny,
            },
            rule_id: self.rule_id.clone(),
            reason: self.reason.clone(),
            ttl_seconds: self.ttl_seconds,
            counter_offer: self.counter_offer.as_ref().map(|o| match o {
                RawOffer::Amount(minor_units, currency) => {
                    lifting::CounterOffer::Amount(lifting::MoneyResult {
                        minor_units: *minor_units,
                        currency: currency.clone(),
                    })
                }
                RawOffer::ParamsJson(p) => lifting::CounterOffer::ParamsJson(p.clone()),
            }),
        }
    }
}

const RULES: &[&str] = &["velocity.hourly-spend", "velocity.payments-per-hour", "x"];

fn raw_verdict() -> BoxedStrategy<RawVerdict> {
    let rule = prop_oneof![
        3 => prop::sample::select(RULES).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => text(),
    ];
    let reason = prop_oneof![
        3 => "[a-z ]{0,40}",
        1 => text(),
        1 => Just("   ".to_owned()),
        1 => (480..520usize).prop_map(|n| "r".repeat(n)),
    ];
    let ttl = prop::option::of(prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        1..=86_400u32,
        any::<u32>()
    ]);
    let currency = prop_oneof![
        3 => Just("CNY".to_owned()),
        1 => Just("USD".to_owned()),
        1 => text(),
    ];
    let offer = prop::option::of(prop_oneof![
        (prop_oneof![0..100_000u64, any::<u64>()], currency)
            .prop_map(|(a, c)| RawOffer::Amount(a, c)),
        json_value().prop_map(|v| RawOffer::ParamsJson(v.to_string())),
        text().prop_map(RawOffer::ParamsJson),
    ]);
    (any::<u8>(), rule, reason, ttl, offer)
        .prop_map(
            |(decision, rule_id, reason, ttl_seconds, counter_offer)| RawVerdict {
                decision,
                rule_id,
                reason,
                ttl_seconds,
                counter_offer,
            },
        )
        .boxed()
}

fn request_action() -> BoxedStrategy<Action> {
    prop_oneof![
        (
            prop_oneof![0..100_000u64, any::<u64>()],
            prop::sample::select(&["CNY", "USD"][..])
        )
            .prop_map(|(amount, currency)| Action::Payment {
                amount: Money::new(amount, currency),
                recipient: "toy-shop".into(),
                merchant_category: None,
            }),
        json_object().prop_map(|p| Action::Other {
            kind: "lights.on".into(),
            params_json: p.to_string(),
        }),
        Just(Action::MemoryWrite {
            namespace: "family".into(),
            key: "k".into(),
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(requested_scope, parent_scope)| {
            Action::CapabilityMint {
                capability: "c".into(),
                requested_scope,
                parent_scope,
            }
        }),
    ]
    .boxed()
}

/// The contract a lifted verdict that passed must satisfy, as `wit/risk-classifier.wit` states
/// it.
fn obeys_contract(v: &risk::Verdict, declared: &[&str], action: &Action) -> Result<(), String> {
    let named = declared.contains(&v.rule_id.as_str());
    if v.decision != Decision::Allow && (!named || v.reason.trim().is_empty()) {
        return Err("an escalation or denial without a declared rule and a reason".into());
    }
    if v.decision == Decision::Allow && !v.rule_id.is_empty() && !named {
        return Err("an undeclared rule".into());
    }
    if v.reason.len() > contract::MAX_REASON_BYTES {
        return Err("a reason over the limit".into());
    }
    if let Some(ttl) = v.ttl
        && (v.decision != Decision::Escalate
            || ttl < contract::TTL_RANGE.0
            || ttl > contract::TTL_RANGE.1)
    {
        return Err("a TTL outside an escalation or its bounds".into());
    }
    match (&v.counter_offer, action) {
        (None, _) => Ok(()),
        (Some(_), _) if v.decision == Decision::Allow => Err("an allow with an offer".into()),
        (Some(risk::CounterOffer::Amount(offer)), Action::Payment { amount, .. })
            if offer.currency == amount.currency && offer.minor_units < amount.minor_units =>
        {
            Ok(())
        }
        (Some(risk::CounterOffer::ParamsJson(p)), Action::Other { .. })
            if serde_json::from_str::<Value>(p).is_ok_and(|v| v.is_object()) =>
        {
            Ok(())
        }
        _ => Err("an offer that does not fit the action".into()),
    }
}

#[test]
fn wit_verdicts_lifted_from_plugins() {
    library("plugin answers", 5, |current| {
        let cases = common::report::scale(2_000, 100_000);
        let max_output = prop_oneof![
            3 => Just(PluginLimits::default().max_output_bytes),
            1 => 0..2_000usize,
        ];
        let verdicts = (raw_verdict(), request_action(), max_output);
        let lifted = fuzz(cases, &verdicts, current, |(raw, action, max_output)| {
            let (verdict, size) = lifting::verdict(raw.binding());
            // The conversion keeps what the guest said.
            let offer_size = match &raw.counter_offer {
                Some(RawOffer::Amount(_, c)) => 8 + c.len(),
                Some(RawOffer::ParamsJson(p)) => p.len(),
                None => 0,
            };
            if size != raw.rule_id.len() + raw.reason.len() + offer_size
                || verdict.rule_id != raw.rule_id
                || verdict.reason != raw.reason
                || verdict.ttl.map(|t| t.as_secs()) != raw.ttl_seconds.map(u64::from)
                || verdict.counter_offer.is_some() != raw.counter_offer.is_some()
            {
                return Err(format!("lifted as {verdict:?} ({size} bytes)"));
            }
            let request = RiskRequest {
                id: "apr_1".into(),
                vendor: "acme".into(),
                actor: "teddy".into(),
                device_context: vec![],
                action: action.clone(),
                requested_at_ms: 0,
            };
            let info = risk::PluginInfo {
                name: "velocity".into(),
                version: "1".into(),
                rules: RULES
                    .iter()
                    .map(|id| risk::Rule {
                        id: (*id).into(),
                        description: String::new(),
                    })
                    .collect(),
            };
            // As the runtime takes a guest's answer: the size cap, then the contract.
            let outcome = if size > *max_output {
                Err(PluginError::OutputTooLarge {
                    bytes: size,
                    limit: *max_output,
                })
            } else {
                contract::check_verdict(&verdict, &info, &request)
                    .map(|()| verdict)
                    .map_err(|problem| PluginError::MalformedVerdict { problem })
            };
            match outcome {
                Ok(v) => obeys_contract(&v, RULES, action)
                    .map(|()| format!("accepted {}", v.decision.as_str()))
                    .map_err(|e| format!("accepted {v:?}: {e}")),
                Err(e) if e.fault() == Fault::Guest => Ok(e.code().to_owned()),
                Err(e) => Err(format!("blamed on the host: {e}")),
            }
        });
        let infos = (
            prop_oneof![3 => Just("velocity".to_owned()), 1 => text()],
            prop_oneof![3 => Just("1.0.0".to_owned()), 1 => text()],
            prop::collection::vec(
                (
                    prop_oneof![
                        3 => prop::sample::select(RULES).prop_map(str::to_owned),
                        1 => text()
                    ],
                    prop_oneof![3 => "[a-z ]{0,20}", 1 => text()],
                ),
                0..6,
            ),
        );
        let described = fuzz(cases, &infos, current, |(name, version, rules)| {
            let raw = lifting::PluginInfo {
                name: name.clone(),
                version: version.clone(),
                rules: rules
                    .iter()
                    .map(|(id, description)| lifting::Rule {
                        id: id.clone(),
                        description: description.clone(),
                    })
                    .collect(),
            };
            let (info, size) = lifting::plugin_info(raw);
            let expected = name.len()
                + version.len()
                + rules.iter().map(|(i, d)| i.len() + d.len()).sum::<usize>();
            if size != expected || info.rules.len() != rules.len() {
                return Err(format!("lifted as {info:?} ({size} bytes)"));
            }
            match contract::check_info(&info)
                .map_err(|problem| UploadError::BadDescription { problem })
            {
                Ok(()) => Ok("accepted".into()),
                Err(e) => Ok(e.code().to_owned()),
            }
        });
        vec![
            ("plugin: verdicts lifted and checked", lifted),
            ("plugin: descriptions lifted and checked", described),
        ]
    });
}

// ---- HTTP ---------------------------------------------------------------------------------------

/// How long a request may take before it counts as a hang (a bound for a broken host, far above
/// any answer; the long-polls below are capped at the test host's 10 s).
const HANG_SECONDS: u64 = 30;
const T0: u64 = 1_795_000_000_000;
const VENDOR: &str = "acme-toys";
const SANDBOX: &str = "fuzz-toys";
const TEDDY: &str = "teddy-7";
const ROBOT: &str = "robot-1";
const MOM: &str = "guardian-mom";
/// In a path, replaced by a pending approval created just before the call.
const FRESH: &str = "{fresh}";

/// Whose credentials a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Agent,
    /// The main vendor, whose state the fuzzing does not change.
    Vendor,
    /// The second vendor, whose policy, actors, plugins and webhook the fuzzing changes.
    Sandbox,
    Guardian,
    Admin,
    Nobody,
    Stranger,
}

const EVERYONE: &[Who] = &[
    Who::Agent,
    Who::Vendor,
    Who::Sandbox,
    Who::Guardian,
    Who::Admin,
    Who::Nobody,
    Who::Stranger,
];

/// One generated request.
#[derive(Clone)]
struct Call {
    method: Method,
    /// Path and query, percent-encoded.
    path: String,
    who: Who,
    content_type: Option<String>,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} as {:?}",
            self.method,
            shortened(&self.path, 300),
            self.who
        )?;
        if let Some(c) = &self.content_type {
            write!(f, ", content-type {c:?}")?;
        }
        for (k, v) in &self.headers {
            write!(f, ", {k}: {:?}", shortened(v, 200))?;
        }
        if let Some(body) = &self.body {
            write!(
                f,
                ", body ({} bytes) {:?}",
                body.len(),
                shortened(&String::from_utf8_lossy(body), 600)
            )?;
        }
        Ok(())
    }
}

/// What a call sends besides its path.
#[derive(Debug, Clone, Default)]
struct Payload {
    content_type: Option<String>,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

/// Mostly `default`, sometimes anyone else (but the main vendor only where it is the default:
/// its policy and plugins must stay as they are).
fn who(default: Who) -> BoxedStrategy<Who> {
    let others: Vec<Who> = EVERYONE
        .iter()
        .copied()
        .filter(|w| *w != Who::Vendor || default == Who::Vendor)
        .collect();
    prop_oneof![15 => Just(default), 1 => prop::sample::select(others)].boxed()
}

fn call(
    method: Method,
    path: BoxedStrategy<String>,
    query: BoxedStrategy<String>,
    caller: Who,
    payload: BoxedStrategy<Payload>,
) -> BoxedStrategy<Call> {
    (path, query, who(caller), payload)
        .prop_map(move |(path, query, who, p)| Call {
            method: method.clone(),
            path: if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            },
            who,
            content_type: p.content_type,
            headers: p.headers,
            body: p.body,
        })
        .boxed()
}

fn fixed(path: &str) -> BoxedStrategy<String> {
    Just(path.to_owned()).boxed()
}

fn no_query() -> BoxedStrategy<String> {
    Just(String::new()).boxed()
}

fn no_body() -> BoxedStrategy<Payload> {
    Just(Payload::default()).boxed()
}

fn json_payload(valid: BoxedStrategy<Value>) -> BoxedStrategy<Payload> {
    let content_type = prop_oneof![
        12 => Just(Some("application/json".to_owned())),
        1 => Just(None),
        1 => prop::sample::select(&[
            "text/plain",
            "application/json; charset=utf-16",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/vnd.api+json",
            "application/jsonx",
            "*/*",
            "application/json; charset=\"",
            "",
        ][..])
        .prop_map(|c| Some(c.to_owned())),
    ];
    (content_type, json_bytes(valid))
        .prop_map(|(content_type, body)| Payload {
            content_type,
            headers: Vec::new(),
            body: Some(body),
        })
        .boxed()
}

/// Percent-encodes everything but the unreserved characters (at most 4,000 bytes of it: the
/// client refuses URLs over 64 KiB, and long paths have a target of their own).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes().take(4_000) {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The kind of a query parameter.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Count,
    Flag,
    Text(&'static [&'static str]),
}

/// Query values that are wrong for most parameters.
const QUERY_VALUES: &[&str] = &[
    "-1",
    "1.5",
    "1e3",
    "99999999999999999999999",
    "18446744073709551616",
    "18446744073709551615",
    "-9223372036854775809",
    "",
    "true",
    "null",
    "%00",
    "%ff",
    "%zz",
    "%",
    "+",
    "%2B1",
    "0x10",
    "%201",
    "1%20",
    "[]",
];

fn query_value() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(QUERY_VALUES).prop_map(str::to_owned),
        1 => text().prop_map(|t| enc(&t)),
    ]
    .boxed()
}

fn value_of(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Kind::Count => prop_oneof![
            3 => (0..64u64).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            2 => query_value(),
        ]
        .boxed(),
        Kind::Flag => prop_oneof![
            3 => prop::sample::select(&["true", "false"][..]).prop_map(str::to_owned),
            2 => query_value(),
        ]
        .boxed(),
        Kind::Text(valid) => prop_oneof![
            3 => prop::sample::select(valid).prop_map(enc),
            1 => text().prop_map(|t| enc(&t)),
            1 => query_value(),
        ]
        .boxed(),
    }
}

/// Query strings over `params`: right and wrong values, unknown and repeated names, junk.
fn query(params: &'static [(&'static str, Kind)]) -> BoxedStrategy<String> {
    let known: Vec<BoxedStrategy<String>> = params
        .iter()
        .map(|(name, kind)| {
            value_of(*kind)
                .prop_map(move |v| format!("{name}={v}"))
                .boxed()
        })
        .collect();
    let pair = prop_oneof![
        6 => Union::new(known),
        1 => (text(), query_value()).prop_map(|(k, v)| format!("{}={v}", enc(&k))),
        1 => prop::sample::select(params).prop_map(|(name, _)| (*name).to_owned()),
    ];
    let junk = prop::sample::select(
        &[
            "&", "=", "&&", "==", "%", "%zz", "%ff", "?", "a", "a[b]=c", ";", "%00=%00",
        ][..],
    );
    prop_oneof![
        8 => prop::collection::vec(pair, 0..5).prop_map(|p| p.join("&")),
        1 => prop::collection::vec(junk, 0..6).prop_map(|p| p.concat()),
    ]
    .boxed()
}

/// Path segments that are not ids.
const PATH_JUNK: &[&str] = &[
    "%00",
    "%ff",
    "%c3%28",
    "%ed%a0%80",
    "%2e%2e",
    "%2F",
    "a%2Fb",
    "@",
    "velocity@",
    "@1",
    "velocity@0",
    "velocity@-1",
    "velocity@18446744073709551616",
    "velocity@4294967296",
    "velocity@1.5",
    "velocity@%00",
    "1",
    "0",
    "apr_",
    "apr_000000000000zzzzzzzzzzzzzzzzzzzz",
    "%20",
    "~",
    "*",
];

/// A path segment: a valid id (given already encoded), any text, junk, a long run.
fn path_id(valid: Vec<String>) -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(valid),
        3 => text()
            .prop_filter("a segment", |s| !s.is_empty())
            .prop_map(|s| enc(&s)),
        2 => prop::sample::select(PATH_JUNK).prop_map(str::to_owned),
        1 => (1..60_000usize).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

fn word() -> BoxedStrategy<String> {
    "[a-z][a-z0-9-]{0,11}".boxed()
}

fn approval_body() -> BoxedStrategy<Value> {
    let action = prop_oneof![
        (
            0..200_000u64,
            prop::sample::select(&["CNY", "USD", "EUR"][..]),
            word(),
            prop::option::of(prop::sample::select(&["toys", "gambling", "games"][..])),
        )
            .prop_map(|(amount, currency, recipient, category)| {
                let mut params =
                    json!({"amount": amount, "currency": currency, "recipient": recipient});
                if let Some(c) = category {
                    params["merchant_category"] = json!(c);
                }
                json!({"action": "payment", "params": params})
            }),
        (
            word(),
            prop::sample::select(&["banking", "healthcare", "identity-document", "games"][..])
        )
            .prop_map(|(service, category)| json!({"action": "cred.put",
                "params": {"service": service, "category": category}})),
        (prop::sample::select(&["family", "private"][..]), word()).prop_map(|(namespace, key)| {
            json!({"action": "memory.write", "params": {"namespace": namespace, "key": key}})
        }),
        (word(), 0..1_000u64, 0..1_000u64).prop_map(|(capability, requested, parent)| {
            json!({"action": "capability.mint", "params": {"capability": capability,
                "requested_scope": requested, "parent_scope": parent}})
        }),
        ("[a-z][a-z0-9._-]{0,20}", json_object())
            .prop_map(|(kind, params)| json!({"action": kind, "params": params})),
    ];
    (
        action,
        prop::option::of(text()),
        prop::option::of((text(), prop::option::of(text()))),
    )
        .prop_map(|(mut body, key, provenance)| {
            if let Some(k) = key {
                body["idempotency_key"] = json!(k);
            }
            if let Some((surface, tool)) = provenance {
                body["provenance"] = json!({"surface": surface, "tool": tool});
            }
            body
        })
        .boxed()
}

fn decision_body() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!({"decision": "approve"})),
        prop::option::of(text()).prop_map(|r| match r {
            Some(r) => json!({"decision": "deny", "reason": r}),
            None => json!({"decision": "deny"}),
        }),
        (0..70_000u64).prop_map(|a| json!({"decision": "revise",
            "params": {"amount": a, "currency": "CNY", "recipient": "toy-shop"}})),
        json_object().prop_map(|p| json!({"decision": "revise", "params": p})),
    ]
    .boxed()
}

fn currency() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(&["CNY", "USD", "EUR"][..]).prop_map(str::to_owned),
        1 => prop::sample::select(&["XXX", "cny", "", "CNYY"][..]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn overrides_body() -> BoxedStrategy<Value> {
    (
        prop::option::of(prop::collection::btree_map(
            currency(),
            prop_oneof![0..200_000u64, any::<u64>()],
            0..3,
        )),
        prop::option::of(any::<u8>()),
    )
        .prop_map(|(thresholds, ratio)| {
            let mut body = json!({});
            if let Some(t) = thresholds {
                body["spend_thresholds"] = json!(t);
            }
            if let Some(r) = ratio {
                body["mint_ratio_percent"] = json!(r);
            }
            body
        })
        .boxed()
}

fn policy_body() -> BoxedStrategy<Value> {
    let limits = (
        prop::option::of(any::<u64>()),
        prop::option::of(0..20_000u64),
        prop::option::of(prop_oneof![0..(64u64 << 20), any::<u64>()]),
        prop::option::of(0..100_000u64),
        prop::option::of(0..100_000u64),
        prop::option::of(0..100_000u64),
    )
        .prop_map(|(fuel, deadline, memory, input, output, log)| {
            json!({"fuel": fuel, "deadline_ms": deadline, "memory_bytes": memory,
                "max_input_bytes": input, "max_output_bytes": output, "log_bytes": log})
        });
    let bounds = (
        prop::option::of(prop::collection::btree_map(
            currency(),
            (any::<u64>(), any::<u64>()),
            0..2,
        )),
        prop::option::of((any::<u8>(), any::<u8>())),
    )
        .prop_map(|(thresholds, ratio)| {
            json!({
                "spend_thresholds": thresholds.map(|t| t.into_iter()
                    .map(|(c, (min, max))| (c, json!({"min": min, "max": max})))
                    .collect::<serde_json::Map<_, _>>()),
                "mint_ratio_percent": ratio.map(|(min, max)| json!({"min": min, "max": max})),
            })
        });
    (
        prop::option::of((any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())),
        prop::option::of(prop::collection::btree_map(currency(), 0..200_000u64, 0..3)),
        prop::option::of(prop::collection::vec(word(), 0..3)),
        prop::option::of(any::<u8>()),
        prop::option::of(prop::collection::btree_map(
            prop::sample::select(&["default", "payment", "cred.put", "lights.on"][..]),
            any::<u32>(),
            0..3,
        )),
        prop::option::of(any::<u32>()),
        prop::option::of(prop::sample::select(&["escalate", "deny"][..])),
        prop::option::of(limits),
        prop::option::of(bounds),
        prop::option::of(prop::collection::btree_map(word(), word(), 0..3)),
    )
        .prop_map(
            |(
                triggers,
                thresholds,
                sensitive,
                ratio,
                ttl,
                per_hour,
                fail,
                limits,
                bounds,
                settings,
            )| {
                let mut body = serde_json::Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        // Omitted members stay omitted; `null` members come from the mutations.
                        body.insert(k.to_owned(), strip_nulls(v));
                    }
                };
                put(
                    "triggers",
                    triggers.map(|(a, b, c, d)| {
                        json!({"spend_threshold": a,
                        "sensitive_credential": b, "family_write": c, "mint_near_parent_scope": d})
                    }),
                );
                put("spend_thresholds", thresholds.map(|t| json!(t)));
                put("sensitive_categories", sensitive.map(|s| json!(s)));
                put("mint_ratio_percent", ratio.map(|r| json!(r)));
                put("ttl_seconds", ttl.map(|t| json!(t)));
                put("max_approval_requests_per_hour", per_hour.map(|n| json!(n)));
                put("plugin_fail_mode", fail.map(|f| json!(f)));
                put("plugin_limits", limits);
                put("override_bounds", bounds);
                put("settings", settings.map(|s| json!(s)));
                Value::Object(body)
            },
        )
        .boxed()
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

fn actor_body() -> BoxedStrategy<Value> {
    (
        prop_oneof![3 => word(), 1 => text()],
        prop::collection::vec(word(), 0..3),
        prop::collection::vec(prop_oneof![Just(MOM.to_owned()), word(), text()], 0..3),
        any::<bool>(),
    )
        .prop_map(|(id, tags, guardians, issue)| {
            json!({"id": id, "context_tags": tags, "guardians": guardians, "issue_token": issue})
        })
        .boxed()
}

fn webhook_body() -> BoxedStrategy<Value> {
    prop_oneof![
        // Valid URLs point at the discard port of the loopback: nothing is sent anywhere.
        2 => prop::sample::select(&[
            "http://127.0.0.1:9/hook",
            "https://127.0.0.1:9/x?y=1",
            "http://[::1]:9/",
        ][..])
        .prop_map(|u| json!({"url": u})),
        1 => prop::sample::select(&["ftp://127.0.0.1:9/", "http://", "127.0.0.1", "http:///x"][..])
            .prop_map(|u| json!({"url": u})),
        1 => text().prop_map(|u| json!({"url": u})),
    ]
    .boxed()
}

fn vendor_body() -> BoxedStrategy<Value> {
    (prop_oneof![3 => "[a-z0-9._-]{1,20}", 1 => text()], text())
        .prop_map(|(id, name)| json!({"id": id, "name": name}))
        .boxed()
}

fn mcp_payload(settled: String) -> BoxedStrategy<Payload> {
    let ids = vec![settled, "apr_unknown".to_owned(), String::new()];
    let arguments = prop_oneof![
        approval_body().prop_map(|mut b| {
            if let Some(p) = b.get_mut("provenance").map(Value::take) {
                b["tool"] = p["tool"].clone();
            }
            b.as_object_mut().unwrap().remove("provenance");
            ("request_approval", b)
        }),
        (
            prop::sample::select(ids),
            prop::option::of(prop_oneof![0..3u64, any::<u64>()]),
            any::<bool>(),
        )
            .prop_map(|(id, wait, get)| {
                let mut args = json!({"approval_id": id});
                if let Some(w) = wait {
                    args["wait_seconds"] = json!(w);
                }
                (
                    if get {
                        "get_approval"
                    } else {
                        "wait_for_approval"
                    },
                    args,
                )
            }),
        (text(), json_object()).prop_map(|(name, args)| ("unknown", json!({name: args}))),
    ];
    let message = prop_oneof![
        // Well-formed calls whose arguments are mutated: what reaches the tools.
        4 => (any::<u32>(), arguments, prop::collection::vec(mutation(), 0..3)).prop_map(
            |(id, (name, arguments), m)| {
                let arguments = mutate(arguments, &m);
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": name, "arguments": arguments}})
            }
        ),
        1 => any::<u32>().prop_map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "1"}}})),
        1 => (any::<u32>(), prop::sample::select(&["tools/list", "ping", "resources/list",
            "prompts/list", "notifications/initialized", "completion/complete"][..]))
            .prop_map(|(id, method)| json!({"jsonrpc": "2.0", "id": id, "method": method})),
        1 => (json_value(), text(), json_value())
            .prop_map(|(id, method, params)| json!({"jsonrpc": "2.0", "id": id,
                "method": method, "params": params})),
        1 => prop::collection::vec(json_value(), 0..3).prop_map(Value::Array),
    ];
    let accept = prop_oneof![
        6 => Just(Some("application/json, text/event-stream")),
        1 => prop::sample::select(&[None, Some("application/json"), Some("text/html"),
            Some("*/*")][..]),
    ];
    let version = prop_oneof![
        6 => Just(Some("2025-06-18".to_owned())),
        1 => Just(None),
        1 => "[ -~]{0,20}".prop_map(Some),
    ];
    let payload = prop_oneof![
        2 => message.clone().prop_map(|m| Payload {
            content_type: Some("application/json".to_owned()),
            headers: Vec::new(),
            body: Some(m.to_string().into_bytes()),
        }),
        1 => json_payload(message.boxed()),
    ];
    (payload, accept, version)
        .prop_map(|(mut p, accept, version)| {
            if let Some(a) = accept {
                p.headers.push(("accept", a.to_owned()));
            }
            if let Some(v) = version {
                p.headers.push(("mcp-protocol-version", v));
            }
            p
        })
        .boxed()
}

fn upload_payload(velocity: Arc<Vec<u8>>) -> BoxedStrategy<Payload> {
    let flipped = Arc::clone(&velocity);
    let cut = Arc::clone(&velocity);
    let bytes = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..2048),
        3 => prop::collection::vec((any::<u32>(), 1..=255u8), 1..4).prop_map(move |flips| {
            let mut b = flipped.to_vec();
            for (at, x) in flips {
                let i = usize::try_from(at).unwrap_or(0) % b.len();
                b[i] ^= x;
            }
            b
        }),
        1 => any::<u32>()
            .prop_map(move |n| cut[..usize::try_from(n).unwrap_or(0) % cut.len()].to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|rest| [b"\0asm\x01\0\0\0".as_slice(), &rest].concat()),
        1 => prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|rest| [b"\0asm\x0d\0\x01\0".as_slice(), &rest].concat()),
    ];
    let shape = prop_oneof![
        6 => prop::sample::select(&[
            Some("application/wasm"),
            Some("application/octet-stream"),
            None,
            Some("application/json"),
            Some("multipart/form-data"),
        ][..])
        .prop_map(|c| (c, None)),
        3 => (prop::sample::select(&["component", "signature", "other", ""][..]), any::<bool>())
            .prop_map(|(field, closed)| (Some("multipart"), Some((field, closed)))),
    ];
    let signature = prop::option::of(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| STANDARD.encode(b)),
        "[ -~]{0,60}",
    ]);
    (bytes, shape, signature)
        .prop_map(|(bytes, (content_type, form), signature)| {
            let mut p = Payload::default();
            if let Some(s) = signature {
                p.headers.push(("x-plugin-signature", s));
            }
            match form {
                None => {
                    p.content_type = content_type.map(str::to_owned);
                    p.body = Some(bytes);
                }
                Some((field, closed)) => {
                    p.content_type = Some("multipart/form-data; boundary=fuzzboundary".into());
                    let mut body = format!(
                        "--fuzzboundary\r\nContent-Disposition: form-data; name=\"{field}\"; \
                         filename=\"p.wasm\"\r\nContent-Type: application/wasm\r\n\r\n"
                    )
                    .into_bytes();
                    body.extend_from_slice(&bytes);
                    if closed {
                        body.extend_from_slice(b"\r\n--fuzzboundary--\r\n");
                    }
                    p.body = Some(body);
                }
            }
            p
        })
        .boxed()
}

fn credentials(tokens: Vec<String>) -> BoxedStrategy<Payload> {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let jwt = (
        json_value(),
        json_value(),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(move |(header, claims, sig)| {
            format!(
                "Bearer {}.{}.{}",
                b64(&header),
                b64(&claims),
                URL_SAFE_NO_PAD.encode(sig)
            )
        });
    let forged = (
        prop::sample::select(&["none", "EdDSA", "HS256", "RS256", ""][..]),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<i64>()),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(move |(alg, exp, iat, sig)| {
            let header = json!({"alg": alg, "typ": "JWT"});
            let claims = json!({"iss": approval_host::server::DEV_ISSUER, "sub": MOM,
                "exp": exp, "iat": iat});
            format!(
                "Bearer {}.{}.{}",
                b64(&header),
                b64(&claims),
                URL_SAFE_NO_PAD.encode(sig)
            )
        });
    let mutated = (
        prop::sample::select(tokens),
        prop::collection::vec((any::<u16>(), 0x20..0x7fu8), 1..3),
    )
        .prop_map(|(token, edits)| {
            let mut b = token.into_bytes();
            for (at, c) in edits {
                let i = usize::from(at) % b.len();
                b[i] = c;
            }
            format!("Bearer {}", String::from_utf8_lossy(&b))
        });
    let header = prop_oneof![
        "[ -~]{0,80}",
        "[ -~]{0,80}".prop_map(|t| format!("Bearer {t}")),
        jwt,
        forged,
        mutated,
        prop::sample::select(
            &[
                "Bearer",
                "Bearer ",
                "bearer x",
                "Basic YWRtaW46YWRtaW4=",
                "Bearer ahv_",
                "Bearer aha_",
                "Bearer ..",
                "Bearer a.b.c",
            ][..]
        )
        .prop_map(str::to_owned),
    ];
    header
        .prop_map(|h| Payload {
            headers: vec![("authorization", h)],
            ..Payload::default()
        })
        .boxed()
}

/// One fuzzed target: its calls, and the operations of the OpenAPI document it covers.
struct Target {
    name: &'static str,
    covers: &'static [&'static str],
    calls: BoxedStrategy<Call>,
}

/// The ids the targets aim at.
#[derive(Debug, Clone)]
struct Ids {
    settled: String,
    velocity: Arc<Vec<u8>>,
    tokens: Vec<String>,
}

const ENTRY_QUERY: &[(&str, Kind)] = &[
    ("vendor", Kind::Text(&[VENDOR, SANDBOX])),
    ("actor", Kind::Text(&[TEDDY, ROBOT])),
    ("approval_id", Kind::Text(&["apr_unknown"])),
    ("plugin", Kind::Text(&["velocity"])),
    (
        "rule",
        Kind::Text(&["builtin.spend_threshold", "velocity.hourly-spend"]),
    ),
    (
        "decision",
        Kind::Text(&[
            "allow", "escalate", "deny", "allowed", "pending", "approved",
        ]),
    ),
    (
        "type",
        Kind::Text(&[
            "request_received",
            "plugin_classified",
            "decided",
            "rule_fired",
        ]),
    ),
    ("since", Kind::Count),
    ("until", Kind::Count),
    ("after", Kind::Count),
    ("limit", Kind::Count),
];

const ACTOR_QUERY: &[(&str, Kind)] = &[("vendor", Kind::Text(&[VENDOR, SANDBOX]))];

fn targets(ids: &Ids) -> Vec<Target> {
    let settled = vec![ids.settled.clone()];
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        Target {
            name: "POST /v1/approvals",
            covers: &["post /v1/approvals"],
            calls: call(
                Method::POST,
                fixed("/v1/approvals"),
                no_query(),
                Who::Agent,
                json_payload(approval_body()),
            ),
        },
        Target {
            name: "GET /v1/approvals/{id}",
            covers: &["get /v1/approvals/{id}"],
            calls: call(
                Method::GET,
                path_id(settled.clone())
                    .prop_map(|id| format!("/v1/approvals/{id}"))
                    .boxed(),
                query(&[("wait", Kind::Count)]),
                Who::Agent,
                no_body(),
            ),
        },
        Target {
            name: "POST /v1/approvals/{id}/decision",
            covers: &["post /v1/approvals/{id}/decision"],
            calls: call(
                Method::POST,
                path_id(vec![FRESH.into(), FRESH.into(), ids.settled.clone()])
                    .prop_map(|id| format!("/v1/approvals/{id}/decision"))
                    .boxed(),
                no_query(),
                Who::Guardian,
                json_payload(decision_body()),
            ),
        },
        Target {
            name: "GET /v1/actors/{actor}/overrides",
            covers: &["get /v1/actors/{actor}/overrides"],
            calls: call(
                Method::GET,
                path_id(s(&[TEDDY, ROBOT]))
                    .prop_map(|a| format!("/v1/actors/{a}/overrides"))
                    .boxed(),
                query(ACTOR_QUERY),
                Who::Guardian,
                no_body(),
            ),
        },
        Target {
            name: "PUT /v1/actors/{actor}/overrides",
            covers: &["put /v1/actors/{actor}/overrides"],
            calls: call(
                Method::PUT,
                path_id(s(&[ROBOT]))
                    .prop_map(|a| format!("/v1/actors/{a}/overrides"))
                    .boxed(),
                prop_oneof![2 => Just(String::new()), 1 => query(ACTOR_QUERY)].boxed(),
                Who::Guardian,
                json_payload(overrides_body()),
            ),
        },
        Target {
            name: "GET /v1/inbox/history",
            covers: &["get /v1/inbox/history"],
            calls: call(
                Method::GET,
                fixed("/v1/inbox/history"),
                query(&[("limit", Kind::Count)]),
                Who::Guardian,
                no_body(),
            ),
        },
        Target {
            name: "PUT /v1/vendor/policy",
            covers: &["put /v1/vendor/policy"],
            calls: call(
                Method::PUT,
                fixed("/v1/vendor/policy"),
                no_query(),
                Who::Sandbox,
                json_payload(policy_body()),
            ),
        },
        Target {
            name: "POST /v1/vendor/actors/{actor}/tokens",
            covers: &["post /v1/vendor/actors/{actor}/tokens"],
            calls: call(
                Method::POST,
                path_id(s(&[ROBOT]))
                    .prop_map(|a| format!("/v1/vendor/actors/{a}/tokens"))
                    .boxed(),
                query(&[("revoke_others", Kind::Flag)]),
                Who::Sandbox,
                no_body(),
            ),
        },
        Target {
            name: "POST /v1/vendor/plugins/{version}/replay",
            covers: &["post /v1/vendor/plugins/{version}/replay"],
            calls: call(
                Method::POST,
                path_id(s(&["velocity@1", "1"]))
                    .prop_map(|v| format!("/v1/vendor/plugins/{v}/replay"))
                    .boxed(),
                query(&[("limit", Kind::Count)]),
                Who::Sandbox,
                no_body(),
            ),
        },
        Target {
            name: "POST /v1/vendor/plugins (upload)",
            covers: &["post /v1/vendor/plugins"],
            calls: call(
                Method::POST,
                fixed("/v1/vendor/plugins"),
                no_query(),
                Who::Sandbox,
                upload_payload(Arc::clone(&ids.velocity)),
            ),
        },
        Target {
            name: "PUT /v1/vendor/webhook",
            covers: &["put /v1/vendor/webhook"],
            calls: call(
                Method::PUT,
                fixed("/v1/vendor/webhook"),
                no_query(),
                Who::Sandbox,
                json_payload(webhook_body()),
            ),
        },
        // After the targets above: registering actors may take robot-1's guardian away.
        Target {
            name: "POST /v1/vendor/actors",
            covers: &["post /v1/vendor/actors"],
            calls: call(
                Method::POST,
                fixed("/v1/vendor/actors"),
                no_query(),
                Who::Sandbox,
                json_payload(actor_body()),
            ),
        },
        Target {
            name: "POST /v1/vendors",
            covers: &["post /v1/vendors"],
            calls: call(
                Method::POST,
                fixed("/v1/vendors"),
                no_query(),
                Who::Admin,
                json_payload(vendor_body()),
            ),
        },
        Target {
            name: "GET /v1/audit/entries",
            covers: &["get /v1/audit/entries"],
            calls: call(
                Method::GET,
                fixed("/v1/audit/entries"),
                query(ENTRY_QUERY),
                Who::Admin,
                no_body(),
            ),
        },
        Target {
            name: "GET /v1/audit/proofs/inclusion",
            covers: &["get /v1/audit/proofs/inclusion"],
            calls: call(
                Method::GET,
                fixed("/v1/audit/proofs/inclusion"),
                query(&[("index", Kind::Count), ("size", Kind::Count)]),
                Who::Admin,
                no_body(),
            ),
        },
        Target {
            name: "GET /v1/audit/proofs/consistency",
            covers: &["get /v1/audit/proofs/consistency"],
            calls: call(
                Method::GET,
                fixed("/v1/audit/proofs/consistency"),
                query(&[("old_size", Kind::Count), ("size", Kind::Count)]),
                Who::Admin,
                no_body(),
            ),
        },
        Target {
            name: "path ids of the other endpoints",
            covers: &[],
            calls: prop_oneof![
                call(
                    Method::GET,
                    path_id(settled.clone())
                        .prop_map(|id| format!("/v1/approvals/{id}/events"))
                        .boxed(),
                    no_query(),
                    Who::Agent,
                    no_body()
                ),
                call(
                    Method::GET,
                    path_id(settled.clone())
                        .prop_map(|id| format!("/v1/approvals/{id}/receipt"))
                        .boxed(),
                    no_query(),
                    Who::Agent,
                    no_body()
                ),
                call(
                    Method::GET,
                    path_id(s(&[TEDDY]))
                        .prop_map(|a| format!("/v1/vendor/actors/{a}"))
                        .boxed(),
                    no_query(),
                    Who::Vendor,
                    no_body()
                ),
                call(
                    Method::DELETE,
                    path_id(s(&[ROBOT]))
                        .prop_map(|a| format!("/v1/vendor/actors/{a}/tokens"))
                        .boxed(),
                    no_query(),
                    Who::Sandbox,
                    no_body()
                ),
                call(
                    Method::POST,
                    (
                        prop::sample::select(&["activate", "shadow", "deactivate"][..]),
                        path_id(s(&["velocity@1", "1", "velocity@2"]))
                    )
                        .prop_map(|(op, v)| format!("/v1/vendor/plugins/{v}/{op}"))
                        .boxed(),
                    no_query(),
                    Who::Sandbox,
                    no_body()
                ),
                call(
                    Method::POST,
                    path_id(s(&["velocity"]))
                        .prop_map(|n| format!("/v1/vendor/plugins/{n}/rollback"))
                        .boxed(),
                    no_query(),
                    Who::Sandbox,
                    no_body()
                ),
                call(
                    Method::POST,
                    path_id(s(&["no-such-vendor"]))
                        .prop_map(|v| format!("/v1/vendors/{v}/keys"))
                        .boxed(),
                    no_query(),
                    Who::Admin,
                    no_body()
                ),
            ]
            .boxed(),
        },
        Target {
            name: "POST /mcp (not in the OpenAPI document)",
            covers: &[],
            calls: call(
                Method::POST,
                fixed("/mcp"),
                no_query(),
                Who::Agent,
                mcp_payload(ids.settled.clone()),
            ),
        },
        Target {
            name: "credentials (GET /v1/whoami)",
            covers: &[],
            calls: call(
                Method::GET,
                prop::sample::select(&["/v1/whoami", "/v1/inbox", "/v1/vendor/policy"][..])
                    .prop_map(str::to_owned)
                    .boxed(),
                no_query(),
                Who::Nobody,
                credentials(ids.tokens.clone()),
            ),
        },
    ]
}

/// A host with the main vendor (velocity active, teddy-7 guarded by mom, a pending and a settled
/// approval) and the sandbox vendor the fuzzing may reconfigure (velocity, robot-1, also mom's).
struct World {
    host: TestHost,
    client: reqwest::Client,
    vendor: String,
    sandbox: String,
    agent: String,
    mom: String,
    pending: String,
    settled: String,
    /// Numbers the fresh pending approvals' amounts, so none joins another.
    fresh: AtomicU64,
    velocity: Arc<Vec<u8>>,
}

async fn upload_velocity(host: &TestHost, key: &str, bytes: &[u8]) {
    let (status, body) = host
        .put(
            "/v1/vendor/policy",
            key,
            json!({"plugin_limits": {"deadline_ms": 10000},
                "max_approval_requests_per_hour": 1_000_000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let upload = host
        .call(Method::POST, "/v1/vendor/plugins", key)
        .header("content-type", "application/wasm")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let (status, body) = common::answer(upload).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = host
        .post("/v1/vendor/plugins/velocity@1/activate", key, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn pay(minor_units: u64) -> Value {
    json!({"action": "payment",
        "params": {"amount": minor_units, "currency": "CNY", "recipient": "toy-shop"}})
}

async fn world(db: &TestDb) -> World {
    let host = TestHost::start(db, ManualClock::at(T0)).await;
    let velocity = Arc::new(common::plugin("velocity"));
    let vendor = host.vendor(VENDOR).await;
    upload_velocity(&host, &vendor, &velocity).await;
    let agent = host.actor(&vendor, TEDDY, &["toy"], &[MOM]).await;
    let sandbox = host.vendor(SANDBOX).await;
    upload_velocity(&host, &sandbox, &velocity).await;
    host.actor(&sandbox, ROBOT, &[], &[MOM]).await;
    let mom = host.guardian(MOM);
    let (status, pending) = host.post("/v1/approvals", &agent, pay(60_000)).await;
    assert_eq!(status, 202, "{pending}");
    let (status, settled) = host.post("/v1/approvals", &agent, pay(100)).await;
    assert_eq!(status, 200, "{settled}");
    World {
        client: reqwest::Client::builder()
            // A new connection for every request: a connection the host closed (after a 413,
            // say) is never reused, so a failed request always means the host failed it.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        vendor,
        sandbox,
        agent,
        mom,
        pending: pending["id"].as_str().unwrap().to_owned(),
        settled: settled["id"].as_str().unwrap().to_owned(),
        fresh: AtomicU64::new(0),
        velocity,
        host,
    }
}

impl World {
    fn authorization(&self, who: Who) -> Option<String> {
        let token = match who {
            Who::Agent => &self.agent,
            Who::Vendor => &self.vendor,
            Who::Sandbox => &self.sandbox,
            Who::Guardian => &self.mom,
            Who::Admin => ADMIN,
            Who::Stranger => "aha_not-a-token",
            Who::Nobody => return None,
        };
        Some(format!("Bearer {token}"))
    }

    /// A new pending approval of teddy-7's.
    async fn fresh_pending(&self) -> Result<String, String> {
        let n = self.fresh.fetch_add(1, Ordering::Relaxed);
        let response = self
            .client
            .post(format!("{}/v1/approvals", self.host.url))
            .bearer_auth(&self.agent)
            // A category of its own: not a tiny variation of another pending request, which
            // would merge into it.
            .json(
                &json!({"action": "payment", "params": {"amount": 60_000, "currency": "CNY",
                "recipient": "toy-shop", "merchant_category": format!("fuzz-{n}")}}),
            )
            .timeout(Duration::from_secs(HANG_SECONDS))
            .send()
            .await
            .map_err(|e| format!("creating a pending approval: {e}"))?;
        let (status, body) = common::answer(response).await;
        match body["id"].as_str() {
            Some(id) if status < 500 => Ok(id.to_owned()),
            _ => Err(format!("creating a pending approval: {status} {body}")),
        }
    }

    /// Sends `call`; names the outcome, or says what is wrong with the answer.
    async fn send(&self, call: &Call) -> Result<String, String> {
        let mut path = call.path.clone();
        if path.contains(FRESH) {
            path = path.replace(FRESH, &self.fresh_pending().await?);
        }
        let mut request = self
            .client
            .request(call.method.clone(), format!("{}{path}", self.host.url))
            .timeout(Duration::from_secs(HANG_SECONDS));
        if let Some(auth) = self.authorization(call.who) {
            request = request.header("authorization", auth);
        }
        if let Some(c) = &call.content_type {
            request = request.header("content-type", c);
        }
        for (k, v) in &call.headers {
            request = request.header(*k, v);
        }
        if let Some(body) = &call.body {
            // Under the body limit (1 MiB): the limit itself is checked on its own below.
            let mut body = body.clone();
            body.truncate(1_000_000);
            request = request.body(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => return Ok("not sendable (client refused)".into()),
            Err(e) if e.is_timeout() => {
                return Err(format!("no answer within {HANG_SECONDS} s: a hang"));
            }
            Err(e) => {
                return Err(format!(
                    "no answer: {e:?} (a panicking handler drops the connection)"
                ));
            }
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => {
                return Err(format!(
                    "{status}, then no body within {HANG_SECONDS} s: a hang"
                ));
            }
            Err(e) => return Err(format!("{status}, then the body broke off: {e:?}")),
        };
        let text = || shortened(&String::from_utf8_lossy(&bytes), 500);
        if status >= 500 {
            return Err(format!("{status}: {}", text()));
        }
        if status >= 400 {
            // The MCP transport answers a malformed JSON-RPC request with a JSON-RPC error.
            if path == "/mcp"
                && let Ok(answer) = serde_json::from_slice::<Value>(&bytes)
                && answer["jsonrpc"] == "2.0"
                && let (Some(code), Some(_)) = (
                    answer["error"]["code"].as_i64(),
                    answer["error"]["message"].as_str(),
                )
            {
                return Ok(format!("{status} JSON-RPC error {code}"));
            }
            let code = error_code(&bytes).map_err(|e| format!("{status} {e}: {}", text()))?;
            return Ok(format!("{status} {code}"));
        }
        // An MCP tool answers the API's errors inside a result: an internal one is a 500 too.
        if path == "/mcp"
            && let Ok(answer) = serde_json::from_slice::<Value>(&bytes)
            && let Some(tool) = answer["result"]["content"][0]["text"].as_str()
        {
            let tool: Value = serde_json::from_str(tool).unwrap_or_default();
            if tool["code"] == "internal" {
                return Err(format!("{status} with a tool error `internal`: {}", text()));
            }
            if let Some(code) = tool["code"].as_str() {
                return Ok(format!("{status} tool error {code}"));
            }
        }
        Ok(status.to_string())
    }
}

/// The `code` of an error answer, which must be JSON with a stable code and a message.
fn error_code(bytes: &[u8]) -> Result<String, String> {
    let body: Value = serde_json::from_slice(bytes).map_err(|_| "is not JSON".to_owned())?;
    let code = body["code"].as_str().ok_or("has no `code`")?;
    let stable = !code.is_empty()
        && code.len() <= 64
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !stable {
        return Err(format!("has the code {code:?}, not a stable identifier"));
    }
    match body["message"].as_str() {
        Some(m) if !m.trim().is_empty() => Ok(code.to_owned()),
        _ => Err("has no message".into()),
    }
}

/// Parameters the OpenAPI document declares in a path that has no such segment (a query
/// parameter documented as a path parameter, say): "method path: name".
fn misplaced_parameters(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in ["get", "put", "post", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or_default();
                if p["in"] == "path" && !path.contains(&format!("{{{name}}}")) {
                    out.push(format!("{method} {path}: {name}"));
                }
            }
        }
    }
    out
}

/// The operations of the OpenAPI document that take a request body or query parameters, as
/// "method path".
fn body_or_query_operations(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let shared_query = item["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
        for method in ["get", "put", "post", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            let query = shared_query
                || op["parameters"].as_array().is_some_and(|p| {
                    p.iter().any(|p| {
                        p["in"] == "query"
                            || (p["in"] == "path"
                                && !path
                                    .contains(&format!("{{{}}}", p["name"].as_str().unwrap_or(""))))
                    })
                });
            if query || op.get("requestBody").is_some() {
                out.insert(format!("{method} {path}"));
            }
        }
    }
    out
}

async fn healthy(w: &World) -> Result<(), String> {
    for path in ["/healthz", "/readyz"] {
        let response = w
            .client
            .get(format!("{}{path}", w.host.url))
            .timeout(Duration::from_secs(HANG_SECONDS))
            .send()
            .await
            .map_err(|e| format!("{path}: no answer: {e}"))?;
        if response.status() != 200 {
            return Err(format!("{path}: {}", response.status()));
        }
    }
    Ok(())
}

/// Bodies over the limit (2 MiB) on every endpoint that reads a body: 413 with the error JSON.
async fn oversized(w: &World) -> Figures {
    let started = Instant::now();
    let mut figures = Figures::default();
    let calls = [
        (Method::POST, "/v1/approvals".to_owned(), Who::Agent),
        (
            Method::POST,
            format!("/v1/approvals/{}/decision", w.pending),
            Who::Guardian,
        ),
        (
            Method::PUT,
            format!("/v1/actors/{ROBOT}/overrides"),
            Who::Guardian,
        ),
        (Method::PUT, "/v1/vendor/policy".to_owned(), Who::Sandbox),
        (Method::POST, "/v1/vendor/actors".to_owned(), Who::Sandbox),
        (Method::PUT, "/v1/vendor/webhook".to_owned(), Who::Sandbox),
        (Method::POST, "/v1/vendors".to_owned(), Who::Admin),
        (Method::POST, "/mcp".to_owned(), Who::Agent),
    ];
    for (method, path, who) in calls {
        // A client of its own: the host refuses once the limit is passed and closes.
        let client = reqwest::Client::new();
        let mut body = b"{\"a\":\"".to_vec();
        body.resize(2 << 20, b'x');
        let mut request = client
            .request(method.clone(), format!("{}{path}", w.host.url))
            .timeout(Duration::from_secs(HANG_SECONDS))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(auth) = w.authorization(who) {
            request = request.header("authorization", auth);
        }
        figures.executions += 1;
        let outcome = match coded_answer(request, 300).await {
            Ok((413, code)) => Ok(format!("413 {code}")),
            Ok((status, code)) => Err(format!("{status} {code}, not 413")),
            Err(e) => Err(e),
        };
        figures.note(outcome, |e| {
            format!("{method} {path} with a 2 MiB body: {e}")
        });
    }
    figures.seconds = started.elapsed().as_secs_f64();
    figures
}

/// NUL in every string of a valid body (each value and each key in turn), in every path id and
/// in every query value: each one a request on its own, every answer checked (PostgreSQL text
/// cannot hold NUL, so each of these must be refused or stored some other way, never a 5xx).
async fn nul_everywhere(w: &World) -> Figures {
    let started = Instant::now();
    let mut figures = Figures::default();
    let pending_pay = json!({"action": "payment", "params": {"amount": 60_000, "currency": "CNY",
        "recipient": "toy-shop", "merchant_category": "toys"}, "idempotency_key": "k-1",
        "provenance": {"surface": "voice", "tool": "shop"}});
    let bodies: Vec<(Method, String, Who, Value)> = vec![
        (
            Method::POST,
            "/v1/approvals".into(),
            Who::Agent,
            pending_pay,
        ),
        (
            Method::POST,
            "/v1/approvals".into(),
            Who::Agent,
            json!({"action": "lights.on", "params": {"room": "kitchen"}}),
        ),
        (
            Method::POST,
            "/v1/approvals".into(),
            Who::Agent,
            json!({"action": "capability.mint", "params": {"capability": "camera",
                "requested_scope": 9, "parent_scope": 10}}),
        ),
        (
            Method::POST,
            "/v1/approvals".into(),
            Who::Agent,
            json!({"action": "cred.put", "params": {"service": "bank", "category": "banking"}}),
        ),
        (
            Method::POST,
            "/v1/approvals".into(),
            Who::Agent,
            json!({"action": "memory.write", "params": {"namespace": "family", "key": "k"}}),
        ),
        (
            Method::POST,
            format!("/v1/approvals/{FRESH}/decision"),
            Who::Guardian,
            json!({"decision": "deny", "reason": "no"}),
        ),
        (
            Method::POST,
            format!("/v1/approvals/{FRESH}/decision"),
            Who::Guardian,
            json!({"decision": "revise", "params": {"amount": 10, "currency": "CNY",
                "recipient": "toy-shop"}}),
        ),
        (
            Method::PUT,
            format!("/v1/actors/{ROBOT}/overrides?vendor={SANDBOX}"),
            Who::Guardian,
            json!({"spend_thresholds": {"CNY": 100}}),
        ),
        (
            Method::PUT,
            "/v1/vendor/policy".into(),
            Who::Sandbox,
            json!({"spend_thresholds": {"CNY": 100}, "sensitive_categories": ["banking"],
                "ttl_seconds": {"payment": 60}, "settings": {"a": "b"}}),
        ),
        (
            Method::POST,
            "/v1/vendor/actors".into(),
            Who::Sandbox,
            json!({"id": "nul-actor", "context_tags": ["t"], "guardians": [MOM]}),
        ),
        (
            Method::PUT,
            "/v1/vendor/webhook".into(),
            Who::Sandbox,
            json!({"url": "http://127.0.0.1:9/hook"}),
        ),
        (
            Method::POST,
            "/v1/vendors".into(),
            Who::Admin,
            json!({"id": "nul-vendor", "name": "n"}),
        ),
    ];
    let mut calls: Vec<(Method, String, Who, Option<Value>)> = Vec::new();
    for (method, path, who, body) in bodies {
        let all = pointers(&body);
        for at in all.iter().skip(1) {
            let mut with_nul = body.clone();
            let node = with_nul.pointer_mut(at).unwrap();
            if let Value::String(s) = node {
                s.push_str("\0x");
                calls.push((method.clone(), path.clone(), who, Some(with_nul)));
            }
            // The member's name.
            let (parent, last) = at.rsplit_once('/').unwrap();
            let mut renamed = body.clone();
            if let Some(Value::Object(map)) = renamed.pointer_mut(parent) {
                let last = last.replace("~1", "/").replace("~0", "~");
                if let Some(v) = map.remove(&last) {
                    map.insert(format!("{last}\0"), v);
                    calls.push((method.clone(), path.clone(), who, Some(renamed)));
                }
            }
        }
    }
    for (method, path, who) in [
        (Method::GET, "/v1/approvals/%00", Who::Agent),
        (Method::GET, "/v1/approvals/%00/events", Who::Agent),
        (Method::GET, "/v1/approvals/%00/receipt", Who::Agent),
        (Method::POST, "/v1/approvals/%00/decision", Who::Guardian),
        (Method::GET, "/v1/actors/%00/overrides", Who::Guardian),
        (Method::GET, "/v1/vendor/actors/%00", Who::Vendor),
        (Method::POST, "/v1/vendor/actors/%00/tokens", Who::Sandbox),
        (Method::DELETE, "/v1/vendor/actors/%00/tokens", Who::Sandbox),
        (
            Method::POST,
            "/v1/vendor/plugins/a%00@1/activate",
            Who::Sandbox,
        ),
        (
            Method::POST,
            "/v1/vendor/plugins/a%00@1/replay",
            Who::Sandbox,
        ),
        (
            Method::POST,
            "/v1/vendor/plugins/a%00/rollback",
            Who::Sandbox,
        ),
        (Method::POST, "/v1/vendors/%00/keys", Who::Admin),
        (
            Method::GET,
            "/v1/actors/teddy-7/overrides?vendor=%00",
            Who::Guardian,
        ),
        (
            Method::GET,
            "/v1/audit/entries?vendor=%00&actor=%00&approval_id=%00&plugin=%00",
            Who::Admin,
        ),
        (
            Method::GET,
            "/v1/audit/entries?rule=%00&decision=%00&type=%00",
            Who::Admin,
        ),
        (Method::GET, "/v1/%00", Who::Admin),
    ] {
        let body = (method == Method::POST && path.contains("decision"))
            .then(|| json!({"decision": "approve"}));
        calls.push((method, path.to_owned(), who, body));
    }
    for (method, path, who, body) in calls {
        let call = Call {
            method: method.clone(),
            path: path.clone(),
            who,
            content_type: body.as_ref().map(|_| "application/json".to_owned()),
            headers: Vec::new(),
            body: body.as_ref().map(|b| b.to_string().into_bytes()),
        };
        figures.executions += 1;
        let outcome = w.send(&call).await;
        figures.note(outcome, |e| format!("{call:?}: {e}"));
    }
    figures.seconds = started.elapsed().as_secs_f64();
    figures
}

/// Every path of the document with each method it does not list: a JSON 4xx (405 or 404).
async fn other_methods(w: &World, doc: &Value) -> Figures {
    let started = Instant::now();
    let mut figures = Figures::default();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let path = path
            .replace("{id}", &w.settled)
            .replace("{actor}", TEDDY)
            .replace("{version}", "velocity@1")
            .replace("{name}", "velocity")
            .replace("{vendor}", VENDOR);
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                continue;
            }
            figures.executions += 1;
            let request = w
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    format!("{}{path}", w.host.url),
                )
                .bearer_auth(ADMIN)
                .timeout(Duration::from_secs(HANG_SECONDS));
            let outcome = coded_answer(request, 200).await.and_then(|(status, code)| {
                if (400..500).contains(&status) {
                    Ok(format!("{status} {code}"))
                } else {
                    Err(format!("{status} {code}"))
                }
            });
            figures.note(outcome, |e| {
                format!("{} {path}: {e}", method.to_uppercase())
            });
        }
    }
    figures.seconds = started.elapsed().as_secs_f64();
    figures
}

fn http_fuzz(group: &'static str, db: fn() -> std::pin::Pin<Box<dyn Future<Output = TestDb>>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(db());
    let w = rt.block_on(world(&db));
    let mut failures = Vec::new();
    let mut order = 0;
    let mut report = |name: &str, figures: Figures, failures: &mut Vec<String>| {
        eprintln!(
            "{group} {name}: {} executions in {:.1} s, outcomes {:?}",
            figures.executions, figures.seconds, figures.outcomes
        );
        failures.extend(figures.failures.iter().map(|f| format!("{name}: {f}")));
        publish(group, order, name, &figures);
        order += 1;
    };

    // Every operation of the document that takes a body or a query is fuzzed below.
    let doc: Value = rt.block_on(async {
        reqwest::get(format!("{}/openapi.json", w.host.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    // Query parameters must be documented as such, or no client sees them (a failure, reported
    // with the rest; the table below counts them as the query parameters they are).
    let misplaced = misplaced_parameters(&doc);
    let mut figures = Figures {
        executions: 1,
        ..Figures::default()
    };
    if misplaced.is_empty() {
        figures
            .outcomes
            .insert("query parameters in the query".into(), 1);
    } else {
        figures.outcomes.insert("FAILED".into(), 1);
        figures.failures.push(format!(
            "/openapi.json declares query parameters as path parameters of paths without such \
             a segment: {misplaced:?}"
        ));
    }
    report("/openapi.json parameters", figures, &mut failures);
    let operations = body_or_query_operations(&doc);
    let ids = Ids {
        settled: w.settled.clone(),
        velocity: Arc::clone(&w.velocity),
        tokens: vec![w.mom.clone(), w.agent.clone(), w.vendor.clone()],
    };
    let targets = targets(&ids);
    let covered: BTreeSet<String> = targets
        .iter()
        .flat_map(|t| t.covers.iter().map(|c| (*c).to_owned()))
        .collect();
    let missing: Vec<&String> = operations.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "operations of /openapi.json with a body or query that no target fuzzes: {missing:?}"
    );
    let stale: Vec<&String> = covered.difference(&operations).collect();
    assert!(
        stale.is_empty(),
        "targets for operations the document does not list with a body or query: {stale:?}"
    );
    eprintln!(
        "{group}: {} operations take a body or query: {operations:?}",
        operations.len()
    );

    // A long-poll with the largest wait answers within the host's cap (10 s here), still pending.
    let longpoll = {
        let request = w
            .client
            .get(format!(
                "{}/v1/approvals/{}?wait={}",
                w.host.url,
                w.pending,
                u64::MAX
            ))
            .bearer_auth(&w.agent)
            .timeout(Duration::from_secs(HANG_SECONDS));
        rt.spawn(async move {
            let started = Instant::now();
            let response = request.send().await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.map_err(|e| format!("{e:?}"))?;
            Ok::<_, String>((status, body, started.elapsed()))
        })
    };

    let cases = common::report::scale(150, 3_000);
    let current = Mutex::new(String::new());
    for target in &targets {
        let mut figures = fuzz(cases, &target.calls, &current, |call| {
            rt.block_on(w.send(call))
        });
        if let Err(e) = rt.block_on(healthy(&w)) {
            figures
                .failures
                .push(format!("the host stopped answering after this target: {e}"));
        }
        report(target.name, figures, &mut failures);
        if target.name == "PUT /v1/vendor/webhook" {
            // Leave no webhook pointing anywhere.
            let _ = rt.block_on(
                w.client
                    .delete(format!("{}/v1/vendor/webhook", w.host.url))
                    .bearer_auth(&w.sandbox)
                    .send(),
            );
        }
    }
    let figures = rt.block_on(nul_everywhere(&w));
    report(
        "NUL in every string, path id and query value",
        figures,
        &mut failures,
    );
    // Whatever the inputs were, the log holds only entries its own verifier reads back.
    let mut figures = Figures {
        executions: 1,
        ..Figures::default()
    };
    let audit = &w.host.state.audit;
    let verified = rt.block_on(async {
        audit.checkpoint().await.map_err(|e| e.to_string())?;
        let mut export = Vec::new();
        audit.export(&mut export).await.map_err(|e| e.to_string())?;
        verify_export(&export[..], audit.vkey(), &[]).map_err(|e| e.to_string())
    });
    match verified {
        Ok(report) if report.failures.is_empty() => {
            figures
                .outcomes
                .insert(format!("{} entries verified", report.entries), 1);
        }
        Ok(report) => figures.failures.push(format!(
            "the audit log does not verify: {:?}",
            report.failures
        )),
        Err(e) => figures.failures.push(format!("exporting the log: {e}")),
    }
    report(
        "the audit log verifies after every input",
        figures,
        &mut failures,
    );
    let figures = rt.block_on(oversized(&w));
    report("bodies over the limit (2 MiB)", figures, &mut failures);
    let figures = rt.block_on(other_methods(&w, &doc));
    report("methods the document does not list", figures, &mut failures);

    // The optional outside check (long size, the SQLite host only).
    if common::report::long() && group == GROUPS[1] {
        let figures = rt.block_on(schemathesis(&w));
        report(
            "schemathesis run against /openapi.json",
            figures,
            &mut failures,
        );
    }

    let mut figures = Figures {
        executions: 1,
        ..Figures::default()
    };
    match rt.block_on(longpoll) {
        Ok(Ok((202, body, took))) if body["status"] == "pending" => {
            figures.outcomes.insert("202 pending".into(), 1);
            figures.seconds = took.as_secs_f64();
        }
        other => figures.failures.push(format!(
            "GET /v1/approvals/{{pending}}?wait={}: {other:?}",
            u64::MAX
        )),
    }
    report("long-poll with wait=u64::MAX", figures, &mut failures);

    if let Err(e) = rt.block_on(healthy(&w)) {
        failures.push(format!("at the end: {e}"));
    }
    assert_eq!(
        w.host.clock.now_ms(),
        T0,
        "the fuzzing never moves the host's clock"
    );
    drop(w);
    drop(db);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Runs schemathesis (when installed) against the host's OpenAPI document, each tag with its
/// caller's credentials, checking `not_a_server_error`: one execution per tag, its summary as the
/// outcome, a failure when it finds one (its output is in the test's log).
async fn schemathesis(w: &World) -> Figures {
    let started = Instant::now();
    let mut figures = Figures::default();
    let installed = tokio::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .await;
    let version = match installed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => {
            figures
                .outcomes
                .insert("not run: schemathesis not installed".into(), 1);
            return figures;
        }
    };
    figures.outcomes.insert(version, 0);
    // Its working directory (schemathesis keeps a cache there) is a temporary one.
    let cwd = tempfile::tempdir().unwrap();
    for (tag, who) in [
        ("agent", Who::Agent),
        ("guardian", Who::Guardian),
        ("vendor", Who::Sandbox),
        ("platform", Who::Admin),
        ("public", Who::Admin),
    ] {
        let auth = w.authorization(who).unwrap_or_default();
        let out = tokio::process::Command::new("schemathesis")
            .current_dir(cwd.path())
            .args([
                "run",
                &format!("{}/openapi.json", w.host.url),
                "--checks",
                "not_a_server_error",
                "--include-tag",
                tag,
                // Schemathesis cannot generate `application/wasm` bodies; the uploads have a
                // target of their own above.
                "--exclude-operation-id",
                "upload_plugin",
                "--max-examples",
                "50",
                "--request-timeout",
                "30",
                "-H",
                &format!("Authorization: {auth}"),
            ])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "schemathesis {tag}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = stdout
            .lines()
            .rev()
            .find(|l| l.contains("passed") || l.contains("failed") || l.contains("error"))
            .unwrap_or("")
            .trim_matches(|c: char| c == '=' || c.is_whitespace())
            .to_owned();
        figures.executions += 1;
        figures.outcomes.insert(format!("tag {tag}: {summary}"), 1);
        if !out.status.success() {
            figures
                .failures
                .push(format!("schemathesis, tag {tag}: {summary}"));
        }
    }
    figures.seconds = started.elapsed().as_secs_f64();
    figures
}

#[test]
fn http_inputs_sqlite() {
    http_fuzz("HTTP, SQLite", || Box::pin(common::sqlite()));
}

#[test]
fn http_inputs_postgres() {
    http_fuzz("HTTP, PostgreSQL", || Box::pin(common::postgres()));
}
