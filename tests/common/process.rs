//! Real `approval-host serve` processes for the reliability suites (`crash.rs`, `replicas.rs`):
//! start one on a data directory and a database URL and wait until it serves, SIGKILL it, start
//! it again on the same data, stop it; seed vendors, devices, guardians and plugins through its
//! API; and the checks those suites share: what clients were told ([`Ledger`]), what the database
//! holds ([`rows`]), what the audit log says ([`AuditIndex`]) and whether the three agree.
//!
//! These hosts read the real clock, so waits are short polls with a deadline.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use approval_host::access::SessionIssuer;
use approval_host::audit::checkpoint::CheckpointVerifier;
use approval_host::audit::verify::{Report, verify_export};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::ADMIN;

/// The account system whose guardian sessions every process host trusts. Configured as an
/// issuer key rather than the development issuer (whose key lives in one data directory), so
/// that replicas with data directories of their own accept the same sessions.
pub const SESSION_ISSUER: &str = "https://accounts.reliability.test";

/// The issuer's Ed25519 seed (a test key).
const SESSION_SEED: [u8; 32] = [0x5e; 32];

/// How long a host may take to start (a debug build, migrations, compiling live plugins).
const START_DEADLINE: Duration = Duration::from_secs(120);

fn session_issuer() -> SessionIssuer {
    SessionIssuer::new(SESSION_ISSUER, &SESSION_SEED)
}

/// A guardian session for `id`, valid for an hour of real time.
pub fn guardian_session(id: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    session_issuer()
        .mint(id, u64::try_from(now).unwrap(), Duration::from_secs(3600))
        .unwrap()
}

/// Where the hosts' logs go: `target/tmp/process-hosts/<name>.log` (kept after the run).
pub fn log_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("process-hosts")
}

/// An `approval-host serve` child process on a loopback port. It keeps its port, data directory
/// and database across restarts; dropping it kills the process.
pub struct ProcessHost {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The name its log is kept under.
    pub name: String,
    port: u16,
    data_dir: PathBuf,
    database_url: String,
    /// Lines added to the config's `[limits]` section.
    limits: String,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    pub starts: u32,
}

impl ProcessHost {
    /// Starts `approval-host serve` named `name` on `data_dir` and `database_url`, on a free port,
    /// and waits until it answers `/readyz`.
    pub async fn start(name: &str, data_dir: &Path, database_url: &str) -> ProcessHost {
        ProcessHost::start_with(name, data_dir, database_url, "").await
    }

    /// [`ProcessHost::start`] with `limits` (TOML lines, e.g. `plugin_pause_after = 0`) added to
    /// the config's `[limits]` section.
    pub async fn start_with(
        name: &str,
        data_dir: &Path,
        database_url: &str,
        limits: &str,
    ) -> ProcessHost {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(log_dir()).unwrap();
        let log = log_dir().join(format!("{name}.log"));
        std::fs::write(&log, "").unwrap();
        let mut host = ProcessHost {
            url: String::new(),
            name: name.to_owned(),
            port: 0,
            data_dir: data_dir.to_owned(),
            database_url: database_url.to_owned(),
            limits: limits.to_owned(),
            log,
            child: None,
            starts: 0,
        };
        host.launch().await;
        host
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process is running (it was neither killed, stopped, nor has it died).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The file its log (stderr) goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A client of this host's API.
    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }

