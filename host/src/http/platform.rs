//! The platform team's side (admin token): vendors and their keys, the audit log (filtered
//! entries, checkpoints, proofs, the export), plugin health across vendors, volume flags.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Admin;
use super::error::{ApiError, ErrorBody, approval_error};
use super::views::{ApprovalView, Audience, FlagView};
use crate::store::approvals::FlagScope;
use crate::store::audit::EntryFilter;
use crate::store::plugin_stats::{VersionHealth, Window};

fn engine(e: crate::approvals::ApprovalError) -> ApiError {
    approval_error(e, |r| ApprovalView::of(r, Audience::Others, 0))
}

/// A vendor to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VendorBody {
    /// 1–64 characters: letters, digits, `-`, `_`, `.`.
    pub id: String,
    pub name: String,
}

/// A vendor, with its API key when one was just issued.
#[derive(Debug, Serialize, ToSchema)]
pub struct VendorView {
    pub id: String,
    pub name: String,
    pub created_at: u64,
    /// Shown once; only its hash is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// Creates a vendor and issues its first API key.
#[utoipa::path(post, path = "/v1/vendors", tag = "platform", request_body = VendorBody,
    security(("admin_token" = [])),
    responses((status = 201, body = VendorView), (status = 400, body = ErrorBody),
        (status = 409, description = "`vendor_exists`", body = ErrorBody)))]
pub async fn create_vendor(
    State(state): State<AppState>,
    _: Admin,
    body: Result<Json<VendorBody>, JsonRejection>,
) -> Result<(StatusCode, Json<VendorView>), ApiError> {
    let Json(body) = body?;
    let valid = !body.id.is_empty()
        && body.id.len() <= 64
        && body
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(ApiError::bad_request(
            "id: 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    crate::text::check_field("name", &body.name, crate::text::NAME)
        .map_err(ApiError::bad_request)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::bad_request("name must not be blank"));
    }
    if !state
        .approvals
        .create_vendor(&body.id, &body.name)
        .await
        .map_err(engine)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "vendor_exists",
            "a vendor with this id exists",
        ));
    }
    let now = state.clock.now_ms();
    let api_key = state.access.issue_vendor_key(&body.id, now).await?;
    Ok((
        StatusCode::CREATED,
        Json(VendorView {
            id: body.id,
            name: body.name,
            created_at: now,
            api_key: Some(api_key),
        }),
    ))
}

/// Every vendor.
#[utoipa::path(get, path = "/v1/vendors", tag = "platform", security(("admin_token" = [])),
    responses((status = 200, body = Vec<VendorView>)))]
pub async fn list_vendors(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<VendorView>>, ApiError> {
    Ok(Json(
        state
            .approvals
            .vendors()
            .await
            .map_err(engine)?
            .into_iter()
            .map(|(id, name, created_at)| VendorView {
                id,
                name,
                created_at,
                api_key: None,
            })
            .collect(),
    ))
}

/// Issues a new API key for a vendor and revokes its others.
#[utoipa::path(post, path = "/v1/vendors/{vendor}/keys", tag = "platform", params(("vendor" = String, Path)),
    security(("admin_token" = [])), responses((status = 201, body = VendorView), (status = 404, body = ErrorBody)))]
pub async fn rotate_vendor_key(
    State(state): State<AppState>,
    _: Admin,
    Path(vendor): Path<String>,
) -> Result<(StatusCode, Json<VendorView>), ApiError> {
    let Some((id, name, created_at)) = state
        .approvals
        .vendors()
        .await
        .map_err(engine)?
        .into_iter()
        .find(|v| v.0 == vendor)
    else {
        return Err(ApiError::not_found("vendor"));
    };
    let api_key = state
        .access
        .rotate_vendor_key(&id, state.clock.now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(VendorView {
            id,
            name,
            created_at,
            api_key: Some(api_key),
        }),
    ))
}

/// Filters of the audit explorer (all optional, combined with AND).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EntryQuery {
    pub vendor: Option<String>,
    pub actor: Option<String>,
    pub approval_id: Option<String>,
    pub plugin: Option<String>,
    /// A rule id (built-in or a plugin's).
    pub rule: Option<String>,
    /// A decision or status: `allow`, `escalate`, `deny`, `allowed`, `pending`, `approved`, …
    pub decision: Option<String>,
    /// The entry type: `request_received`, `plugin_classified`, `rule_fired`, `decided`,
    /// `timed_out`, `rate_limited`, `policy_changed`, …
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Milliseconds since the Unix epoch, inclusive.
    pub since: Option<u64>,
    /// Milliseconds since the Unix epoch, exclusive.
    pub until: Option<u64>,
    /// Entries after this index (the previous page's `next_after`).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryView {
    pub index: u64,
    /// The decoded entry: `{"v":1,"at_ms":…,"event":{"type":…,…}}`.
    #[schema(value_type = Object)]
    pub entry: Value,
    /// The entry's canonical bytes, base64: the Merkle leaf is SHA-256(0x00 ‖ these bytes).
    pub bytes: String,
}

