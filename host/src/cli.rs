//! The command line: vendor tools for plugins, and the demo.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use approval_host::approvals::record::{ApprovalRecord, Provenance, Status};
use approval_host::approvals::{ApprovalConfig, ApprovalService, GuardianDecision, NewRequest};
use approval_host::audit::checkpoint::CheckpointVerifier;
use approval_host::audit::verify::verify_export;
use approval_host::audit::{AuditConfig, AuditLog, Receipt, entry};
use approval_host::clock::SystemClock;
use approval_host::plugin::registry::{PluginRegistry, PluginState};
use approval_host::plugin::{
    CallReport, LoadedPlugin, PluginIdentity, PluginLimits, PluginRuntime, RuntimeConfig,
};
use approval_host::policy::document::TemplateDoc;
use approval_host::risk::{
    Action, ClassifyInput, CounterOffer, EffectivePolicy, History, Money, RiskRequest,
};
use approval_host::store::Db;
use approval_host::token::{TokenConfig, TokenIssuer};

/// The example plugin, built from plugins/velocity by the build script.
const EXAMPLE_PLUGIN: &[u8] =
    include_bytes!(concat!(env!("APPROVAL_HOST_PLUGINS_DIR"), "/velocity.wasm"));

#[derive(Debug, clap::Parser)]
#[command(
    name = "approval-host",
    version,
    about = "The approval host for AI agents' risky actions"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Tools for vendors writing risk plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Sets up a demo vendor with the example plugin on SQLite and classifies sample requests.
    Demo {
        /// Where the demo keeps its SQLite database and compiled-plugin cache.
        #[arg(long, default_value = "approval-host-data")]
        data_dir: PathBuf,
    },
    /// The tamper-evident audit log: its key, checkpoints, exports, receipts and verification.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// The demo's database, the default of every command that opens one.
const DEMO_DB: &str = "sqlite://approval-host-data/approval-host.db?mode=rw";

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Prints the log's verification key (what auditors verify checkpoints and receipts with).
    Key {
        /// The host's database (sqlite:... or postgres:...).
        #[arg(long, default_value = DEMO_DB)]
        db: String,
    },
    /// Signs a checkpoint of the log now (the host also does every few seconds and at shutdown).
    Checkpoint {
        #[arg(long, default_value = DEMO_DB)]
        db: String,
    },
    /// Writes the whole log (entries, checkpoints, payloads) as an export file.
    Export {
        #[arg(long, default_value = DEMO_DB)]
        db: String,
        /// Where to write it (JSON Lines).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verifies an export offline with nothing but the public key: rebuilds the Merkle tree,
    /// checks every checkpoint's signature and that they describe one growing log, and names
    /// the first entry or checkpoint that does not verify. Exits with 1 if anything fails.
    Verify {
        /// The export file (from `audit export`).
        #[arg(long)]
        export: PathBuf,
        /// The log's verification key (`<origin>+<keyid>+<key>`, from `audit key`).
        #[arg(long)]
        key: String,
        /// A signed checkpoint kept from earlier (e.g. from a receipt) that the log must still
        /// contain; repeatable.
        #[arg(long)]
        trusted: Vec<PathBuf>,
    },
    /// Prints the receipt of an approval: its entries with inclusion proofs against a signed
    /// checkpoint (JSON).
    Receipt {
        #[arg(long, default_value = DEMO_DB)]
        db: String,
        /// The approval id (`apr_...`).
        approval_id: String,
    },
    /// Verifies a receipt (from `audit receipt` or the API) offline with the public key and
    /// prints its entries.
    VerifyReceipt {
        /// The receipt file (JSON).
        receipt: PathBuf,
        /// The log's verification key.
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum PluginCommand {
    /// Validates a component the way an upload does and prints what it declares.
    Check {
        /// The component (.wasm) to check.
        file: PathBuf,
    },
    /// Classifies one payment with a component, in the same sandbox as production.
    Try {
        /// The component (.wasm) to run.
        file: PathBuf,
        /// The amount in minor units (60000 is ¥600.00).
        #[arg(long)]
        amount: u64,
        /// ISO 4217 currency.
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// The recipient's merchant category.
        #[arg(long)]
        category: Option<String>,
        /// Payments the actor made in the last hour (history).
        #[arg(long, default_value_t = 0)]
        payments_last_hour: u32,
        /// Spend approved in the last hour, in minor units of the same currency (history).
        #[arg(long, default_value_t = 0)]
        spent_last_hour: u64,
        /// A policy setting for the plugin, KEY=VALUE; repeatable.
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
    },
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command failed on, in words for the person at the terminal.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Plugin(PluginCommand::Check { file }) => check(&file).await,
        Command::Plugin(PluginCommand::Try {
            file,
            amount,
            currency,
            category,
            payments_last_hour,
            spent_last_hour,
            settings,
        }) => {
            let rt = runtime(None)?;
            let plugin = load(&rt, &file).await?;
            let mut input = payment("try-1", Money::new(amount, &currency), category);
            input.policy.settings = settings;
            input.history.last_hour.payments = payments_last_hour;
            input.history.last_hour.approved_spend = vec![Money::new(spent_last_hour, &currency)];
            print_report(&rt.classify(&plugin, &input, &PluginLimits::default()).await);
            Ok(())
        }
        Command::Demo { data_dir } => demo(&data_dir).await,
        Command::Audit(command) => audit(command).await,
    }
}

async fn open_log(url: &str) -> anyhow::Result<Arc<AuditLog>> {
    let db = Db::connect(url)
        .await
        .with_context(|| format!("opening the database {url}"))?;
    Ok(AuditLog::open(db, AuditConfig::default(), Arc::new(SystemClock)).await?)
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Key { db } => println!("{}", open_log(&db).await?.vkey()),
        AuditCommand::Checkpoint { db } => match open_log(&db).await?.checkpoint().await? {
            Some(c) => print!("{}", c.note),
            None => println!("the log is empty: nothing to sign"),
        },
        AuditCommand::Export { db, out } => {
            let log = open_log(&db).await?;
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&out)
                    .with_context(|| format!("creating {}", out.display()))?,
            );
            let written = log.export(&mut file).await?;
            println!("exported {written} entries to {}", out.display());
        }
        AuditCommand::Verify {
            export,
            key,
            trusted,
        } => {
            let file = std::fs::File::open(&export)
                .with_context(|| format!("opening {}", export.display()))?;
            let trusted = trusted
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let report = verify_export(std::io::BufReader::new(file), &key, &trusted)?;
            print!("{report}");
            if !report.ok() {
                std::process::exit(1);
            }
        }
        AuditCommand::Receipt { db, approval_id } => {
            println!(
                "{}",
                open_log(&db).await?.receipt(&approval_id).await?.to_json()
            );
        }
        AuditCommand::VerifyReceipt { receipt, key } => {
            let text = std::fs::read_to_string(&receipt)
                .with_context(|| format!("reading {}", receipt.display()))?;
            let receipt = Receipt::from_json(&text)?;
            let entries = receipt.verify(&CheckpointVerifier::new(&key)?)?;
            println!(
                "OK: {} entries of {} are in the log signed by {key}",
                entries.len(),
                receipt.approval_id
            );
            for (e, entry) in receipt.entries.iter().zip(&entries) {
                println!("  #{} {}", e.index, describe_entry(entry));
            }
        }
    }
    Ok(())
}

