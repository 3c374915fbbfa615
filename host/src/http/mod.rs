//! The HTTP API: extracts and authenticates, calls a service, maps errors. Handlers stay short;
//! the rules live in the services below (`approvals`, `audit`, `plugin::registry`, `access`).
//!
//! - [`agent`]: requests, long-poll, events, receipts;
//! - [`guardian`]: inbox, its stream, decisions, overrides;
//! - [`vendor`]: policy, actors and tokens, plugins, webhook, flags;
//! - [`platform`]: vendors, the audit log, plugin health, flags;
//! - [`public`]: JWKS, health, metrics, the OpenAPI document, who-am-I;
//! - [`console`]: the web console's assets, built into the binary;
//! - [`mcp`]: the MCP server for LLM agents;
//! - [`webhooks`]: signed deliveries to vendors' guardian apps;
//! - [`auth`], [`error`], [`views`], [`metrics`], [`drain`]: the boundary's machinery.
//!
//! Architecture invariant: only `http` knows the API's JSON; domain types have no serde.

pub mod agent;
pub mod auth;
pub mod console;
pub mod drain;
pub mod error;
pub mod guardian;
pub mod mcp;
pub mod metrics;
pub mod platform;
pub mod public;
pub mod vendor;
pub mod views;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::access::Access;
use crate::approvals::ApprovalService;
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::plugin::registry::PluginRegistry;
use metrics::Metrics;
use webhooks::Webhooks;

/// Request limits the API enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub max_wait_seconds: u64,
}

/// What every handler can reach: the process-wide services.
#[derive(Debug)]
pub struct Services {
    pub approvals: Arc<ApprovalService>,
    pub audit: Arc<AuditLog>,
    pub plugins: Arc<PluginRegistry>,
    pub access: Access,
    pub webhooks: Arc<Webhooks>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    /// Becomes `true` at shutdown: push streams and long-polls end.
    pub closed: tokio::sync::watch::Receiver<bool>,
}

/// Cheap to clone: one `Arc` of the services.
pub type AppState = Arc<Services>;

/// Refuses a NUL character (`%00`) in the path or the query before any handler runs: ids and
/// filters are text, which PostgreSQL cannot hold with a NUL, so such a path names nothing (404)
/// and such a query is malformed (400).
async fn refuse_nul(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let has_nul = |s: &str| s.contains("%00");
    if has_nul(request.uri().path()) {
        return error::ApiError::not_found("resource").into_response();
    }
    if request.uri().query().is_some_and(has_nul) {
        return error::ApiError::bad_request("the query holds a NUL character (%00)")
            .into_response();
    }
    next.run(request).await
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let json_limit = DefaultBodyLimit::max(state.limits.max_body_bytes);
    let upload_limit = DefaultBodyLimit::max(state.limits.max_upload_bytes);
    let api = Router::new()
        // agents
        .route("/v1/approvals", post(agent::request))
        .route("/v1/approvals/{id}", get(agent::get))
        .route("/v1/approvals/{id}/events", get(agent::events))
        .route("/v1/approvals/{id}/receipt", get(agent::receipt))
        // guardians
        .route("/v1/inbox", get(guardian::inbox))
        .route("/v1/inbox/stream", get(guardian::stream))
        .route("/v1/inbox/history", get(guardian::history))
        .route("/v1/guardian/actors", get(guardian::actors))
        .route("/v1/approvals/{id}/decision", post(guardian::decide))
        .route(
            "/v1/actors/{actor}/overrides",
            get(guardian::get_overrides).put(guardian::put_overrides),
        )
        // vendors
        .route(
            "/v1/vendor/policy",
            get(vendor::get_policy).put(vendor::put_policy),
        )
        .route("/v1/vendor/actors", post(vendor::register_actor))
        .route("/v1/vendor/actors/{actor}", get(vendor::get_actor))
        .route(
            "/v1/vendor/actors/{actor}/tokens",
            post(vendor::issue_token).delete(vendor::revoke_tokens),
        )
        .route("/v1/vendor/plugins", get(vendor::list_plugins))
        .route(
            "/v1/vendor/plugins/{version}/activate",
            post(vendor::activate),
        )
        .route("/v1/vendor/plugins/{version}/shadow", post(vendor::shadow))
        .route(
            "/v1/vendor/plugins/{version}/deactivate",
            post(vendor::deactivate),
        )
        .route("/v1/vendor/plugins/{version}/replay", post(vendor::replay))
        .route("/v1/vendor/plugins/{name}/rollback", post(vendor::rollback))
        .route(
            "/v1/vendor/webhook",
            get(vendor::get_webhook)
                .put(vendor::put_webhook)
                .delete(vendor::delete_webhook),
        )
        .route("/v1/vendor/webhook/deliveries", get(vendor::deliveries))
        .route("/v1/vendor/flags", get(vendor::flags))
        // the platform
        .route(
            "/v1/vendors",
            get(platform::list_vendors).post(platform::create_vendor),
        )
        .route(
            "/v1/vendors/{vendor}/keys",
            post(platform::rotate_vendor_key),
        )
        .route("/v1/audit/entries", get(platform::entries))
        .route("/v1/audit/checkpoint", get(platform::checkpoint))
        .route("/v1/audit/proofs/inclusion", get(platform::inclusion))
        .route("/v1/audit/proofs/consistency", get(platform::consistency))
        .route("/v1/audit/export", get(platform::export))
        .route("/v1/audit/plugins", get(platform::plugins))
        .route("/v1/audit/flags", get(platform::flags))
        // anyone
        .route("/v1/whoami", get(public::whoami))
        .route("/.well-known/jwks.json", get(public::jwks))
        .route("/.well-known/audit-log-key", get(public::audit_key))
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(public::readyz))
        .route("/metrics", get(public::metrics))
        .route("/openapi.json", get(public::openapi))
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .layer(json_limit);
    let uploads = Router::new()
        .route("/v1/vendor/plugins", post(vendor::upload_plugin))
        .layer(upload_limit);
    api.merge(uploads)
        .nest_service("/mcp", mcp::service(Arc::clone(&state)))
        .fallback(public::not_found)
        .layer(axum::middleware::from_fn(refuse_nul))
        .layer(axum::middleware::from_fn(drain::drain_unread))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics::track,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
