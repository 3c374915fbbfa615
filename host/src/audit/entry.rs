//! Audit entries: one per event, in a versioned canonical byte encoding. The bytes of an entry
//! are the leaf of the Merkle tree, so this encoding is part of what auditors verify.
//!
//! # Encoding, version 1
//!
//! An entry is one JSON object, UTF-8, without insignificant whitespace, with its members in the
//! order documented below (`v`, `at_ms`, then `event`, whose first member is `type`), integers as
//! JSON integers, strings escaped as `serde_json` writes them (only `"`, `\` and control
//! characters), and absent optional members omitted, never `null`. [`decode`] accepts exactly the
//! bytes [`Entry::encode`] produces for the value it reads: any other spelling of the same entry is
//! refused, so one event has exactly one leaf.
//!
//! ```json
//! {"v":1,"at_ms":1795000000123,"event":{"type":"decided","approval_id":"apr_…","vendor":"acme",…}}
//! ```
//!
//! A later version adds members or event types under a new `v`; a version-1 entry never changes.
//!
//! # Payloads
//!
//! What may be personal (an agent's params, a guardian's free-text reason, a policy document) is
//! not in the entry: the entry holds its SHA-256, and the bytes are kept beside the log as a
//! payload. Redacting a payload deletes those bytes and appends a [`Event::PayloadRedacted`]
//! entry; every leaf, and so every proof, stays as it was.
//!
//! These types are the format itself (the serde derives are the encoding), not domain types:
//! [`super::events`] converts the domain's records into them.

use serde::{Deserialize, Serialize};

/// The encoding version this build writes and reads.
pub const VERSION: u32 = 1;

/// The longest entry [`decode`] reads (entries are a few hundred bytes).
pub const MAX_ENTRY_LEN: usize = 64 * 1024;

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The encoding version, [`VERSION`].
    pub v: u32,
    /// When the event happened, in milliseconds since the Unix epoch, by the host's clock.
    pub at_ms: u64,
    pub event: Event,
}

/// How a plugin's call ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PluginOutcome {
    /// The plugin answered.
    Verdict {
        decision: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        rule_id: String,
        reason: String,
    },
    /// The call failed; the vendor's fail mode applied (unless it was a shadow run).
    Error { code: String, message: String },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// An agent's request arrived and was given an id. The params are the payload
    /// `params_hash` (their RFC 8785 bytes).
    RequestReceived {
        approval_id: String,
        vendor: String,
        actor: String,
        action: String,
        params_hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        surface: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool: Option<String>,
        /// The vendor's policy template version in force.
        policy_version: u32,
    },
    /// One plugin classified the request (a shadow run too: it was recorded, it did not count).
    PluginClassified {
        approval_id: String,
        vendor: String,
        actor: String,
        plugin: String,
        plugin_version: u32,
        /// The component's SHA-256, hex.
        sha256: String,
        shadow: bool,
        result: PluginOutcome,
        fuel_used: u64,
        wall_time_us: u64,
    },
    /// A built-in trigger fired.
    RuleFired {
        approval_id: String,
        vendor: String,
        actor: String,
        rule_id: String,
        decision: String,
        reason: String,
    },
    /// The request was decided, sent to a guardian (`status` `pending`, with `expires_at_ms`),
    /// or timed out (`status` `timed_out`, `method` `timeout`, `at_ms` the moment it expired).
    Decided {
        approval_id: String,
        vendor: String,
        actor: String,
        /// `allowed`, `denied`, `pending`, `approved`, `revised` or `timed_out`.
        status: String,
        /// `policy`, `human` or `timeout`.
        method: String,
        /// The guardian who decided, by their own id (human decisions only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decider: Option<String>,
        /// The rule that decided (policy decisions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule_id: Option<String>,
        /// Why, for policy decisions: the deciding rule's reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The payload holding a guardian's own words, if they gave a reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guardian_reason_sha256: Option<String>,
        /// The params the capability token binds (the amended ones of a revision; also a
        /// payload).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        granted_params_hash: Option<String>,
        /// The capability token's `jti`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_id: Option<String>,
        /// When a pending request times out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// The actor had sent its hourly limit of requests for a guardian; this one was refused.
    RateLimited {
        approval_id: String,
        vendor: String,
        actor: String,
        limit: u32,
        retry_after_ms: u64,
    },
    /// The request needed a guardian while a tiny variation of it (`into`) was pending for the
    /// same actor: it was merged into that one, which its guardians were already asked about.
    Merged {
        approval_id: String,
        vendor: String,
        actor: String,
        into: String,
    },
    /// A vendor's policy template changed; the document is the payload `document_sha256`.
    PolicyChanged {
        vendor: String,
        version: u32,
        changed_by: String,
        document_sha256: String,
    },
    /// A guardian changed an actor's overrides; the document is the payload `document_sha256`.
    OverridesChanged {
        vendor: String,
        actor: String,
        version: u32,
        changed_by: String,
        document_sha256: String,
    },
    /// A vendor uploaded a plugin version.
    PluginUploaded {
        vendor: String,
        plugin: String,
        plugin_version: u32,
        sha256: String,
        size_bytes: u64,
        signed: bool,
        rules: Vec<String>,
    },
    /// A plugin version changed state (`inactive`, `shadow` or `active`).
    PluginStateChanged {
        vendor: String,
        plugin: String,
        plugin_version: u32,
        state: String,
    },
    /// A payload's bytes were deleted (a privacy request); entries keep its hash.
    PayloadRedacted {
        sha256: String,
        by: String,
        reason: String,
    },
}

