//! SQL for per-call plugin statistics: one row per plugin call on a request (written with the
//! request's record), and what vendors and the platform read from them: per-version counts,
//! verdict mix, errors, p50/p99 time, agreement of a shadow version with the active one, and
//! recent against earlier behaviour.

use sqlx::{AnyConnection, Row as _};

use super::{Db, StoreError, i64_of, one_off, placeholders, u64_of};
use crate::approvals::record::ApprovalRecord;

/// Calls per multi-row insert.
const CALLS_PER_INSERT: usize = 500;

/// Records the records' plugin calls with multi-row inserts, inside the caller's transaction.
///
/// # Errors
/// A database failure.
pub async fn insert_calls(
    conn: &mut AnyConnection,
    records: &[&ApprovalRecord],
) -> Result<(), StoreError> {
    let calls: Vec<_> = records
        .iter()
        .flat_map(|r| r.plugins.iter().map(move |run| (*r, run)))
        .collect();
    for chunk in calls.chunks(CALLS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO plugin_calls (approval_id, vendor, plugin, version, shadow, decision, error_code, wall_time_us, fuel_used, at_ms)
             VALUES {} ON CONFLICT DO NOTHING",
            placeholders(conn, chunk.len(), 10)
        );
        let mut query = one_off(&sql);
        for (record, run) in chunk {
            query = query
                .bind(record.id.clone())
                .bind(record.vendor.clone())
                .bind(run.name.clone())
                .bind(i64::from(run.version))
                .bind(i64::from(run.shadow))
                .bind(run.verdict.as_ref().map(|v| v.0.as_str()))
                .bind(run.error.as_ref().map(|e| e.0.clone()))
                .bind(i64_of(
                    u64::try_from(run.wall_time.as_micros()).unwrap_or(u64::MAX),
                ))
                .bind(i64_of(run.fuel_used))
                .bind(i64_of(record.created_at_ms));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// What one plugin version did, over its calls since a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionStats {
    pub calls: u64,
    pub allow: u64,
    pub escalate: u64,
    pub deny: u64,
    pub errors: u64,
    /// Error codes and how often each happened, most frequent first.
    pub error_codes: Vec<(String, u64)>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// For shadow runs: requests where the active version of the same plugin also answered,
    /// and how many of those gave the same decision.
    pub compared_with_active: u64,
    pub agreed_with_active: u64,
}

/// Which calls statistics are over.
#[derive(Debug, Clone, Copy)]
pub struct Calls<'a> {
    pub vendor: &'a str,
    pub plugin: &'a str,
    pub version: u32,
    pub since_ms: u64,
}

async fn percentile(
    db: &Db,
    calls: Calls<'_>,
    count: u64,
    q: u64,
) -> Result<Option<u64>, StoreError> {
    if count == 0 {
        return Ok(None);
    }
    // The nearest-rank percentile: the ceil(q% * n)-th smallest.
    let rank = (count * q).div_ceil(100).max(1) - 1;
    Ok(sqlx::query(&format!(
        "SELECT wall_time_us FROM plugin_calls WHERE vendor = $1 AND plugin = $2 AND version = $3 AND at_ms >= $4
         ORDER BY wall_time_us LIMIT 1 OFFSET {rank}"
    ))
    .bind(calls.vendor)
    .bind(calls.plugin)
    .bind(i64::from(calls.version))
    .bind(i64_of(calls.since_ms))
    .fetch_optional(db.pool())
    .await?
    .map(|r| r.try_get::<i64, _>("wall_time_us").map(u64_of))
    .transpose()?)
}

