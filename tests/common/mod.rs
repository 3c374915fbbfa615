//! Shared helpers of the end-to-end tests: the compiled test plugins, a runtime, and temporary
//! databases on both backends.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use approval_host::audit::{AuditConfig, AuditLog};
use approval_host::clock::{Clock, SystemClock};
use approval_host::plugin::{PluginLimits, PluginRuntime, RuntimeConfig};
use approval_host::risk::{Action, ClassifyInput, EffectivePolicy, History, Money, RiskRequest};
use approval_host::store::Db;

pub mod process;
pub mod report;
pub mod wasm;
#[allow(unused_imports)] // not every test binary uses both
pub use wasm::{plugin, variant};

/// A compiled-artifact cache shared by the test binaries, so each plugin compiles once.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// Default limits with the platform's longest deadline: for tests about something other than
/// deadlines, so that a loaded machine cannot turn a slow call into a failure.
pub fn relaxed() -> PluginLimits {
    PluginLimits {
        deadline: TEST_MAX_DEADLINE,
        ..PluginLimits::default()
    }
}

/// The test runtimes' platform maximum deadline (production's is 250 ms).
pub const TEST_MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The runtime configuration of the tests: production's, with a compiled-artifact cache and a
/// deadline ceiling high enough for a loaded CI machine.
pub fn test_config() -> RuntimeConfig {
    RuntimeConfig {
        cache_dir: Some(cache_dir()),
        platform_max: PluginLimits {
            deadline: TEST_MAX_DEADLINE,
            ..PluginLimits::platform_max()
        },
        ..RuntimeConfig::default()
    }
}

pub fn runtime_with(config: RuntimeConfig) -> Arc<PluginRuntime> {
    Arc::new(PluginRuntime::new(config).unwrap())
}

pub fn runtime() -> Arc<PluginRuntime> {
    runtime_with(test_config())
}

/// The audit log of `db`, reading `clock`.
pub async fn audit_log_with(db: &Db, clock: Arc<dyn Clock>) -> Arc<AuditLog> {
    AuditLog::open(db.clone(), AuditConfig::default(), clock)
        .await
        .unwrap()
}

/// The audit log of `db`, on the system clock.
pub async fn audit_log(db: &Db) -> Arc<AuditLog> {
    audit_log_with(db, Arc::new(SystemClock)).await
}

/// A payment request of `minor_units` CNY at a fixed time.
pub fn payment(id: &str, minor_units: u64, category: Option<&str>) -> ClassifyInput {
    input(
        id,
        Action::Payment {
            amount: Money::new(minor_units, "CNY"),
            recipient: "toy-shop".into(),
            merchant_category: category.map(str::to_owned),
        },
    )
}

pub fn input(id: &str, action: Action) -> ClassifyInput {
    ClassifyInput {
        request: RiskRequest {
            id: id.into(),
            vendor: "acme-toys".into(),
            actor: "teddy-7".into(),
            device_context: vec!["family-context".into()],
            action,
            requested_at_ms: 1_795_000_000_123,
        },
        policy: EffectivePolicy::default(),
        history: History::default(),
    }
}

/// A temporary database; dropping it removes the SQLite file or drops the PostgreSQL schema.
pub struct TestDb {
    pub db: Db,
    /// The URL `db` was opened with: open it again for a second "replica".
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema to drop when the test ends.
    schema: Option<String>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime: clean up on a thread of our own.
        let cleanup = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::AnyConnection::connect(&postgres_url()).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The PostgreSQL server tests use (`APPROVAL_HOST_TEST_POSTGRES` overrides it).
pub fn postgres_url() -> String {
    std::env::var("APPROVAL_HOST_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("host.db").display());
    TestDb {
        db: Db::connect(&url).await.unwrap(),
        url,
        _dir: Some(dir),
        schema: None,
    }
}

/// A fresh schema on the test PostgreSQL server, named uniquely for this test.
pub async fn postgres() -> TestDb {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let schema = format!(
        "t_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut conn = sqlx::AnyConnection::connect(&postgres_url())
        .await
        .expect("PostgreSQL must be running for the store tests (see README)");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if postgres_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-c%20search_path%3D{schema}", postgres_url());
    TestDb {
        db: Db::connect(&url).await.unwrap(),
        url,
        _dir: None,
        schema: Some(schema),
    }
}

/// Runs a store test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::common::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::common::postgres().await).await;
            }
        }
    };
}

// ---- a real host on a loopback port --------------------------------------------------------

/// The platform admin token of test hosts.
pub const ADMIN: &str = "test-admin-token";

/// A host serving on 127.0.0.1:<random port> over a test database, with a clock the test moves.
pub struct TestHost {
    pub url: String,
    pub clock: approval_host::clock::ManualClock,
    pub sessions: approval_host::access::SessionIssuer,
    pub state: approval_host::http::AppState,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data: tempfile::TempDir,
}