    /// SIGKILL (what `Child::kill` sends on Unix): no shutdown, no last checkpoint, whatever was
    /// in flight is cut off. Waits until the process is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// SIGTERM: a graceful shutdown (in-flight requests finish, a last checkpoint is signed).
    /// Waits for the exit, and kills the process if it has not exited within a minute.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(status) => assert!(
                status.unwrap().success(),
                "{} did not shut down cleanly:\n{}",
                self.name,
                self.log_tail()
            ),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "{} did not exit within a minute of SIGTERM:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
    }

    /// Starts the stopped or killed host again: the same port, data directory and database.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.launch().await;
    }

    /// The last lines of the host's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("({}) …\n{}", self.log.display(), lines[from..].join("\n"))
    }

    fn write_config(&self) -> PathBuf {
        let public_key = session_issuer().public_key();
        let config = format!(
            r#"listen = "127.0.0.1:{port}"
data_dir = "{data}"
database_url = "{db}"
admin_token = "{ADMIN}"

[guardian_sessions]
issuer = "{SESSION_ISSUER}"
audience = "approval-host"
public_keys = ["{public_key}"]

[audit]
checkpoint_every_seconds = 1

[limits]
max_wait_seconds = 30
sweep_every_seconds = 1
{limits}
"#,
            port = self.port,
            data = self.data_dir.display(),
            db = self.database_url,
            limits = self.limits,
        );
        let path = self.data_dir.join(format!("{}.toml", self.name));
        std::fs::write(&path, config).unwrap();
        path
    }

    async fn launch(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let config = self.write_config();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_approval-host"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.starts += 1;
        // `serve` prints its address once the host has started (migrations applied, the audit
        // log open, live plugins loaded): the sign that it serves.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = tokio::time::timeout(START_DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("approval-host listening on ") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        })
        .await;
        let Ok(Some(url)) = started else {
            let _ = child.kill().await;
            panic!(
                "{} (start {}) did not start:\n{}",
                self.name,
                self.starts,
                self.log_tail()
            );
        };
        // Keep reading its stdout so that the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.port = url.rsplit(':').next().unwrap().parse().unwrap();
        self.url = url;
        self.child = Some(child);
        let api = self.api();
        let ready = eventually(START_DEADLINE, || async {
            matches!(
                api.send(reqwest::Method::GET, "/readyz", "", None).await,
                Ok((200, _))
            )
        })
        .await;
        assert!(ready, "{} is not ready:\n{}", self.name, self.log_tail());
    }
}

/// Polls `check` every 50 ms until it holds or `deadline` passes; whether it held. A bound for a
/// broken test, not a timing claim.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the API -------------------------------------------------------------------------------

