//! The JSON the API speaks: what requests carry and what responses and push events show. The
//! domain's records are converted here, at the boundary; nothing below `http` knows these
//! shapes. Each view derives `ToSchema` for `/openapi.json`.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::approvals::record::{ApprovalRecord, FiredRule, PluginRun};
use crate::plugin::registry::{PluginState, PluginVersion};
use crate::risk::{CounterOffer, Money};
use crate::store::approvals::Flag;

/// An amount of money in minor units, with its currency's exponent so that a reader needs no
/// table of its own: ¥600.00 is `{"minor_units": 60000, "currency": "CNY", "exponent": 2}`,
/// CLP 6,000 is `{"minor_units": 6000, "currency": "CLP", "exponent": 0}`.
// Serialize only: the exponent follows from the currency, so a client's is never read.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"minor_units": 60000, "currency": "CNY", "exponent": 2}))]
pub struct MoneyView {
    /// The amount in the currency's minor unit (fen, cents, fils; the major unit itself when
    /// the exponent is 0).
    pub minor_units: u64,
    /// Upper-case ISO 4217 code.
    pub currency: String,
    /// Decimal digits of the currency's minor unit (ISO 4217): the amount in major units is
    /// `minor_units / 10^exponent` (0 for JPY, CLP, VND; 2 for CNY, USD; 3 for KWD, BHD).
    #[schema(minimum = 0, maximum = 3)]
    pub exponent: u32,
}

impl From<&Money> for MoneyView {
    fn from(m: &Money) -> Self {
        Self {
            minor_units: m.minor_units,
            currency: m.currency.clone(),
            exponent: m.exponent(),
        }
    }
}

/// A rule that fired on a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleView {
    /// `builtin`, or `plugin:<name>@<version>`.
    pub source: String,
    pub rule_id: String,
    /// `allow`, `escalate` or `deny`.
    pub decision: String,
    pub reason: String,
}

impl From<&FiredRule> for RuleView {
    fn from(r: &FiredRule) -> Self {
        Self {
            source: r.source.clone(),
            rule_id: r.rule_id.clone(),
            decision: r.decision.as_str().to_owned(),
            reason: r.reason.clone(),
        }
    }
}

/// One plugin's classification of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginRunView {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    /// A shadow run is recorded only; it did not count.
    pub shadow: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the call failed: its stable code (e.g. `plugin_out_of_fuel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub fuel_used: u64,
    pub wall_time_us: u64,
}

impl From<&PluginRun> for PluginRunView {
    fn from(p: &PluginRun) -> Self {
        Self {
            name: p.name.clone(),
            version: p.version,
            sha256: p.sha256.clone(),
            shadow: p.shadow,
            decision: p.verdict.as_ref().map(|v| v.0.as_str().to_owned()),
            rule_id: p
                .verdict
                .as_ref()
                .map(|v| v.1.clone())
                .filter(|r| !r.is_empty()),
            reason: p.verdict.as_ref().map(|v| v.2.clone()),
            error_code: p.error.as_ref().map(|e| e.0.clone()),
            error: p.error.as_ref().map(|e| e.1.clone()),
            fuel_used: p.fuel_used,
            wall_time_us: u64::try_from(p.wall_time.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// A counter-offer a plugin made: a lower amount, or amended params.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CounterOfferView {
    Amount(MoneyView),
    Params(Value),
}

/// A capability token: present it, with the params, to the vendor's service.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    /// The compact JWT (EdDSA), verifiable with `/.well-known/jwks.json`.
    pub token: String,
    /// Its `jti`.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: u64,
}

/// An approval request and where it stands: the decision record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApprovalView {
    pub id: String,
    /// `allowed`, `denied`, `pending`, `approved`, `revised`, `timed_out` or `rate_limited`.
    pub status: String,
    pub vendor: String,
    pub actor: String,
    pub action: String,
    pub params: Value,
    /// SHA-256 (hex) of the params' RFC 8785 canonical JSON.
    pub params_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<MoneyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// `allow`, `human_review`, `revise` or `stop`.
    pub route: String,
    /// The rule that decided, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub reason: String,
    pub rules: Vec<RuleView>,
    pub plugins: Vec<PluginRunView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter_offer: Option<CounterOfferView>,
    /// The surface and tool the request came through.
    pub surface: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
    /// `policy`, `human` or `timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_method: Option<String>,
    /// The guardian who decided (their own id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    /// A revision's amended params: what the token binds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revised_params: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revised_params_hash: Option<String>,
    /// The capability token (shown to the agent and its vendor only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenView>,
    /// For `rate_limited`: seconds until the actor may ask a guardian again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// How many more times the agent asked for this, or a tiny variation of it (the same
    /// fields, text equal but for case and spaces, numbers within 10%), while it was pending:
    /// those requests were merged into this one instead of notifying the guardians again.
    #[serde(skip_serializing_if = "is_zero")]
    pub similar_requests: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Who is looking at a record: the token is for the agent's side only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The agent or its vendor.
    AgentSide,
    /// A guardian, the platform, a push stream or a webhook.
    Others,
}

