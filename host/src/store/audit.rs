//! SQL for the audit log: appending entries with their stored hashes (serialized by the
//! `audit_head` row), reading stored hashes for roots and proofs, entries, checkpoints, payloads
//! and the log's key. Nothing here updates or deletes an entry, a hash or a checkpoint.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use super::{Db, Statements, StoreError, Value, i64_of, placeholders, u64_of};
use crate::audit::entry::Entry;
use crate::audit::merkle::{self, Hash, HashCache, ProofError, TreeOp};

/// Rows per multi-row INSERT: few distinct statements to prepare, far below every bind limit.
const ENTRY_ROWS_PER_INSERT: usize = 100;
const HASH_ROWS_PER_INSERT: usize = 250;
const PAYLOAD_ROWS_PER_INSERT: usize = 100;

fn hash_of(bytes: &[u8]) -> Result<Hash, StoreError> {
    merkle::hash_from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("audit hash: {e}")))
}

/// The stored hashes at `indexes` that exist, in one query.
///
/// # Errors
/// A database failure or a stored hash that is not 32 bytes.
pub async fn read_hashes(
    conn: &mut AnyConnection,
    indexes: &[u64],
) -> Result<Vec<(u64, Hash)>, StoreError> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = Vec::with_capacity(indexes.len());
    for chunk in indexes.chunks(HASH_ROWS_PER_INSERT) {
        let list = placeholders(conn, chunk.len(), 1);
        let sql = format!(
            "SELECT idx, hash FROM audit_hashes WHERE idx IN ({})",
            list.replace(['(', ')'], "")
        );
        let mut query = sqlx::query(&sql);
        for &index in chunk {
            query = query.bind(i64_of(index));
        }
        for row in query.fetch_all(&mut *conn).await? {
            found.push((
                u64_of(row.try_get("idx")?),
                hash_of(&row.try_get::<Vec<u8>, _>("hash")?)?,
            ));
        }
    }
    Ok(found)
}

/// Runs a tree operation over the stored hashes, fetching what it needs (in practice one query).
/// The outer error is the database's, the inner one the operation's (an index outside the tree,
/// or stored hashes that are missing).
///
/// # Errors
/// A database failure.
pub async fn tree(
    conn: &mut AnyConnection,
    op: TreeOp,
) -> Result<Result<Vec<Hash>, ProofError>, StoreError> {
    let cache = HashCache::new();
    // Each round fetches at least one new index; no operation reads more than a few dozen.
    for _ in 0..4 {
        match op.run(&cache) {
            Err(ProofError::MissingHash(_)) => {
                let missing = cache.take_missing();
                let fetched = read_hashes(conn, &missing).await?;
                if let Some(&absent) = missing
                    .iter()
                    .find(|i| !fetched.iter().any(|(f, _)| f == *i))
                {
                    return Ok(Err(ProofError::MissingHash(absent)));
                }
                cache.insert(fetched);
            }
            done => return Ok(done),
        }
    }
    Ok(op.run(&cache))
}

/// The stored hashes on the right edge of the tree of `size` entries: all that appending to it
/// reads. Hashes of a committed size never change, so an edge kept from one commit serves the
/// next append that starts at that size, on any writer.
#[derive(Debug, Clone)]
pub struct RightEdge {
    pub size: u64,
    pub hashes: Vec<(u64, Hash)>,
}

impl RightEdge {
    /// The edge's hashes, largest subtree first (what [`merkle::Frontier::resume`] takes).
    pub fn nodes(&self) -> Vec<Hash> {
        self.hashes.iter().map(|&(_, hash)| hash).collect()
    }
}

/// The stored right edge of the tree of `size` entries, or `None` when a hash of it is missing
/// (a damaged log).
///
/// # Errors
/// A database failure.
pub async fn right_edge(
    conn: &mut AnyConnection,
    size: u64,
) -> Result<Option<RightEdge>, StoreError> {
    let indexes = merkle::right_edge(size);
    let stored = read_hashes(conn, &indexes).await?;
    Ok(indexes
        .iter()
        .map(|i| stored.iter().find(|(j, _)| j == i).copied())
        .collect::<Option<Vec<_>>>()
        .map(|hashes| RightEdge { size, hashes }))
}