/// A client of one host's API. Transport failures are values: the host may be killed at any
/// moment.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(url: &str) -> Api {
        Api {
            url: url.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    /// A client that opens a connection per request: none outlives a restart of the host to fail
    /// on its first use, so a failure means the host did not answer.
    pub fn unpooled(url: &str) -> Api {
        Api {
            url: url.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// A request for `method` `path` as `token` (none when empty), for a body of any kind; send
    /// it with [`Api::answer`].
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        super::request_as(&self.client, &self.url, method, path, token)
    }

    /// Sends `request`: (status, JSON body, `null` when it is not JSON), or the transport error.
    pub async fn answer(request: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `method` `path` as `token` (none when empty) with an optional JSON body: (status, JSON
    /// body, `null` when it is not JSON), or the transport error.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let request = self.request(method, path, token);
        Api::answer(match body {
            Some(body) => request.json(body),
            None => request,
        })
        .await
    }

    /// Like [`Api::send`] for a host that must answer: panics on a transport error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.send(method.clone(), path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.url))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// A 2xx answer's body; panics with the answer otherwise.
    async fn ok(&self, method: reqwest::Method, path: &str, token: &str, body: &Value) -> Value {
        let (status, answer) = self.call(method, path, token, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
        answer
    }

    /// Creates a vendor; its API key.
    pub async fn create_vendor(&self, id: &str) -> String {
        let created = self
            .ok(
                reqwest::Method::POST,
                "/v1/vendors",
                ADMIN,
                &json!({"id": id, "name": id}),
            )
            .await;
        created["api_key"].as_str().unwrap().to_owned()
    }

    /// Sets the vendor's policy template.
    pub async fn put_policy(&self, vendor_key: &str, template: &Value) {
        self.ok(
            reqwest::Method::PUT,
            "/v1/vendor/policy",
            vendor_key,
            template,
        )
        .await;
    }

    /// Registers a device with its guardians; its agent token.
    pub async fn add_actor(&self, vendor_key: &str, id: &str, guardians: &[String]) -> String {
        let body =
            json!({"id": id, "context_tags": ["toy"], "guardians": guardians, "issue_token": true});
        let actor = self
            .ok(
                reqwest::Method::POST,
                "/v1/vendor/actors",
                vendor_key,
                &body,
            )
            .await;
        actor["token"].as_str().unwrap().to_owned()
    }

    /// Uploads a plugin and activates the new version; its reference (`name@version`).
    pub async fn activate_plugin(&self, vendor_key: &str, bytes: Vec<u8>) -> String {
        let response = self
            .client
            .post(format!("{}/v1/vendor/plugins", self.url))
            .bearer_auth(vendor_key)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let uploaded: Value = response.json().await.unwrap_or(Value::Null);
        assert!(matches!(status, 200 | 201), "upload: {status} {uploaded}");
        let reference = uploaded["reference"].as_str().unwrap().to_owned();
        self.ok(
            reqwest::Method::POST,
            &format!("/v1/vendor/plugins/{reference}/activate"),
            vendor_key,
            &json!({}),
        )
        .await;
        reference
    }

    /// Seeds a vendor as `seed` says.
    pub async fn seed(&self, seed: &VendorSeed) -> Vendor {
        let key = self.create_vendor(&seed.id).await;
        self.put_policy(&key, &seed.policy).await;
        if let Some(bytes) = &seed.plugin {
            self.activate_plugin(&key, bytes.clone()).await;
        }
        let mut actors = Vec::new();
        for i in 0..seed.actors {
            let id = format!("device-{i}");
            let token = self.add_actor(&key, &id, &seed.guardians).await;
            actors.push(Actor { id, token });
        }
        Vendor {
            id: seed.id.clone(),
            key,
            actors,
            guardians: seed.guardians.clone(),
        }
    }

    /// The audit log's verification key.
    pub async fn audit_key(&self) -> String {
        let response = self
            .client
            .get(format!("{}/.well-known/audit-log-key", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.unwrap().trim().to_owned()
    }

    /// The whole audit log (`/v1/audit/export`, as the platform admin).
    pub async fn export(&self) -> Vec<u8> {
        let response = self
            .client
            .get(format!("{}/v1/audit/export", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "the audit export");
        response.bytes().await.unwrap().to_vec()
    }

    /// The newest signed checkpoint's note (one is signed now if the log grew).
    pub async fn checkpoint(&self) -> String {
        let (status, body) = self.get("/v1/audit/checkpoint", ADMIN).await;
        assert_eq!(status, 200, "{body}");
        body["checkpoint"].as_str().unwrap().to_owned()
    }

    /// A push stream (`/v1/inbox/stream`) for the guardian holding `session`.
    pub async fn inbox_stream(&self, session: &str) -> super::Sse {
        let response = self
            .client
            .get(format!("{}/v1/inbox/stream", self.url))
            .bearer_auth(session)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .unwrap();
        super::Sse::new(response)
    }
}

/// A vendor to seed: its policy template, devices (`device-<i>`, each guarded by every one of
/// `guardians`) and an optional plugin to activate.
#[derive(Debug, Clone)]
pub struct VendorSeed {
    pub id: String,
    pub policy: Value,
    pub actors: usize,
    pub guardians: Vec<String>,
    pub plugin: Option<Vec<u8>>,
}

/// The policy of a vendor whose devices are driven hard: a 10 s TTL (the shortest) and no
/// hourly limit in the way.
pub fn load_policy() -> Value {
    json!({
        "ttl_seconds": {"default": 10},
        "max_approval_requests_per_hour": 1_000_000,
        "settings": {"max-payments-per-hour": "1000000000"},
    })
}

/// A seeded vendor.
#[derive(Debug, Clone)]
pub struct Vendor {
    pub id: String,
    pub key: String,
    pub actors: Vec<Actor>,
    pub guardians: Vec<String>,
}

/// A device and its agent token.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub token: String,
}

// ---- what clients were told ----------------------------------------------------------------

/// A settled outcome as a client was told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `allowed`, `denied`, `approved`, `revised`, `timed_out` or `rate_limited`.
    pub status: String,
    pub decider: Option<String>,
    /// The capability token (only the agent's side is shown it).
    pub token: Option<String>,
}

/// What clients were told about one approval.
#[derive(Debug, Clone, Default)]
pub struct Told {
    /// The settled outcome, once someone was told one.
    pub outcome: Option<Outcome>,
    /// How many answers named this approval.
    pub tellings: u32,
}

/// Every answer a client received (a 200, 201 or 202 with a record, or an error carrying one: a
/// 409's winner, a 410's timeout, a 429's refusal), by approval.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub told: HashMap<String, Told>,
    /// Answers noted.
    pub tellings: u64,
    /// Answers that contradicted an earlier one (two outcomes for one approval).
    pub contradictions: Vec<String>,
}

impl Ledger {
    /// Notes an answer's record (an `ApprovalView`); a contradiction with an earlier answer is
    /// kept in [`Ledger::contradictions`].
    pub fn tell(&mut self, view: &Value) {
        let Some(id) = view["id"].as_str() else {
            self.contradictions
                .push(format!("an answer without a record: {view}"));
            return;
        };
        let status = view["status"].as_str().unwrap_or_default().to_owned();
        self.tellings += 1;
        let told = self.told.entry(id.to_owned()).or_default();
        told.tellings += 1;
        // A pending answer may be noted after a settlement told to someone else while it was on
        // its way; whether a settled request ever goes back to pending is for the database to
        // say (see [`lost`]).
        if status == "pending" {
            return;
        }
        let outcome = Outcome {
            status,
            decider: view["decider"].as_str().map(str::to_owned),
            token: view["token"]["token"].as_str().map(str::to_owned),
        };
        match &mut told.outcome {
            None => told.outcome = Some(outcome),
            Some(earlier) => {
                let same = earlier.status == outcome.status
                    && earlier.decider == outcome.decider
                    && (earlier.token.is_none()
                        || outcome.token.is_none()
                        || earlier.token == outcome.token);
                if !same {
                    self.contradictions
                        .push(format!("{id}: told {earlier:?}, then {outcome:?}"));
                }
                if earlier.token.is_none() {
                    earlier.token = outcome.token;
                }
            }
        }
    }

    /// Outcomes told, settled ones only.
    pub fn settled(&self) -> usize {
        self.told.values().filter(|t| t.outcome.is_some()).count()
    }
}

// ---- what the database holds ----------------------------------------------------------------

/// A decision record's state, read straight from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub status: String,
    pub method: Option<String>,
    pub decider: Option<String>,
    pub token: Option<String>,
    pub token_id: Option<String>,
    pub vendor: String,
    pub actor: String,
    /// Tiny variations merged into this request while it was pending.
    pub merged: i64,
}

/// Every decision record in the database at `database_url`, by id.
pub async fn rows(database_url: &str) -> HashMap<String, Row> {
    use sqlx::{Connection as _, Row as _};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url).await.unwrap();
    let found = sqlx::query(
        "SELECT id, status, decision_method, decider, token, token_id, vendor, actor, \
         CAST(merged AS BIGINT) AS merged FROM approvals",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    found
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("id"),
                Row {
                    status: r.get("status"),
                    method: r.get("decision_method"),
                    decider: r.get("decider"),
                    token: r.get("token"),
                    token_id: r.get("token_id"),
                    vendor: r.get("vendor"),
                    actor: r.get("actor"),
                    merged: r.get("merged"),
                },
            )
        })
        .collect()
}