impl TestHost {
    /// Starts a host on `db` (another `TestHost` on the same `db` is a second replica).
    pub async fn start(db: &TestDb, clock: approval_host::clock::ManualClock) -> TestHost {
        use approval_host::config::ServeConfig;
        use approval_host::server::{Host, HostOptions};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data = tempfile::tempdir().unwrap();
        let mut config = ServeConfig {
            database_url: Some(db.url.clone()),
            data_dir: data.path().to_owned(),
            admin_token: Some(ADMIN.to_owned()),
            ..ServeConfig::default()
        };
        config.guardian_sessions.trust_dev_issuer = true;
        config.limits.max_wait_seconds = 10;
        let host = Host::start(
            &config,
            HostOptions {
                clock: Arc::new(clock.clone()),
                runtime: Some(test_config()),
            },
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sessions = host.dev_sessions.clone().unwrap();
        let state = Arc::clone(&host.state);
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        // A host dropped without `stop` shuts down on its own; its database may be gone by
        // then, so the result is only read by `stop`.
        let served = tokio::spawn(async move {
            host.serve(listener, async move {
                let _ = stop.await;
            })
            .await
        });
        TestHost {
            url,
            clock,
            sessions,
            state,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            served: Some(served),
            _data: data,
        }
    }

    /// Stops serving (in-flight requests finish, a last checkpoint is signed) and waits.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.unwrap().unwrap();
        }
    }

    /// A guardian session for `id`, valid for an hour from the host's clock.
    pub fn guardian(&self, id: &str) -> String {
        use approval_host::clock::Clock as _;
        self.sessions
            .mint(
                id,
                self.clock.now_ms(),
                std::time::Duration::from_secs(3600),
            )
            .unwrap()
    }

    /// A request to `path` with `token` as bearer.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        request_as(&self.client, &self.url, method, path, token)
    }

    /// A push stream (`/v1/inbox/stream`) for the guardian holding `session`.
    pub async fn inbox_stream(&self, session: &str) -> Sse {
        let response = self
            .call(reqwest::Method::GET, "/v1/inbox/stream", session)
            .send()
            .await
            .unwrap();
        Sse::new(response)
    }

    /// GET `path` as `token`: (status, JSON body).
    pub async fn get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        answer(
            self.call(reqwest::Method::GET, path, token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// GET `path` as `token` in the background (a long-poll): (status, JSON body) when it ends.
    pub fn get_later(
        &self,
        path: &str,
        token: &str,
    ) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
        let request = self.call(reqwest::Method::GET, path, token);
        tokio::spawn(async move { answer(request.send().await.unwrap()).await })
    }

    /// Sends `body` as JSON with `method` to `path` as `token`: (status, JSON body).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        answer(
            self.call(method, path, token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// POST `body` to `path` as `token`: (status, JSON body).
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::POST, path, token, body)
            .await
    }

    /// PUT `body` to `path` as `token`: (status, JSON body).
    pub async fn put(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::PUT, path, token, body)
            .await
    }

    /// A guardian's (or anyone's) decision `body` on approval `id` as `token`.
    pub async fn decide(
        &self,
        id: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post(&format!("/v1/approvals/{id}/decision"), token, body)
            .await
    }

    /// Creates a vendor through the API and returns its key.
    pub async fn vendor(&self, id: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/vendors",
                ADMIN,
                serde_json::json!({"id": id, "name": id}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["api_key"].as_str().unwrap().to_owned()
    }

    /// Registers an actor with its guardians and returns its agent token.
    pub async fn actor(
        &self,
        vendor_key: &str,
        id: &str,
        tags: &[&str],
        guardians: &[&str],
    ) -> String {
        let (status, body) = self
            .post(
                "/v1/vendor/actors",
                vendor_key,
                serde_json::json!({"id": id, "context_tags": tags, "guardians": guardians, "issue_token": true}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A request for `method` `url``path` as `token` (no authorization when empty).
pub fn request_as(
    client: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    let request = client.request(method, format!("{url}{path}"));
    if token.is_empty() {
        request
    } else {
        request.bearer_auth(token)
    }
}

/// The status and JSON body of a response (`null` when the body is not JSON).
pub async fn answer(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Reads server-sent events from a streaming response: (event name, JSON data).
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status().as_u16(), 200);
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<(String, serde_json::Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((
                    name,
                    serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                ));
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event, waiting at most `seconds` (a bound for a broken test, not a timing claim).
    pub async fn next_within(&mut self, seconds: u64) -> Option<(String, serde_json::Value)> {
        tokio::time::timeout(std::time::Duration::from_secs(seconds), self.next())
            .await
            .ok()
            .flatten()
    }
}
