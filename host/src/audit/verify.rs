//! Offline verification: the export format, the verifier that rebuilds the tree from an export
//! and checks it against the signed checkpoints, and receipt verification. Everything here trusts
//! nothing but the log's public key (and, optionally, checkpoints the auditor kept from earlier).
//!
//! # Export format
//!
//! JSON Lines, one object per line, in this order:
//!
//! 1. a header: `{"format":"approval-host-audit-export","version":1,"origin":…,"vkey":…,"size":N}`;
//! 2. every entry in index order, `{"index":i,"entry":"<base64 bytes>","leaf":"<base64>"}`, where
//!    `leaf` is the leaf hash the log stored when the entry was appended (it lets the verifier name
//!    an edited entry; verification itself recomputes every hash from `entry`);
//! 3. each signed checkpoint, `{"checkpoint":"<signed note>"}`, right after the entry that
//!    completes its tree (so a verifier needs only O(log n) memory), and any checkpoint larger than
//!    the log at the end;
//! 4. the payloads still held, `{"payload":"<sha256 hex>","bytes":"<base64>"}`.
//!
//! The verifier reads the same objects in any order for checkpoints and payloads, but entries
//! must come in index order.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{BufRead, Read as _, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::checkpoint::{Checkpoint, CheckpointError, CheckpointVerifier};
use super::entry::{self, Entry, Event};
use super::merkle::{self, Frontier, Hash};
use super::{AuditError, Receipt};
use crate::store::Db;
use crate::store::audit as rows;

/// The `format` of an export's header.
pub const FORMAT: &str = "approval-host-audit-export";

/// The longest export line read (a checkpoint note is at most 1 MB; entries are far smaller).
const MAX_LINE: u64 = 2 * 1024 * 1024;

/// The most failures a report lists (the first one is what matters).
const MAX_FAILURES: usize = 50;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    origin: String,
    vkey: String,
    size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Line {
    Entry {
        index: u64,
        entry: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leaf: Option<String>,
    },
    Checkpoint {
        checkpoint: String,
    },
    Payload {
        payload: String,
        bytes: String,
    },
}

fn write_line(out: &mut (dyn Write + Send), value: &impl Serialize) -> Result<(), AuditError> {
    let mut line = serde_json::to_vec(value)
        .map_err(|e| crate::store::StoreError::Corrupt(format!("export line: {e}")))?;
    line.push(b'\n');
    out.write_all(&line).map_err(io_error)
}

fn io_error(e: std::io::Error) -> AuditError {
    AuditError::Store(crate::store::StoreError::Corrupt(format!(
        "writing the export: {e}"
    )))
}

