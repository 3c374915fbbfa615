//! Start-up: builds every process-wide service from a [`ServeConfig`], runs the background
//! tasks (sweeper, checkpointer, webhook sender, replica relay), serves the API, and shuts down
//! gracefully (in-flight requests finish, queued audit writes commit, a last checkpoint is
//! signed). Also the demo's seed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::access::{
    Access, SessionIssuer, SessionIssuers, SessionRules, SessionVerifier, public_key_from_text,
};
use crate::approvals::{ApprovalConfig, ApprovalService, NewRequest};
use crate::audit::{AuditConfig, AuditLog};
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::http::metrics::Metrics;
use crate::http::webhooks::Webhooks;
use crate::http::{self, AppState, Limits, Services};
use crate::plugin::registry::{PluginRegistry, PluginState};
use crate::plugin::{BreakerConfig, PluginRuntime, RuntimeConfig};
use crate::policy::document::TemplateDoc;
use crate::store::Db;
use crate::token::{TokenConfig, TokenIssuer};

/// The issuer name of development guardian sessions.
pub const DEV_ISSUER: &str = "approval-host-dev";

/// What start-up may be given beyond the configuration (tests set both).
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub clock: Arc<dyn Clock>,
    /// `None`: production's runtime, with its compiled-plugin cache in the data directory.
    pub runtime: Option<RuntimeConfig>,
}

/// A running host's services and background tasks.
#[derive(Debug)]
pub struct Host {
    pub state: AppState,
    pub db: Db,
    /// The development session issuer, when the configuration trusts it.
    pub dev_sessions: Option<SessionIssuer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tells push streams and long-polls to end at shutdown.
    closing: tokio::sync::watch::Sender<bool>,
}

/// The development issuer's key, generated on first use and kept in the data directory.
///
/// # Errors
/// The key file cannot be read or written.
pub fn dev_session_issuer(data_dir: &Path) -> anyhow::Result<SessionIssuer> {
    let path = data_dir.join("dev-session-issuer.key");
    let seed = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .with_context(|| format!("{} is not a 32-byte hex key", path.display()))?;
            seed
        }
        Err(_) => {
            use rand::TryRng as _;
            let mut seed = [0u8; 32];
            rand::rngs::SysRng
                .try_fill_bytes(&mut seed)
                .context("no randomness for the development session key")?;
            crate::files::private_dir(data_dir)?;
            crate::files::write_private(&path, hex::encode(seed).as_bytes())?;
            seed
        }
    };
    Ok(SessionIssuer::new(DEV_ISSUER, &seed))
}

/// The issuers whose guardian sessions the host accepts, and the development issuer when it is
/// one of them. The configured issuer is the primary one (guardians named by their bare `sub`);
/// the development issuer is primary when it is alone, and beside the configured one names its
/// guardians `approval-host-dev:<sub>`, so that its sessions never act as that issuer's guardians.
///
/// # Errors
/// An issuer without an audience, a bad public key, a zero lifetime, or the development key
/// cannot be read or written.
fn guardian_sessions(
    config: &ServeConfig,
) -> anyhow::Result<(SessionIssuers, Option<SessionIssuer>)> {
    let sessions = &config.guardian_sessions;
    anyhow::ensure!(
        sessions.max_lifetime_s > 0,
        "guardian_sessions.max_lifetime_s must be at least 1 (seconds)"
    );
    let mut verifiers = Vec::new();
    if let Some(issuer) = &sessions.issuer {
        let audience = sessions
            .audience
            .as_deref()
            .filter(|audience| !audience.trim().is_empty())
            .with_context(|| {
                format!(
                    "guardian_sessions.audience (or APPROVAL_HOST_SESSION_AUDIENCE) is required with guardian_sessions.issuer: set it to the `aud` that {issuer} puts in the sessions it makes for this host"
                )
            })?;
        let keys = sessions
            .public_keys
            .iter()
            .map(|k| public_key_from_text(k))
            .collect::<Result<Vec<_>, _>>()
            .context("guardian_sessions.public_keys")?;
        let rules = SessionRules {
            max_lifetime: sessions.max_lifetime(),
            ..SessionRules::new(audience)
        };
        verifiers.push(SessionVerifier::new(issuer, keys, rules));
    }
    let dev = if sessions.trust_dev_issuer {
        let issuer = dev_session_issuer(&config.data_dir)?;
        let verifier = issuer.verifier().with_max_lifetime(sessions.max_lifetime());
        verifiers.push(if verifiers.is_empty() {
            verifier
        } else {
            verifier.with_guardian_prefix(DEV_ISSUER)
        });
        Some(issuer)
    } else {
        None
    };
    let issuers = SessionIssuers::new(verifiers).context("guardian_sessions")?;
    if issuers.is_empty() {
        tracing::warn!(
            "no guardian session issuer is configured: guardians cannot sign in (set guardian_sessions.issuer, public_keys and audience)"
        );
    }
    Ok((issuers, dev))
}

