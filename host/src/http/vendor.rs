//! The vendor's side: its policy template, its actors and their agent tokens, its plugins
//! (upload, lifecycle, statistics, replay), its webhook and its flags. A vendor reaches only its
//! own objects.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Vendor;
use super::error::{ApiError, ErrorBody, approval_error};
use super::views::{ApprovalView, Audience, FlagView, PluginVersionView};
use super::webhooks::{DeliveryView, WebhookView};
use crate::plugin::registry::PluginState;
use crate::policy::document::TemplateDoc;
use crate::store::approvals::FlagScope;
use crate::store::plugin_stats::{Calls, VersionStats};

fn engine(e: crate::approvals::ApprovalError) -> ApiError {
    approval_error(e, |r| ApprovalView::of(r, Audience::AgentSide, 0))
}

/// A vendor's policy template.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// 0 before the first change (the defaults).
    pub version: u32,
    /// The template (see README: every field optional, unknown fields refused).
    #[schema(value_type = Object)]
    pub template: Value,
}

/// The policy template in force.
#[utoipa::path(get, path = "/v1/vendor/policy", tag = "vendor", security(("vendor_key" = [])),
    responses((status = 200, body = PolicyView)))]
pub async fn get_policy(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
) -> Result<Json<PolicyView>, ApiError> {
    let versions = state
        .approvals
        .template_versions(&vendor, 1)
        .await
        .map_err(engine)?;
    let (version, template) = match versions.into_iter().next() {
        Some(v) => (
            v.version,
            serde_json::from_str(&v.document).unwrap_or(Value::Null),
        ),
        None => (0, serde_json::json!({})),
    };
    Ok(Json(PolicyView { version, template }))
}

/// Replaces the policy template (a new version; each record keeps the version that applied).
#[utoipa::path(put, path = "/v1/vendor/policy", tag = "vendor", security(("vendor_key" = [])),
    request_body(content = Object, description = "the template, e.g. `{\"spend_thresholds\": {\"CNY\": 80000}}`"),
    responses((status = 200, body = PolicyView),
        (status = 400, description = "`policy_invalid`, with the field named", body = ErrorBody)))]
pub async fn put_policy(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    body: Bytes,
) -> Result<Json<PolicyView>, ApiError> {
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let doc = TemplateDoc::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let version = state
        .approvals
        .set_template(&vendor, &doc, &format!("vendor:{vendor}"))
        .await
        .map_err(|e| match e {
            crate::approvals::ApprovalError::Policy(p) => {
                ApiError::new(StatusCode::BAD_REQUEST, p.code(), p.to_string())
            }
            other => engine(other),
        })?;
    Ok(Json(PolicyView {
        version,
        template: serde_json::from_str(&doc.to_json()).unwrap_or(Value::Null),
    }))
}

/// An actor (a device) to register, or its new tags and guardians.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorBody {
    /// The actor's id within the vendor, 1–200 characters.
    pub id: String,
    /// Device context tags, e.g. `["family-context"]`.
    #[serde(default)]
    pub context_tags: Vec<String>,
    /// The ids of the guardians who decide for it (the `sub` of their sessions).
    pub guardians: Vec<String>,
    /// Also issue an agent token for it (shown once in the answer).
    #[serde(default)]
    pub issue_token: bool,
}

/// A registered actor.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorView {
    pub vendor: String,
    pub id: String,
    pub context_tags: Vec<String>,
    pub guardians: Vec<String>,
    /// A new agent token, shown once; only its hash is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The most guardians an actor may have.
pub const MAX_GUARDIANS: usize = 64;
/// The most context tags an actor may have.
pub const MAX_TAGS: usize = 32;

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    crate::text::check_field(what, id, crate::text::ID).map_err(ApiError::bad_request)
}

/// Registers an actor with its tags and guardians (or replaces them), optionally issuing its
/// agent token.
#[utoipa::path(post, path = "/v1/vendor/actors", tag = "vendor", request_body = ActorBody,
    security(("vendor_key" = [])),
    responses((status = 201, body = ActorView), (status = 400, body = ErrorBody)))]
