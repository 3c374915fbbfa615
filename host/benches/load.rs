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
//! - `neighbours`: one vendor's decisions while another vendor's plugin loops to its deadline
//!   whenever it is called, with the plugin breaker off and with the default breaker.
//! - `pending`: 1,000,000 pending approvals: the host's memory, a burst of 100,000 expiries, and
//!   decision latency as the pending set grows.
//! - `vendors`: 100 vendors' plugins called concurrently: throughput and the host's memory.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

#[path = "../../tests/common/wasm.rs"]
mod wasm;
use wasm::{plugin, variant};

const ADMIN: &str = "bench-admin-token";

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A running `approval-host serve` on a free loopback port; stopped (SIGTERM) on drop.
struct Server {
    child: Child,
    url: String,
    stopped: bool,
    _data: Option<tempfile::TempDir>,
}

impl Server {
    /// A host on a fresh data directory.
    fn start(database_url: Option<&str>) -> Server {
        Server::start_with(database_url, "")
    }

    /// A host on a fresh data directory, with `limits` (TOML lines) in its `[limits]` section.
    fn start_with(database_url: Option<&str>, limits: &str) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut server = Server::launch(data.path(), database_url, limits);
        server._data = Some(data);
        server
    }

    /// A host on `data` (its SQLite file survives a restart).
    fn start_at(data: &Path, database_url: Option<&str>) -> Server {
        Server::launch(data, database_url, "")
    }

    fn launch(data: &Path, database_url: Option<&str>, limits: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nadmin_token = \"{ADMIN}\"\n",
            data.display()
        );
        if let Some(url) = database_url {
            writeln!(config, "database_url = \"{url}\"").unwrap();
        }
        writeln!(config, "[limits]\n{limits}").unwrap();
        // `APPROVAL_HOST_BENCH_CONFIG`: more TOML for every host (whole sections), for experiments.
        if let Ok(extra) = std::env::var("APPROVAL_HOST_BENCH_CONFIG") {
            writeln!(config, "{extra}").unwrap();
        }
        let path = data.join("host.toml");
        std::fs::write(&path, config).unwrap();
        // The host's log goes to `$APPROVAL_HOST_BENCH_LOG_DIR/host-<port>.log` when set.
        let log_dir = std::env::var_os("APPROVAL_HOST_BENCH_LOG_DIR")
            .map_or_else(|| data.to_owned(), PathBuf::from);
        let log = std::fs::File::create(log_dir.join(format!("host-{port}.log"))).unwrap();
        // `APPROVAL_HOST_BENCH_BIN`: another build of the host (an A/B pair of binaries).
        let binary = std::env::var_os("APPROVAL_HOST_BENCH_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_approval-host")),
            PathBuf::from,
        );
        let child = Command::new(binary)
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
            stopped: false,
            _data: None,
        }
    }

    /// A client of this host's API.
    fn api(&self) -> Api {
        Api {
            url: self.url.clone(),
            client: reqwest::Client::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time the host has used so far (user and system, all threads), in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // After the command name in parentheses: state is field 3, utime and stime 14 and 15,
        // in the kernel's USER_HZ ticks (100 a second).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(14) + ticks(15)) / 100.0
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

impl Server {
    /// Stops the host (SIGTERM) and waits for it to exit.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
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

    /// An agent's request; its HTTP status.
    async fn request(&self, token: &str, body: &Value) -> u16 {
        self.client
            .post(format!("{}/v1/approvals", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
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
                "settings": {"max-payments-per-hour": "1000000000"},
                "generic_actions": {"declared": ["lights.on"]}
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
        let tokens = futures_util::stream::iter(0..actors)
            .map(|i| {
                let key = key.clone();
                async move {
                    let actor = self
                        .call(
                            reqwest::Method::POST,
                            "/v1/vendor/actors",
                            &key,
                            Some(json!({"id": format!("device-{i}"), "context_tags": ["toy"], "guardians": [format!("guardian-{id}-{i}")], "issue_token": true})),
                        )
                        .await;
                    actor["token"].as_str().unwrap().to_owned()
                }
            })
            .buffered(16)
            .collect::<Vec<_>>()
            .await;
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
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    // Paced by a thread of its own, which sleeps to each due time (Linux's high-resolution
    // timers): tokio's timer has a resolution of 1 ms, and with it requests started 0.93 ms
    // after their due time at the median, 2 ms at p99 (BENCHMARKS, round 12).
    let runtime = tokio::runtime::Handle::current();
    let url = format!("{url}/v1/approvals");
    let tokens = tokens.to_vec();
    let handles = tokio::task::spawn_blocking(move || {
        (0..total)
            .map(|i| {
                let due = started + interval * u32::try_from(i).unwrap();
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let request = client
                    .post(&url)
                    .bearer_auth(&tokens[i % tokens.len()])
                    .header("content-type", "application/json")
                    .body(body);
                runtime.spawn(async move {
                    // Latency from when the request was due: a late start counts (no
                    // coordinated omission).
                    let late = due.elapsed().as_secs_f64() * 1000.0;
                    let ok = request
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    (due.elapsed().as_secs_f64() * 1000.0, ok, late)
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Each request's latency, whether it succeeded, and how late it started (ms).
    let mut answered = Vec::with_capacity(total);
    for h in handles {
        answered.push(h.await.unwrap());
    }
    // `APPROVAL_HOST_BENCH_TIMELINE=file`: each request's due time, latency and how late it
    // started (ms), to see when the slow ones happen. Each open loop of the run appends its own
    // block, headed by the Unix time of its first request's due time.
    if let Some(path) = std::env::var_os("APPROVAL_HOST_BENCH_TIMELINE") {
        use std::io::Write as _;
        let mut lines = format!("# started {started_unix:.4}\n");
        lines += &answered
            .iter()
            .enumerate()
            .map(|(i, (ms, _, late))| {
                format!(
                    "{:.3} {ms:.3} {late:.3}\n",
                    i as f64 * interval.as_secs_f64() * 1000.0
                )
            })
            .collect::<String>();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(lines.as_bytes()))
            .unwrap();
    }
    let errors = answered.iter().filter(|(_, ok, _)| !ok).count() as u64;
    let mut latencies: Vec<f64> = answered.iter().map(|(ms, _, _)| *ms).collect();
    latencies.sort_by(f64::total_cmp);
    (latencies, errors)
}

/// The median time (ns) criterion measured for `id` in this run (`scripts/bench` runs the micro
/// benchmarks first), or `None` when that benchmark has not run.
fn criterion_median_ns(id: &str) -> Option<f64> {
    let path = target_dir().join(format!("criterion/{id}/new/estimates.json"));
    let estimates: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

/// One Ed25519 signature over a token-sized message, median of 25 rounds of 1,000 (ns).
fn signature_ns() -> f64 {
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let message = [0x5a_u8; 320];
    let mut rounds: Vec<f64> = (0..25)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..1_000 {
                std::hint::black_box(key.sign(std::hint::black_box(&message)));
            }
            started.elapsed().as_nanos() as f64 / 1_000.0
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(2.0, |n| n.get() as f64)
}

fn us(ns: Option<f64>) -> String {
    ns.map_or_else(
        || "— (run scripts/bench)".to_owned(),
        |n| format!("{:.1} µs", n / 1000.0),
    )
}

/// The decision beside its mandatory parts, each timed alone in this run: as a cost (the
/// machine's time per operation at its own peak, both cores busy) and as latency at one client.
fn parts(report: &mut String, decision: &[Run], health: &[Run]) {
    let cores = cores();
    let plugin = criterion_median_ns("plugin_call/fresh_instance_call");
    let append_amortized =
        criterion_median_ns("append_sqlite/256_concurrent_writers").map(|n| n / 256.0);
    let append_alone = criterion_median_ns("append_sqlite/1_per_commit");
    let sign = signature_ns();
    let top = peak(decision);
    let http_top = peak(health);
    let decision_cost = 1e9 / top.rps;
    let http_cost = 1e9 / http_top.rps;
    let cost_sum = http_cost
        + plugin.unwrap_or(f64::NAN) / cores
        + sign / cores
        + append_amortized.unwrap_or(f64::NAN);
    let one = &decision[0];
    let http_one = &health[0];
    let latency_sum = http_one.p50_ms * 1e6
        + plugin.unwrap_or(f64::NAN)
        + sign
        + append_alone.unwrap_or(f64::NAN);
    writeln!(
        report,
        "\n**The decision beside its mandatory parts** (each timed alone in this run)\n\n\
         | part | alone | cost at its own peak ({cores:.0} cores) |\n\
         | --- | ---: | ---: |\n\
         | one HTTP round trip (`GET /healthz`, p50 at 1 connection; peak {:.0}/s) | {:.1} µs | {:.1} µs |\n\
         | one plugin call (velocity, fresh instance; criterion `plugin_call/fresh_instance_call`) | {} | {} |\n\
         | one Ed25519 signature (320-byte message) | {:.1} µs | {:.1} µs |\n\
         | one durable audit write (criterion `append/sqlite`: alone, one fsync; amortized over 256 concurrent writers) | {} | {} |\n\
         | **sum of the parts** | **{:.1} µs** | **{:.1} µs** |\n\
         | **the allowed decision** (p50 at 1 connection; peak {:.0}/s) | **{:.1} µs** | **{:.1} µs** |\n\
         | decision ÷ sum | **{:.2}×** | **{:.2}×** |",
        http_top.rps,
        http_one.p50_ms * 1000.0,
        http_cost / 1000.0,
        us(plugin),
        us(plugin.map(|p| p / cores)),
        sign / 1000.0,
        sign / cores / 1000.0,
        us(append_alone),
        us(append_amortized),
        latency_sum / 1000.0,
        cost_sum / 1000.0,
        top.rps,
        one.p50_ms * 1000.0,
        decision_cost / 1000.0,
        one.p50_ms * 1e6 / latency_sum,
        decision_cost / cost_sum,
    )
    .unwrap();
}

const LEVELS: &[usize] = &[1, 4, 16, 32, 64, 128];

/// Devices per vendor in the decision runs: each asks a few times a minute, as a fleet would.
const ACTORS: usize = 2_000;

/// Pairs of runs with and without the plugin in the decisions section.
const PAIRS: usize = 5;

/// One pair of runs with and without the plugin: its share of a decision by rate and by the
/// host's CPU time, and the CPU time per decision with and without it (µs).
struct Pair {
    by_rate: f64,
    by_cpu: f64,
    cpu_us: (f64, f64),
}

async fn decisions(report: &mut String, database: Option<&str>, label: &str) {
    let server = Server::start(database);
    let api = server.api();
    let (_, tokens) = api
        .vendor("with-plugin", ACTORS, Some(plugin("velocity")), 250)
        .await;
    let (_, plain) = api.vendor("no-plugin", ACTORS, None, 250).await;
    let (script_with, script_without) = (
        decision_script(&tokens, "with-plugin"),
        decision_script(&plain, "no-plugin"),
    );
    eprintln!("{label}: allowed decisions with the velocity plugin");
    let with_plugin = sweep(&format!("{}/", server.url), Some(&script_with), LEVELS, 6);
    eprintln!("{label}: the same without a plugin");
    let without = sweep(
        &format!("{}/", server.url),
        Some(&script_without),
        LEVELS,
        6,
    );
    eprintln!("{label}: GET /healthz");
    let health = sweep(&format!("{}/healthz", server.url), None, LEVELS, 4);
    let top = peak(&with_plugin);
    let half = top.rps / 2.0;
    // The sweeps left each device of `with-plugin` with hundreds of requests in its last hour
    // (every one of them read by each decision's history query); devices asking a few times a
    // minute, as a fleet does, are a third vendor's, fresh.
    let (_, fresh) = api
        .vendor("open-loop", ACTORS, Some(plugin("velocity")), 250)
        .await;
    let per_device = with_plugin.iter().map(|r| r.rps * 6.0).sum::<f64>() / ACTORS as f64;
    eprintln!("{label}: open loop at {half:.0}/s");
    let (latencies, errors) = open_loop(&server.url, &fresh, half, 8.0).await;
    eprintln!("{label}: open loop at {half:.0}/s, the swept devices");
    let (swept, swept_errors) = open_loop(&server.url, &tokens, half, 8.0).await;
    // After the open loops, which this load would slow (a larger log, more WAL to checkpoint).
    // The plugin's share by throughput from the two sweeps' peaks is the difference of two
    // runs a minute apart, each of which moves by up to a tenth on this shared machine; runs
    // with and without the plugin in alternation, at the peak's concurrency, pair them closely.
    // Beside the rate, the host's CPU time per decision: a neighbour on the machine takes time
    // from the host, not CPU time per decision (though batches, and so the CPU time a decision
    // takes, shrink with the rate).
    let pairs: Vec<Pair> = if database.is_none() {
        eprintln!("{label}: with and without the plugin, alternating");
        (0..PAIRS)
            .map(|_| {
                let url = format!("{}/", server.url);
                let timed = |script: &Path| {
                    let before = server.cpu_seconds();
                    let run = wrk(&url, Some(script), top.concurrency, 4);
                    let cpu_us = (server.cpu_seconds() - before) * 1e6 / (run.rps * 4.0);
                    (run.rps, cpu_us)
                };
                let (with, with_cpu) = timed(&script_with);
                let (without, without_cpu) = timed(&script_without);
                Pair {
                    by_rate: (1.0 - with / without) * 100.0,
                    by_cpu: (1.0 - without_cpu / with_cpu) * 100.0,
                    cpu_us: (with_cpu, without_cpu),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
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
    if database.is_none() {
        parts(report, &with_plugin, &health);
        let plugin = criterion_median_ns("plugin_call/fresh_instance_call");
        let median = |of: fn(&Pair) -> f64| {
            let mut sorted: Vec<f64> = pairs.iter().map(of).collect();
            sorted.sort_by(f64::total_cmp);
            percentile(&sorted, 0.5)
        };
        let each = |of: fn(&Pair) -> f64| {
            pairs
                .iter()
                .map(|p| format!("{:.1} %", of(p)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            report,
            "\nThe Wasm plugin's share of the path, in {} alternating pairs of 4 s runs with and without it at {} connections (medians): \
             by the host's CPU time per decision, **{:.1} %** ({:.1} µs with it, {:.1} µs without; each pair: {}); \
             by throughput, {:.1} % (each pair: {}); between the two sweeps' peaks, {:.0}/s and {:.0}/s, {:.1} %. \
             By time, one call ({}) is {} of a decision's cost at peak ({:.1} µs).",
            pairs.len(),
            top.concurrency,
            median(|p| p.by_cpu),
            median(|p| p.cpu_us.0),
            median(|p| p.cpu_us.1),
            each(|p| p.by_cpu),
            median(|p| p.by_rate),
            each(|p| p.by_rate),
            top.rps,
            plain_top.rps,
            (1.0 - top.rps / plain_top.rps) * 100.0,
            us(plugin),
            plugin.map_or_else(
                || "—".to_owned(),
                |p| format!("{:.1} %", p / cores() / (1e9 / top.rps) * 100.0)
            ),
            1e6 / top.rps,
        )
        .unwrap();
    }
    writeln!(
        report,
        "\nPeak: **{:.0} decisions/s** at concurrency {} (p99 {:.2} ms); without the plugin {:.0}/s; `/healthz` {:.0}/s. \
         Open loop at half the peak ({half:.0}/s for 8 s, {} requests, {errors} errors) from {ACTORS} fresh devices: p50 {:.2} ms, p90 {:.2} ms, **p99 {:.2} ms**, max {:.2} ms. \
         The same rate from the devices of the sweeps (about {per_device:.0} requests each in their last hour, {swept_errors} errors): p50 {:.2} ms, p90 {:.2} ms, **p99 {:.2} ms**, max {:.2} ms. \
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
        percentile(&swept, 0.5),
        percentile(&swept, 0.9),
        percentile(&swept, 0.99),
        swept.last().copied().unwrap_or(f64::NAN),
        entries["size"],
    )
    .unwrap();
}

async fn neighbours(report: &mut String) {
    writeln!(report, "\n### Hostile neighbours\n").unwrap();
    // First with the plugin breaker off (B's plugin spins to its deadline on every call), then
    // with the default breaker (B's plugin is paused after three timeouts in a row), then, as the
    // control, B's same traffic with a well-behaved plugin: what B's load costs A by itself.
    for (label, limits, b_plugin) in [
        (
            "breaker off (`plugin_pause_after = 0`)",
            "plugin_pause_after = 0",
            "hostile_loop",
        ),
        (
            "default breaker (`plugin_pause_after = 3`)",
            "",
            "hostile_loop",
        ),
        ("control: B well-behaved", "", "velocity"),
    ] {
        let (quiet, busy, b, outcomes) = neighbours_with(limits, b_plugin).await;
        let b_load = if b_plugin == "velocity" {
            format!(
                "Beside B's same traffic with a well-behaved plugin (velocity: {:.0} B requests/s, each allowed; B's plugin: {outcomes})",
                b.rps
            )
        } else {
            format!(
                "While vendor B's plugin (`hostile-loop`, deadline 10 ms) spins whenever it is called, on B's 8 connections \
                 ({:.0} B requests/s, each escalated by B's fail mode; B's plugin outcomes: {outcomes})",
                b.rps
            )
        };
        writeln!(
            report,
            "**{label}.** Vendor A's allowed decisions (velocity, 8 connections, 100 devices) alone: {:.0}/s, p50 {:.2} ms, **p99 {:.2} ms**. \
             {b_load}: A, from 100 other devices, {:.0}/s, p50 {:.2} ms, **p99 {:.2} ms** ({:.2}× quiet).\n",
            quiet.rps, quiet.p50_ms, quiet.p99_ms, busy.rps, busy.p50_ms, busy.p99_ms, busy.p99_ms / quiet.p99_ms
        )
        .unwrap();
    }
}

/// Vendor A alone, A beside B's spinning plugin, B's load, and B's plugin outcomes by code.
async fn neighbours_with(limits: &str, b_plugin: &str) -> (Run, Run, Run, String) {
    let server = Server::start_with(None, limits);
    let api = server.api();
    // A's quiet and busy runs each from 100 devices of their own: each decision reads its
    // device's history of the last day, so devices the quiet run left with hundreds of requests
    // would make the busy run slower by themselves.
    let (_, a_tokens) = api
        .vendor("vendor-a", 200, Some(plugin("velocity")), 250)
        .await;
    let (b_key, hostile_tokens) = api
        .vendor("vendor-b", 100, Some(plugin(b_plugin)), 10)
        .await;
    let (quiet_tokens, busy_tokens) = a_tokens.split_at(100);
    let script_a = decision_script(quiet_tokens, "vendor-a");
    let script_busy = decision_script(busy_tokens, "vendor-a-busy");
    eprintln!("neighbours ({limits:?}): vendor A alone");
    let quiet = wrk(&format!("{}/", server.url), Some(&script_a), 8, 8);
    eprintln!("neighbours ({limits:?}): vendor A beside vendor B ({b_plugin})");
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
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end
wrk.method = "POST"
request = function()
  n = n + 1
  -- A new room every time: an identical request would join the pending one without a call.
  local body = '{{"action":"lights.on","params":{{"room":"hall-' .. id .. '-' .. n .. '"}}}}'
  return wrk.format(nil, "/v1/approvals", {{["content-type"] = "application/json", ["authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]}}, body)
end
"#)).unwrap();
        path
    };
    let url = server.url.clone();
    let hostile = std::thread::spawn(move || wrk(&format!("{url}/"), Some(&hostile_script), 8, 10));
    std::thread::sleep(Duration::from_secs(1));
    let busy = wrk(&format!("{}/", server.url), Some(&script_busy), 8, 8);
    let b = hostile.join().unwrap();
    let plugins = api
        .call(reqwest::Method::GET, "/v1/vendor/plugins", &b_key, None)
        .await;
    let stats = &plugins[0]["stats"];
    let mut outcomes = format!("{} calls", stats["calls"]);
    for pair in stats["error_codes"].as_array().into_iter().flatten() {
        write!(
            outcomes,
            ", {} `{}`",
            pair[1],
            pair[0].as_str().unwrap_or("?")
        )
        .unwrap();
    }
    (quiet, busy, b, outcomes)
}

/// Devices of the `pending` section's vendor, and the pending approvals of each stage.
const WAITING_ACTORS: usize = 10_000;
const PENDING_STAGES: &[usize] = &[10_000, 100_000, 1_000_000];
const BURST: u64 = 100_000;

/// Adds copies `from..to` of each of the `waiting` vendor's API-made pending approvals (one per
/// device) straight into the host's SQLite file, while the host is stopped: a million through
/// the API would take longer than the whole suite may. Each copy is the template row with its
/// own id (time-ordered, as the host makes them) and params hash (the database allows one
/// pending request per device and params).
async fn copy_pending(url: &str, from: usize, to: usize) -> Duration {
    use sqlx::{Connection as _, Row as _};
    let started = Instant::now();
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    // Seeding, not serving: a cache that holds the whole file, and no fsync until the end.
    for pragma in ["PRAGMA cache_size = -2000000", "PRAGMA synchronous = OFF"] {
        sqlx::query(pragma).execute(&mut conn).await.unwrap();
    }
    let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('approvals')")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let values = columns
        .iter()
        .map(|c| match c.as_str() {
            // Time-ordered like the host's own ids: copy k is stamped k seconds after its template.
            "id" => {
                "substr(a.id, 1, instr(a.id, '_')) || printf('%012x', a.created_at_ms + ?1 * 1000) \
                 || substr(a.id, instr(a.id, '_') + 13)"
                    .to_owned()
            }
            "params_hash" => "a.params_hash || '-' || ?1".to_owned(),
            "idempotency_key" => "NULL".to_owned(),
            other => format!("a.{other}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!(
        "INSERT INTO approvals ({}) SELECT {values} FROM approvals a \
         WHERE a.vendor = 'waiting' AND a.status = 'pending' AND instr(a.params_hash, '-') = 0",
        columns.join(", ")
    );
    let mut tx = conn.begin().await.unwrap();
    for copy in from..to {
        sqlx::query(&insert)
            .bind(i64::try_from(copy).unwrap())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    conn.close().await.unwrap();
    started.elapsed()
}

async fn count(conn: &mut sqlx::SqliteConnection, sql: &str, bind: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(conn)
        .await
        .unwrap()
}

fn file_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}

async fn pending(report: &mut String) {
    use sqlx::Connection as _;
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("approval-host.db");
    let url = format!("sqlite://{}", file.display());
    let mut server = Server::start_at(data.path(), None);
    let mut api = server.api();
    eprintln!("pending: {WAITING_ACTORS} devices, each with a ¥600 payment waiting");
    let (_, tokens) = api.vendor("waiting", WAITING_ACTORS, None, 250).await;
    let (_, others) = api.vendor("busy", 2_000, None, 250).await;
    let payment = json!({"action": "payment", "params": {"amount": 60_000, "currency": "CNY", "recipient": "bike-shop"}});
    let statuses = futures_util::stream::iter(&tokens)
        .map(|t| api.request(t, &payment))
        .buffer_unordered(32)
        .collect::<Vec<u16>>()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every ¥600 payment waits"
    );
    let script = decision_script(&tokens, "waiting");
    let other_script = decision_script(&others, "busy");
    let mut rows = String::from(
        "| pending approvals | seeding (SQL copies) | host RSS | database file | devices with requests waiting: decisions/s, p50, p99 | other devices: decisions/s, p50, p99 |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut have = WAITING_ACTORS;
    let mut rss = Vec::new();
    for &stage in PENDING_STAGES {
        let mut seeding = String::from("through the API");
        if stage > have {
            server.stop();
            let took = copy_pending(&url, have / WAITING_ACTORS, stage / WAITING_ACTORS).await;
            seeding = format!("{:.1} s", took.as_secs_f64());
            have = stage;
            server = Server::start_at(data.path(), None);
            api.url.clone_from(&server.url);
        }
        eprintln!("pending: {stage} waiting");
        let target = format!("{}/", server.url);
        wrk(&target, Some(&script), 16, 2);
        let run = wrk(&target, Some(&script), 16, 5);
        let other = wrk(&target, Some(&other_script), 16, 5);
        let mib = server.rss_mib();
        rss.push(mib);
        writeln!(
            rows,
            "| {stage} | {seeding} | {mib:.0} MiB | {:.0} MiB | {:.0}/s, {:.2} ms, {:.2} ms | {:.0}/s, {:.2} ms, {:.2} ms |",
            file_mib(&file),
            run.rps,
            run.p50_ms,
            run.p99_ms,
            other.rps,
            other.p50_ms,
            other.p99_ms
        )
        .unwrap();
    }
    // The burst: the 100,000 oldest of the million expire at once, as requests made in the same
    // few minutes do; the host's sweeper (every second) settles each as a timeout, with its
    // audit entry and its push event.
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let timed_out_before = count(
        &mut conn,
        "SELECT count(*) FROM approvals WHERE status = 'timed_out' AND ?1 = ?1",
        0,
    )
    .await;
    sqlx::query(
        "UPDATE approvals SET expires_at_ms = ?1 WHERE id IN \
         (SELECT id FROM approvals WHERE status = 'pending' ORDER BY id LIMIT ?2)",
    )
    .bind(now_ms)
    .bind(i64::try_from(BURST).unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    let expired_at = Instant::now();
    eprintln!("pending: {BURST} expired at once");
    let mut left = i64::MAX;
    while left > 0 && expired_at.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = count(
            &mut conn,
            "SELECT count(*) FROM approvals WHERE status = 'pending' AND expires_at_ms <= ?1",
            now_ms,
        )
        .await;
    }
    let settled_in = expired_at.elapsed();
    let timed_out = count(
        &mut conn,
        "SELECT count(*) FROM approvals WHERE status = 'timed_out' AND ?1 = ?1",
        0,
    )
    .await
        - timed_out_before;
    let entries: Value = api
        .call(reqwest::Method::GET, "/v1/audit/checkpoint", ADMIN, None)
        .await;
    let rss_after = server.rss_mib();
    writeln!(report, "\n### Scale of waiting (SQLite)\n").unwrap();
    report.push_str(&rows);
    let growth = rss.last().unwrap() / rss.first().unwrap();
    writeln!(
        report,
        "\nFrom {} to {} pending approvals ({}×), the host's RSS went from {:.0} to {:.0} MiB ({growth:.2}×): they live in the database. \
         The first {WAITING_ACTORS} came through the API (one ¥600 payment per device); the rest are SQL copies of them. \
         Decisions at 16 connections are allowed small payments, by the devices that have requests waiting (at a million, each has 100 in its hourly history, which the rate limit and the plugins' history read) and by 2,000 other devices of another vendor.\n\n\
         A burst of {BURST} expiries at once (the oldest {BURST}, their `expires_at` set to now while the host runs): \
         **settled in {:.2} s** (from the update until none is left pending, the sweeper running every second), {timed_out} timeouts with their audit entries \
         (the log now holds {} entries); RSS afterwards {rss_after:.0} MiB.",
        PENDING_STAGES[0],
        PENDING_STAGES.last().unwrap(),
        PENDING_STAGES.last().unwrap() / PENDING_STAGES[0],
        rss.first().unwrap(),
        rss.last().unwrap(),
        settled_in.as_secs_f64(),
        entries["size"],
    )
    .unwrap();
}

/// Vendors in the `vendors` section, each with its own build of the velocity plugin.
const VENDORS: usize = 100;
const DEVICES_PER_VENDOR: usize = 20;

async fn vendors(report: &mut String) {
    let server = Server::start(None);
    let api = server.api();
    let rss_empty = server.rss_mib();
    eprintln!("vendors: {VENDORS} vendors, each uploading its own build of velocity");
    let mut fleets = Vec::new();
    let uploads = Instant::now();
    for v in 0..VENDORS {
        let id = format!("vendor-{v:03}");
        let bytes = variant(&plugin("velocity"), &id);
        let (_, tokens) = api.vendor(&id, DEVICES_PER_VENDOR, Some(bytes), 250).await;
        fleets.push(tokens);
    }
    let seeding = uploads.elapsed();
    let rss_seeded = server.rss_mib();
    let target = format!("{}/", server.url);
    let one = decision_script(&fleets[0], "one-vendor");
    // Consecutive requests go to different vendors' plugins.
    let interleaved: Vec<String> = (0..DEVICES_PER_VENDOR)
        .flat_map(|d| fleets.iter().map(move |f| f[d].clone()))
        .collect();
    let all = decision_script(&interleaved, "all-vendors");
    eprintln!("vendors: one vendor's plugin");
    wrk(&target, Some(&one), 32, 2);
    let alone = wrk(&target, Some(&one), 32, 6);
    let rss_one = server.rss_mib();
    eprintln!("vendors: all {VENDORS} vendors' plugins in turn");
    wrk(&target, Some(&all), 32, 2);
    let mixed = wrk(&target, Some(&all), 32, 6);
    let rss_all = server.rss_mib();
    writeln!(report, "\n### {VENDORS} vendors' plugins at once\n").unwrap();
    writeln!(
        report,
        "| run (32 connections, allowed decisions) | decisions/s | p50 | p99 | host RSS after |\n| --- | ---: | ---: | ---: | ---: |\n\
         | one vendor's plugin | {:.0} | {:.2} ms | {:.2} ms | {rss_one:.0} MiB |\n\
         | {VENDORS} vendors' plugins, each request to the next vendor | {:.0} | {:.2} ms | {:.2} ms | {rss_all:.0} MiB |\n\n\
         {VENDORS} distinct components (the velocity plugin with a custom section naming its vendor, so each has its own sha256, \
         compilation and cache entry) were uploaded and activated in {:.1} s. Host RSS: {rss_empty:.0} MiB empty, {rss_seeded:.0} MiB with the {VENDORS} plugins loaded \
         ({:.2} MiB per plugin). Every call takes a fresh instance from the one pooling allocator, whichever vendor it belongs to; \
         all vendors in turn run at {:.2}× the single vendor's throughput.",
        alone.rps,
        alone.p50_ms,
        alone.p99_ms,
        mixed.rps,
        mixed.p50_ms,
        mixed.p99_ms,
        seeding.as_secs_f64(),
        (rss_seeded - rss_empty) / VENDORS as f64,
        mixed.rps / alone.rps,
    )
    .unwrap();
}

/// Only the open-loop run, at `APPROVAL_HOST_BENCH_RATE` requests/s (default 2,700), on
/// SQLite: for looking into the latency tail (with `APPROVAL_HOST_BENCH_TIMELINE`).
async fn open_loop_only(report: &mut String) {
    let server = Server::start(None);
    let api = server.api();
    let (_, tokens) = api
        .vendor("with-plugin", ACTORS, Some(plugin("velocity")), 250)
        .await;
    let rate: f64 = std::env::var("APPROVAL_HOST_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2_700.0);
    wrk(
        &format!("{}/", server.url),
        Some(&decision_script(&tokens, "open-loop-warm-up")),
        16,
        3,
    );
    let (latencies, errors) = open_loop(&server.url, &tokens, rate, 8.0).await;
    writeln!(
        report,
        "Open loop at {rate:.0}/s for 8 s ({} requests, {errors} errors): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    )
    .unwrap();
}

/// The schema the PostgreSQL section's host lives in, dropped before and after.
const PG_SCHEMA: &str = "bench_load";

fn postgres_url() -> String {
    std::env::var("APPROVAL_HOST_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn drop_pg_schema() {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// A database URL whose tables go to a fresh [`PG_SCHEMA`] of the test server.
async fn fresh_pg_schema() -> String {
    use sqlx::Connection as _;
    drop_pg_schema().await;
    let base = postgres_url();
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {PG_SCHEMA}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{PG_SCHEMA}")
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = ["decisions", "postgres", "neighbours", "pending", "vendors"];
    // Run only when named.
    let extra = ["openloop"];
    let sections: Vec<&str> = if chosen.is_empty() {
        all.to_vec()
    } else {
        all.iter()
            .chain(&extra)
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
                    let url = fresh_pg_schema().await;
                    decisions(&mut report, Some(&url), "PostgreSQL").await;
                    drop_pg_schema().await;
                }
                "neighbours" => neighbours(&mut report).await,
                "pending" => pending(&mut report).await,
                "vendors" => vendors(&mut report).await,
                "openloop" => open_loop_only(&mut report).await,
                _ => {}
            }
        });
        println!("{report}");
        std::fs::write(dir.join(format!("load-{section}.md")), report).unwrap();
    }
}
