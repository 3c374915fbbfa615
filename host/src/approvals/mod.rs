//! The approval service: turns "an agent wants to do X" into an allowed request with a
//! capability token, a denial with its rule, or a pending request a guardian settles (approve,
//! deny, revise) before it times out; exactly once, across processes sharing one database.
//!
//! - [`record`]: the decision record every request leaves;
//! - [`action`]: reading an action kind and its JSON params.

pub mod action;
pub mod record;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::audit::{AuditLog, Audited, BulkItem, BulkOutcomes, Scope, events};
use crate::canonical::{self, CanonicalError};
use crate::clock::Clock;
use crate::plugin::registry::PluginRegistry;
use crate::policy::document::{OverridesDoc, TemplateDoc};
use crate::policy::{self, ActorOverrides, Assessment, PluginVerdict, PolicyError, PolicyTemplate};
use crate::risk::{Action, ClassifyInput, Decision, RiskRequest};
use crate::store::approvals::{self as rows, Inserted, Settlement};
use crate::store::cache::{Cached, Topic};
use crate::store::directory::{self, ActorRow, DocumentKind, DocumentVersion};
use crate::store::{Backend, Db, StoreError, plugin_stats};
use crate::text;
use crate::token::{CapabilityClaims, DecisionMethod, Grant, TokenError, TokenIssuer};
use record::{
    ApprovalRecord, FiredRule, IssuedToken, Method, PluginRun, Provenance, Route, Status,
};

/// Errors of the approval service, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no such vendor")]
    UnknownVendor,
    #[error("no such actor")]
    UnknownActor,
    #[error("no such approval")]
    NotFound,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid params: {0}")]
    InvalidParams(#[from] CanonicalError),
    #[error("this idempotency key was already used for a different request")]
    IdempotencyConflict,
    #[error("already decided: {}", .0.status.as_str())]
    AlreadyDecided(Box<ApprovalRecord>),
    #[error("the approval request timed out before a decision")]
    Expired(Box<ApprovalRecord>),
    #[error("the revision widens the request: {0}")]
    RevisionNotNarrower(String),
    /// A replay is already running for this vendor, or the host runs as many as it allows.
    #[error("a replay is already running: try again when it has finished")]
    ReplayBusy,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("capability token: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApprovalError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApprovalError::UnknownVendor => "vendor_not_found",
            ApprovalError::UnknownActor => "actor_not_found",
            ApprovalError::NotFound => "approval_not_found",
            ApprovalError::InvalidRequest(_) => "invalid_request",
            ApprovalError::InvalidParams(_) => "invalid_params",
            ApprovalError::IdempotencyConflict => "idempotency_key_reused",
            ApprovalError::AlreadyDecided(_) => "already_decided",
            ApprovalError::Expired(_) => "approval_timeout",
            ApprovalError::RevisionNotNarrower(_) => "revision_not_narrower",
            ApprovalError::ReplayBusy => "replay_busy",
            ApprovalError::Policy(e) => e.code(),
            ApprovalError::Token(_) | ApprovalError::Store(_) => "internal",
        }
    }
}

/// An agent's request.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub vendor: String,
    pub actor: String,
    /// The action kind: "payment", "cred.put", "memory.write", "capability.mint" or any other.
    pub action: String,
    /// The action's parameters, a JSON object.
    pub params: Value,
    /// Retrying with the same key returns the first request's outcome.
    pub idempotency_key: Option<String>,
    pub provenance: Provenance,
}

impl NewRequest {
    /// Checks the texts the agent chose that reach the record and its audit entries: the
    /// idempotency key and the provenance (the action and params are checked when parsed).
    ///
    /// # Errors
    /// The field that is wrong and how.
    pub fn check_texts(&self) -> Result<(), String> {
        if let Some(key) = &self.idempotency_key {
            text::check_field("idempotency_key", key, text::ID)?;
        }
        text::check_field("provenance.surface", &self.provenance.surface, text::LABEL)?;
        if let Some(tool) = &self.provenance.tool {
            text::check_field("provenance.tool", tool, text::LABEL)?;
        }
        Ok(())
    }
}

/// How a request was answered.
#[derive(Debug, Clone)]
pub struct Requested {
    pub record: ApprovalRecord,
    /// How the record relates to this call.
    pub relation: Relation,
}

/// Whether a request created its record or found an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// A new record.
    Created,
    /// The same idempotency key was used before: this is that request's record, as it is now.
    Replayed,
    /// An identical request is still pending: this one joined it, and no guardian is notified
    /// again.
    JoinedPending,
    /// A tiny variation of a request still pending (see [`action::is_tiny_variation`]): merged
    /// into it (counted by the rate limit and the history, audited), and no guardian is notified
    /// again. The record is the pending one, whose params the agent may be granted.
    Merged,
}

/// A guardian's decision on a pending request.
#[derive(Debug, Clone, PartialEq)]
pub enum GuardianDecision {
    Approve,
    Deny {
        reason: Option<String>,
    },
    /// Approve amended params (of the same action); the token binds the amended params only.
    Revise {
        params: Value,
    },
}

/// Something guardians and agents may want to hear about as it happens. Cheap to clone: every
/// push stream gets a copy.
#[derive(Debug, Clone)]
pub enum ApprovalEvent {
    /// A request now waits for the actor's guardians.
    Pending(Arc<Notice<ApprovalRecord>>),
    /// A pending request was settled (by a guardian or by its timeout).
    Settled(Arc<Notice<ApprovalRecord>>),
    /// An actor's request volume jumped far above its baseline.
    Flagged(Arc<Notice<rows::Flag>>),
}

impl ApprovalEvent {
    /// The guardians of the actor the event is about: who may hear of it.
    pub fn guardians(&self) -> &Guardians {
        match self {
            ApprovalEvent::Pending(n) | ApprovalEvent::Settled(n) => &n.guardians,
            ApprovalEvent::Flagged(n) => &n.guardians,
        }
    }

    /// Where the event happened.
    pub fn origin(&self) -> Origin {
        match self {
            ApprovalEvent::Pending(n) | ApprovalEvent::Settled(n) => n.origin,
            ApprovalEvent::Flagged(n) => n.origin,
        }
    }

    /// The (vendor, actor) the event is about.
    pub fn actor(&self) -> (&str, &str) {
        match self {
            ApprovalEvent::Pending(n) | ApprovalEvent::Settled(n) => (&n.vendor, &n.actor),
            ApprovalEvent::Flagged(n) => (&n.vendor, &n.actor),
        }
    }
}

/// Where an event happened: on this process, or on another replica (relayed by the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Here,
    OtherReplica,
}

/// An actor's guardians, sorted and shared. Every event about the actor carries them, and each
/// push stream asks whether its own guardian is among them: a binary search, so that an actor
/// with a thousand guardians' streams open costs a thousand short lookups per event, not a
/// thousand scans of the list (and a copy of it per event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guardians(Arc<[String]>);

impl Guardians {
    pub fn new(mut ids: Vec<String>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        Self(ids.into())
    }

    /// Whether `id` is one of them.
    pub fn contains(&self, id: &str) -> bool {
        self.0.binary_search_by(|g| g.as_str().cmp(id)).is_ok()
    }

    /// Them, in byte order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// An event's subject with who may hear of it. Dereferences to the subject.
#[derive(Debug, Clone)]
pub struct Notice<T> {
    pub subject: T,
    /// The actor's guardians when the event happened.
    pub guardians: Guardians,
    pub origin: Origin,
    /// The subject as push streams send it, rendered once by the first stream that sends it:
    /// a guardian with a thousand streams open costs one serialization, not a thousand.
    pub rendered: OnceLock<String>,
}

impl<T> Notice<T> {
    pub fn new(subject: T, guardians: Guardians, origin: Origin) -> Self {
        Self {
            subject,
            guardians,
            origin,
            rendered: OnceLock::new(),
        }
    }
}

impl<T> std::ops::Deref for Notice<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.subject
    }
}

