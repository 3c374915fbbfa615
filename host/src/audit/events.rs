//! The audit entries of the domain's records: what a request, a decision, a timeout, a policy
//! change or a plugin change puts in the log. Pure functions; the services call them inside the
//! write they record.

use sha2::{Digest as _, Sha256};

use super::entry::{Entry, Event, PluginOutcome};
use crate::approvals::record::{ApprovalRecord, Method, Status};
use crate::canonical;
use crate::plugin::registry::{PluginState, PluginVersion};
use crate::store::directory::DocumentKind;

/// Entries and the payloads they reference.
#[derive(Debug, Default)]
pub struct Recorded {
    pub entries: Vec<Entry>,
    /// (SHA-256 hex, bytes).
    pub payloads: Vec<(String, Vec<u8>)>,
}

/// SHA-256 of `bytes`, lowercase hex: how payloads are named.
pub fn payload_name(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn params_payload(params: &serde_json::Value, hash: &str) -> Option<(String, Vec<u8>)> {
    // The hash was computed over exactly these canonical bytes when the request arrived.
    canonical::canonical_bytes(params)
        .ok()
        .map(|bytes| (hash.to_owned(), bytes))
}

fn ids(record: &ApprovalRecord) -> (String, String, String) {
    (
        record.id.clone(),
        record.vendor.clone(),
        record.actor.clone(),
    )
}

/// A request as it arrived: the request, each plugin's classification and each built-in rule
/// that fired.
fn classified(record: &ApprovalRecord) -> Recorded {
    let at = record.created_at_ms;
    let mut out = Recorded::default();
    let (approval_id, vendor, actor) = ids(record);
    out.entries.push(Entry::new(
        at,
        Event::RequestReceived {
            approval_id: approval_id.clone(),
            vendor: vendor.clone(),
            actor: actor.clone(),
            action: record.action.clone(),
            params_hash: record.params_hash.clone(),
            idempotency_key: record.idempotency_key.clone(),
            surface: record.provenance.surface.clone(),
            tool: record.provenance.tool.clone(),
            policy_version: record.policy_version,
        },
    ));
    out.payloads
        .extend(params_payload(&record.params, &record.params_hash));
    for run in &record.plugins {
        let result = match (&run.verdict, &run.error) {
            (Some((decision, rule_id, reason)), _) => PluginOutcome::Verdict {
                decision: decision.as_str().to_owned(),
                rule_id: rule_id.clone(),
                reason: reason.clone(),
            },
            (None, Some((code, message))) => PluginOutcome::Error {
                code: code.clone(),
                message: message.clone(),
            },
            (None, None) => PluginOutcome::Error {
                code: "unknown".into(),
                message: String::new(),
            },
        };
        out.entries.push(Entry::new(
            at,
            Event::PluginClassified {
                approval_id: approval_id.clone(),
                vendor: vendor.clone(),
                actor: actor.clone(),
                plugin: run.name.clone(),
                plugin_version: run.version,
                sha256: run.sha256.clone(),
                shadow: run.shadow,
                result,
                fuel_used: run.fuel_used,
                wall_time_us: u64::try_from(run.wall_time.as_micros()).unwrap_or(u64::MAX),
            },
        ));
    }
    for rule in record.rules.iter().filter(|r| r.source == "builtin") {
        out.entries.push(Entry::new(
            at,
            Event::RuleFired {
                approval_id: approval_id.clone(),
                vendor: vendor.clone(),
                actor: actor.clone(),
                rule_id: rule.rule_id.clone(),
                decision: rule.decision.as_str().to_owned(),
                reason: rule.reason.clone(),
            },
        ));
    }
    out
}

/// A request merged into the pending request `into`: how it was classified, then the merge.
pub fn merged(record: &ApprovalRecord, into: &str) -> Recorded {
    let mut out = classified(record);
    let (approval_id, vendor, actor) = ids(record);
    out.entries.push(Entry::new(
        record.created_at_ms,
        Event::Merged {
            approval_id,
            vendor,
            actor,
            into: into.to_owned(),
        },
    ));
    out
}

/// Everything a new request's record says: the request, each plugin's classification, each
/// built-in rule that fired, then the outcome (allowed, denied, sent to a guardian, or refused
/// by the rate limit, whose `limit` is given).
pub fn request(record: &ApprovalRecord, rate_limit: Option<u32>) -> Recorded {
    let at = record.created_at_ms;
    let mut out = classified(record);
    let (approval_id, vendor, actor) = ids(record);
    if record.status == Status::RateLimited {
        out.entries.push(Entry::new(
            at,
            Event::RateLimited {
                approval_id,
                vendor,
                actor,
                limit: rate_limit.unwrap_or(0),
                retry_after_ms: record.retry_after_ms.unwrap_or(at),
            },
        ));
    } else {
        out.entries.push(Entry::new(
            at,
            Event::Decided {
                approval_id,
                vendor,
                actor,
                status: record.status.as_str().to_owned(),
                method: Method::Policy.as_str().to_owned(),
                decider: None,
                rule_id: record.rule_fired.clone(),
                reason: Some(record.reason.clone()),
                guardian_reason_sha256: None,
                granted_params_hash: record.token.as_ref().map(|_| record.params_hash.clone()),
                token_id: record.token.as_ref().map(|t| t.id.clone()),
                expires_at_ms: record.expires_at_ms,
            },
        ));
    }
    out
}

/// A guardian's decision on a pending request (the record as settled).
pub fn decision(record: &ApprovalRecord) -> Recorded {
    let mut out = Recorded::default();
    let reason = record
        .decision_reason
        .as_ref()
        .map(|r| (payload_name(r.as_bytes()), r.as_bytes().to_vec()));
    let granted = match (&record.revised_params, &record.revised_params_hash) {
        (Some(params), Some(hash)) => {
            out.payloads.extend(params_payload(params, hash));
            Some(hash.clone())
        }
        _ => record.token.as_ref().map(|_| record.params_hash.clone()),
    };
    let (approval_id, vendor, actor) = ids(record);
    out.entries.push(Entry::new(
        record.decided_at_ms.unwrap_or(record.created_at_ms),
        Event::Decided {
            approval_id,
            vendor,
            actor,
            status: record.status.as_str().to_owned(),
            method: Method::Human.as_str().to_owned(),
            decider: record.decider.clone(),
            rule_id: None,
            reason: None,
            guardian_reason_sha256: reason.as_ref().map(|r| r.0.clone()),
            granted_params_hash: granted,
            token_id: record.token.as_ref().map(|t| t.id.clone()),
            expires_at_ms: None,
        },
    ));
    out.payloads.extend(reason);
    out
}

/// A pending request that timed out (the record as settled): a decision by `timeout`, at the
/// moment it expired.
pub fn timeout(record: &ApprovalRecord) -> Entry {
    let (approval_id, vendor, actor) = ids(record);
    Entry::new(
        record.decided_at_ms.unwrap_or(record.created_at_ms),
        Event::Decided {
            approval_id,
            vendor,
            actor,
            status: record.status.as_str().to_owned(),
            method: Method::Timeout.as_str().to_owned(),
            decider: None,
            rule_id: None,
            reason: None,
            guardian_reason_sha256: None,
            granted_params_hash: None,
            token_id: None,
            expires_at_ms: None,
        },
    )
}

/// A new version of a vendor's policy template or of an actor's overrides.
pub fn document_changed(
    kind: DocumentKind<'_>,
    version: u32,
    changed_by: &str,
    document: &str,
    at_ms: u64,
) -> Recorded {
    let document_sha256 = payload_name(document.as_bytes());
    let changed_by = changed_by.to_owned();
    let event = match kind {
        DocumentKind::Template { vendor } => Event::PolicyChanged {
            vendor: vendor.to_owned(),
            version,
            changed_by,
            document_sha256: document_sha256.clone(),
        },
        DocumentKind::Overrides { vendor, actor } => Event::OverridesChanged {
            vendor: vendor.to_owned(),
            actor: actor.to_owned(),
            version,
            changed_by,
            document_sha256: document_sha256.clone(),
        },
    };
    Recorded {
        entries: vec![Entry::new(at_ms, event)],
        payloads: vec![(document_sha256, document.as_bytes().to_vec())],
    }
}

/// A plugin version was uploaded.
pub fn plugin_uploaded(version: &PluginVersion) -> Entry {
    Entry::new(
        version.uploaded_at_ms,
        Event::PluginUploaded {
            vendor: version.vendor.clone(),
            plugin: version.name.clone(),
            plugin_version: version.version,
            sha256: version.sha256.clone(),
            size_bytes: version.size_bytes,
            signed: version.signed,
            rules: version.info.rules.iter().map(|r| r.id.clone()).collect(),
        },
    )
}

/// A plugin version's new state.
pub fn plugin_state_changed(version: &PluginVersion, at_ms: u64) -> Entry {
    Entry::new(
        at_ms,
        Event::PluginStateChanged {
            vendor: version.vendor.clone(),
            plugin: version.name.clone(),
            plugin_version: version.version,
            state: match version.state {
                PluginState::Inactive => "inactive",
                PluginState::Shadow => "shadow",
                PluginState::Active => "active",
            }
            .to_owned(),
        },
    )
}