pub async fn register_actor(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    body: Result<Json<ActorBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ActorView>), ApiError> {
    let Json(body) = body?;
    check_id("id", &body.id)?;
    if body.guardians.is_empty() {
        return Err(ApiError::bad_request(
            "guardians: an actor needs at least one guardian",
        ));
    }
    if body.guardians.len() > MAX_GUARDIANS || body.context_tags.len() > MAX_TAGS {
        return Err(ApiError::bad_request(format!(
            "an actor has at most {MAX_GUARDIANS} guardians and {MAX_TAGS} context tags"
        )));
    }
    for (i, g) in body.guardians.iter().enumerate() {
        check_id(&format!("guardians[{i}]"), g)?;
    }
    for (i, t) in body.context_tags.iter().enumerate() {
        check_id(&format!("context_tags[{i}]"), t)?;
    }
    state
        .approvals
        .register_actor(&vendor, &body.id, &body.context_tags, &body.guardians)
        .await
        .map_err(engine)?;
    let token = if body.issue_token {
        Some(
            state
                .access
                .issue_agent_token(&vendor, &body.id, state.clock.now_ms())
                .await?,
        )
    } else {
        None
    };
    Ok((
        StatusCode::CREATED,
        Json(ActorView {
            vendor,
            id: body.id,
            context_tags: body.context_tags,
            guardians: body.guardians,
            token,
        }),
    ))
}

/// One of the vendor's actors.
#[utoipa::path(get, path = "/v1/vendor/actors/{actor}", tag = "vendor", params(("actor" = String, Path)),
    security(("vendor_key" = [])), responses((status = 200, body = ActorView), (status = 404, body = ErrorBody)))]
pub async fn get_actor(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(actor): Path<String>,
) -> Result<Json<ActorView>, ApiError> {
    let row = state
        .approvals
        .actor(&vendor, &actor)
        .await
        .map_err(engine)?
        .ok_or_else(|| ApiError::not_found("actor"))?;
    Ok(Json(ActorView {
        vendor: row.vendor,
        id: row.id,
        context_tags: row.context_tags,
        guardians: row.guardians,
        token: None,
    }))
}

/// A newly issued agent token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenIssued {
    /// Shown once; send it as `Authorization: Bearer …`.
    pub token: String,
    /// Tokens revoked by this call (when `revoke_others` was set).
    pub revoked: u64,
}

/// Options for issuing a token.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IssueQuery {
    /// Revoke the actor's other tokens (a rotation).
    #[serde(default)]
    pub revoke_others: bool,
}

/// Issues an agent token for one of the vendor's actors.
#[utoipa::path(post, path = "/v1/vendor/actors/{actor}/tokens", tag = "vendor", params(("actor" = String, Path), IssueQuery),
    security(("vendor_key" = [])), responses((status = 201, body = TokenIssued), (status = 404, body = ErrorBody)))]
pub async fn issue_token(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(actor): Path<String>,
    query: Result<Query<IssueQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    let Query(query) = query?;
    if state
        .approvals
        .actor(&vendor, &actor)
        .await
        .map_err(engine)?
        .is_none()
    {
        return Err(ApiError::not_found("actor"));
    }
    let now = state.clock.now_ms();
    let revoked = if query.revoke_others {
        state
            .access
            .revoke_agent_tokens(&vendor, &actor, now)
            .await?
    } else {
        0
    };
    let token = state.access.issue_agent_token(&vendor, &actor, now).await?;
    Ok((StatusCode::CREATED, Json(TokenIssued { token, revoked })))
}

/// Revokes every token of one of the vendor's actors.
#[utoipa::path(delete, path = "/v1/vendor/actors/{actor}/tokens", tag = "vendor", params(("actor" = String, Path)),
    security(("vendor_key" = [])), responses((status = 200, body = TokenIssued), (status = 404, body = ErrorBody)))]
pub async fn revoke_tokens(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(actor): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state
        .approvals
        .actor(&vendor, &actor)
        .await
        .map_err(engine)?
        .is_none()
    {
        return Err(ApiError::not_found("actor"));
    }
    let revoked = state
        .access
        .revoke_agent_tokens(&vendor, &actor, state.clock.now_ms())
        .await?;
    Ok(Json(serde_json::json!({ "revoked": revoked })))
}

// ---- plugins ------------------------------------------------------------------------------

/// A plugin version with its statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginWithStats {
    #[serde(flatten)]
    pub version: PluginVersionView,
    pub stats: StatsView,
}

/// What a plugin version did on requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub calls: u64,
    pub allow: u64,
    pub escalate: u64,
    pub deny: u64,
    pub errors: u64,
    /// Error codes by frequency.
    pub error_codes: Vec<(String, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
    /// While in shadow: requests compared with the active version, and the share that agreed.
    pub compared_with_active: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement_with_active: Option<f64>,
}

