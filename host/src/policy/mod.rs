//! Policy: a vendor's template, a guardian's per-actor overrides within the vendor's bounds, the
//! built-in high-risk triggers, and how their verdicts and the plugins' combine into one.
//!
//! Everything here is pure: no I/O, no clock. `approvals` loads the inputs and stores the result.

pub mod document;

use std::time::Duration;

use crate::plugin::{PluginError, PluginLimits};
use crate::risk::{
    Action, CounterOffer, Decision, EffectivePolicy, Money, RiskRequest, Verdict, is_action_kind,
    kinds,
};

/// Stable ids of the built-in triggers.
pub mod rules {
    /// A payment above the threshold set for its currency.
    pub const SPEND_THRESHOLD: &str = "builtin.spend_threshold";
    /// A payment in a currency the policy sets no threshold for.
    pub const UNPRICED_CURRENCY: &str = "builtin.spend_threshold.no_threshold_for_currency";
    /// A credential stored for a service in a sensitive category.
    pub const SENSITIVE_CREDENTIAL: &str = "builtin.sensitive_credential";
    /// A write to the family namespace from a device not tagged family-context.
    pub const FAMILY_WRITE: &str = "builtin.family_write_outside_family";
    /// A capability mint reaching the configured share of its parent's scope.
    pub const MINT_NEAR_PARENT: &str = "builtin.mint_near_parent_scope";
    /// A capability mint asking for more than its parent holds.
    pub const MINT_EXCEEDS_PARENT: &str = "builtin.mint_exceeds_parent_scope";
    /// A plugin failed and the vendor's fail mode decided.
    pub const PLUGIN_FAILED: &str = "plugin.failed";
    /// A generic action kind the vendor's template does not declare.
    pub const UNDECLARED_ACTION: &str = "builtin.undeclared_action";
}

/// The most generic action kinds a template may declare.
pub const MAX_GENERIC_ACTIONS: usize = 200;

/// The generic action kinds (any kind but the typed ones) a vendor's template declares, and how
/// a request for one it does not declare is answered. An agent names its action kind itself, so
/// an undeclared kind (a `pay` beside the typed `payment`) must never get a silent token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GenericActions {
    /// The declared kinds: classified like any request (the triggers and the plugins decide).
    pub declared: Vec<String>,
    /// What a request of any other generic kind gets: denied (the default) or sent to a guardian.
    pub undeclared: Undeclared,
}

/// How a request of an undeclared generic kind is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Undeclared {
    /// Denied, with the rule [`rules::UNDECLARED_ACTION`] (the default).
    #[default]
    Deny,
    /// A guardian decides.
    Escalate,
}

/// The namespace the family-write trigger guards, and the tag that makes a device family.
pub const FAMILY_NAMESPACE: &str = "family";
/// The device context tag that lets a device write the family namespace without review.
pub const FAMILY_CONTEXT_TAG: &str = "family-context";

/// Which built-in triggers are on. All are on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triggers {
    pub spend_threshold: bool,
    pub sensitive_credential: bool,
    pub family_write: bool,
    pub mint_near_parent_scope: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Self {
            spend_threshold: true,
            sensitive_credential: true,
            family_write: true,
            mint_near_parent_scope: true,
        }
    }
}

/// What a plugin failure turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// A human decides (the default): a broken plugin never silently allows.
    #[default]
    Escalate,
    /// The request is refused.
    Deny,
}

/// The range a guardian may set one currency's spend threshold in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdBound {
    pub currency: String,
    pub min: u64,
    pub max: u64,
}

/// How far guardians' per-actor overrides may move the vendor's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideBounds {
    /// Explicit ranges per currency. A currency without one may only be tightened: from 0 up to
    /// the template's own threshold (or any value, when the template sets none).
    pub spend_thresholds: Vec<ThresholdBound>,
    /// The range of the mint ratio a guardian may set, in percent.
    pub mint_ratio_percent: (u8, u8),
}

impl Default for OverrideBounds {
    fn default() -> Self {
        Self {
            spend_thresholds: Vec::new(),
            mint_ratio_percent: (1, 100),
        }
    }
}

