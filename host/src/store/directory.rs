//! SQL for who is who: vendors, their actors (devices) with context tags and guardians, and the
//! versioned policy documents (vendor templates and per-actor overrides).

use sqlx::{AnyConnection, Connection as _, Row as _};

use super::cache::Topic;
use super::{Db, StoreError, Value, i64_of, u64_of};

/// A registered actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorRow {
    pub vendor: String,
    pub id: String,
    pub context_tags: Vec<String>,
    pub guardians: Vec<String>,
}

/// One stored version of a policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentVersion {
    pub version: u32,
    pub document: String,
    pub changed_by: String,
    pub changed_at_ms: u64,
}

/// Creates a vendor; `false` when it already exists.
///
/// # Errors
/// A database failure.
pub async fn create_vendor(db: &Db, id: &str, name: &str, now_ms: u64) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO vendors (id, name, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(i64_of(now_ms))
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the vendor exists.
///
/// # Errors
/// A database failure.
pub async fn vendor_exists(db: &Db, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT 1 FROM vendors WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .is_some())
}

/// Registers an actor, or replaces the tags and guardians of an existing one.
///
/// # Errors
/// A database failure (including an unknown vendor).
pub async fn upsert_actor(db: &Db, actor: &ActorRow, now_ms: u64) -> Result<(), StoreError> {
    let tags = serde_json::to_string(&actor.context_tags).unwrap_or_else(|_| "[]".into());
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO actors (vendor, id, context_tags, created_at_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (vendor, id) DO UPDATE SET context_tags = excluded.context_tags",
    )
    .bind(&actor.vendor)
    .bind(&actor.id)
    .bind(tags)
    .bind(i64_of(now_ms))
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM actor_guardians WHERE vendor = $1 AND actor = $2")
        .bind(&actor.vendor)
        .bind(&actor.id)
        .execute(&mut *tx)
        .await?;
    for guardian in &actor.guardians {
        sqlx::query(
            "INSERT INTO actor_guardians (vendor, actor, guardian) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&actor.vendor)
        .bind(&actor.id)
        .bind(guardian)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    db.changed(Topic::actor(&actor.vendor, &actor.id)).await;
    Ok(())
}

fn tags_of(row: &sqlx::any::AnyRow) -> Result<Vec<String>, StoreError> {
    tags_from(&row.try_get::<String, _>("context_tags")?)
}

fn tags_from(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("actor tags: {e}")))
}

fn version_of(version: i64) -> Result<u32, StoreError> {
    u32::try_from(version).map_err(|_| StoreError::Corrupt("document version out of range".into()))
}

/// What a request reads of its actor, in one statement: the device context tags and the
/// newest version of its overrides document (version and JSON), if any.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorSettingsRow {
    pub context_tags: Vec<String>,
    pub overrides: Option<(u32, String)>,
}

/// The actor's tags and newest overrides, if it is registered with this vendor: one statement
/// instead of one for each (a request whose actor is not cached reads both).
///
/// # Errors
/// A database failure, or corrupt stored tags or version.
pub async fn actor_settings(
    db: &Db,
    vendor: &str,
    id: &str,
) -> Result<Option<ActorSettingsRow>, StoreError> {
    // Every request of an actor whose settings are not cached makes this read: on a SQLite
    // file it runs on this thread (see `store::direct`), elsewhere through the pool.
    let row: Option<(String, Option<i64>, Option<String>)> = db
        .read(
            ACTOR_SETTINGS,
            &[Value::Text(Some(vendor)), Value::Text(Some(id))],
        )
        .await?
        .pop();
    let Some((tags, version, document)) = row else {
        return Ok(None);
    };
    let overrides = match (version, document) {
        (Some(version), Some(document)) => Some((version_of(version)?, document)),
        (None, _) => None,
        (Some(_), None) => {
            return Err(StoreError::Corrupt(
                "an overrides version without its document".into(),
            ));
        }
    };
    Ok(Some(ActorSettingsRow {
        context_tags: tags_from(&tags)?,
        overrides,
    }))
}

/// An actor's context tags (JSON), newest overrides version and document (`$1` vendor, `$2`
/// actor); both drivers read them by position.
const ACTOR_SETTINGS: &str = "SELECT a.context_tags, o.version, o.document FROM actors a
     LEFT JOIN actor_overrides o ON o.vendor = a.vendor AND o.actor = a.id AND o.version =
         (SELECT MAX(m.version) FROM actor_overrides m WHERE m.vendor = a.vendor AND m.actor = a.id)
     WHERE a.vendor = $1 AND a.id = $2";

/// The actor with its guardians, if registered with this vendor.
///
/// # Errors
/// A database failure, or corrupt stored tags.
pub async fn actor(db: &Db, vendor: &str, id: &str) -> Result<Option<ActorRow>, StoreError> {
    let Some(settings) = actor_settings(db, vendor, id).await? else {
        return Ok(None);
    };
    let guardians = guardians(db, vendor, id).await?;
    Ok(Some(ActorRow {
        vendor: vendor.to_owned(),
        id: id.to_owned(),
        context_tags: settings.context_tags,
        guardians,
    }))
}

/// The guardians of an actor, in id order.
///
/// # Errors
/// A database failure.
pub async fn guardians(db: &Db, vendor: &str, actor: &str) -> Result<Vec<String>, StoreError> {
    sqlx::query(
        "SELECT guardian FROM actor_guardians WHERE vendor = $1 AND actor = $2 ORDER BY guardian",
    )
    .bind(vendor)
    .bind(actor)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| Ok(r.try_get("guardian")?))
    .collect()
}

