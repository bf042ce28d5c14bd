//! Servers reached by messages rather than by Streamable HTTP, served to
//! the layers above as Streamable HTTP backends ([`Bridge`]):
//!
//! - **stdio**: a child process speaking newline-delimited JSON-RPC
//!   ([`StdioCommand`]); one per client session ([`BridgeMode::PerSession`],
//!   started on `initialize`, stopped on `DELETE`, expiry or shutdown) or
//!   one for all ([`BridgeMode::Shared`], initialized once, restarted after
//!   a crash within [`BridgeConfig::restart_per_minute`]);
//! - **legacy HTTP+SSE** (2024-11-05, [`SseTarget`]): the backend's `GET`
//!   stream and the `POST` endpoint it names, one stream per session.
//!
//! Each message the client sends leaves with the gateway's own id (and
//! progress token), so one server can carry many sessions; answers,
//! progress and the server's own requests (sampling, elicitation, roots)
//! come back to the session and call they belong to. A call's answer is
//! JSON when it is the first thing the server says about it, else SSE
//! carrying the progress and requests before it. Messages that belong to
//! no call go to the session's `GET` stream (kept, bounded, until one
//! opens).
//!
//! When the server ends (exit, crash, a line over the bound, a broken
//! stream), every call in flight gets -32050 naming why ("exit status: 1",
//! "signal: 9 (SIGKILL)") at once; a per-session server's session is then
//! unknown (404); a shared one is restarted on the next call. Nothing
//! waits without bound: calls in flight are capped per server and wait
//! [`BridgeConfig::queue_wait`] at most for room.
//!
//! 2026-07-28 callers (no session) get one upstream session per principal,
//! initialized on their behalf; see `stateless`.
//!
//! | module | holds |
//! | --- | --- |
//! | `wire` | the routing fields of a message and in-place id rewriting |
//! | `peer` | one live server connection: calls, routing, the end |
//! | `stdio` | [`StdioCommand`] and the child process |
//! | `sse_client` | [`SseTarget`], the legacy SSE client |
//! | `service` | [`Bridge`]: sessions, `POST` / `GET` / `DELETE` |
//! | `stateless` | 2026-07-28 callers: `server/discover`, `input_required` |

use std::time::Duration;

mod peer;
mod service;
mod sse_client;
mod stateless;
mod stdio;
mod wire;

pub use self::service::Bridge;
pub use self::sse_client::SseTarget;
pub use self::stdio::StdioCommand;

/// Where a bridge's background work runs: the runtime that built it.
///
/// A server process outlives the request that started it, and may be
/// started from a serving thread whose runtime stops before the gateway
/// does (the binary's per-core runtimes): its pipes, its exit and its
/// stopping are driven by the runtime the [`Bridge`] was made in, which
/// runs until every server is stopped.
#[derive(Clone, Debug)]
pub(crate) struct Spawner(Option<tokio::runtime::Handle>);

impl Spawner {
    fn current() -> Self {
        Spawner(tokio::runtime::Handle::try_current().ok())
    }

    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(h) => h.spawn(fut),
            None => tokio::spawn(fut),
        }
    }
}

/// Where a [`Bridge`] reaches its server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Target {
    /// A child process.
    Stdio(StdioCommand),
    /// A legacy HTTP+SSE server.
    Sse(SseTarget),
}

/// One server per client session, or one for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeMode {
    /// A server per client session (the default): state never crosses
    /// sessions.
    #[default]
    PerSession,
    /// One server for every session: for stateless servers.
    Shared,
}

/// Settings of a [`Bridge`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BridgeConfig {
    /// Per session or shared.
    pub mode: BridgeMode,
    /// Per session: servers at once; a new session beyond it is refused
    /// (503, -32052). Default 64.
    pub max_processes: usize,
    /// Shared: restarts allowed in any minute (with backoff). Default 5.
    pub restart_per_minute: u32,
    /// The longest line a server may write; over it the server is stopped
    /// and its calls fail. Default 16 MiB.
    pub max_line_bytes: usize,
    /// Calls in flight at once per server. Default 256.
    pub max_in_flight: usize,
    /// How long a call waits for room before it fails (504, -32051).
    /// Default 10 s.
    pub queue_wait: Duration,
    /// How long a message waits for a client that does not read its
    /// stream before it is dropped (logged). Default 10 s.
    pub deliver_wait: Duration,
    /// Messages kept for a session with no stream open. Default 256.
    pub backlog: usize,
    /// Stopping: the wait after closing stdin, and after `SIGTERM`.
    /// Default 2 s.
    pub grace: Duration,
    /// How long the gateway's own `initialize` (shared servers, 2026-07-28
    /// callers) and a legacy server's `endpoint` event may take. Default 30 s.
    pub init_timeout: Duration,
    /// 2026-07-28 callers: a principal's upstream session ends after this
    /// long unused. Default 5 min.
    pub stateless_idle: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            mode: BridgeMode::PerSession,
            max_processes: 64,
            restart_per_minute: 5,
            max_line_bytes: 16 * 1024 * 1024,
            max_in_flight: 256,
            queue_wait: Duration::from_secs(10),
            deliver_wait: Duration::from_secs(10),
            backlog: 256,
            grace: Duration::from_secs(2),
            init_timeout: Duration::from_secs(30),
            stateless_idle: Duration::from_secs(300),
        }
    }
}

impl BridgeConfig {
    /// Sets [`mode`](Self::mode).
    pub fn mode(mut self, mode: BridgeMode) -> Self {
        self.mode = mode;
        self
    }
    /// Sets [`max_processes`](Self::max_processes).
    pub fn max_processes(mut self, n: usize) -> Self {
        self.max_processes = n;
        self
    }
    /// Sets [`restart_per_minute`](Self::restart_per_minute).
    pub fn restart_per_minute(mut self, n: u32) -> Self {
        self.restart_per_minute = n;
        self
    }
    /// Sets [`max_line_bytes`](Self::max_line_bytes).
    pub fn max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n;
        self
    }
    /// Sets [`max_in_flight`](Self::max_in_flight).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// Sets [`queue_wait`](Self::queue_wait).
    pub fn queue_wait(mut self, d: Duration) -> Self {
        self.queue_wait = d;
        self
    }
    /// Sets [`grace`](Self::grace).
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }
    /// Sets [`init_timeout`](Self::init_timeout).
    pub fn init_timeout(mut self, d: Duration) -> Self {
        self.init_timeout = d;
        self
    }
    /// Sets [`stateless_idle`](Self::stateless_idle).
    pub fn stateless_idle(mut self, d: Duration) -> Self {
        self.stateless_idle = d;
        self
    }
}
