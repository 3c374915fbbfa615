//! SQL for decision records: inserting a request's record (with the per-actor rate limit counted
//! in the same transaction), idempotency and join-pending lookups, the conditional writes that
//! settle a pending request exactly once, and the history summary plugins are given.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection as _, Row as _};

use super::{Db, StoreError, Value, bind, i64_of, one_off, placeholders, u64_of};
use crate::approvals::record::{
    ApprovalRecord, FiredRule, IssuedToken, Method, PluginRun, Provenance, Route, Status,
};
use crate::risk::{Activity, CounterOffer, Decision, History, Money};

// ---- JSON columns: private mirrors of the domain types -------------------------------------

#[derive(Serialize, Deserialize)]
struct ProvenanceJson {
    surface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RuleJson {
    source: String,
    rule_id: String,
    decision: String,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct PluginJson {
    name: String,
    version: u32,
    sha256: String,
    shadow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    fuel_used: u64,
    wall_time_us: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CounterOfferJson {
    Amount { minor_units: u64, currency: String },
    Params(serde_json::Value),
}

fn decision_of(name: &str) -> Result<Decision, StoreError> {
    match name {
        "allow" => Ok(Decision::Allow),
        "escalate" => Ok(Decision::Escalate),
        "deny" => Ok(Decision::Deny),
        other => Err(StoreError::Corrupt(format!("decision {other:?}"))),
    }
}

fn corrupt(what: &str) -> impl Fn(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn rules_json(rules: &[FiredRule]) -> String {
    to_json(
        &rules
            .iter()
            .map(|r| RuleJson {
                source: r.source.clone(),
                rule_id: r.rule_id.clone(),
                decision: r.decision.as_str().to_owned(),
                reason: r.reason.clone(),
            })
            .collect::<Vec<_>>(),
    )
}

fn rules_of(json: &str) -> Result<Vec<FiredRule>, StoreError> {
    serde_json::from_str::<Vec<RuleJson>>(json)
        .map_err(corrupt("rules"))?
        .into_iter()
        .map(|r| {
            Ok(FiredRule {
                source: r.source,
                rule_id: r.rule_id,
                decision: decision_of(&r.decision)?,
                reason: r.reason,
            })
        })
        .collect()
}

fn plugins_json(runs: &[PluginRun]) -> String {
    to_json(
        &runs
            .iter()
            .map(|p| PluginJson {
                name: p.name.clone(),
                version: p.version,
                sha256: p.sha256.clone(),
                shadow: p.shadow,
                decision: p.verdict.as_ref().map(|v| v.0.as_str().to_owned()),
                rule_id: p.verdict.as_ref().map(|v| v.1.clone()),
                reason: p.verdict.as_ref().map(|v| v.2.clone()),
                error_code: p.error.as_ref().map(|e| e.0.clone()),
                error: p.error.as_ref().map(|e| e.1.clone()),
                fuel_used: p.fuel_used,
                wall_time_us: u64::try_from(p.wall_time.as_micros()).unwrap_or(u64::MAX),
            })
            .collect::<Vec<_>>(),
    )
}

fn plugins_of(json: &str) -> Result<Vec<PluginRun>, StoreError> {
    serde_json::from_str::<Vec<PluginJson>>(json)
        .map_err(corrupt("plugins"))?
        .into_iter()
        .map(|p| {
            let verdict = match p.decision {
                Some(d) => Some((
                    decision_of(&d)?,
                    p.rule_id.unwrap_or_default(),
                    p.reason.unwrap_or_default(),
                )),
                None => None,
            };
            Ok(PluginRun {
                name: p.name,
                version: p.version,
                sha256: p.sha256,
                shadow: p.shadow,
                verdict,
                error: p.error_code.map(|c| (c, p.error.unwrap_or_default())),
                fuel_used: p.fuel_used,
                wall_time: Duration::from_micros(p.wall_time_us),
            })
        })
        .collect()
}

fn counter_offer_json(offer: &CounterOffer) -> String {
    to_json(&match offer {
        CounterOffer::Amount(m) => CounterOfferJson::Amount {
            minor_units: m.minor_units,
            currency: m.currency.clone(),
        },
        CounterOffer::ParamsJson(json) => CounterOfferJson::Params(
            serde_json::from_str(json).unwrap_or(serde_json::Value::String(json.clone())),
        ),
    })
}

fn counter_offer_of(json: &str) -> Result<CounterOffer, StoreError> {
    Ok(
        match serde_json::from_str::<CounterOfferJson>(json).map_err(corrupt("counter offer"))? {
            CounterOfferJson::Amount {
                minor_units,
                currency,
            } => CounterOffer::Amount(Money::new(minor_units, &currency)),
            CounterOfferJson::Params(v) => CounterOffer::ParamsJson(v.to_string()),
        },
    )
}

fn json_value(json: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(json).map_err(corrupt(what))
}

// ---- rows ------------------------------------------------------------------------------------

const COLUMNS: &str = "id, vendor, actor, idempotency_key, provenance, action, params, params_hash, \
    amount_minor, currency, recipient, status, route, escalated, rule_fired, reason, rules, plugins, \
    counter_offer, policy_version, created_at_ms, expires_at_ms, decided_at_ms, decision_method, \
    decider, decision_reason, revised_params, revised_params_hash, token_id, token, \
    token_expires_at_ms, retry_after_ms, merged, variation_key";

fn opt_u64(row: &AnyRow, column: &str) -> Result<Option<u64>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(u64_of))
}

fn record_of(row: &AnyRow) -> Result<ApprovalRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let route: String = row.try_get("route")?;
    let provenance: ProvenanceJson = serde_json::from_str(&row.try_get::<String, _>("provenance")?)
        .map_err(corrupt("provenance"))?;
    let amount = match (
        row.try_get::<Option<i64>, _>("amount_minor")?,
        row.try_get::<Option<String>, _>("currency")?,
    ) {
        (Some(units), Some(currency)) => Some(Money::new(u64_of(units), &currency)),
        _ => None,
    };
    let token = match (
        row.try_get::<Option<String>, _>("token_id")?,
        row.try_get::<Option<String>, _>("token")?,
        opt_u64(row, "token_expires_at_ms")?,
    ) {
        (Some(id), Some(token), Some(expires_at_ms)) => Some(IssuedToken {
            id,
            token,
            expires_at_ms,
        }),
        _ => None,
    };
    Ok(ApprovalRecord {
        id: row.try_get("id")?,
        vendor: row.try_get("vendor")?,
        actor: row.try_get("actor")?,
        idempotency_key: row.try_get("idempotency_key")?,
        provenance: Provenance {
            surface: provenance.surface,
            tool: provenance.tool,
        },
        action: row.try_get("action")?,
        params: json_value(&row.try_get::<String, _>("params")?, "params")?,
        params_hash: row.try_get("params_hash")?,
        amount,
        recipient: row.try_get("recipient")?,
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
        route: Route::parse(&route)
            .ok_or_else(|| StoreError::Corrupt(format!("route {route:?}")))?,
        rule_fired: row.try_get("rule_fired")?,
        reason: row.try_get("reason")?,
        rules: rules_of(&row.try_get::<String, _>("rules")?)?,
        plugins: plugins_of(&row.try_get::<String, _>("plugins")?)?,
        counter_offer: row
            .try_get::<Option<String>, _>("counter_offer")?
            .as_deref()
            .map(counter_offer_of)
            .transpose()?,
        policy_version: u32::try_from(row.try_get::<i64, _>("policy_version")?).unwrap_or(0),
        created_at_ms: u64_of(row.try_get("created_at_ms")?),
        expires_at_ms: opt_u64(row, "expires_at_ms")?,
        decided_at_ms: opt_u64(row, "decided_at_ms")?,
        decision_method: row
            .try_get::<Option<String>, _>("decision_method")?
            .map(|m| Method::parse(&m).ok_or_else(|| StoreError::Corrupt(format!("method {m:?}"))))
            .transpose()?,
        decider: row.try_get("decider")?,
        decision_reason: row.try_get("decision_reason")?,
        revised_params: row
            .try_get::<Option<String>, _>("revised_params")?
            .as_deref()
            .map(|j| json_value(j, "revised params"))
            .transpose()?,
        revised_params_hash: row.try_get("revised_params_hash")?,
        token,
        retry_after_ms: opt_u64(row, "retry_after_ms")?,
        merged: u32::try_from(row.try_get::<i64, _>("merged")?).unwrap_or(u32::MAX),
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds `r`'s values in [`COLUMNS`] order.
fn bind_record<'q>(query: AnyQuery<'q>, r: &ApprovalRecord) -> AnyQuery<'q> {
    let escalated = matches!(r.route, Route::HumanReview | Route::Revise)
        || matches!(
            r.status,
            Status::Pending | Status::Approved | Status::Revised | Status::TimedOut
        );
    query
        .bind(r.id.clone())
        .bind(r.vendor.clone())
        .bind(r.actor.clone())
        .bind(r.idempotency_key.clone())
        .bind(to_json(&ProvenanceJson {
            surface: r.provenance.surface.clone(),
            tool: r.provenance.tool.clone(),
        }))
        .bind(r.action.clone())
        .bind(r.params.to_string())
        .bind(r.params_hash.clone())
        .bind(r.amount.as_ref().map(|m| i64_of(m.minor_units)))
        .bind(r.amount.as_ref().map(|m| m.currency.clone()))
        .bind(r.recipient.clone())
        .bind(r.status.as_str())
        .bind(r.route.as_str())
        .bind(i64::from(escalated))
        .bind(r.rule_fired.clone())
        .bind(r.reason.clone())
        .bind(rules_json(&r.rules))
        .bind(plugins_json(&r.plugins))
        .bind(r.counter_offer.as_ref().map(counter_offer_json))
        .bind(i64::from(r.policy_version))
        .bind(i64_of(r.created_at_ms))
        .bind(r.expires_at_ms.map(i64_of))
        .bind(r.decided_at_ms.map(i64_of))
        .bind(r.decision_method.map(Method::as_str))
        .bind(r.decider.clone())
        .bind(r.decision_reason.clone())
        .bind(r.revised_params.as_ref().map(serde_json::Value::to_string))
        .bind(r.revised_params_hash.clone())
        .bind(r.token.as_ref().map(|t| t.id.clone()))
        .bind(r.token.as_ref().map(|t| t.token.clone()))
        .bind(r.token.as_ref().map(|t| i64_of(t.expires_at_ms)))
        .bind(r.retry_after_ms.map(i64_of))
        .bind(i64::from(r.merged))
        // Only a pending request can be merged into (see `pending_like`).
        .bind(
            (r.status == Status::Pending)
                .then(|| crate::approvals::action::variation_key(&r.action, &r.params)),
        )
}

/// The number of columns in [`COLUMNS`], counted from it.
const COLUMN_COUNT: usize = {
    let bytes = COLUMNS.as_bytes();
    let (mut commas, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b',' {
            commas += 1;
        }
        i += 1;
    }
    commas + 1
};

/// Records per multi-row insert (within SQLite's 32,766 bound parameters).
const RECORDS_PER_INSERT: usize = 500;

async fn insert_record(conn: &mut AnyConnection, r: &ApprovalRecord) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO approvals ({COLUMNS}) VALUES {}",
        placeholders(conn, 1, COLUMN_COUNT)
    );
    bind_record(sqlx::query(&sql), r).execute(conn).await?;
    Ok(())
}

