//! The plugin lifecycle on SQLite and PostgreSQL: content-addressed uploads with immutable
//! versions, validation errors that store nothing, state changes and rollbacks that are atomic
//! under concurrent calls, signed uploads, and reloading after a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use approval_host::plugin::UploadError;
use approval_host::plugin::registry::{PluginRegistry, PluginState, RegistryError};
use approval_host::risk::Decision;
use common::{TestDb, payment, plugin, runtime, variant};
use ed25519_dalek::{Signer as _, SigningKey};

const VENDOR: &str = "acme-toys";

async fn registry(db: &TestDb) -> PluginRegistry {
    PluginRegistry::open(runtime(), db.db.clone(), common::audit_log(&db.db).await)
        .await
        .unwrap()
}

fn states(versions: &[approval_host::plugin::registry::PluginVersion]) -> Vec<(u32, PluginState)> {
    versions.iter().map(|v| (v.version, v.state)).collect()
}

/// Uploads velocity twice (same code, different bytes): versions 1 and 2, both inactive.
async fn two_versions(registry: &PluginRegistry) {
    let bytes = plugin("velocity");
    registry.upload(VENDOR, &bytes, None, 1).await.unwrap();
    registry
        .upload(VENDOR, &variant(&bytes, "v2"), None, 2)
        .await
        .unwrap();
}

/// Puts one velocity version in a state.
async fn set(registry: &PluginRegistry, version: u32, state: PluginState) {
    registry
        .set_state(VENDOR, ("velocity", version), state, 3)
        .await
        .unwrap();
}

on_both_backends!(uploads_get_immutable_content_addressed_versions, uploads);
async fn uploads(db: TestDb) {
    let registry = registry(&db).await;
    let bytes = plugin("velocity");
    let v1 = registry.upload(VENDOR, &bytes, None, 1_000).await.unwrap();
    assert_eq!(
        (v1.name.as_str(), v1.version, v1.state),
        ("velocity", 1, PluginState::Inactive)
    );
    assert_eq!(v1.sha256.len(), 64);
    assert_eq!(v1.info.rules.len(), 3);
    assert!(!v1.signed);

    let again = registry.upload(VENDOR, &bytes, None, 2_000).await.unwrap();
    assert_eq!(again, v1, "the same bytes are the same version");

    let v2 = registry
        .upload(VENDOR, &variant(&bytes, "v2"), None, 3_000)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_ne!(v2.sha256, v1.sha256);

    let other_vendor = registry
        .upload("other-vendor", &bytes, None, 4_000)
        .await
        .unwrap();
    assert_eq!(
        other_vendor.version, 1,
        "versions are numbered per vendor and plugin"
    );

    let refused = registry
        .upload(VENDOR, &plugin("wrong_world"), None, 5_000)
        .await;
    assert!(matches!(
        refused,
        Err(RegistryError::Upload(UploadError::MissingExport { .. }))
    ));
    let refused = registry
        .upload(VENDOR, &plugin("hostile_startup_loop"), None, 5_000)
        .await;
    assert!(matches!(
        refused,
        Err(RegistryError::Upload(UploadError::DescribeFailed(_)))
    ));
    assert_eq!(
        states(&registry.versions(VENDOR).await.unwrap()),
        [(1, PluginState::Inactive), (2, PluginState::Inactive)]
    );
}