/// Statistics of one version.
///
/// # Errors
/// A database failure.
pub async fn version_stats(db: &Db, calls: Calls<'_>) -> Result<VersionStats, StoreError> {
    let rows = sqlx::query(
        "SELECT COALESCE(decision, '') AS decision, COALESCE(error_code, '') AS error_code, COUNT(*) AS n
         FROM plugin_calls WHERE vendor = $1 AND plugin = $2 AND version = $3 AND at_ms >= $4
         GROUP BY decision, error_code",
    )
    .bind(calls.vendor)
    .bind(calls.plugin)
    .bind(i64::from(calls.version))
    .bind(i64_of(calls.since_ms))
    .fetch_all(db.pool())
    .await?;
    let mut stats = VersionStats::default();
    for row in &rows {
        let n = u64_of(row.try_get("n")?);
        stats.calls += n;
        match row.try_get::<String, _>("decision")?.as_str() {
            "allow" => stats.allow += n,
            "escalate" => stats.escalate += n,
            "deny" => stats.deny += n,
            _ => {
                stats.errors += n;
                stats.error_codes.push((row.try_get("error_code")?, n));
            }
        }
    }
    stats
        .error_codes
        .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    stats.p50_us = percentile(db, calls, stats.calls, 50).await?;
    stats.p99_us = percentile(db, calls, stats.calls, 99).await?;
    let agreement = sqlx::query(
        "SELECT COUNT(*) AS compared, SUM(CASE WHEN s.decision = a.decision THEN 1 ELSE 0 END) AS agreed
         FROM plugin_calls s JOIN plugin_calls a
           ON a.approval_id = s.approval_id AND a.plugin = s.plugin AND a.shadow = 0
         WHERE s.vendor = $1 AND s.plugin = $2 AND s.version = $3 AND s.shadow = 1 AND s.at_ms >= $4
           AND s.decision IS NOT NULL AND a.decision IS NOT NULL",
    )
    .bind(calls.vendor)
    .bind(calls.plugin)
    .bind(i64::from(calls.version))
    .bind(i64_of(calls.since_ms))
    .fetch_one(db.pool())
    .await?;
    stats.compared_with_active = u64_of(agreement.try_get("compared")?);
    stats.agreed_with_active = agreement
        .try_get::<Option<i64>, _>("agreed")?
        .map_or(0, u64_of);
    Ok(stats)
}

/// Calls of one plugin version in one window: counts by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub calls: u64,
    pub allow: u64,
    pub escalate: u64,
    pub deny: u64,
    pub errors: u64,
}

/// One plugin version's recent and earlier behaviour, across vendors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionHealth {
    pub vendor: String,
    pub plugin: String,
    pub version: u32,
    /// Calls since `recent_since`.
    pub recent: Window,
    /// Calls from `earlier_since` to `recent_since`.
    pub earlier: Window,
    /// The mean call time over both windows, in microseconds.
    pub mean_us: u64,
}

/// Every plugin version called since `earlier_since`, with its two windows.
///
/// # Errors
/// A database failure.
pub async fn health(
    db: &Db,
    earlier_since: u64,
    recent_since: u64,
) -> Result<Vec<VersionHealth>, StoreError> {
    let rows = sqlx::query(
        "SELECT vendor, plugin, version,
                SUM(CASE WHEN at_ms >= $2 THEN 1 ELSE 0 END) AS r_calls,
                SUM(CASE WHEN at_ms >= $2 AND decision = 'allow' THEN 1 ELSE 0 END) AS r_allow,
                SUM(CASE WHEN at_ms >= $2 AND decision = 'escalate' THEN 1 ELSE 0 END) AS r_escalate,
                SUM(CASE WHEN at_ms >= $2 AND decision = 'deny' THEN 1 ELSE 0 END) AS r_deny,
                SUM(CASE WHEN at_ms >= $2 AND decision IS NULL THEN 1 ELSE 0 END) AS r_errors,
                SUM(CASE WHEN at_ms < $2 THEN 1 ELSE 0 END) AS e_calls,
                SUM(CASE WHEN at_ms < $2 AND decision = 'allow' THEN 1 ELSE 0 END) AS e_allow,
                SUM(CASE WHEN at_ms < $2 AND decision = 'escalate' THEN 1 ELSE 0 END) AS e_escalate,
                SUM(CASE WHEN at_ms < $2 AND decision = 'deny' THEN 1 ELSE 0 END) AS e_deny,
                SUM(CASE WHEN at_ms < $2 AND decision IS NULL THEN 1 ELSE 0 END) AS e_errors,
                CAST(AVG(wall_time_us) AS BIGINT) AS mean_us
         FROM plugin_calls WHERE at_ms >= $1
         GROUP BY vendor, plugin, version ORDER BY vendor, plugin, version",
    )
    .bind(i64_of(earlier_since))
    .bind(i64_of(recent_since))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let n = |c: &str| -> Result<u64, StoreError> {
                Ok(row.try_get::<Option<i64>, _>(c)?.map_or(0, u64_of))
            };
            Ok(VersionHealth {
                vendor: row.try_get("vendor")?,
                plugin: row.try_get("plugin")?,
                version: u32::try_from(row.try_get::<i64, _>("version")?).unwrap_or(0),
                recent: Window {
                    calls: n("r_calls")?,
                    allow: n("r_allow")?,
                    escalate: n("r_escalate")?,
                    deny: n("r_deny")?,
                    errors: n("r_errors")?,
                },
                earlier: Window {
                    calls: n("e_calls")?,
                    allow: n("e_allow")?,
                    escalate: n("e_escalate")?,
                    deny: n("e_deny")?,
                    errors: n("e_errors")?,
                },
                mean_us: n("mean_us")?,
            })
        })
        .collect()
}
