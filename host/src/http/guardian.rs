//! The guardian's side: the inbox (what surfaces on login), its live stream, decisions, and
//! per-device overrides. A guardian reaches only the actors they guard; the decider recorded is
//! always the session's own subject.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Guardian;
use super::error::{ApiError, ErrorBody, approval_error};
use super::views::{ApprovalView, Audience, FlagView, MoneyView};
use crate::approvals::{ApprovalEvent, GuardianDecision, Notice};
use crate::policy::document::OverridesDoc;
use crate::store::approvals::FlagScope;

/// How far back the inbox shows volume flags.
const FLAGS_FOR: u64 = 24 * 3_600_000;

/// What waits for a guardian.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxView {
    /// Pending requests of the actors this guardian guards, oldest first.
    pub pending: Vec<ApprovalView>,
    /// Devices of theirs flagged for unusual volume in the last 24 hours, newest first.
    pub flags: Vec<FlagView>,
}

async fn inbox_view(state: &AppState, guardian: &str) -> Result<InboxView, ApiError> {
    let now = state.clock.now_ms();
    let map = |e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, now));
    let pending = state.approvals.inbox(guardian).await.map_err(map)?;
    let flags = state
        .approvals
        .flags(FlagScope::Guardian(guardian), now.saturating_sub(FLAGS_FOR))
        .await
        .map_err(map)?;
    Ok(InboxView {
        pending: pending
            .iter()
            .map(|r| ApprovalView::of(r, Audience::Others, now))
            .collect(),
        flags: flags.iter().map(FlagView::from).collect(),
    })
}

/// The pending approvals of the actors this guardian guards.
#[utoipa::path(get, path = "/v1/inbox", tag = "guardian", security(("guardian_session" = [])),
    responses((status = 200, body = InboxView), (status = 401, description = "no, invalid or expired session", body = ErrorBody)))]
pub async fn inbox(
    State(state): State<AppState>,
    guardian: Guardian,
) -> Result<Json<InboxView>, ApiError> {
    Ok(Json(inbox_view(&state, &guardian.id).await?))
}

/// The inbox as it changes, as server-sent events.
#[utoipa::path(get, path = "/v1/inbox/stream", tag = "guardian", security(("guardian_session" = [])),
    responses((status = 200, content_type = "text/event-stream",
        description = "`event: inbox` (the whole inbox, at once and after any gap), `event: pending` (a new request), `event: settled` (a decision or timeout), `event: flagged` (a device's unusual volume); the stream ends when the session expires")))]