// ---- what the audit log says ----------------------------------------------------------------

/// A `decided` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedEntry {
    pub status: String,
    /// `policy`, `human` or `timeout`.
    pub method: String,
    pub decider: Option<String>,
    pub token_id: Option<String>,
}

/// One approval's entries.
#[derive(Debug, Clone, Default)]
pub struct Trail {
    pub requests: u32,
    pub rate_limited: u32,
    /// The pending requests this one was merged into (a tiny variation has no record of its own).
    pub merged_into: Vec<String>,
    /// In log order.
    pub decided: Vec<DecidedEntry>,
}

impl Trail {
    /// The entries that settled a pending request (a guardian's decision or a timeout).
    pub fn settlements(&self) -> Vec<&DecidedEntry> {
        self.decided
            .iter()
            .filter(|d| d.method != "policy")
            .collect()
    }
}

/// The approvals' entries of an export.
#[derive(Debug, Default)]
pub struct AuditIndex {
    pub entries: u64,
    pub trails: HashMap<String, Trail>,
}

impl AuditIndex {
    /// Reads the entries of an export (`/v1/audit/export` or `approval-host audit export`).
    pub fn of_export(export: &[u8]) -> AuditIndex {
        let mut index = AuditIndex::default();
        for line in export.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line: Value = serde_json::from_slice(line).unwrap();
            let Some(bytes) = line["entry"].as_str() else {
                continue;
            };
            index.entries += 1;
            let entry: Value = serde_json::from_slice(&STANDARD.decode(bytes).unwrap()).unwrap();
            let event = &entry["event"];
            let Some(id) = event["approval_id"].as_str() else {
                continue;
            };
            let trail = index.trails.entry(id.to_owned()).or_default();
            let text = |key: &str| event[key].as_str().map(str::to_owned);
            match event["type"].as_str().unwrap_or_default() {
                "request_received" => trail.requests += 1,
                "rate_limited" => trail.rate_limited += 1,
                "merged" => trail.merged_into.push(text("into").unwrap_or_default()),
                "decided" => trail.decided.push(DecidedEntry {
                    status: text("status").unwrap_or_default(),
                    method: text("method").unwrap_or_default(),
                    decider: text("decider"),
                    token_id: text("token_id"),
                }),
                _ => {}
            }
        }
        index
    }

    /// How many `decided` entries of `status` by `method` there are.
    pub fn count(&self, status: &str, method: &str) -> usize {
        self.trails
            .values()
            .flat_map(|t| &t.decided)
            .filter(|d| d.status == status && d.method == method)
            .count()
    }
}