/// One line about an entry, for people.
fn describe_entry(entry: &entry::Entry) -> String {
    use entry::Event;
    match &entry.event {
        Event::RequestReceived { action, actor, .. } => {
            format!("request_received: {actor} asks for {action}")
        }
        Event::PluginClassified {
            plugin,
            plugin_version,
            result,
            shadow,
            ..
        } => {
            let shadow = if *shadow { " (shadow)" } else { "" };
            match result {
                entry::PluginOutcome::Verdict {
                    decision, rule_id, ..
                } => {
                    format!(
                        "plugin_classified: {plugin} v{plugin_version}{shadow} says {decision} {rule_id}"
                    )
                }
                entry::PluginOutcome::Error { code, .. } => {
                    format!("plugin_classified: {plugin} v{plugin_version}{shadow} failed: {code}")
                }
            }
        }
        Event::RuleFired {
            rule_id, decision, ..
        } => format!("rule_fired: {rule_id} says {decision}"),
        Event::Decided {
            status,
            method,
            decider,
            ..
        } => match decider {
            Some(who) => format!("decided: {status} by {method} ({who})"),
            None => format!("decided: {status} by {method}"),
        },
        other => other.kind().to_owned(),
    }
}

fn runtime(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<PluginRuntime>> {
    Ok(Arc::new(PluginRuntime::new(RuntimeConfig {
        cache_dir,
        ..RuntimeConfig::default()
    })?))
}

async fn load(rt: &PluginRuntime, file: &Path) -> anyhow::Result<LoadedPlugin> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let compiled = rt.compile(&bytes)?;
    let info = rt.describe(&compiled, &PluginLimits::default()).await?;
    Ok(LoadedPlugin {
        identity: PluginIdentity {
            vendor: "local".into(),
            name: info.name.clone(),
            version: 0,
            sha256: compiled.sha256_hex(),
        },
        info,
        compiled,
    })
}

