//! The `approval-host` binary: parses the command line, sets up logging, and hands over to the
//! library. Everything else lives in the library (see ARCHITECTURE.md).

mod cli;
// The one place the host calls C directly: an option SQLite takes only through `sqlite3_config`.
#[allow(unsafe_code)]
mod sqlite_memory;

use clap::Parser as _;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // First: SQLite takes the option only before it starts.
    let statistics = sqlite_memory::turn_off_statistics();
    let args = cli::Cli::parse();
    // A server logs each request; a one-shot command only what went wrong. RUST_LOG overrides.
    let default = if args.serves() { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(code) = statistics {
        tracing::warn!(code, "SQLite keeps counting its memory (slower)");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(cli::run(args))
}
