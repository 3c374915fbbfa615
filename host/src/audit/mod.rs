//! The tamper-evident audit log: every event of the host (a request, each plugin's verdict, each
//! built-in rule that fired, the decision and who made it, a timeout, a rate-limit refusal, a
//! policy, override or plugin change) is an entry in an RFC 6962 Merkle tree whose checkpoints
//! the host signs, so that anyone holding the public key can check that an entry is in the log
//! and that the log only ever grew.
//!
//! - [`entry`]: the versioned canonical encoding of entries (the tree's leaves);
//! - [`events`]: the entries of the domain's records;
//! - [`merkle`]: the tree math (no I/O);
//! - [`checkpoint`]: C2SP signed checkpoints and keys (no I/O);
//! - [`verify`]: the offline verifier and the export format it reads.
//!
//! Lifetimes: [`AuditLog`] is process-wide (the key, the writer tasks, the queue); an
//! [`Audited`] write lives for one transaction.
//!
//! **Appends are part of the write they record.** A service hands [`AuditLog::commit`] its SQL
//! as a closure that also returns the entries the write produced. Writer tasks run queued writes
//! in one transaction each batch (every write in its own savepoint, so one failure undoes only
//! itself), append all their entries, and commit once: a decision and its entries are stored
//! together or not at all, and a burst of decisions shares one fsync. The database orders
//! appends (see [`crate::store::audit::append`]), across replicas too.

pub mod checkpoint;
pub mod entry;
pub mod events;
pub mod merkle;
pub mod verify;

use std::any::Any;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::{AnyConnection, Connection as _};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::store::audit::{self as rows, StoredCheckpoint, StoredEntry};
use crate::store::{Backend, Db, StoreError};
use checkpoint::{CheckpointError, CheckpointVerifier, LogKey};
use entry::{Entry, Event};
use merkle::{Hash, ProofError, TreeOp};

/// A boxed future borrowing the transaction's connection.
pub type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// What a write returns to [`AuditLog::commit`]: its own result, the entries to append with it,
/// and the payloads those entries reference.
#[derive(Debug)]
pub struct Audited<T> {
    pub value: T,
    pub entries: Vec<Entry>,
    /// (SHA-256 hex, bytes) of payloads the entries name.
    pub payloads: Vec<(String, Vec<u8>)>,
}

impl<T> Audited<T> {
    /// A result with no entries (the write changed nothing worth recording).
    pub fn nothing(value: T) -> Self {
        Self {
            value,
            entries: Vec::new(),
            payloads: Vec::new(),
        }
    }
}

impl<T: Send + 'static> Audited<T> {
    /// The same with its value boxed, as the writer tasks and bulk writes carry it.
    pub fn boxed(self) -> Audited<Box<dyn Any + Send>> {
        Audited {
            value: Box::new(self.value),
            entries: self.entries,
            payloads: self.payloads,
        }
    }
}

/// How a checkpoint's check of the new entries shares the machine. The periodic checkpoint
/// has seconds to spare and reads at a quarter of one core's time at most; one a caller waits
/// for (a receipt, shutdown) goes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    AtOnce,
    Background,
}

/// In the background, the idle time after each page of the check per unit of time it took.
const IDLE_PER_BUSY: u32 = 3;

/// A committed write: its result and the indexes of its entries.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub entries: Range<u64>,
}

/// The origin of a log whose configuration names none.
pub const DEFAULT_ORIGIN: &str = "approval-host.local/audit";

/// Tunables of the log.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The log's origin (the checkpoints' first line and the key's name), e.g.
    /// `audit.example.com/approvals`. `None`: the stored key's, or [`DEFAULT_ORIGIN`] for a new
    /// key.
    pub origin: Option<String>,
    /// The signing key in C2SP form (`PRIVATE+KEY+<origin>+<id>+<key>`). `None`: the key stored
    /// in the database, generated on first start.
    pub signing_key: Option<String>,
    /// How often to sign a checkpoint when there are new entries.
    pub checkpoint_every: Duration,
    /// The most writes committed together.
    pub max_batch: usize,
    /// Writer tasks. `None`: one on SQLite (it has one writer anyway), four on PostgreSQL (their
    /// writes run in parallel and meet only at the append).
    pub writers: Option<usize>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            origin: None,
            signing_key: None,
            checkpoint_every: Duration::from_secs(5),
            max_batch: 512,
            writers: None,
        }
    }
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit key: {0}")]
    Key(#[from] CheckpointError),
    #[error(
        "the stored audit log's key is for the log {stored:?}, but the configured origin is {configured:?}"
    )]
    OriginMismatch { stored: String, configured: String },
    #[error("the stored tree does not verify: {0}")]
    Tree(#[from] ProofError),
    /// The stored log no longer matches what was signed: the host refuses to sign over it.
    #[error("the stored log is inconsistent with its last checkpoint: {0}")]
    Inconsistent(String),
    #[error("no audit entries for this approval")]
    NoEntries,
    /// The writers' thread could not be started (the OS refused a thread).
    #[error("the audit writer's thread could not start: {0}")]
    Writer(String),
}

