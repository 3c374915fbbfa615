//! Caches of what nearly every request reads and hardly ever changes: whose a credential is,
//! an actor's device tags and overrides, a vendor's policy template.
//!
//! A cached value is used only while nothing it depends on (its [`Topic`]) has changed since it
//! was read. Every store function that changes such data calls [`super::Db::changed`] after its
//! commit: that bumps the topic's version here and, on PostgreSQL, tells the other replicas
//! (`NOTIFY`), whose listeners bump theirs (see [`crate::push`]). A value is stamped with its
//! topic's version read *before* its query, so a change that commits while the query runs
//! invalidates it too. A replica whose listener is down caches nothing, and forgets everything
//! when the listener reconnects (notifications sent meanwhile are lost). Entries also expire
//! after [`MAX_AGE`]: a bound on a change made behind the host's back (SQL by hand) or a
//! notification that failed to send.
//!
//! Lifetimes: [`Versions`] is process-wide (one per [`super::Db`]); each [`Cached`] belongs to
//! the service that reads through it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The longest a cached value is used, whatever the notifications say.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// What a cached value depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Vendor keys and agent tokens (a revocation).
    Credentials,
    /// A vendor's own settings (its policy template).
    Vendor(String),
    /// One actor's settings (device tags, guardians, overrides).
    Actor { vendor: String, actor: String },
    /// A vendor's live plugin versions (their states): not cached here, but every replica
    /// reloads the vendor's snapshot when it hears of a change (see [`crate::push`]).
    Plugins(String),
}

impl Topic {
    /// One actor's settings.
    pub fn actor(vendor: &str, actor: &str) -> Self {
        Topic::Actor {
            vendor: vendor.to_owned(),
            actor: actor.to_owned(),
        }
    }
}

/// When a value was read, as versions: it is current while both are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    epoch: u64,
    topic: u64,
}

/// The versions of the cached topics of one process.
#[derive(Debug)]
pub struct Versions {
    /// Bumped to forget everything.
    epoch: AtomicU64,
    /// The last version handed out.
    last: AtomicU64,
    /// Each changed topic's version (topics never changed are at 0).
    topics: Mutex<HashMap<Topic, u64>>,
    /// Whether changes made elsewhere reach this process; nothing is cached while not.
    live: AtomicBool,
}

impl Versions {
    /// Versions whose changes all happen in this process (`live`), or that wait for a listener
    /// to go live (PostgreSQL).
    pub fn new(live: bool) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            last: AtomicU64::new(0),
            topics: Mutex::new(HashMap::new()),
            live: AtomicBool::new(live),
        }
    }

    fn stamp(&self, topic: &Topic) -> Stamp {
        let epoch = self.epoch.load(Ordering::Acquire);
        let topic = self
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .copied()
            .unwrap_or(0);
        Stamp { epoch, topic }
    }

    /// `topic` changed: values read before now are no longer used.
    pub fn bump(&self, topic: Topic) {
        let version = self.last.fetch_add(1, Ordering::AcqRel) + 1;
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic, version);
    }

    /// Forgets every cached value, and sets whether to cache from now on.
    pub fn forget_all(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// A bounded cache of values that depend on a topic each.
pub struct Cached<K, V> {
    entries: quick_cache::sync::Cache<K, (Stamp, Instant, V)>,
    versions: Arc<Versions>,
}

impl<K, V> std::fmt::Debug for Cached<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").finish_non_exhaustive()
    }
}

impl<K, V> Cached<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// A cache of at most `capacity` values.
    pub fn new(versions: Arc<Versions>, capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            versions,
        }
    }

    /// Whether values are cached now (on PostgreSQL, only while the change listener is up).
    pub fn enabled(&self) -> bool {
        self.versions.live()
    }

    /// The value of `key`, from the cache while `topic` is unchanged, else from `load` (a
    /// `None` is not cached: it is for things that do not exist yet).
    ///
    /// # Errors
    /// What `load` failed with.
    pub async fn get_or_load<E, F>(&self, key: &K, topic: &Topic, load: F) -> Result<Option<V>, E>
    where
        F: Future<Output = Result<Option<V>, E>>,
    {
        if !self.versions.live() {
            return load.await;
        }
        let stamp = self.versions.stamp(topic);
        if let Some((at, read, value)) = self.entries.get(key)
            && at == stamp
            && read.elapsed() < MAX_AGE
        {
            return Ok(Some(value));
        }
        let read = Instant::now();
        let loaded = load.await?;
        if let Some(value) = &loaded {
            self.entries
                .insert(key.clone(), (stamp, read, value.clone()));
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn read(cache: &Cached<&'static str, u32>, topic: &Topic, db: u32) -> u32 {
        cache
            .get_or_load(&"k", topic, async { Ok::<_, ()>(Some(db)) })
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_value_is_used_until_its_topic_changes() {
        let versions = Arc::new(Versions::new(true));
        let cache = Cached::new(Arc::clone(&versions), 10);
        let topic = Topic::actor("v", "a");
        assert_eq!(read(&cache, &topic, 1).await, 1);
        assert_eq!(read(&cache, &topic, 2).await, 1, "cached");
        versions.bump(Topic::actor("v", "other"));
        versions.bump(Topic::Vendor("v".into()));
        assert_eq!(read(&cache, &topic, 2).await, 1, "other topics changed");
        versions.bump(topic.clone());
        assert_eq!(
            read(&cache, &topic, 3).await,
            3,
            "reloaded after the change"
        );
        versions.forget_all(true);
        assert_eq!(read(&cache, &topic, 4).await, 4, "forgotten");
    }

    #[tokio::test]
    async fn a_change_during_the_query_invalidates_what_it_read() {
        let versions = Arc::new(Versions::new(true));
        let cache: Cached<&'static str, u32> = Cached::new(Arc::clone(&versions), 10);
        let topic = Topic::Credentials;
        let loaded = cache
            .get_or_load(&"k", &topic, async {
                // The change commits while the old value is being read.
                versions.bump(Topic::Credentials);
                Ok::<_, ()>(Some(1))
            })
            .await
            .unwrap();
        assert_eq!(loaded, Some(1));
        assert_eq!(read(&cache, &topic, 2).await, 2);
    }

    #[tokio::test]
    async fn nothing_is_cached_while_changes_elsewhere_cannot_be_heard() {
        let versions = Arc::new(Versions::new(false));
        let cache = Cached::new(Arc::clone(&versions), 10);
        let topic = Topic::Vendor("v".into());
        assert_eq!(read(&cache, &topic, 1).await, 1);
        assert_eq!(read(&cache, &topic, 2).await, 2);
        versions.forget_all(true);
        assert_eq!(read(&cache, &topic, 3).await, 3);
        assert_eq!(read(&cache, &topic, 4).await, 3);
        let missing = cache
            .get_or_load(&"absent", &topic, async { Ok::<_, ()>(None) })
            .await
            .unwrap();
        assert_eq!(missing, None);
        assert_eq!(
            cache
                .get_or_load(&"absent", &topic, async { Ok::<_, ()>(Some(9)) })
                .await
                .unwrap(),
            Some(9),
            "absence is not cached"
        );
    }
}
