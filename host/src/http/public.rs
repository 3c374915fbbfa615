//! What anyone may read: the capability tokens' JWKS, the audit log's key, health, metrics and
//! the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
use super::error::ApiError;

/// The JSON Web Key Set that verifies capability tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "public",
    responses((status = 200, description = "RFC 7517 JWKS (Ed25519 `OKP` keys)", content_type = "application/json")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.approvals.tokens().jwks(state.clock.now_ms()),
    )
        .into_response()
}

/// The audit log's verification key, `<origin>+<keyid>+<key>` (C2SP signed-note form).
#[utoipa::path(get, path = "/.well-known/audit-log-key", tag = "public",
    responses((status = 200, content_type = "text/plain")))]
pub async fn audit_key(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", state.audit.vkey()),
    )
        .into_response()
}

/// Who the credentials belong to.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// `admin`, `vendor`, `agent` or `guardian`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// A guardian's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardian: Option<String>,
    /// When a guardian's session ends (milliseconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Who the presented credentials belong to (the console uses it to pick its view).
#[utoipa::path(get, path = "/v1/whoami", tag = "public",
    security(("admin_token" = []), ("vendor_key" = []), ("agent_token" = []), ("guardian_session" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = super::error::ErrorBody)))]
pub async fn whoami(super::auth::Caller(caller): super::auth::Caller) -> Json<WhoAmI> {
    use crate::access::Principal;
    let none = WhoAmI {
        kind: "admin",
        vendor: None,
        actor: None,
        guardian: None,
        expires_at: None,
    };
    Json(match caller {
        Principal::Admin => none,
        Principal::Vendor { vendor } => WhoAmI {
            kind: "vendor",
            vendor: Some(vendor),
            ..none
        },
        Principal::Agent { vendor, actor } => WhoAmI {
            kind: "agent",
            vendor: Some(vendor),
            actor: Some(actor),
            ..none
        },
        Principal::Guardian { id, expires_at_ms } => WhoAmI {
            kind: "guardian",
            guardian: Some(id),
            expires_at: Some(expires_at_ms),
            ..none
        },
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "public", responses((status = 200)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "public",
    responses((status = 200), (status = 503, description = "the database does not answer")))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.audit.size().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database does not answer",
        )
    })?;
    Ok("ok\n")
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "public",
    responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("endpoint")
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "admin_token",
            bearer("the platform admin token from the host's configuration"),
        );
        components.add_security_scheme(
            "vendor_key",
            bearer("a vendor API key (`ahv_…`), issued by the platform"),
        );
        components.add_security_scheme(
            "agent_token",
            bearer("an agent token (`aha_…`), issued by its vendor for one actor"),
        );
        components.add_security_scheme(
            "guardian_session",
            bearer("a guardian session JWT (EdDSA) from the account system"),
        );
    }
}

/// The API's OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "approval-host",
        description = "Approvals for AI agents' risky actions: agents ask, built-in triggers and vendors' WebAssembly plugins classify, guardians decide, and every step lands in a tamper-evident audit log. Errors are JSON `{code, message}` with a stable code. The MCP server for LLM agents is at `/mcp` (streamable HTTP, agent tokens)."
    ),
    paths(
        super::agent::request, super::agent::get, super::agent::events, super::agent::receipt,
        super::guardian::inbox, super::guardian::stream, super::guardian::decide,
        super::guardian::get_overrides, super::guardian::put_overrides,
        super::guardian::history, super::guardian::actors, whoami,
        super::vendor::get_policy, super::vendor::put_policy, super::vendor::register_actor,
        super::vendor::get_actor, super::vendor::issue_token, super::vendor::revoke_tokens,
        super::vendor::list_plugins, super::vendor::upload_plugin, super::vendor::activate,
        super::vendor::shadow, super::vendor::deactivate, super::vendor::rollback,
        super::vendor::replay, super::vendor::put_webhook, super::vendor::get_webhook,
        super::vendor::delete_webhook, super::vendor::deliveries, super::vendor::flags,
        super::platform::create_vendor, super::platform::list_vendors,
        super::platform::rotate_vendor_key, super::platform::entries, super::platform::checkpoint,
        super::platform::inclusion, super::platform::consistency, super::platform::export,
        super::platform::plugins, super::platform::flags,
        jwks, audit_key, healthz, readyz, metrics,
    ),
    modifiers(&Security),
    tags(
        (name = "agent", description = "An agent (a device) asks and waits; parties fetch receipts"),
        (name = "guardian", description = "A parent decides"),
        (name = "vendor", description = "A vendor manages its policy, actors, plugins and webhook"),
        (name = "platform", description = "The platform team: vendors and the audit log"),
        (name = "public", description = "Keys, health, metrics"),
    )
)]
pub struct ApiDoc;

/// This document, as JSON.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
