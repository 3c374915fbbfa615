//! The web console in a real browser: Debian's Chromium, headless, driven by Playwright
//! (`tests/browser/console.mjs`) against a host on loopback. The guardian sees a ¥600 request
//! appear without reloading and approves it by retyping the amount while the agent waits for its
//! token; denies and counter-offers; sees amounts in currencies of 0 and 3 minor-unit digits (CLP,
//! KWD) at their true magnitude and retypes them; reads every param of a generic action in full,
//! as text; checks a receipt; sets a device's thresholds; sees a volume notice. The vendor uploads
//! the example plugin (and a refused one), shadows, activates, rolls back, replays, edits the
//! policy. The platform finds the decision and sees it verified in the
//! browser, then failing once the stored entry is tampered with. Screenshots of every screen at
//! phone and desktop widths go to `target/browser-screenshots/`.
//!
//! `scripts/setup` installs Chromium and the test's npm packages; without them this test fails,
//! saying so.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use approval_host::audit::entry::{Entry, Event};
use approval_host::clock::{Clock as _, ManualClock, SystemClock};
use approval_host::store::audit::EntryFilter;
use common::{ADMIN, TestHost, plugin, variant};
use serde_json::json;
use sqlx::Connection as _;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("browser-screenshots")
}

/// Runs one phase of the browser script; panics with its output when it fails.
async fn phase(name: &str, vars: &[(&str, String)]) {
    let output = tokio::process::Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .arg(name)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SCREENSHOTS", screenshots())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("node is needed for the browser tests (run ./scripts/setup): {e}")
        });
    assert!(
        output.status.success(),
        "browser phase {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run ./scripts/setup (npm ci in tests/browser)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run ./scripts/setup (it installs Debian's chromium)"
    );

    let db = common::sqlite().await;
    // The browser counts down against its own clock, and replays need requests at distinct
    // times: the host's clock follows the real one.
    let clock = ManualClock::at(SystemClock.now_ms());
    let follower = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                clock.set(SystemClock.now_ms());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let host = TestHost::start(&db, clock).await;
    let vendor = host.vendor("demo-toys").await;
    let (status, body) = host
        .put(
            "/v1/vendor/policy",
            &vendor,
            json!({
                "spend_thresholds": {"CNY": 50000, "KWD": 50000},
                "generic_actions": {"declared": ["lights.on"]},
                "plugin_limits": {"deadline_ms": 10000},
                "ttl_seconds": {"default": 3600},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let agent = host
        .actor(&vendor, "teddy-bear", &["toy"], &["parent-1"])
        .await;
    // A second vendor that sends generic actions it does not declare to a guardian (the same one).
    let lamps = host.vendor("demo-lamps").await;
    let (status, body) = host
        .put(
            "/v1/vendor/policy",
            &lamps,
            json!({"generic_actions": {"undeclared": "escalate"}, "ttl_seconds": {"default": 3600}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let lamp = host
        .actor(&lamps, "desk-lamp", &["home"], &["parent-1"])
        .await;
    let guardian = host.guardian("parent-1");

    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let path = files.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let velocity = plugin("velocity");
    let vars = vec![
        ("CONSOLE_URL", host.url.clone()),
        ("AGENT_TOKEN", agent),
        ("LAMP_TOKEN", lamp),
        ("GUARDIAN_TOKEN", guardian),
        ("VENDOR_TOKEN", vendor),
        ("ADMIN_TOKEN", ADMIN.to_owned()),
        ("CHROMIUM", chromium),
        ("EXAMPLE_PLUGIN", write("velocity.wasm", velocity.clone())),
        (
            "EXAMPLE_PLUGIN_V2",
            write("velocity-v2.wasm", variant(&velocity, "v2")),
        ),
        (
            "WRONG_WORLD",
            write("wrong_world.wasm", plugin("wrong_world")),
        ),
    ];
    phase("guardian", &vars).await;
    phase("vendor", &vars).await;

    // The decision the guardian approved in the browser, as the platform will look it up.
    let approved = host
        .state
        .audit
        .search(
            &EntryFilter {
                kind: Some("decided".into()),
                decision: Some("approved".into()),
                ..EntryFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    let entry = approved.first().expect("the approval is in the log");
    let decoded = approval_host::audit::entry::decode(&entry.bytes).unwrap();
    let Event::Decided { approval_id, .. } = &decoded.event else {
        panic!("{decoded:?}")
    };
    let mut platform = vars.clone();
    platform.push(("APPROVAL_ID", approval_id.clone()));
    platform.push(("ENTRY_INDEX", entry.index.to_string()));
    phase("platform-verified", &platform).await;

    // Someone with the database rewrites the stored decision as a denial.
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    for drop in [
        "DROP TRIGGER audit_entries_append_only_u",
        "DROP TRIGGER audit_entries_append_only_d",
    ] {
        sqlx::query(drop).execute(&mut conn).await.unwrap();
    }
    let mut forged: Entry = decoded.clone();
    if let Event::Decided { decider, .. } = &mut forged.event {
        *decider = Some("parent-2".into());
    }
    sqlx::query("UPDATE audit_entries SET entry = $1 WHERE idx = $2")
        .bind(forged.encode())
        .bind(i64::try_from(entry.index).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    // The explorer still finds the entry by its (unchanged) index columns.
    phase("platform-tampered", &platform).await;

    tokio::time::timeout(Duration::from_secs(30), host.stop())
        .await
        .ok();
    follower.abort();
    let shots = std::fs::read_dir(screenshots()).unwrap().count();
    assert!(shots >= 26, "only {shots} screenshots");
}