/// A vendor's policy template: what applies to every actor of the vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTemplate {
    pub triggers: Triggers,
    /// Payment thresholds, one per currency; a payment above its currency's threshold escalates.
    pub spend_thresholds: Vec<Money>,
    /// Credential categories that need a human.
    pub sensitive_categories: Vec<String>,
    /// A mint asking for at least this percentage of the parent's scope escalates.
    pub mint_ratio_percent: u8,
    /// How long a request waits for a human unless its action has its own TTL.
    pub default_ttl: Duration,
    /// TTLs per action kind ("payment", "cred.put", ...).
    pub action_ttls: Vec<(String, Duration)>,
    /// Requests per actor per hour that may go to a human; more are refused as rate limited.
    pub max_approval_requests_per_hour: u32,
    pub plugin_fail_mode: FailMode,
    /// The limits the vendor's plugins run under, within the platform maxima.
    pub plugin_limits: PluginLimits,
    pub override_bounds: OverrideBounds,
    /// The vendor's own settings, passed to its plugins.
    pub settings: Vec<(String, String)>,
    /// The generic action kinds the vendor declares, and how others are answered.
    pub generic_actions: GenericActions,
}

impl Default for PolicyTemplate {
    fn default() -> Self {
        let policy = EffectivePolicy::default();
        Self {
            triggers: Triggers::default(),
            spend_thresholds: policy.spend_thresholds,
            sensitive_categories: policy.sensitive_categories,
            mint_ratio_percent: policy.mint_ratio_percent,
            default_ttl: policy.default_ttl,
            action_ttls: Vec::new(),
            max_approval_requests_per_hour: 20,
            plugin_fail_mode: FailMode::Escalate,
            plugin_limits: PluginLimits::default(),
            override_bounds: OverrideBounds::default(),
            settings: policy.settings,
            generic_actions: GenericActions::default(),
        }
    }
}

/// A guardian's overrides for one actor. Unset values follow the template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActorOverrides {
    pub spend_thresholds: Vec<Money>,
    pub mint_ratio_percent: Option<u8>,
}

/// A policy or override that cannot be accepted, with what is wrong in words for its author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{field}: {value} is outside the range the vendor allows ({min} to {max})")]
    OutOfBounds {
        field: String,
        value: u64,
        min: u64,
        max: u64,
    },
}

impl PolicyError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Invalid { .. } => "policy_invalid",
            PolicyError::OutOfBounds { .. } => "override_out_of_bounds",
        }
    }

    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        PolicyError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The shortest and longest TTL a template may set.
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(86_400));

/// Whether `code` is an upper-case three-letter ISO 4217-style currency code.
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

fn check_currency(field: &str, code: &str) -> Result<(), PolicyError> {
    if is_currency_code(code) {
        Ok(())
    } else {
        Err(PolicyError::invalid(
            field,
            format!("{code:?} is not a three-letter upper-case currency code"),
        ))
    }
}

fn check_ratio(field: &str, percent: u8) -> Result<(), PolicyError> {
    if (1..=100).contains(&percent) {
        Ok(())
    } else {
        Err(PolicyError::invalid(field, "must be between 1 and 100"))
    }
}

