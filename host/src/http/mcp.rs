//! The MCP server for LLM agents (streamable HTTP at `/mcp`, the official Rust SDK): an agent
//! can request an approval and wait for it as tools, with its agent token. Deciding stays with
//! the guardian: there is no tool that approves, denies or revises.
//!
//! Requests are authenticated before the MCP layer sees them (only agent tokens pass), and the
//! tools answer with the same JSON as the HTTP API. The record's provenance is surface `mcp` and
//! the tool the agent names (or `request_approval`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, schemars, tool, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::agent::{self, ApprovalRequest, ProvenanceBody, answer_json};
use super::auth::{Agent, Caller};
use super::error::ApiError;
use crate::access::Principal;

/// The tools' server: one per MCP request (stateless), sharing the services.
#[derive(Clone, Debug)]
pub struct ApprovalTools {
    state: AppState,
}

/// `request_approval`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RequestArgs {
    /// `payment`, `cred.put`, `memory.write`, `capability.mint`, or any other action kind.
    pub action: String,
    /// The action's parameters, a JSON object; for a payment
    /// `{"amount": 60000, "currency": "CNY", "recipient": "toy-shop"}` (minor units).
    pub params: Value,
    /// Reusing a key returns the first request's outcome instead of asking again.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The agent's own tool or skill that wants the action, recorded as provenance.
    #[serde(default)]
    pub tool: Option<String>,
}

/// `wait_for_approval`'s and `get_approval`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WaitArgs {
    /// The approval id from `request_approval`.
    pub approval_id: String,
    /// Seconds to wait for a guardian's decision (0 to the host's maximum; default 30).
    #[serde(default)]
    pub wait_seconds: Option<u64>,
}

fn the_agent(parts: &axum::http::request::Parts) -> Result<Agent, ErrorData> {
    parts
        .extensions
        .get::<Agent>()
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("an agent token is required", None))
}

/// A tool's answer: the API's JSON, an error result for API errors (the model reads both).
fn result(outcome: Result<Value, ApiError>) -> CallToolResult {
    match outcome {
        Ok(value) => CallToolResult::success(vec![ContentBlock::text(value.to_string())]),
        Err(e) => {
            let body = json!({
                "code": e.code,
                "message": e.message,
                "approval": e.approval.map(|a| serde_json::to_value(*a).unwrap_or(Value::Null)),
                "retry_after_seconds": e.retry_after,
            });
            CallToolResult::error(vec![ContentBlock::text(body.to_string())])
        }
    }
}

#[tool_router(server_handler)]
impl ApprovalTools {
    /// Asks for permission to do an action for the person this agent acts for.
    #[tool(
        description = "Ask permission to perform an action (a payment, storing a credential, writing shared memory, minting a capability, or any other kind). The answer's `status` is `allowed` (with a capability `token` to present with the exact params), `denied` (with `reason`), or `pending` (a guardian must decide: call wait_for_approval with the `id`). An error `rate_limited` means too many requests for a guardian this hour: wait `retry_after_seconds`. This tool never approves anything itself."
    )]
    async fn request_approval(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(args): Parameters<RequestArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let agent = the_agent(&parts)?;
        let body = ApprovalRequest {
            action: args.action,
            params: args.params,
            idempotency_key: args.idempotency_key,
            provenance: Some(ProvenanceBody {
                surface: "mcp".to_owned(),
                tool: Some(args.tool.unwrap_or_else(|| "request_approval".to_owned())),
            }),
        };
        let outcome = agent::request_as(&self.state, &agent, body)
            .await
            .map(|(_, view)| serde_json::to_value(view.0).unwrap_or(Value::Null));
        Ok(result(outcome))
    }

    /// Waits for a guardian's decision on a pending request.
    #[tool(
        description = "Wait for the guardian's decision on a pending approval. Returns the approval: `approved` or `revised` (with a capability `token`; for `revised`, use `revised_params`), `denied` (with `decision_reason`), or still `pending` when the wait ended (call again). An error `approval_timeout` means nobody decided in time: do not perform the action."
    )]
    async fn wait_for_approval(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(args): Parameters<WaitArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let agent = the_agent(&parts)?;
        let wait = args.wait_seconds.unwrap_or(30);
        Ok(result(self.look(&agent, &args.approval_id, wait).await))
    }

    /// The current state of an approval, without waiting.
    #[tool(description = "Look at an approval's current state without waiting.")]
    async fn get_approval(
        &self,
        Extension(parts): Extension<axum::http::request::Parts>,
        Parameters(args): Parameters<WaitArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let agent = the_agent(&parts)?;
        Ok(result(self.look(&agent, &args.approval_id, 0).await))
    }
}

impl ApprovalTools {
    async fn look(&self, agent: &Agent, id: &str, wait: u64) -> Result<Value, ApiError> {
        let principal = Principal::Agent {
            vendor: agent.vendor.clone(),
            actor: agent.actor.clone(),
        };
        let (record, audience) = agent::read_as(&self.state, &principal, id).await?;
        let wait = Duration::from_secs(wait.min(self.state.limits.max_wait_seconds));
        let record = if wait.is_zero() {
            record
        } else {
            agent::wait_for(&self.state, id, record, wait).await?
        };
        answer_json(&record, audience, self.state.clock.now_ms())
    }
}

/// Admits agents only; the agent is handed to the tools through the request's extensions.
async fn require_agent(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await
    {
        Ok(Caller(Principal::Agent { vendor, actor })) => Agent { vendor, actor },
        Ok(_) => return ApiError::not_found("resource").into_response(),
        Err(e) => return IntoResponse::into_response(e),
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

/// The MCP endpoint, ready to nest at `/mcp`.
pub fn service(state: AppState) -> Router {
    let tools_state = Arc::clone(&state);
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // Every call carries a bearer token checked above, so the loopback-only Host check (a
        // defence for unauthenticated local servers) would only get in deployments' way.
        .disable_allowed_hosts();
    let mcp = StreamableHttpService::new(
        move || {
            Ok(ApprovalTools {
                state: Arc::clone(&tools_state),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    );
    // The transport buffers the whole body itself (axum's `DefaultBodyLimit` binds only axum's
    // extractors), so the API's body limit is set here.
    let limit = tower_http::limit::RequestBodyLimitLayer::new(state.limits.max_body_bytes);
    Router::new()
        .fallback_service(mcp)
        .layer(limit)
        .layer(axum::middleware::from_fn_with_state(state, require_agent))
}