impl From<VersionStats> for StatsView {
    fn from(s: VersionStats) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let agreement = (s.compared_with_active > 0)
            .then(|| s.agreed_with_active as f64 / s.compared_with_active as f64);
        Self {
            calls: s.calls,
            allow: s.allow,
            escalate: s.escalate,
            deny: s.deny,
            errors: s.errors,
            error_codes: s.error_codes,
            p50_us: s.p50_us,
            p99_us: s.p99_us,
            compared_with_active: s.compared_with_active,
            agreement_with_active: agreement,
        }
    }
}

/// Every version of the vendor's plugins, with state and statistics.
#[utoipa::path(get, path = "/v1/vendor/plugins", tag = "vendor", security(("vendor_key" = [])),
    responses((status = 200, body = Vec<PluginWithStats>)))]
pub async fn list_plugins(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
) -> Result<Json<Vec<PluginWithStats>>, ApiError> {
    let mut out = Vec::new();
    for version in state.plugins.versions(&vendor).await? {
        let stats = state
            .plugins
            .stats(Calls {
                vendor: &vendor,
                plugin: &version.name,
                version: version.version,
                since_ms: 0,
            })
            .await?;
        out.push(PluginWithStats {
            version: PluginVersionView::from(&version),
            stats: stats.into(),
        });
    }
    Ok(Json(out))
}

/// The base64 Ed25519 signature of an upload, when the vendor registered a signing key.
const SIGNATURE_HEADER: &str = "x-plugin-signature";

/// Uploads a component: the raw `.wasm` as the body (`application/wasm` or
/// `application/octet-stream`), or `multipart/form-data` with a `component` file field (and
/// optionally a `signature` field). It becomes the next version, inactive.
#[utoipa::path(post, path = "/v1/vendor/plugins", tag = "vendor", security(("vendor_key" = [])),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PluginVersionView),
        (status = 200, description = "the same bytes were uploaded before: that version", body = PluginVersionView),
        (status = 413, description = "`plugin_too_large`", body = ErrorBody),
        (status = 422, description = "`plugin_invalid` / `plugin_signature`, saying what to change", body = ErrorBody)))]
pub async fn upload_plugin(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    request: Request,
) -> Result<(StatusCode, Json<PluginVersionView>), ApiError> {
    let header_signature = request
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let (bytes, signature) = if multipart {
        let mut form = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let (mut component, mut signature) = (None, header_signature);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?
        {
            match field.name() {
                Some("component") => {
                    component = Some(
                        field
                            .bytes()
                            .await
                            .map_err(|e| upload_read_error(&e.body_text()))?,
                    );
                }
                Some("signature") => {
                    signature = Some(
                        field
                            .text()
                            .await
                            .map_err(|e| ApiError::bad_request(e.body_text()))?,
                    );
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unexpected form field {other:?}: send `component` (and optionally `signature`)"
                    )));
                }
            }
        }
        (
            component.ok_or_else(|| ApiError::bad_request("the form has no `component` field"))?,
            signature,
        )
    } else {
        let bytes = Bytes::from_request(request, &state)
            .await
            .map_err(|e| upload_read_error(&e.body_text()))?;
        (bytes, header_signature)
    };
    let signature = signature
        .map(|s| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| ApiError::bad_request("the signature is not base64"))
        })
        .transpose()?;
    let (version, created) = state
        .plugins
        .upload_new(&vendor, &bytes, signature.as_deref(), state.clock.now_ms())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(PluginVersionView::from(&version))))
}

fn upload_read_error(text: &str) -> ApiError {
    if text.contains("length limit") || text.contains("too large") {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "plugin_too_large",
            "the component is larger than the upload limit",
        )
    } else {
        ApiError::bad_request(text.to_owned())
    }
}

/// `name@version`, or a bare version when the vendor has one plugin with that version.
async fn resolve(
    state: &AppState,
    vendor: &str,
    reference: &str,
) -> Result<(String, u32), ApiError> {
    let versions = state.plugins.versions(vendor).await?;
    let (name, number) = match reference.rsplit_once('@') {
        Some((name, n)) => (Some(name), n),
        None => (None, reference),
    };
    let number: u32 = number
        .parse()
        .map_err(|_| ApiError::bad_request("name a version as `name@version` or `version`"))?;
    let matching: Vec<_> = versions
        .iter()
        .filter(|v| v.version == number && name.is_none_or(|n| n == v.name))
        .collect();
    match matching.as_slice() {
        [] => Err(ApiError::not_found("plugin version")),
        [one] => Ok((one.name.clone(), one.version)),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous_version",
            "several plugins have this version number: name it as `name@version`",
        )),
    }
}

