//! The database: one connection pool on SQLite (the embedded default) or PostgreSQL (several
//! replicas), the migrations, and one module of typed functions per aggregate. Every SQL
//! statement of the host lives under this module; services call functions, not SQL.

use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyConnection, AnyPool, Executor as _};

pub mod approvals;
pub mod audit;
pub mod cache;
pub mod credentials;
pub mod directory;
pub mod events;
pub mod keys;
pub mod plugin_stats;
pub mod plugins;
pub mod webhooks;

use cache::{Topic, Versions};

/// Every SQLite connection's settings: write-ahead log, an fsync at every commit (a decision
/// is durable when answered), 32 MiB of page cache (SQLite's default, 2 MiB, is far smaller
/// than the indexes a decision reads), and temporary files in memory: a statement that changes
/// many rows (the sweep settles a thousand) keeps a journal of the pages it changes, to undo
/// the statement alone, and beyond 64 KiB SQLite spills that journal to a temporary file,
/// written and discarded at every statement (3 MB a sweep batch, a third of its writes).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
    PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA cache_size = -32768; \
    PRAGMA temp_store = MEMORY;";

/// Which database the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors of the store layer. Internal detail stays in logs; callers get the category.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {0:?} is neither sqlite: nor postgres:")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The audit log's writers have shut down; nothing more can be written.
    #[error("the database writer has shut down")]
    Closed,
    /// A write was ready but the transaction it shared with others failed: nothing was stored.
    #[error("the write batch failed: {0}")]
    BatchFailed(String),
}

impl StoreError {
    /// Whether the error is a unique-constraint violation (a lost race on an insert).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// The process-wide connection pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The versions of what services cache (see [`cache`]).
    versions: Arc<Versions>,
}

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://...`) and applies migrations.
    ///
    /// # Errors
    /// The URL is unsupported, the database is unreachable, or a migration fails.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let options = AnyPoolOptions::new().max_connections(match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        });
        let options = if backend == Backend::Sqlite {
            options.after_connect(|conn, _| {
                Box::pin(async move { conn.execute(SQLITE_PRAGMAS).await.map(|_| ()) })
            })
        } else {
            options
        };
        let pool = options.connect(url).await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        // One process owns a SQLite file: every change happens here. On PostgreSQL other
        // replicas change things too, and caching waits for the listener (see `crate::push`).
        let versions = Arc::new(Versions::new(backend == Backend::Sqlite));
        Ok(Self {
            pool,
            backend,
            versions,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The versions cached values are checked against.
    pub fn versions(&self) -> &Arc<Versions> {
        &self.versions
    }

    /// Says that `topic` changed (call after the change committed): this process stops using
    /// values read before, and on PostgreSQL so do the other replicas once they hear of it.
    /// A failure to tell them is logged: their copies expire within [`cache::MAX_AGE`].
    pub async fn changed(&self, topic: Topic) {
        if self.backend == Backend::Postgres
            && let Err(e) = events::notify_change(self, &topic).await
        {
            tracing::warn!(error = %e, ?topic, "telling other replicas of a change failed");
        }
        self.versions.bump(topic);
    }
}

/// `(…), (…)` with `rows` groups of `columns` placeholders. SQLite gets anonymous `?`: sqlx
/// resolves a named `$n` by scanning the statement's parameter names, which is quadratic in
/// the number of parameters of a multi-row insert.
pub(crate) fn placeholders(conn: &AnyConnection, rows: usize, columns: usize) -> String {
    let numbered = conn.backend_name() != "SQLite";
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push('$');
                sql.push_str(&(row * columns + column + 1).to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// A millisecond time or count as the database's signed 64-bit integer (saturating).
pub(crate) fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored signed 64-bit time or count back as unsigned (negative values, never written, as 0).
pub(crate) fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