impl Host {
    /// Connects to the database (applying migrations), opens the audit log, loads live plugins
    /// and the token keys, and starts the background tasks. Call inside a tokio runtime.
    ///
    /// # Errors
    /// Whatever is wrong with the configuration, the database, the keys or the plugins.
    pub async fn start(config: &ServeConfig, options: HostOptions) -> anyhow::Result<Host> {
        // Webhook deliveries use rustls with ring; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        crate::files::private_dir(&config.data_dir)?;
        let (sessions, dev_sessions) = guardian_sessions(config)?;
        let url = config.database_url();
        let db = Db::connect(&url).await.with_context(|| {
            format!("opening the database {}", crate::store::redacted_url(&url))
        })?;
        if db.backend() == crate::store::Backend::Sqlite
            && let Ok(Some(path)) = crate::store::sqlite_file(&url)
        {
            let wal = path.with_extension("db-wal");
            let shm = path.with_extension("db-shm");
            crate::files::make_private([path.as_path(), wal.as_path(), shm.as_path()])?;
        }
        let clock = options.clock;
        let signing_key = match &config.audit.signing_key_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let audit = AuditLog::open(
            db.clone(),
            AuditConfig {
                origin: config.audit.origin.clone(),
                signing_key,
                checkpoint_every: Duration::from_secs(config.audit.checkpoint_every_seconds.max(1)),
                ..AuditConfig::default()
            },
            Arc::clone(&clock),
        )
        .await
        .context("opening the audit log")?;
        let runtime = options.runtime.unwrap_or_else(|| RuntimeConfig {
            cache_dir: Some(config.data_dir.join("plugin-cache")),
            max_component_bytes: config.limits.max_upload_bytes,
            breaker: BreakerConfig {
                trip_after: config.limits.plugin_pause_after,
                ..BreakerConfig::default()
            },
            ..RuntimeConfig::default()
        });
        let runtime = Arc::new(PluginRuntime::new(runtime).context("starting the plugin runtime")?);
        let plugins = Arc::new(
            PluginRegistry::open(runtime, db.clone(), Arc::clone(&audit))
                .await
                .context("loading the live plugins")?,
        );
        let tokens = TokenIssuer::open(
            &db,
            TokenConfig {
                issuer: config.tokens.issuer.clone(),
                ttl: Duration::from_secs(config.tokens.ttl_seconds),
                signing_key: None,
            },
            clock.now_ms(),
        )
        .await
        .context("loading the token signing keys")?;
        let approvals = Arc::new(ApprovalService::new(
            db.clone(),
            Arc::clone(&audit),
            Arc::clone(&plugins),
            Arc::new(tokens),
            Arc::clone(&clock),
            ApprovalConfig::default(),
        ));

        let access = Access::new(db.clone(), config.admin_token.as_deref(), sessions);
        let webhooks = Arc::new(
            Webhooks::new(db.clone(), config.webhooks.clone(), Arc::clone(&clock))
                .context("building the webhook client")?,
        );
        let (closing, closed) = tokio::sync::watch::channel(false);
        let state: AppState = Arc::new(Services {
            approvals: Arc::clone(&approvals),
            audit: Arc::clone(&audit),
            plugins,
            access,
            webhooks: Arc::clone(&webhooks),
            metrics: Arc::new(Metrics::new()),
            clock,
            limits: Limits {
                max_body_bytes: config.limits.max_body_bytes,
                max_upload_bytes: config.limits.max_upload_bytes,
                max_wait_seconds: config.limits.max_wait_seconds,
            },
            closed,
        });
        let mut tasks = vec![
            approvals.spawn_sweeper(config.sweep_every()),
            audit.spawn_checkpointer(),
        ];
        tasks.extend(webhooks.spawn(approvals.subscribe()));
        tasks.extend(crate::push::spawn(&approvals, &state.plugins, &db, &url));
        Ok(Host {
            state,
            db,
            dev_sessions,
            tasks,
            closing,
        })
    }

