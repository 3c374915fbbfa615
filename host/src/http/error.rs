//! The API's one error type: a status, a stable machine-readable `code`, a human message, and
//! sometimes the record the error is about (the winning decision of a 409, the timed-out
//! request of a 410). Internal causes are logged, never sent.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::views::ApprovalView;
use crate::access::AccessError;
use crate::approvals::ApprovalError;
use crate::audit::AuditError;
use crate::plugin::registry::RegistryError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The approval the error is about, when there is one.
    pub approval: Option<Box<ApprovalView>>,
    /// For `rate_limited`: the `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable: `approval_timeout`, `already_decided`, `rate_limited`, `invalid_request`, …
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    /// An error without a record.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            approval: None,
            retry_after: None,
        }
    }

    /// 404: not found, or not the caller's to see (the two are never told apart).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 400 with the field or problem named.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 500; the cause goes to the log only.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the host failed to answer; the request can be retried",
        )
    }

    /// The error with the record it is about.
    pub fn with_approval(mut self, view: ApprovalView) -> Self {
        self.approval = Some(Box::new(view));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            approval: self.approval.map(|a| *a),
            retry_after_seconds: self.retry_after,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        // A body over the limit is refused before it has all arrived, and the server closes the
        // connection rather than read the rest: say so, or the client reuses a connection that
        // is going away and its next request fails.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The API bounds what callers send so that this cannot happen; if it does, the
            // write was undone and the caller is told, not given a 500.
            StoreError::EntryTooLarge(_) => {
                tracing::error!(error = %e, "a write was refused for its audit entry's size");
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "audit_entry_too_large",
                    "the request's texts are too long to be recorded in the audit log",
                )
            }
            e => ApiError::internal(&e),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Store(_) | AccessError::Randomness => ApiError::internal(&e),
            AccessError::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                e.code(),
                "send credentials in `Authorization: Bearer …`",
            ),
            AccessError::Expired => ApiError::new(
                StatusCode::UNAUTHORIZED,
                e.code(),
                "the session has expired: sign in again (pending approvals stay queued)",
            ),
            AccessError::Unknown | AccessError::BadSession(_) => {
                tracing::info!(reason = %e, "credentials refused");
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    e.code(),
                    "the credentials are not valid",
                )
            }
        }
    }
}

/// Maps an engine error; `view` renders the record a 409 or 410 is about.
pub fn approval_error(
    e: ApprovalError,
    view: impl Fn(&crate::approvals::record::ApprovalRecord) -> ApprovalView,
) -> ApiError {
    let code = e.code();
    match e {
        ApprovalError::UnknownVendor => ApiError::not_found("vendor"),
        ApprovalError::UnknownActor => ApiError::not_found("actor"),
        ApprovalError::NotFound => ApiError::not_found("approval"),
        ApprovalError::InvalidRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, code, m),
        ApprovalError::InvalidParams(m) => {
            ApiError::new(StatusCode::BAD_REQUEST, code, m.to_string())
        }
        ApprovalError::IdempotencyConflict => ApiError::new(
            StatusCode::CONFLICT,
            code,
            "this idempotency key was already used for a different request",
        ),
        ApprovalError::AlreadyDecided(record) => ApiError::new(
            StatusCode::CONFLICT,
            code,
            format!("already decided: {}", record.status.as_str()),
        )
        .with_approval(view(&record)),
        ApprovalError::Expired(record) => ApiError::new(
            StatusCode::GONE,
            code,
            "the request timed out before a decision",
        )
        .with_approval(view(&record)),
        ApprovalError::ReplayBusy => {
            let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, e.to_string());
            error.retry_after = Some(5);
            error
        }
        ApprovalError::RevisionNotNarrower(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, m)
        }
        ApprovalError::Policy(p) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, p.to_string())
        }
        ApprovalError::Store(e) => e.into(),
        e @ ApprovalError::Token(_) => ApiError::internal(&e),
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Upload(u) => {
                let status = match u {
                    crate::plugin::UploadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(status, u.code(), u.to_string())
            }
            RegistryError::NotFound { .. } => ApiError::not_found("plugin version"),
            RegistryError::UnknownPlugin { .. } => ApiError::not_found("plugin"),
            RegistryError::NothingToRollBack { .. } => {
                ApiError::new(StatusCode::CONFLICT, "nothing_to_roll_back", e.to_string())
            }
            RegistryError::Store(_) | RegistryError::Runtime(_) => ApiError::internal(&e),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::NoEntries => ApiError::not_found("audit entries"),
            AuditError::Tree(ref p) => match p {
                crate::audit::merkle::ProofError::MissingHash(_) => ApiError::internal(&e),
                _ => ApiError::bad_request(p.to_string()),
            },
            other => ApiError::internal(&other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let status = match e {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ if e.status() == StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(status, code, e.body_text())
    }
}

/// Gives an error answer that is not JSON the API's error body: axum's own rejections (a path
/// segment that is not UTF-8, a body over the limit read as bytes, a method not allowed) and the
/// MCP transport's. Every 4xx then carries a stable `code` and a message.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !response.status().is_client_error() || json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let status = parts.status;
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        _ => "invalid_request",
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_lowercase()
    } else {
        text
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request(e.body_text())
    }
}