/// Stores new records that need no rate-limit count (answered at once, or counted by the caller
/// under SQLite's write lock, see [`escalated_since`]), with multi-row inserts in the caller's
/// transaction. A record refused by a unique index (an identical
/// request, or one with the same idempotency key, got there first) is skipped; returns whether
/// each was stored, in order.
///
/// # Errors
/// A database failure.
pub async fn insert_answered(
    conn: &mut AnyConnection,
    records: &[&ApprovalRecord],
) -> Result<Vec<bool>, StoreError> {
    let mut stored = Vec::with_capacity(records.len());
    for chunk in records.chunks(RECORDS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO approvals ({COLUMNS}) VALUES {} ON CONFLICT DO NOTHING",
            placeholders(conn, chunk.len(), COLUMN_COUNT)
        );
        let query = chunk
            .iter()
            .fold(one_off(&sql), |query, r| bind_record(query, r));
        // Nearly always every record is stored, which the count says. (`RETURNING id` would
        // say which, but sqlx hands each returned row over from SQLite's thread on its own.)
        let inserted = query.execute(&mut *conn).await?.rows_affected();
        if usize::try_from(inserted).is_ok_and(|n| n == chunk.len()) {
            stored.extend(std::iter::repeat_n(true, chunk.len()));
            continue;
        }
        // Some were refused: the ones stored are those whose (new, random) id is there now.
        let sql = format!(
            "SELECT id FROM approvals WHERE id IN {}",
            placeholders(conn, 1, chunk.len())
        );
        let query = chunk
            .iter()
            .fold(one_off(&sql), |query, r| query.bind(r.id.as_str()));
        let found: std::collections::HashSet<String> = query
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()?;
        stored.extend(chunk.iter().map(|r| found.contains(&r.id)));
    }
    Ok(stored)
}