/// One entry of a receipt, with its inclusion proof.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptEntry {
    pub index: u64,
    /// The entry's canonical bytes.
    pub entry: Vec<u8>,
    /// The inclusion proof against the receipt's checkpoint.
    pub proof: Vec<Hash>,
}

/// Proof that an approval's entries are in the log: each entry with its index and inclusion
/// proof, against one signed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub approval_id: String,
    /// The signed checkpoint (a C2SP signed note) the proofs lead to.
    pub checkpoint: String,
    pub entries: Vec<ReceiptEntry>,
}

impl Receipt {
    /// Checks the receipt with nothing but the log's public key: the checkpoint's signature,
    /// every entry's proof, and that every entry is about this approval.
    ///
    /// # Errors
    /// What does not verify, named.
    pub fn verify(
        &self,
        verifier: &CheckpointVerifier,
    ) -> Result<Vec<Entry>, verify::ReceiptError> {
        verify::verify_receipt(self, verifier)
    }
}

type WriteFn = Box<
    dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Encoded, StoreError>> + Send,
>;

/// Writes the items of many jobs of one kind together (multi-row statements) in the batch's
/// transaction, and returns one outcome per item, in order: its value, entries and payloads. An
/// item it refuses (a unique conflict, say) must have written nothing and comes back with no
/// entries. An `Err` undoes the whole group (it runs in a savepoint) and fails its jobs.
pub type BulkFn = for<'c> fn(&'c mut AnyConnection, Vec<BulkItem>) -> BulkOutcomes<'c>;

/// One job's item for a [`BulkFn`], downcast by the function that knows its type.
pub type BulkItem = Box<dyn Any + Send>;

/// What a [`BulkFn`] returns: one outcome per item, in order.
pub type BulkOutcomes<'c> = BoxFuture<'c, Result<Vec<Audited<BulkItem>>, StoreError>>;

/// What a queued job does in the batch's transaction.
enum Work {
    /// SQL of its own: run in a savepoint, so that its failure undoes only itself.
    Write(WriteFn),
    /// Entries alone: nothing can fail halfway, so no savepoint (and no round trips for one).
    Entries(Audited<Box<dyn Any + Send>>),
    /// One item of a kind written in bulk: the batch's items of each kind go to their
    /// [`BulkFn`] together, after the other writes.
    Bulk {
        kind: &'static str,
        write: BulkFn,
        item: Box<dyn Any + Send>,
    },
}

/// Where a write's result goes: its value and the indexes of its entries, once committed.
type Reply = oneshot::Sender<Result<(Box<dyn Any + Send>, Range<u64>), StoreError>>;

struct Job {
    /// Writes of one batch run in the order of their scopes (see [`Scope`]).
    scope: Scope,
    work: Work,
    reply: Reply,
}

/// The rows a write locks, by the thing they belong to. The writes of a batch run ordered by
/// scope, so every transaction (on every replica) takes row locks in one global order and two
/// batches cannot deadlock; the log's own row is always taken last, by the append.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Rows of many owners at once (the sweep of expired requests): first.
    Many,
    /// A vendor's own rows (policy templates, plugin versions).
    Vendor(String),
    /// One actor's rows (its requests and rate-limit row).
    Actor { vendor: String, actor: String },
    /// Only the log's own tables (payloads).
    Log,
}

impl Scope {
    /// One actor's rows.
    pub fn actor(vendor: &str, actor: &str) -> Self {
        Scope::Actor {
            vendor: vendor.to_owned(),
            actor: actor.to_owned(),
        }
    }
}