pub async fn stream(
    State(state): State<AppState>,
    guardian: Guardian,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading the inbox, so nothing falls between the two.
    let events = state.approvals.subscribe();
    let first = inbox_view(&state, &guardian.id).await?;
    let now = state.clock.now_ms();
    let session_left = Duration::from_millis(guardian.expires_at_ms.saturating_sub(now));
    // When the stream ends: the session expires or the host shuts down. One timer for the
    // stream's life, not one armed again for every event.
    let ends = tokio::time::Instant::now() + session_left;
    let mut closed = state.closed.clone();
    let end: BoxFuture<'static, ()> = Box::pin(async move {
        tokio::select! {
            () = tokio::time::sleep_until(ends) => {}
            _ = closed.wait_for(|c| *c) => {}
        }
    });
    state.metrics.stream_opened();
    let stream = futures_util::stream::unfold(
        (state, guardian.id, events, end, Some(first)),
        move |(state, id, mut events, mut end, first)| async move {
            if let Some(inbox) = first {
                let event = Event::default()
                    .event("inbox")
                    .json_data(inbox)
                    .unwrap_or_default();
                return Some((Ok(event), (state, id, events, end, None)));
            }
            loop {
                let received = tokio::select! {
                    received = events.recv() => received,
                    () = &mut end => {
                        state.metrics.stream_closed();
                        return None;
                    }
                };
                let now = state.clock.now_ms();
                let event = match received {
                    Ok(event) if event.guardians().contains(&id) => Ok(match &event {
                        ApprovalEvent::Pending(n) => Event::default()
                            .event("pending")
                            .data(rendered(n, |r| ApprovalView::of(r, Audience::Others, now))),
                        ApprovalEvent::Settled(n) => Event::default()
                            .event("settled")
                            .data(rendered(n, |r| ApprovalView::of(r, Audience::Others, now))),
                        ApprovalEvent::Flagged(n) => Event::default()
                            .event("flagged")
                            .data(rendered(n, |f| FlagView::from(f))),
                    }),
                    Ok(_) => continue,
                    // Missed events: send the whole inbox again.
                    Err(RecvError::Lagged(_)) => match inbox_view(&state, &id).await {
                        Ok(inbox) => Event::default().event("inbox").json_data(inbox),
                        Err(_) => continue,
                    },
                    Err(RecvError::Closed) => {
                        state.metrics.stream_closed();
                        return None;
                    }
                };
                if let Ok(event) = event {
                    return Some((Ok(event), (state, id, events, end, None)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A notice's JSON for the push streams, serialized by the first stream that sends it and
/// shared by the rest.
fn rendered<T, V: Serialize>(notice: &Notice<T>, view: impl FnOnce(&T) -> V) -> &str {
    notice
        .rendered
        .get_or_init(|| serde_json::to_string(&view(&notice.subject)).unwrap_or_default())
}

/// A guardian's decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case", deny_unknown_fields)]
pub enum DecisionBody {
    /// Approve as asked.
    // A struct variant, not a unit one: serde enforces `deny_unknown_fields` on an internally
    // tagged enum's struct variants only, and a body such as `{"decision": "approve",
    // "decider": "…"}` must be refused like any other unknown field.
    Approve {},
    /// Deny, optionally saying why (the agent is told).
    Deny {
        #[serde(default)]
        reason: Option<String>,
    },
    /// Approve amended params that only narrow the request (e.g. a lower amount to the same
    /// recipient): a counter-offer. The token binds the amended params only.
    Revise { params: Value },
}

/// Decides a pending request of an actor this guardian guards.
#[utoipa::path(post, path = "/v1/approvals/{id}/decision", tag = "guardian", params(("id" = String, Path)),
    request_body = DecisionBody, security(("guardian_session" = [])),
    responses(
        (status = 200, description = "the decision won; the record as settled", body = ApprovalView),
        (status = 404, description = "no such approval, or not for an actor this guardian guards", body = ErrorBody),
        (status = 409, description = "`already_decided`: another decision won (it is in `approval`)", body = ErrorBody),
        (status = 410, description = "`approval_timeout`: it expired first", body = ErrorBody),
        (status = 422, description = "`revision_not_narrower`: the revision widens the request", body = ErrorBody),
    ))]
pub async fn decide(
    State(state): State<AppState>,
    guardian: Guardian,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<ApprovalView>, ApiError> {
    let Json(body) = body?;
    let decision = match body {
        DecisionBody::Approve {} => GuardianDecision::Approve,
        DecisionBody::Deny { reason } => {
            // (No NUL either: it cannot be stored as text on PostgreSQL.)
            if let Some(reason) = &reason {
                crate::text::check_field("reason", reason, crate::text::REASON)
                    .map_err(ApiError::bad_request)?;
            }
            GuardianDecision::Deny {
                reason: reason.filter(|r| !r.trim().is_empty()),
            }
        }
        DecisionBody::Revise { params } => GuardianDecision::Revise { params },
    };
    let now = state.clock.now_ms();
    let settled = state
        .approvals
        .decide(&id, &guardian.id, decision)
        .await
        .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, now)))?;
    state.metrics.decided();
    Ok(Json(ApprovalView::of(&settled, Audience::Others, now)))
}

/// Which vendor's actor, when a guardian guards actors of the same id at two vendors.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActorQuery {
    pub vendor: Option<String>,
}

/// An actor's overrides.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverridesView {
    pub vendor: String,
    pub actor: String,
    /// 0 when none were set.
    pub version: u32,
    /// `{"spend_thresholds": {"CNY": 30000}, "mint_ratio_percent": 80}`
    #[schema(value_type = Object)]
    pub overrides: Value,
}

async fn guarded_vendor(
    state: &AppState,
    guardian: &str,
    actor: &str,
    vendor: Option<String>,
) -> Result<String, ApiError> {
    let map = |e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, 0));
    let vendors = state
        .approvals
        .vendors_guarding(guardian, actor)
        .await
        .map_err(map)?;
    match vendor {
        Some(v) if vendors.contains(&v) => Ok(v),
        Some(_) => Err(ApiError::not_found("actor")),
        None => match vendors.as_slice() {
            [] => Err(ApiError::not_found("actor")),
            [one] => Ok(one.clone()),
            _ => Err(ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous_actor",
                "you guard an actor of this id at more than one vendor: add ?vendor=",
            )),
        },
    }
}

/// The overrides in force for a device this guardian guards.
#[utoipa::path(get, path = "/v1/actors/{actor}/overrides", tag = "guardian", params(("actor" = String, Path), ActorQuery),
    security(("guardian_session" = [])), responses((status = 200, body = OverridesView), (status = 404, body = ErrorBody)))]
