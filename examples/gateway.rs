//! A real gateway process in front of Streamable HTTP MCP servers.
//!
//! ```text
//! cargo run --release --example gateway -- \
//!     --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3001/mcp [--upstream URL …] [--path /mcp]
//! ```
//!
//! Several `--upstream` flags are instances of one backend: new sessions are
//! spread over them and each session sticks to the instance it started on.
//! Bound to a loopback address the gateway accepts only loopback `Host` /
//! `Origin` values (DNS-rebinding protection); bound elsewhere, a browser
//! `Origin` must match the `Host`. `--allow-host` / `--allow-origin` add
//! values. Logs go to stderr (`RUST_LOG=debug` for more). Ctrl-C (or
//! SIGTERM) stops accepting, lets open requests finish, and exits.
//!
//! `--config FILE` reads a TOML file with the backend, authentication,
//! authorization rules, tool pinning and backend credentials (format in the
//! README; a bad file is refused at start with its line and key). Flags
//! given beside it override `listen`, `threads`, `busy_poll_us`,
//! `header_read_timeout_secs` and `http1_server`; the backend comes from
//! the file. On SIGHUP the file is read again and its `[policy]` rules
//! replace the running ones (other sections need a restart).
//!
//! `--threads N` (default: one per core) serves with one single-threaded
//! runtime per thread on a shared `SO_REUSEPORT` port, so each connection
//! stays on one thread (see `mcp_gateway_axum::serve`). `--busy-poll-us N`
//! (default 50; 0 = off) is how long a thread keeps checking its sockets
//! after its last activity before it sleeps: CPU time traded for latency.
//! `--header-timeout-secs N` (default: none) closes a connection whose
//! client takes longer than that to send a request's headers, or stays idle
//! that long between requests: set it where clients are not trusted.
//! `--http1-server hyper` serves HTTP/1 with hyper instead of the built-in
//! server (`mcp_gateway_tower::server`); HTTP/2 is always hyper's.

use std::net::SocketAddr;

use mcp_gateway_axum::config::GatewayConfig;
use mcp_gateway_axum::{serve, McpGateway};
use mcp_gateway_tower::origin::OriginPolicy;

// The binary picks the allocator, not the library: mimalloc's per-thread
// heaps free memory from other threads (the audit writer frees what the
// request threads allocated) without taking a lock, and allocate faster
// than the system allocator on the request path.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: gateway [--listen ADDR] --upstream URL [--upstream URL ...] [--path PATH] \
[--allow-host HOST[:PORT] ...] [--allow-origin ORIGIN ...] [--threads N] [--busy-poll-us N] [--header-timeout-secs N] [--http1-server builtin|hyper]
       gateway --config FILE [--listen ADDR] [--threads N] [--busy-poll-us N] [--header-timeout-secs N] [--http1-server builtin|hyper]";

