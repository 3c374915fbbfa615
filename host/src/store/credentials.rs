//! SQL for credentials: vendors' API keys and agents' bearer tokens, stored only as SHA-256 of
//! the secret (looked up by that hash).

use sqlx::Row as _;

use super::cache::Topic;
use super::{Db, StoreError, Value, i64_of};

/// Stores a vendor API key's hash.
///
/// # Errors
/// A database failure (including an unknown vendor).
pub async fn insert_vendor_key(
    db: &Db,
    vendor: &str,
    key_sha256: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vendor_api_keys (key_sha256, vendor, created_at_ms) VALUES ($1, $2, $3)",
    )
    .bind(key_sha256)
    .bind(vendor)
    .bind(i64_of(now_ms))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The vendor whose unrevoked key hashes to `key_sha256`.
///
/// # Errors
/// A database failure.
pub async fn vendor_of_key(db: &Db, key_sha256: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query(
        "SELECT vendor FROM vendor_api_keys WHERE key_sha256 = $1 AND revoked_at_ms IS NULL",
    )
    .bind(key_sha256)
    .fetch_optional(db.pool())
    .await?
    .map(|r| r.try_get("vendor"))
    .transpose()?)
}

/// Revokes every key of a vendor except `keep`; returns how many were revoked.
///
/// # Errors
/// A database failure.
pub async fn revoke_vendor_keys(
    db: &Db,
    vendor: &str,
    keep: &str,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let revoked = sqlx::query(
        "UPDATE vendor_api_keys SET revoked_at_ms = $1
         WHERE vendor = $2 AND key_sha256 <> $3 AND revoked_at_ms IS NULL",
    )
    .bind(i64_of(now_ms))
    .bind(vendor)
    .bind(keep)
    .execute(db.pool())
    .await?
    .rows_affected();
    db.changed(Topic::Credentials).await;
    Ok(revoked)
}

/// Stores an agent token's hash for one actor.
///
/// # Errors
/// A database failure (including an unknown actor).
pub async fn insert_agent_token(
    db: &Db,
    (vendor, actor): (&str, &str),
    token_sha256: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_tokens (token_sha256, vendor, actor, created_at_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_sha256)
    .bind(vendor)
    .bind(actor)
    .bind(i64_of(now_ms))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The (vendor, actor) whose unrevoked token hashes to `token_sha256`.
///
/// # Errors
/// A database failure.
pub async fn actor_of_token(
    db: &Db,
    token_sha256: &str,
) -> Result<Option<(String, String)>, StoreError> {
    // Every request of an agent whose token is not cached makes this read: on a SQLite file it
    // runs on this thread (see `store::direct`), elsewhere through the pool.
    Ok(db
        .read(ACTOR_OF_TOKEN, &[Value::Text(Some(token_sha256))])
        .await?
        .pop())
}

/// The vendor and actor of an unrevoked token (`$1` its SHA-256): a lookup in its primary key.
const ACTOR_OF_TOKEN: &str =
    "SELECT vendor, actor FROM agent_tokens WHERE token_sha256 = $1 AND revoked_at_ms IS NULL";

/// Revokes every token of an actor; returns how many were revoked.
///
/// # Errors
/// A database failure.
pub async fn revoke_agent_tokens(
    db: &Db,
    (vendor, actor): (&str, &str),
    now_ms: u64,
) -> Result<u64, StoreError> {
    let revoked = sqlx::query(
        "UPDATE agent_tokens SET revoked_at_ms = $1
         WHERE vendor = $2 AND actor = $3 AND revoked_at_ms IS NULL",
    )
    .bind(i64_of(now_ms))
    .bind(vendor)
    .bind(actor)
    .execute(db.pool())
    .await?
    .rows_affected();
    db.changed(Topic::Credentials).await;
    Ok(revoked)
}
