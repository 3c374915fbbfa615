//! The plugin lifecycle: upload → size cap → (signature) → validate and compile → describe →
//! store content-addressed with an immutable version number → states `inactive | shadow |
//! active`, changed atomically.
//!
//! Each vendor's live plugins are published as one immutable [`VendorPlugins`] snapshot that is
//! replaced whole after every state change. A classification takes the snapshot once and keeps
//! it, so in-flight calls finish on the versions they started with, and no call ever sees a
//! plugin with two active versions or none in the middle of a switch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::error::UploadError;
use super::limits::PluginLimits;
use super::runtime::{CompiledPlugin, LoadedPlugin, PluginIdentity, PluginRuntime};
use crate::audit::{AuditLog, Audited, Scope, events};
use crate::risk::PluginInfo;
use crate::store::cache::Topic;
use crate::store::{self, Db, StoreError};

/// Where a plugin version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginState {
    /// Stored, not run.
    Inactive,
    /// Run on every request of its vendor; its verdicts are recorded but never decide.
    Shadow,
    /// Run on every request of its vendor; its verdicts count. At most one per plugin name.
    Active,
}

/// One stored version of a vendor's plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginVersion {
    pub vendor: String,
    /// The plugin's name, from its `describe()`.
    pub name: String,
    /// Immutable, increasing per (vendor, name), from 1.
    pub version: u32,
    /// Hex sha256 of the component: its content address.
    pub sha256: String,
    pub size_bytes: u64,
    pub info: PluginInfo,
    pub state: PluginState,
    /// Whether the upload carried a signature that verified against the vendor's key.
    pub signed: bool,
    pub uploaded_at_ms: u64,
}

impl PluginVersion {
    fn identity(&self) -> PluginIdentity {
        PluginIdentity {
            vendor: self.vendor.clone(),
            name: self.name.clone(),
            version: self.version,
            sha256: self.sha256.clone(),
        }
    }
}

/// A vendor's live plugins at one moment: what a classification runs.
#[derive(Debug, Default)]
pub struct VendorPlugins {
    /// Active versions: their verdicts count.
    pub active: Vec<LoadedPlugin>,
    /// Shadow versions: run and recorded only.
    pub shadow: Vec<LoadedPlugin>,
}

/// Errors of lifecycle operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("plugin {name:?} has no version {version}")]
    NotFound { name: String, version: u32 },
    #[error("plugin {name:?} has no earlier active version to roll back to")]
    NothingToRollBack { name: String },
    #[error("the vendor has no plugin {name:?}")]
    UnknownPlugin { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the plugin runtime failed: {0}")]
    Runtime(String),
}

/// The process-wide plugin registry.
pub struct PluginRegistry {
    runtime: Arc<PluginRuntime>,
    db: Db,
    /// Uploads and state changes are recorded with the writes that make them.
    audit: Arc<AuditLog>,
    /// Each vendor's live snapshot, replaced whole on every change.
    live: RwLock<HashMap<String, Arc<VendorPlugins>>>,
    /// The compiled components of live (active or shadow) versions by sha256, shared by every
    /// live version with the same bytes. Other versions are compiled when asked for (a replay)
    /// and not kept: a vendor uploading version after version must not grow the host's memory.
    compiled: Mutex<HashMap<String, CompiledPlugin>>,
    /// Orders state changes with the publication of their snapshots (uniqueness itself is
    /// enforced by the database).
    changes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry").finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// Opens the registry and loads every live plugin version from the database.
    ///
    /// # Errors
    /// A database failure, or a stored live component that no longer compiles.
    pub async fn open(
        runtime: Arc<PluginRuntime>,
        db: Db,
        audit: Arc<AuditLog>,
    ) -> Result<Self, RegistryError> {
        let registry = Self {
            runtime,
            db,
            audit,
            live: RwLock::default(),
            compiled: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
        };
        for vendor in store::plugins::vendors_with_live_versions(&registry.db).await? {
            registry.refresh(&vendor).await?;
        }
        Ok(registry)
    }