// ---- the lifecycle ---------------------------------------------------------------------------

/// What [`insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The record was stored as given.
    Stored,
    /// The actor is over its hourly limit of requests for a human: nothing was stored, and the
    /// oldest counted request leaves the window at `retry_after_ms`.
    OverLimit { retry_after_ms: u64 },
    /// Another request with the same idempotency key, or an identical pending one, got there
    /// first (a unique index refused this one): reload it.
    Conflict,
}

/// The hour rate limits count over.
pub const RATE_WINDOW_MS: u64 = 3_600_000;

/// Stores a new record, inside the caller's transaction. When it goes to a human (`limit` is
/// `Some`), the actor's requests for a human in the last hour are counted first, serialized per
/// actor (across processes too), and the record is refused at the limit.
///
/// # Errors
/// A database failure.
pub async fn insert(
    conn: &mut AnyConnection,
    record: &ApprovalRecord,
    limit: Option<u32>,
) -> Result<Inserted, StoreError> {
    // A savepoint: a refused insert undoes only itself.
    let mut tx = conn.begin().await?;
    if let Some(limit) = limit
        && let Some(retry_after_ms) = over_limit(
            &mut tx,
            &record.vendor,
            &record.actor,
            record.created_at_ms,
            limit,
        )
        .await?
    {
        tx.rollback().await?;
        return Ok(Inserted::OverLimit { retry_after_ms });
    }
    match insert_record(&mut tx, record).await {
        Ok(()) => {
            tx.commit().await?;
            Ok(Inserted::Stored)
        }
        Err(e) if e.is_unique_violation() => {
            tx.rollback().await?;
            Ok(Inserted::Conflict)
        }
        Err(e) => Err(e),
    }
}