impl PolicyTemplate {
    /// Checks the template is coherent and its plugin limits fit in `platform_max`.
    ///
    /// # Errors
    /// The first problem found, naming its field.
    pub fn validate(&self, platform_max: &PluginLimits) -> Result<(), PolicyError> {
        for m in &self.spend_thresholds {
            check_currency("spend_thresholds", &m.currency)?;
        }
        if has_duplicates(self.spend_thresholds.iter().map(|m| m.currency.as_str())) {
            return Err(PolicyError::invalid(
                "spend_thresholds",
                "a currency appears twice",
            ));
        }
        check_ratio("mint_ratio_percent", self.mint_ratio_percent)?;
        let ttls = std::iter::once(("default".to_owned(), self.default_ttl))
            .chain(self.action_ttls.iter().cloned());
        for (kind, ttl) in ttls {
            if ttl < TTL_RANGE.0 || ttl > TTL_RANGE.1 {
                return Err(PolicyError::invalid(
                    format!("ttl_seconds.{kind}"),
                    format!(
                        "must be between {} and {} seconds",
                        TTL_RANGE.0.as_secs(),
                        TTL_RANGE.1.as_secs()
                    ),
                ));
            }
        }
        let declared = &self.generic_actions.declared;
        if declared.len() > MAX_GENERIC_ACTIONS {
            return Err(PolicyError::invalid(
                "generic_actions.declared",
                format!("at most {MAX_GENERIC_ACTIONS} kinds"),
            ));
        }
        for kind in declared {
            if kinds::TYPED.contains(&kind.as_str()) || !is_action_kind(kind) {
                return Err(PolicyError::invalid(
                    "generic_actions.declared",
                    format!(
                        "{:?} is not a generic action kind (1 to 64 of a-z, 0-9, '.', '_', '-'; not a typed kind)",
                        kind.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
        if has_duplicates(declared.iter().map(String::as_str)) {
            return Err(PolicyError::invalid(
                "generic_actions.declared",
                "a kind appears twice",
            ));
        }
        if self.max_approval_requests_per_hour == 0 {
            return Err(PolicyError::invalid(
                "max_approval_requests_per_hour",
                "must be at least 1",
            ));
        }
        let limits = &self.plugin_limits;
        let max = platform_max;
        let over = [
            ("fuel", limits.fuel > max.fuel, max.fuel),
            (
                "deadline_ms",
                limits.deadline > max.deadline,
                u64::try_from(max.deadline.as_millis()).unwrap_or(u64::MAX),
            ),
            (
                "memory_bytes",
                limits.memory_bytes > max.memory_bytes,
                max.memory_bytes as u64,
            ),
            (
                "max_input_bytes",
                limits.max_input_bytes > max.max_input_bytes,
                max.max_input_bytes as u64,
            ),
            (
                "max_output_bytes",
                limits.max_output_bytes > max.max_output_bytes,
                max.max_output_bytes as u64,
            ),
            (
                "log_bytes",
                limits.log_bytes > max.log_bytes,
                max.log_bytes as u64,
            ),
        ];
        if let Some((field, _, max)) = over.into_iter().find(|(_, over, _)| *over) {
            return Err(PolicyError::invalid(
                format!("plugin_limits.{field}"),
                format!("exceeds the platform maximum of {max}"),
            ));
        }
        if limits.fuel == 0 || limits.deadline.is_zero() || limits.memory_bytes == 0 {
            return Err(PolicyError::invalid(
                "plugin_limits",
                "fuel, deadline and memory must be above zero",
            ));
        }
        let bounds = &self.override_bounds;
        for b in &bounds.spend_thresholds {
            check_currency("override_bounds.spend_thresholds", &b.currency)?;
            if b.min > b.max {
                return Err(PolicyError::invalid(
                    format!("override_bounds.spend_thresholds.{}", b.currency),
                    "min is above max",
                ));
            }
            if let Some(t) = self.threshold(&b.currency)
                && !(b.min..=b.max).contains(&t)
            {
                return Err(PolicyError::invalid(
                    format!("override_bounds.spend_thresholds.{}", b.currency),
                    format!("the template's own threshold {t} is outside the range"),
                ));
            }
        }
        let (lo, hi) = bounds.mint_ratio_percent;
        check_ratio("override_bounds.mint_ratio_percent", lo)?;
        check_ratio("override_bounds.mint_ratio_percent", hi)?;
        if lo > hi || !(lo..=hi).contains(&self.mint_ratio_percent) {
            return Err(PolicyError::invalid(
                "override_bounds.mint_ratio_percent",
                "min must not exceed max, and the template's own ratio must be in the range",
            ));
        }
        Ok(())
    }

    fn threshold(&self, currency: &str) -> Option<u64> {
        threshold_in(&self.spend_thresholds, currency)
    }

    /// The range a guardian may set `currency`'s threshold in.
    pub fn threshold_bounds(&self, currency: &str) -> (u64, u64) {
        match self
            .override_bounds
            .spend_thresholds
            .iter()
            .find(|b| b.currency == currency)
        {
            Some(b) => (b.min, b.max),
            None => (0, self.threshold(currency).unwrap_or(u64::MAX)),
        }
    }

    /// Checks a guardian's overrides against this template's bounds. A guardian may always
    /// tighten (a lower threshold or ratio, below the vendor's `min` too); only loosening is
    /// bounded, by `max`.
    ///
    /// # Errors
    /// A malformed value, or one looser than the vendor's bounds allow.
    pub fn check_overrides(&self, overrides: &ActorOverrides) -> Result<(), PolicyError> {
        for m in &overrides.spend_thresholds {
            check_currency("spend_thresholds", &m.currency)?;
            let (min, max) = self.threshold_bounds(&m.currency);
            if m.minor_units > max {
                return Err(PolicyError::OutOfBounds {
                    field: format!("spend_thresholds.{}", m.currency),
                    value: m.minor_units,
                    min,
                    max,
                });
            }
        }
        if has_duplicates(
            overrides
                .spend_thresholds
                .iter()
                .map(|m| m.currency.as_str()),
        ) {
            return Err(PolicyError::invalid(
                "spend_thresholds",
                "a currency appears twice",
            ));
        }
        if let Some(ratio) = overrides.mint_ratio_percent {
            check_ratio("mint_ratio_percent", ratio)?;
            let (min, max) = self.override_bounds.mint_ratio_percent;
            if ratio > max {
                return Err(PolicyError::OutOfBounds {
                    field: "mint_ratio_percent".into(),
                    value: ratio.into(),
                    min: min.into(),
                    max: max.into(),
                });
            }
        }
        Ok(())
    }

    /// The policy in force for an actor: the template with the actor's overrides applied. An
    /// override looser than the vendor's current `max` is brought down to it; a tighter one
    /// stays as the guardian set it, whatever the vendor's `min` (raising `min` never loosens it).
    pub fn effective(&self, overrides: &ActorOverrides) -> EffectivePolicy {
        let mut thresholds = self.spend_thresholds.clone();
        for o in &overrides.spend_thresholds {
            let (_, max) = self.threshold_bounds(&o.currency);
            let value = o.minor_units.min(max);
            match thresholds.iter_mut().find(|m| m.currency == o.currency) {
                Some(m) => m.minor_units = value,
                None => thresholds.push(Money::new(value, &o.currency)),
            }
        }
        let (_, hi) = self.override_bounds.mint_ratio_percent;
        EffectivePolicy {
            spend_thresholds: thresholds,
            sensitive_categories: self.sensitive_categories.clone(),
            mint_ratio_percent: overrides
                .mint_ratio_percent
                .map_or(self.mint_ratio_percent, |r| r.min(hi)),
            default_ttl: self.default_ttl,
            settings: self.settings.clone(),
        }
    }

    /// How long a request for `action_kind` waits for a human.
    pub fn ttl_for(&self, action_kind: &str) -> Duration {
        self.action_ttls
            .iter()
            .find(|(kind, _)| kind == action_kind)
            .map_or(self.default_ttl, |(_, ttl)| *ttl)
    }
}

fn has_duplicates<'a>(items: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().any(|item| !seen.insert(item))
}

fn threshold_in(thresholds: &[Money], currency: &str) -> Option<u64> {
    thresholds
        .iter()
        .find(|m| m.currency == currency)
        .map(|m| m.minor_units)
}

/// Where a rule hit came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    Builtin,
    /// An active vendor plugin, by name, version and component sha256.
    Plugin {
        name: String,
        version: u32,
        sha256: String,
    },
}

/// One rule that had something to say about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHit {
    pub source: RuleSource,
    pub verdict: Verdict,
}

/// The built-in triggers that fire for `request` under `policy`.
pub fn builtin_hits(
    triggers: &Triggers,
    policy: &EffectivePolicy,
    request: &RiskRequest,
) -> Vec<RuleHit> {
    let mut hits = Vec::new();
    let mut fire = |decision, rule_id: &str, reason: String| {
        hits.push(RuleHit {
            source: RuleSource::Builtin,
            verdict: Verdict {
                decision,
                rule_id: rule_id.to_owned(),
                reason,
                ttl: None,
                counter_offer: None,
            },
        });
    };
    match &request.action {
        Action::Payment { amount, .. } if triggers.spend_threshold => {
            match threshold_in(&policy.spend_thresholds, &amount.currency) {
                Some(limit) if amount.minor_units > limit => fire(
                    Decision::Escalate,
                    rules::SPEND_THRESHOLD,
                    format!(
                        "a payment of {amount} is above the threshold of {}",
                        Money::new(limit, &amount.currency)
                    ),
                ),
                Some(_) => {}
                None => fire(
                    Decision::Escalate,
                    rules::UNPRICED_CURRENCY,
                    format!(
                        "no spend threshold is set for {}; amounts are never converted between currencies",
                        amount.currency
                    ),
                ),
            }
        }
        Action::CredentialPut { service, category }
            if triggers.sensitive_credential
                && policy.sensitive_categories.iter().any(|c| c == category) =>
        {
            fire(
                Decision::Escalate,
                rules::SENSITIVE_CREDENTIAL,
                format!("storing a credential for {service} ({category}) needs a guardian"),
            );
        }
        Action::MemoryWrite { namespace, .. }
            if triggers.family_write
                && namespace == FAMILY_NAMESPACE
                && !request
                    .device_context
                    .iter()
                    .any(|t| t == FAMILY_CONTEXT_TAG) =>
        {
            fire(
                Decision::Escalate,
                rules::FAMILY_WRITE,
                "a device that is not a family device wants to write the family's shared memory"
                    .to_owned(),
            );
        }
        Action::CapabilityMint {
            capability,
            requested_scope,
            parent_scope,
        } if triggers.mint_near_parent_scope => {
            if requested_scope > parent_scope {
                fire(
                    Decision::Deny,
                    rules::MINT_EXCEEDS_PARENT,
                    format!(
                        "a child of {capability} cannot hold {requested_scope}: its parent holds {parent_scope}"
                    ),
                );
            } else if u128::from(*requested_scope) * 100
                >= u128::from(policy.mint_ratio_percent) * u128::from(*parent_scope)
            {
                fire(
                    Decision::Escalate,
                    rules::MINT_NEAR_PARENT,
                    format!(
                        "a child of {capability} asks for {requested_scope} of {parent_scope}, at least {}% of its parent's scope",
                        policy.mint_ratio_percent
                    ),
                );
            }
        }
        _ => {}
    }
    hits
}

/// The built-in rule that answers a generic action the template does not declare, if `action`
/// is one.
pub fn undeclared_hit(generic: &GenericActions, action: &Action) -> Option<RuleHit> {
    let Action::Other { kind, .. } = action else {
        return None;
    };
    if generic.declared.iter().any(|k| k == kind) {
        return None;
    }
    Some(RuleHit {
        source: RuleSource::Builtin,
        verdict: Verdict {
            decision: match generic.undeclared {
                Undeclared::Deny => Decision::Deny,
                Undeclared::Escalate => Decision::Escalate,
            },
            rule_id: rules::UNDECLARED_ACTION.to_owned(),
            reason: format!(
                "the vendor's policy does not declare the action {kind:?} (generic_actions.declared)"
            ),
            ttl: None,
            counter_offer: None,
        },
    })
}

/// A plugin's classification as the policy sees it.
#[derive(Debug, Clone)]
pub struct PluginVerdict {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub outcome: Result<Verdict, PluginError>,
}

/// The verdict a failed plugin call turns into under `mode`.
pub fn fail_mode_verdict(mode: FailMode, plugin: &str, error: &PluginError) -> Verdict {
    Verdict {
        decision: match mode {
            FailMode::Escalate => Decision::Escalate,
            FailMode::Deny => Decision::Deny,
        },
        rule_id: rules::PLUGIN_FAILED.to_owned(),
        reason: format!(
            "plugin {plugin} could not classify the request ({})",
            error.code()
        ),
        ttl: None,
        counter_offer: None,
    }
}

/// Built-in and plugin verdicts combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The most restrictive decision of all (deny > escalate > allow).
    pub decision: Decision,
    /// Every rule that fired (built-ins first, then plugins in order), allows from plugins
    /// included so the record shows each plugin's answer.
    pub hits: Vec<RuleHit>,
    /// The index in `hits` of the first hit with the winning decision, if any rule fired.
    pub deciding: Option<usize>,
}

impl Assessment {
    /// The hit that decided, if any rule fired.
    pub fn deciding_hit(&self) -> Option<&RuleHit> {
        self.deciding.and_then(|i| self.hits.get(i))
    }

