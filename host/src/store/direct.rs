//! Reads on the calling thread, for the statements requests make most on SQLite: the history
//! read (every request); an agent's credential and its device's settings when they are not
//! cached (a device's first request, or one more than a minute after its last: a burst of them
//! through the pool was the open loop's whole tail, BENCHMARKS.md round 12); and whether an
//! identical request is pending and which pending requests a new one may be a tiny variation of
//! (requests of a device with requests waiting).
//!
//! sqlx runs each SQLite statement on its connection's own thread: the statement goes over a
//! channel to that thread and each row comes back over another, two thread switches at least
//! for a one-row read. On a 2-core machine at the host's peak those switches were a quarter of
//! all CPU samples (BENCHMARKS.md). These reads are short (an aggregate over one actor's rows of
//! the last day through a covering index; lookups in a primary or unique index), so they run here
//! instead, on the task's own thread, over a connection of its own (read only; WAL readers never
//! wait for the writer). Writes stay on sqlx: they run once per writer batch, not once per request.
//!
//! Only for a SQLite file: an in-memory database is private to the connection that opened it,
//! and PostgreSQL has no such hand-off to save.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags};

use super::{SQLITE_PRAGMAS, StoreError, Value};

/// Idle connections kept for the next read (one per tokio worker is what a busy host uses).
const IDLE: usize = 4;