/// Counts one more request for a guardian from `actor` at `now_ms` against `limit` per hour:
/// when it has been reached, when the actor may ask again. Writing first takes the actor's row
/// lock on PostgreSQL and the write lock on SQLite, so the count cannot interleave with another
/// one for this actor (on any replica). Requests merged into a pending one count too.
async fn over_limit(
    conn: &mut AnyConnection,
    vendor: &str,
    actor: &str,
    now_ms: u64,
    limit: u32,
) -> Result<Option<u64>, StoreError> {
    sqlx::query(
        "INSERT INTO actor_rate_locks (vendor, actor, requests) VALUES ($1, $2, 1)
         ON CONFLICT (vendor, actor) DO UPDATE SET requests = actor_rate_locks.requests + 1",
    )
    .bind(vendor)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    let since = now_ms.saturating_sub(RATE_WINDOW_MS);
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(1 + merged), 0) AS BIGINT) AS n, MIN(created_at_ms) AS oldest
         FROM approvals WHERE vendor = $1 AND actor = $2 AND escalated = 1 AND created_at_ms > $3",
    )
    .bind(vendor)
    .bind(actor)
    .bind(i64_of(since))
    .fetch_one(&mut *conn)
    .await?;
    let counted = u64_of(row.try_get("n")?);
    if counted < u64::from(limit) {
        return Ok(None);
    }
    let oldest = row
        .try_get::<Option<i64>, _>("oldest")?
        .map_or(now_ms, u64_of);
    Ok(Some(oldest + RATE_WINDOW_MS))
}

/// Each actor's requests for a guardian created after `since_ms`, as the rate limit counts them
/// (merged ones too), in one statement. With `since_ms` the earliest window of a batch's
/// requests, this bounds every one of their counts from above.
///
/// This count is not serialized against other writers: only a caller holding SQLite's write
/// lock (a batch's `BEGIN IMMEDIATE`) may rely on it. Elsewhere the limit goes through
/// [`insert`].
///
/// # Errors
/// A database failure.
pub async fn escalated_since(
    conn: &mut AnyConnection,
    actors: &[(&str, &str)],
    since_ms: u64,
) -> Result<HashMap<(String, String), u64>, StoreError> {
    const ACTORS_PER_QUERY: usize = 100;
    let mut counts = HashMap::with_capacity(actors.len());
    for chunk in actors.chunks(ACTORS_PER_QUERY) {
        // One indexed count per actor, in one statement.
        let sql = (0..chunk.len())
            .map(|i| {
                let (v, a) = (2 * i + 2, 2 * i + 3);
                format!(
                    "SELECT CAST(${v} AS TEXT) AS vendor, CAST(${a} AS TEXT) AS actor, CAST(COALESCE(SUM(1 + merged), 0) AS BIGINT) AS n
                     FROM approvals WHERE vendor = ${v} AND actor = ${a} AND escalated = 1 AND created_at_ms > $1"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let query = chunk
            .iter()
            .fold(sqlx::query(&sql).bind(i64_of(since_ms)), |q, (v, a)| {
                q.bind(*v).bind(*a)
            });
        for row in query.fetch_all(&mut *conn).await? {
            counts.insert(
                (row.try_get("vendor")?, row.try_get("actor")?),
                u64_of(row.try_get("n")?),
            );
        }
    }
    Ok(counts)
}

/// What merging a request into a pending one did.
#[derive(Debug)]
pub enum Merged {
    /// Counted on the pending request, returned as it now is.
    Into(Box<ApprovalRecord>),
    /// The actor has reached its hourly limit of requests for a guardian; nothing written.
    OverLimit { retry_after_ms: u64 },
    /// The pending request was settled (or expired) meanwhile; nothing written.
    Gone,
    /// A request with the same idempotency key was merged first; nothing written.
    Conflict,
}

/// Merges the request `merged` (not stored itself) into the pending request `into` at `now_ms`,
/// counting it against `limit` first and keeping its idempotency key, in a savepoint of the
/// caller's transaction.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn merge(
    conn: &mut AnyConnection,
    merged: &ApprovalRecord,
    into: &ApprovalRecord,
    now_ms: u64,
    limit: u32,
) -> Result<Merged, StoreError> {
    let mut tx = conn.begin().await?;
    if let Some(retry_after_ms) =
        over_limit(&mut tx, &into.vendor, &into.actor, now_ms, limit).await?
    {
        tx.rollback().await?;
        return Ok(Merged::OverLimit { retry_after_ms });
    }
    let row = sqlx::query(&format!(
        "UPDATE approvals SET merged = merged + 1
         WHERE id = $1 AND status = 'pending' AND expires_at_ms > $2 RETURNING {COLUMNS}"
    ))
    .bind(&into.id)
    .bind(i64_of(now_ms))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(Merged::Gone);
    };
    if let Some(key) = &merged.idempotency_key {
        let kept = KeptKey {
            vendor: &merged.vendor,
            actor: &merged.actor,
            key,
            approval_id: &merged.id,
            into: &into.id,
            action: &merged.action,
            params_hash: &merged.params_hash,
            at_ms: now_ms,
        };
        if !remember_key(&mut tx, &kept).await? {
            tx.rollback().await?;
            return Ok(Merged::Conflict);
        }
    }
    let record = record_of(&row)?;
    tx.commit().await?;
    Ok(Merged::Into(Box::new(record)))
}

/// A request answered with another request's record (merged into it, or joined to it as
/// identical), to be found again by its idempotency key.
#[derive(Debug)]
pub struct KeptKey<'a> {
    pub vendor: &'a str,
    pub actor: &'a str,
    pub key: &'a str,
    /// The request's own id (that of the request it joined, for an identical one).
    pub approval_id: &'a str,
    pub into: &'a str,
    pub action: &'a str,
    pub params_hash: &'a str,
    pub at_ms: u64,
}

