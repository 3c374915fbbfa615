//! The database: one connection pool on SQLite (the embedded default) or PostgreSQL (several
//! replicas), the migrations, and one module of typed functions per aggregate. Every SQL
//! statement of the host lives under this module; services call functions, not SQL.

use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow, install_default_drivers};
use sqlx::{AnyConnection, AnyPool, Executor as _};

pub mod approvals;
pub mod audit;
pub mod cache;
pub mod credentials;
pub mod direct;
pub mod directory;
pub mod events;
pub mod keys;
pub mod plugin_stats;
pub mod plugins;
pub mod webhooks;

use cache::{Topic, Versions};
use direct::DirectReads;

/// Every SQLite connection's settings: write-ahead log, an fsync at every commit (a decision
/// is durable when answered), 32 MiB of page cache (SQLite's default, 2 MiB, is far smaller
/// than the indexes a decision reads), and temporary files in memory: a statement that changes
/// many rows (the sweep settles a thousand) keeps a journal of the pages it changes, to undo
/// the statement alone, and beyond 64 KiB SQLite spills that journal to a temporary file,
/// written and discarded at every statement (3 MB a sweep batch, a third of its writes).
/// The write-ahead log is copied back into the file by the commit that grows it past 1,000
/// pages (SQLite's default), on purpose: a log starts again only when a writer begins with all
/// of it copied, and a checkpoint on another connection always ends behind the audit writer's
/// back-to-back batches (the log grew to gigabytes; docs/benchmarks/issue-7-rounds.md, round 8).
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
    /// A read on the calling thread failed (see [`direct`]).
    #[error("database error: {0}")]
    Direct(#[from] rusqlite::Error),
    /// A write was ready but the transaction it shared with others failed: nothing was stored.
    #[error("the write batch failed: {0}")]
    BatchFailed(String),
    /// A write produced an audit entry over the verifier's limit: it was refused and undone.
    #[error("an audit entry of {0} bytes is over the log's limit; the write was refused")]
    EntryTooLarge(usize),
}

impl StoreError {
    /// Whether the error is a unique-constraint violation (a lost race on an insert).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// `url` as it may be logged or shown: its password (in the authority, `user:secret@host`, or
/// a `password=` query parameter) replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    let secret = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{secret}@{host}{path}")
                }
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// The process-wide connection pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The versions of what services cache (see [`cache`]).
    versions: Arc<Versions>,
    /// A SQLite file's reads on the calling thread (see [`direct`]); `None` on PostgreSQL and
    /// for an in-memory database.
    direct: Option<Arc<DirectReads>>,
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
            return Err(StoreError::UnsupportedUrl(redacted_url(url)));
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
        let direct = match backend {
            Backend::Sqlite => sqlite_file(url)?.map(|path| Arc::new(DirectReads::new(&path))),
            Backend::Postgres => None,
        };
        Ok(Self {
            pool,
            backend,
            versions,
            direct,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Reads on the calling thread, for a SQLite file (see [`direct`]).
    pub(crate) fn direct(&self) -> Option<&DirectReads> {
        self.direct.as_deref()
    }

    /// The rows of `sql` (placeholders `$1`, `$2`, … bound to `values` in order), each read by
    /// position into a tuple: on a SQLite file on the calling thread (see [`direct`]), elsewhere
    /// through the pool. For the short reads requests make; a statement whose rows need more
    /// than their columns by position reads them itself.
    ///
    /// # Errors
    /// A database failure, or a column of another type.
    pub(crate) async fn read<'q, R: Columns>(
        &self,
        sql: &'q str,
        values: &[Value<'q>],
    ) -> Result<Vec<R>, StoreError> {
        if let Some(direct) = self.direct() {
            return direct.rows(sql, values, R::from_direct);
        }
        Ok(bind(sqlx::query(sql), values)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(R::from_pool)
            .collect::<Result<_, _>>()?)
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

/// The file a `sqlite:` URL names, once the pool has opened it; `None` for an in-memory database.
pub(crate) fn sqlite_file(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
    let path = options.get_filename();
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    Ok((!in_memory && path.is_file()).then(|| path.to_owned()))
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

/// A row's columns by position, as either driver reads them (see [`Db::read`]).
pub(crate) trait Columns: Sized {
    fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
    fn from_pool(row: &AnyRow) -> Result<Self, sqlx::Error>;
}

macro_rules! columns {
    ($($t:ident $i:tt),+) => {
        impl<$($t),+> Columns for ($($t,)+)
        where
            $($t: rusqlite::types::FromSql + for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,)+
        {
            fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get($i)?,)+))
            }
            fn from_pool(row: &AnyRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(($(row.try_get($i)?,)+))
            }
        }
    };
}