impl ApprovalView {
    /// The view of `record` for `audience`, at `now_ms` (for `retry_after_seconds`).
    pub fn of(record: &ApprovalRecord, audience: Audience, now_ms: u64) -> Self {
        Self {
            id: record.id.clone(),
            status: record.status.as_str().to_owned(),
            vendor: record.vendor.clone(),
            actor: record.actor.clone(),
            action: record.action.clone(),
            params: record.params.clone(),
            params_hash: record.params_hash.clone(),
            amount: record.amount.as_ref().map(MoneyView::from),
            recipient: record.recipient.clone(),
            route: record.route.as_str().to_owned(),
            rule: record.rule_fired.clone(),
            reason: record.reason.clone(),
            rules: record.rules.iter().map(RuleView::from).collect(),
            plugins: record.plugins.iter().map(PluginRunView::from).collect(),
            counter_offer: record.counter_offer.as_ref().map(|c| match c {
                CounterOffer::Amount(m) => CounterOfferView::Amount(m.into()),
                CounterOffer::ParamsJson(json) => CounterOfferView::Params(
                    serde_json::from_str(json).unwrap_or(Value::String(json.clone())),
                ),
            }),
            surface: record.provenance.surface.clone(),
            tool: record.provenance.tool.clone(),
            idempotency_key: record.idempotency_key.clone(),
            created_at: record.created_at_ms,
            expires_at: record.expires_at_ms,
            decided_at: record.decided_at_ms,
            decision_method: record.decision_method.map(|m| m.as_str().to_owned()),
            decider: record.decider.clone(),
            decision_reason: record.decision_reason.clone(),
            revised_params: record.revised_params.clone(),
            revised_params_hash: record.revised_params_hash.clone(),
            token: match audience {
                Audience::AgentSide => record.token.as_ref().map(|t| TokenView {
                    token: t.token.clone(),
                    id: t.id.clone(),
                    expires_at: t.expires_at_ms,
                }),
                Audience::Others => None,
            },
            retry_after_seconds: record.retry_after(now_ms).map(|d| d.as_secs()),
            similar_requests: record.merged,
        }
    }
}

/// A device sending far more requests than its own baseline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FlagView {
    pub id: String,
    pub vendor: String,
    pub actor: String,
    pub raised_at: u64,
    /// Requests in the hour before the flag.
    pub last_hour: u32,
    /// Its average hour over the day before.
    pub baseline_per_hour: u32,
}

impl From<&Flag> for FlagView {
    fn from(f: &Flag) -> Self {
        Self {
            id: f.id.clone(),
            vendor: f.vendor.clone(),
            actor: f.actor.clone(),
            raised_at: f.raised_at_ms,
            last_hour: f.last_hour,
            baseline_per_hour: f.baseline_per_hour,
        }
    }
}

/// The name of a plugin state.
pub fn state_name(state: PluginState) -> &'static str {
    match state {
        PluginState::Inactive => "inactive",
        PluginState::Shadow => "shadow",
        PluginState::Active => "active",
    }
}

/// A rule a plugin declares.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginRuleView {
    pub id: String,
    pub description: String,
}

/// A stored plugin version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginVersionView {
    pub name: String,
    pub version: u32,
    /// `name@version`: how the lifecycle endpoints name it.
    pub reference: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// `inactive`, `shadow` or `active`.
    pub state: String,
    pub signed: bool,
    pub uploaded_at: u64,
    /// The version string the plugin's `describe()` gives.
    pub plugin_version: String,
    pub rules: Vec<PluginRuleView>,
}

impl From<&PluginVersion> for PluginVersionView {
    fn from(v: &PluginVersion) -> Self {
        Self {
            name: v.name.clone(),
            version: v.version,
            reference: format!("{}@{}", v.name, v.version),
            sha256: v.sha256.clone(),
            size_bytes: v.size_bytes,
            state: state_name(v.state).to_owned(),
            signed: v.signed,
            uploaded_at: v.uploaded_at_ms,
            plugin_version: v.info.version.clone(),
            rules: v
                .info
                .rules
                .iter()
                .map(|r| PluginRuleView {
                    id: r.id.clone(),
                    description: r.description.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::MoneyView;
    use crate::risk::Money;

    #[test]
    fn a_money_view_carries_its_currencys_exponent() {
        let view = |minor, currency| {
            serde_json::to_value(MoneyView::from(&Money::new(minor, currency))).unwrap()
        };
        assert_eq!(
            view(60_000, "CNY"),
            json!({"minor_units": 60000, "currency": "CNY", "exponent": 2})
        );
        assert_eq!(
            view(6_000, "CLP"),
            json!({"minor_units": 6000, "currency": "CLP", "exponent": 0})
        );
        assert_eq!(view(6_000, "VND")["exponent"], 0);
        assert_eq!(view(6_000, "UGX")["exponent"], 0);
        assert_eq!(
            view(75_500, "KWD"),
            json!({"minor_units": 75500, "currency": "KWD", "exponent": 3})
        );
        assert_eq!(view(75_500, "BHD")["exponent"], 3);
    }

    #[test]
    fn the_openapi_schema_of_money_names_the_exponent() {
        let schema = serde_json::to_value(<MoneyView as utoipa::PartialSchema>::schema()).unwrap();
        assert!(
            schema["required"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("exponent"))),
            "{schema}"
        );
        assert_eq!(schema["properties"]["exponent"]["maximum"], 3, "{schema}");
        assert_eq!(schema["example"]["exponent"], 2, "{schema}");
    }
}
