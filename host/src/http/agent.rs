//! The agent's side: ask for an action, wait for the answer (long-poll or server-sent events),
//! and fetch an approval's receipt (any party to it).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Agent, Caller};
use super::error::{ApiError, ErrorBody, approval_error};
use super::views::{ApprovalView, Audience};
use crate::access::Principal;
use crate::approvals::record::{ApprovalRecord, Provenance, Status};
use crate::approvals::{ApprovalEvent, NewRequest};

/// The largest params accepted, as JSON text.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;

/// An agent's request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// `payment`, `cred.put`, `memory.write`, `capability.mint`, or any other kind.
    pub action: String,
    /// The action's parameters, a JSON object (see README for the typed kinds).
    pub params: Value,
    /// Retrying with the same key returns the first request's outcome (1–200 characters).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Where the request came from, e.g. `{"surface": "voice", "tool": "shop-skill"}`.
    #[serde(default)]
    pub provenance: Option<ProvenanceBody>,
}

/// The surface and tool of a request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceBody {
    pub surface: String,
    #[serde(default)]
    pub tool: Option<String>,
}

/// The status an answer carries for a record.
fn status_of(record: &ApprovalRecord) -> StatusCode {
    match record.status {
        Status::Pending => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    }
}

/// A rate-limited record is answered as an error with its retry time.
fn answer(
    record: &ApprovalRecord,
    audience: Audience,
    now_ms: u64,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    let view = ApprovalView::of(record, audience, now_ms);
    match record.status {
        Status::RateLimited => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                record.reason.clone(),
            )
            .with_approval(view.clone());
            error.retry_after = view.retry_after_seconds;
            Err(error)
        }
        // The agent must not act on it: an error it cannot mistake for an answer. Others see
        // the record with its status.
        Status::TimedOut if audience == Audience::AgentSide => Err(ApiError::new(
            StatusCode::GONE,
            "approval_timeout",
            "the request timed out before a decision",
        )
        .with_approval(view)),
        _ => Ok((status_of(record), Json(view))),
    }
}

/// [`answer`] as a JSON value (for the MCP tools).
///
/// # Errors
/// As [`answer`]: a rate-limited or timed-out record is an error.
pub fn answer_json(
    record: &ApprovalRecord,
    audience: Audience,
    now_ms: u64,
) -> Result<Value, ApiError> {
    answer(record, audience, now_ms)
        .map(|(_, Json(view))| serde_json::to_value(view).unwrap_or(Value::Null))
}