    /// The shortest TTL asked by an escalating rule, if any asked.
    pub fn requested_ttl(&self) -> Option<Duration> {
        self.hits
            .iter()
            .filter(|h| h.verdict.decision == Decision::Escalate)
            .filter_map(|h| h.verdict.ttl)
            .min()
    }

    /// The counter-offer of the deciding rule, if it made one.
    pub fn counter_offer(&self) -> Option<&CounterOffer> {
        self.deciding_hit()
            .and_then(|h| h.verdict.counter_offer.as_ref())
    }
}

/// Combines built-in hits with active plugins' verdicts; a failed plugin counts as the vendor's
/// fail mode says. Shadow plugins are not passed here: they never decide.
pub fn combine(
    builtin: Vec<RuleHit>,
    plugins: &[PluginVerdict],
    fail_mode: FailMode,
) -> Assessment {
    let mut hits = builtin;
    for p in plugins {
        let verdict = match &p.outcome {
            Ok(v) => v.clone(),
            Err(e) => fail_mode_verdict(fail_mode, &p.name, e),
        };
        hits.push(RuleHit {
            source: RuleSource::Plugin {
                name: p.name.clone(),
                version: p.version,
                sha256: p.sha256.clone(),
            },
            verdict,
        });
    }
    let decision = hits
        .iter()
        .map(|h| h.verdict.decision)
        .max()
        .unwrap_or(Decision::Allow);
    let deciding = hits
        .iter()
        .position(|h| h.verdict.decision == decision && decision != Decision::Allow);
    Assessment {
        decision,
        hits,
        deciding,
    }
}

#[cfg(test)]
mod tests;