/// The process-wide audit log.
pub struct AuditLog {
    db: Db,
    key: LogKey,
    clock: Arc<dyn Clock>,
    config: AuditConfig,
    /// The queue of writes to commit; `None` once closed.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// The writer tasks, awaited on close.
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The thread the writer tasks run on (see [`WriterThread`]); stops when the log is dropped.
    _thread: WriterThread,
    /// One checkpoint signing at a time in this process (replicas may race; the table keeps one
    /// row per size).
    signing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("vkey", &self.key.vkey())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log on `db` and starts its writer tasks (call inside a tokio runtime). The
    /// signing key comes from `config`, else from the database, else is generated and stored
    /// there for every replica.
    ///
    /// # Errors
    /// A malformed configured key or origin, a stored key for another origin, a database failure.
    pub async fn open(
        db: Db,
        config: AuditConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, AuditError> {
        let key = match &config.signing_key {
            Some(skey) => LogKey::from_skey(skey)?,
            None => {
                if rows::log_key(&db).await?.is_none() {
                    let origin = config.origin.as_deref().unwrap_or(DEFAULT_ORIGIN);
                    let fresh = LogKey::generate(origin)?;
                    rows::insert_log_key(&db, fresh.skey(), clock.now_ms()).await?;
                }
                let stored = rows::log_key(&db)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("the audit key vanished".into()))?;
                LogKey::from_skey(&stored)?
            }
        };
        if let Some(configured) = &config.origin
            && key.origin() != configured
        {
            return Err(AuditError::OriginMismatch {
                stored: key.origin().to_owned(),
                configured: configured.clone(),
            });
        }
        let (sender, receiver) = mpsc::channel::<Job>(config.max_batch.max(1) * 4);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let edge = Arc::new(Mutex::new(None));
        let count = config.writers.unwrap_or(match db.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => 4,
        });
        let (thread, runtime) = WriterThread::start()?;
        let writers = (0..count.max(1))
            .map(|_| {
                runtime.spawn(writer(
                    db.clone(),
                    Arc::clone(&receiver),
                    Arc::clone(&edge),
                    config.max_batch.max(1),
                ))
            })
            .collect();
        Ok(Arc::new(Self {
            db,
            key,
            clock,
            config,
            queue: Mutex::new(Some(sender)),
            writers: Mutex::new(writers),
            _thread: thread,
            signing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The verification key auditors check checkpoints with (`<origin>+<keyid>+<key>`).
    pub fn vkey(&self) -> &str {
        self.key.vkey()
    }

    /// A verifier for this log's checkpoints.
    pub fn verifier(&self) -> CheckpointVerifier {
        // The log's own key always makes a valid verifier key.
        CheckpointVerifier::new(self.key.vkey()).unwrap_or_else(|_| unreachable!())
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        self.key.origin()
    }

    /// Runs `work` in a transaction with other queued writes, appends the entries it returns,
    /// and commits; returns its value once durable. If `work` fails, its changes are undone and
    /// nothing of it is appended; if the commit fails, nothing of the batch is stored. `work`
    /// should lock only rows of its `scope`.
    ///
    /// # Errors
    /// What `work` failed with, the commit's failure, or [`StoreError::Closed`] after
    /// [`Self::close`].
    pub async fn commit<T, F>(&self, scope: Scope, work: F) -> Result<Committed<T>, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<Audited<T>, StoreError>>
            + Send
            + 'static,
    {
        // Encoded inside the write's savepoint: an entry the verifier would refuse undoes the
        // write that produced it.
        let work: WriteFn =
            Box::new(move |conn| Box::pin(async move { encode(work(conn).await?.boxed()) }));
        let (value, entries) = self.submit(scope, Work::Write(work)).await?;
        let value = value
            .downcast::<T>()
            .map_err(|_| StoreError::Corrupt("audit writer returned another type".into()))?;
        Ok(Committed {
            value: *value,
            entries,
        })
    }

    /// Queues `item` to be written by `write` together with the other items of `kind` that
    /// share its batch (one multi-row statement where [`Self::commit`] would run one per job),
    /// and returns its outcome once durable. `write` must hand back values of type `T`.
    ///
    /// # Errors
    /// The group's write or the commit failed (nothing of the item is stored), or
    /// [`StoreError::Closed`].
    pub async fn commit_bulk<I, T>(
        &self,
        scope: Scope,
        kind: &'static str,
        write: BulkFn,
        item: I,
    ) -> Result<Committed<T>, StoreError>
    where
        I: Send + 'static,
        T: Send + 'static,
    {
        let work = Work::Bulk {
            kind,
            write,
            item: Box::new(item),
        };
        let (value, entries) = self.submit(scope, work).await?;
        let value = value
            .downcast::<T>()
            .map_err(|_| StoreError::Corrupt("a bulk write returned another type".into()))?;
        Ok(Committed {
            value: *value,
            entries,
        })
    }

    /// Queues a job and waits for its batch to commit.
    async fn submit(
        &self,
        scope: Scope,
        work: Work,
    ) -> Result<(Box<dyn Any + Send>, Range<u64>), StoreError> {
        let (reply, answer) = oneshot::channel();
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)?;
        queue
            .send(Job { scope, work, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends entries on their own (events with no other write).
    ///
    /// # Errors
    /// As [`Self::commit`].
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Range<u64>, StoreError> {
        let work = Work::Entries(Audited {
            value: Box::new(()),
            entries,
            payloads: Vec::new(),
        });
        Ok(self.submit(Scope::Log, work).await?.1)
    }

    /// The number of committed entries.
    ///
    /// # Errors
    /// A database failure.
    pub async fn size(&self) -> Result<u64, AuditError> {
        Ok(rows::size(&self.db).await?)
    }

    /// Entries `from..to` (those stored), in index order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn entries(&self, from: u64, to: u64) -> Result<Vec<StoredEntry>, AuditError> {
        Ok(rows::entries(&self.db, from, to).await?)
    }

    /// Entries matching a filter, in index order (at most `limit`).
    ///
    /// # Errors
    /// A database failure.
    pub async fn search(
        &self,
        filter: &rows::EntryFilter,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, AuditError> {
        Ok(rows::search(&self.db, filter, limit).await?)
    }

    /// The entries about one approval, in index order.
    ///
    /// # Errors
    /// A database failure.
    pub async fn entries_of(&self, approval_id: &str) -> Result<Vec<StoredEntry>, AuditError> {
        Ok(rows::entries_of_approval(&self.db, approval_id).await?)
    }

    async fn tree(&self, op: TreeOp) -> Result<Vec<Hash>, AuditError> {
        let mut conn = self.db.pool().acquire().await.map_err(StoreError::from)?;
        Ok(rows::tree(&mut conn, op).await??)
    }

    /// The root of the tree of `size` entries, from the stored hashes.
    ///
    /// # Errors
    /// A database failure, or stored hashes missing.
    pub async fn root(&self, size: u64) -> Result<Hash, AuditError> {
        Ok(self
            .tree(TreeOp::Root { size })
            .await?
            .pop()
            .unwrap_or(merkle::EMPTY_ROOT))
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    ///
    /// # Errors
    /// The index is outside the tree, a database failure, or stored hashes missing.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        self.tree(TreeOp::Inclusion { index, size }).await
    }

    /// The consistency proof from the tree of `old` entries to the tree of `size`.
    ///
    /// # Errors
    /// Sizes out of order or zero, a database failure, or stored hashes missing.
    pub async fn consistency_proof(&self, old: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        self.tree(TreeOp::Consistency { old, size }).await
    }

    /// The newest signed checkpoint, if any.
    ///
    /// # Errors
    /// A database failure.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        Ok(rows::latest_checkpoint(&self.db).await?)
    }

    /// Signs a checkpoint of the log as it is now, if it grew since the last one, and returns the
    /// newest checkpoint. Before signing it checks that the entries appended since the last
    /// checkpoint hash to the stored tree, and that the new tree extends the last signed one
    /// (a consistency proof from the stored hashes, checked against the signed root); it refuses
    /// to sign over a log that fails either check.
    ///
    /// # Errors
    /// [`AuditError::Inconsistent`] for a damaged or altered log, a database failure.
    pub async fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        self.sign_checkpoint(Pace::AtOnce).await
    }

    async fn sign_checkpoint(&self, pace: Pace) -> Result<Option<StoredCheckpoint>, AuditError> {
        let _one = self.signing.lock().await;
        let size = rows::size(&self.db).await?;
        let last = rows::latest_checkpoint(&self.db).await?;
        let signed = last.as_ref().map_or(0, |c| c.size);
        if size <= signed {
            return Ok(last);
        }
        if let Some(last) = &last {
            // The row is only as good as its signature: a row written by anyone but this key is
            // not a checkpoint to extend.
            let opened = self.verifier().open(&last.note).map_err(|e| {
                AuditError::Inconsistent(format!("the stored checkpoint of {}: {e}", last.size))
            })?;
            if (opened.size, opened.root) != (last.size, last.root) {
                return Err(AuditError::Inconsistent(format!(
                    "the stored checkpoint of {} does not say what its note signs",
                    last.size
                )));
            }
        }
        let root = self.root(size).await?;
        self.check_new_entries(last.as_ref(), size, &root, pace)
            .await?;
        if let Some(last) = &last {
            let proof = self.consistency_proof(last.size, size).await?;
            merkle::verify_consistency(
                last.size,
                size,
                &proof.iter().map(|h| h.0).collect::<Vec<_>>(),
                &last.root.0,
                &root.0,
            )
            .map_err(|e| {
                AuditError::Inconsistent(format!(
                    "the tree of {size} entries does not extend the checkpoint of {}: {e}",
                    last.size
                ))
            })?;
        }
        let checkpoint = StoredCheckpoint {
            size,
            root,
            note: self.key.sign(size, &root),
            signed_at_ms: self.clock.now_ms(),
        };
        rows::insert_checkpoint(&self.db, &checkpoint).await?;
        Ok(Some(checkpoint))
    }

    /// Rebuilds the tree over the entries since the last checkpoint from their bytes and
    /// compares it with the stored root. It reads a page at a time and keeps only the tree's
    /// right edge, so a checkpoint after a busy interval (tens of thousands of entries) takes
    /// the database and the cores in short turns instead of one long stall.
    async fn check_new_entries(
        &self,
        last: Option<&StoredCheckpoint>,
        size: u64,
        root: &Hash,
        pace: Pace,
    ) -> Result<(), AuditError> {
        const PAGE: u64 = 2_000;
        let from = last.map_or(0, |c| c.size);
        let mut conn = self.db.pool().acquire().await.map_err(StoreError::from)?;
        let edge = rows::right_edge(&mut conn, from).await?.ok_or_else(|| {
            AuditError::Inconsistent(format!("the stored tree of {from} entries is missing"))
        })?;
        drop(conn);
        let mut frontier = merkle::Frontier::resume(from, edge.nodes());
        let mut at = from;
        while at < size {
            let started = Instant::now();
            let page = rows::entries(&self.db, at, size.min(at + PAGE)).await?;
            if page.first().map(|e| e.index) != Some(at)
                || page.windows(2).any(|w| w[1].index != w[0].index + 1)
            {
                return Err(AuditError::Inconsistent(format!(
                    "entries after {at} are missing"
                )));
            }
            // Hashing a page takes a millisecond or two: off the async workers, so that
            // requests served meanwhile do not wait behind it.
            at += page.len() as u64;
            frontier = tokio::task::spawn_blocking(move || {
                for entry in &page {
                    frontier.push(merkle::leaf_hash(&entry.bytes));
                }
                frontier
            })
            .await
            .map_err(|e| AuditError::Inconsistent(format!("hashing entries before {at}: {e}")))?;
            if pace == Pace::Background {
                tokio::time::sleep(started.elapsed() * IDLE_PER_BUSY).await;
            }
        }
        if frontier.root() != *root {
            return Err(AuditError::Inconsistent(format!(
                "entries {from}..{size} do not hash to the stored tree"
            )));
        }
        Ok(())
    }

    /// Signs a checkpoint every [`AuditConfig::checkpoint_every`] while the log grows, until the
    /// handle is aborted.
    pub fn spawn_checkpointer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let log = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(log.config.checkpoint_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = log.sign_checkpoint(Pace::Background).await {
                    tracing::error!(error = %e, "audit checkpoint refused");
                }
            }
        })
    }

