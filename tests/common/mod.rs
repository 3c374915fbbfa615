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

/// The bytes of a plugin built from `plugins/` by the host's build script.
pub fn plugin(name: &str) -> Vec<u8> {
    let path = Path::new(env!("APPROVAL_HOST_PLUGINS_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The same component with a custom section appended: new bytes (a new sha256), same code.
pub fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"approval-host-test";
    let payload_len = 1 + name.len() + tag.len();
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(u8::try_from(payload_len).unwrap()); // LEB128 size (< 128)
    out.push(u8::try_from(name.len()).unwrap());
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}

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