on_both_backends!(activate_shadow_and_roll_back, lifecycle);
async fn lifecycle(db: TestDb) {
    let registry = registry(&db).await;
    two_versions(&registry).await;
    assert!(registry.live(VENDOR).active.is_empty());

    let rollback = registry.rollback(VENDOR, "velocity", 3).await;
    assert!(matches!(
        rollback,
        Err(RegistryError::NothingToRollBack { .. })
    ));
    let missing = registry
        .set_state(VENDOR, ("velocity", 9), PluginState::Active, 3)
        .await;
    assert!(matches!(
        missing,
        Err(RegistryError::NotFound { version: 9, .. })
    ));

    set(&registry, 1, PluginState::Active).await;
    set(&registry, 2, PluginState::Active).await;
    assert_eq!(
        states(&registry.versions(VENDOR).await.unwrap()),
        [(1, PluginState::Inactive), (2, PluginState::Active)]
    );
    let live = registry.live(VENDOR);
    assert_eq!(
        live.active
            .iter()
            .map(|p| p.identity.version)
            .collect::<Vec<_>>(),
        [2]
    );

    let back = registry.rollback(VENDOR, "velocity", 6).await.unwrap();
    assert_eq!((back.version, back.state), (1, PluginState::Active));
    registry
        .set_state(VENDOR, ("velocity", 2), PluginState::Shadow, 7)
        .await
        .unwrap();
    let live = registry.live(VENDOR);
    assert_eq!(
        live.active
            .iter()
            .map(|p| p.identity.version)
            .collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(
        live.shadow
            .iter()
            .map(|p| p.identity.version)
            .collect::<Vec<_>>(),
        [2]
    );

    // A restarted host loads the same live plugins from the database.
    let restarted = PluginRegistry::open(runtime(), db.db.clone(), common::audit_log(&db.db).await)
        .await
        .unwrap();
    let live = restarted.live(VENDOR);
    assert_eq!(
        live.active[0].identity,
        registry.live(VENDOR).active[0].identity
    );
    assert_eq!(live.shadow.len(), 1);
}

on_both_backends!(state_changes_are_atomic_under_concurrent_calls, concurrency);
async fn concurrency(db: TestDb) {
    let registry = Arc::new(registry(&db).await);
    two_versions(&registry).await;
    set(&registry, 1, PluginState::Active).await;
    set(&registry, 2, PluginState::Active).await;

    // A call that took its snapshot before a switch finishes on the version it started with.
    let before = registry.live(VENDOR);
    registry.rollback(VENDOR, "velocity", 5).await.unwrap();
    let rt = Arc::clone(registry.runtime());
    let report = rt
        .classify(
            &before.active[0],
            &payment("in-flight", 1_000, None),
            &common::relaxed(),
        )
        .await;
    assert_eq!(report.plugin.version, 2);
    assert_eq!(registry.live(VENDOR).active[0].identity.version, 1);

    let done = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (registry, done, rt) = (Arc::clone(&registry), Arc::clone(&done), Arc::clone(&rt));
            tokio::spawn(async move {
                let mut calls = 0u32;
                while !done.load(Ordering::Relaxed) || calls == 0 {
                    let live = registry.live(VENDOR);
                    assert_eq!(
                        live.active.len(),
                        1,
                        "exactly one active version at every instant"
                    );
                    let input = payment(&format!("c{i}-{calls}"), 1_000, None);
                    let report = rt
                        .classify(&live.active[0], &input, &common::relaxed())
                        .await;
                    assert!([1, 2].contains(&report.plugin.version));
                    assert_eq!(report.outcome.unwrap().decision, Decision::Allow);
                    calls += 1;
                    tokio::task::yield_now().await;
                }
                calls
            })
        })
        .collect();
    for step in 0..20 {
        registry
            .rollback(VENDOR, "velocity", 10 + step)
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::Relaxed);
    for caller in callers {
        assert!(caller.await.unwrap() > 0);
    }
    let active: Vec<_> = registry
        .versions(VENDOR)
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.state == PluginState::Active)
        .collect();
    assert_eq!(active.len(), 1, "the database agrees: one active version");
}

on_both_backends!(a_vendor_with_a_key_must_sign_uploads, signing);
async fn signing(db: TestDb) {
    let registry = registry(&db).await;
    let key = SigningKey::from_bytes(&[7; 32]);
    registry
        .set_signing_key(VENDOR, key.verifying_key().to_bytes())
        .await
        .unwrap();
    let bytes = plugin("velocity");

    let unsigned = registry.upload(VENDOR, &bytes, None, 1).await;
    assert!(matches!(
        unsigned,
        Err(RegistryError::Upload(UploadError::SignatureRequired))
    ));
    let forged = SigningKey::from_bytes(&[8; 32]).sign(&bytes).to_bytes();
    let forged = registry.upload(VENDOR, &bytes, Some(&forged), 1).await;
    assert!(matches!(
        forged,
        Err(RegistryError::Upload(UploadError::BadSignature))
    ));
    let truncated = registry.upload(VENDOR, &bytes, Some(&[1, 2, 3]), 1).await;
    assert!(matches!(
        truncated,
        Err(RegistryError::Upload(UploadError::BadSignature))
    ));

    let signature = key.sign(&bytes).to_bytes();
    let signed = registry
        .upload(VENDOR, &bytes, Some(&signature), 1)
        .await
        .unwrap();
    assert!(signed.signed);
    assert!(
        registry
            .upload("unsigned-vendor", &bytes, None, 1)
            .await
            .is_ok()
    );
}