/// Verifies an export offline with nothing but the log's key and `trusted` checkpoints kept from
/// earlier (the library's `audit::verify::verify_export`, what `approval-host audit verify` runs).
pub fn verify(export: &[u8], key: &str, trusted: &[String]) -> Report {
    verify_export(export, key, trusted).unwrap()
}

/// Opens a signed checkpoint with the log's key: (size, root).
pub fn open_checkpoint(key: &str, note: &str) -> (u64, Vec<u8>) {
    let checkpoint = CheckpointVerifier::new(key).unwrap().open(note).unwrap();
    (checkpoint.size, checkpoint.root.0.to_vec())
}

/// Where the records and the log disagree: a record without exactly one request entry, a record
/// whose entries do not say what its status says (missing, extra or different settlements), a
/// merge count that differs from the `merged` entries pointing at the record, or entries of an
/// approval that has no record (other than a request merged into one that has). Each is a write
/// applied in part. Records in `moving` (changed while the two were read) are left for a later
/// check.
pub fn half_applied(
    rows: &HashMap<String, Row>,
    audit: &AuditIndex,
    moving: &HashSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let empty = Trail::default();
    let mut merges: HashMap<&str, i64> = HashMap::new();
    for trail in audit.trails.values() {
        for into in &trail.merged_into {
            *merges.entry(into.as_str()).or_default() += 1;
        }
    }
    for (id, row) in rows {
        if moving.contains(id) {
            continue;
        }
        let trail = audit.trails.get(id).unwrap_or(&empty);
        if trail.requests != 1 {
            problems.push(format!("{id}: {} request entries", trail.requests));
        }
        let policy: Vec<&DecidedEntry> = trail
            .decided
            .iter()
            .filter(|d| d.method == "policy")
            .collect();
        let settlements = trail.settlements();
        let merged_here = merges.get(id.as_str()).copied().unwrap_or(0);
        if row.merged != merged_here || !trail.merged_into.is_empty() {
            problems.push(format!(
                "{id}: {} merged, {merged_here} merged entries point at it, its own {:?}",
                row.merged, trail.merged_into
            ));
        }
        let fine = match (row.status.as_str(), row.method.as_deref()) {
            ("rate_limited", _) => trail.rate_limited == 1 && trail.decided.is_empty(),
            (status @ ("allowed" | "denied"), Some("policy")) => {
                trail.rate_limited == 0
                    && settlements.is_empty()
                    && policy.len() == 1
                    && policy[0].status == status
                    && policy[0].token_id == row.token_id
            }
            ("pending", None) => {
                trail.rate_limited == 0
                    && settlements.is_empty()
                    && policy.len() == 1
                    && policy[0].status == "pending"
            }
            (status, Some(method @ ("human" | "timeout"))) => {
                trail.rate_limited == 0
                    && policy.len() == 1
                    && policy[0].status == "pending"
                    && settlements.len() == 1
                    && settlements[0].status == status
                    && settlements[0].method == method
                    && settlements[0].decider == row.decider
                    && settlements[0].token_id == row.token_id
            }
            _ => false,
        };
        if !fine {
            problems.push(format!(
                "{id}: the record is {row:?} but its entries are {trail:?}"
            ));
        }
    }
    for (id, trail) in &audit.trails {
        if rows.contains_key(id) || moving.contains(id) {
            continue;
        }
        let merged = trail.requests == 1
            && trail.rate_limited == 0
            && trail.decided.is_empty()
            && trail.merged_into.len() == 1
            && rows.contains_key(&trail.merged_into[0]);
        if !merged {
            problems.push(format!("{id}: entries {trail:?} but no record"));
        }
    }
    problems
}