    /// Stops taking writes, lets the queued ones commit, and signs a last checkpoint.
    ///
    /// # Errors
    /// The last checkpoint could not be signed.
    pub async fn close(&self) -> Result<Option<StoredCheckpoint>, AuditError> {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writers =
            std::mem::take(&mut *self.writers.lock().unwrap_or_else(PoisonError::into_inner));
        for writer in writers {
            let _ = writer.await;
        }
        self.checkpoint().await
    }

    /// The receipt of an approval: its entries with inclusion proofs against a signed
    /// checkpoint that covers them (signed now if the newest one does not).
    ///
    /// # Errors
    /// No entries for this approval, a database failure, or a log that cannot be checkpointed.
    pub async fn receipt(&self, approval_id: &str) -> Result<Receipt, AuditError> {
        let entries = rows::entries_of_approval(&self.db, approval_id).await?;
        let last = entries.last().ok_or(AuditError::NoEntries)?.index;
        let checkpoint = match rows::latest_checkpoint(&self.db).await? {
            Some(c) if c.size > last => c,
            _ => self
                .checkpoint()
                .await?
                .filter(|c| c.size > last)
                .ok_or_else(|| {
                    AuditError::Inconsistent("no checkpoint covers the entries".into())
                })?,
        };
        let mut with_proofs = Vec::with_capacity(entries.len());
        for StoredEntry { index, bytes } in entries {
            with_proofs.push(ReceiptEntry {
                index,
                proof: self.inclusion_proof(index, checkpoint.size).await?,
                entry: bytes,
            });
        }
        Ok(Receipt {
            approval_id: approval_id.to_owned(),
            checkpoint: checkpoint.note,
            entries: with_proofs,
        })
    }