/// Writes the whole log to `out` in the export format; returns the number of entries written.
/// The export covers the log as it was when it started: its entries up to the larger of the
/// log's size and the newest checkpoint (a log truncated below a checkpoint shows as such), and
/// the checkpoints up to that size.
///
/// # Errors
/// A database failure or a write error.
pub async fn export(
    db: &Db,
    origin: &str,
    vkey: &str,
    out: &mut (dyn Write + Send),
) -> Result<u64, AuditError> {
    const PAGE: u64 = 5_000;
    const CHECKPOINT_PAGE: u32 = 1_000;
    let size = rows::size(db).await?;
    let newest = rows::latest_checkpoint(db).await?.map_or(0, |c| c.size);
    let limit = size.max(newest);
    write_line(
        out,
        &Header {
            format: FORMAT.to_owned(),
            version: 1,
            origin: origin.to_owned(),
            vkey: vkey.to_owned(),
            size,
        },
    )?;
    let mut checkpoints = std::collections::VecDeque::new();
    let mut last_loaded = 0;
    let mut more = true;
    let mut written = 0;
    let mut at = 0;
    // Entries (with their stored leaves), each followed by the checkpoints it completes.
    loop {
        let page = rows::entries(db, at, limit.min(at + PAGE)).await?;
        let Some(last) = page.last() else {
            if at >= limit {
                break;
            }
            // A gap (deleted rows): go on after it, the verifier will name it.
            at = rows::next_entry(db, at)
                .await?
                .map_or(limit, |i| i.min(limit));
            continue;
        };
        at = last.index + 1;
        let leaf_indexes: Vec<u64> = page.iter().map(|e| merkle::leaf_index(e.index)).collect();
        let mut conn = db
            .pool()
            .acquire()
            .await
            .map_err(crate::store::StoreError::from)?;
        let leaves: BTreeMap<u64, Hash> = rows::read_hashes(&mut conn, &leaf_indexes)
            .await?
            .into_iter()
            .collect();
        drop(conn);
        for stored in page {
            write_line(
                out,
                &Line::Entry {
                    index: stored.index,
                    entry: STANDARD.encode(&stored.bytes),
                    leaf: leaves
                        .get(&merkle::leaf_index(stored.index))
                        .map(|h| STANDARD.encode(h.0)),
                },
            )?;
            written += 1;
            loop {
                if checkpoints.is_empty() && more {
                    let page = rows::checkpoints_after(db, last_loaded, CHECKPOINT_PAGE).await?;
                    more = page.len() == CHECKPOINT_PAGE as usize;
                    last_loaded = page.last().map_or(last_loaded, |c| c.size);
                    checkpoints.extend(page.into_iter().filter(|c| c.size <= limit));
                }
                match checkpoints.front() {
                    Some(c) if c.size <= stored.index + 1 => {
                        let note = checkpoints.pop_front().map(|c| c.note).unwrap_or_default();
                        write_line(out, &Line::Checkpoint { checkpoint: note })?;
                    }
                    _ => break,
                }
            }
        }
    }
    // Checkpoints beyond the last entry (a truncated log) go last.
    loop {
        for c in checkpoints.drain(..) {
            write_line(out, &Line::Checkpoint { checkpoint: c.note })?;
        }
        if !more {
            break;
        }
        let page = rows::checkpoints_after(db, last_loaded, CHECKPOINT_PAGE).await?;
        more = page.len() == CHECKPOINT_PAGE as usize;
        last_loaded = page.last().map_or(last_loaded, |c| c.size);
        checkpoints.extend(page.into_iter().filter(|c| c.size <= limit));
    }
    let mut after = String::new();
    loop {
        let page = rows::payloads_after(db, &after, 1_000).await?;
        let Some((last, _)) = page.last() else { break };
        after.clone_from(last);
        for (name, bytes) in page {
            write_line(
                out,
                &Line::Payload {
                    payload: name,
                    bytes: STANDARD.encode(bytes),
                },
            )?;
        }
    }
    out.flush().map_err(io_error)?;
    Ok(written)
}

/// Something in an export that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A line that is not part of the format.
    MalformedLine { line: u64, reason: String },
    /// Entry indexes skip or repeat: rows were deleted or inserted.
    OutOfOrder {
        line: u64,
        expected: u64,
        found: u64,
    },
    /// The bytes of an entry are not a valid entry.
    BadEntry { index: u64, reason: String },
    /// An entry's bytes do not hash to the leaf hash stored when it was appended: it was edited.
    EditedEntry { index: u64 },
    /// A checkpoint whose signature does not verify with the key.
    BadCheckpoint { line: u64, reason: String },
    /// The entries do not rebuild the tree a signed checkpoint names; an entry after `after` (the
    /// last checkpoint that matched) and before `size` was altered, inserted or removed.
    CheckpointMismatch { size: u64, after: u64 },
    /// Two validly signed checkpoints cannot both describe one log: a forked history was signed.
    Fork { older: u64, newer: u64 },
    /// A signed checkpoint covers entries the export does not have: the newest entries were
    /// deleted.
    Truncated { checkpoint: u64, entries: u64 },
    /// A payload whose bytes do not hash to its name.
    BadPayload { sha256: String },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::MalformedLine { line, reason } => {
                write!(f, "line {line} is not part of an audit export: {reason}")
            }
            Failure::OutOfOrder {
                line,
                expected,
                found,
            } => write!(
                f,
                "line {line}: expected entry {expected} but found entry {found}: entries were deleted or inserted"
            ),
            Failure::BadEntry { index, reason } => {
                write!(f, "entry {index} is not a valid entry: {reason}")
            }
            Failure::EditedEntry { index } => write!(
                f,
                "entry {index} does not verify: its bytes do not hash to the leaf the log stored when it was appended (it was edited)"
            ),
            Failure::BadCheckpoint { line, reason } => {
                write!(f, "the checkpoint on line {line} does not verify: {reason}")
            }
            Failure::CheckpointMismatch { size, after } => write!(
                f,
                "the entries do not match the checkpoint signed for {size} entries: an entry from {after} to {} was altered, inserted or removed",
                size - 1
            ),
            Failure::Fork { older, newer } => write!(
                f,
                "forked history: the checkpoints signed for {older} and {newer} entries describe two different logs (the entries match the one of {newer})"
            ),
            Failure::Truncated {
                checkpoint,
                entries,
            } => write!(
                f,
                "the log was truncated: a checkpoint was signed for {checkpoint} entries but only {entries} remain (entries {entries} to {} were deleted)",
                checkpoint - 1
            ),
            Failure::BadPayload { sha256 } => {
                write!(f, "payload {sha256} does not match its hash")
            }
        }
    }
}

