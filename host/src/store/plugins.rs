//! SQL for plugin components and versions: blobs by sha256, immutable version numbers per
//! (vendor, plugin), states, the activation history rollbacks read, vendors' signing keys.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection as _, Row as _};

use super::{Db, StoreError};
use crate::plugin::registry::{PluginState, PluginVersion};
use crate::risk::{PluginInfo, Rule};

/// The stored shape of a plugin's self-description (kept private: the domain type has no serde).
#[derive(Serialize, Deserialize)]
struct InfoRecord {
    name: String,
    version: String,
    rules: Vec<(String, String)>,
}

fn info_to_json(info: &PluginInfo) -> String {
    let record = InfoRecord {
        name: info.name.clone(),
        version: info.version.clone(),
        rules: info
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.description.clone()))
            .collect(),
    };
    serde_json::to_string(&record).unwrap_or_default()
}

fn info_from_json(json: &str) -> Result<PluginInfo, StoreError> {
    let record: InfoRecord =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("plugin info: {e}")))?;
    Ok(PluginInfo {
        name: record.name,
        version: record.version,
        rules: record
            .rules
            .into_iter()
            .map(|(id, description)| Rule { id, description })
            .collect(),
    })
}

fn state_name(state: PluginState) -> &'static str {
    match state {
        PluginState::Inactive => "inactive",
        PluginState::Shadow => "shadow",
        PluginState::Active => "active",
    }
}

fn u32_of(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {value}")))
}

fn version_of(row: &AnyRow) -> Result<PluginVersion, StoreError> {
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "inactive" => PluginState::Inactive,
        "shadow" => PluginState::Shadow,
        "active" => PluginState::Active,
        other => return Err(StoreError::Corrupt(format!("plugin state {other:?}"))),
    };
    Ok(PluginVersion {
        vendor: row.try_get("vendor")?,
        name: row.try_get("name")?,
        version: u32_of(row.try_get("version")?, "version")?,
        sha256: row.try_get("sha256")?,
        size_bytes: u64::try_from(row.try_get::<i64, _>("size_bytes")?).unwrap_or_default(),
        info: info_from_json(&row.try_get::<String, _>("info_json")?)?,
        state,
        signed: row.try_get::<i64, _>("signed")? != 0,
        uploaded_at_ms: u64::try_from(row.try_get::<i64, _>("uploaded_at_ms")?).unwrap_or_default(),
    })
}

const COLUMNS: &str =
    "vendor, name, version, sha256, size_bytes, info_json, state, signed, uploaded_at_ms";

/// A validated upload to record.
#[derive(Debug)]
pub struct NewVersion<'a> {
    pub vendor: &'a str,
    pub sha256: &'a str,
    pub bytes: &'a [u8],
    pub info: &'a PluginInfo,
    pub signed: bool,
    pub now_ms: u64,
}

/// Records an upload as the next version of its plugin, in state inactive, inside the caller's
/// transaction; `true` with it when the version is new. The same bytes uploaded again for the
/// same plugin return the existing version instead.
///
/// # Errors
/// A database failure.
pub async fn insert_version(
    conn: &mut AnyConnection,
    new: &NewVersion<'_>,
) -> Result<(PluginVersion, bool), StoreError> {
    let now = i64::try_from(new.now_ms).unwrap_or(i64::MAX);
    // Two uploads racing for the same version number: the loser retries with the next one, each
    // attempt in a savepoint.
    for _ in 0..8 {
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO plugin_blobs (sha256, bytes) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING")
            .bind(new.sha256)
            .bind(new.bytes)
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM plugin_versions WHERE vendor = $1 AND name = $2 AND sha256 = $3"
        ))
        .bind(new.vendor)
        .bind(&new.info.name)
        .bind(new.sha256)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.commit().await?;
            return Ok((version_of(&row)?, false));
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO plugin_versions ({COLUMNS}) \
             SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5, 'inactive', $6, $7 \
             FROM plugin_versions WHERE vendor = $1 AND name = $2 \
             RETURNING {COLUMNS}"
        ))
        .bind(new.vendor)
        .bind(&new.info.name)
        .bind(new.sha256)
        .bind(i64::try_from(new.bytes.len()).unwrap_or(i64::MAX))
        .bind(info_to_json(new.info))
        .bind(i64::from(new.signed))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from);
        match inserted {
            Ok(row) => {
                tx.commit().await?;
                return Ok((version_of(&row)?, true));
            }
            Err(err) if err.is_unique_violation() => {
                tx.rollback().await?;
                continue;
            }
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Corrupt(
        "could not allocate a plugin version number".to_owned(),
    ))
}

/// One version of a vendor's plugin.
///
/// # Errors
/// A database failure.
pub async fn version(
    db: &Db,
    vendor: &str,
    name: &str,
    version: u32,
) -> Result<Option<PluginVersion>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM plugin_versions WHERE vendor = $1 AND name = $2 AND version = $3"
    ))
    .bind(vendor)
    .bind(name)
    .bind(i64::from(version))
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(version_of)
    .transpose()
}

