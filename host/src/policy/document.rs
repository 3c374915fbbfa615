//! The JSON documents vendors and guardians write: a policy template and per-actor overrides.
//! They are a published format (like `wit/`), stored as written and converted to the domain
//! types of [`super`] here, with every field optional and unknown fields refused.
//!
//! ```json
//! {
//!   "triggers": { "spend_threshold": true, "sensitive_credential": true,
//!                 "family_write": true, "mint_near_parent_scope": true },
//!   "spend_thresholds": { "CNY": 50000, "USD": 7000 },
//!   "sensitive_categories": ["banking", "healthcare", "identity-document"],
//!   "mint_ratio_percent": 90,
//!   "ttl_seconds": { "default": 300, "payment": 120 },
//!   "max_approval_requests_per_hour": 20,
//!   "plugin_fail_mode": "escalate",
//!   "plugin_limits": { "fuel": 50000000, "deadline_ms": 10, "memory_bytes": 33554432 },
//!   "override_bounds": { "spend_thresholds": { "CNY": { "min": 0, "max": 100000 } },
//!                        "mint_ratio_percent": { "min": 50, "max": 100 } },
//!   "settings": { "max-payments-per-hour": "5" },
//!   "generic_actions": { "declared": ["lights.on", "story.play"], "undeclared": "deny" }
//! }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ActorOverrides, FailMode, GenericActions, OverrideBounds, PolicyError, PolicyTemplate,
    ThresholdBound, Triggers, Undeclared,
};
use crate::plugin::PluginLimits;
use crate::risk::Money;

/// A policy template as written by a vendor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<TriggersDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_thresholds: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive_categories: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint_ratio_percent: Option<u8>,
    /// `default` and per action kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<BTreeMap<String, u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_approval_requests_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_fail_mode: Option<FailModeDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_limits: Option<LimitsDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_bounds: Option<BoundsDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_actions: Option<GenericActionsDoc>,
}

/// The generic action kinds a vendor declares; a request of any other generic kind is denied
/// (`undeclared: "deny"`, the default) or sent to a guardian (`"escalate"`), never allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericActionsDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declared: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undeclared: Option<UndeclaredDoc>,
}

/// `deny` (default) or `escalate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UndeclaredDoc {
    Deny,
    Escalate,
}

/// Which built-in triggers are on; an omitted one stays on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_threshold: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive_credential: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_write: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint_near_parent_scope: Option<bool>,
}

/// `escalate` (default) or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailModeDoc {
    Escalate,
    Deny,
}

/// Plugin limits; an omitted one keeps the platform default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<usize>,
}

/// An inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeDoc<T> {
    pub min: T,
    pub max: T,
}

/// How far guardians may move the template's values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_thresholds: Option<BTreeMap<String, RangeDoc<u64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint_ratio_percent: Option<RangeDoc<u8>>,
}

/// A guardian's overrides for one actor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverridesDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_thresholds: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint_ratio_percent: Option<u8>,
}

fn thresholds(map: &BTreeMap<String, u64>) -> Vec<Money> {
    map.iter().map(|(c, v)| Money::new(*v, c)).collect()
}

fn threshold_map(list: &[Money]) -> BTreeMap<String, u64> {
    list.iter()
        .map(|m| (m.currency.clone(), m.minor_units))
        .collect()
}

/// Parses a document, naming the field a problem is at (`spend_thresholds.CNY`), or `what`
/// for a problem with the whole document.
fn parse_named<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T, PolicyError> {
    let mut reader = serde_json::Deserializer::from_str(json);
    let parsed: T = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        PolicyError::Invalid {
            field: if path == "." { what.to_owned() } else { path },
            problem: e.into_inner().to_string(),
        }
    })?;
    reader.end().map_err(|e| PolicyError::Invalid {
        field: what.to_owned(),
        problem: e.to_string(),
    })?;
    Ok(parsed)
}