/// Tunables of the service that are the platform's, not a vendor's.
#[derive(Debug, Clone)]
pub struct ApprovalConfig {
    /// Flag an actor when its last hour has at least this many requests...
    pub flag_min_requests: u32,
    /// ...and this many times its average hour of the day before.
    pub flag_factor: u32,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            flag_min_requests: 30,
            flag_factor: 5,
        }
    }
}

/// The process-wide approval service.
pub struct ApprovalService {
    db: Db,
    /// Every write that decides or changes something commits through the log, with its entries.
    audit: Arc<AuditLog>,
    plugins: Arc<PluginRegistry>,
    tokens: Arc<TokenIssuer>,
    clock: Arc<dyn Clock>,
    config: ApprovalConfig,
    /// Fan-out of events to the push streams; a slow listener loses old events, never blocks.
    events: broadcast::Sender<ApprovalEvent>,
    /// What every request reads and hardly anything changes (see [`crate::store::cache`]).
    cached: Settings,
    /// The vendors whose replay is running: one each, [`MAX_REPLAYS`] on the host.
    replays: Replays,
}

/// The most plugin replays the host runs at once (each reads up to 5,000 records and runs the
/// plugin over each).
pub const MAX_REPLAYS: usize = 2;

/// The vendors whose plugin replay is running.
#[derive(Debug, Default)]
struct Replays(std::sync::Mutex<std::collections::HashSet<String>>);

impl Replays {
    /// A place for `vendor`'s replay: none while another of its replays runs or the host runs
    /// [`MAX_REPLAYS`].
    fn enter(&self, vendor: &str) -> Result<ReplaySlot<'_>, ApprovalError> {
        let mut running = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.len() >= MAX_REPLAYS || !running.insert(vendor.to_owned()) {
            return Err(ApprovalError::ReplayBusy);
        }
        Ok(ReplaySlot {
            replays: self,
            vendor: vendor.to_owned(),
        })
    }
}

/// A running replay's place, given back when it ends.
struct ReplaySlot<'a> {
    replays: &'a Replays,
    vendor: String,
}

impl Drop for ReplaySlot<'_> {
    fn drop(&mut self) {
        self.replays
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.vendor);
    }
}

/// Cached settings: what a request reads of its actor, actors' guardians, vendors' templates.
struct Settings {
    actors: Cached<(String, String), Arc<ActorSettings>>,
    guardians: Cached<(String, String), Guardians>,
    templates: Cached<String, (u32, PolicyTemplate)>,
}

/// What a request reads of its actor: its device tags and the overrides in force with their
/// version (0 when none were set). Read together in one statement: a fleet's devices that ask
/// less than once a minute find them out of the cache at every request.
#[derive(Debug, Default)]
struct ActorSettings {
    tags: Vec<String>,
    overrides: (u32, ActorOverrides),
}

/// The most actors and vendors whose settings are cached.
const CACHED_ACTORS: usize = 200_000;
const CACHED_VENDORS: usize = 10_000;

impl std::fmt::Debug for ApprovalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalService").finish_non_exhaustive()
    }
}

/// A new id: `<prefix>_` and 32 hex digits, the first 12 the time in milliseconds and the
/// rest 80 random bits. Ids made later sort later, so new rows land at the end of the indexes
/// on them (random ids would scatter every insert over the whole index).
fn new_id(prefix: &str) -> String {
    use rand::RngExt as _;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let random = rand::rng().random::<u128>() & ((1 << 80) - 1);
    format!("{prefix}_{:012x}{random:020x}", now_ms & 0xffff_ffff_ffff)
}

/// One past request as a plugin version judges it again.
#[derive(Debug, Clone)]
pub struct ReplayItem {
    pub approval_id: String,
    pub created_at_ms: u64,
    pub action: String,
    /// What the same plugin (its active version then) answered, if it ran: decision and rule.
    pub recorded: Option<(Decision, String)>,
    /// What this version answers now: decision, rule and reason, or the failure's code.
    pub replayed: Result<(Decision, String, String), String>,
    /// What the request's outcome was: allow, escalate (a human was asked) or deny.
    pub outcome_before: Decision,
    /// What it would be with this version's answer in place of the plugin's recorded one.
    pub outcome_after: Decision,
    /// The plugin ran on the request and this version decides differently (or fails).
    pub verdict_changed: bool,
}

/// How a plugin version would have judged a vendor's past requests.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub compared: u32,
    /// Requests the plugin ran on where this version decides differently (or fails).
    pub verdicts_changed: u32,
    /// Requests whose outcome would change.
    pub outcomes_changed: u32,
    /// Requests on which this version failed.
    pub failures: u32,
    /// Every request replayed, newest first.
    pub items: Vec<ReplayItem>,
}

/// The outcome a record had, as a decision.
fn outcome_of(record: &ApprovalRecord) -> Decision {
    match (record.status, record.decision_method) {
        (Status::Allowed, _) => Decision::Allow,
        (Status::Denied, Some(Method::Policy)) => Decision::Deny,
        _ => Decision::Escalate,
    }
}

/// The most expired requests one sweep transaction settles.
pub const SWEEP_BATCH: u32 = 1_000;

/// What storing a new request's record did.
enum NewRecord {
    /// Stored, with the volume flag it raised, if any.
    Stored(Box<ApprovalRecord>, Option<rows::Flag>),
    /// An identical request, or one with the same idempotency key, got there first; the record
    /// (as it was before any change) is handed back for another attempt.
    Conflict(Box<ApprovalRecord>),
    /// Merged into the pending request returned (as it now is), with the volume flag raised.
    Merged(Box<ApprovalRecord>, Option<rows::Flag>),
    /// The pending request to merge into was settled meanwhile; the record is handed back to be
    /// stored on its own.
    Gone(Box<ApprovalRecord>),
}

impl NewRecord {
    /// `record` handed back, nothing written: a unique index refused it.
    fn conflict(record: ApprovalRecord) -> Audited<NewRecord> {
        Audited::nothing(NewRecord::Conflict(Box::new(record)))
    }
}

// The history's day covers every request that can still be pending (see `request`).
const _: () = assert!(policy::TTL_RANGE.1.as_secs() * 1000 <= 24 * rows::RATE_WINDOW_MS);

/// An answered request's record on its way to [`write_answered`], with the volume flag it
/// raises unless the actor has one from the last hour.
struct AnsweredItem {
    record: ApprovalRecord,
    volume: Option<rows::Flag>,
}

/// The items of a bulk group, each of the type its kind was queued with.
fn unbox<T: 'static>(items: Vec<BulkItem>) -> Result<Vec<T>, StoreError> {
    items
        .into_iter()
        .map(|item| {
            item.downcast::<T>().map(|item| *item).map_err(|_| {
                StoreError::Corrupt(format!("a bulk item not a {}", std::any::type_name::<T>()))
            })
        })
        .collect()
}

/// Stores `records` and the plugin calls of those stored in multi-row inserts (see
/// [`rows::insert_answered`]); returns whether each was stored.
async fn insert_with_calls(
    conn: &mut sqlx::AnyConnection,
    records: &[&ApprovalRecord],
) -> Result<Vec<bool>, StoreError> {
    let stored = rows::insert_answered(conn, records).await?;
    let kept: Vec<&ApprovalRecord> = records
        .iter()
        .zip(&stored)
        .filter_map(|(record, stored)| stored.then_some(*record))
        .collect();
    plugin_stats::insert_calls(conn, &kept).await?;
    Ok(stored)
}

/// Writes the answered requests of a batch: their records and plugin calls in multi-row
/// inserts, a volume flag where due, and their entries. A record a unique index refuses comes
/// back as [`NewRecord::Conflict`] with nothing written.
fn write_answered(conn: &mut sqlx::AnyConnection, items: Vec<BulkItem>) -> BulkOutcomes<'_> {
    Box::pin(async move {
        let items: Vec<AnsweredItem> = unbox(items)?;
        let records: Vec<&ApprovalRecord> = items.iter().map(|i| &i.record).collect();
        let stored = insert_with_calls(conn, &records).await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for (AnsweredItem { record, volume }, stored) in items.into_iter().zip(stored) {
            outcomes.push(
                after_insert(conn, record, stored, None, volume)
                    .await?
                    .boxed(),
            );
        }
        Ok(outcomes)
    })
}

