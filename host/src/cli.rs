//! The command line: `serve` and `demo`, vendor tools for plugins, audit tools, and development
//! helpers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use approval_host::audit::checkpoint::CheckpointVerifier;
use approval_host::audit::verify::verify_export;
use approval_host::audit::{AuditConfig, AuditLog, Receipt, entry};
use approval_host::clock::SystemClock;
use approval_host::config::ServeConfig;
use approval_host::plugin::{CallReport, LoadedPlugin, PluginLimits, PluginRuntime, RuntimeConfig};
use approval_host::risk::{
    Action, ClassifyInput, CounterOffer, EffectivePolicy, History, Money, RiskRequest,
};
use approval_host::server::{self, DemoInfo, Host, HostOptions};
use approval_host::store::Db;

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
    /// Serves the API (see README for the configuration file and environment overrides).
    Serve(ServeArgs),
    /// Serves with a ready demo: a vendor, an agent, a guardian, the example plugin and a ¥600
    /// payment waiting for the guardian; prints curl commands and writes `demo.json`.
    Demo(ServeArgs),
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
    /// The tamper-evident audit log: its key, checkpoints, exports, receipts and verification.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// The demo's database, the default of every command that opens one.
const DEMO_DB: &str = "sqlite://approval-host-data/approval-host.db?mode=rw";

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to listen (overrides the configuration), e.g. 127.0.0.1:8080 or 127.0.0.1:0.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Where the SQLite database, plugin cache and demo files live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seed the demo (what `approval-host demo` does).
    #[arg(long)]
    demo: bool,
}

#[derive(Debug, clap::Subcommand)]
enum DevCommand {
    /// Mints a guardian session JWT with the development issuer's key (in the data directory),
    /// which `serve` trusts when `guardian_sessions.trust_dev_issuer` is set (the demo sets it).
    GuardianToken {
        /// The guardian's id: the decider recorded.
        #[arg(long)]
        subject: String,
        /// How long the session lasts.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        #[arg(long, default_value = "approval-host-data")]
        data_dir: PathBuf,
    },
}

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
        #[arg(long, required_unless_present = "url", conflicts_with = "url")]
        export: Option<PathBuf>,
        /// Or a running host's URL: its export is fetched with `--token`.
        #[arg(long)]
        url: Option<String>,
        /// The platform admin token, with `--url`.
        #[arg(long, requires = "url")]
        token: Option<String>,
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