/// A page of entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntriesView {
    pub entries: Vec<EntryView>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// Audit entries, filtered.
#[utoipa::path(get, path = "/v1/audit/entries", tag = "platform", params(EntryQuery),
    security(("admin_token" = [])), responses((status = 200, body = EntriesView)))]
pub async fn entries(
    State(state): State<AppState>,
    _: Admin,
    query: Result<Query<EntryQuery>, QueryRejection>,
) -> Result<Json<EntriesView>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let filter = EntryFilter {
        vendor: q.vendor,
        actor: q.actor,
        approval_id: q.approval_id,
        plugin: q.plugin,
        rule: q.rule,
        decision: q.decision,
        kind: q.kind,
        since_ms: q.since,
        until_ms: q.until,
        after_index: q.after,
    };
    let found = state.audit.search(&filter, limit).await?;
    let next_after = (found.len() == limit as usize)
        .then(|| found.last().map(|e| e.index))
        .flatten();
    let entries = found
        .into_iter()
        .map(|e| EntryView {
            index: e.index,
            entry: serde_json::from_slice(&e.bytes).unwrap_or(Value::Null),
            bytes: STANDARD.encode(&e.bytes),
        })
        .collect();
    Ok(Json(EntriesView {
        entries,
        next_after,
    }))
}

/// The newest signed checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    pub size: u64,
    /// Base64 root hash.
    pub root: String,
    /// The C2SP signed note.
    pub checkpoint: String,
    /// The verification key (`<origin>+<keyid>+<key>`).
    pub log_key: String,
    pub signed_at: u64,
}

/// The newest signed checkpoint (one is signed now if the log grew since).
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "platform", security(("admin_token" = [])),
    responses((status = 200, body = CheckpointView), (status = 404, description = "the log is empty", body = ErrorBody)))]
pub async fn checkpoint(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<CheckpointView>, ApiError> {
    let c = state
        .audit
        .checkpoint()
        .await?
        .ok_or_else(|| ApiError::not_found("checkpoint"))?;
    Ok(Json(CheckpointView {
        size: c.size,
        root: STANDARD.encode(c.root.0),
        checkpoint: c.note,
        log_key: state.audit.vkey().to_owned(),
        signed_at: c.signed_at_ms,
    }))
}

/// Which inclusion proof.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    pub index: u64,
    /// The tree size (default: the newest checkpoint's).
    pub size: Option<u64>,
}

/// A proof: base64 hashes, leaf to root.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProofView {
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    pub proof: Vec<String>,
}

async fn size_or_latest(state: &AppState, size: Option<u64>) -> Result<u64, ApiError> {
    match size {
        Some(size) => {
            if size > state.audit.size().await? {
                return Err(ApiError::bad_request("size: larger than the log"));
            }
            Ok(size)
        }
        None => Ok(state
            .audit
            .checkpoint()
            .await?
            .map(|c| c.size)
            .ok_or_else(|| ApiError::not_found("checkpoint"))?),
    }
}

/// The inclusion proof of an entry (RFC 6962).
#[utoipa::path(get, path = "/v1/audit/proofs/inclusion", tag = "platform", params(InclusionQuery),
    security(("admin_token" = [])), responses((status = 200, body = ProofView), (status = 400, body = ErrorBody)))]
pub async fn inclusion(
    State(state): State<AppState>,
    _: Admin,
    query: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<ProofView>, ApiError> {
    let Query(q) = query?;
    let size = size_or_latest(&state, q.size).await?;
    let proof = state.audit.inclusion_proof(q.index, size).await?;
    Ok(Json(ProofView {
        size,
        index: Some(q.index),
        old_size: None,
        proof: proof.iter().map(|h| STANDARD.encode(h.0)).collect(),
    }))
}

/// Which consistency proof.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    pub old_size: u64,
    /// The newer tree size (default: the newest checkpoint's).
    pub size: Option<u64>,
}

/// The consistency proof between two tree sizes (RFC 6962).
#[utoipa::path(get, path = "/v1/audit/proofs/consistency", tag = "platform", params(ConsistencyQuery),
    security(("admin_token" = [])), responses((status = 200, body = ProofView), (status = 400, body = ErrorBody)))]
pub async fn consistency(
    State(state): State<AppState>,
    _: Admin,
    query: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ProofView>, ApiError> {
    let Query(q) = query?;
    let size = size_or_latest(&state, q.size).await?;
    let proof = state.audit.consistency_proof(q.old_size, size).await?;
    Ok(Json(ProofView {
        size,
        index: None,
        old_size: Some(q.old_size),
        proof: proof.iter().map(|h| STANDARD.encode(h.0)).collect(),
    }))
}

/// The whole log as JSON Lines, for `approval-host audit verify`.
#[utoipa::path(get, path = "/v1/audit/export", tag = "platform", security(("admin_token" = [])),
    responses((status = 200, content_type = "application/jsonl", description = "the export format of `host/src/audit/verify.rs`")))]
