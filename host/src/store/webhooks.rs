//! SQL for vendors' webhooks and the delivery log, which is also the outbox: a delivery is
//! written when its event happens and sent (and retried) by whichever replica claims it first.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Db, StoreError, i64_of, u64_of};

/// A vendor's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub vendor: String,
    pub url: String,
    /// The Standard Webhooks secret (`whsec_…`).
    pub secret: String,
    pub created_at_ms: u64,
}

/// Sets (or replaces) a vendor's webhook.
///
/// # Errors
/// A database failure.
pub async fn set(db: &Db, hook: &Webhook) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vendor_webhooks (vendor, url, secret, created_at_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (vendor) DO UPDATE SET url = excluded.url, secret = excluded.secret,
             created_at_ms = excluded.created_at_ms",
    )
    .bind(&hook.vendor)
    .bind(&hook.url)
    .bind(&hook.secret)
    .bind(i64_of(hook.created_at_ms))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A vendor's webhook, if set.
///
/// # Errors
/// A database failure.
pub async fn get(db: &Db, vendor: &str) -> Result<Option<Webhook>, StoreError> {
    sqlx::query("SELECT vendor, url, secret, created_at_ms FROM vendor_webhooks WHERE vendor = $1")
        .bind(vendor)
        .fetch_optional(db.pool())
        .await?
        .map(|r| {
            Ok(Webhook {
                vendor: r.try_get("vendor")?,
                url: r.try_get("url")?,
                secret: r.try_get("secret")?,
                created_at_ms: u64_of(r.try_get("created_at_ms")?),
            })
        })
        .transpose()
}

/// Removes a vendor's webhook; `false` if there was none.
///
/// # Errors
/// A database failure.
pub async fn remove(db: &Db, vendor: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM vendor_webhooks WHERE vendor = $1")
        .bind(vendor)
        .execute(db.pool())
        .await?
        .rows_affected()
        > 0)
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One event's delivery to a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub vendor: String,
    pub event_type: String,
    pub url: String,
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at_ms: u64,
    pub delivered_at_ms: Option<u64>,
}

const COLUMNS: &str = "id, vendor, event_type, url, payload, status, attempts, next_attempt_ms, \
    last_status, last_error, created_at_ms, delivered_at_ms";

fn delivery_of(row: &AnyRow) -> Result<Delivery, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        vendor: row.try_get("vendor")?,
        event_type: row.try_get("event_type")?,
        url: row.try_get("url")?,
        payload: row.try_get("payload")?,
        status: match status.as_str() {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("delivery status {other:?}"))),
        },
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        next_attempt_ms: u64_of(row.try_get("next_attempt_ms")?),
        last_status: row
            .try_get::<Option<i64>, _>("last_status")?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error")?,
        created_at_ms: u64_of(row.try_get("created_at_ms")?),
        delivered_at_ms: row
            .try_get::<Option<i64>, _>("delivered_at_ms")?
            .map(u64_of),
    })
}

/// Queues a delivery (status pending, due at `next_attempt_ms`).
///
/// # Errors
/// A database failure.
pub async fn insert_delivery(db: &Db, d: &Delivery) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO webhook_deliveries ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, NULL, NULL, $7, NULL)"
    ))
    .bind(&d.id)
    .bind(&d.vendor)
    .bind(&d.event_type)
    .bind(&d.url)
    .bind(&d.payload)
    .bind(i64_of(d.next_attempt_ms))
    .bind(i64_of(d.created_at_ms))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Pending deliveries due at `now_ms`, oldest due first.
///
/// # Errors
/// A database failure.
pub async fn due(db: &Db, now_ms: u64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_ms <= $1
         ORDER BY next_attempt_ms LIMIT {limit}"
    ))
    .bind(i64_of(now_ms))
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(delivery_of)
    .collect()
}

/// Claims a due delivery for one attempt by moving its due time to `until_ms`; `false` when
/// another replica claimed it first (its due time is no longer `seen_due_ms`).
///
/// # Errors
/// A database failure.
pub async fn claim(db: &Db, id: &str, seen_due_ms: u64, until_ms: u64) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_ms = $1
         WHERE id = $2 AND status = 'pending' AND next_attempt_ms = $3",
    )
    .bind(i64_of(until_ms))
    .bind(id)
    .bind(i64_of(seen_due_ms))
    .execute(db.pool())
    .await?
    .rows_affected()
        == 1)
}

/// What an attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When to try again (pending only).
    pub next_attempt_ms: u64,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub at_ms: u64,
}

/// Records an attempt.
///
/// # Errors
/// A database failure.
pub async fn record_attempt(db: &Db, id: &str, a: &Attempt) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_ms = $3,
             last_status = $4, last_error = $5,
             delivered_at_ms = CASE WHEN $1 = 'delivered' THEN $6 ELSE delivered_at_ms END
         WHERE id = $7",
    )
    .bind(a.status.as_str())
    .bind(i64::from(a.attempts))
    .bind(i64_of(a.next_attempt_ms))
    .bind(a.http_status.map(i64::from))
    .bind(a.error.as_deref())
    .bind(i64_of(a.at_ms))
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A vendor's deliveries, newest first.
///
/// # Errors
/// A database failure.
pub async fn deliveries(db: &Db, vendor: &str, limit: u32) -> Result<Vec<Delivery>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE vendor = $1 ORDER BY created_at_ms DESC, id LIMIT {limit}"
    ))
    .bind(vendor)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(delivery_of)
    .collect()
}