    /// The runtime that compiled this registry's plugins: classify them with it.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// The vendor's live plugins now. Cheap; hold the snapshot for the whole classification.
    pub fn live(&self, vendor: &str) -> Arc<VendorPlugins> {
        let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
        live.get(vendor).cloned().unwrap_or_default()
    }

    /// Uploads a component as the next version of the plugin it describes, in state inactive.
    /// Uploading the same bytes again returns the existing version. When the vendor has
    /// registered a signing key, `signature` (64-byte Ed25519 over the component bytes) is required.
    ///
    /// # Errors
    /// [`RegistryError::Upload`] with the reason a vendor can act on, or a database failure.
    pub async fn upload(
        &self,
        vendor: &str,
        bytes: &[u8],
        signature: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<PluginVersion, RegistryError> {
        Ok(self.upload_new(vendor, bytes, signature, now_ms).await?.0)
    }

    /// [`Self::upload`], also telling whether the version is new (`false`: the same bytes were
    /// uploaded before and this is that version).
    ///
    /// # Errors
    /// As [`Self::upload`].
    pub async fn upload_new(
        &self,
        vendor: &str,
        bytes: &[u8],
        signature: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<(PluginVersion, bool), RegistryError> {
        let limit = self.runtime.config().max_component_bytes;
        if bytes.len() > limit {
            return Err(UploadError::TooLarge {
                bytes: bytes.len(),
                limit,
            }
            .into());
        }
        let signed = match store::plugins::signing_key(&self.db, vendor).await? {
            Some(key) => {
                verify_signature(
                    &key,
                    bytes,
                    signature.ok_or(UploadError::SignatureRequired)?,
                )?;
                true
            }
            None => false,
        };
        let compiled = self.compile(bytes.to_vec()).await?;
        let info = self
            .runtime
            .describe(&compiled, &PluginLimits::at_upload())
            .await?;
        let (vendor_owned, sha, bytes_owned) =
            (vendor.to_owned(), compiled.sha256_hex(), bytes.to_vec());
        let stored = self
            .audit
            .commit(Scope::Vendor(vendor.to_owned()), move |conn| {
                Box::pin(async move {
                    let new = store::plugins::NewVersion {
                        vendor: &vendor_owned,
                        sha256: &sha,
                        bytes: &bytes_owned,
                        info: &info,
                        signed,
                        now_ms,
                    };
                    let (version, created) = store::plugins::insert_version(conn, &new).await?;
                    let entries = if created {
                        vec![events::plugin_uploaded(&version)]
                    } else {
                        Vec::new()
                    };
                    Ok(Audited {
                        value: (version, created),
                        entries,
                        payloads: Vec::new(),
                    })
                })
            })
            .await?
            .value;
        // The new version is inactive: its compiled code is not kept (see `compiled`).
        Ok(stored)
    }

    /// What one version did on requests (see [`store::plugin_stats::version_stats`]).
    ///
    /// # Errors
    /// A database failure.
    pub async fn stats(
        &self,
        calls: store::plugin_stats::Calls<'_>,
    ) -> Result<store::plugin_stats::VersionStats, RegistryError> {
        Ok(store::plugin_stats::version_stats(&self.db, calls).await?)
    }

    /// Every plugin version called since `earlier_since`, across vendors, in two windows (see
    /// [`store::plugin_stats::health`]).
    ///
    /// # Errors
    /// A database failure.
    pub async fn health(
        &self,
        earlier_since: u64,
        recent_since: u64,
    ) -> Result<Vec<store::plugin_stats::VersionHealth>, RegistryError> {
        Ok(store::plugin_stats::health(&self.db, earlier_since, recent_since).await?)
    }

    /// One version, compiled and ready to call (whatever its state): for replays.
    ///
    /// # Errors
    /// The version does not exist, or a database or compile failure.
    pub async fn load_version(
        &self,
        vendor: &str,
        name: &str,
        version: u32,
    ) -> Result<LoadedPlugin, RegistryError> {
        let stored = store::plugins::version(&self.db, vendor, name, version)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                name: name.to_owned(),
                version,
            })?;
        Ok(LoadedPlugin {
            identity: stored.identity(),
            compiled: self.compiled_for(&stored.sha256).await?,
            info: stored.info,
        })
    }

