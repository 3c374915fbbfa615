//! What the audit log costs: durable appends (one entry per commit, a batch per commit, and many
//! concurrent writers sharing commits), proofs from a stored tree of 1,000,000 entries, and
//! offline verification of an export.
//!
//! Run with `cargo bench -p approval-host --bench audit_log`; see BENCHMARKS.md for results.
//! PostgreSQL figures need the server of the test suite (`APPROVAL_HOST_TEST_POSTGRES`
//! overrides `postgres://postgres@127.0.0.1:5432/test`); without one they are skipped.
//!
//! Every append is durable when it returns: SQLite in WAL mode with `synchronous = FULL`
//! (an fsync of the WAL per commit), PostgreSQL with its default `synchronous_commit = on`.
//!
//! - `append/<db>/1_per_commit`: `AuditLog::append` of one entry, awaited before the next;
//! - `append/<db>/64_per_commit`: one write of 64 entries per commit;
//! - `append/<db>/256_concurrent_writers`: 256 tasks each appending one entry at once, as
//!   decisions arrive: the writer commits whatever is queued together (group commit);
//! - `proofs_1m/<op>`: a root, an inclusion proof and a consistency proof from the stored tree
//!   of 1,000,000 entries on SQLite, each read with one query;
//! - `verify_export_100k`: the offline verifier over an export of 100,000 entries.
#![allow(clippy::unwrap_used)]

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use approval_host::audit::entry::{Entry, Event};
use approval_host::audit::verify::verify_export;
use approval_host::audit::{AuditConfig, AuditLog};
use approval_host::clock::SystemClock;
use approval_host::store::Db;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

/// A typical entry: a guardian's decision (about 330 bytes encoded).
fn decided(i: u64) -> Entry {
    Entry::new(
        1_795_000_000_000 + i,
        Event::Decided {
            approval_id: format!("apr_{i:032x}"),
            vendor: "acme-toys".into(),
            actor: "teddy-7".into(),
            status: "approved".into(),
            method: "human".into(),
            decider: Some("guardian-mom".into()),
            rule_id: None,
            reason: None,
            guardian_reason_sha256: None,
            granted_params_hash: Some(format!("{i:064x}")),
            token_id: Some(format!("{:032x}", i * 7)),
            expires_at_ms: None,
        },
    )
}

async fn sqlite(dir: &std::path::Path, name: &str) -> Db {
    let url = format!("sqlite://{}?mode=rwc", dir.join(name).display());
    Db::connect(&url).await.unwrap()
}

const PG_SCHEMA: &str = "bench_audit";

fn postgres_url() -> String {
    std::env::var("APPROVAL_HOST_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn drop_pg_schema() -> Option<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::AnyConnection::connect(&postgres_url()).await.ok()?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
        .execute(&mut conn)
        .await
        .ok()?;
    Some(())
}

async fn postgres() -> Option<Db> {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let base = postgres_url();
    drop_pg_schema().await?;
    let mut conn = sqlx::AnyConnection::connect(&base).await.ok()?;
    let schema = PG_SCHEMA;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .ok()?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Db::connect(&format!("{base}{sep}options=-c%20search_path%3D{schema}"))
        .await
        .ok()
}

async fn log(db: Db) -> Arc<AuditLog> {
    AuditLog::open(db, AuditConfig::default(), Arc::new(SystemClock))
        .await
        .unwrap()
}

fn appends(c: &mut Criterion, rt: &Runtime, name: &str, log: &Arc<AuditLog>) {
    let mut group = c.benchmark_group(format!("append/{name}"));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    let mut next = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_per_commit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    next += 1;
                    log.append(vec![decided(next)]).await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_per_commit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let batch = (0..64).map(|i| decided(next + i)).collect();
                    next += 64;
                    log.append(batch).await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function("256_concurrent_writers", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let writers: Vec<_> = (0..256)
                        .map(|i| {
                            let log = Arc::clone(log);
                            let entry = decided(next + i);
                            tokio::spawn(async move { log.append(vec![entry]).await.unwrap() })
                        })
                        .collect();
                    next += 256;
                    for writer in writers {
                        writer.await.unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// A SQLite log of `size` entries under `target/`, kept between runs (building 1M takes a while).
async fn big_log(size: u64) -> Arc<AuditLog> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let log = log(sqlite(dir, &format!("bench-audit-{size}-v1.db")).await).await;
    let mut have = log.size().await.unwrap();
    while have < size {
        let batch = (have..size.min(have + 50_000)).map(decided).collect();
        log.append(batch).await.unwrap();
        have = log.size().await.unwrap();
        if have % 1_000_000 == 0 {
            eprintln!("built {have} of {size} entries");
        }
    }
    log.checkpoint().await.unwrap();
    log
}

/// Root, inclusion and consistency proofs over a log of `size` entries.
fn proofs(c: &mut Criterion, rt: &Runtime, size: u64, name: &str) {
    // Built on first use, so that a filter leaving these out does not build the log.
    let built = OnceCell::new();
    let log = || built.get_or_init(|| rt.block_on(big_log(size))).clone();
    let mut group = c.benchmark_group(name);
    group.sample_size(100);
    let mut i = 0u64;
    group.bench_function("root", |b| {
        let log = log();
        b.iter(|| rt.block_on(log.root(size)).unwrap());
    });
    group.bench_function("inclusion_proof", |b| {
        let log = log();
        b.iter(|| {
            i = (i + 7_919) % size;
            rt.block_on(log.inclusion_proof(i, size)).unwrap()
        });
    });
    group.bench_function("consistency_proof", |b| {
        let log = log();
        b.iter(|| {
            i = (i + 7_919) % size;
            rt.block_on(log.consistency_proof(i.max(1), size)).unwrap()
        });
    });
    group.finish();
    if let Some(log) = built.into_inner() {
        rt.block_on(log.close()).unwrap();
    }
}

fn verification(c: &mut Criterion, rt: &Runtime) {
    const SIZE: u64 = 100_000;
    let mut group = c.benchmark_group("verify_export");
    group.sample_size(10).throughput(Throughput::Elements(SIZE));
    let built = OnceCell::new();
    group.bench_function("100k_entries", |b| {
        let (log, export) = built.get_or_init(|| {
            let log = rt.block_on(big_log(SIZE));
            let mut export = Vec::new();
            rt.block_on(log.export(&mut export)).unwrap();
            eprintln!("the export of {SIZE} entries is {} MiB", export.len() >> 20);
            (log, export)
        });
        b.iter(|| {
            let report = verify_export(&export[..], log.vkey(), &[]).unwrap();
            assert!(report.ok());
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite_log = rt.block_on(async { log(sqlite(dir.path(), "append.db").await).await });
    appends(c, &rt, "sqlite", &sqlite_log);
    rt.block_on(sqlite_log.close()).unwrap();
    match rt.block_on(postgres()) {
        Some(db) => {
            let pg_log = rt.block_on(log(db));
            appends(c, &rt, "postgres", &pg_log);
            rt.block_on(pg_log.close()).unwrap();
            rt.block_on(drop_pg_schema());
        }
        None => eprintln!("PostgreSQL is not reachable: skipping its figures"),
    }
    proofs(c, &rt, 1_000_000, "proofs_1m");
    proofs(c, &rt, 10_000_000, "proofs_10m");
    verification(c, &rt);
}

criterion_group!(audit, benches);
criterion_main!(audit);