impl Cli {
    /// Whether the command runs a server (which logs every request).
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Serve(_) | Command::Demo(_))
    }
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
        Command::Serve(args) => serve(args).await,
        Command::Demo(args) => serve(ServeArgs { demo: true, ..args }).await,
        Command::Dev(DevCommand::GuardianToken {
            subject,
            ttl_seconds,
            data_dir,
        }) => {
            let issuer = server::dev_session_issuer(&data_dir)?;
            println!(
                "{}",
                issuer.mint(&subject, now_ms(), Duration::from_secs(ttl_seconds))?
            );
            Ok(())
        }
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
            url,
            token,
            key,
            trusted,
        } => {
            let bytes = match (export, url) {
                (Some(path), _) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                (None, Some(url)) => fetch_export(&url, token.as_deref()).await?,
                (None, None) => anyhow::bail!("give --export FILE or --url URL"),
            };
            let trusted = trusted
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let report = verify_export(&bytes[..], &key, &trusted)?;
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
    // As an upload would: a plugin this accepts, the host accepts.
    let info = rt.describe(&compiled, &PluginLimits::at_upload()).await?;
    Ok(LoadedPlugin::new("local", 0, compiled, info))
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

/// Fetches a running host's audit export.
async fn fetch_export(url: &str, token: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut request =
        reqwest::Client::new().get(format!("{}/v1/audit/export", url.trim_end_matches('/')));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("fetching the export from {url}"))?;
    if !response.status().is_success() {
        anyhow::bail!(
            "{url} answered {} (is --token the admin token?)",
            response.status()
        );
    }
    Ok(response.bytes().await?.to_vec())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::load(args.config.as_deref(), |name| std::env::var(name).ok())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let demo_admin = if args.demo {
        config.guardian_sessions.trust_dev_issuer = true;
        let token = config.admin_token.clone().unwrap_or_else(random_token);
        config.admin_token = Some(token.clone());
        Some(token)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let base_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let host = Host::start(
        &config,
        HostOptions {
            clock: Arc::new(SystemClock),
            runtime: None,
        },
    )
    .await?;
    if let Some(admin) = demo_admin {
        let info = server::seed_demo(&host, &base_url, &admin).await?;
        let path = config.data_dir.join("demo.json");
        approval_host::files::write_private(
            &path,
            serde_json::to_string_pretty(&info)?.as_bytes(),
        )?;
        print_demo(&info, &path);
    } else {
        println!("approval-host listening on {base_url}");
    }
    host.serve(listener, shutdown_signal()).await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn random_token() -> String {
    use rand::TryRng as _;
    let mut bytes = [0u8; 24];
    let _ = rand::rngs::SysRng.try_fill_bytes(&mut bytes);
    format!("adm_{}", hex::encode(bytes))
}

fn print_demo(info: &DemoInfo, path: &Path) {
    let DemoInfo {
        base_url,
        admin_token,
        vendor,
        vendor_key,
        actor,
        agent_token,
        guardian,
        guardian_token,
        pending_approval,
        audit_log_key,
    } = info;
    println!(
        "approval-host is serving the demo on {base_url} (SQLite; what it created is in {path})

Vendor `{vendor}` runs the example plugin `velocity`; its device `{actor}` is guarded by `{guardian}`.
A ¥600 payment from {actor} is waiting for {guardian}. Paste these into another terminal:

export HOST={base_url}
export AGENT={agent_token}
export GUARDIAN={guardian_token}
export VENDOR={vendor_key}
export ADMIN={admin_token}

# The web console, signed in (open in a browser; the token stays in the URL fragment):
#   guardian  {base_url}/console/#token={guardian_token}
#   vendor    {base_url}/console/#token={vendor_key}
#   platform  {base_url}/console/#token={admin_token}

# The guardian's inbox, and its live stream (leave this one running):
curl -s $HOST/v1/inbox -H \"Authorization: Bearer $GUARDIAN\"
curl -sN $HOST/v1/inbox/stream -H \"Authorization: Bearer $GUARDIAN\"

# The agent asks for a ¥20 payment (allowed at once, with a capability token)...
curl -s $HOST/v1/approvals -H \"Authorization: Bearer $AGENT\" -H 'content-type: application/json' \\
  -d '{{\"action\":\"payment\",\"params\":{{\"amount\":2000,\"currency\":\"CNY\",\"recipient\":\"toy-shop\"}}}}'

# ...and waits for the ¥600 one while the guardian decides:
curl -s \"$HOST/v1/approvals/{pending_approval}?wait=60\" -H \"Authorization: Bearer $AGENT\" &
curl -s $HOST/v1/approvals/{pending_approval}/decision -H \"Authorization: Bearer $GUARDIAN\" \\
  -H 'content-type: application/json' -d '{{\"decision\":\"revise\",\"params\":{{\"amount\":30000,\"currency\":\"CNY\",\"recipient\":\"toy-shop\"}}}}'

# The receipt: the decision's audit entries with inclusion proofs against a signed checkpoint.
curl -s $HOST/v1/approvals/{pending_approval}/receipt -H \"Authorization: Bearer $AGENT\"

# The vendor's plugins with their statistics, and the whole audit log verified offline:
curl -s $HOST/v1/vendor/plugins -H \"Authorization: Bearer $VENDOR\"
cargo run -q -p approval-host -- audit verify --url $HOST --token $ADMIN --key '{audit_log_key}'

More: README.md (every user's path), $HOST/openapi.json. Ctrl-C stops the host (it signs a last
audit checkpoint).",
        path = path.display()
    );
}