/// Appends `entries` (in order, each with its canonical bytes) and their stored hashes, and stores `payloads` (by SHA-256,
/// hex; ones already stored, or named twice, are kept once), inside the caller's transaction;
/// returns the index of the first entry and the new right edge (none when there were no
/// entries). Updating `audit_head` makes concurrent appenders, on any replica, wait for this
/// transaction to end: the database orders the log. `known` is a committed edge: when the log
/// is at its size (nobody else appended since), the edge is not read again. Two round trips on
/// SQLite (see [`Statements`]): the payloads with the head, then the entries with their hashes.
///
/// # Errors
/// A database failure, or stored hashes missing from the tree's right edge (a damaged log).
pub async fn append(
    conn: &mut AnyConnection,
    entries: &[(Entry, Vec<u8>)],
    payloads: &[(String, Vec<u8>)],
    known: Option<&RightEdge>,
) -> Result<(u64, Option<RightEdge>), StoreError> {
    let count = entries.len() as u64;
    let mut first = Statements::default();
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<_> = payloads
        .iter()
        .filter(|(sha256, _)| seen.insert(sha256.as_str()))
        .collect();
    first.push_rows(
        conn,
        (
            "INSERT INTO audit_payloads (sha256, bytes)",
            "ON CONFLICT (sha256) DO NOTHING",
        ),
        PAYLOAD_ROWS_PER_INSERT,
        &distinct,
        |(sha256, bytes)| [Value::Text(Some(sha256.as_str())), Value::Bytes(bytes)],
    );
    first.push(
        format!(
            "UPDATE audit_head SET size = size + {} WHERE id = 1 RETURNING size",
            placeholders(conn, 1, 1)
        ),
        vec![Value::Int(i64_of(count))],
    );
    let row = first
        .run(conn)
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("the audit head is missing".into()))?;
    let end = u64_of(row.try_get("size")?);
    let start = end
        .checked_sub(count)
        .ok_or_else(|| StoreError::Corrupt("audit log size went backwards".into()))?;
    if entries.is_empty() {
        return Ok((start, None));
    }
    let edge = match known {
        Some(edge) if edge.size == start => edge.hashes.clone(),
        _ => {
            right_edge(conn, start)
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("audit tree at size {start}: hashes missing"))
                })?
                .hashes
        }
    };
    let leaves: Vec<Hash> = entries.iter().map(|(_, b)| merkle::leaf_hash(b)).collect();
    let cache = HashCache::new();
    cache.insert(edge);
    let hashes = merkle::append(start, &leaves, &cache)
        .map_err(|e| StoreError::Corrupt(format!("audit tree at size {start}: {e}")))?;
    let edge = merkle::right_edge(end);
    let edge = RightEdge {
        size: end,
        hashes: edge
            .iter()
            .copied()
            .zip(
                cache
                    .get(&edge)
                    .map_err(|e| StoreError::Corrupt(format!("audit tree at size {end}: {e}")))?,
            )
            .collect(),
    };

    let mut rest = Statements::default();
    let rows: Vec<_> = (start..).zip(entries).collect();
    rest.push_rows(
        conn,
        (
            "INSERT INTO audit_entries (idx, entry, kind, at_ms, vendor, actor, approval_id, plugin, rule, decision)",
            "",
        ),
        ENTRY_ROWS_PER_INSERT,
        &rows,
        |(index, (entry, bytes))| {
            let ix = entry.event.index();
            [
                Value::Int(i64_of(*index)),
                Value::Bytes(bytes),
                Value::Text(Some(ix.kind)),
                Value::Int(i64_of(entry.at_ms)),
                Value::Text(ix.vendor),
                Value::Text(ix.actor),
                Value::Text(ix.approval_id),
                Value::Text(ix.plugin),
                Value::Text(ix.rule),
                Value::Text(ix.decision),
            ]
        },
    );
    rest.push_rows(
        conn,
        ("INSERT INTO audit_hashes (idx, hash)", ""),
        HASH_ROWS_PER_INSERT,
        &hashes,
        |(index, hash)| [Value::Int(i64_of(*index)), Value::Bytes(&hash.0)],
    );
    rest.run(conn).await?;
    Ok((start, Some(edge)))
}

