//! The `mcp-gateway` binary: `mcp-gateway --help` explains every flag.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use mcp_gateway::cli::Cli;

// The binary picks the allocator, not the library: mimalloc's per-thread
// heaps free memory from other threads (the audit writer frees what the
// request threads allocated) without taking a lock.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("mcp-gateway: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
