//! Push across replicas. Each process's events reach its own push streams through the
//! approval service's broadcast; with several replicas on one PostgreSQL, every event of this
//! process is also announced with `NOTIFY` (the approval's id only), and announcements from
//! other replicas are read back from the database and published here. A guardian connected to
//! any replica hears of a request made on any other.
//!
//! The same listener hears which cached settings other replicas changed (see
//! [`crate::store::cache`]); caching waits until it listens, and stops while it cannot. It also
//! hears which vendor's plugins changed state, and reloads that vendor's live plugins (all of
//! them after any gap, when changes may have gone unheard).
//!
//! Lifetimes: the relay tasks are process-wide and run until aborted.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::approvals::{ApprovalEvent, ApprovalService, Origin};
use crate::plugin::registry::PluginRegistry;
use crate::store::cache::Topic;
use crate::store::{Db, events};

/// What a replica announces: which approval changed, and who says so.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    /// The announcing process, so it ignores its own announcements.
    replica: String,
    approval_id: String,
}

/// Starts relaying: announces this process's approval events and publishes other replicas'.
/// Returns the tasks (abort them to stop). On SQLite there is nothing to relay.
pub fn spawn(
    service: &Arc<ApprovalService>,
    plugins: &Arc<PluginRegistry>,
    db: &Db,
    url: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    if db.backend() != crate::store::Backend::Postgres {
        return Vec::new();
    }
    let replica = {
        use rand::RngExt as _;
        format!("{:016x}", rand::rng().random::<u64>())
    };
    let mut events = service.subscribe();
    let (announce_db, me) = (db.clone(), replica.clone());
    let announcer = tokio::spawn(async move {
        loop {
            let approval_id = match events.recv().await {
                Ok(ApprovalEvent::Pending(n) | ApprovalEvent::Settled(n))
                    if n.origin == Origin::Here =>
                {
                    n.id.clone()
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "announcing events to other replicas fell behind");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let payload = serde_json::to_string(&Announcement {
                replica: me.clone(),
                approval_id,
            })
            .unwrap_or_default();
            if let Err(e) = events::notify(&announce_db, &payload).await {
                tracing::warn!(error = %e, "announcing an event to other replicas failed");
            }
        }
    });
    let (service, url) = (Arc::clone(service), url.to_owned());
    let plugins = Arc::clone(plugins);
    let versions = Arc::clone(db.versions());
    let listener = tokio::spawn(async move {
        loop {
            let mut listener = match events::listen(&url).await {
                Ok(listener) => listener,
                Err(e) => {
                    versions.forget_all(false);
                    tracing::warn!(error = %e, "listening for other replicas' events failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Changes made while nobody listened went unheard: start afresh, and cache again.
            versions.forget_all(true);
            reload_plugins(&plugins, None).await;
            loop {
                let notification = match listener.try_recv().await {
                    Ok(Some(notification)) => notification,
                    Ok(None) => {
                        // The connection dropped and came back: what was said meanwhile is lost.
                        versions.forget_all(true);
                        reload_plugins(&plugins, None).await;
                        continue;
                    }
                    Err(e) => {
                        versions.forget_all(false);
                        tracing::warn!(error = %e, "the event listener's connection dropped; reconnecting");
                        break;
                    }
                };
                if notification.channel() == events::CHANGES {
                    match serde_json::from_str::<Topic>(notification.payload()) {
                        Ok(Topic::Plugins(vendor)) => reload_plugins(&plugins, Some(&vendor)).await,
                        Ok(topic) => versions.bump(topic),
                        Err(_) => versions.forget_all(true),
                    }
                    continue;
                }
                let Ok(announcement) = serde_json::from_str::<Announcement>(notification.payload())
                else {
                    continue;
                };
                if announcement.replica == replica {
                    continue;
                }
                if let Err(e) = service.relay(&announcement.approval_id).await {
                    tracing::warn!(error = %e, "relaying another replica's event failed");
                }
            }
        }
    });
    vec![announcer, listener]
}

/// Reloads `vendor`'s live plugins (every vendor's for `None`) after another replica's change.
async fn reload_plugins(plugins: &PluginRegistry, vendor: Option<&str>) {
    let reloaded = match vendor {
        Some(vendor) => plugins.reload(vendor).await,
        None => plugins.reload_all().await,
    };
    if let Err(e) = reloaded {
        tracing::warn!(error = %e, vendor, "reloading plugins another replica changed failed");
    }
}
