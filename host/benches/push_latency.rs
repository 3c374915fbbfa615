//! Push latency: the time from an agent's `POST /v1/approvals` (sent) to the `pending` event
//! on a guardian's `/v1/inbox/stream`, with 1, 100 and 1,000 guardian streams connected (every
//! stream belongs to a guardian of the device, so each request fans out to all of them), on a
//! real host on loopback with SQLite; and, as the baseline of the same run, the HTTP round trip
//! of `GET /healthz`.
//!
//! Run with `cargo bench -p approval-host --bench push_latency` (add `-- 1 100` to choose the
//! stream counts). It prints p50/p90/p99/max per stream count; see BENCHMARKS.md.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use approval_host::clock::SystemClock;
use approval_host::config::ServeConfig;
use approval_host::server::{Host, HostOptions};
use axum::extract::State;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
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

/// Opens a guardian's stream over a bare TCP connection: a thousand phones do not share the
/// host's cores, so each listener here does as little as it can (no HTTP client stack: one task
/// and one read per event).
async fn open_stream(addr: SocketAddr, path: &str, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// What a listener heard: a `pending` event's approval id, when it arrived, and its size.
type Heard = (String, Instant, usize);

/// Reads a stream's events, sending each `pending` event's approval id with its arrival time.
/// The response is chunked, but each event is one chunk: the chunk-size lines fall between
/// events, outside the `event:` and `data:` lines read here.
async fn listen(mut stream: TcpStream, found: mpsc::UnboundedSender<Heard>) {
    const PENDING: &[u8] = b"event: pending\n";
    const ID: &[u8] = br#"data: {"id":""#;
    let mut buffer = Vec::with_capacity(16 * 1024);
    while stream.read_buf(&mut buffer).await.is_ok_and(|n| n > 0) {
        let mut start = 0;
        while let Some(end) = memchr::memmem::find(&buffer[start..], b"\n\n") {
            let block = &buffer[start..start + end];
            start += end + 2;
            // The id is the view's first field: no need to parse the whole event.
            if memchr::memmem::find(block, PENDING).is_some()
                && let Some(at) = memchr::memmem::find(block, ID)
            {
                let rest = &block[at + ID.len()..];
                if let Some(close) = memchr::memchr(b'"', rest) {
                    let id = String::from_utf8_lossy(&rest[..close]).into_owned();
                    let _ = found.send((id, Instant::now(), block.len()));
                }
            }
        }
        buffer.drain(..start);
    }
}

/// The host's push to `streams` guardian streams: its table rows, and the size of its events.
async fn run(streams: usize) -> (String, usize) {
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
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(host.serve(listener, async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let (found, mut arrivals) = mpsc::unbounded_channel();
    for guardian in &guardians {
        let token = issuer
            .mint(guardian, now, Duration::from_secs(3600))
            .unwrap();
        let stream = open_stream(addr, "/v1/inbox/stream", &token).await;
        tokio::spawn(listen(stream, found.clone()));
    }
    drop(found);
    // Let every stream get its first (inbox) event.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut health = Vec::new();
    for _ in 0..REQUESTS {
        let started = Instant::now();
        round_trip(client.get(format!("{url}/healthz"))).await;
        health.push(started.elapsed());
    }

    let mut first = Vec::with_capacity(REQUESTS);
    let mut last = Vec::with_capacity(REQUESTS);
    let mut answered = Vec::with_capacity(REQUESTS);
    let mut event_size = 0;
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
        let (at_first, at_last, size) = arrived(&mut arrivals, &id, streams).await;
        first.push(at_first - sent);
        last.push(at_last - sent);
        event_size = size;
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
    (rows, event_size)
}

/// Sends `request` and reads its whole answer.
async fn round_trip(request: reqwest::RequestBuilder) {
    request.send().await.unwrap().bytes().await.unwrap();
}

/// When the first and the last of `streams` listeners heard of `id`, and the event's size.
async fn arrived(
    arrivals: &mut mpsc::UnboundedReceiver<Heard>,
    id: &str,
    streams: usize,
) -> (Instant, Instant, usize) {
    let mut seen = 0;
    let mut first = None;
    loop {
        let (got, at, size) = arrivals.recv().await.unwrap();
        if got == id {
            seen += 1;
            let first = *first.get_or_insert(at);
            if seen == streams {
                return (first, at, size);
            }
        }
    }
}

/// The limit beside the host's push, in the same run: the same fan-out from a bare axum
/// handler on the same runtime (no authentication, no database, no guardian check). A `POST`
/// publishes an event of the host's event's size, rendered once, through a broadcast channel to
/// every stream; the same listeners time it.
async fn bare_fanout(streams: usize, size: usize) -> String {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt as _;
    type Published = tokio::sync::broadcast::Sender<Arc<str>>;
    let (publish, _) = tokio::sync::broadcast::channel::<Arc<str>>(1024);
    let pad = size.saturating_sub(60);
    let app = axum::Router::new()
        .route(
            "/stream",
            axum::routing::get(|State(publish): State<Published>| async move {
                let events = tokio_stream::wrappers::BroadcastStream::new(publish.subscribe())
                    .filter_map(|data| async move {
                        let data = data.ok()?;
                        Some(Ok::<_, Infallible>(
                            Event::default().event("pending").data(&*data),
                        ))
                    });
                Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            }),
        )
        .route(
            "/send",
            axum::routing::post(
                move |State(publish): State<Published>, id: String| async move {
                    let data = format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(pad));
                    let _ = publish.send(data.into());
                    "sent"
                },
            ),
        )
        .with_state(publish);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let (found, mut arrivals) = mpsc::unbounded_channel();
    for _ in 0..streams {
        let stream = open_stream(addr, "/stream", "none").await;
        tokio::spawn(listen(stream, found.clone()));
    }
    drop(found);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for i in 0..REQUESTS {
        let id = format!("bare-{i}");
        let sent = Instant::now();
        round_trip(client.post(format!("http://{addr}/send")).body(id.clone())).await;
        let (at_first, at_last, _) = arrived(&mut arrivals, &id, streams).await;
        first.push(at_first - sent);
        last.push(at_last - sent);
    }
    served.abort();
    [
        report(
            streams,
            "limit, a bare axum SSE fan-out: first stream",
            first,
        ),
        report(streams, "limit, a bare axum SSE fan-out: last stream", last),
    ]
    .concat()
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
        let (rows, event_size) = rt.block_on(run(streams));
        table.push_str(&rows);
        table.push_str(&rt.block_on(bare_fanout(streams, event_size)));
    }
    // `scripts/bench` puts this table into BENCHMARKS.md.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("bench-report");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("push.md"), table).unwrap();
}
