//! The `approval-host` binary: parses the command line, sets up logging, and hands over to the
//! library. Everything else lives in the library (see ARCHITECTURE.md).

mod cli;

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(cli::run(args))
}