/// What the verifier found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The origin the header names.
    pub origin: String,
    pub entries: u64,
    /// Signed checkpoints that verified against the rebuilt tree.
    pub checkpoints_verified: u64,
    /// The largest tree size a verified checkpoint covers.
    pub verified_size: u64,
    /// Entries after the newest checkpoint: in the log, not yet signed.
    pub unsigned_entries: u64,
    pub payloads: u64,
    /// Payloads entries name that were deleted by a recorded redaction.
    pub redacted_payloads: u64,
    /// Payloads entries name that are neither present nor recorded as redacted.
    pub absent_payloads: u64,
    /// In the order found; the first is the first thing that does not verify.
    pub failures: Vec<Failure>,
}

impl Report {
    /// Whether everything verified.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn fail(&mut self, failure: Failure) {
        if self.failures.len() < MAX_FAILURES && !self.failures.contains(&failure) {
            self.failures.push(failure);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failures.first() {
            None => writeln!(f, "OK: the audit log {} verifies", self.origin)?,
            Some(first) => writeln!(f, "FAILED: {first}")?,
        }
        writeln!(
            f,
            "{} entries; {} signed checkpoints verified, the newest covering {} entries; {} entries not yet in a checkpoint",
            self.entries, self.checkpoints_verified, self.verified_size, self.unsigned_entries
        )?;
        writeln!(
            f,
            "{} payloads held, {} redacted, {} absent",
            self.payloads, self.redacted_payloads, self.absent_payloads
        )?;
        for more in self.failures.iter().skip(1) {
            writeln!(f, "also: {more}")?;
        }
        Ok(())
    }
}

/// Why an export could not be verified at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Key(#[from] CheckpointError),
    #[error("reading the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("the export has no header line")]
    NoHeader,
    #[error("the export is for the log {found:?}, but the key is for {expected:?}")]
    WrongLog { expected: String, found: String },
    #[error("a trusted checkpoint does not verify: {0}")]
    BadTrustedCheckpoint(CheckpointError),
}

/// The streaming verifier's state.
struct Verifier {
    key: CheckpointVerifier,
    frontier: Frontier,
    /// Signed checkpoints waiting for the tree to reach their size, by size.
    waiting: BTreeMap<u64, Vec<Checkpoint>>,
    /// The largest checkpoint that matched the entries so far.
    matched: u64,
    /// Checkpoints that did not match, oldest first (a later match makes them a fork).
    mismatched: Vec<u64>,
    referenced: HashSet<String>,
    redacted: HashSet<String>,
    held: HashSet<String>,
    report: Report,
}

impl Verifier {
    fn checkpoint(&mut self, checkpoint: Checkpoint) {
        if checkpoint.size == 0 {
            return;
        }
        self.waiting
            .entry(checkpoint.size)
            .or_default()
            .push(checkpoint);
        self.settle();
    }

    /// Checks every waiting checkpoint the tree has reached.
    fn settle(&mut self) {
        let size = self.frontier.size();
        let Some(found) = self.waiting.remove(&size) else {
            return;
        };
        let root = self.frontier.root();
        for checkpoint in found {
            if checkpoint.root == root {
                self.report.checkpoints_verified += 1;
                self.report.verified_size = self.report.verified_size.max(size);
                // Earlier signed checkpoints that the entries contradict, under a later one they
                // match: two histories were signed. Name it as the fork it is.
                for older in std::mem::take(&mut self.mismatched) {
                    let fork = Failure::Fork { older, newer: size };
                    match self.report.failures.iter().position(
                        |f| matches!(f, Failure::CheckpointMismatch { size, .. } if *size == older),
                    ) {
                        Some(at) => self.report.failures[at] = fork,
                        None => self.report.fail(fork),
                    }
                }
                self.matched = size;
            } else {
                self.report.fail(Failure::CheckpointMismatch {
                    size,
                    after: self.matched,
                });
                self.mismatched.push(size);
            }
        }
    }

    fn entry(&mut self, line: u64, index: u64, bytes: &[u8], stored_leaf: Option<&[u8]>) {
        let expected = self.frontier.size();
        if index != expected {
            self.report.fail(Failure::OutOfOrder {
                line,
                expected,
                found: index,
            });
        }
        let leaf = merkle::leaf_hash(bytes);
        if let Some(stored) = stored_leaf
            && stored != leaf.0
        {
            self.report.fail(Failure::EditedEntry { index });
        }
        match entry::decode(bytes) {
            Ok(Entry { event, .. }) => self.note_payloads(&event),
            Err(e) => self.report.fail(Failure::BadEntry {
                index,
                reason: e.to_string(),
            }),
        }
        self.frontier.push(leaf);
        self.report.entries += 1;
        self.settle();
    }