async fn set_state(
    state: &AppState,
    vendor: &str,
    reference: &str,
    to: PluginState,
) -> Result<Json<PluginVersionView>, ApiError> {
    let (name, version) = resolve(state, vendor, reference).await?;
    let changed = state
        .plugins
        .set_state(vendor, (&name, version), to, state.clock.now_ms())
        .await?;
    Ok(Json(PluginVersionView::from(&changed)))
}

/// Makes a version the plugin's active one (its verdicts count), in one step.
#[utoipa::path(post, path = "/v1/vendor/plugins/{version}/activate", tag = "vendor",
    params(("version" = String, Path, description = "`name@version`, or `version` alone when unambiguous")),
    security(("vendor_key" = [])), responses((status = 200, body = PluginVersionView), (status = 404, body = ErrorBody)))]
pub async fn activate(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(reference): Path<String>,
) -> Result<Json<PluginVersionView>, ApiError> {
    set_state(&state, &vendor, &reference, PluginState::Active).await
}

/// Runs a version in shadow: on every request, recorded, never deciding.
#[utoipa::path(post, path = "/v1/vendor/plugins/{version}/shadow", tag = "vendor",
    params(("version" = String, Path)), security(("vendor_key" = [])),
    responses((status = 200, body = PluginVersionView), (status = 404, body = ErrorBody)))]
pub async fn shadow(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(reference): Path<String>,
) -> Result<Json<PluginVersionView>, ApiError> {
    set_state(&state, &vendor, &reference, PluginState::Shadow).await
}

/// Stops running a version.
#[utoipa::path(post, path = "/v1/vendor/plugins/{version}/deactivate", tag = "vendor",
    params(("version" = String, Path)), security(("vendor_key" = [])),
    responses((status = 200, body = PluginVersionView), (status = 404, body = ErrorBody)))]
pub async fn deactivate(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(reference): Path<String>,
) -> Result<Json<PluginVersionView>, ApiError> {
    set_state(&state, &vendor, &reference, PluginState::Inactive).await
}

/// Reactivates the version that was active before the current one of this plugin.
#[utoipa::path(post, path = "/v1/vendor/plugins/{name}/rollback", tag = "vendor",
    params(("name" = String, Path, description = "the plugin's name")), security(("vendor_key" = [])),
    responses((status = 200, body = PluginVersionView), (status = 404, description = "the vendor has no plugin of this name", body = ErrorBody),
        (status = 409, description = "`nothing_to_roll_back`", body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(name): Path<String>,
) -> Result<Json<PluginVersionView>, ApiError> {
    let name = name.split('@').next().unwrap_or_default().to_owned();
    let changed = state
        .plugins
        .rollback(&vendor, &name, state.clock.now_ms())
        .await?;
    Ok(Json(PluginVersionView::from(&changed)))
}

/// How many past requests to replay.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// The newest N requests (default 200, at most 5000).
    pub limit: Option<u32>,
}

/// One replayed request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayItemView {
    pub approval_id: String,
    pub created_at: u64,
    pub action: String,
    /// The plugin's recorded decision (its active version then), if it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_rule: Option<String>,
    /// This version's decision now, or `error` with `error_code`.
    pub replayed_decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The request's outcome then and with this version: `allow`, `escalate` or `deny`.
    pub outcome_before: String,
    pub outcome_after: String,
}

/// How a version would have judged past requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayView {
    pub plugin: String,
    pub version: u32,
    pub compared: u32,
    /// Requests the plugin ran on where this version decides differently (or fails).
    pub verdicts_changed: u32,
    pub outcomes_changed: u32,
    pub failures: u32,
    /// The requests whose verdict or outcome would differ, newest first.
    pub changed: Vec<ReplayItemView>,
}