    /// Deletes a payload's bytes (a privacy request) and records who did it and why. Entries
    /// and proofs are unchanged; the payload is reported as redacted from then on.
    ///
    /// # Errors
    /// A database failure; `Ok(false)` when there was no such payload.
    pub async fn redact(&self, sha256: &str, by: &str, reason: &str) -> Result<bool, StoreError> {
        let at = self.clock.now_ms();
        let (sha256, by, reason) = (sha256.to_owned(), by.to_owned(), reason.to_owned());
        Ok(self
            .commit(Scope::Log, move |conn| {
                Box::pin(async move {
                    if !rows::delete_payload(conn, &sha256).await? {
                        return Ok(Audited::nothing(false));
                    }
                    Ok(Audited {
                        value: true,
                        entries: vec![Entry::new(
                            at,
                            Event::PayloadRedacted { sha256, by, reason },
                        )],
                        payloads: Vec::new(),
                    })
                })
            })
            .await?
            .value)
    }

    /// A payload's bytes, unless redacted.
    ///
    /// # Errors
    /// A database failure.
    pub async fn payload(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        rows::payload(&self.db, sha256).await
    }

    /// Writes the whole log as an export (see [`verify`] for the format) to `out`.
    ///
    /// # Errors
    /// A database failure or a write error.
    pub async fn export(&self, out: &mut (dyn std::io::Write + Send)) -> Result<u64, AuditError> {
        verify::export(&self.db, self.key.origin(), self.key.vkey(), out).await
    }
}