/// Whether `guardian` guards the actor.
///
/// # Errors
/// A database failure.
pub async fn guards(
    db: &Db,
    vendor: &str,
    actor: &str,
    guardian: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "SELECT 1 FROM actor_guardians WHERE vendor = $1 AND actor = $2 AND guardian = $3",
    )
    .bind(vendor)
    .bind(actor)
    .bind(guardian)
    .fetch_optional(db.pool())
    .await?
    .is_some())
}

/// Which versioned document table a call is about.
#[derive(Debug, Clone, Copy)]
pub enum DocumentKind<'a> {
    /// A vendor's policy template.
    Template { vendor: &'a str },
    /// A guardian's overrides for one actor.
    Overrides { vendor: &'a str, actor: &'a str },
}

impl DocumentKind<'_> {
    /// What a change of this document changes (see [`Db::changed`]).
    pub fn topic(&self) -> Topic {
        match self {
            DocumentKind::Template { vendor } => Topic::Vendor((*vendor).to_owned()),
            DocumentKind::Overrides { vendor, actor } => Topic::actor(vendor, actor),
        }
    }

    fn table_and_filter(&self) -> (&'static str, &'static str) {
        match self {
            DocumentKind::Template { .. } => ("policy_templates", "vendor = $1"),
            DocumentKind::Overrides { .. } => ("actor_overrides", "vendor = $1 AND actor = $2"),
        }
    }
}

fn document_of(row: &sqlx::any::AnyRow) -> Result<DocumentVersion, StoreError> {
    Ok(DocumentVersion {
        version: version_of(row.try_get("version")?)?,
        document: row.try_get("document")?,
        changed_by: row.try_get("changed_by")?,
        changed_at_ms: u64_of(row.try_get("changed_at_ms")?),
    })
}

/// Stores `document` as the next version, inside the caller's transaction, and returns it.
///
/// # Errors
/// A database failure (including an unknown vendor or actor).
pub async fn insert_document(
    conn: &mut AnyConnection,
    kind: DocumentKind<'_>,
    document: &str,
    changed_by: &str,
    now_ms: u64,
) -> Result<u32, StoreError> {
    let (table, filter) = kind.table_and_filter();
    // Two writers racing for the same version number: the loser retries with the next one, each
    // attempt in a savepoint so that a refused insert undoes only itself.
    for _ in 0..8 {
        let mut attempt = conn.begin().await?;
        let sql =
            format!("SELECT COALESCE(MAX(version), 0) + 1 AS next FROM {table} WHERE {filter}");
        let next = sqlx::query(&sql);
        let next = match kind {
            DocumentKind::Template { vendor } => next.bind(vendor),
            DocumentKind::Overrides { vendor, actor } => next.bind(vendor).bind(actor),
        };
        let version: i64 = next.fetch_one(&mut *attempt).await?.try_get("next")?;
        let insert = match kind {
            DocumentKind::Template { vendor } => sqlx::query(
                "INSERT INTO policy_templates (vendor, version, document, changed_by, changed_at_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(vendor),
            DocumentKind::Overrides { vendor, actor } => sqlx::query(
                "INSERT INTO actor_overrides (vendor, actor, version, document, changed_by, changed_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(vendor)
            .bind(actor),
        };
        let inserted = insert
            .bind(version)
            .bind(document)
            .bind(changed_by)
            .bind(i64_of(now_ms))
            .execute(&mut *attempt)
            .await
            .map_err(StoreError::from);
        match inserted {
            Ok(_) => {
                attempt.commit().await?;
                return version_of(version);
            }
            Err(e) if e.is_unique_violation() => {
                attempt.rollback().await?;
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Corrupt(
        "could not allocate a document version after 8 attempts".into(),
    ))
}

/// Every version of a document, newest first (at most `limit`).
///
/// # Errors
/// A database failure.
pub async fn documents(
    db: &Db,
    kind: DocumentKind<'_>,
    limit: u32,
) -> Result<Vec<DocumentVersion>, StoreError> {
    let (table, filter) = kind.table_and_filter();
    let sql = format!(
        "SELECT version, document, changed_by, changed_at_ms FROM {table} WHERE {filter} ORDER BY version DESC LIMIT {limit}"
    );
    let query = sqlx::query(&sql);
    let query = match kind {
        DocumentKind::Template { vendor } => query.bind(vendor),
        DocumentKind::Overrides { vendor, actor } => query.bind(vendor).bind(actor),
    };
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(document_of)
        .collect()
}

/// Every vendor: (id, name, created_at_ms), by id.
///
/// # Errors
/// A database failure.
pub async fn vendors(db: &Db) -> Result<Vec<(String, String, u64)>, StoreError> {
    sqlx::query("SELECT id, name, created_at_ms FROM vendors ORDER BY id")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get("name")?,
                u64_of(r.try_get("created_at_ms")?),
            ))
        })
        .collect()
}

/// The actors `guardian` guards: (vendor, actor, context tags), by vendor and actor.
///
/// # Errors
/// A database failure or corrupt stored tags.
pub async fn guarded_by(
    db: &Db,
    guardian: &str,
) -> Result<Vec<(String, String, Vec<String>)>, StoreError> {
    sqlx::query(
        "SELECT a.vendor, a.id, a.context_tags FROM actors a
         JOIN actor_guardians g ON g.vendor = a.vendor AND g.actor = a.id
         WHERE g.guardian = $1 ORDER BY a.vendor, a.id",
    )
    .bind(guardian)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| Ok((r.try_get("vendor")?, r.try_get("id")?, tags_of(r)?)))
    .collect()
}