/// Remembers `kept`; `false` when its key is taken already (by a racing retry).
///
/// # Errors
/// A database failure.
pub async fn remember_key(
    conn: &mut AnyConnection,
    kept: &KeptKey<'_>,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO merged_requests
             (vendor, actor, idempotency_key, approval_id, into_id, action, params_hash, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(kept.vendor)
    .bind(kept.actor)
    .bind(kept.key)
    .bind(kept.approval_id)
    .bind(kept.into)
    .bind(kept.action)
    .bind(kept.params_hash)
    .bind(i64_of(kept.at_ms))
    .execute(&mut *conn)
    .await;
    match inserted.map_err(StoreError::from) {
        Ok(_) => Ok(true),
        Err(e) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`remember_key`] on a connection of its own, outside any transaction.
///
/// # Errors
/// A database failure.
pub async fn keep_key(db: &Db, kept: &KeptKey<'_>) -> Result<bool, StoreError> {
    let mut conn = db.pool().acquire().await?;
    remember_key(&mut conn, kept).await
}

/// A request merged into another, found by its idempotency key: (the id of the request it was
/// merged into, its action, its params hash).
///
/// # Errors
/// A database failure.
pub async fn merged_by_idempotency_key(
    db: &Db,
    vendor: &str,
    actor: &str,
    key: &str,
) -> Result<Option<(String, String, String)>, StoreError> {
    let row = sqlx::query(
        "SELECT into_id, action, params_hash FROM merged_requests
         WHERE vendor = $1 AND actor = $2 AND idempotency_key = $3",
    )
    .bind(vendor)
    .bind(actor)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("into_id")?,
            r.try_get("action")?,
            r.try_get("params_hash")?,
        ))
    })
    .transpose()
}

/// [`pending_like`]'s statement (`$1` vendor, `$2` actor, `$3` action, `$4` variation key).
/// Two branches, each an equality on a prefix of `approvals_one_pending` (an OR of the key and
/// NULL would have SQLite scan the actor's whole history instead), ordered by an expression
/// (ordered by the column itself, SQLite would pick the actor's time index to spare a sort of
/// the few rows, and scan the history again).
pub(crate) const PENDING_LIKE: &str = "SELECT id, params, expires_at_ms, created_at_ms + 0 FROM approvals
     WHERE vendor = $1 AND actor = $2 AND status = 'pending' AND variation_key = $4 AND action = $3
     UNION ALL
     SELECT id, params, expires_at_ms, created_at_ms + 0 FROM approvals
     WHERE vendor = $1 AND actor = $2 AND status = 'pending' AND variation_key IS NULL AND action = $3
     ORDER BY 4, 1 LIMIT 100";

/// A pending request as far as comparing params needs it (see [`pending_like`]).
#[derive(Debug, Clone)]
pub struct PendingParams {
    pub id: String,
    pub params: serde_json::Value,
    pub expires_at_ms: Option<u64>,
}

/// The actor's pending requests of `action` that may be tiny variations of a new one with
/// `variation_key` (see [`crate::approvals::action::variation_key`]), oldest first, at most 100
/// (an actor over its rate limit cannot have more): those stored with the same key, and those
/// stored before requests had one. Usually none, so an actor with many pending requests is not
/// read in full for each new one. On a SQLite file, read on this thread (see `store::direct`).
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn pending_like(
    db: &Db,
    vendor: &str,
    actor: &str,
    action: &str,
    variation_key: &str,
) -> Result<Vec<PendingParams>, StoreError> {
    let values = [
        Value::Text(Some(vendor)),
        Value::Text(Some(actor)),
        Value::Text(Some(action)),
        Value::Text(Some(variation_key)),
    ];
    let listed: Vec<(String, String, Option<i64>)> = db.read(PENDING_LIKE, &values).await?;
    listed
        .into_iter()
        .map(|(id, params, expires_at_ms)| {
            Ok(PendingParams {
                id,
                params: json_value(&params, "params")?,
                expires_at_ms: expires_at_ms.map(u64_of),
            })
        })
        .collect()
}

/// The record with this id.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn get(db: &Db, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    // No id holds a control character (PostgreSQL cannot even compare text with a NUL).
    if id.chars().any(char::is_control) {
        return Ok(None);
    }
    sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(record_of)
        .transpose()
}