/// Why bytes are not a version-1 entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("an entry is at most {MAX_ENTRY_LEN} bytes, this one is {0}")]
    TooLong(usize),
    #[error("not an entry: {0}")]
    Malformed(String),
    #[error("entry version {0} is not one this build reads")]
    UnknownVersion(u32),
    #[error("not in canonical form (the same entry has exactly one encoding)")]
    NotCanonical,
}

impl Entry {
    /// A version-1 entry.
    pub fn new(at_ms: u64, event: Event) -> Self {
        Self {
            v: VERSION,
            at_ms,
            event,
        }
    }

    /// The canonical bytes: the Merkle leaf.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Reads an entry from its canonical bytes.
///
/// # Errors
/// Too long, not an entry, an unknown version, or not the canonical encoding.
pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
    if bytes.len() > MAX_ENTRY_LEN {
        return Err(DecodeError::TooLong(bytes.len()));
    }
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    let versioned: Versioned =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if versioned.v != VERSION {
        return Err(DecodeError::UnknownVersion(versioned.v));
    }
    let entry: Entry =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if entry.encode() != bytes {
        return Err(DecodeError::NotCanonical);
    }
    Ok(entry)
}

impl Event {
    /// The event's type, as encoded.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RequestReceived { .. } => "request_received",
            Event::PluginClassified { .. } => "plugin_classified",
            Event::RuleFired { .. } => "rule_fired",
            Event::Decided { .. } => "decided",
            Event::RateLimited { .. } => "rate_limited",
            Event::Merged { .. } => "merged",
            Event::PolicyChanged { .. } => "policy_changed",
            Event::OverridesChanged { .. } => "overrides_changed",
            Event::PluginUploaded { .. } => "plugin_uploaded",
            Event::PluginStateChanged { .. } => "plugin_state_changed",
            Event::PayloadRedacted { .. } => "payload_redacted",
        }
    }

    /// What the store indexes the entry by, so explorers can filter without decoding every
    /// entry. These columns are a convenience: verification reads only the entry's bytes.
    pub fn index(&self) -> EntryIndex<'_> {
        let mut index = EntryIndex {
            kind: self.kind(),
            ..EntryIndex::default()
        };
        match self {
            Event::RequestReceived {
                approval_id,
                vendor,
                actor,
                ..
            }
            | Event::RateLimited {
                approval_id,
                vendor,
                actor,
                ..
            }
            | Event::Merged {
                approval_id,
                vendor,
                actor,
                ..
            } => {
                index.approval_id = Some(approval_id);
                index.vendor = Some(vendor);
                index.actor = Some(actor);
            }
            Event::PluginClassified {
                approval_id,
                vendor,
                actor,
                plugin,
                result,
                ..
            } => {
                index.approval_id = Some(approval_id);
                index.vendor = Some(vendor);
                index.actor = Some(actor);
                index.plugin = Some(plugin);
                if let PluginOutcome::Verdict {
                    decision, rule_id, ..
                } = result
                {
                    index.decision = Some(decision);
                    index.rule = Some(rule_id.as_str()).filter(|r| !r.is_empty());
                }
            }
            Event::RuleFired {
                approval_id,
                vendor,
                actor,
                rule_id,
                decision,
                ..
            } => {
                index.approval_id = Some(approval_id);
                index.vendor = Some(vendor);
                index.actor = Some(actor);
                index.rule = Some(rule_id);
                index.decision = Some(decision);
            }
            Event::Decided {
                approval_id,
                vendor,
                actor,
                status,
                rule_id,
                ..
            } => {
                index.approval_id = Some(approval_id);
                index.vendor = Some(vendor);
                index.actor = Some(actor);
                index.decision = Some(status);
                index.rule = rule_id.as_deref();
            }
            Event::PolicyChanged { vendor, .. } => index.vendor = Some(vendor),
            Event::OverridesChanged { vendor, actor, .. } => {
                index.vendor = Some(vendor);
                index.actor = Some(actor);
            }
            Event::PluginUploaded { vendor, plugin, .. }
            | Event::PluginStateChanged { vendor, plugin, .. } => {
                index.vendor = Some(vendor);
                index.plugin = Some(plugin);
            }
            Event::PayloadRedacted { .. } => {}
        }
        index
    }
}