/// A thread of the writers' own, with a runtime of its own. On the request handlers' workers
/// a writer task waits behind every request task that is ready to run each time one of its
/// statements returns (a batch takes several such turns), so when requests pile up, batches slow
/// down just when they must speed up: at 3,800 requests/s on 2 cores, a hiccup of a few
/// milliseconds grew into a stall of hundreds (docs/benchmarks/issue-7-rounds.md, round 10). Here a writer's turn
/// comes as soon as the OS runs its thread. (A PostgreSQL connection the pool opens for a
/// writer is served by this runtime's I/O driver, which runs as long as the log does.)
struct WriterThread {
    /// Dropped with the log: the thread's runtime then stops (its writers have ended at close).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl WriterThread {
    /// Starts the thread; gives it and its runtime, to spawn the writers on.
    fn start() -> Result<(Self, tokio::runtime::Handle), AuditError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AuditError::Writer(e.to_string()))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| AuditError::Writer(e.to_string()))?;
        Ok((Self { _stop: stop }, handle))
    }
}

/// The right edge of the largest tree a writer committed, shared by the writer tasks.
type KnownEdge = Arc<Mutex<Option<rows::RightEdge>>>;

async fn writer(
    db: Db,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    edge: KnownEdge,
    max_batch: usize,
) {
    loop {
        let mut batch = Vec::new();
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        run_batch(&db, &edge, batch).await;
    }
}

type Done = (Reply, Box<dyn Any + Send>, Range<usize>);

/// What a batch's writes produced so far, in order: who to answer, and the entries and payloads
/// to append.
#[derive(Default)]
struct Produced {
    done: Vec<Done>,
    entries: Vec<(Entry, Vec<u8>)>,
    payloads: Vec<(String, Vec<u8>)>,
}

/// A write's outcome with its entries encoded, each checked to be one the log's own verifier
/// reads back ([`entry::MAX_ENTRY_LEN`]).
struct Encoded {
    value: Box<dyn Any + Send>,
    entries: Vec<(Entry, Vec<u8>)>,
    payloads: Vec<(String, Vec<u8>)>,
}