pub async fn export(State(state): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    state.audit.export(&mut out).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/jsonl")],
        Body::from(out),
    )
        .into_response())
}

/// One plugin version's behaviour across vendors.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginHealthView {
    pub vendor: String,
    pub plugin: String,
    pub version: u32,
    /// The last hour.
    pub recent: WindowView,
    /// The 23 hours before it.
    pub earlier: WindowView,
    pub mean_time_us: u64,
    /// `error_spike` (the error rate jumped), `verdict_drift` (the mix of decisions moved).
    pub anomalies: Vec<String>,
}

/// Calls of one window.
#[derive(Debug, Serialize, ToSchema)]
pub struct WindowView {
    pub calls: u64,
    pub allow: u64,
    pub escalate: u64,
    pub deny: u64,
    pub errors: u64,
}

impl From<&Window> for WindowView {
    fn from(w: &Window) -> Self {
        Self {
            calls: w.calls,
            allow: w.allow,
            escalate: w.escalate,
            deny: w.deny,
            errors: w.errors,
        }
    }
}

/// The fewest recent calls to judge a version's behaviour by.
const MIN_CALLS: u64 = 20;

#[allow(clippy::cast_precision_loss)]
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// What is unusual about a version's last hour against its day.
pub fn anomalies(h: &VersionHealth) -> Vec<String> {
    let mut found = Vec::new();
    if h.recent.calls < MIN_CALLS {
        return found;
    }
    let recent_errors = share(h.recent.errors, h.recent.calls);
    let earlier_errors = share(h.earlier.errors, h.earlier.calls);
    if recent_errors >= 0.1 && recent_errors >= 2.0 * earlier_errors {
        found.push("error_spike".to_owned());
    }
    if h.earlier.calls >= MIN_CALLS {
        let mix = |w: &Window| {
            [
                share(w.allow, w.calls),
                share(w.escalate, w.calls),
                share(w.deny, w.calls),
            ]
        };
        let (a, b) = (mix(&h.recent), mix(&h.earlier));
        let distance = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0;
        if distance >= 0.25 {
            found.push("verdict_drift".to_owned());
        }
    }
    found
}

/// Every plugin version called in the last day, across vendors, with anomalies.
#[utoipa::path(get, path = "/v1/audit/plugins", tag = "platform", security(("admin_token" = [])),
    responses((status = 200, body = Vec<PluginHealthView>)))]
pub async fn plugins(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<PluginHealthView>>, ApiError> {
    let now = state.clock.now_ms();
    let health = state
        .plugins
        .health(
            now.saturating_sub(24 * 3_600_000),
            now.saturating_sub(3_600_000),
        )
        .await?;
    Ok(Json(
        health
            .iter()
            .map(|h| PluginHealthView {
                vendor: h.vendor.clone(),
                plugin: h.plugin.clone(),
                version: h.version,
                recent: (&h.recent).into(),
                earlier: (&h.earlier).into(),
                mean_time_us: h.mean_us,
                anomalies: anomalies(h),
            })
            .collect(),
    ))
}

/// Devices flagged for unusual volume across vendors in the last 7 days.
#[utoipa::path(get, path = "/v1/audit/flags", tag = "platform", security(("admin_token" = [])),
    responses((status = 200, body = Vec<FlagView>)))]
pub async fn flags(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<FlagView>>, ApiError> {
    let since = state.clock.now_ms().saturating_sub(7 * 24 * 3_600_000);
    let flags = state
        .approvals
        .flags(FlagScope::All, since)
        .await
        .map_err(engine)?;
    Ok(Json(flags.iter().map(FlagView::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(recent: [u64; 4], earlier: [u64; 4]) -> VersionHealth {
        let window = |[allow, escalate, deny, errors]: [u64; 4]| Window {
            calls: allow + escalate + deny + errors,
            allow,
            escalate,
            deny,
            errors,
        };
        VersionHealth {
            vendor: "v".into(),
            plugin: "p".into(),
            version: 1,
            recent: window(recent),
            earlier: window(earlier),
            mean_us: 10,
        }
    }

    #[test]
    fn spikes_and_drift_are_named_and_quiet_versions_are_not() {
        assert!(anomalies(&health([90, 10, 0, 0], [900, 100, 0, 0])).is_empty());
        assert_eq!(
            anomalies(&health([60, 10, 0, 30], [900, 100, 0, 10])),
            ["error_spike"]
        );
        assert_eq!(
            anomalies(&health([20, 80, 0, 0], [900, 100, 0, 0])),
            ["verdict_drift"]
        );
        // Too few calls to judge.
        assert!(anomalies(&health([1, 0, 0, 5], [900, 100, 0, 0])).is_empty());
    }
}