    /// The API over this host's services.
    pub fn router(&self) -> axum::Router {
        http::router(Arc::clone(&self.state))
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish,
    /// ends push streams, commits what the audit log has queued and signs a last checkpoint.
    ///
    /// # Errors
    /// The listener fails, or the last checkpoint cannot be signed.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = self.router();
        let closing = self.closing.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: finishing in-flight requests");
                let _ = closing.send(true);
            })
            .await
            .context("serving")?;
        self.stop().await
    }

    /// Stops the background tasks, commits queued audit writes and signs a last checkpoint.
    ///
    /// # Errors
    /// The last checkpoint cannot be signed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.closing.send(true);
        for task in &self.tasks {
            task.abort();
        }
        if let Some(checkpoint) = self.state.audit.close().await? {
            tracing::info!(size = checkpoint.size, "signed the last audit checkpoint");
        }
        Ok(())
    }
}

/// What the demo created, written to `demo.json` in the data directory for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct DemoInfo {
    pub base_url: String,
    pub admin_token: String,
    pub vendor: String,
    pub vendor_key: String,
    pub actor: String,
    pub agent_token: String,
    pub guardian: String,
    pub guardian_token: String,
    /// A ¥600 payment the demo left waiting for the guardian.
    pub pending_approval: String,
    /// The audit log's verification key.
    pub audit_log_key: String,
}

/// The example plugin, built from plugins/velocity by the build script.
pub const EXAMPLE_PLUGIN: &[u8] =
    include_bytes!(concat!(env!("APPROVAL_HOST_PLUGINS_DIR"), "/velocity.wasm"));

/// Seeds the demo: vendor `demo-toys` (new API key), the example plugin active, a device
/// `teddy-bear` guarded by `parent-1` (new agent token), a guardian session, and one ¥600
/// payment waiting for the guardian. Running it again on the same data rotates the secrets.
///
/// # Errors
/// A database, plugin or key failure.
pub async fn seed_demo(host: &Host, base_url: &str, admin_token: &str) -> anyhow::Result<DemoInfo> {
    let s = &host.state;
    let now = s.clock.now_ms();
    let (vendor, actor, guardian) = ("demo-toys", "teddy-bear", "parent-1");
    let created = s.approvals.create_vendor(vendor, "Demo Toys").await?;
    let vendor_key = if created {
        s.access.issue_vendor_key(vendor, now).await?
    } else {
        s.access.rotate_vendor_key(vendor, now).await?
    };
    let template = TemplateDoc::parse(
        r#"{"plugin_limits":{"deadline_ms":250},"ttl_seconds":{"default":3600}}"#,
    )?;
    s.approvals.set_template(vendor, &template, "demo").await?;
    let plugin = s.plugins.upload(vendor, EXAMPLE_PLUGIN, None, now).await?;
    s.plugins
        .set_state(
            vendor,
            (&plugin.name, plugin.version),
            PluginState::Active,
            now,
        )
        .await?;
    s.approvals
        .register_actor(vendor, actor, &["toy".into()], &[guardian.into()])
        .await?;
    s.access.revoke_agent_tokens(vendor, actor, now).await?;
    let agent_token = s.access.issue_agent_token(vendor, actor, now).await?;
    let guardian_token = host
        .dev_sessions
        .as_ref()
        .context("the demo needs guardian_sessions.trust_dev_issuer")?
        .mint(guardian, now, Duration::from_secs(24 * 3600))?;
    let pending = s
        .approvals
        .request(NewRequest {
            vendor: vendor.into(),
            actor: actor.into(),
            action: "payment".into(),
            params: serde_json::json!({"amount": 60_000, "currency": "CNY", "recipient": "toy-shop"}),
            idempotency_key: None,
            provenance: crate::approvals::record::Provenance {
                surface: "demo".into(),
                tool: Some("seed".into()),
            },
        })
        .await?;
    let info = DemoInfo {
        base_url: base_url.to_owned(),
        admin_token: admin_token.to_owned(),
        vendor: vendor.to_owned(),
        vendor_key,
        actor: actor.to_owned(),
        agent_token,
        guardian: guardian.to_owned(),
        guardian_token,
        pending_approval: pending.record.id,
        audit_log_key: s.audit.vkey().to_owned(),
    };
    Ok(info)
}
