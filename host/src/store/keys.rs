//! SQL for the Ed25519 keys that sign capability tokens: insert, list, retire, and the one-step
//! replacement of the signing key. The database keeps at most one unretired key (a partial
//! unique index), so replicas racing at start-up or rotating at once cannot both win.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Db, StoreError, i64_of, u64_of};

/// A stored token signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The RFC 7638 thumbprint of the public key: the `kid` of the tokens it signs.
    pub kid: String,
    /// The Ed25519 seed (RFC 8032 secret key).
    pub secret: [u8; 32],
    /// When it was stored.
    pub created_at_ms: u64,
    /// When it stopped signing; `None` for the signing key.
    pub retired_at_ms: Option<u64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("retired_at_ms", &self.retired_at_ms)
            .finish()
    }
}

const COLUMNS: &str = "kid, secret_hex, created_at_ms, retired_at_ms";

fn key_of(row: &AnyRow) -> Result<StoredKey, StoreError> {
    let kid: String = row.try_get("kid")?;
    let secret_hex: String = row.try_get("secret_hex")?;
    let secret = hex::decode(&secret_hex)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!("token key {kid}: secret is not 32 hex bytes"))
        })?;
    Ok(StoredKey {
        secret,
        created_at_ms: u64_of(row.try_get("created_at_ms")?),
        retired_at_ms: row.try_get::<Option<i64>, _>("retired_at_ms")?.map(u64_of),
        kid,
    })
}

/// Inserts `key` as the signing key unless there already is one (or a key with its kid).
/// Returns whether it was inserted; on `false` the caller re-reads the signing key, which is
/// how the losers of a start-up race adopt the winner's key.
///
/// # Errors
/// A database failure.
pub async fn insert_key(
    db: &Db,
    kid: &str,
    secret: &[u8; 32],
    now_ms: u64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO token_keys (kid, secret_hex, created_at_ms, retired_at_ms) \
         VALUES ($1, $2, $3, NULL) ON CONFLICT DO NOTHING",
    )
    .bind(kid)
    .bind(hex::encode(secret))
    .bind(i64_of(now_ms))
    .execute(db.pool())
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The signing key and every key retired after `retired_after_ms`, signing key first, then
/// newest first.
///
/// # Errors
/// A database failure, or a stored secret that is not 32 bytes of hex.
pub async fn list_keys(db: &Db, retired_after_ms: u64) -> Result<Vec<StoredKey>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM token_keys WHERE retired_at_ms IS NULL OR retired_at_ms > $1 \
         ORDER BY CASE WHEN retired_at_ms IS NULL THEN 0 ELSE 1 END, created_at_ms DESC, kid"
    ))
    .bind(i64_of(retired_after_ms))
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(key_of)
    .collect()
}

/// Retires the key `kid` at `now_ms` if it is the signing key. Returns whether it was.
///
/// # Errors
/// A database failure.
pub async fn retire_key(db: &Db, kid: &str, now_ms: u64) -> Result<bool, StoreError> {
    let retired = sqlx::query(
        "UPDATE token_keys SET retired_at_ms = $1 WHERE kid = $2 AND retired_at_ms IS NULL",
    )
    .bind(i64_of(now_ms))
    .bind(kid)
    .execute(db.pool())
    .await?;
    Ok(retired.rows_affected() == 1)
}

/// Makes `kid` the signing key in one transaction: retires the current signing key at `now_ms`
/// and inserts `kid` (or un-retires it, for a configured key that was retired before). When
/// another writer installs a different key at the same moment, one of the two transactions
/// fails on the unique index and is retried, so the last to commit wins and there is never more
/// than one signing key.
///
/// # Errors
/// A database failure.
pub async fn activate_key(
    db: &Db,
    kid: &str,
    secret: &[u8; 32],
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut last = None;
    for _ in 0..8 {
        match try_activate(db, kid, secret, now_ms).await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_unique_violation() => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| StoreError::Corrupt("could not activate a token key".to_owned())))
}

async fn try_activate(
    db: &Db,
    kid: &str,
    secret: &[u8; 32],
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "UPDATE token_keys SET retired_at_ms = $1 WHERE retired_at_ms IS NULL AND kid <> $2",
    )
    .bind(i64_of(now_ms))
    .bind(kid)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO token_keys (kid, secret_hex, created_at_ms, retired_at_ms) \
         VALUES ($1, $2, $3, NULL) ON CONFLICT (kid) DO UPDATE SET retired_at_ms = NULL",
    )
    .bind(kid)
    .bind(hex::encode(secret))
    .bind(i64_of(now_ms))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