/// Deletes a payload's bytes; `false` if there were none.
///
/// # Errors
/// A database failure.
pub async fn delete_payload(conn: &mut AnyConnection, sha256: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM audit_payloads WHERE sha256 = $1")
        .bind(sha256)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0)
}

/// A payload's bytes, unless redacted (or never stored).
///
/// # Errors
/// A database failure.
pub async fn payload(db: &Db, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        sqlx::query("SELECT bytes FROM audit_payloads WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(db.pool())
            .await?
            .map(|r| r.try_get("bytes"))
            .transpose()?,
    )
}

/// Payloads in SHA-256 order after `after` (exclusive), at most `limit`: for exports.
///
/// # Errors
/// A database failure.
pub async fn payloads_after(
    db: &Db,
    after: &str,
    limit: u32,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    sqlx::query(&format!(
        "SELECT sha256, bytes FROM audit_payloads WHERE sha256 > $1 ORDER BY sha256 LIMIT {limit}"
    ))
    .bind(after)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| Ok((r.try_get("sha256")?, r.try_get("bytes")?)))
    .collect()
}

/// The number of entries committed.
///
/// # Errors
/// A database failure.
pub async fn size(db: &Db) -> Result<u64, StoreError> {
    Ok(u64_of(
        sqlx::query("SELECT size FROM audit_head WHERE id = 1")
            .fetch_one(db.pool())
            .await?
            .try_get("size")?,
    ))
}

/// A stored entry: its index and canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub index: u64,
    pub bytes: Vec<u8>,
}

fn entry_of(row: &AnyRow) -> Result<StoredEntry, StoreError> {
    Ok(StoredEntry {
        index: u64_of(row.try_get("idx")?),
        bytes: row.try_get("entry")?,
    })
}

/// Entries `from..to` in index order (those that exist); callers page (a few thousand at a
/// time). On a SQLite file the page is read on a blocking thread over the calling-thread
/// connections (`store::direct`): through sqlx each of its rows would be a message from the
/// connection's thread to the calling task, 10-20 ms of the request workers' time a page at the
/// peak (docs/benchmarks/issue-7-rounds.md, round 10).
///
/// # Errors
/// A database failure.
pub async fn entries(db: &Db, from: u64, to: u64) -> Result<Vec<StoredEntry>, StoreError> {
    const ENTRIES: &str =
        "SELECT idx, entry FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx";
    if let Some(direct) = db.direct.clone() {
        return tokio::task::spawn_blocking(move || {
            let values = [Value::Int(i64_of(from)), Value::Int(i64_of(to))];
            direct.rows(ENTRIES, &values, |row| {
                Ok(StoredEntry {
                    index: u64_of(row.get(0)?),
                    bytes: row.get(1)?,
                })
            })
        })
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)?;
    }
    sqlx::query(ENTRIES)
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(entry_of)
        .collect()
}

/// The index of the first stored entry at or after `from`, if any.
///
/// # Errors
/// A database failure.
pub async fn next_entry(db: &Db, from: u64) -> Result<Option<u64>, StoreError> {
    let next: Option<i64> =
        sqlx::query_scalar("SELECT MIN(idx) FROM audit_entries WHERE idx >= $1")
            .bind(i64_of(from))
            .fetch_one(db.pool())
            .await?;
    Ok(next.map(u64_of))
}

/// The entries about one approval, in index order.
///
/// # Errors
/// A database failure.
pub async fn entries_of_approval(
    db: &Db,
    approval_id: &str,
) -> Result<Vec<StoredEntry>, StoreError> {
    sqlx::query("SELECT idx, entry FROM audit_entries WHERE approval_id = $1 ORDER BY idx")
        .bind(approval_id)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(entry_of)
        .collect()
}

/// A stored signed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub root: Hash,
    pub note: String,
    pub signed_at_ms: u64,
}

fn checkpoint_of(row: &AnyRow) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: u64_of(row.try_get("tree_size")?),
        root: hash_of(&row.try_get::<Vec<u8>, _>("root")?)?,
        note: row.try_get("note")?,
        signed_at_ms: u64_of(row.try_get("signed_at_ms")?),
    })
}