/// A new request for a guardian on its way to [`write_pending`]: its record, the hourly limit it
/// counts against, and the volume flag it raises unless the actor has one from the last hour.
struct PendingItem {
    record: ApprovalRecord,
    limit: u32,
    volume: Option<rows::Flag>,
}

/// Writes the new requests for a guardian of a SQLite batch together. The batch holds SQLite's
/// write lock (`BEGIN IMMEDIATE`), which serializes counting as the per-actor lock rows do on
/// PostgreSQL. An actor all of whose requests fit under the limit (see [`fit_under_limits`])
/// has them stored in multi-row inserts; the requests of an actor at or near its limit are
/// written one by one, exactly as [`write_new`] does alone.
fn write_pending(conn: &mut sqlx::AnyConnection, items: Vec<BulkItem>) -> BulkOutcomes<'_> {
    Box::pin(async move {
        let items: Vec<PendingItem> = unbox(items)?;
        let fitting = fit_under_limits(conn, &items).await?;
        let together: Vec<&ApprovalRecord> = items
            .iter()
            .zip(&fitting)
            .filter_map(|(i, fit)| fit.then_some(&i.record))
            .collect();
        // In the order of `together`: one answer per fitting item.
        let mut stored = insert_with_calls(conn, &together).await?.into_iter();
        let mut outcomes = Vec::with_capacity(items.len());
        for (item, fit) in items.into_iter().zip(fitting) {
            let PendingItem {
                record,
                limit,
                volume,
            } = item;
            let out = if fit {
                let was_stored = stored.next().unwrap_or(false);
                after_insert(conn, record, was_stored, Some(limit), volume).await?
            } else {
                write_new(conn, record, limit, volume).await?
            };
            outcomes.push(out.boxed());
        }
        Ok(outcomes)
    })
}

/// Whether each of a batch's requests fits under its limit together with its actor's other
/// requests of the batch, by one statement counting every actor of the batch over the batch's
/// earliest window (a bound from above for each request's own window).
async fn fit_under_limits(
    conn: &mut sqlx::AnyConnection,
    items: &[PendingItem],
) -> Result<Vec<bool>, StoreError> {
    let since = items
        .iter()
        .map(|i| i.record.created_at_ms)
        .min()
        .unwrap_or(0)
        .saturating_sub(rows::RATE_WINDOW_MS);
    // Per actor: its requests in the batch, and the lowest limit among them.
    let mut asking: std::collections::HashMap<(&str, &str), (u64, u32)> =
        std::collections::HashMap::new();
    for item in items {
        let actor = asking
            .entry((&item.record.vendor, &item.record.actor))
            .or_insert((0, u32::MAX));
        actor.0 += 1;
        actor.1 = actor.1.min(item.limit);
    }
    let actors: Vec<(&str, &str)> = asking.keys().copied().collect();
    let counted = rows::escalated_since(conn, &actors, since).await?;
    Ok(items
        .iter()
        .map(|item| {
            let (vendor, actor) = (item.record.vendor.as_str(), item.record.actor.as_str());
            let (requests, limit) = asking[&(vendor, actor)];
            let before = counted
                .get(&(vendor.to_owned(), actor.to_owned()))
                .copied()
                .unwrap_or(0);
            before + requests <= u64::from(limit)
        })
        .collect())
}

/// Stores a new request's record in the caller's transaction: counted against `limit` first
/// when it goes to a guardian, stored as refused over the limit, handed back on a conflict.
async fn write_new(
    conn: &mut sqlx::AnyConnection,
    record: ApprovalRecord,
    limit: u32,
    volume: Option<rows::Flag>,
) -> Result<Audited<NewRecord>, StoreError> {
    match rows::insert(conn, &record, Some(limit)).await? {
        Inserted::Stored => stored(conn, record, Some(limit), volume).await,
        Inserted::Conflict => Ok(NewRecord::conflict(record)),
        Inserted::OverLimit { retry_after_ms } => {
            store_refused(conn, record, retry_after_ms, limit, volume).await
        }
    }
}

/// `record` refused because its actor has had `limit` requests for a guardian this hour.
fn rate_limited(mut record: ApprovalRecord, retry_after_ms: u64, limit: u32) -> ApprovalRecord {
    record.status = Status::RateLimited;
    record.route = Route::Stop;
    record.expires_at_ms = None;
    record.decided_at_ms = Some(record.created_at_ms);
    record.decision_method = Some(Method::Policy);
    record.rule_fired = Some("builtin.rate_limit".into());
    record.reason = format!(
        "{} already sent {limit} requests for a guardian this hour",
        record.actor
    );
    record.retry_after_ms = Some(retry_after_ms);
    record
}

/// Raises `volume` unless the actor has a flag from the last hour: the flag raised, if any.
async fn raise_volume(
    conn: &mut sqlx::AnyConnection,
    volume: Option<rows::Flag>,
) -> Result<Option<rows::Flag>, StoreError> {
    Ok(match volume {
        Some(flag) if rows::raise_flag(conn, &flag).await? => Some(flag),
        _ => None,
    })
}

/// Stores `record` as refused by the rate limit (`limit` an hour, `retry_after_ms` when it may
/// ask again) with its plugin calls, the volume flag and its entries. Only a racing request with
/// the same idempotency key can conflict: then nothing is written and the record is handed back.
async fn store_refused(
    conn: &mut sqlx::AnyConnection,
    record: ApprovalRecord,
    retry_after_ms: u64,
    limit: u32,
    volume: Option<rows::Flag>,
) -> Result<Audited<NewRecord>, StoreError> {
    let refused = rate_limited(record.clone(), retry_after_ms, limit);
    if rows::insert(conn, &refused, None).await? == Inserted::Conflict {
        return Ok(NewRecord::conflict(record));
    }
    stored(conn, refused, Some(limit), volume).await
}

/// Completes a stored new record: its plugin calls, the volume flag and its entries.
async fn stored(
    conn: &mut sqlx::AnyConnection,
    record: ApprovalRecord,
    limit: Option<u32>,
    volume: Option<rows::Flag>,
) -> Result<Audited<NewRecord>, StoreError> {
    plugin_stats::insert_calls(conn, &[&record]).await?;
    after_insert(conn, record, true, limit, volume).await
}

/// A new record's outcome once it and its plugin calls were inserted (`stored`) or a unique
/// index refused it: the volume flag and its entries, or the record handed back.
async fn after_insert(
    conn: &mut sqlx::AnyConnection,
    record: ApprovalRecord,
    stored: bool,
    limit: Option<u32>,
    volume: Option<rows::Flag>,
) -> Result<Audited<NewRecord>, StoreError> {
    if !stored {
        return Ok(NewRecord::conflict(record));
    }
    let flag = raise_volume(conn, volume).await?;
    let recorded = events::request(&record, limit);
    Ok(Audited {
        value: NewRecord::Stored(Box::new(record), flag),
        entries: recorded.entries,
        payloads: recorded.payloads,
    })
}

fn grant_of(action: &Action) -> Grant {
    match action {
        Action::Payment { amount, .. } => Grant::Amount(amount.clone()),
        Action::CapabilityMint {
            requested_scope, ..
        } => Grant::Scope(*requested_scope),
        _ => Grant::None,
    }
}

fn rule_source(source: &policy::RuleSource) -> String {
    match source {
        policy::RuleSource::Builtin => "builtin".to_owned(),
        policy::RuleSource::Plugin { name, version, .. } => format!("plugin:{name}@{version}"),
    }
}