struct Args {
    listen: SocketAddr,
    listen_given: bool,
    threads_given: bool,
    config: Option<std::path::PathBuf>,
    upstreams: Vec<String>,
    path: String,
    hosts: Vec<String>,
    origins: Vec<String>,
    threads: usize,
    /// `--busy-poll-us`, when given.
    busy_poll_us: Option<u64>,
    /// `--header-timeout-secs`, when given.
    header_timeout_secs: Option<u64>,
    /// `--http1-server`, when given.
    http1: Option<serve::Http1Server>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        listen: "127.0.0.1:8080".parse().expect("valid default"),
        listen_given: false,
        threads_given: false,
        config: None,
        upstreams: Vec::new(),
        path: "/mcp".into(),
        hosts: Vec::new(),
        origins: Vec::new(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        busy_poll_us: None,
        header_timeout_secs: None,
        http1: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--listen" => {
                a.listen = val()?.parse().map_err(|e| format!("--listen: {e}"))?;
                a.listen_given = true;
            }
            "--config" => a.config = Some(val()?.into()),
            "--upstream" => a.upstreams.push(val()?),
            "--path" => a.path = val()?,
            "--allow-host" => a.hosts.push(val()?),
            "--allow-origin" => a.origins.push(val()?),
            "--threads" => {
                a.threads = val()?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--threads needs a positive number")?;
                a.threads_given = true;
            }
            "--header-timeout-secs" => {
                a.header_timeout_secs = Some(
                    val()?
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or("--header-timeout-secs needs a positive number of seconds")?,
                );
            }
            "--busy-poll-us" => {
                a.busy_poll_us = Some(
                    val()?
                        .parse()
                        .map_err(|_| "--busy-poll-us needs a number of microseconds (0: off)")?,
                );
            }
            "--http1-server" => {
                a.http1 = Some(match val()?.as_str() {
                    "builtin" => serve::Http1Server::Builtin,
                    "hyper" => serve::Http1Server::Hyper,
                    _ => return Err("--http1-server is builtin or hyper".into()),
                });
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.config.is_some() && !a.upstreams.is_empty() {
        return Err("with --config, list the backend's URLs in the file".into());
    }
    if a.config.is_none() && a.upstreams.is_empty() {
        return Err(format!("at least one --upstream is required\n{USAGE}"));
    }
    if !a.path.starts_with('/') {
        return Err("--path must start with /".into());
    }
    Ok(a)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,mcp_gateway_tower=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let (app, listen, threads, path, audit, opts) = match &args.config {
        Some(file) => from_config(file, &args),
        None => {
            let (app, listen, threads, path) = from_flags(&args);
            let opts = serve_options(
                args.busy_poll_us,
                args.header_timeout_secs,
                args.http1.unwrap_or_default(),
            );
            (app, listen, threads, path, None, opts)
        }
    };
    let listeners = match serve::bind_per_core(listen, threads) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listeners[0]
        .local_addr()
        .expect("bound socket has an address");
    tracing::info!(%addr, %path, threads = listeners.len(), busy_poll = ?opts.busy_poll,
        header_read_timeout = ?opts.header_read_timeout, "mcp-gateway listening");
    println!("mcp-gateway listening on http://{addr}{path}");
    let served = serve::serve_per_core_with(listeners, app, shutdown_signal(), opts).await;
    if let Some(sink) = audit {
        // Every record of the requests that just finished reaches the disk.
        sink.flush();
        if sink.dropped() > 0 {
            tracing::warn!(
                dropped = sink.dropped(),
                "audit records were dropped (sink full)"
            );
        }
    }
    if let Err(e) = served {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}

/// The gateway described by a configuration file; exits on a bad file.
type AuditHandle = Option<std::sync::Arc<dyn mcp_gateway_tower::audit::AuditSink>>;

fn from_config(
    file: &std::path::Path,
    args: &Args,
) -> (
    axum::Router,
    SocketAddr,
    usize,
    String,
    AuditHandle,
    serve::ServeOptions,
) {
    let cfg = match GatewayConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let built = match cfg.builder() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(policy) = built.policy.clone() {
        reload_policy_on_sighup(file.to_owned(), policy);
    }
    let listen = if args.listen_given {
        args.listen
    } else {
        cfg.listen().ok().flatten().unwrap_or(args.listen)
    };
    let threads = match (args.threads_given, cfg.threads) {
        (false, Some(n)) if n > 0 => n,
        _ => args.threads,
    };
    let audit = built.audit.clone();
    let app = built
        .builder
        .build()
        .expect("checked when the file was loaded");
    let opts = serve_options(
        args.busy_poll_us.or(cfg.busy_poll_us),
        args.header_timeout_secs
            .or(cfg.header_read_timeout_secs.filter(|n| *n > 0)),
        args.http1.or(cfg.http1_server).unwrap_or_default(),
    );
    (app, listen, threads, cfg.path.clone(), audit, opts)
}

/// The serving options from `--busy-poll-us` / `--header-timeout-secs` or
/// their keys in the file, and `--http1-server`; the defaults where
/// neither says.
fn serve_options(
    busy_poll_us: Option<u64>,
    header_timeout_secs: Option<u64>,
    http1: serve::Http1Server,
) -> serve::ServeOptions {
    let mut opts = serve::ServeOptions::default().http1(http1);
    if let Some(us) = busy_poll_us {
        opts = opts.busy_poll(std::time::Duration::from_micros(us));
    }
    if let Some(secs) = header_timeout_secs {
        opts = opts.header_read_timeout(Some(std::time::Duration::from_secs(secs)));
    }
    opts
}

#[cfg(unix)]
fn reload_policy_on_sighup(
    file: std::path::PathBuf,
    policy: std::sync::Arc<mcp_gateway_tower::rules::RulePolicy>,
) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match GatewayConfig::load(&file) {
                Ok(c) => {
                    policy.replace(&c.policy.clone().unwrap_or_default());
                    tracing::info!(file = %file.display(), rules = policy.current().rules.len(), "policy reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy not reloaded: the file is invalid; the running rules stay")
                }
            }
        }
    });
}

#[cfg(not(unix))]
fn reload_policy_on_sighup(
    _: std::path::PathBuf,
    _: std::sync::Arc<mcp_gateway_tower::rules::RulePolicy>,
) {
}

/// The gateway described by flags alone.
fn from_flags(args: &Args) -> (axum::Router, SocketAddr, usize, String) {
    let mut policy = if args.listen.ip().is_loopback() {
        OriginPolicy::loopback()
    } else {
        OriginPolicy::same_origin()
    };
    if !args.hosts.is_empty() {
        policy = policy.allow_hosts(&args.hosts);
    }
    if !args.origins.is_empty() {
        policy = policy.allow_origins(&args.origins);
    }
    let mut builder = McpGateway::builder().path(&args.path).origin_policy(policy);
    for u in &args.upstreams {
        builder = match builder.upstream_url(u) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("--upstream {u}: {e}");
                std::process::exit(2);
            }
        };
    }
    let app = builder.build().expect("at least one upstream");
    tracing::info!(upstreams = ?args.upstreams, "backend instances");
    (app, args.listen, args.threads, args.path.clone())
}
