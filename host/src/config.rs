//! The configuration of `approval-host serve`: a TOML file, then environment overrides, then
//! command-line flags. Every field has a default, so an empty file (or none) serves a SQLite
//! database under `approval-host-data/` on 127.0.0.1:8080.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! public_url = "https://approvals.example.com"
//! database_url = "postgres://approvals@db/approvals"
//! data_dir = "/var/lib/approval-host"
//! admin_token = "…"                      # or APPROVAL_HOST_ADMIN_TOKEN
//!
//! [guardian_sessions]
//! issuer = "https://accounts.example.com"
//! public_keys = ["base64url Ed25519 public key", "…"]
//! audience = "https://approvals.example.com"  # the `aud` sessions must name; required with issuer
//! max_lifetime_s = 86400                  # the longest `exp - iat` accepted
//!
//! [audit]
//! origin = "approvals.example.com/audit"
//! checkpoint_every_seconds = 5
//!
//! [tokens]
//! issuer = "https://approvals.example.com"
//! ttl_seconds = 300
//!
//! [limits]
//! max_body_bytes = 1048576
//! max_wait_seconds = 60
//! plugin_pause_after = 3                  # a plugin timing out this often in a row is paused
//! ```
//!
//! Environment overrides: `APPROVAL_HOST_LISTEN`, `APPROVAL_HOST_PUBLIC_URL`,
//! `APPROVAL_HOST_DATABASE_URL`, `APPROVAL_HOST_DATA_DIR`, `APPROVAL_HOST_ADMIN_TOKEN`,
//! `APPROVAL_HOST_AUDIT_ORIGIN`, `APPROVAL_HOST_SESSION_ISSUER`,
//! `APPROVAL_HOST_SESSION_PUBLIC_KEYS` (comma-separated), `APPROVAL_HOST_SESSION_AUDIENCE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The host's URL as callers see it (printed by the demo; `None`: from `listen`).
    pub public_url: Option<String>,
    /// `sqlite://…` or `postgres://…`; `None`: a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Where the SQLite database, the compiled-plugin cache and the demo's files live.
    pub data_dir: PathBuf,
    /// The platform admin's bearer token; `None`: no admin access.
    pub admin_token: Option<String>,
    pub guardian_sessions: SessionsConfig,
    pub audit: AuditSection,
    pub tokens: TokensSection,
    pub limits: LimitsSection,
    pub webhooks: WebhooksSection,
}

/// Where guardian sessions come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// The `iss` of session JWTs. Its guardians are named by their bare `sub`.
    pub issuer: Option<String>,
    /// The account system's Ed25519 public keys (base64 or base64url).
    pub public_keys: Vec<String>,
    /// The `aud` the issuer's sessions must name (alone or in an array): required with `issuer`,
    /// so that a session the account system made for another service is not one for this host.
    pub audience: Option<String>,
    /// The longest a session may last (`exp - iat`), in seconds, for every issuer.
    pub max_lifetime_s: u64,
    /// Also trust the development issuer whose key is in `data_dir` (what `approval-host dev
    /// guardian-token` signs with), for the audience `approval-host`. For demos and tests only.
    /// Beside `issuer`, its guardians are named `approval-host-dev:<sub>`.
    pub trust_dev_issuer: bool,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            public_keys: Vec::new(),
            audience: None,
            max_lifetime_s: 24 * 3600,
            trust_dev_issuer: false,
        }
    }
}

impl SessionsConfig {
    /// The longest a session may last.
    pub fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_lifetime_s)
    }
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// The log's origin; `None`: the stored key's, or `approval-host.local/audit`.
    pub origin: Option<String>,
    /// A file holding the log's signing key in C2SP form; `None`: the key in the database.
    pub signing_key_file: Option<PathBuf>,
    pub checkpoint_every_seconds: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            origin: None,
            signing_key_file: None,
            checkpoint_every_seconds: 5,
        }
    }
}

/// Capability tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensSection {
    pub issuer: String,
    pub ttl_seconds: u64,
}

impl Default for TokensSection {
    fn default() -> Self {
        Self {
            issuer: "approval-host".to_owned(),
            ttl_seconds: 300,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// The largest JSON body accepted.
    pub max_body_bytes: usize,
    /// The largest plugin upload accepted.
    pub max_upload_bytes: usize,
    /// The longest `?wait=` a long-poll may ask for.
    pub max_wait_seconds: u64,
    /// How often expired requests are swept into timeouts.
    pub sweep_every_seconds: u64,
    /// Calls in a row that run out of time or fuel before a plugin version is paused (0: never).
    pub plugin_pause_after: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_upload_bytes: 20 << 20,
            max_wait_seconds: 60,
            sweep_every_seconds: 1,
            plugin_pause_after: 3,
        }
    }
}