    /// Registers the vendor's Ed25519 public key; from then on its uploads must be signed.
    ///
    /// # Errors
    /// A database failure.
    pub async fn set_signing_key(
        &self,
        vendor: &str,
        public_key: [u8; 32],
    ) -> Result<(), RegistryError> {
        store::plugins::set_signing_key(&self.db, vendor, &public_key).await?;
        Ok(())
    }

    /// Every version of the vendor's plugins.
    ///
    /// # Errors
    /// A database failure.
    pub async fn versions(&self, vendor: &str) -> Result<Vec<PluginVersion>, RegistryError> {
        Ok(store::plugins::versions(&self.db, vendor).await?)
    }

    /// Puts a version in `state`. Activating replaces the plugin's active version in one step.
    ///
    /// # Errors
    /// The version does not exist, or a database failure.
    pub async fn set_state(
        &self,
        vendor: &str,
        (name, version): (&str, u32),
        state: PluginState,
        now_ms: u64,
    ) -> Result<PluginVersion, RegistryError> {
        let _order = self.changes.lock().await;
        self.change_state(vendor, name, version, state, now_ms)
            .await
    }

    /// Reactivates the version that was active before the current one (an undo of the last
    /// activation; rolling back twice returns to where it started).
    ///
    /// # Errors
    /// The vendor has no plugin of this name, there is no active version or no earlier
    /// activation, or a database failure.
    pub async fn rollback(
        &self,
        vendor: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<PluginVersion, RegistryError> {
        let _order = self.changes.lock().await;
        let nothing = || RegistryError::NothingToRollBack {
            name: name.to_owned(),
        };
        let versions = store::plugins::versions(&self.db, vendor).await?;
        // Another vendor's plugin, like one nobody uploaded, does not exist for this vendor.
        if !versions.iter().any(|v| v.name == name) {
            return Err(RegistryError::UnknownPlugin {
                name: name.to_owned(),
            });
        }
        let current = versions
            .into_iter()
            .find(|v| v.name == name && v.state == PluginState::Active)
            .ok_or_else(nothing)?;
        let previous = store::plugins::previous_activation(&self.db, vendor, name, current.version)
            .await?
            .ok_or_else(nothing)?;
        self.change_state(vendor, name, previous, PluginState::Active, now_ms)
            .await
    }

    async fn change_state(
        &self,
        vendor: &str,
        name: &str,
        version: u32,
        state: PluginState,
        now_ms: u64,
    ) -> Result<PluginVersion, RegistryError> {
        let (vendor_owned, name_owned) = (vendor.to_owned(), name.to_owned());
        let changed = self
            .audit
            .commit(Scope::Vendor(vendor.to_owned()), move |conn| {
                Box::pin(async move {
                    let target = (vendor_owned.as_str(), name_owned.as_str(), version);
                    let Some(change) =
                        store::plugins::set_state(conn, target, state, now_ms).await?
                    else {
                        return Ok(Audited::nothing(None));
                    };
                    let entries = change
                        .deactivated
                        .iter()
                        .chain([&change.changed])
                        .map(|v| events::plugin_state_changed(v, now_ms))
                        .collect();
                    Ok(Audited {
                        value: Some(change.changed),
                        entries,
                        payloads: Vec::new(),
                    })
                })
            })
            .await?
            .value
            .ok_or_else(|| RegistryError::NotFound {
                name: name.to_owned(),
                version,
            })?;
        self.refresh(vendor).await?;
        // Other replicas reload the vendor's snapshot when they hear of it.
        self.db.changed(Topic::Plugins(vendor.to_owned())).await;
        Ok(changed)
    }

    /// Reloads the vendor's live snapshot from the database: another replica changed its
    /// plugins. Ordered with this process's own changes, so an older read never replaces a newer.
    ///
    /// # Errors
    /// A database failure, or a stored live component that no longer compiles.
    pub async fn reload(&self, vendor: &str) -> Result<(), RegistryError> {
        let _order = self.changes.lock().await;
        self.refresh(vendor).await
    }

    /// Reloads every vendor's live snapshot: changes made by other replicas may have gone
    /// unheard (the listener was not connected).
    ///
    /// # Errors
    /// A database failure, or a stored live component that no longer compiles.
    pub async fn reload_all(&self) -> Result<(), RegistryError> {
        let _order = self.changes.lock().await;
        let mut vendors: Vec<String> = self
            .live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        vendors.extend(store::plugins::vendors_with_live_versions(&self.db).await?);
        vendors.sort();
        vendors.dedup();
        for vendor in vendors {
            self.refresh(&vendor).await?;
        }
        Ok(())
    }

    /// Rebuilds and publishes the vendor's live snapshot from the database.
    async fn refresh(&self, vendor: &str) -> Result<(), RegistryError> {
        let mut set = VendorPlugins::default();
        for version in store::plugins::live_versions(&self.db, vendor).await? {
            let loaded = LoadedPlugin {
                identity: version.identity(),
                compiled: self.compiled_for(&version.sha256).await?,
                info: version.info,
            };
            match version.state {
                PluginState::Active => set.active.push(loaded),
                PluginState::Shadow => set.shadow.push(loaded),
                PluginState::Inactive => {}
            }
        }
        let loaded: Vec<CompiledPlugin> = set
            .active
            .iter()
            .chain(&set.shadow)
            .map(|p| p.compiled.clone())
            .collect();
        let still_live: HashSet<String> = {
            let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
            live.insert(vendor.to_owned(), Arc::new(set));
            live.values()
                .flat_map(|s| s.active.iter().chain(&s.shadow))
                .map(|p| p.compiled.sha256_hex())
                .collect()
        };
        // Keep the compiled code of live versions only (the one caller at a time holds
        // `changes`, so no other refresh races this).
        let mut compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        compiled.retain(|sha256, _| still_live.contains(sha256));
        compiled.extend(loaded.into_iter().map(|c| (c.sha256_hex(), c)));
        Ok(())
    }

    /// The compiled component with this sha256: a live version's, or compiled from the stored
    /// bytes (from the artifact cache when it has them).
    async fn compiled_for(&self, sha256: &str) -> Result<CompiledPlugin, RegistryError> {
        let known = self
            .compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sha256)
            .cloned();
        if let Some(compiled) = known {
            return Ok(compiled);
        }
        let bytes = store::plugins::blob(&self.db, sha256)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("component {sha256} is missing")))?;
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            return Err(
                StoreError::Corrupt(format!("component {sha256} does not match its hash")).into(),
            );
        }
        self.compile(bytes).await
    }

    /// Compiles off the async runtime: compilation takes milliseconds to seconds of CPU.
    async fn compile(&self, bytes: Vec<u8>) -> Result<CompiledPlugin, RegistryError> {
        let runtime = Arc::clone(&self.runtime);
        tokio::task::spawn_blocking(move || runtime.compile(&bytes))
            .await
            .map_err(|e| RegistryError::Runtime(e.to_string()))?
            .map_err(RegistryError::from)
    }
}

fn verify_signature(key: &[u8; 32], bytes: &[u8], signature: &[u8]) -> Result<(), UploadError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| UploadError::BadSignature)?;
    let signature = Signature::from_slice(signature).map_err(|_| UploadError::BadSignature)?;
    key.verify_strict(bytes, &signature)
        .map_err(|_| UploadError::BadSignature)
}