/// The columns an entry is indexed by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryIndex<'a> {
    pub kind: &'static str,
    pub vendor: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub approval_id: Option<&'a str>,
    pub plugin: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub decision: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn decided() -> Entry {
        Entry::new(
            1_795_000_000_123,
            Event::Decided {
                approval_id: "apr_1".into(),
                vendor: "acme".into(),
                actor: "teddy".into(),
                status: "denied".into(),
                method: "human".into(),
                decider: Some("parent-1".into()),
                rule_id: None,
                reason: None,
                guardian_reason_sha256: Some("ab".repeat(32)),
                granted_params_hash: None,
                token_id: None,
                expires_at_ms: None,
            },
        )
    }

    #[test]
    fn the_encoding_is_the_documented_one_and_round_trips() {
        let entry = decided();
        let bytes = entry.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(
                r#"{"v":1,"at_ms":1795000000123,"event":{"type":"decided","approval_id":"apr_1","#
            ),
            "{text}"
        );
        assert!(!text.contains("null"), "{text}");
        assert_eq!(decode(&bytes).unwrap(), entry);

        let plugin = Entry::new(
            5,
            Event::PluginClassified {
                approval_id: "apr_1".into(),
                vendor: "acme".into(),
                actor: "teddy".into(),
                plugin: "velocity".into(),
                plugin_version: 3,
                sha256: "00".repeat(32),
                shadow: false,
                result: PluginOutcome::Error {
                    code: "plugin_out_of_fuel".into(),
                    message: "ran out of fuel".into(),
                },
                fuel_used: 1000,
                wall_time_us: 12,
            },
        );
        assert_eq!(decode(&plugin.encode()).unwrap(), plugin);
    }

    #[test]
    fn other_spellings_of_the_same_entry_are_refused() {
        let bytes = decided().encode();
        let text = String::from_utf8(bytes).unwrap();
        let spaced = text.replacen(",", ", ", 1);
        assert_eq!(decode(spaced.as_bytes()), Err(DecodeError::NotCanonical));
        let escaped = text.replacen("apr_1", "apr\\u005f1", 1);
        assert_eq!(decode(escaped.as_bytes()), Err(DecodeError::NotCanonical));
        let reordered = text.replacen(
            r#"{"v":1,"at_ms":1795000000123,"#,
            r#"{"at_ms":1795000000123,"v":1,"#,
            1,
        );
        assert_eq!(decode(reordered.as_bytes()), Err(DecodeError::NotCanonical));
        let with_null = text.replacen(
            r#""method":"human","#,
            r#""method":"human","rule_id":null,"#,
            1,
        );
        assert_eq!(decode(with_null.as_bytes()), Err(DecodeError::NotCanonical));
    }

    #[test]
    fn unknown_versions_fields_and_garbage_are_refused() {
        let text = String::from_utf8(decided().encode()).unwrap();
        assert_eq!(
            decode(text.replacen(r#"{"v":1"#, r#"{"v":2"#, 1).as_bytes()),
            Err(DecodeError::UnknownVersion(2))
        );
        assert!(matches!(
            decode(
                text.replacen(r#""status""#, r#""extra":1,"status""#, 1)
                    .as_bytes()
            ),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"\xff\x00"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(decode(b""), Err(DecodeError::Malformed(_))));
        assert_eq!(
            decode(&vec![b' '; MAX_ENTRY_LEN + 1]),
            Err(DecodeError::TooLong(MAX_ENTRY_LEN + 1))
        );
    }
}