/// Webhook deliveries.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSection {
    /// How long one delivery attempt may take.
    pub timeout_ms: u64,
    /// Attempts before a delivery is given up as failed.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to an hour.
    pub first_retry_ms: u64,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            max_attempts: 8,
            first_retry_ms: 1_000,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            database_url: None,
            data_dir: PathBuf::from("approval-host-data"),
            admin_token: None,
            guardian_sessions: SessionsConfig::default(),
            audit: AuditSection::default(),
            tokens: TokensSection::default(),
            limits: LimitsSection::default(),
            webhooks: WebhooksSection::default(),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name}: {message}")]
    Env { name: &'static str, message: String },
}

impl ServeConfig {
    /// The configuration from `file` (if given) with the environment's overrides, read through
    /// `env` (the process environment in production, a map in tests).
    ///
    /// # Errors
    /// An unreadable or invalid file, or an invalid override.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => ServeConfig::default(),
        };
        if let Some(listen) = env("APPROVAL_HOST_LISTEN") {
            config.listen = listen.parse().map_err(|_| ConfigError::Env {
                name: "APPROVAL_HOST_LISTEN",
                message: format!("{listen:?} is not an address like 127.0.0.1:8080"),
            })?;
        }
        if let Some(url) = env("APPROVAL_HOST_PUBLIC_URL") {
            config.public_url = Some(url);
        }
        if let Some(url) = env("APPROVAL_HOST_DATABASE_URL") {
            config.database_url = Some(url);
        }
        if let Some(dir) = env("APPROVAL_HOST_DATA_DIR") {
            config.data_dir = PathBuf::from(dir);
        }
        if let Some(token) = env("APPROVAL_HOST_ADMIN_TOKEN") {
            config.admin_token = Some(token);
        }
        if let Some(origin) = env("APPROVAL_HOST_AUDIT_ORIGIN") {
            config.audit.origin = Some(origin);
        }
        if let Some(issuer) = env("APPROVAL_HOST_SESSION_ISSUER") {
            config.guardian_sessions.issuer = Some(issuer);
        }
        if let Some(keys) = env("APPROVAL_HOST_SESSION_PUBLIC_KEYS") {
            config.guardian_sessions.public_keys = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(audience) = env("APPROVAL_HOST_SESSION_AUDIENCE") {
            config.guardian_sessions.audience = Some(audience);
        }
        Ok(config)
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("approval-host.db").display()
            )
        })
    }

    /// The host's URL as callers see it.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }

    /// How often the sweeper runs.
    pub fn sweep_every(&self) -> Duration {
        Duration::from_secs(self.limits.sweep_every_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nadmin_token = \"from-file\"\n[audit]\norigin = \"a.example/log\"\n",
        )
        .unwrap();
        let env = |name: &str| (name == "APPROVAL_HOST_ADMIN_TOKEN").then(|| "from-env".to_owned());
        let config = ServeConfig::load(Some(&path), env).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.admin_token.as_deref(), Some("from-env"));
        assert_eq!(config.audit.origin.as_deref(), Some("a.example/log"));
        assert_eq!(config.limits.max_wait_seconds, 60);
        assert!(
            config
                .database_url()
                .ends_with("approval-host-data/approval-host.db?mode=rwc")
        );
    }

    #[test]
    fn the_session_audience_and_lifetime_from_the_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(
            &path,
            "[guardian_sessions]\nissuer = \"https://accounts.example\"\naudience = \"from-file\"\nmax_lifetime_s = 3600\n",
        )
        .unwrap();
        let config = ServeConfig::load(Some(&path), |_| None).unwrap();
        assert_eq!(
            config.guardian_sessions.audience.as_deref(),
            Some("from-file")
        );
        assert_eq!(
            config.guardian_sessions.max_lifetime(),
            Duration::from_secs(3600)
        );
        let env =
            |name: &str| (name == "APPROVAL_HOST_SESSION_AUDIENCE").then(|| "from-env".to_owned());
        let config = ServeConfig::load(Some(&path), env).unwrap();
        assert_eq!(
            config.guardian_sessions.audience.as_deref(),
            Some("from-env")
        );
        let defaults = ServeConfig::default().guardian_sessions;
        assert_eq!(defaults.audience, None);
        assert_eq!(defaults.max_lifetime(), Duration::from_secs(24 * 3600));
    }

    #[test]
    fn unknown_fields_and_bad_overrides_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(&path, "lisen = \"0.0.0.0:9000\"\n").unwrap();
        let err = ServeConfig::load(Some(&path), |_| None).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = ServeConfig::load(None, |n| {
            (n == "APPROVAL_HOST_LISTEN").then(|| "nowhere".to_owned())
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("APPROVAL_HOST_LISTEN"), "{err}");
    }
}