/// The vendor's newest `limit` records, newest first.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn recent(db: &Db, vendor: &str, limit: u32) -> Result<Vec<ApprovalRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE vendor = $1 ORDER BY created_at_ms DESC, id LIMIT {limit}"
    ))
    .bind(vendor)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(record_of)
    .collect()
}

/// The record an earlier request with this idempotency key created.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn by_idempotency_key(
    db: &Db,
    vendor: &str,
    actor: &str,
    key: &str,
) -> Result<Option<ApprovalRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM approvals WHERE vendor = $1 AND actor = $2 AND idempotency_key = $3"
    ))
    .bind(vendor)
    .bind(actor)
    .bind(key)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(record_of)
    .transpose()
}

/// The statement reading `columns` of the pending request identical to a new one (`$1` vendor,
/// `$2` actor, `$3` action, `$4` params hash, `$5` variation key): two branches, each an
/// equality on `approvals_one_pending`, for the request with this key or one stored before
/// requests had a key.
pub(crate) fn identical_pending(columns: &str) -> String {
    let branch = |key: &str| {
        format!(
            "SELECT {columns} FROM approvals WHERE vendor = $1 AND actor = $2 AND {key} \
             AND action = $3 AND params_hash = $4 AND status = 'pending'"
        )
    };
    format!(
        "{} UNION ALL {}",
        branch("variation_key = $5"),
        branch("variation_key IS NULL")
    )
}

/// The pending request of this actor for this action with these params (whose
/// [`crate::approvals::action::variation_key`] is `variation_key`), if any.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn pending_with_params(
    db: &Db,
    vendor: &str,
    actor: &str,
    action: &str,
    params_hash: &str,
    variation_key: &str,
) -> Result<Option<ApprovalRecord>, StoreError> {
    let values = [
        Value::Text(Some(vendor)),
        Value::Text(Some(actor)),
        Value::Text(Some(action)),
        Value::Text(Some(params_hash)),
        Value::Text(Some(variation_key)),
    ];
    // Most requests of a device with requests waiting are not one of them again: on a SQLite
    // file, ask on this thread whether there is one before reading it through the pool.
    if let Some(direct) = db.direct()
        && !direct.exists(&identical_pending("1"), &values)?
    {
        return Ok(None);
    }
    bind(sqlx::query(&identical_pending(COLUMNS)), &values)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(record_of)
        .transpose()
}

/// How a guardian settles a pending request.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub status: Status,
    pub route: Route,
    pub decider: String,
    pub reason: Option<String>,
    pub revised_params: Option<serde_json::Value>,
    pub revised_params_hash: Option<String>,
    pub token: Option<IssuedToken>,
}

/// Settles a pending, unexpired request as the guardian decided and returns the settled record;
/// `None` when it was no longer pending or had expired at `now_ms`: another decision, or the
/// timeout, won.
///
/// # Errors
/// A database failure.
pub async fn settle_by_guardian(
    conn: &mut AnyConnection,
    id: &str,
    s: &Settlement,
    now_ms: u64,
) -> Result<Option<ApprovalRecord>, StoreError> {
    sqlx::query(&format!(
        "UPDATE approvals SET status = $1, route = $2, decided_at_ms = $3, decision_method = 'human',
             decider = $4, decision_reason = $5, revised_params = $6, revised_params_hash = $7,
             token_id = $8, token = $9, token_expires_at_ms = $10
         WHERE id = $11 AND status = 'pending' AND expires_at_ms > $3 RETURNING {COLUMNS}",
    ))
    .bind(s.status.as_str())
    .bind(s.route.as_str())
    .bind(i64_of(now_ms))
    .bind(&s.decider)
    .bind(s.reason.as_deref())
    .bind(s.revised_params.as_ref().map(serde_json::Value::to_string))
    .bind(s.revised_params_hash.as_deref())
    .bind(s.token.as_ref().map(|t| t.id.clone()))
    .bind(s.token.as_ref().map(|t| t.token.clone()))
    .bind(s.token.as_ref().map(|t| i64_of(t.expires_at_ms)))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(record_of)
    .transpose()
}

/// Settles up to `limit` pending requests that expired at or before `now_ms` as timed out, at
/// the moment each expired, oldest first, and returns the settled records. `only` restricts it
/// to one request.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn settle_expired(
    conn: &mut AnyConnection,
    now_ms: u64,
    only: Option<&str>,
    limit: u32,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    let filter = if only.is_some() { "AND id = $2" } else { "" };
    // The outer condition is checked again on rows another replica settled meanwhile.
    let query = format!(
        "UPDATE approvals SET status = 'timed_out', decision_method = 'timeout', decided_at_ms = expires_at_ms
         WHERE status = 'pending' AND id IN (
             SELECT id FROM approvals WHERE status = 'pending' AND expires_at_ms <= $1 {filter}
             ORDER BY expires_at_ms LIMIT {limit})
         RETURNING {COLUMNS}"
    );
    let query = sqlx::query(&query).bind(i64_of(now_ms));
    let query = match only {
        Some(id) => query.bind(id),
        None => query,
    };
    query.fetch_all(conn).await?.iter().map(record_of).collect()
}