impl ApprovalService {
    /// A service over `db`, recording in `audit`, classifying with `plugins`, minting with
    /// `tokens`, reading `clock`.
    pub fn new(
        db: Db,
        audit: Arc<AuditLog>,
        plugins: Arc<PluginRegistry>,
        tokens: Arc<TokenIssuer>,
        clock: Arc<dyn Clock>,
        config: ApprovalConfig,
    ) -> Self {
        let versions = db.versions();
        let cached = Settings {
            actors: Cached::new(Arc::clone(versions), CACHED_ACTORS),
            guardians: Cached::new(Arc::clone(versions), CACHED_ACTORS),
            templates: Cached::new(Arc::clone(versions), CACHED_VENDORS),
        };
        Self {
            db,
            audit,
            plugins,
            tokens,
            clock,
            config,
            events: broadcast::channel(1024).0,
            cached,
            replays: Replays::default(),
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalEvent> {
        self.events.subscribe()
    }

    fn publish(&self, event: ApprovalEvent) {
        // No receiver is not an error: nobody is listening yet.
        let _ = self.events.send(event);
    }

    /// The actor's guardians (cached: every event about the actor names them).
    async fn guardians(&self, vendor: &str, actor: &str) -> Result<Guardians, StoreError> {
        let key = (vendor.to_owned(), actor.to_owned());
        let load = async {
            directory::guardians(&self.db, vendor, actor)
                .await
                .map(|ids| Some(Guardians::new(ids)))
        };
        let found = self
            .cached
            .guardians
            .get_or_load(&key, &Topic::actor(vendor, actor), load)
            .await?;
        Ok(found.unwrap_or_default())
    }

    /// `record` with its actor's guardians, as an event carries it.
    async fn notice(
        &self,
        record: ApprovalRecord,
        origin: Origin,
    ) -> Result<Arc<Notice<ApprovalRecord>>, ApprovalError> {
        let guardians = self.guardians(&record.vendor, &record.actor).await?;
        Ok(Arc::new(Notice::new(record, guardians, origin)))
    }

    /// Publishes an event another replica announced (see `crate::push`): the record as stored
    /// now, to this process's listeners only.
    ///
    /// # Errors
    /// A database failure.
    pub async fn relay(&self, approval_id: &str) -> Result<(), ApprovalError> {
        let Some(record) = rows::get(&self.db, approval_id).await? else {
            return Ok(());
        };
        let notice = self.notice(record, Origin::OtherReplica).await?;
        self.publish(if notice.status == Status::Pending {
            ApprovalEvent::Pending(notice)
        } else {
            ApprovalEvent::Settled(notice)
        });
        Ok(())
    }

    /// The capability token issuer (for its JWKS).
    pub fn tokens(&self) -> &Arc<TokenIssuer> {
        &self.tokens
    }

    /// The audit log the service records in.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    // ---- vendors, actors and policy ---------------------------------------------------------

    /// Creates a vendor with the default policy template; `false` if it already existed.
    ///
    /// # Errors
    /// A database failure.
    pub async fn create_vendor(&self, id: &str, name: &str) -> Result<bool, ApprovalError> {
        Ok(directory::create_vendor(&self.db, id, name, self.clock.now_ms()).await?)
    }

    /// Every vendor: (id, name, created_at_ms).
    ///
    /// # Errors
    /// A database failure.
    pub async fn vendors(&self) -> Result<Vec<(String, String, u64)>, ApprovalError> {
        Ok(directory::vendors(&self.db).await?)
    }

    /// Registers a device of `vendor` with its context tags and guardians (or updates them).
    ///
    /// # Errors
    /// Unknown vendor, or a database failure.
    pub async fn register_actor(
        &self,
        vendor: &str,
        actor: &str,
        context_tags: &[String],
        guardians: &[String],
    ) -> Result<(), ApprovalError> {
        if !directory::vendor_exists(&self.db, vendor).await? {
            return Err(ApprovalError::UnknownVendor);
        }
        let row = ActorRow {
            vendor: vendor.to_owned(),
            id: actor.to_owned(),
            context_tags: context_tags.to_vec(),
            guardians: guardians.to_vec(),
        };
        Ok(directory::upsert_actor(&self.db, &row, self.clock.now_ms()).await?)
    }

    /// Whether `guardian` guards the actor.
    ///
    /// # Errors
    /// A database failure.
    pub async fn guards(
        &self,
        vendor: &str,
        actor: &str,
        guardian: &str,
    ) -> Result<bool, ApprovalError> {
        Ok(directory::guards(&self.db, vendor, actor, guardian).await?)
    }

    /// The actor, if `vendor` has it.
    ///
    /// # Errors
    /// A database failure.
    pub async fn actor(
        &self,
        vendor: &str,
        actor: &str,
    ) -> Result<Option<ActorRow>, ApprovalError> {
        Ok(directory::actor(&self.db, vendor, actor).await?)
    }

    /// Validates and stores a new version of the vendor's policy template; returns its version.
    ///
    /// # Errors
    /// An invalid template (with the field named), an unknown vendor, a database failure.
    pub async fn set_template(
        &self,
        vendor: &str,
        document: &TemplateDoc,
        changed_by: &str,
    ) -> Result<u32, ApprovalError> {
        document.to_template(&self.plugins.runtime().config().platform_max)?;
        if !directory::vendor_exists(&self.db, vendor).await? {
            return Err(ApprovalError::UnknownVendor);
        }
        self.store_document(vendor, None, document.to_json(), changed_by)
            .await
    }

    /// Stores the next version of a vendor's template (`actor` `None`) or of an actor's
    /// overrides, with its audit entry, and returns the version.
    async fn store_document(
        &self,
        vendor: &str,
        actor: Option<&str>,
        json: String,
        changed_by: &str,
    ) -> Result<u32, ApprovalError> {
        let now = self.clock.now_ms();
        let scope = match actor {
            Some(actor) => Scope::actor(vendor, actor),
            None => Scope::Vendor(vendor.to_owned()),
        };
        let topic = match actor {
            Some(actor) => DocumentKind::Overrides { vendor, actor },
            None => DocumentKind::Template { vendor },
        }
        .topic();
        let (vendor, actor, changed_by) = (
            vendor.to_owned(),
            actor.map(str::to_owned),
            changed_by.to_owned(),
        );
        let committed = self
            .audit
            .commit(scope, move |conn| {
                Box::pin(async move {
                    let kind = match &actor {
                        Some(actor) => DocumentKind::Overrides {
                            vendor: &vendor,
                            actor,
                        },
                        None => DocumentKind::Template { vendor: &vendor },
                    };
                    let version =
                        directory::insert_document(conn, kind, &json, &changed_by, now).await?;
                    let recorded = events::document_changed(kind, version, &changed_by, &json, now);
                    Ok(Audited {
                        value: version,
                        entries: recorded.entries,
                        payloads: recorded.payloads,
                    })
                })
            })
            .await?;
        self.db.changed(topic).await;
        Ok(committed.value)
    }

    /// The vendor's template in force and its version (0 and the defaults before any was set).
    ///
    /// # Errors
    /// A database failure, or a stored template that no longer validates.
    pub async fn template(&self, vendor: &str) -> Result<(u32, PolicyTemplate), ApprovalError> {
        let platform_max = self.plugins.runtime().config().platform_max;
        let load = async {
            Ok::<_, ApprovalError>(Some(
                match self.template_versions(vendor, 1).await?.into_iter().next() {
                    Some(v) => (
                        v.version,
                        TemplateDoc::parse(&v.document)?.to_template(&platform_max)?,
                    ),
                    None => (0, PolicyTemplate::default()),
                },
            ))
        };
        let (key, topic) = (vendor.to_owned(), Topic::Vendor(vendor.to_owned()));
        let cached = self.cached.templates.get_or_load(&key, &topic, load);
        Ok(cached.await?.unwrap_or_default())
    }

    /// The vendor's template versions, newest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn template_versions(
        &self,
        vendor: &str,
        limit: u32,
    ) -> Result<Vec<DocumentVersion>, ApprovalError> {
        Ok(directory::documents(&self.db, DocumentKind::Template { vendor }, limit).await?)
    }

    /// Sets a guardian's overrides for one actor, within the vendor's bounds; returns the version.
    /// Only a guardian of the actor may set them.
    ///
    /// # Errors
    /// Unknown actor (or one `guardian` does not guard), overrides out of bounds, a database
    /// failure.
    pub async fn set_overrides(
        &self,
        vendor: &str,
        actor: &str,
        guardian: &str,
        document: &OverridesDoc,
    ) -> Result<u32, ApprovalError> {
        if !directory::guards(&self.db, vendor, actor, guardian).await? {
            return Err(ApprovalError::UnknownActor);
        }
        let (_, template) = self.template(vendor).await?;
        template.check_overrides(&document.to_overrides())?;
        self.store_document(vendor, Some(actor), document.to_json(), guardian)
            .await
    }

    /// The actor's overrides in force and their version (0 when none were set).
    ///
    /// # Errors
    /// A database failure or a corrupt stored document.
    pub async fn overrides(
        &self,
        vendor: &str,
        actor: &str,
    ) -> Result<(u32, ActorOverrides), ApprovalError> {
        Ok(self
            .actor_settings(vendor, actor)
            .await?
            .map(|settings| settings.overrides.clone())
            .unwrap_or_default())
    }

    /// The actor's tags and overrides in force, if it is registered with this vendor.
    async fn actor_settings(
        &self,
        vendor: &str,
        actor: &str,
    ) -> Result<Option<Arc<ActorSettings>>, ApprovalError> {
        let load = async {
            let Some(row) = directory::actor_settings(&self.db, vendor, actor).await? else {
                return Ok::<_, ApprovalError>(None);
            };
            let overrides = match row.overrides {
                Some((version, document)) => {
                    (version, OverridesDoc::parse(&document)?.to_overrides())
                }
                None => (0, ActorOverrides::default()),
            };
            Ok(Some(Arc::new(ActorSettings {
                tags: row.context_tags,
                overrides,
            })))
        };
        let (key, topic) = (
            (vendor.to_owned(), actor.to_owned()),
            Topic::actor(vendor, actor),
        );
        self.cached.actors.get_or_load(&key, &topic, load).await
    }

    // ---- the lifecycle ----------------------------------------------------------------------

    /// Classifies and answers an agent's request.
    ///
    /// # Errors
    /// Unknown actor, malformed action or params, an idempotency key reused for other params,
    /// a database or signing failure.
    pub async fn request(&self, new: NewRequest) -> Result<Requested, ApprovalError> {
        new.check_texts().map_err(ApprovalError::InvalidRequest)?;
        let action =
            action::parse(&new.action, &new.params).map_err(ApprovalError::InvalidRequest)?;
        let params_hash = canonical::params_hash(&new.params)?;
        let Some(actor) = self.actor_settings(&new.vendor, &new.actor).await? else {
            return Err(ApprovalError::UnknownActor);
        };
        if let Some(key) = &new.idempotency_key
            && let Some(found) = self.replay(&new, key, &params_hash).await?
        {
            return Ok(found);
        }
        let now = self.clock.now_ms();
        let (history, flagged_at) = rows::history(&self.db, &new.vendor, &new.actor, now).await?;
        // A pending request is at most a day old (the longest TTL), so one the history does not
        // count cannot exist.
        // What the pending requests this one may join or be merged into share with it: only
        // asked for when the device has any.
        let variation_key =
            (history.pending > 0).then(|| action::variation_key(&new.action, &new.params));
        if let Some(key) = &variation_key
            && let Some(found) = self.join_pending(&new, &params_hash, key).await?
        {
            return Ok(found);
        }
        let (policy_version, template) = self.template(&new.vendor).await?;
        let effective = template.effective(&actor.overrides.1);
        let id = new_id("apr");
        let input = ClassifyInput {
            request: RiskRequest {
                id: id.clone(),
                vendor: new.vendor.clone(),
                actor: new.actor.clone(),
                device_context: actor.tags.clone(),
                action: action.clone(),
                requested_at_ms: now,
            },
            policy: effective,
            history,
        };
        let mut builtin = policy::builtin_hits(&template.triggers, &input.policy, &input.request);
        builtin.extend(policy::undeclared_hit(
            &template.generic_actions,
            &input.request.action,
        ));
        let (verdicts, runs) = self.run_plugins(&input, &template).await;
        let assessment = policy::combine(builtin, &verdicts, template.plugin_fail_mode);

        let mut record = self.new_record(&new, &action, id, params_hash, now, &assessment, runs);
        record.policy_version = policy_version;
        let limit = match assessment.decision {
            Decision::Allow => {
                record.status = Status::Allowed;
                record.route = Route::Allow;
                record.decided_at_ms = Some(now);
                record.decision_method = Some(Method::Policy);
                record.token = Some(self.mint(
                    &record,
                    &record.params_hash,
                    &action,
                    DecisionMethod::Policy,
                    now,
                )?);
                None
            }
            Decision::Deny => {
                record.status = Status::Denied;
                record.route = Route::Stop;
                record.decided_at_ms = Some(now);
                record.decision_method = Some(Method::Policy);
                None
            }
            Decision::Escalate => {
                let ttl = assessment
                    .requested_ttl()
                    .unwrap_or_else(|| template.ttl_for(&new.action))
                    .clamp(policy::TTL_RANGE.0, policy::TTL_RANGE.1);
                record.status = Status::Pending;
                record.route = Route::HumanReview;
                record.expires_at_ms = Some(now + u64::try_from(ttl.as_millis()).unwrap_or(0));
                Some(template.max_approval_requests_per_hour)
            }
        };
        // A unique index refusing the insert means an identical request got there first: answer
        // as if this one came second. If that request has meanwhile expired, try again.
        let volume = self.volume_flag(&record, &input.history, flagged_at, now);
        // A tiny variation of a request still pending waits with it instead of asking the
        // guardians again. (Two variations racing may both be stored: merging is best effort,
        // joining identical requests is enforced by a unique index.)
        let mut similar = match (limit, &variation_key) {
            (Some(_), Some(key)) => self.similar_pending(&record, key).await?,
            _ => None,
        };
        let mut attempt = record;
        let mut stored = None;
        for _ in 0..4 {
            let outcome = match (limit, similar.take()) {
                (None, _) => self.store_answered(attempt, volume.clone()).await?,
                (Some(limit), Some(into)) => {
                    self.store_merged(attempt, into, limit, volume.clone())
                        .await?
                }
                (Some(limit), None) => self.store_new(attempt, limit, volume.clone()).await?,
            };
            match outcome {
                NewRecord::Stored(record, flag) => {
                    stored = Some((*record, flag, Relation::Created));
                    break;
                }
                NewRecord::Merged(record, flag) => {
                    stored = Some((*record, flag, Relation::Merged));
                    break;
                }
                NewRecord::Gone(record) => attempt = *record,
                NewRecord::Conflict(record) => {
                    if let Some(key) = &new.idempotency_key
                        && let Some(found) = self.replay(&new, key, &record.params_hash).await?
                    {
                        return Ok(found);
                    }
                    let key = variation_key
                        .clone()
                        .unwrap_or_else(|| action::variation_key(&new.action, &new.params));
                    if let Some(found) = self.join_pending(&new, &record.params_hash, &key).await? {
                        return Ok(found);
                    }
                    attempt = *record;
                }
            }
        }
        let (record, flag, relation) = stored.ok_or_else(|| {
            ApprovalError::Store(StoreError::Corrupt(
                "an identical request kept winning the insert".into(),
            ))
        })?;
        if record.status == Status::Pending && relation == Relation::Created {
            let notice = self.notice(record.clone(), Origin::Here).await?;
            self.publish(ApprovalEvent::Pending(notice));
        }
        if let Some(flag) = flag {
            let guardians = self.guardians(&flag.vendor, &flag.actor).await?;
            self.publish(ApprovalEvent::Flagged(Arc::new(Notice::new(
                flag,
                guardians,
                Origin::Here,
            ))));
        }
        Ok(Requested { record, relation })
    }

    /// The actor's pending request that `record` (whose `action::variation_key` is
    /// `variation_key`) is a tiny variation of, if any.
    async fn similar_pending(
        &self,
        record: &ApprovalRecord,
        variation_key: &str,
    ) -> Result<Option<ApprovalRecord>, ApprovalError> {
        let pending = rows::pending_like(
            &self.db,
            &record.vendor,
            &record.actor,
            &record.action,
            variation_key,
        )
        .await?;
        let Some(similar) = pending.into_iter().find(|p| {
            p.expires_at_ms.is_some_and(|at| at > record.created_at_ms)
                && action::is_tiny_variation(&p.params, &record.params)
        }) else {
            return Ok(None);
        };
        // Settled meanwhile: nothing to merge into (merging checks again in its transaction).
        Ok(rows::get(&self.db, &similar.id)
            .await?
            .filter(|found| found.status == Status::Pending))
    }

    /// Merges `record` (a request for a guardian) into the pending request `into`, with its
    /// audit entries, in one transaction; over the rate limit it is stored as refused instead.
    async fn store_merged(
        &self,
        record: ApprovalRecord,
        into: ApprovalRecord,
        limit: u32,
        volume: Option<rows::Flag>,
    ) -> Result<NewRecord, ApprovalError> {
        let committed = self
            .audit
            .commit(Scope::actor(&record.vendor, &record.actor), move |conn| {
                Box::pin(async move {
                    match rows::merge(conn, &record, &into, record.created_at_ms, limit).await? {
                        rows::Merged::Gone => {
                            Ok(Audited::nothing(NewRecord::Gone(Box::new(record))))
                        }
                        rows::Merged::Conflict => Ok(NewRecord::conflict(record)),
                        rows::Merged::OverLimit { retry_after_ms } => {
                            store_refused(conn, record, retry_after_ms, limit, volume).await
                        }
                        rows::Merged::Into(pending) => {
                            plugin_stats::insert_calls(conn, &[&record]).await?;
                            let flag = raise_volume(conn, volume).await?;
                            let recorded = events::merged(&record, &pending.id);
                            Ok(Audited {
                                value: NewRecord::Merged(pending, flag),
                                entries: recorded.entries,
                                payloads: recorded.payloads,
                            })
                        }
                    }
                })
            })
            .await?;
        Ok(committed.value)
    }

    /// Stores a new request's record with its audit entries, in one transaction. Over the rate
    /// limit, the record is stored as refused instead. `volume` is raised in the same
    /// transaction unless the actor already has a flag from the last hour. On SQLite, the
    /// requests of a batch share multi-row inserts (see [`write_pending`]).
    async fn store_new(
        &self,
        record: ApprovalRecord,
        limit: u32,
        volume: Option<rows::Flag>,
    ) -> Result<NewRecord, ApprovalError> {
        let scope = Scope::actor(&record.vendor, &record.actor);
        if self.db.backend() == Backend::Sqlite {
            let item = PendingItem {
                record,
                limit,
                volume,
            };
            let committed = self
                .audit
                .commit_bulk(scope, "pending-requests", write_pending, item)
                .await?;
            return Ok(committed.value);
        }
        let committed = self
            .audit
            .commit(scope, move |conn| {
                Box::pin(async move { write_new(conn, record, limit, volume).await })
            })
            .await?;
        Ok(committed.value)
    }

    /// Stores an answered request's record (allowed or denied: no rate-limit count to take)
    /// with its audit entries. Concurrent answered requests share multi-row inserts: see
    /// [`write_answered`].
    async fn store_answered(
        &self,
        record: ApprovalRecord,
        volume: Option<rows::Flag>,
    ) -> Result<NewRecord, ApprovalError> {
        let scope = Scope::actor(&record.vendor, &record.actor);
        let item = AnsweredItem { record, volume };
        let committed = self
            .audit
            .commit_bulk(scope, "answered-requests", write_answered, item)
            .await?;
        Ok(committed.value)
    }

    async fn replay(
        &self,
        new: &NewRequest,
        key: &str,
        params_hash: &str,
    ) -> Result<Option<Requested>, ApprovalError> {
        let found = match rows::by_idempotency_key(&self.db, &new.vendor, &new.actor, key).await? {
            Some(found) => {
                if found.params_hash != params_hash || found.action != new.action {
                    return Err(ApprovalError::IdempotencyConflict);
                }
                found
            }
            // Merged into another request: the answer is that request, as it is now.
            None => {
                let merged =
                    rows::merged_by_idempotency_key(&self.db, &new.vendor, &new.actor, key).await?;
                let Some((into, action, hash)) = merged else {
                    return Ok(None);
                };
                if hash != params_hash || action != new.action {
                    return Err(ApprovalError::IdempotencyConflict);
                }
                rows::get(&self.db, &into).await?.ok_or_else(|| {
                    ApprovalError::Store(StoreError::Corrupt(format!(
                        "merged into {into}, which is missing"
                    )))
                })?
            }
        };
        Ok(Some(Requested {
            record: self.settle_if_expired(found).await?,
            relation: Relation::Replayed,
        }))
    }

    /// The pending request `new` is identical to (the same action and params, whose
    /// `action::variation_key` is `variation_key`), joined, if there is one.
    async fn join_pending(
        &self,
        new: &NewRequest,
        params_hash: &str,
        variation_key: &str,
    ) -> Result<Option<Requested>, ApprovalError> {
        let Some(found) = rows::pending_with_params(
            &self.db,
            &new.vendor,
            &new.actor,
            &new.action,
            params_hash,
            variation_key,
        )
        .await?
        else {
            return Ok(None);
        };
        let found = self.settle_if_expired(found).await?;
        if found.status != Status::Pending {
            return Ok(None);
        }
        // A retry with this request's key must find the request it joined, even once decided.
        if let Some(key) = &new.idempotency_key {
            let kept = rows::KeptKey {
                vendor: &new.vendor,
                actor: &new.actor,
                key,
                approval_id: &found.id,
                into: &found.id,
                action: &new.action,
                params_hash,
                at_ms: self.clock.now_ms(),
            };
            if !rows::keep_key(&self.db, &kept).await? {
                return self.replay(new, key, params_hash).await;
            }
        }
        Ok(Some(Requested {
            record: found,
            relation: Relation::JoinedPending,
        }))
    }

    async fn run_plugins(
        &self,
        input: &ClassifyInput,
        template: &PolicyTemplate,
    ) -> (Vec<PluginVerdict>, Vec<PluginRun>) {
        let live = self.plugins.live(&input.request.vendor);
        let runtime = self.plugins.runtime();
        let mut verdicts = Vec::new();
        let mut runs = Vec::new();
        let all = live
            .active
            .iter()
            .map(|p| (p, false))
            .chain(live.shadow.iter().map(|p| (p, true)));
        for (plugin, shadow) in all {
            let report = runtime
                .classify(plugin, input, &template.plugin_limits)
                .await;
            let sha256 = plugin.compiled.sha256_hex();
            runs.push(PluginRun {
                name: report.plugin.name.clone(),
                version: report.plugin.version,
                sha256: sha256.clone(),
                shadow,
                verdict: report
                    .outcome
                    .as_ref()
                    .ok()
                    .map(|v| (v.decision, v.rule_id.clone(), v.reason.clone())),
                error: report
                    .outcome
                    .as_ref()
                    .err()
                    .map(|e| (e.code().to_owned(), e.to_string())),
                fuel_used: report.fuel_used,
                wall_time: report.wall_time,
            });
            if !shadow {
                verdicts.push(PluginVerdict {
                    name: report.plugin.name,
                    version: report.plugin.version,
                    sha256,
                    outcome: report.outcome,
                });
            }
        }
        (verdicts, runs)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_record(
        &self,
        new: &NewRequest,
        action: &Action,
        id: String,
        params_hash: String,
        now: u64,
        assessment: &Assessment,
        plugins: Vec<PluginRun>,
    ) -> ApprovalRecord {
        let deciding = assessment.deciding_hit();
        let (amount, recipient) = match action {
            Action::Payment {
                amount, recipient, ..
            } => (Some(amount.clone()), Some(recipient.clone())),
            _ => (None, None),
        };
        ApprovalRecord {
            id,
            vendor: new.vendor.clone(),
            actor: new.actor.clone(),
            idempotency_key: new.idempotency_key.clone(),
            provenance: new.provenance.clone(),
            action: new.action.clone(),
            params: new.params.clone(),
            params_hash,
            amount,
            recipient,
            status: Status::Pending,
            route: Route::HumanReview,
            rule_fired: deciding.map(|h| h.verdict.rule_id.clone()),
            reason: deciding.map_or_else(
                || "no rule asked for a human".to_owned(),
                |h| h.verdict.reason.clone(),
            ),
            rules: assessment
                .hits
                .iter()
                .filter(|h| h.verdict.decision != Decision::Allow)
                .map(|h| FiredRule {
                    source: rule_source(&h.source),
                    rule_id: h.verdict.rule_id.clone(),
                    decision: h.verdict.decision,
                    reason: h.verdict.reason.clone(),
                })
                .collect(),
            plugins,
            counter_offer: assessment.counter_offer().cloned(),
            policy_version: 0,
            created_at_ms: now,
            expires_at_ms: None,
            decided_at_ms: None,
            decision_method: None,
            decider: None,
            decision_reason: None,
            revised_params: None,
            revised_params_hash: None,
            token: None,
            retry_after_ms: None,
            merged: 0,
        }
    }

    /// A token for `record`'s request as executed: `action` with params hashing to `params_hash`
    /// (the amended ones for a revision).
    fn mint(
        &self,
        record: &ApprovalRecord,
        params_hash: &str,
        action: &Action,
        method: DecisionMethod,
        now: u64,
    ) -> Result<IssuedToken, ApprovalError> {
        let minted = self.tokens.mint(
            &CapabilityClaims {
                vendor: record.vendor.clone(),
                actor: record.actor.clone(),
                action: record.action.clone(),
                params_hash: params_hash.to_owned(),
                grant: grant_of(action),
                approval_id: record.id.clone(),
                decision_method: method,
            },
            now,
        )?;
        Ok(IssuedToken {
            id: minted.id,
            token: minted.token,
            expires_at_ms: minted.expires_at_ms,
        })
    }

    /// The volume flag `record` raises if this hour's requests (with it) stand out against the
    /// actor's hourly baseline over the rest of the day (`before` is the history without it).
    /// Deciding is free; raising it is one conditional insert in the record's transaction (on
    /// the writer, so it never contends with it for SQLite's write lock).
    fn volume_flag(
        &self,
        record: &ApprovalRecord,
        before: &crate::risk::History,
        flagged_at: Option<u64>,
        now: u64,
    ) -> Option<rows::Flag> {
        // Flags are never removed: one from the last hour rules out another, so the write would
        // be a statement that changes nothing (on every request of a busy actor).
        if flagged_at.is_some_and(|at| at > now.saturating_sub(rows::RATE_WINDOW_MS)) {
            return None;
        }
        let last_hour = before.last_hour.requests.saturating_add(1);
        let earlier = before
            .last_day
            .requests
            .saturating_sub(before.last_hour.requests);
        let baseline = earlier.div_ceil(23);
        if last_hour < self.config.flag_min_requests
            || last_hour < baseline.saturating_mul(self.config.flag_factor)
        {
            return None;
        }
        Some(rows::Flag {
            id: new_id("flag"),
            vendor: record.vendor.clone(),
            actor: record.actor.clone(),
            raised_at_ms: now,
            last_hour,
            baseline_per_hour: baseline,
        })
    }

    /// Runs `plugin` (any version, whatever its state) over the vendor's newest `limit` requests
    /// and reports how its verdicts, and the outcomes, would differ. Each request is rebuilt as
    /// it was (action, params, time, the actor's history up to then), under the policy and
    /// device tags in force now. Nothing is stored.
    ///
    /// # Errors
    /// [`ApprovalError::ReplayBusy`] while another replay of the vendor's runs, or
    /// [`MAX_REPLAYS`] of any vendors'; a database failure.
    pub async fn replay_plugin(
        &self,
        vendor: &str,
        plugin: &crate::plugin::LoadedPlugin,
        limit: u32,
    ) -> Result<Replay, ApprovalError> {
        let _slot = self.replays.enter(vendor)?;
        let (_, template) = self.template(vendor).await?;
        let runtime = self.plugins.runtime();
        let fail_mode = |_| match template.plugin_fail_mode {
            policy::FailMode::Escalate => Decision::Escalate,
            policy::FailMode::Deny => Decision::Deny,
        };
        let mut actors = std::collections::HashMap::new();
        let mut replay = Replay::default();
        for record in rows::recent(&self.db, vendor, limit).await? {
            let Ok(action) = action::parse(&record.action, &record.params) else {
                continue;
            };
            if !actors.contains_key(&record.actor) {
                let settings = self
                    .actor_settings(vendor, &record.actor)
                    .await?
                    .unwrap_or_default();
                let effective = template.effective(&settings.overrides.1);
                actors.insert(record.actor.clone(), (settings.tags.clone(), effective));
            }
            let (tags, effective) = &actors[&record.actor];
            let input = ClassifyInput {
                request: RiskRequest {
                    id: record.id.clone(),
                    vendor: vendor.to_owned(),
                    actor: record.actor.clone(),
                    device_context: tags.clone(),
                    action,
                    requested_at_ms: record.created_at_ms,
                },
                policy: effective.clone(),
                history: rows::history(
                    &self.db,
                    vendor,
                    &record.actor,
                    record.created_at_ms.saturating_sub(1),
                )
                .await?
                .0,
            };
            let report = runtime
                .classify(plugin, &input, &template.plugin_limits)
                .await;
            let name = &plugin.info.name;
            let recorded = record
                .plugins
                .iter()
                .find(|p| p.name == *name && !p.shadow)
                .and_then(|p| p.verdict.as_ref().map(|v| (v.0, v.1.clone())));
            let replayed = report
                .outcome
                .map(|v| (v.decision, v.rule_id, v.reason))
                .map_err(|e| e.code().to_owned());
            let others = record
                .rules
                .iter()
                .filter(|r| r.source == "builtin")
                .map(|r| r.decision)
                .chain(
                    record
                        .plugins
                        .iter()
                        .filter(|p| p.name != *name && !p.shadow)
                        .map(|p| p.verdict.as_ref().map_or_else(|| fail_mode(()), |v| v.0)),
                );
            let mine = replayed.as_ref().map_or_else(|_| fail_mode(()), |v| v.0);
            let outcome_after = others.fold(mine, Decision::max);
            let outcome_before = outcome_of(&record);
            let verdict_changed = recorded
                .as_ref()
                .is_some_and(|r| Some(r.0) != replayed.as_ref().ok().map(|v| v.0));
            replay.compared += 1;
            replay.failures += u32::from(replayed.is_err());
            replay.verdicts_changed += u32::from(verdict_changed);
            replay.outcomes_changed += u32::from(outcome_before != outcome_after);
            replay.items.push(ReplayItem {
                approval_id: record.id.clone(),
                created_at_ms: record.created_at_ms,
                action: record.action.clone(),
                recorded,
                replayed,
                outcome_before,
                outcome_after,
                verdict_changed,
            });
        }
        Ok(replay)
    }

    /// Volume flags raised since `since_ms` (a vendor's, a guardian's actors', or all),
    /// newest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn flags(
        &self,
        scope: rows::FlagScope<'_>,
        since_ms: u64,
    ) -> Result<Vec<rows::Flag>, ApprovalError> {
        Ok(rows::flags(&self.db, scope, since_ms).await?)
    }

    /// The vendors in which `guardian` guards an actor called `actor`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn vendors_guarding(
        &self,
        guardian: &str,
        actor: &str,
    ) -> Result<Vec<String>, ApprovalError> {
        Ok(rows::vendors_guarding(&self.db, guardian, actor).await?)
    }