/// Told outcomes the database does not hold as told: a told approval with no record, or a
/// settled outcome whose record differs (status, decider or token).
pub fn lost(ledger: &Ledger, rows: &HashMap<String, Row>) -> Vec<String> {
    let mut lost = Vec::new();
    for (id, told) in &ledger.told {
        let Some(row) = rows.get(id) else {
            lost.push(format!("{id}: told {told:?}, no record"));
            continue;
        };
        if let Some(outcome) = &told.outcome {
            let same = row.status == outcome.status
                && row.decider == outcome.decider
                && (outcome.token.is_none() || outcome.token == row.token);
            if !same {
                lost.push(format!("{id}: told {outcome:?}, the record is {row:?}"));
            }
        }
    }
    lost
}

/// Told outcomes the audit log does not record as told: a told approval without its request
/// entry, or a settled outcome without a `decided` entry of that status and decider (a refusal
/// without its `rate_limited` entry).
pub fn unaudited(ledger: &Ledger, audit: &AuditIndex) -> Vec<String> {
    let mut missing = Vec::new();
    let empty = Trail::default();
    for (id, told) in &ledger.told {
        let trail = audit.trails.get(id).unwrap_or(&empty);
        let found = trail.requests == 1
            && told.outcome.as_ref().is_none_or(|o| {
                if o.status == "rate_limited" {
                    trail.rate_limited == 1
                } else {
                    trail
                        .decided
                        .iter()
                        .any(|d| d.status == o.status && d.decider == o.decider)
                }
            });
        if !found {
            missing.push(format!("{id}: told {told:?}, the log has {trail:?}"));
        }
    }
    missing
}

/// Reads every told approval back through the API (as its vendor, who sees the token) and
/// returns those that do not answer as told. `vendor_keys` maps a vendor id to its key.
pub async fn read_back(
    api: &Api,
    ledger: &Ledger,
    rows: &HashMap<String, Row>,
    vendor_keys: &HashMap<String, String>,
) -> Vec<String> {
    use futures_util::StreamExt as _;
    let told: Vec<(String, Told)> = ledger
        .told
        .iter()
        .map(|(id, t)| (id.clone(), t.clone()))
        .collect();
    futures_util::stream::iter(told)
        .map(|(id, told)| async move {
            let Some(key) = rows.get(&id).and_then(|r| vendor_keys.get(&r.vendor)) else {
                return Some(format!("{id}: told {told:?}, no record"));
            };
            let (status, body) = api.get(&format!("/v1/approvals/{id}"), key).await;
            let view = match status {
                200 | 202 => body,
                // A timed-out request or a refusal is an error to the agent's side, with the record.
                410 | 429 => body["approval"].clone(),
                _ => return Some(format!("{id}: told {told:?}, read back {status} {body}")),
            };
            let outcome = told.outcome?;
            let same = view["status"] == outcome.status.as_str()
                && view["decider"].as_str() == outcome.decider.as_deref()
                && (outcome.token.is_none()
                    || view["token"]["token"].as_str() == outcome.token.as_deref());
            (!same).then(|| format!("{id}: told {outcome:?}, read back {view}"))
        })
        .buffer_unordered(16)
        .filter_map(|found| async move { found })
        .collect()
        .await
}

/// The ids whose records differ between two reads (changed, or created, in between).
pub fn moving(before: &HashMap<String, Row>, after: &HashMap<String, Row>) -> HashSet<String> {
    after
        .iter()
        .filter(|(id, row)| before.get(*id) != Some(*row))
        .map(|(id, _)| id.clone())
        .chain(before.keys().filter(|id| !after.contains_key(*id)).cloned())
        .collect()
}