/// Encodes `out`'s entries, once: the append stores these bytes.
///
/// # Errors
/// [`StoreError::EntryTooLarge`] for an entry over the verifier's limit: the log never holds an
/// entry its verifier refuses, so the write that produced it must fail instead.
fn encode(out: Audited<Box<dyn Any + Send>>) -> Result<Encoded, StoreError> {
    let entries = out
        .entries
        .into_iter()
        .map(|entry| {
            let bytes = entry.encode();
            if bytes.len() > entry::MAX_ENTRY_LEN {
                tracing::error!(
                    kind = entry.event.kind(),
                    bytes = bytes.len(),
                    "an audit entry over the verifier's limit was refused with its write"
                );
                return Err(StoreError::EntryTooLarge(bytes.len()));
            }
            Ok((entry, bytes))
        })
        .collect::<Result<_, _>>()?;
    Ok(Encoded {
        value: out.value,
        entries,
        payloads: out.payloads,
    })
}

impl Produced {
    fn keep(&mut self, reply: Reply, out: Encoded) {
        let start = self.entries.len();
        self.entries.extend(out.entries);
        self.payloads.extend(out.payloads);
        self.done
            .push((reply, out.value, start..self.entries.len()));
    }
}

/// Runs one batch of writes in one transaction: each in a savepoint, then the append, then one
/// commit. Every writer hears back exactly once.
async fn run_batch(db: &Db, edge: &KnownEdge, mut batch: Vec<Job>) {
    batch.sort_by(|a, b| a.scope.cmp(&b.scope));
    let begun = match db.backend() {
        // Take SQLite's write lock at once: a deferred transaction that reads first can fail
        // to upgrade when another connection wrote in between.
        Backend::Sqlite => db.pool().begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => db.pool().begin().await,
    };
    let mut tx = match begun {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            for job in batch {
                let _ = job
                    .reply
                    .send(Err(StoreError::BatchFailed(message.clone())));
            }
            return;
        }
    };
    // A batch of one write (one job's, or one bulk group's) and nothing else needs no savepoint
    // around it: if it fails, nothing of the batch commits. Two round trips fewer per batch,
    // which is every batch at low load.
    let alone = one_write_alone(&batch);
    let mut produced = Produced::default();
    let mut bulk: Vec<BulkGroup> = Vec::new();
    let mut jobs = batch.into_iter();
    while let Some(Job { work, reply, .. }) = jobs.next() {
        let ran = match work {
            Work::Bulk { kind, write, item } => {
                match bulk.iter_mut().find(|g| g.kind == kind) {
                    Some(group) => group.items.push((item, reply)),
                    None => bulk.push(BulkGroup {
                        kind,
                        write,
                        items: vec![(item, reply)],
                    }),
                }
                continue;
            }
            Work::Entries(out) => match encode(out) {
                Ok(out) => Ran::Done(out),
                Err(e) => Ran::Failed(e),
            },
            Work::Write(write) => in_savepoint(&mut tx, alone, write).await,
        };
        match ran {
            Ran::Done(out) => produced.keep(reply, out),
            Ran::Failed(e) => {
                let _ = reply.send(Err(e));
            }
            Ran::Broken(e) => {
                tracing::error!(error = %e, "an audited write could not be undone");
                let _ = reply.send(Err(e));
                return abandon(produced.done, bulk, jobs.map(|j| j.reply));
            }
        }
    }
    let mut groups = bulk.into_iter();
    while let Some(group) = groups.next() {
        let (items, replies): (Vec<_>, Vec<_>) = group.items.into_iter().unzip();
        let count = items.len();
        let write = group.write;
        let ran = in_savepoint(&mut tx, alone, move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let outs = write(conn, items).await?;
                if outs.len() == count {
                    // An item's entry the verifier would refuse undoes the group: its rows are
                    // in multi-row statements. The API's bounds on what callers send keep
                    // every entry of a request far below the limit, so this never fires.
                    outs.into_iter().map(encode).collect::<Result<Vec<_>, _>>()
                } else {
                    Err(StoreError::Corrupt(format!(
                        "a bulk write of {count} items returned {} outcomes",
                        outs.len()
                    )))
                }
            }) as BoxFuture<'_, Result<Vec<Encoded>, StoreError>>
        })
        .await;
        match ran {
            Ran::Done(outs) => {
                for (reply, out) in replies.into_iter().zip(outs) {
                    produced.keep(reply, out);
                }
            }
            Ran::Failed(e) => {
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::BatchFailed(message.clone())));
                }
            }
            Ran::Broken(e) => {
                tracing::error!(error = %e, "a bulk write could not be undone");
                return abandon(produced.done, groups.collect(), replies.into_iter());
            }
        }
    }
    let Produced {
        done,
        entries,
        payloads,
    } = produced;
    if done.is_empty() {
        // Every write failed (and a write run without a savepoint may have left changes):
        // dropping the transaction rolls it back.
        return;
    }
    let committed: Result<u64, StoreError> = async {
        let (first, new_edge) = if entries.is_empty() {
            (0, None)
        } else {
            let known = edge.lock().unwrap_or_else(PoisonError::into_inner).clone();
            rows::append(&mut tx, &entries, &payloads, known.as_ref()).await?
        };
        tx.commit().await?;
        // Only a committed edge is kept: an uncommitted one may never exist.
        if let Some(new_edge) = new_edge {
            let mut known = edge.lock().unwrap_or_else(PoisonError::into_inner);
            if known.as_ref().is_none_or(|k| k.size < new_edge.size) {
                *known = Some(new_edge);
            }
        }
        Ok(first)
    }
    .await;
    match committed {
        Ok(first) => {
            for (reply, value, range) in done {
                let indexes = first + range.start as u64..first + range.end as u64;
                let _ = reply.send(Ok((value, indexes)));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "an audited write batch failed to commit");
            let message = e.to_string();
            for (reply, _, _) in done {
                let _ = reply.send(Err(StoreError::BatchFailed(message.clone())));
            }
        }
    }
}