/// Stores a signed checkpoint; a replica that signed the same size first keeps its row (Ed25519
/// is deterministic, so the notes are identical anyway).
///
/// # Errors
/// A database failure.
pub async fn insert_checkpoint(db: &Db, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (tree_size, root, note, signed_at_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tree_size) DO NOTHING",
    )
    .bind(i64_of(checkpoint.size))
    .bind(checkpoint.root.0.as_slice())
    .bind(&checkpoint.note)
    .bind(i64_of(checkpoint.signed_at_ms))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The checkpoint of the largest tree.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn latest_checkpoint(db: &Db) -> Result<Option<StoredCheckpoint>, StoreError> {
    sqlx::query(
        "SELECT tree_size, root, note, signed_at_ms FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(checkpoint_of)
    .transpose()
}

/// Checkpoints with a tree size after `after`, smallest first, at most `limit`.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn checkpoints_after(
    db: &Db,
    after: u64,
    limit: u32,
) -> Result<Vec<StoredCheckpoint>, StoreError> {
    sqlx::query(&format!(
        "SELECT tree_size, root, note, signed_at_ms FROM audit_checkpoints WHERE tree_size > $1
         ORDER BY tree_size LIMIT {limit}"
    ))
    .bind(i64_of(after))
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(checkpoint_of)
    .collect()
}

/// The log's stored private key, if one was stored.
///
/// # Errors
/// A database failure.
pub async fn log_key(db: &Db) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query("SELECT skey FROM audit_log_key WHERE id = 1")
        .fetch_optional(db.pool())
        .await?
        .map(|r| r.try_get("skey"))
        .transpose()?)
}

/// Stores the log's private key unless one is stored already (another replica won the race).
///
/// # Errors
/// A database failure.
pub async fn insert_log_key(db: &Db, skey: &str, now_ms: u64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log_key (id, skey, created_at_ms) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(skey)
    .bind(i64_of(now_ms))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Which entries a search returns.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub vendor: Option<String>,
    pub actor: Option<String>,
    pub approval_id: Option<String>,
    pub plugin: Option<String>,
    pub rule: Option<String>,
    pub decision: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only entries with a larger index (for paging).
    pub after_index: Option<u64>,
}

/// Entries matching `filter`, in index order, at most `limit`.
///
/// # Errors
/// A database failure.
pub async fn search(
    db: &Db,
    filter: &EntryFilter,
    limit: u32,
) -> Result<Vec<StoredEntry>, StoreError> {
    let mut clauses = Vec::new();
    let mut texts = Vec::new();
    let mut numbers = Vec::new();
    let columns = [
        ("vendor", &filter.vendor),
        ("actor", &filter.actor),
        ("approval_id", &filter.approval_id),
        ("plugin", &filter.plugin),
        ("rule", &filter.rule),
        ("decision", &filter.decision),
        ("kind", &filter.kind),
    ];
    for (column, value) in columns {
        if let Some(value) = value {
            texts.push(value.clone());
            clauses.push(format!("{column} = $T{}", texts.len()));
        }
    }
    for (clause, value) in [
        ("at_ms >= ", filter.since_ms),
        ("at_ms < ", filter.until_ms),
        ("idx > ", filter.after_index),
    ] {
        if let Some(value) = value {
            numbers.push(i64_of(value));
            clauses.push(format!("{clause}$N{}", numbers.len()));
        }
    }
    let mut sql = format!(
        "SELECT idx, entry FROM audit_entries {} ORDER BY idx LIMIT {limit}",
        if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        }
    );
    // Number the placeholders: texts first, then numbers.
    let offset = texts.len();
    for i in (1..=numbers.len()).rev() {
        sql = sql.replace(&format!("$N{i}"), &format!("${}", offset + i));
    }
    for i in (1..=texts.len()).rev() {
        sql = sql.replace(&format!("$T{i}"), &format!("${i}"));
    }
    let mut query = sqlx::query(&sql);
    for text in texts {
        query = query.bind(text);
    }
    for number in numbers {
        query = query.bind(number);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(entry_of)
        .collect()
}