/// Read-only connections to one SQLite file, used on the calling thread.
#[derive(Debug)]
pub struct DirectReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl DirectReads {
    /// Reads from the SQLite file at `path` (which the pool has created and migrated).
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` on an idle connection (a new one if none is idle), on this thread.
    ///
    /// # Errors
    /// The file cannot be opened, or `read` failed.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.open()?,
        };
        // A statement that failed leaves its connection fit for the next read.
        let out = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE {
            idle.push(conn);
        }
        Ok(out?)
    }

    /// The rows of `sql` (placeholders `$1`, `$2`, … bound to `values` in order, as the pool's
    /// driver binds them), each through `row`, on this thread.
    ///
    /// # Errors
    /// The file cannot be opened, or the statement failed.
    pub(crate) fn rows<T>(
        &self,
        sql: &str,
        values: &[Value<'_>],
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(sql)?;
            let rows = statement.query_map(&*named(values), row)?;
            rows.collect()
        })
    }

    /// Whether `sql` (bound as in [`Self::rows`]) returns a row, on this thread.
    ///
    /// # Errors
    /// The file cannot be opened, or the statement failed.
    pub(crate) fn exists(&self, sql: &str, values: &[Value<'_>]) -> Result<bool, StoreError> {
        self.read(|conn| conn.prepare_cached(sql)?.exists(&*named(values)))
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The pool's settings (those of a writer are no-ops here), and no writes at all.
        conn.execute_batch(SQLITE_PRAGMAS)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

/// `values` by their names `$1`, `$2`, … (SQLite numbers named parameters in the order they
/// first appear, which is not always theirs).
fn named<'v>(values: &'v [Value<'_>]) -> Vec<(&'static str, &'v dyn rusqlite::ToSql)> {
    const NAMES: [&str; 9] = ["$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9"];
    debug_assert!(values.len() <= NAMES.len(), "more values than names");
    NAMES
        .iter()
        .zip(values)
        .map(|(name, value)| (*name, value as &dyn rusqlite::ToSql))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::Db;

    fn size(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT size FROM audit_head", [], |row| row.get(0))
    }

    async fn file_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("host.db").display());
        let db = Db::connect(&url).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn a_read_sees_what_the_pool_committed_just_before() {
        let (_dir, db) = file_db().await;
        let direct = db.direct().expect("a SQLite file reads directly");
        assert_eq!(direct.read(size).unwrap(), 0);
        sqlx::query("UPDATE audit_head SET size = 7 WHERE id = 1")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(direct.read(size).unwrap(), 7);
    }

    #[tokio::test]
    async fn a_reader_cannot_write_and_a_bad_read_is_an_error() {
        let (_dir, db) = file_db().await;
        let direct = db.direct().unwrap();
        let write = direct.read(|c| c.execute("UPDATE audit_head SET size = 9", []));
        assert!(matches!(write, Err(StoreError::Direct(_))), "{write:?}");
        let missing =
            direct.read(|c| c.query_row("SELECT x FROM missing", [], |r| r.get::<_, i64>(0)));
        assert!(matches!(missing, Err(StoreError::Direct(_))), "{missing:?}");
        // The connection whose statement failed reads again.
        assert_eq!(direct.read(size).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_requests_reads_do_not_wait_for_the_pool() {
        let (_dir, db) = file_db().await;
        // With the pool closed, only the reads on the calling thread can answer.
        db.pool().close().await;
        let (history, flagged) = crate::store::approvals::history(&db, "v", "a", 1_000)
            .await
            .unwrap();
        assert_eq!((history.pending, flagged), (0, None));
        let pending =
            crate::store::approvals::pending_with_params(&db, "v", "a", "payment", "00", "11")
                .await
                .unwrap();
        assert!(pending.is_none());
    }

    #[tokio::test]
    async fn an_uncached_agent_s_credential_and_settings_are_read_without_the_pool() {
        use crate::store::{credentials, directory};
        let (_dir, db) = file_db().await;
        directory::create_vendor(&db, "v", "Vendor", 1)
            .await
            .unwrap();
        let actor = directory::ActorRow {
            vendor: "v".into(),
            id: "toy".into(),
            context_tags: vec!["child".into(), "family-device".into()],
            guardians: Vec::new(),
        };
        directory::upsert_actor(&db, &actor, 1).await.unwrap();
        credentials::insert_agent_token(&db, ("v", "toy"), "aa", 1)
            .await
            .unwrap();
        credentials::insert_agent_token(&db, ("v", "toy"), "bb", 1)
            .await
            .unwrap();
        credentials::revoke_agent_tokens(&db, ("v", "toy"), 2)
            .await
            .unwrap();
        credentials::insert_agent_token(&db, ("v", "toy"), "cc", 3)
            .await
            .unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        let overrides = directory::DocumentKind::Overrides {
            vendor: "v",
            actor: "toy",
        };
        for doc in [r#"{"one":1}"#, r#"{"two":2}"#] {
            directory::insert_document(&mut conn, overrides, doc, "parent", 4)
                .await
                .unwrap();
        }
        drop(conn);
        // With the pool closed, only the reads on the calling thread can answer.
        db.pool().close().await;
        let found = credentials::actor_of_token(&db, "cc").await.unwrap();
        assert_eq!(found, Some(("v".to_owned(), "toy".to_owned())));
        for revoked_or_unknown in ["aa", "zz"] {
            let found = credentials::actor_of_token(&db, revoked_or_unknown).await;
            assert_eq!(found.unwrap(), None, "{revoked_or_unknown}");
        }
        let settings = directory::actor_settings(&db, "v", "toy").await.unwrap();
        assert_eq!(
            settings,
            Some(directory::ActorSettingsRow {
                context_tags: actor.context_tags.clone(),
                overrides: Some((2, r#"{"two":2}"#.to_owned())),
            })
        );
        assert_eq!(
            directory::actor_settings(&db, "v", "nobody").await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_device_s_pending_requests_are_found_through_their_index() {
        let (_dir, db) = file_db().await;
        let direct = db.direct().expect("a file");
        // Not through the actor's time index: that would read every request of its history.
        for sql in [
            crate::store::approvals::PENDING_LIKE.to_owned(),
            crate::store::approvals::identical_pending("1"),
        ] {
            let plan = direct
                .read(|conn| {
                    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    // The parameters stay unbound (NULL): only the plan is asked for.
                    let mut rows = statement.raw_query();
                    let mut lines = Vec::new();
                    while let Some(row) = rows.next()? {
                        lines.push(row.get::<_, String>(3)?);
                    }
                    Ok(lines)
                })
                .unwrap();
            let searches: Vec<&String> = plan.iter().filter(|l| l.starts_with("SEARCH")).collect();
            assert_eq!(searches.len(), 2, "{plan:?}");
            // By the variation key too, not every pending request of the actor.
            assert!(
                searches
                    .iter()
                    .all(|l| l.contains("approvals_one_pending") && l.contains("variation_key=?")),
                "{plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn only_a_file_is_read_directly() {
        let (dir, _db) = file_db().await;
        let file = dir.path().join("host.db");
        let url = format!("sqlite://{}?mode=rw", file.display());
        assert_eq!(crate::store::sqlite_file(&url).unwrap(), Some(file));
        for url in ["sqlite::memory:", "sqlite://shared?mode=memory"] {
            assert_eq!(crate::store::sqlite_file(url).unwrap(), None, "{url}");
        }
    }
}