    fn note_payloads(&mut self, event: &Event) {
        match event {
            Event::RequestReceived { params_hash, .. } => {
                self.referenced.insert(params_hash.clone());
            }
            Event::Decided {
                guardian_reason_sha256,
                granted_params_hash,
                ..
            } => {
                self.referenced
                    .extend(guardian_reason_sha256.iter().cloned());
                self.referenced.extend(granted_params_hash.iter().cloned());
            }
            Event::PolicyChanged {
                document_sha256, ..
            }
            | Event::OverridesChanged {
                document_sha256, ..
            } => {
                self.referenced.insert(document_sha256.clone());
            }
            Event::PayloadRedacted { sha256, .. } => {
                self.redacted.insert(sha256.clone());
            }
            _ => {}
        }
    }

    fn finish(mut self) -> Report {
        let entries = self.frontier.size();
        for (&size, _) in self.waiting.range(entries + 1..) {
            self.report.fail(Failure::Truncated {
                checkpoint: size,
                entries,
            });
        }
        self.report.unsigned_entries = entries - self.report.verified_size.min(entries);
        let absent: Vec<&String> = self
            .referenced
            .iter()
            .filter(|r| !self.held.contains(*r))
            .collect();
        self.report.redacted_payloads = absent
            .iter()
            .filter(|r| self.redacted.contains(**r))
            .count() as u64;
        self.report.absent_payloads = absent.len() as u64 - self.report.redacted_payloads;
        self.report
    }
}

fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    reader.by_ref().take(MAX_LINE).read_until(b'\n', buf)
}