pub async fn get_overrides(
    State(state): State<AppState>,
    guardian: Guardian,
    Path(actor): Path<String>,
    query: Result<Query<ActorQuery>, QueryRejection>,
) -> Result<Json<OverridesView>, ApiError> {
    let Query(query) = query?;
    let vendor = guarded_vendor(&state, &guardian.id, &actor, query.vendor).await?;
    let (version, overrides) = state
        .approvals
        .overrides(&vendor, &actor)
        .await
        .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, 0)))?;
    Ok(Json(OverridesView {
        overrides: serde_json::from_str(&OverridesDoc::from_overrides(&overrides).to_json())
            .unwrap_or(Value::Null),
        vendor,
        actor,
        version,
    }))
}

/// Sets a device's overrides (thresholds may be tightened freely, loosened only within the
/// vendor's bounds).
#[utoipa::path(put, path = "/v1/actors/{actor}/overrides", tag = "guardian", params(("actor" = String, Path), ActorQuery),
    request_body(content = Object, description = "`{\"spend_thresholds\": {\"CNY\": 30000}, \"mint_ratio_percent\": 80}`"),
    security(("guardian_session" = [])),
    responses((status = 200, body = OverridesView),
        (status = 400, description = "malformed (the field is named)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "`override_out_of_bounds`", body = ErrorBody)))]
pub async fn put_overrides(
    State(state): State<AppState>,
    guardian: Guardian,
    Path(actor): Path<String>,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Json<OverridesView>, ApiError> {
    let Query(query) = query?;
    let vendor = guarded_vendor(&state, &guardian.id, &actor, query.vendor).await?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let doc = OverridesDoc::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let version = state
        .approvals
        .set_overrides(&vendor, &actor, &guardian.id, &doc)
        .await
        .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, 0)))?;
    Ok(Json(OverridesView {
        overrides: serde_json::from_str(&doc.to_json()).unwrap_or(Value::Null),
        vendor,
        actor,
        version,
    }))
}

/// How many settled requests to show.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// At most this many (default 50, at most 500).
    pub limit: Option<u32>,
}

/// The requests of this guardian's devices that a guardian decided or that timed out, newest
/// first: what the console's history shows (each has a receipt).
#[utoipa::path(get, path = "/v1/inbox/history", tag = "guardian", params(HistoryQuery),
    security(("guardian_session" = [])), responses((status = 200, body = Vec<ApprovalView>)))]
pub async fn history(
    State(state): State<AppState>,
    guardian: Guardian,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    let Query(query) = query?;
    let now = state.clock.now_ms();
    let records = state
        .approvals
        .history(&guardian.id, query.limit.unwrap_or(50).clamp(1, 500))
        .await
        .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, now)))?;
    Ok(Json(
        records
            .iter()
            .map(|r| ApprovalView::of(r, Audience::Others, now))
            .collect(),
    ))
}

/// A device this guardian guards, with its overrides.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuardedActorView {
    pub vendor: String,
    pub actor: String,
    pub context_tags: Vec<String>,
    /// 0 when none were set.
    pub overrides_version: u32,
    #[schema(value_type = Object)]
    pub overrides: Value,
    /// The spend thresholds in force for the device, one per currency, each with its currency's
    /// exponent: the vendor's, with this guardian's overrides applied (`overrides` says which).
    pub spend_thresholds: Vec<MoneyView>,
}

/// The devices this guardian guards.
#[utoipa::path(get, path = "/v1/guardian/actors", tag = "guardian", security(("guardian_session" = [])),
    responses((status = 200, body = Vec<GuardedActorView>)))]
pub async fn actors(
    State(state): State<AppState>,
    guardian: Guardian,
) -> Result<Json<Vec<GuardedActorView>>, ApiError> {
    let map = |e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, 0));
    let mut out = Vec::new();
    for (vendor, actor, context_tags) in state
        .approvals
        .guarded_by(&guardian.id)
        .await
        .map_err(map)?
    {
        let (version, overrides) = state
            .approvals
            .overrides(&vendor, &actor)
            .await
            .map_err(map)?;
        let (_, template) = state.approvals.template(&vendor).await.map_err(map)?;
        out.push(GuardedActorView {
            overrides: serde_json::from_str(&OverridesDoc::from_overrides(&overrides).to_json())
                .unwrap_or(Value::Null),
            overrides_version: version,
            spend_thresholds: template
                .effective(&overrides)
                .spend_thresholds
                .iter()
                .map(MoneyView::from)
                .collect(),
            vendor,
            actor,
            context_tags,
        });
    }
    Ok(Json(out))
}