impl TemplateDoc {
    /// Parses a template document.
    ///
    /// # Errors
    /// Malformed JSON, a wrong type or an unknown field, named in the message.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        parse_named(json, "template")
    }

    /// The document as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The template this document describes, with defaults for what it omits, validated.
    ///
    /// # Errors
    /// The template is incoherent or exceeds `platform_max` (see [`PolicyTemplate::validate`]).
    pub fn to_template(&self, platform_max: &PluginLimits) -> Result<PolicyTemplate, PolicyError> {
        let defaults = PolicyTemplate::default();
        let t = self.triggers.clone().unwrap_or_default();
        let d = defaults.triggers;
        let mut default_ttl = defaults.default_ttl;
        let mut action_ttls = Vec::new();
        for (kind, secs) in self.ttl_seconds.iter().flatten() {
            let ttl = Duration::from_secs(u64::from(*secs));
            if kind == "default" {
                default_ttl = ttl;
            } else {
                action_ttls.push((kind.clone(), ttl));
            }
        }
        let l = self.plugin_limits.clone().unwrap_or_default();
        let dl = defaults.plugin_limits;
        let b = self.override_bounds.clone().unwrap_or_default();
        let template = PolicyTemplate {
            triggers: Triggers {
                spend_threshold: t.spend_threshold.unwrap_or(d.spend_threshold),
                sensitive_credential: t.sensitive_credential.unwrap_or(d.sensitive_credential),
                family_write: t.family_write.unwrap_or(d.family_write),
                mint_near_parent_scope: t
                    .mint_near_parent_scope
                    .unwrap_or(d.mint_near_parent_scope),
            },
            spend_thresholds: self
                .spend_thresholds
                .as_ref()
                .map_or(defaults.spend_thresholds, thresholds),
            sensitive_categories: self
                .sensitive_categories
                .clone()
                .unwrap_or(defaults.sensitive_categories),
            mint_ratio_percent: self
                .mint_ratio_percent
                .unwrap_or(defaults.mint_ratio_percent),
            default_ttl,
            action_ttls,
            max_approval_requests_per_hour: self
                .max_approval_requests_per_hour
                .unwrap_or(defaults.max_approval_requests_per_hour),
            plugin_fail_mode: match self.plugin_fail_mode {
                Some(FailModeDoc::Deny) => FailMode::Deny,
                Some(FailModeDoc::Escalate) | None => FailMode::Escalate,
            },
            plugin_limits: PluginLimits {
                fuel: l.fuel.unwrap_or(dl.fuel),
                deadline: l.deadline_ms.map_or(dl.deadline, Duration::from_millis),
                memory_bytes: l.memory_bytes.unwrap_or(dl.memory_bytes),
                max_input_bytes: l.max_input_bytes.unwrap_or(dl.max_input_bytes),
                max_output_bytes: l.max_output_bytes.unwrap_or(dl.max_output_bytes),
                log_bytes: l.log_bytes.unwrap_or(dl.log_bytes),
            },
            override_bounds: OverrideBounds {
                spend_thresholds: b
                    .spend_thresholds
                    .iter()
                    .flatten()
                    .map(|(currency, r)| ThresholdBound {
                        currency: currency.clone(),
                        min: r.min,
                        max: r.max,
                    })
                    .collect(),
                mint_ratio_percent: b
                    .mint_ratio_percent
                    .map_or(defaults.override_bounds.mint_ratio_percent, |r| {
                        (r.min, r.max)
                    }),
            },
            settings: self
                .settings
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            generic_actions: self.generic_actions.as_ref().map_or_else(
                GenericActions::default,
                |g| GenericActions {
                    declared: g.declared.clone(),
                    undeclared: match g.undeclared {
                        Some(UndeclaredDoc::Escalate) => Undeclared::Escalate,
                        Some(UndeclaredDoc::Deny) | None => Undeclared::Deny,
                    },
                },
            ),
        };
        template.validate(platform_max)?;
        Ok(template)
    }
}

impl OverridesDoc {
    /// Parses an overrides document.
    ///
    /// # Errors
    /// Malformed JSON, a wrong type or an unknown field, named in the message.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        parse_named(json, "overrides")
    }

    /// The document as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The overrides this document describes (not yet checked against any bounds).
    pub fn to_overrides(&self) -> ActorOverrides {
        ActorOverrides {
            spend_thresholds: self
                .spend_thresholds
                .as_ref()
                .map(thresholds)
                .unwrap_or_default(),
            mint_ratio_percent: self.mint_ratio_percent,
        }
    }

    /// The document for `overrides`.
    pub fn from_overrides(overrides: &ActorOverrides) -> Self {
        Self {
            spend_thresholds: (!overrides.spend_thresholds.is_empty())
                .then(|| threshold_map(&overrides.spend_thresholds)),
            mint_ratio_percent: overrides.mint_ratio_percent,
        }
    }
}