/// The items of one bulk kind in a batch, with where each outcome goes.
struct BulkGroup {
    kind: &'static str,
    write: BulkFn,
    items: Vec<(Box<dyn Any + Send>, Reply)>,
}

/// The transaction is in an unknown state: nothing of this batch may commit. Everyone still
/// waiting hears so.
fn abandon(done: Vec<Done>, bulk: Vec<BulkGroup>, pending: impl Iterator<Item = Reply>) {
    tracing::error!("an audited write batch could not undo a failed write and was abandoned");
    let message = "the write batch was abandoned".to_owned();
    let waiting = done
        .into_iter()
        .map(|d| d.0)
        .chain(
            bulk.into_iter()
                .flat_map(|g| g.items.into_iter().map(|i| i.1)),
        )
        .chain(pending);
    for reply in waiting {
        let _ = reply.send(Err(StoreError::BatchFailed(message.clone())));
    }
}

/// How a write of a batch (one job's, or a bulk group's) went.
enum Ran<T> {
    Done(T),
    /// The write failed and its savepoint was rolled back: the batch goes on.
    Failed(StoreError),
    /// Rolling back failed too: the whole batch must be abandoned.
    Broken(StoreError),
}

/// Whether `batch` is one write and nothing else: one job's own SQL, or the items of one bulk
/// kind. Entries alone must commit whatever a write does, so a batch holding them is not.
fn one_write_alone(batch: &[Job]) -> bool {
    match batch {
        [] => false,
        [only] => !matches!(only.work, Work::Entries(_)),
        [first, rest @ ..] => {
            let Work::Bulk { kind, .. } = &first.work else {
                return false;
            };
            rest.iter()
                .all(|job| matches!(&job.work, Work::Bulk { kind: k, .. } if k == kind))
        }
    }
}

/// Runs `write` in a savepoint of the batch's transaction: kept if it succeeds, rolled back if
/// it fails. When the write is `alone` in its batch, it runs in the transaction itself, and a
/// failure leaves the batch with nothing to commit (see [`run_batch`]).
async fn in_savepoint<T>(
    tx: &mut AnyConnection,
    alone: bool,
    write: impl for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>>,
) -> Ran<T> {
    if alone {
        return match write(tx).await {
            Ok(out) => Ran::Done(out),
            Err(e) => Ran::Failed(e),
        };
    }
    let mut savepoint = match tx.begin().await {
        Ok(savepoint) => savepoint,
        Err(e) => return Ran::Broken(e.into()),
    };
    match write(&mut savepoint).await {
        Ok(out) => match savepoint.commit().await {
            Ok(()) => Ran::Done(out),
            Err(e) => Ran::Broken(e.into()),
        },
        Err(e) => match savepoint.rollback().await {
            Ok(()) => Ran::Failed(e),
            Err(rollback) => Ran::Broken(rollback.into()),
        },
    }
}