/// Whether any pending request expired at or before `now_ms`.
///
/// # Errors
/// A database failure.
pub async fn any_expired(db: &Db, now_ms: u64) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "SELECT 1 FROM approvals WHERE status = 'pending' AND expires_at_ms <= $1 LIMIT 1",
    )
    .bind(i64_of(now_ms))
    .fetch_optional(db.pool())
    .await?
    .is_some())
}

/// An actor's activity in the last hour and day, and its pending count, as of `now_ms`; and
/// when its latest volume flag was raised, if ever (the same statement: a flag from the last
/// hour means no new one may be raised, so a request need not try).
///
/// # Errors
/// A database failure.
pub async fn history(
    db: &Db,
    vendor: &str,
    actor: &str,
    now_ms: u64,
) -> Result<(History, Option<u64>), StoreError> {
    let values = [
        Value::Text(Some(vendor)),
        Value::Text(Some(actor)),
        Value::Int(i64_of(now_ms.saturating_sub(RATE_WINDOW_MS))),
        Value::Int(i64_of(now_ms.saturating_sub(24 * RATE_WINDOW_MS))),
        Value::Int(i64_of(now_ms)),
    ];
    // Every request makes this read: on a SQLite file it runs on this thread (see
    // `store::direct`), elsewhere through the pool.
    let rows = if let Some(direct) = db.direct() {
        direct.rows(HISTORY, &values, |row| {
            HistoryRow::read(row.get(0)?, |i| row.get(i))
        })?
    } else {
        bind(sqlx::query(HISTORY), &values)
            .fetch_all(db.pool())
            .await?
            .iter()
            .map(|row| HistoryRow::read(row.try_get(0)?, |i| row.try_get(i)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
    };
    Ok(history_of(&rows))
}

/// An actor's activity per currency (`$1` vendor, `$2` actor, `$3` an hour ago, `$4` a day
/// ago, `$5` now): the currency, the nine columns of [`HistoryRow::counts`] in their order,
/// and `flagged_at`; both drivers read them by position.
const HISTORY: &str = "SELECT currency,
        SUM(CASE WHEN created_at_ms > $3 THEN 1 + merged ELSE 0 END) AS hour_requests,
        SUM(1 + merged) AS day_requests,
        SUM(CASE WHEN created_at_ms > $3 AND action = 'payment' THEN 1 ELSE 0 END) AS hour_payments,
        SUM(CASE WHEN action = 'payment' THEN 1 ELSE 0 END) AS day_payments,
        SUM(CASE WHEN created_at_ms > $3 AND status = 'denied' THEN 1 ELSE 0 END) AS hour_denied,
        SUM(CASE WHEN status = 'denied' THEN 1 ELSE 0 END) AS day_denied,
        CAST(SUM(CASE WHEN created_at_ms > $3 AND status IN ('allowed', 'approved') THEN amount_minor ELSE 0 END) AS BIGINT) AS hour_spend,
        CAST(SUM(CASE WHEN status IN ('allowed', 'approved') THEN amount_minor ELSE 0 END) AS BIGINT) AS day_spend,
        SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending,
        (SELECT MAX(raised_at_ms) FROM actor_flags WHERE vendor = $1 AND actor = $2) AS flagged_at
    FROM approvals WHERE vendor = $1 AND actor = $2 AND created_at_ms > $4 AND created_at_ms <= $5
    GROUP BY currency";

/// One row of [`HISTORY`], as read by either driver.
struct HistoryRow {
    currency: Option<String>,
    /// Requests, payments, denials and spend, each in the last hour then the last day; then
    /// the pending count.
    counts: [Option<i64>; 9],
    flagged_at: Option<i64>,
}

impl HistoryRow {
    /// A row from its currency and `column(i)`, the integer column `i` of [`HISTORY`].
    fn read<E>(
        currency: Option<String>,
        column: impl Fn(usize) -> Result<Option<i64>, E>,
    ) -> Result<Self, E> {
        let mut counts = [None; 9];
        for (i, count) in counts.iter_mut().enumerate() {
            *count = column(i + 1)?;
        }
        Ok(Self {
            currency,
            counts,
            flagged_at: column(10)?,
        })
    }
}

/// The history summary of an actor's rows of [`HISTORY`], and when it was last flagged.
fn history_of(rows: &[HistoryRow]) -> (History, Option<u64>) {
    let mut history = History::default();
    let mut flagged_at = None;
    let count = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    for row in rows {
        let [hr, dr, hp, dp, hd, dd, hs, ds, pending] = row.counts.map(|c| c.map_or(0, u64_of));
        let add = |a: &mut Activity, requests, payments, denied, spend: u64| {
            a.requests = a.requests.saturating_add(count(requests));
            a.payments = a.payments.saturating_add(count(payments));
            a.denied = a.denied.saturating_add(count(denied));
            if let (Some(c), true) = (&row.currency, spend > 0) {
                a.approved_spend.push(Money::new(spend, c));
            }
        };
        add(&mut history.last_hour, hr, hp, hd, hs);
        add(&mut history.last_day, dr, dp, dd, ds);
        history.pending = history.pending.saturating_add(count(pending));
        flagged_at = row.flagged_at.map(u64_of);
    }
    (history, flagged_at)
}

/// Raises a flag for an actor whose volume jumped, unless one was raised in the last hour.
/// `true` when a new flag was raised.
///
/// # Errors
/// A database failure.
pub async fn raise_flag(conn: &mut AnyConnection, flag: &Flag) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO actor_flags (id, vendor, actor, raised_at_ms, last_hour, baseline_per_hour)
         SELECT $1, $2, $3, $4, $5, $6
         WHERE NOT EXISTS (SELECT 1 FROM actor_flags WHERE vendor = $2 AND actor = $3 AND raised_at_ms > $7)",
    )
    .bind(&flag.id)
    .bind(&flag.vendor)
    .bind(&flag.actor)
    .bind(i64_of(flag.raised_at_ms))
    .bind(i64::from(flag.last_hour))
    .bind(i64::from(flag.baseline_per_hour))
    .bind(i64_of(flag.raised_at_ms.saturating_sub(RATE_WINDOW_MS)))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A raised volume flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub id: String,
    pub vendor: String,
    pub actor: String,
    pub raised_at_ms: u64,
    pub last_hour: u32,
    pub baseline_per_hour: u32,
}

