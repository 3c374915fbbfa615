//! The load driver: starts the real `approval-host serve` (release build) on loopback, seeds it
//! through the API, and drives it with `wrk` (a C load generator, `apt-get install wrk`) and an
//! open-loop Rust client. Each figure is measured beside its limit in the same run.
//!
//! `cargo bench -p approval-host --bench load -- [decisions] [postgres] [neighbours] [pending] [vendors]`
//! (no argument: all). It prints Markdown tables and writes them to
//! `target/bench-report/load-<section>.md`; `scripts/bench` puts them into BENCHMARKS.md.
//!
//! - `decisions`: allowed decisions (built-in triggers + the velocity plugin active + durable
//!   audit append + token signing) at increasing concurrency on SQLite, then the same with no
//!   plugin (the decision path without Wasm), `GET /healthz` (the HTTP stack's ceiling), and an
//!   open-loop run at half the peak rate for its latency.
//! - `postgres`: the same decisions on PostgreSQL.
//! - `neighbours`: one vendor's decisions while another vendor's plugin loops to its deadline on
//!   every call.
//! - `pending`: 1,000,000 pending approvals: the host's memory, a burst of 100,000 expiries, and
//!   decision latency as the pending set grows.
//! - `vendors`: 100 vendors' plugins called concurrently: throughput and the host's memory.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN: &str = "bench-admin-token";

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn plugin(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("APPROVAL_HOST_PLUGINS_DIR")).join(format!("{name}.wasm")))
        .unwrap()
}

