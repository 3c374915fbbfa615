//! Push latency: the time from an agent's `POST /v1/approvals` (sent) to the `pending` event
//! on a guardian's `/v1/inbox/stream`, with 1, 100 and 1,000 guardian streams connected (every
//! stream belongs to a guardian of the device, so each request fans out to all of them), on a
//! real host on loopback with SQLite; and, as the baseline of the same run, the HTTP round trip
//! of `GET /healthz`.
//!
//! Run with `cargo bench -p approval-host --bench push_latency` (add `-- 1 100` to choose the
//! stream counts). It prints p50/p90/p99/max per stream count; see BENCHMARKS.md.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use approval_host::clock::SystemClock;
use approval_host::config::ServeConfig;
use approval_host::server::{Host, HostOptions};
use tokio::sync::mpsc;

const REQUESTS: usize = 400;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints one line of figures and returns them as a Markdown table row.
fn report(streams: usize, name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let (p50, p90, p99, max) = (
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
    println!(
        "{name:<28} n={:<5} p50={p50:>9.3?} p90={p90:>9.3?} p99={p99:>9.3?} max={max:>9.3?}",
        samples.len(),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "| {streams} | {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max)
    )
}

/// Reads a stream's events, sending each `pending` event's approval id with its arrival time.
async fn listen(response: reqwest::Response, found: mpsc::UnboundedSender<(String, Instant)>) {
    let mut response = response;
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if !block.contains("event: pending") {
                continue;
            }
            // The id is the view's first field: no need to parse the whole event here, where
            // a thousand listeners share the host's two cores.
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
                && let Some(rest) = data.strip_prefix(r#"{"id":""#)
                && let Some(end) = rest.find('"')
            {
                let _ = found.send((rest[..end].to_owned(), Instant::now()));
            }
        }
    }
}

async fn run(streams: usize) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServeConfig {
        data_dir: data.path().to_owned(),
        admin_token: Some("bench-admin".into()),
        ..ServeConfig::default()
    };
    config.guardian_sessions.trust_dev_issuer = true;
    let host = Host::start(
        &config,
        HostOptions {
            clock: Arc::new(SystemClock),
            runtime: None,
        },
    )
    .await
    .unwrap();
    let s = Arc::clone(&host.state);
    let now = approval_host::clock::Clock::now_ms(&*s.clock);
    s.approvals.create_vendor("bench", "Bench").await.unwrap();
    let template = approval_host::policy::document::TemplateDoc::parse(
        r#"{"max_approval_requests_per_hour": 1000000, "ttl_seconds": {"default": 3600}}"#,
    )
    .unwrap();
    s.approvals
        .set_template("bench", &template, "bench")
        .await
        .unwrap();
    let guardians: Vec<String> = (0..streams).map(|i| format!("guardian-{i}")).collect();
    s.approvals
        .register_actor("bench", "device", &[], &guardians)
        .await
        .unwrap();
    let agent = s
        .access
        .issue_agent_token("bench", "device", now)
        .await
        .unwrap();
    let issuer = host.dev_sessions.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(host.serve(listener, async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(streams + 8)
        .build()
        .unwrap();
    let (found, mut arrivals) = mpsc::unbounded_channel();
    for guardian in &guardians {
        let token = issuer
            .mint(guardian, now, Duration::from_secs(3600))
            .unwrap();
        let response = client
            .get(format!("{url}/v1/inbox/stream"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        tokio::spawn(listen(response, found.clone()));
    }
    drop(found);
    // Let every stream get its first (inbox) event.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut health = Vec::new();
    for _ in 0..REQUESTS {
        let started = Instant::now();
        client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        health.push(started.elapsed());
    }

    let mut first = Vec::with_capacity(REQUESTS);
    let mut last = Vec::with_capacity(REQUESTS);
    let mut answered = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        // A new recipient each time: a tiny variation of a pending request would be merged into
        // it, with no new notification to time.
        let body = serde_json::json!({
            "action": "payment",
            "params": {"amount": 60_000, "currency": "CNY", "recipient": format!("toy-shop-{i}")},
        });
        let sent = Instant::now();
        let response = client
            .post(format!("{url}/v1/approvals"))
            .bearer_auth(&agent)
            .json(&body)
            .send()
            .await
            .unwrap();
        let value: serde_json::Value = response.json().await.unwrap();
        answered.push(sent.elapsed());
        let id = value["id"].as_str().unwrap().to_owned();
        let mut seen = 0;
        while seen < streams {
            let (got, at) = arrivals.recv().await.unwrap();
            if got == id {
                seen += 1;
                if seen == 1 {
                    first.push(at - sent);
                }
                if seen == streams {
                    last.push(at - sent);
                }
            }
        }
    }
    println!("-- {streams} guardian stream(s), {REQUESTS} requests each to all of them");
    let rows = [
        report(streams, "`GET /healthz` round trip", health),
        report(streams, "`POST` answered (pending)", answered),
        report(streams, "push: first stream", first),
        report(streams, "push: last stream", last),
    ]
    .concat();
    let _ = stop.send(());
    let _ = served.await;
    rows
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1, 100, 1000]
    } else {
        counts
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut table = String::from(
        "| guardian streams | from the agent's `POST` to | p50 | p90 | p99 | max |\n| ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for streams in counts {
        table.push_str(&rt.block_on(run(streams)));
    }
    // `scripts/bench` puts this table into BENCHMARKS.md.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("bench-report");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("push.md"), table).unwrap();
}