/// Whose flags to read.
#[derive(Debug, Clone, Copy)]
pub enum FlagScope<'a> {
    /// Every vendor's (the platform).
    All,
    /// One vendor's actors.
    Vendor(&'a str),
    /// The actors one guardian guards.
    Guardian(&'a str),
}

/// Flags raised since `since_ms`, newest first.
///
/// # Errors
/// A database failure.
pub async fn flags(db: &Db, scope: FlagScope<'_>, since_ms: u64) -> Result<Vec<Flag>, StoreError> {
    let (filter, key) = match scope {
        FlagScope::All => ("", None),
        FlagScope::Vendor(vendor) => ("AND f.vendor = $2", Some(vendor)),
        FlagScope::Guardian(guardian) => (
            "AND EXISTS (SELECT 1 FROM actor_guardians g WHERE g.vendor = f.vendor AND g.actor = f.actor AND g.guardian = $2)",
            Some(guardian),
        ),
    };
    let sql = format!(
        "SELECT f.id, f.vendor, f.actor, f.raised_at_ms, f.last_hour, f.baseline_per_hour FROM actor_flags f
         WHERE f.raised_at_ms >= $1 {filter} ORDER BY f.raised_at_ms DESC LIMIT 1000"
    );
    let query = sqlx::query(&sql).bind(i64_of(since_ms));
    let query = match key {
        Some(key) => query.bind(key),
        None => query,
    };
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(Flag {
                id: r.try_get("id")?,
                vendor: r.try_get("vendor")?,
                actor: r.try_get("actor")?,
                raised_at_ms: u64_of(r.try_get("raised_at_ms")?),
                last_hour: u32::try_from(r.try_get::<i64, _>("last_hour")?).unwrap_or(u32::MAX),
                baseline_per_hour: u32::try_from(r.try_get::<i64, _>("baseline_per_hour")?)
                    .unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// The vendors in which `guardian` guards an actor called `actor`.
///
/// # Errors
/// A database failure.
pub async fn vendors_guarding(
    db: &Db,
    guardian: &str,
    actor: &str,
) -> Result<Vec<String>, StoreError> {
    sqlx::query(
        "SELECT vendor FROM actor_guardians WHERE guardian = $1 AND actor = $2 ORDER BY vendor",
    )
    .bind(guardian)
    .bind(actor)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| Ok(r.try_get("vendor")?))
    .collect()
}

/// The pending requests of the actors `guardian` guards, oldest first.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn pending_for_guardian(
    db: &Db,
    guardian: &str,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    // Rows are read by column name, so every column of `approvals` will do.
    sqlx::query(
        "SELECT a.* FROM approvals a JOIN actor_guardians g ON g.vendor = a.vendor AND g.actor = a.actor
         WHERE g.guardian = $1 AND a.status = 'pending' ORDER BY a.created_at_ms",
    )
    .bind(guardian)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(record_of)
    .collect()
}

/// The settled requests (decided by a guardian or timed out) of the actors `guardian` guards,
/// newest decision first, at most `limit`.
///
/// # Errors
/// A database failure or a corrupt row.
pub async fn settled_for_guardian(
    db: &Db,
    guardian: &str,
    limit: u32,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT a.* FROM approvals a JOIN actor_guardians g ON g.vendor = a.vendor AND g.actor = a.actor
         WHERE g.guardian = $1 AND a.decision_method IN ('human', 'timeout')
         ORDER BY a.decided_at_ms DESC, a.id LIMIT {limit}"
    ))
    .bind(guardian)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(record_of)
    .collect()
}