/// A running `approval-host serve` on a free loopback port; stopped (SIGTERM) on drop.
struct Server {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(database_url: Option<&str>) -> Server {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nadmin_token = \"{ADMIN}\"\n",
            data.path().display()
        );
        if let Some(url) = database_url {
            writeln!(config, "database_url = \"{url}\"").unwrap();
        }
        let path = data.path().join("host.toml");
        std::fs::write(&path, config).unwrap();
        // The host's log goes to `$APPROVAL_HOST_BENCH_LOG_DIR/host-<port>.log` when set.
        let log_dir = std::env::var_os("APPROVAL_HOST_BENCH_LOG_DIR")
            .map_or_else(|| data.path().to_owned(), PathBuf::from);
        let log = std::fs::File::create(log_dir.join(format!("host-{port}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_approval-host"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            url,
            _data: data,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host's resident memory, in MiB.
    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The API, for seeding.
struct Api {
    url: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    /// A vendor with `actors` devices (their agent tokens), optionally running `plugin`.
    async fn vendor(
        &self,
        id: &str,
        actors: usize,
        plugin_bytes: Option<Vec<u8>>,
        deadline_ms: u64,
    ) -> (String, Vec<String>) {
        let created = self
            .call(
                reqwest::Method::POST,
                "/v1/vendors",
                ADMIN,
                Some(json!({"id": id, "name": id})),
            )
            .await;
        let key = created["api_key"].as_str().unwrap().to_owned();
        self.call(
            reqwest::Method::PUT,
            "/v1/vendor/policy",
            &key,
            Some(json!({
                "plugin_limits": {"deadline_ms": deadline_ms},
                "max_approval_requests_per_hour": 1_000_000,
                "ttl_seconds": {"default": 86_400},
                "settings": {"max-payments-per-hour": "1000000000"}
            })),
        )
        .await;
        if let Some(bytes) = plugin_bytes {
            let uploaded: Value = self
                .client
                .post(format!("{}/v1/vendor/plugins", self.url))
                .bearer_auth(&key)
                .body(bytes)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let reference = uploaded["reference"].as_str().unwrap().to_owned();
            self.call(
                reqwest::Method::POST,
                &format!("/v1/vendor/plugins/{reference}/activate"),
                &key,
                Some(json!({})),
            )
            .await;
        }
        let mut tokens = Vec::with_capacity(actors);
        for i in 0..actors {
            let actor = self
                .call(
                    reqwest::Method::POST,
                    "/v1/vendor/actors",
                    &key,
                    Some(json!({"id": format!("device-{i}"), "context_tags": ["toy"], "guardians": [format!("guardian-{id}-{i}")], "issue_token": true})),
                )
                .await;
            tokens.push(actor["token"].as_str().unwrap().to_owned());
        }
        (key, tokens)
    }
}

/// One `wrk` run's figures.
#[derive(Debug, Clone, Default)]
struct Run {
    concurrency: usize,
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn millis(text: &str) -> f64 {
    let text = text.trim();
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

/// Runs `wrk` with a Lua script (or a plain GET) at `connections` for `seconds`.
fn wrk(url: &str, script: Option<&Path>, connections: usize, seconds: u64) -> Run {
    let mut command = Command::new("wrk");
    command
        .args([
            "--latency",
            "-t",
            &connections.min(2).to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
        ])
        .arg(url);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command.output().expect(
        "wrk is needed for the load benchmarks (apt-get install wrk; scripts/bench installs it)",
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut run = Run {
        concurrency: connections,
        ..Run::default()
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => run.rps = n.parse().unwrap_or(0.0),
            ["50%", v] => run.p50_ms = millis(v),
            ["90%", v] => run.p90_ms = millis(v),
            ["99%", v] => run.p99_ms = millis(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                run.errors += n.parse::<u64>().unwrap_or(0)
            }
            [first, ..] if first.starts_with("Socket") => {
                run.errors += words
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    run
}

/// A wrk script that POSTs a small allowed payment, rotating over the devices' tokens.
fn decision_script(tokens: &[String], name: &str) -> PathBuf {
    let path = target_dir().join(format!("bench-report/{name}.lua"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let list = tokens
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(
        &path,
        format!(
            r#"local tokens = {{{list}}}
local n = 0
wrk.method = "POST"
wrk.body = '{{"action":"payment","params":{{"amount":2000,"currency":"CNY","recipient":"toy-shop"}}}}'
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/approvals", {{["content-type"] = "application/json", ["authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]}})
end
response = function(status, headers, body)
  if status ~= 200 then wrk.thread:stop() end
end
"#
        ),
    )
    .unwrap();
    path
}

fn table(title: &str, runs: &[Run]) -> String {
    let mut out = format!(
        "\n**{title}**\n\n| concurrency | requests/s | p50 | p90 | p99 | errors |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for r in runs {
        writeln!(
            out,
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            r.concurrency, r.rps, r.p50_ms, r.p90_ms, r.p99_ms, r.errors
        )
        .unwrap();
    }
    out
}

fn sweep(url: &str, script: Option<&Path>, levels: &[usize], seconds: u64) -> Vec<Run> {
    let mut runs = Vec::new();
    for &c in levels {
        let run = wrk(url, script, c, seconds);
        eprintln!(
            "  c={c}: {:.0}/s p50 {:.2} ms p99 {:.2} ms errors {}",
            run.rps, run.p50_ms, run.p99_ms, run.errors
        );
        runs.push(run);
    }
    runs
}

fn peak(runs: &[Run]) -> Run {
    runs.iter()
        .cloned()
        .fold(Run::default(), |a, b| if b.rps > a.rps { b } else { a })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends POSTs at a fixed `rate` for `seconds` regardless of answers (open loop); latencies in ms.
async fn open_loop(url: &str, tokens: &[String], rate: f64, seconds: f64) -> (Vec<f64>, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let body =
        r#"{"action":"payment","params":{"amount":2000,"currency":"CNY","recipient":"toy-shop"}}"#;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as usize;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval * u32::try_from(i).unwrap();
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let request = client
            .post(format!("{url}/v1/approvals"))
            .bearer_auth(&tokens[i % tokens.len()])
            .header("content-type", "application/json")
            .body(body);
        handles.push(tokio::spawn(async move {
            // Latency from when the request was due: a late start counts (no coordinated omission).
            let ok = request
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            (due.elapsed().as_secs_f64() * 1000.0, ok)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for h in handles {
        let (ms, ok) = h.await.unwrap();
        latencies.push(ms);
        errors += u64::from(!ok);
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, errors)
}

const LEVELS: &[usize] = &[1, 4, 16, 32, 64, 128];

/// Devices per vendor in the decision runs: each asks a few times a minute, as a fleet would.
const ACTORS: usize = 2_000;

async fn decisions(report: &mut String, database: Option<&str>, label: &str) {
    let server = Server::start(database);
    let api = Api {
        url: server.url.clone(),
        client: reqwest::Client::new(),
    };
    let (_, tokens) = api
        .vendor("with-plugin", ACTORS, Some(plugin("velocity")), 250)
        .await;
    let (_, plain) = api.vendor("no-plugin", ACTORS, None, 250).await;
    eprintln!("{label}: allowed decisions with the velocity plugin");
    let with_plugin = sweep(
        &format!("{}/", server.url),
        Some(&decision_script(&tokens, "with-plugin")),
        LEVELS,
        6,
    );
    eprintln!("{label}: the same without a plugin");
    let without = sweep(
        &format!("{}/", server.url),
        Some(&decision_script(&plain, "no-plugin")),
        LEVELS,
        6,
    );
    eprintln!("{label}: GET /healthz");
    let health = sweep(&format!("{}/healthz", server.url), None, LEVELS, 4);
    let top = peak(&with_plugin);
    let half = top.rps / 2.0;
    eprintln!("{label}: open loop at {half:.0}/s");
    let (latencies, errors) = open_loop(&server.url, &tokens, half, 8.0).await;
    let rss = server.rss_mib();
    let entries: Value = api
        .call(reqwest::Method::GET, "/v1/audit/checkpoint", ADMIN, None)
        .await;
    writeln!(report, "\n### Allowed decisions on {label}\n").unwrap();
    report.push_str(&table(
        "`POST /v1/approvals`, allowed, velocity plugin active",
        &with_plugin,
    ));
    report.push_str(&table("the same path with no plugin", &without));
    report.push_str(&table(
        "`GET /healthz` (the HTTP stack's ceiling, same server)",
        &health,
    ));
    let plain_top = peak(&without);
    let health_top = peak(&health);
    writeln!(
        report,
        "\nPeak: **{:.0} decisions/s** at concurrency {} (p99 {:.2} ms); without the plugin {:.0}/s; `/healthz` {:.0}/s. \
         Open loop at half the peak ({half:.0}/s for 8 s, {} requests, {errors} errors): p50 {:.2} ms, p90 {:.2} ms, **p99 {:.2} ms**, max {:.2} ms. \
         Host RSS after the run: {rss:.0} MiB; the audit log holds {} entries.",
        top.rps,
        top.concurrency,
        top.p99_ms,
        plain_top.rps,
        health_top.rps,
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        entries["size"],
    )
    .unwrap();
}

async fn neighbours(report: &mut String) {
    let server = Server::start(None);
    let api = Api {
        url: server.url.clone(),
        client: reqwest::Client::new(),
    };
    let (_, quiet_tokens) = api
        .vendor("vendor-a", 100, Some(plugin("velocity")), 250)
        .await;
    let (_, hostile_tokens) = api
        .vendor("vendor-b", 100, Some(plugin("hostile_loop")), 10)
        .await;
    let script_a = decision_script(&quiet_tokens, "vendor-a");
    eprintln!("neighbours: vendor A alone");
    let quiet = wrk(&format!("{}/", server.url), Some(&script_a), 8, 8);
    eprintln!("neighbours: vendor A while vendor B's plugin loops on every call");
    let hostile_script = {
        let path = target_dir().join("bench-report/vendor-b.lua");
        let list = hostile_tokens
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(&path, format!(
            r#"local tokens = {{{list}}}
local n = 0
wrk.method = "POST"
wrk.body = '{{"action":"lights.on","params":{{"room":"hall"}}}}'
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/approvals", {{["content-type"] = "application/json", ["authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]}})
end
"#)).unwrap();
        path
    };
    let url = server.url.clone();
    let hostile = std::thread::spawn(move || wrk(&format!("{url}/"), Some(&hostile_script), 8, 10));
    std::thread::sleep(Duration::from_secs(1));
    let busy = wrk(&format!("{}/", server.url), Some(&script_a), 8, 8);
    let b = hostile.join().unwrap();
    writeln!(report, "\n### Hostile neighbours\n").unwrap();
    writeln!(
        report,
        "Vendor A's allowed decisions (velocity, 8 connections) alone: {:.0}/s, p50 {:.2} ms, **p99 {:.2} ms**. \
         While vendor B's plugin (`hostile-loop`, deadline 10 ms) spins to its deadline on every call of B's 8 connections \
         ({:.0} B requests/s, each escalated by B's fail mode): A {:.0}/s, p50 {:.2} ms, **p99 {:.2} ms** ({:.2}× quiet).",
        quiet.rps, quiet.p50_ms, quiet.p99_ms, b.rps, busy.rps, busy.p50_ms, busy.p99_ms, busy.p99_ms / quiet.p99_ms
    )
    .unwrap();
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = ["decisions", "postgres", "neighbours"];
    let sections: Vec<&str> = if chosen.is_empty() {
        all.to_vec()
    } else {
        all.iter()
            .copied()
            .filter(|s| chosen.iter().any(|c| c == s))
            .collect()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = target_dir().join("bench-report");
    std::fs::create_dir_all(&dir).unwrap();
    for section in sections {
        let mut report = String::new();
        rt.block_on(async {
            match section {
                "decisions" => decisions(&mut report, None, "SQLite").await,
                "postgres" => {
                    let url = std::env::var("APPROVAL_HOST_TEST_POSTGRES")
                        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
                    decisions(&mut report, Some(&url), "PostgreSQL").await;
                }
                "neighbours" => neighbours(&mut report).await,
                _ => {}
            }
        });
        println!("{report}");
        std::fs::write(dir.join(format!("load-{section}.md")), report).unwrap();
    }
}
