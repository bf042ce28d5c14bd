//! The `mcp-gateway` binary: `mcp-gateway --help` explains every flag.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mcp_gateway::cli::Cli;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

// The binary picks the allocator, not the library: mimalloc's per-thread
// heaps free memory from other threads (the audit writer frees what the
// request threads allocated) without taking a lock.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The exporters first: the trace layer joins the subscriber.
    let obs = cli.start_observability();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let logs = if cli.log_format == "json" {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let traces = obs.as_ref().ok().and_then(|o| o.tracing_layer());
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    let result = match obs {
        Ok(obs) => cli.run_with(Arc::new(obs)).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("mcp-gateway: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