/// Verifies an export against the log's public key `vkey`, and against checkpoints the auditor
/// kept from earlier (`trusted`: signed notes, e.g. from receipts), which the log must extend.
///
/// # Errors
/// The key is not a verifier key, the export has no usable header or is for another log, a
/// trusted checkpoint does not verify, or reading fails. Everything else that does not verify
/// is a [`Failure`] in the report.
pub fn verify_export(
    mut export: impl BufRead,
    vkey: &str,
    trusted: &[String],
) -> Result<Report, VerifyError> {
    let key = CheckpointVerifier::new(vkey)?;
    let mut buf = Vec::new();
    read_line(&mut export, &mut buf)?;
    let header: Header = serde_json::from_slice(&buf).map_err(|_| VerifyError::NoHeader)?;
    if header.format != FORMAT || header.version != 1 {
        return Err(VerifyError::NoHeader);
    }
    if header.origin != key.origin() {
        return Err(VerifyError::WrongLog {
            expected: key.origin().to_owned(),
            found: header.origin,
        });
    }
    let mut verifier = Verifier {
        key,
        frontier: Frontier::new(),
        waiting: BTreeMap::new(),
        matched: 0,
        mismatched: Vec::new(),
        referenced: HashSet::new(),
        redacted: HashSet::new(),
        held: HashSet::new(),
        report: Report {
            origin: header.origin,
            ..Report::default()
        },
    };
    for note in trusted {
        let checkpoint = verifier
            .key
            .open(note)
            .map_err(VerifyError::BadTrustedCheckpoint)?;
        verifier.checkpoint(checkpoint);
    }
    let mut line_no = 1;
    loop {
        let read = read_line(&mut export, &mut buf)?;
        if read == 0 {
            break;
        }
        line_no += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = match serde_json::from_slice::<Line>(&buf) {
            Ok(line) => line,
            Err(e) => {
                verifier.report.fail(Failure::MalformedLine {
                    line: line_no,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        match line {
            Line::Entry { index, entry, leaf } => {
                let bytes = STANDARD.decode(&entry);
                let leaf = leaf.map(|l| STANDARD.decode(l)).transpose();
                match (bytes, leaf) {
                    (Ok(bytes), Ok(leaf)) => {
                        verifier.entry(line_no, index, &bytes, leaf.as_deref());
                    }
                    _ => verifier.report.fail(Failure::MalformedLine {
                        line: line_no,
                        reason: "entry or leaf is not base64".into(),
                    }),
                }
            }
            Line::Checkpoint { checkpoint } => match verifier.key.open(&checkpoint) {
                Ok(checkpoint) => verifier.checkpoint(checkpoint),
                Err(e) => verifier.report.fail(Failure::BadCheckpoint {
                    line: line_no,
                    reason: e.to_string(),
                }),
            },
            Line::Payload { payload, bytes } => match STANDARD.decode(&bytes) {
                Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == payload => {
                    verifier.report.payloads += 1;
                    verifier.held.insert(payload);
                }
                _ => verifier
                    .report
                    .fail(Failure::BadPayload { sha256: payload }),
            },
        }
    }
    Ok(verifier.finish())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptJson {
    approval_id: String,
    checkpoint: String,
    entries: Vec<ReceiptEntryJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptEntryJson {
    index: u64,
    /// Base64 of the entry's canonical bytes.
    entry: String,
    /// Base64 hashes, leaf to root.
    proof: Vec<String>,
}

impl Receipt {
    /// The published JSON form: `{"approval_id", "checkpoint" (the signed note), "entries":
    /// [{"index", "entry" (base64), "proof" (base64 hashes)}]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&ReceiptJson {
            approval_id: self.approval_id.clone(),
            checkpoint: self.checkpoint.clone(),
            entries: self
                .entries
                .iter()
                .map(|e| ReceiptEntryJson {
                    index: e.index,
                    entry: STANDARD.encode(&e.entry),
                    proof: e.proof.iter().map(|h| STANDARD.encode(h.0)).collect(),
                })
                .collect(),
        })
        .unwrap_or_default()
    }

    /// Reads the JSON form (nothing is verified yet: see [`Receipt::verify`]).
    ///
    /// # Errors
    /// Not a receipt, or base64 or hashes that do not decode.
    pub fn from_json(json: &str) -> Result<Self, ReceiptError> {
        let malformed = |reason: String| ReceiptError::Malformed(reason);
        let parsed: ReceiptJson =
            serde_json::from_str(json).map_err(|e| malformed(e.to_string()))?;
        let entries = parsed
            .entries
            .into_iter()
            .map(|e| {
                Ok(super::ReceiptEntry {
                    index: e.index,
                    entry: STANDARD
                        .decode(&e.entry)
                        .map_err(|err| malformed(err.to_string()))?,
                    proof: e
                        .proof
                        .iter()
                        .map(|h| {
                            let bytes = STANDARD
                                .decode(h)
                                .map_err(|err| malformed(err.to_string()))?;
                            merkle::hash_from_bytes(&bytes)
                                .map_err(|err| malformed(err.to_string()))
                        })
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, ReceiptError>>()?;
        Ok(Self {
            approval_id: parsed.approval_id,
            checkpoint: parsed.checkpoint,
            entries,
        })
    }
}

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the receipt's checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("entry {index} is not a valid entry: {reason}")]
    BadEntry { index: u64, reason: String },
    #[error("entry {index} is about another approval")]
    OtherApproval { index: u64 },
    #[error("entry {index} is not in the checkpointed log: {reason}")]
    NotIncluded { index: u64, reason: String },
    #[error("the receipt has no entries")]
    Empty,
    #[error("not a receipt: {0}")]
    Malformed(String),
}

fn approval_of(event: &Event) -> Option<&str> {
    match event {
        Event::RequestReceived { approval_id, .. }
        | Event::PluginClassified { approval_id, .. }
        | Event::RuleFired { approval_id, .. }
        | Event::Decided { approval_id, .. }
        | Event::RateLimited { approval_id, .. }
        | Event::Merged { approval_id, .. } => Some(approval_id),
        _ => None,
    }
}

/// Verifies a receipt with the log's key; returns its entries, decoded.
///
/// # Errors
/// The first thing that does not verify.
pub fn verify_receipt(
    receipt: &Receipt,
    key: &CheckpointVerifier,
) -> Result<Vec<Entry>, ReceiptError> {
    let checkpoint = key.open(&receipt.checkpoint)?;
    if receipt.entries.is_empty() {
        return Err(ReceiptError::Empty);
    }
    receipt
        .entries
        .iter()
        .map(|e| {
            let decoded = entry::decode(&e.entry).map_err(|err| ReceiptError::BadEntry {
                index: e.index,
                reason: err.to_string(),
            })?;
            if approval_of(&decoded.event) != Some(receipt.approval_id.as_str()) {
                return Err(ReceiptError::OtherApproval { index: e.index });
            }
            let proof: Vec<&[u8]> = e.proof.iter().map(|h| h.0.as_slice()).collect();
            merkle::verify_inclusion(
                e.index,
                checkpoint.size,
                &merkle::leaf_hash(&e.entry).0,
                &proof,
                &checkpoint.root.0,
            )
            .map_err(|err| ReceiptError::NotIncluded {
                index: e.index,
                reason: err.to_string(),
            })?;
            Ok(decoded)
        })
        .collect()
}