async fn check(file: &Path) -> anyhow::Result<()> {
    let plugin = load(&*runtime(None)?, file).await?;
    println!(
        "ok: {} {} (sha256 {})",
        plugin.info.name, plugin.info.version, plugin.identity.sha256
    );
    for rule in &plugin.info.rules {
        println!("  rule {:<32} {}", rule.id, rule.description);
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

fn payment(id: &str, amount: Money, category: Option<String>) -> ClassifyInput {
    ClassifyInput {
        request: RiskRequest {
            id: id.into(),
            vendor: "demo-toys".into(),
            actor: "teddy".into(),
            device_context: vec!["family-context".into()],
            action: Action::Payment {
                amount,
                recipient: "toy-shop".into(),
                merchant_category: category,
            },
            requested_at_ms: now_ms(),
        },
        policy: EffectivePolicy::default(),
        history: History::default(),
    }
}

fn print_report(report: &CallReport) {
    match &report.outcome {
        Ok(verdict) => {
            let rule = if verdict.rule_id.is_empty() {
                "-"
            } else {
                &verdict.rule_id
            };
            println!(
                "  verdict  {} (rule {rule}): {}",
                verdict.decision.as_str(),
                verdict.reason
            );
            if let Some(CounterOffer::Amount(m)) = &verdict.counter_offer {
                println!("  counter-offer  {} {}", m.minor_units, m.currency);
            }
        }
        Err(err) => println!("  failed   [{}] {err}", err.code()),
    }
    println!(
        "  plugin   {} v{} sha256 {}…  fuel {}  time {:?}",
        report.plugin.name,
        report.plugin.version,
        &report.plugin.sha256[..12.min(report.plugin.sha256.len())],
        report.fuel_used,
        report.wall_time
    );
    if !report.log.is_empty() {
        println!("  log      {}", report.log.trim_end());
    }
}

async fn demo(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("approval-host.db").display()
    );
    let db = Db::connect(&url).await?;
    let audit = AuditLog::open(db.clone(), AuditConfig::default(), Arc::new(SystemClock)).await?;
    let registry = Arc::new(
        PluginRegistry::open(
            runtime(Some(data_dir.join("plugin-cache")))?,
            db.clone(),
            Arc::clone(&audit),
        )
        .await?,
    );
    let vendor = "demo-toys";
    let uploaded = registry
        .upload(vendor, EXAMPLE_PLUGIN, None, now_ms())
        .await?;
    registry
        .set_state(
            vendor,
            (&uploaded.name, uploaded.version),
            PluginState::Active,
            now_ms(),
        )
        .await?;
    println!(
        "Demo vendor `{vendor}` has plugin `{}` v{} active (database {}).\n",
        uploaded.name,
        uploaded.version,
        data_dir.join("approval-host.db").display()
    );
    let live = registry.live(vendor);
    let velocity = live
        .active
        .first()
        .context("the example plugin is not active")?;
    let mut busy = payment("demo-3", Money::new(2_000, "CNY"), None);
    busy.history.last_hour.payments = 5;
    let mut spender = payment("demo-4", Money::new(60_000, "CNY"), None);
    spender.policy.settings = vec![("max-hourly-spend.CNY".into(), "100000".into())];
    spender.history.last_hour.approved_spend = vec![Money::new(70_000, "CNY")];
    let samples = [
        (
            "A ¥20 toy",
            payment("demo-1", Money::new(2_000, "CNY"), Some("toys".into())),
        ),
        (
            "A ¥20 bet",
            payment("demo-2", Money::new(2_000, "CNY"), Some("gambling".into())),
        ),
        ("A 6th payment within an hour", busy),
        ("¥600 after ¥700 spent this hour (limit ¥1000)", spender),
    ];
    for (title, input) in &samples {
        println!("{title}:");
        print_report(
            &registry
                .runtime()
                .classify(velocity, input, &PluginLimits::default())
                .await,
        );
    }
    let asked = approvals_demo(&db, Arc::clone(&audit), registry, vendor).await?;
    audit_demo(&audit, &asked, data_dir).await?;
    println!(
        "\nWhat to try next (from this repository, `approval-host` is `cargo run -q -p approval-host --`):\n  \
         approval-host plugin check <your-plugin.wasm>\n  \
         approval-host plugin try <your-plugin.wasm> --amount 60000 --category gambling\n  \
         approval-host audit receipt {asked}\n  \
         approval-host audit verify --export {export} --key {key}\n  \
         ./scripts/test    # the whole suite (see README.md)\n\
         The HTTP API and push to guardians are being built next (see README.md, Status).",
        export = data_dir.join("audit-export.jsonl").display(),
        key = audit.vkey(),
    );
    Ok(())
}

/// Shows the audit log: the ¥600 request's receipt verified with the public key alone, and an
/// export of the whole log verified offline.
async fn audit_demo(audit: &AuditLog, approval_id: &str, data_dir: &Path) -> anyhow::Result<()> {
    println!(
        "\nThe audit log `{}`, verification key {}:",
        audit.origin(),
        audit.vkey()
    );
    let receipt = audit.receipt(approval_id).await?;
    let entries = receipt.verify(&audit.verifier())?;
    let checkpoint = CheckpointVerifier::new(audit.vkey())?.open(&receipt.checkpoint)?;
    println!(
        "  the ¥600 request's receipt: {} entries, each proven in the checkpoint of {} entries:",
        entries.len(),
        checkpoint.size
    );
    for (e, entry) in receipt.entries.iter().zip(&entries) {
        println!("    #{} {}", e.index, describe_entry(entry));
    }
    let path = data_dir.join("audit-export.jsonl");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    audit.export(&mut file).await?;
    drop(file);
    let report = verify_export(
        std::io::BufReader::new(std::fs::File::open(&path)?),
        audit.vkey(),
        std::slice::from_ref(&receipt.checkpoint),
    )?;
    println!(
        "  the whole log, exported to {} and verified offline:",
        path.display()
    );
    for line in report.to_string().lines() {
        println!("    {line}");
    }
    audit.close().await?;
    Ok(())
}

/// Walks one device through the approval engine: an allowed request with its token, a ¥600
/// payment that waits for a guardian, and the guardian's counter-offer of ¥300.
/// Returns the id of the ¥600 request.
async fn approvals_demo(
    db: &Db,
    audit: Arc<AuditLog>,
    registry: Arc<PluginRegistry>,
    vendor: &str,
) -> anyhow::Result<String> {
    let tokens = TokenIssuer::open(db, TokenConfig::default(), now_ms()).await?;
    let service = ApprovalService::new(
        db.clone(),
        audit,
        registry,
        Arc::new(tokens),
        Arc::new(SystemClock),
        ApprovalConfig::default(),
    );
    service.create_vendor(vendor, "Demo Toys").await?;
    // The platform's longest plugin deadline, so a cold first call on a busy laptop still answers.
    let template = TemplateDoc::parse(r#"{"plugin_limits":{"deadline_ms":250}}"#)?;
    service.set_template(vendor, &template, "demo").await?;
    let (actor, guardian) = ("teddy-bear", "parent-1");
    service
        .register_actor(vendor, actor, &["toy".into()], &[guardian.into()])
        .await?;
    println!("\nThe approval engine, for device `{actor}` guarded by `{guardian}`:");
    let ask = |amount: u64, recipient: &str| NewRequest {
        vendor: vendor.into(),
        actor: actor.into(),
        action: "payment".into(),
        params: serde_json::json!({"amount": amount, "currency": "CNY", "recipient": recipient}),
        idempotency_key: None,
        provenance: Provenance {
            surface: "voice".into(),
            tool: Some("demo".into()),
        },
    };
    let small = service.request(ask(2_000, "toy-shop")).await?.record;
    print_record("A ¥20 payment", &small);
    let big = service.request(ask(60_000, "toy-shop")).await?.record;
    print_record("A ¥600 payment", &big);
    let counter = serde_json::json!({"amount": 30_000, "currency": "CNY", "recipient": "toy-shop"});
    let revised = service
        .decide(
            &big.id,
            guardian,
            GuardianDecision::Revise {
                params: counter.clone(),
            },
        )
        .await?;
    print_record("The guardian counter-offers ¥300", &revised);
    if let Some(token) = &revised.token {
        let now = now_ms();
        let verifier = service.tokens().verifier(now);
        let for_300 = verifier.verify(&token.token, &counter, now).is_ok();
        let for_600 = verifier.verify(&token.token, &big.params, now).is_ok();
        println!(
            "  the token verifies offline against the JWKS for ¥300: {for_300}; for the ¥600 asked: {for_600}"
        );
    }
    Ok(big.id)
}

fn print_record(title: &str, record: &ApprovalRecord) {
    println!(
        "{title}: {} (route {})",
        record.status.as_str(),
        record.route.as_str()
    );
    if let Some(rule) = &record.rule_fired {
        println!("  rule {rule}: {}", record.reason);
    }
    if let (Some(expires), Status::Pending) = (record.expires_at_ms, record.status) {
        let secs = expires.saturating_sub(now_ms()) / 1000;
        println!("  approval id {}, expires in {secs} s", record.id);
    }
    if let Some(token) = &record.token {
        let head: String = token.token.chars().take(40).collect();
        println!("  capability token {head}... (id {})", token.id);
    }
}