/// Asks to do an action.
#[utoipa::path(post, path = "/v1/approvals", tag = "agent", request_body = ApprovalRequest,
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "`allowed` (with a capability token) or `denied` (with its rule and reason)", body = ApprovalView),
        (status = 202, description = "`pending`: wait for a guardian with `GET /v1/approvals/{id}?wait=…`", body = ApprovalView),
        (status = 400, description = "malformed JSON, an unknown field, invalid params (the field is named)", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`", body = ErrorBody),
        (status = 413, description = "params over 64 KiB or a body over the limit", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the actor's hourly requests for a guardian are used up; `Retry-After` says when to ask again", body = ErrorBody),
    ))]
pub async fn request(
    State(state): State<AppState>,
    agent: Agent,
    body: Result<Json<ApprovalRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    let Json(body) = body?;
    request_as(&state, &agent, body).await
}

/// The request path shared by the HTTP endpoint and the MCP tool.
pub async fn request_as(
    state: &AppState,
    agent: &Agent,
    body: ApprovalRequest,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    if body.params.to_string().len() > MAX_PARAMS_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "params_too_large",
            format!("params is larger than {MAX_PARAMS_BYTES} bytes"),
        ));
    }
    let provenance = body.provenance.map_or_else(
        || Provenance {
            surface: "api".to_owned(),
            tool: None,
        },
        |p| Provenance {
            surface: p.surface,
            tool: p.tool,
        },
    );
    let now = state.clock.now_ms();
    let requested = state
        .approvals
        .request(NewRequest {
            vendor: agent.vendor.clone(),
            actor: agent.actor.clone(),
            action: body.action,
            params: body.params,
            idempotency_key: body.idempotency_key,
            provenance,
        })
        .await
        .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::AgentSide, now)))?;
    state
        .metrics
        .request_answered(requested.record.status.as_str());
    answer(&requested.record, Audience::AgentSide, now)
}

/// How a party may see a record, or 404.
pub fn audience_for(principal: &Principal, record: &ApprovalRecord) -> Result<Audience, ApiError> {
    match principal {
        Principal::Admin => Ok(Audience::Others),
        Principal::Vendor { vendor } if *vendor == record.vendor => Ok(Audience::AgentSide),
        Principal::Agent { vendor, actor }
            if *vendor == record.vendor && *actor == record.actor =>
        {
            Ok(Audience::AgentSide)
        }
        Principal::Guardian { .. } => Ok(Audience::Others),
        _ => Err(ApiError::not_found("approval")),
    }
}

/// The record if `caller` is a party to it (guardians: of its actor), else 404.
pub async fn read_as(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<(ApprovalRecord, Audience), ApiError> {
    let now = state.clock.now_ms();
    let record = state
        .approvals
        .get(id)
        .await
        .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, now)))?;
    let audience = audience_for(caller, &record)?;
    if let Principal::Guardian { id: guardian, .. } = caller
        && !state
            .approvals
            .guards(&record.vendor, &record.actor, guardian)
            .await
            .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, now)))?
    {
        return Err(ApiError::not_found("approval"));
    }
    Ok((record, audience))
}

/// How long to wait.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for a decision before answering `pending` (0 to the host's maximum,
    /// 60 by default).
    #[serde(default)]
    pub wait: Option<u64>,
}

/// Waits up to `wait` for `id` to be settled: answers as soon as it is decided or times out.
pub async fn wait_for(
    state: &AppState,
    id: &str,
    mut record: ApprovalRecord,
    wait: Duration,
) -> Result<ApprovalRecord, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = state.approvals.subscribe();
    let mut closed = state.closed.clone();
    // Settled between the read and the subscription: read again once subscribed.
    if record.status == Status::Pending {
        record = state
            .approvals
            .get(id)
            .await
            .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, 0)))?;
    }
    while record.status == Status::Pending {
        let now = state.clock.now_ms();
        let until_expiry = record
            .expires_at_ms
            .map_or(wait, |at| Duration::from_millis(at.saturating_sub(now) + 5));
        let wake = deadline.min(tokio::time::Instant::now() + until_expiry);
        tokio::select! {
            event = events.recv() => match event {
                Ok(ApprovalEvent::Settled(n)) if n.id == id => return Ok(n.subject.clone()),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Ok(record),
            },
            () = tokio::time::sleep_until(wake) => {}
            // The host is shutting down: answer with what there is.
            _ = closed.wait_for(|c| *c) => return Ok(record),
        }
        record = state
            .approvals
            .get(id)
            .await
            .map_err(|e| approval_error(e, |r| ApprovalView::of(r, Audience::Others, 0)))?;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    Ok(record)
}

/// An approval, optionally waiting for its decision (long-poll).
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "agent", params(("id" = String, Path), WaitQuery),
    security(("agent_token" = []), ("vendor_key" = []), ("guardian_session" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "decided, or still pending when the wait ended (ask again)", body = ApprovalView),
        (status = 202, description = "still pending", body = ApprovalView),
        (status = 404, description = "no such approval, or not yours", body = ErrorBody),
        (status = 410, description = "`approval_timeout`: nobody decided before it expired", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    let Query(query) = query?;
    let (record, audience) = read_as(&state, &caller, &id).await?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(state.limits.max_wait_seconds));
    let record = if wait.is_zero() {
        record
    } else {
        wait_for(&state, &id, record, wait).await?
    };
    answer(&record, audience, state.clock.now_ms())
}

/// One approval's changes as server-sent events.
#[utoipa::path(get, path = "/v1/approvals/{id}/events", tag = "agent", params(("id" = String, Path)),
    security(("agent_token" = []), ("vendor_key" = []), ("guardian_session" = []), ("admin_token" = [])),
    responses((status = 200, description = "`event: approval` with the record now and again when it is settled; a timeout also sends `event: error` with `approval_timeout`; the stream then ends", content_type = "text/event-stream")))]
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (record, audience) = read_as(&state, &caller, &id).await?;
    let stream = async_stream(state, id, record, audience);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse_approval(record: &ApprovalRecord, audience: Audience, now: u64) -> Event {
    Event::default()
        .event("approval")
        .json_data(ApprovalView::of(record, audience, now))
        .unwrap_or_default()
}

/// Where an approval's event stream is.
enum Step {
    /// Send the record as it is now.
    Start(ApprovalRecord),
    /// Wait for the record to be settled.
    Waiting(ApprovalRecord),
    /// Send the `approval_timeout` error.
    TimedOut,
    Done,
}

impl Step {
    fn after(record: ApprovalRecord) -> Self {
        match record.status {
            Status::Pending => Step::Waiting(record),
            Status::TimedOut => Step::TimedOut,
            _ => Step::Done,
        }
    }
}

fn async_stream(
    state: AppState,
    id: String,
    record: ApprovalRecord,
    audience: Audience,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(
        (state, id, Step::Start(record)),
        move |(state, id, step)| async move {
            let (event, next) = match step {
                Step::Start(record) => {
                    let event = sse_approval(&record, audience, state.clock.now_ms());
                    (event, Step::after(record))
                }
                Step::Waiting(record) => {
                    let settled = wait_for(&state, &id, record, Duration::from_secs(24 * 3600))
                        .await
                        .ok()?;
                    let event = sse_approval(&settled, audience, state.clock.now_ms());
                    (event, Step::after(settled))
                }
                Step::TimedOut => {
                    let event = Event::default()
                        .event("error")
                        .json_data(ErrorBody {
                            code: "approval_timeout".into(),
                            message: "the request timed out before a decision".into(),
                            approval: None,
                            retry_after_seconds: None,
                        })
                        .unwrap_or_default();
                    (event, Step::Done)
                }
                Step::Done => return None,
            };
            Some((Ok(event), (state, id, next)))
        },
    )
}

/// An approval's receipt.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptView {
    pub approval: ApprovalView,
    /// The log's verification key (`<origin>+<keyid>+<key>`).
    pub log_key: String,
    /// `{"approval_id", "checkpoint" (a C2SP signed note), "entries": [{"index", "entry"
    /// (base64 of the canonical entry), "proof" (base64 hashes)}]}`: verify with
    /// `approval-host audit verify-receipt`.
    #[schema(value_type = Object)]
    pub receipt: Value,
}

/// The decision record with its audit entries and their inclusion proofs against a signed
/// checkpoint: for the agent, its vendor, the actor's guardians and the platform.
#[utoipa::path(get, path = "/v1/approvals/{id}/receipt", tag = "agent", params(("id" = String, Path)),
    security(("agent_token" = []), ("vendor_key" = []), ("guardian_session" = []), ("admin_token" = [])),
    responses((status = 200, body = ReceiptView), (status = 404, body = ErrorBody)))]
pub async fn receipt(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ReceiptView>, ApiError> {
    let (record, audience) = read_as(&state, &caller, &id).await?;
    let receipt = state.audit.receipt(&id).await?;
    Ok(Json(ReceiptView {
        approval: ApprovalView::of(&record, audience, state.clock.now_ms()),
        log_key: state.audit.vkey().to_owned(),
        receipt: serde_json::from_str(&receipt.to_json()).unwrap_or(Value::Null),
    }))
}
