//! SQL for relaying events between replicas on PostgreSQL: `NOTIFY` on the channel every
//! replica `LISTEN`s to. (On SQLite there is one process, and nothing to relay.)

use sqlx::postgres::PgListener;

use super::cache::Topic;
use super::{Backend, Db, StoreError};

/// The channel events are announced on.
pub const CHANNEL: &str = "approval_host_events";

/// The channel changes of cached data are announced on (a [`Topic`] as JSON).
pub const CHANGES: &str = "approval_host_changes";

/// Announces `payload` (a short JSON text) to every replica.
///
/// # Errors
/// A database failure.
pub async fn notify(db: &Db, payload: &str) -> Result<(), StoreError> {
    if db.backend() != Backend::Postgres {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Announces that `topic` changed to every replica.
///
/// # Errors
/// A database failure.
pub async fn notify_change(db: &Db, topic: &Topic) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES)
        .bind(serde_json::to_string(topic).unwrap_or_default())
        .execute(db.pool())
        .await?;
    Ok(())
}

/// A listener on both channels, over its own connection to `url`.
///
/// # Errors
/// The database is unreachable.
pub async fn listen(url: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen_all([CHANNEL, CHANGES]).await?;
    Ok(listener)
}
