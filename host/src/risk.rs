//! The vocabulary of risk classification: what is asked, under which policy, and what a rule
//! answers. These are plain domain types: no wire format, no WIT; `plugin::wit` and the HTTP
//! layer convert at their boundaries.

use std::time::Duration;

/// An amount of money in minor units of an ISO 4217 currency. Never converted between currencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    /// Minor units: ¥600.00 is 60000 in "CNY".
    pub minor_units: u64,
    /// Upper-case ISO 4217 code.
    pub currency: String,
}

impl Money {
    /// An amount in minor units of `currency`.
    pub fn new(minor_units: u64, currency: &str) -> Self {
        Self {
            minor_units,
            currency: currency.to_owned(),
        }
    }
}

impl Money {
    /// Decimal places of the currency's minor unit (ISO 4217): 0 for JPY, 3 for KWD, else 2.
    pub fn exponent(&self) -> u32 {
        match self.currency.as_str() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF"
            | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        }
    }
}

/// "600.00 CNY": the amount in major units, for people to read.
impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let exponent = self.exponent();
        let scale = 10u64.pow(exponent);
        let (major, minor) = (self.minor_units / scale, self.minor_units % scale);
        if exponent == 0 {
            write!(f, "{major} {}", self.currency)
        } else {
            write!(
                f,
                "{major}.{minor:0width$} {}",
                self.currency,
                width = exponent as usize
            )
        }
    }
}

/// What an agent asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pay `amount` to `recipient`.
    Payment {
        amount: Money,
        recipient: String,
        merchant_category: Option<String>,
    },
    /// Store a credential for `service`, whose category is e.g. "banking".
    CredentialPut { service: String, category: String },
    /// Write `key` in a shared memory `namespace` such as "family".
    MemoryWrite { namespace: String, key: String },
    /// Mint a child of `capability` asking for `requested_scope` of the parent's `parent_scope`.
    CapabilityMint {
        capability: String,
        requested_scope: u64,
        parent_scope: u64,
    },
    /// Any other action, with its parameters as a JSON object.
    Other { kind: String, params_json: String },
}

/// One agent request, as classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskRequest {
    /// The host's id for the request; seeds the sandbox's randomness.
    pub id: String,
    pub vendor: String,
    pub actor: String,
    /// Device context tags from the actor's registration, e.g. "family-context".
    pub device_context: Vec<String>,
    pub action: Action,
    /// Milliseconds since the Unix epoch when the host received the request.
    pub requested_at_ms: u64,
}

/// The policy in force for one actor: vendor template merged with the actor's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectivePolicy {
    /// Payment thresholds, one per currency.
    pub spend_thresholds: Vec<Money>,
    /// Credential categories that need a human.
    pub sensitive_categories: Vec<String>,
    /// A mint asking for at least this percentage of the parent scope escalates.
    pub mint_ratio_percent: u8,
    pub default_ttl: Duration,
    /// The vendor's own key/value settings for its plugins.
    pub settings: Vec<(String, String)>,
}

impl Default for EffectivePolicy {
    fn default() -> Self {
        Self {
            spend_thresholds: vec![Money::new(50_000, "CNY")],
            sensitive_categories: ["banking", "healthcare", "identity-document"]
                .map(String::from)
                .to_vec(),
            mint_ratio_percent: 90,
            default_ttl: Duration::from_secs(300),
            settings: Vec::new(),
        }
    }
}

/// Requests and spend of one period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    pub requests: u32,
    pub payments: u32,
    pub denied: u32,
    /// Allowed or approved spend, one entry per currency.
    pub approved_spend: Vec<Money>,
}

/// An actor's recent history, computed by the host for stateless velocity rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub last_hour: Activity,
    pub last_day: Activity,
    /// Approvals waiting for a human now.
    pub pending: u32,
}

/// Everything a classifier is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifyInput {
    pub request: RiskRequest,
    pub policy: EffectivePolicy,
    pub history: History,
}

/// The outcome a rule asks for. Ordered from least to most restrictive, so the strictest of
/// several verdicts is their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Allow,
    Escalate,
    Deny,
}

impl Decision {
    /// The stable lowercase name used in records and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Escalate => "escalate",
            Decision::Deny => "deny",
        }
    }
}

/// A change a rule would accept instead of the request as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterOffer {
    /// A lower payment amount.
    Amount(Money),
    /// Amended generic parameters, as a JSON object.
    ParamsJson(String),
}

/// A classifier's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The rule that decided; empty only for an allow.
    pub rule_id: String,
    /// Why, for a parent to read.
    pub reason: String,
    /// A per-request approval TTL, only with an escalation.
    pub ttl: Option<Duration>,
    pub counter_offer: Option<CounterOffer>,
}

/// A rule a plugin declares it can fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub description: String,
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub rules: Vec<Rule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_in_major_units() {
        assert_eq!(Money::new(60_000, "CNY").to_string(), "600.00 CNY");
        assert_eq!(Money::new(5, "USD").to_string(), "0.05 USD");
        assert_eq!(Money::new(600, "JPY").to_string(), "600 JPY");
        assert_eq!(Money::new(1_500, "KWD").to_string(), "1.500 KWD");
    }

    #[test]
    fn the_strictest_decision_is_the_maximum() {
        let all = [Decision::Escalate, Decision::Allow, Decision::Deny];
        assert_eq!(all.iter().max(), Some(&Decision::Deny));
        assert_eq!(
            [Decision::Allow, Decision::Escalate].iter().max(),
            Some(&Decision::Escalate)
        );
    }
}

/// The action kinds the host knows; any other kind is a generic action.
pub mod kinds {
    pub const PAYMENT: &str = "payment";
    pub const CREDENTIAL_PUT: &str = "cred.put";
    pub const MEMORY_WRITE: &str = "memory.write";
    pub const CAPABILITY_MINT: &str = "capability.mint";
    /// The typed kinds, whose params the host reads.
    pub const TYPED: [&str; 4] = [PAYMENT, CREDENTIAL_PUT, MEMORY_WRITE, CAPABILITY_MINT];
}

/// Longest action kind accepted.
pub const MAX_KIND_LEN: usize = 64;

/// Whether `kind` is a well-formed action kind: 1 to [`MAX_KIND_LEN`] of a-z, 0-9, '.', '_', '-'.
pub fn is_action_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}