/// Every version of every plugin of a vendor, by plugin name then version.
///
/// # Errors
/// A database failure.
pub async fn versions(db: &Db, vendor: &str) -> Result<Vec<PluginVersion>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM plugin_versions WHERE vendor = $1 ORDER BY name, version"
    ))
    .bind(vendor)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(version_of)
    .collect()
}

/// The versions of a vendor that run on requests (active or shadow).
///
/// # Errors
/// A database failure.
pub async fn live_versions(db: &Db, vendor: &str) -> Result<Vec<PluginVersion>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM plugin_versions WHERE vendor = $1 AND state <> 'inactive' ORDER BY name, version"
    ))
    .bind(vendor)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(version_of)
    .collect()
}

/// Vendors that have at least one live version (for loading at start-up).
///
/// # Errors
/// A database failure.
pub async fn vendors_with_live_versions(db: &Db) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT DISTINCT vendor FROM plugin_versions WHERE state <> 'inactive' ORDER BY vendor",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| r.try_get("vendor").map_err(StoreError::from))
        .collect()
}

/// The component bytes with this sha256.
///
/// # Errors
/// A database failure.
pub async fn blob(db: &Db, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let row = sqlx::query("SELECT bytes FROM plugin_blobs WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(|r| r.try_get("bytes")).transpose()?)
}

/// A version's state change and the versions it deactivated (the previously active one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub changed: PluginVersion,
    pub deactivated: Vec<PluginVersion>,
}

/// Puts one version in `state`, atomically, inside the caller's transaction: activating a
/// version deactivates the plugin's previously active one and records the activation. `None`
/// when the version does not exist.
///
/// # Errors
/// A database failure.
pub async fn set_state(
    conn: &mut AnyConnection,
    target: (&str, &str, u32),
    state: PluginState,
    now_ms: u64,
) -> Result<Option<StateChange>, StoreError> {
    let (vendor, name, version) = target;
    let mut tx = conn.begin().await?;
    let mut deactivated = Vec::new();
    if state == PluginState::Active {
        deactivated = sqlx::query(&format!(
            "UPDATE plugin_versions SET state = 'inactive' \
             WHERE vendor = $1 AND name = $2 AND state = 'active' AND version <> $3 \
             RETURNING {COLUMNS}"
        ))
        .bind(vendor)
        .bind(name)
        .bind(i64::from(version))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(version_of)
        .collect::<Result<_, _>>()?;
    }
    let row = sqlx::query(&format!(
        "UPDATE plugin_versions SET state = $1 WHERE vendor = $2 AND name = $3 AND version = $4 \
         RETURNING {COLUMNS}"
    ))
    .bind(state_name(state))
    .bind(vendor)
    .bind(name)
    .bind(i64::from(version))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    if state == PluginState::Active {
        sqlx::query(
            "INSERT INTO plugin_activations (vendor, name, version, at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(vendor)
        .bind(name)
        .bind(i64::from(version))
        .bind(i64::try_from(now_ms).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some(StateChange {
        changed: version_of(&row)?,
        deactivated,
    }))
}

/// The version activated most recently before the currently active `current` one.
///
/// # Errors
/// A database failure.
pub async fn previous_activation(
    db: &Db,
    vendor: &str,
    name: &str,
    current: u32,
) -> Result<Option<u32>, StoreError> {
    let row = sqlx::query(
        "SELECT version FROM plugin_activations WHERE vendor = $1 AND name = $2 AND version <> $3 \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(vendor)
    .bind(name)
    .bind(i64::from(current))
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| u32_of(r.try_get("version")?, "version"))
        .transpose()
}

/// Registers (or replaces) a vendor's Ed25519 public key for signed uploads.
///
/// # Errors
/// A database failure.
pub async fn set_signing_key(
    db: &Db,
    vendor: &str,
    public_key: &[u8; 32],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO plugin_signing_keys (vendor, public_key) VALUES ($1, $2) \
         ON CONFLICT (vendor) DO UPDATE SET public_key = excluded.public_key",
    )
    .bind(vendor)
    .bind(hex::encode(public_key))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A vendor's registered signing key, if any.
///
/// # Errors
/// A database failure, or a stored key that is not 32 bytes of hex.
pub async fn signing_key(db: &Db, vendor: &str) -> Result<Option<[u8; 32]>, StoreError> {
    let row = sqlx::query("SELECT public_key FROM plugin_signing_keys WHERE vendor = $1")
        .bind(vendor)
        .fetch_optional(db.pool())
        .await?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get("public_key")?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(&text, &mut key)
        .map_err(|e| StoreError::Corrupt(format!("signing key: {e}")))?;
    Ok(Some(key))
}
