//! SQL for relaying events between replicas on PostgreSQL: `NOTIFY` on the channel every
//! replica `LISTEN`s to. (On SQLite there is one process, and nothing to relay.)

use sqlx::postgres::PgListener;

use super::{Backend, Db, StoreError};

/// The channel events are announced on.
pub const CHANNEL: &str = "approval_host_events";

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

/// A listener on the channel, over its own connection to `url`.
///
/// # Errors
/// The database is unreachable.
pub async fn listen(url: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