/// Runs a version over the vendor's stored past requests and reports how its verdicts (and the
/// outcomes) would differ. Nothing is stored or decided.
#[utoipa::path(post, path = "/v1/vendor/plugins/{version}/replay", tag = "vendor",
    params(("version" = String, Path), ReplayQuery), security(("vendor_key" = [])),
    responses((status = 200, body = ReplayView), (status = 404, body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    Path(reference): Path<String>,
    query: Result<Query<ReplayQuery>, QueryRejection>,
) -> Result<Json<ReplayView>, ApiError> {
    let Query(query) = query?;
    let (name, version) = resolve(&state, &vendor, &reference).await?;
    let plugin = state.plugins.load_version(&vendor, &name, version).await?;
    let limit = query.limit.unwrap_or(200).clamp(1, 5_000);
    let replay = state
        .approvals
        .replay_plugin(&vendor, &plugin, limit)
        .await
        .map_err(engine)?;
    let changed = replay
        .items
        .into_iter()
        .filter(|i| i.outcome_before != i.outcome_after || i.verdict_changed)
        .map(|i| {
            let (decision, rule, reason, error) = match i.replayed {
                Ok((d, rule, reason)) => (
                    d.as_str().to_owned(),
                    Some(rule).filter(|r| !r.is_empty()),
                    Some(reason),
                    None,
                ),
                Err(code) => ("error".to_owned(), None, None, Some(code)),
            };
            ReplayItemView {
                approval_id: i.approval_id,
                created_at: i.created_at_ms,
                action: i.action,
                recorded_decision: i.recorded.as_ref().map(|r| r.0.as_str().to_owned()),
                recorded_rule: i.recorded.map(|r| r.1).filter(|r| !r.is_empty()),
                replayed_decision: decision,
                replayed_rule: rule,
                replayed_reason: reason,
                error_code: error,
                outcome_before: i.outcome_before.as_str().to_owned(),
                outcome_after: i.outcome_after.as_str().to_owned(),
            }
        })
        .collect();
    Ok(Json(ReplayView {
        plugin: name,
        version,
        compared: replay.compared,
        verdicts_changed: replay.verdicts_changed,
        outcomes_changed: replay.outcomes_changed,
        failures: replay.failures,
        changed,
    }))
}

// ---- webhook and flags --------------------------------------------------------------------

/// Where to deliver events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// An `http://` or `https://` URL.
    pub url: String,
}

/// Sets the webhook for the vendor's guardian app; a new signing secret is returned (once).
#[utoipa::path(put, path = "/v1/vendor/webhook", tag = "vendor", request_body = WebhookBody,
    security(("vendor_key" = [])), responses((status = 200, body = WebhookView), (status = 400, body = ErrorBody)))]
pub async fn put_webhook(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
    body: Result<Json<WebhookBody>, JsonRejection>,
) -> Result<Json<WebhookView>, ApiError> {
    let Json(body) = body?;
    let url = reqwest::Url::parse(&body.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| ApiError::bad_request("url: an http:// or https:// URL"))?;
    Ok(Json(state.webhooks.set(&vendor, url.as_str()).await?))
}

/// The vendor's webhook (without its secret).
#[utoipa::path(get, path = "/v1/vendor/webhook", tag = "vendor", security(("vendor_key" = [])),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
) -> Result<Json<WebhookView>, ApiError> {
    state
        .webhooks
        .get(&vendor)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("webhook"))
}

/// Removes the vendor's webhook.
#[utoipa::path(delete, path = "/v1/vendor/webhook", tag = "vendor", security(("vendor_key" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
) -> Result<StatusCode, ApiError> {
    if state.webhooks.remove(&vendor).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

/// The webhook's delivery log, newest first (the last 100).
#[utoipa::path(get, path = "/v1/vendor/webhook/deliveries", tag = "vendor", security(("vendor_key" = [])),
    responses((status = 200, body = Vec<DeliveryView>)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
) -> Result<Json<Vec<DeliveryView>>, ApiError> {
    Ok(Json(state.webhooks.deliveries(&vendor, 100).await?))
}

/// The vendor's devices flagged for unusual volume in the last 7 days.
#[utoipa::path(get, path = "/v1/vendor/flags", tag = "vendor", security(("vendor_key" = [])),
    responses((status = 200, body = Vec<FlagView>)))]
pub async fn flags(
    State(state): State<AppState>,
    Vendor(vendor): Vendor,
) -> Result<Json<Vec<FlagView>>, ApiError> {
    let since = state.clock.now_ms().saturating_sub(7 * 24 * 3_600_000);
    let flags = state
        .approvals
        .flags(FlagScope::Vendor(&vendor), since)
        .await
        .map_err(engine)?;
    Ok(Json(flags.iter().map(FlagView::from).collect()))
}
