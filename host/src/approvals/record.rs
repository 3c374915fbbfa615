//! The decision record: one row per request, what the API returns later and what the audit log
//! will point at.

use std::time::Duration;

use serde_json::Value;

use crate::risk::{CounterOffer, Decision, Money};

/// Where a request is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Allowed by policy; a token was minted.
    Allowed,
    /// Denied by policy, or by a guardian.
    Denied,
    /// Waiting for a guardian until `expires_at`.
    Pending,
    /// Approved by a guardian; a token was minted.
    Approved,
    /// Approved by a guardian with amended params; the token binds the amended params only.
    Revised,
    /// Nobody decided before `expires_at`.
    TimedOut,
    /// Refused because the actor sent too many requests for a human this hour.
    RateLimited,
}

impl Status {
    /// The stable lowercase name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Allowed => "allowed",
            Status::Denied => "denied",
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Revised => "revised",
            Status::TimedOut => "timed_out",
            Status::RateLimited => "rate_limited",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Status::Allowed,
            Status::Denied,
            Status::Pending,
            Status::Approved,
            Status::Revised,
            Status::TimedOut,
            Status::RateLimited,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether this status is final.
    pub fn is_settled(self) -> bool {
        self != Status::Pending
    }
}

/// Which path a request took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Allow,
    HumanReview,
    /// A guardian approved an amended request.
    Revise,
    Stop,
}

impl Route {
    /// The stable lowercase name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Allow => "allow",
            Route::HumanReview => "human_review",
            Route::Revise => "revise",
            Route::Stop => "stop",
        }
    }

    /// The route named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Route::Allow, Route::HumanReview, Route::Revise, Route::Stop]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

/// Who or what settled a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Policy,
    Human,
    Timeout,
}

impl Method {
    /// The stable lowercase name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Policy => "policy",
            Method::Human => "human",
            Method::Timeout => "timeout",
        }
    }

    /// The method named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Method::Policy, Method::Human, Method::Timeout]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
}

/// The surface and tool a request came through (e.g. "voice" and "shop-skill").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    pub surface: String,
    pub tool: Option<String>,
}

/// One rule that fired, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredRule {
    /// `builtin`, or `plugin:<name>@<version>`.
    pub source: String,
    pub rule_id: String,
    pub decision: Decision,
    pub reason: String,
}

/// One plugin's classification of the request, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRun {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    /// A shadow run: recorded only, it did not count.
    pub shadow: bool,
    /// The verdict's decision, rule and reason, when the call succeeded.
    pub verdict: Option<(Decision, String, String)>,
    /// The error code and message, when it failed.
    pub error: Option<(String, String)>,
    pub fuel_used: u64,
    pub wall_time: Duration,
}

/// A capability token minted for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token's unique id (`jti`).
    pub id: String,
    /// The compact JWT.
    pub token: String,
    pub expires_at_ms: u64,
}

/// The decision record of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    pub id: String,
    pub vendor: String,
    pub actor: String,
    pub idempotency_key: Option<String>,
    pub provenance: Provenance,
    /// The action kind, e.g. "payment".
    pub action: String,
    pub params: Value,
    pub params_hash: String,
    /// For payments.
    pub amount: Option<Money>,
    pub recipient: Option<String>,
    pub status: Status,
    pub route: Route,
    /// The rule that decided, if one did.
    pub rule_fired: Option<String>,
    /// Why, in words for a guardian or a developer.
    pub reason: String,
    /// Every rule that fired.
    pub rules: Vec<FiredRule>,
    /// Every plugin that classified the request, shadow ones included.
    pub plugins: Vec<PluginRun>,
    pub counter_offer: Option<CounterOffer>,
    /// The policy template version in force.
    pub policy_version: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub decided_at_ms: Option<u64>,
    pub decision_method: Option<Method>,
    /// The guardian who decided (their own id).
    pub decider: Option<String>,
    /// The guardian's reason for a denial, if they gave one.
    pub decision_reason: Option<String>,
    /// The amended params of a revision, and their hash.
    pub revised_params: Option<Value>,
    pub revised_params_hash: Option<String>,
    pub token: Option<IssuedToken>,
    /// When a rate-limited actor may ask again.
    pub retry_after_ms: Option<u64>,
    /// How many tiny variations of this request the agent sent while it was pending: they were
    /// merged into it instead of notifying the guardians again.
    pub merged: u32,
}

impl ApprovalRecord {
    /// How long after `now_ms` a rate-limited actor should wait, rounded up to whole seconds.
    pub fn retry_after(&self, now_ms: u64) -> Option<Duration> {
        self.retry_after_ms
            .map(|at| Duration::from_secs(at.saturating_sub(now_ms).div_ceil(1000)))
    }
}