    async fn settle_if_expired(
        &self,
        record: ApprovalRecord,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let now = self.clock.now_ms();
        match record.expires_at_ms {
            Some(expires) if record.status == Status::Pending && expires <= now => {
                match self.settle_expired(now, Some(&record)).await?.pop() {
                    Some(settled) => Ok(settled),
                    // Another caller or replica settled it first.
                    None => rows::get(&self.db, &record.id)
                        .await?
                        .ok_or(ApprovalError::NotFound),
                }
            }
            _ => Ok(record),
        }
    }

    /// The record as it is now; a pending request past its expiry is settled as timed out first,
    /// so nobody ever sees a late approval.
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn get(&self, id: &str) -> Result<ApprovalRecord, ApprovalError> {
        let record = rows::get(&self.db, id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        self.settle_if_expired(record).await
    }

    /// The pending requests of the actors `guardian` guards, oldest first (expired ones are
    /// settled first and left out).
    ///
    /// # Errors
    /// A database failure.
    pub async fn inbox(&self, guardian: &str) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        self.sweep().await?;
        Ok(rows::pending_for_guardian(&self.db, guardian).await?)
    }

    /// The requests of `guardian`'s actors that a guardian settled or that timed out, newest
    /// first (at most `limit`).
    ///
    /// # Errors
    /// A database failure.
    pub async fn history(
        &self,
        guardian: &str,
        limit: u32,
    ) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        Ok(rows::settled_for_guardian(&self.db, guardian, limit).await?)
    }

    /// The actors `guardian` guards: (vendor, actor, context tags).
    ///
    /// # Errors
    /// A database failure.
    pub async fn guarded_by(
        &self,
        guardian: &str,
    ) -> Result<Vec<(String, String, Vec<String>)>, ApprovalError> {
        Ok(directory::guarded_by(&self.db, guardian).await?)
    }

    /// Settles every pending request past its expiry as timed out (what the sweeper runs);
    /// returns how many it settled. Safe to run on every replica at once.
    ///
    /// # Errors
    /// A database failure.
    pub async fn sweep(&self) -> Result<usize, ApprovalError> {
        let now = self.clock.now_ms();
        // A read first: most sweeps (and every inbox) find nothing to settle and need no write.
        if !rows::any_expired(&self.db, now).await? {
            return Ok(0);
        }
        let mut count = 0;
        loop {
            let settled = self.settle_expired(now, None).await?.len();
            count += settled;
            if settled < SWEEP_BATCH as usize {
                return Ok(count);
            }
        }
    }

    /// Settles expired pending requests (at most [`SWEEP_BATCH`]) with their timeout entries,
    /// and announces them.
    async fn settle_expired(
        &self,
        now: u64,
        only: Option<&ApprovalRecord>,
    ) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        let scope = only.map_or(Scope::Many, |r| Scope::actor(&r.vendor, &r.actor));
        let only = only.map(|r| r.id.clone());
        let settled = self
            .audit
            .commit(scope, move |conn| {
                Box::pin(async move {
                    let settled =
                        rows::settle_expired(conn, now, only.as_deref(), SWEEP_BATCH).await?;
                    let entries = settled.iter().map(events::timeout).collect();
                    Ok(Audited {
                        value: settled,
                        entries,
                        payloads: Vec::new(),
                    })
                })
            })
            .await?
            .value;
        for record in &settled {
            let notice = self.notice(record.clone(), Origin::Here).await?;
            self.publish(ApprovalEvent::Settled(notice));
        }
        Ok(settled)
    }

    /// Runs [`Self::sweep`] every `every` until the returned handle is aborted, and picks up a
    /// signing key another replica rotated to (keep `every` well below the token TTL).
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = service.sweep().await {
                    tracing::warn!(error = %e, "approval sweep failed");
                }
                if let Err(e) = service
                    .tokens
                    .refresh(&service.db, service.clock.now_ms())
                    .await
                {
                    tracing::warn!(error = %e, "reloading the token signing keys failed");
                }
            }
        })
    }

    /// A guardian's decision on a pending request. Exactly one decision wins, whichever lands
    /// first in the database; the others get [`ApprovalError::AlreadyDecided`] with the winner.
    ///
    /// # Errors
    /// Not found (or not guarded by `guardian`), already decided, expired, an invalid or widening
    /// revision, a database or signing failure.
    pub async fn decide(
        &self,
        id: &str,
        guardian: &str,
        decision: GuardianDecision,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let record = rows::get(&self.db, id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        if !directory::guards(&self.db, &record.vendor, &record.actor, guardian).await? {
            return Err(ApprovalError::NotFound);
        }
        let record = self.settle_if_expired(record).await?;
        match record.status {
            Status::Pending => {}
            Status::TimedOut => return Err(ApprovalError::Expired(Box::new(record))),
            _ => return Err(ApprovalError::AlreadyDecided(Box::new(record))),
        }
        let now = self.clock.now_ms();
        let original = action::parse(&record.action, &record.params)
            .map_err(|e| StoreError::Corrupt(format!("stored params: {e}")))?;
        let (status, route, reason, revision) = match &decision {
            GuardianDecision::Approve => (Status::Approved, Route::HumanReview, None, None),
            GuardianDecision::Deny { reason } => {
                (Status::Denied, Route::Stop, reason.clone(), None)
            }
            GuardianDecision::Revise { params } => {
                let amended = action::parse(&record.action, params)
                    .map_err(ApprovalError::RevisionNotNarrower)?;
                action::check_narrower(&original, &amended)
                    .map_err(ApprovalError::RevisionNotNarrower)?;
                let hash = canonical::params_hash(params)?;
                (
                    Status::Revised,
                    Route::Revise,
                    None,
                    Some((params, amended, hash)),
                )
            }
        };
        let token = match (status, &revision) {
            (Status::Denied, _) => None,
            (_, Some((_, amended, hash))) => {
                Some(self.mint(&record, hash, amended, DecisionMethod::Human, now)?)
            }
            (_, None) => Some(self.mint(
                &record,
                &record.params_hash,
                &original,
                DecisionMethod::Human,
                now,
            )?),
        };
        let settlement = Settlement {
            status,
            route,
            decider: guardian.to_owned(),
            reason,
            revised_params: revision.as_ref().map(|r| r.0.clone()),
            revised_params_hash: revision.as_ref().map(|r| r.2.clone()),
            token,
        };
        let id_owned = id.to_owned();
        let settled = self
            .audit
            .commit(Scope::actor(&record.vendor, &record.actor), move |conn| {
                Box::pin(async move {
                    let Some(settled) =
                        rows::settle_by_guardian(conn, &id_owned, &settlement, now).await?
                    else {
                        return Ok(Audited::nothing(None));
                    };
                    let recorded = events::decision(&settled);
                    Ok(Audited {
                        value: Some(settled),
                        entries: recorded.entries,
                        payloads: recorded.payloads,
                    })
                })
            })
            .await?
            .value;
        if let Some(settled) = settled {
            let notice = self.notice(settled.clone(), Origin::Here).await?;
            self.publish(ApprovalEvent::Settled(notice));
            return Ok(settled);
        }
        let fresh = rows::get(&self.db, id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        let fresh = self.settle_if_expired(fresh).await?;
        Err(match fresh.status {
            Status::TimedOut => ApprovalError::Expired(Box::new(fresh)),
            _ => ApprovalError::AlreadyDecided(Box::new(fresh)),
        })
    }
}

#[cfg(test)]
mod replay_tests {
    use super::{ApprovalError, MAX_REPLAYS, Replays};

    #[test]
    fn replays_run_one_per_vendor_and_a_few_on_the_host() {
        let replays = Replays::default();
        let first = replays.enter("acme").expect("a free host");
        assert!(matches!(
            replays.enter("acme"),
            Err(ApprovalError::ReplayBusy)
        ));
        let others: Vec<_> = (1..MAX_REPLAYS)
            .map(|i| replays.enter(&format!("v{i}")).expect("room on the host"))
            .collect();
        assert!(matches!(
            replays.enter("other"),
            Err(ApprovalError::ReplayBusy)
        ));
        drop(first);
        let again = replays.enter("acme").expect("its replay ended");
        drop((again, others));
        assert!(replays.0.lock().unwrap().is_empty());
    }
}