columns!(A 0, B 1);
columns!(A 0, B 1, C 2);

/// A value bound to a placeholder: of [`Statements`], or of a read that runs through the pool
/// or on the calling thread (see [`direct::DirectReads::rows`]), by the same list.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    Text(Option<&'a str>),
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Int(v) => ValueRef::Integer(v),
            Value::Bytes(v) => ValueRef::Blob(v),
            Value::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Value::Text(None) => ValueRef::Null,
        }))
    }
}

/// `query` with `values` bound in order.
pub(crate) fn bind<'q>(query: AnyQuery<'q>, values: &[Value<'q>]) -> AnyQuery<'q> {
    values.iter().fold(query, |query, value| match *value {
        Value::Int(v) => query.bind(v),
        Value::Bytes(v) => query.bind(v),
        Value::Text(v) => query.bind(v),
    })
}

/// Statements run in order in the caller's transaction, in as few round trips to the database
/// as it allows: on SQLite as one string, which sqlx hands to the connection's thread once
/// (binding the anonymous `?` placeholders across the statements in order); on PostgreSQL,
/// whose extended protocol takes one statement at a time, one by one.
#[derive(Debug, Default)]
pub(crate) struct Statements<'a> {
    sql: Vec<String>,
    values: Vec<Vec<Value<'a>>>,
}

impl<'a> Statements<'a> {
    /// Adds a statement (placeholders from [`placeholders`]) and its values, in order.
    pub(crate) fn push(&mut self, sql: String, values: Vec<Value<'a>>) {
        self.sql.push(sql);
        self.values.push(values);
    }

    /// Adds multi-row inserts of `rows`, at most `per` rows a statement:
    /// `{head} VALUES (…), (…) {tail}`, each row's `columns` values given by `values`.
    pub(crate) fn push_rows<T, const N: usize>(
        &mut self,
        conn: &AnyConnection,
        (head, tail): (&str, &str),
        per: usize,
        rows: &'a [T],
        values: impl Fn(&'a T) -> [Value<'a>; N],
    ) {
        for chunk in rows.chunks(per) {
            self.push(
                format!(
                    "{head} VALUES {} {tail}",
                    placeholders(conn, chunk.len(), N)
                ),
                chunk.iter().flat_map(&values).collect(),
            );
        }
    }

    /// Runs them; returns the rows they return, in order.
    ///
    /// # Errors
    /// A database failure: the statements before the failing one have run.
    pub(crate) async fn run(self, conn: &mut AnyConnection) -> Result<Vec<AnyRow>, StoreError> {
        if self.sql.is_empty() {
            return Ok(Vec::new());
        }
        if conn.backend_name() == "SQLite" {
            let sql = self.sql.join(";\n");
            let values: Vec<Value<'_>> = self.values.into_iter().flatten().collect();
            return Ok(bind(one_off(&sql), &values).fetch_all(conn).await?);
        }
        let mut rows = Vec::new();
        for (sql, values) in self.sql.iter().zip(&self.values) {
            rows.extend(bind(one_off(sql), values).fetch_all(&mut *conn).await?);
        }
        Ok(rows)
    }
}

/// A statement whose text changes with its row count (a multi-row insert, or several joined):
/// prepared for this run only. Kept in the connection's statement cache, each new row count was
/// another prepared statement (a 500-row insert of requests binds 17,000 values, 56 bytes each
/// in SQLite, before its program), pushing out the fixed statements the cache is for, its
/// memory freed on eviction and taken again by the next new one (docs/benchmarks/issue-7-rounds.md, round 11).
pub(crate) fn one_off(sql: &str) -> AnyQuery<'_> {
    sqlx::query(sql).persistent(false)
}

pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// A millisecond time or count as the database's signed 64-bit integer (saturating).
pub(crate) fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored signed 64-bit time or count back as unsigned (negative values, never written, as 0).
pub(crate) fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn a_database_urls_password_never_shows() {
        assert_eq!(
            redacted_url("postgres://approvals:s3cret@db:5432/approvals?sslmode=require"),
            "postgres://approvals:***@db:5432/approvals?sslmode=require"
        );
        assert_eq!(
            redacted_url("postgresql://db/approvals?user=a&password=s3cret"),
            "postgresql://db/approvals?user=a&password=***"
        );
        assert_eq!(
            redacted_url("postgres://approvals@db/approvals"),
            "postgres://approvals@db/approvals"
        );
        assert_eq!(
            redacted_url("sqlite:data/approval-host.db?mode=rwc"),
            "sqlite:data/approval-host.db?mode=rwc"
        );
        assert!(!redacted_url("mysql://root:s3cret@db/x").contains("s3cret"));
    }
}
