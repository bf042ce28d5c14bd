//! The audit log: one record per MCP message handled, and per session.
//!
//! [`AuditLayer`] is the outermost MCP layer (right after the origin
//! guard), so it sees every request, including the ones authentication,
//! parsing, authorization or limits refuse. Inner layers leave what they
//! learned in the *response* extensions (the principal, the parsed
//! request, the backend, the error kind, the limit, the cost), and the
//! audit layer reads it there.
//!
//! A call's [`AuditEvent`] is emitted when its response body ends or is
//! dropped, so a streamed call reports its real duration, the progress
//! notifications relayed, the bytes sent, and whether the client went
//! away. The end is acted on as it is read, before the server writes the
//! last bytes: a client never holds an answer whose call is not recorded,
//! and one client's records come in the order its calls depended on each
//! other. Session events: `session_start` (principal, backend, protocol
//! version) and `session_end` (duration, calls, errors, bytes, cost, why);
//! a session ended while some of its `POST`s are under way has its
//! `session_end` recorded after the last of them, which its totals count.
//!
//! Arguments are not recorded unless configured ([`ArgumentsPolicy`]):
//! their SHA-256, or the arguments with named keys redacted.
//!
//! Sinks ([`AuditSink`]) never block the request path: [`TracingSink`]
//! (structured `tracing` fields), [`JsonlSink`] (a JSON Lines file written
//! by its own thread, buffered, rotated by size, flushed on shutdown) and
//! [`ChannelSink`] (a bounded channel, for tests and custom consumers).
//! When a sink cannot keep up, its [`Overflow`] policy decides: drop the
//! record and count it ([`AuditSink::dropped`]), or refuse calls (503,
//! -32056) until it catches up.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::SessionRecord;
use mcp_gateway_core::sse::SseScanner;
use mcp_gateway_core::{ErrorKind, GatewayError, McpRequest, MessageKind, Principal};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thread_local::ThreadLocal;
use tower_layer::Layer;
use tower_service::Service;

use crate::acl::BackendName;
use crate::body::{lock, Body, BoxError, BoxFuture};
use crate::error::error_response;
use crate::limit::{CostCharged, LimitKind};
use crate::session::{SessionEnd, SessionObserver};

/// One audit record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `call`, `session_start` or `session_end`.
    pub event: Cow<'static, str>,
    /// When it was emitted, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The principal's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The principal's tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How the principal was authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<Cow<'static, str>>,
    /// The gateway session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The backend's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The JSON-RPC method, or the HTTP method for `GET` / `DELETE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Cow<'static, str>>,
    /// The tool, prompt or resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The JSON-RPC id, as JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `ok`, `error` (JSON-RPC error from the backend), `denied`,
    /// `limited`, `upstream_failure`, `client_gone` or `rejected` (the
    /// gateway refused the request: authentication, bad input, …).
    pub outcome: Cow<'static, str>,
    /// The JSON-RPC error code, for `error`, `denied`, `limited`, `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Which limit, for `limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Cow<'static, str>>,
    /// The HTTP status answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Microseconds until the response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_us: Option<u64>,
    /// Microseconds until the response body ended or was dropped (for
    /// `session_end`: the session's life).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Progress notifications relayed (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub progress: u64,
    /// Cost charged by the limit layer (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost: u64,
    /// The arguments, per [`ArgumentsPolicy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// The protocol version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<Cow<'static, str>>,
    /// `session_end`: calls in the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// `session_end`: calls that did not end `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// `session_end`: `deleted`, `expired` or `backend_lost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<Cow<'static, str>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An [`AuditEvent`] lent rather than given: the same fields, borrowed.
///
/// The audit layer hands each call's record to [`AuditSink::record_ref`]
/// in this form, so that a sink writing it out at once (the JSON Lines
/// file, `tracing`) copies none of its strings; a sink that keeps records
/// makes an [`AuditEvent`] of it ([`to_event`](Self::to_event)), which is
/// what [`AuditSink::record_ref`] does unless a sink says otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[allow(missing_docs)] // The fields are those of `AuditEvent`.
pub struct AuditEventRef<'a> {
    pub event: &'a str,
    pub time: &'a str,
    pub principal: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub auth_method: Option<&'a str>,
    pub session: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub method: Option<&'a str>,
    pub target: Option<&'a str>,
    pub id: Option<&'a str>,
    pub outcome: &'a str,
    pub error_code: Option<i64>,
    pub limit: Option<&'a str>,
    pub http_status: Option<u16>,
    pub ttfb_us: Option<u64>,
    pub duration_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub progress: u64,
    pub cost: u64,
    pub arguments: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    pub calls: Option<u64>,
    pub errors: Option<u64>,
    pub end_reason: Option<&'a str>,
}

impl AuditEvent {
    /// This record, lent.
    pub fn borrowed(&self) -> AuditEventRef<'_> {
        AuditEventRef {
            event: &self.event,
            time: &self.time,
            principal: self.principal.as_deref(),
            tenant: self.tenant.as_deref(),
            auth_method: self.auth_method.as_deref(),
            session: self.session.as_deref(),
            backend: self.backend.as_deref(),
            method: self.method.as_deref(),
            target: self.target.as_deref(),
            id: self.id.as_deref(),
            outcome: &self.outcome,
            error_code: self.error_code,
            limit: self.limit.as_deref(),
            http_status: self.http_status,
            ttfb_us: self.ttfb_us,
            duration_us: self.duration_us,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            progress: self.progress,
            cost: self.cost,
            arguments: self.arguments.as_deref(),
            protocol_version: self.protocol_version.as_deref(),
            calls: self.calls,
            errors: self.errors,
            end_reason: self.end_reason.as_deref(),
        }
    }
}

impl AuditEventRef<'_> {
    /// A record of its own, with copies of the strings.
    pub fn to_event(&self) -> AuditEvent {
        let text = |s: Option<&str>| s.map(str::to_owned);
        let name = |s: Option<&str>| s.map(|s| Cow::Owned(s.to_owned()));
        AuditEvent {
            event: Cow::Owned(self.event.to_owned()),
            time: self.time.to_owned(),
            principal: text(self.principal),
            tenant: text(self.tenant),
            auth_method: name(self.auth_method),
            session: text(self.session),
            backend: text(self.backend),
            method: name(self.method),
            target: text(self.target),
            id: text(self.id),
            outcome: Cow::Owned(self.outcome.to_owned()),
            error_code: self.error_code,
            limit: name(self.limit),
            http_status: self.http_status,
            ttfb_us: self.ttfb_us,
            duration_us: self.duration_us,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            progress: self.progress,
            cost: self.cost,
            arguments: text(self.arguments),
            protocol_version: name(self.protocol_version),
            calls: self.calls,
            errors: self.errors,
            end_reason: name(self.end_reason),
        }
    }
}

/// `event` as one line of JSON, the same as its `Serialize` gives (a test
/// checks), written by hand: most of its strings need no escaping, and
/// checking that is cheaper than escaping byte by byte.
fn write_json(e: &AuditEventRef<'_>, out: &mut Vec<u8>) {
    // Each field is written as few pieces: its key's whole prefix
    // (`,"key":"`) is one literal, as `event` always comes first.
    struct Obj<'a> {
        out: &'a mut Vec<u8>,
    }
    impl Obj<'_> {
        /// `prefix` is `,"key":"`. Always inlined: each call site's prefix
        /// is then a literal of known length, copied without a `memcpy`
        /// call (15 fields a record).
        #[inline(always)]
        fn text(&mut self, prefix: &str, v: Option<&str>) {
            let Some(v) = v else { return };
            self.out.extend_from_slice(prefix.as_bytes());
            if !needs_escape(v.as_bytes()) {
                self.out.extend_from_slice(v.as_bytes());
                self.out.push(b'"');
            } else {
                // serde_json writes the quotes itself.
                self.out.pop();
                // Writing a str into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *self.out, v);
            }
        }
        /// `prefix` is `,"key":`.
        #[inline(always)]
        fn number(&mut self, prefix: &str, v: Option<impl itoa::Integer>) {
            let Some(v) = v else { return };
            self.out.extend_from_slice(prefix.as_bytes());
            self.out
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
    }
    macro_rules! text {
        ($o:ident, $k:literal, $v:expr) => {
            $o.text(concat!(",\"", $k, "\":\""), $v)
        };
    }
    macro_rules! number {
        ($o:ident, $k:literal, $v:expr) => {
            $o.number(concat!(",\"", $k, "\":"), $v)
        };
    }
    out.reserve(512);
    let mut o = Obj { out };
    o.text("{\"event\":\"", Some(e.event));
    text!(o, "time", Some(e.time));
    text!(o, "principal", e.principal);
    text!(o, "tenant", e.tenant);
    text!(o, "auth_method", e.auth_method);
    text!(o, "session", e.session);
    text!(o, "backend", e.backend);
    text!(o, "method", e.method);
    text!(o, "target", e.target);
    text!(o, "id", e.id);
    text!(o, "outcome", Some(e.outcome));
    number!(o, "error_code", e.error_code);
    text!(o, "limit", e.limit);
    number!(o, "http_status", e.http_status);
    number!(o, "ttfb_us", e.ttfb_us);
    number!(o, "duration_us", e.duration_us);
    number!(o, "bytes_in", Some(e.bytes_in));
    number!(o, "bytes_out", Some(e.bytes_out));
    number!(o, "progress", (e.progress != 0).then_some(e.progress));
    number!(o, "cost", (e.cost != 0).then_some(e.cost));
    text!(o, "arguments", e.arguments);
    text!(o, "protocol_version", e.protocol_version);
    number!(o, "calls", e.calls);
    number!(o, "errors", e.errors);
    text!(o, "end_reason", e.end_reason);
    o.out.push(b'}');
}

/// Whether `s` holds a byte JSON must escape: `"`, `\\` or a control
/// character. No early exit: the fold over every byte vectorizes, and the
/// strings are short.
fn needs_escape(s: &[u8]) -> bool {
    s.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// What to do when a sink's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the record and count it.
    #[default]
    Drop,
    /// Refuse new calls (503, -32056) until the sink catches up.
    Refuse,
}

/// Where audit records go. `record` must never block.
pub trait AuditSink: Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, event: AuditEvent);
    /// Takes one record, lent: how the audit layer hands over each call's
    /// record. The default makes an [`AuditEvent`] of it for
    /// [`record`](Self::record); a sink that writes the record out at once
    /// implements this too, and spares the copies.
    fn record_ref(&self, event: &AuditEventRef<'_>) {
        self.record(event.to_event())
    }
    /// True when the sink is full and its policy is to refuse calls.
    fn saturated(&self) -> bool {
        false
    }
    /// Records dropped because the sink was full.
    fn dropped(&self) -> u64 {
        0
    }
    /// Writes out what is buffered (blocking; for shutdown).
    fn flush(&self) {}
}

impl<S: AuditSink + ?Sized> AuditSink for Arc<S> {
    fn record(&self, event: AuditEvent) {
        (**self).record(event)
    }
    fn record_ref(&self, event: &AuditEventRef<'_>) {
        (**self).record_ref(event)
    }
    fn saturated(&self) -> bool {
        (**self).saturated()
    }
    fn dropped(&self) -> u64 {
        (**self).dropped()
    }
    fn flush(&self) {
        (**self).flush()
    }
}

/// Records as `tracing` events (target `mcp_gateway::audit`, level INFO)
/// with structured fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn record(&self, e: AuditEvent) {
        self.record_ref(&e.borrowed());
    }

    fn record_ref(&self, e: &AuditEventRef<'_>) {
        tracing::info!(
            target: "mcp_gateway::audit",
            event = e.event,
            principal = e.principal,
            tenant = e.tenant,
            session = e.session,
            backend = e.backend,
            method = e.method,
            target_name = e.target,
            id = e.id,
            outcome = e.outcome,
            error_code = e.error_code,
            limit = e.limit,
            http_status = e.http_status,
            ttfb_us = e.ttfb_us,
            duration_us = e.duration_us,
            bytes_in = e.bytes_in,
            bytes_out = e.bytes_out,
            progress = e.progress,
            cost = e.cost,
            calls = e.calls,
            errors = e.errors,
            end_reason = e.end_reason,
        );
    }
}

/// A bounded channel of records, for tests and custom consumers.
#[derive(Debug)]
pub struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<AuditEvent>,
    overflow: Overflow,
    dropped: AtomicU64,
}

impl ChannelSink {
    /// A sink holding at most `capacity` unread records, and its receiver.
    pub fn new(
        capacity: usize,
        overflow: Overflow,
    ) -> (Self, tokio::sync::mpsc::Receiver<AuditEvent>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (
            ChannelSink {
                tx,
                overflow,
                dropped: AtomicU64::new(0),
            },
            rx,
        )
    }
}

impl AuditSink for ChannelSink {
    fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn saturated(&self) -> bool {
        self.overflow == Overflow::Refuse && self.tx.capacity() == 0
    }
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Settings of [`JsonlSink`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The file. Rotated files are `<path>.1` (newest) … `<path>.<keep>`.
    pub path: PathBuf,
    /// Rotate when the file passes this size. Default 100 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept. Default 5.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Records buffered between the request path and the writer thread,
    /// per serving thread (each records into a batch of its own, which the
    /// writer takes every 10 ms). Default 65 536.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// What to do when the buffer is full. Default `drop`.
    #[serde(default)]
    pub overflow: Overflow,
}

fn default_max_bytes() -> u64 {
    100 << 20
}
fn default_keep() -> usize {
    5
}
fn default_buffer() -> usize {
    65_536
}

/// Lines recorded on one thread and not yet taken by the writer.
#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    records: usize,
}

/// State shared by a [`JsonlSink`] and its writer thread.
struct JsonlShared {
    /// Records waiting for the writer, serialised by the recording thread
    /// into a batch of its own. Its lock is taken by that thread and, every
    /// 10 ms, by the writer, so it is never contended in practice; and
    /// unlike a shared queue of lines, nothing is allocated per record,
    /// no cache line is shared by the serving threads, and no buffer is
    /// freed on a thread other than the one that allocated it.
    batches: ThreadLocal<Mutex<Batch>>,
    /// Records one batch may hold (`JsonlConfig::buffer`).
    cap: usize,
    /// How often the writer takes the batches.
    drain_every: Duration,
    /// Flush requests and completions (generation counters).
    flush: Mutex<(u64, u64)>,
    flushed: Condvar,
    stop: AtomicBool,
}

/// A JSON Lines file, written by its own thread. See the module docs.
///
/// Each recording thread serialises its records into a batch of its own;
/// the writer takes the batches every 10 ms (and at once on
/// [`flush`](AuditSink::flush)), writes them out, rotates the file by size
/// (between lines), and flushes on [`close`](JsonlSink::close) or drop.
pub struct JsonlSink {
    shared: Arc<JsonlShared>,
    overflow: Overflow,
    dropped: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued: usize = self.shared.batches.iter().map(|b| lock(b).records).sum();
        f.debug_struct("JsonlSink")
            .field("queued", &queued)
            .finish()
    }
}

/// How often the writer takes the batches.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

impl JsonlSink {
    /// Opens (appends to) the file and starts the writer.
    pub fn open(cfg: JsonlConfig) -> std::io::Result<Self> {
        Self::open_draining_every(cfg, DRAIN_EVERY)
    }

    fn open_draining_every(cfg: JsonlConfig, drain_every: Duration) -> std::io::Result<Self> {
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        let shared = Arc::new(JsonlShared {
            batches: ThreadLocal::new(),
            cap: cfg.buffer.max(1),
            drain_every,
            flush: Mutex::new((0, 0)),
            flushed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let w = shared.clone();
        let overflow = cfg.overflow;
        let thread = std::thread::Builder::new()
            .name("mcp-audit-jsonl".into())
            .spawn(move || writer(cfg, file, size, w))?;
        Ok(JsonlSink {
            shared,
            overflow,
            dropped: AtomicU64::new(0),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes everything queued, stops the writer and waits for it.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.thread).take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for JsonlSink {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn writer(cfg: JsonlConfig, file: File, mut size: u64, shared: Arc<JsonlShared>) {
    let mut out = BufWriter::with_capacity(64 << 10, file);
    let mut taken = Vec::new();
    loop {
        // Note a flush request before draining, so everything recorded
        // before the request is written when it is acknowledged.
        let wanted = lock(&shared.flush).0;
        let stopping = shared.stop.load(Ordering::SeqCst);
        for batch in shared.batches.iter() {
            {
                let mut b = lock(batch);
                if b.records == 0 {
                    continue;
                }
                // The thread gets the writer's empty buffer (with its
                // capacity) and keeps recording at once.
                std::mem::swap(&mut b.lines, &mut taken);
                b.records = 0;
            }
            write_lines(&cfg, &mut out, &mut size, &taken);
            taken.clear();
            if taken.capacity() > 4 << 20 {
                // A burst's buffer is not kept for ever.
                taken = Vec::new();
            }
        }
        // Everything taken: put what is buffered on disk.
        let _ = out.flush();
        {
            let mut f = lock(&shared.flush);
            if f.1 < wanted {
                f.1 = wanted;
                shared.flushed.notify_all();
            }
        }
        if stopping {
            // `record` checks `stop` under its batch's lock, so nothing
            // can be added to a batch after this last pass took it.
            break;
        }
        std::thread::park_timeout(shared.drain_every);
    }
    let _ = out.flush();
    let mut f = lock(&shared.flush);
    f.1 = f.0;
    shared.flushed.notify_all();
}

/// Writes whole lines, rotating the file once it reaches its size (between
/// lines, as a file never ends mid-record).
fn write_lines(cfg: &JsonlConfig, out: &mut BufWriter<File>, size: &mut u64, mut lines: &[u8]) {
    while !lines.is_empty() {
        let need = cfg.max_bytes.saturating_sub(*size).max(1) as usize;
        // Through the end of the line that takes the file to its size, or
        // everything when the file stays below it.
        let cut = match lines.get(need - 1..) {
            Some(rest) => memchr::memchr(b'\n', rest).map_or(lines.len(), |i| need + i),
            None => lines.len(),
        };
        if out.write_all(&lines[..cut]).is_err() {
            tracing::error!(path = %cfg.path.display(), "audit log write failed");
        }
        *size += cut as u64;
        lines = &lines[cut..];
        if *size >= cfg.max_bytes {
            match rotate(cfg, out) {
                Ok(()) => *size = 0,
                Err(err) => tracing::error!(error = %err, "audit log rotation failed"),
            }
        }
    }
}

fn rotate(cfg: &JsonlConfig, out: &mut BufWriter<File>) -> std::io::Result<()> {
    out.flush()?;
    if cfg.keep == 0 {
        let f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&cfg.path)?;
        *out = BufWriter::with_capacity(64 << 10, f);
        return Ok(());
    }
    for i in (1..cfg.keep).rev() {
        let from = rotated(&cfg.path, i);
        if from.exists() {
            std::fs::rename(&from, rotated(&cfg.path, i + 1))?;
        }
    }
    std::fs::rename(&cfg.path, rotated(&cfg.path, 1))?;
    *out = BufWriter::with_capacity(64 << 10, open_append(&cfg.path)?);
    Ok(())
}

impl AuditSink for JsonlSink {
    fn record(&self, event: AuditEvent) {
        self.record_ref(&event.borrowed());
    }

    fn record_ref(&self, event: &AuditEventRef<'_>) {
        let batch = self.shared.batches.get_or(Mutex::default);
        let mut b = lock(batch);
        if b.records >= self.shared.cap || self.shared.stop.load(Ordering::SeqCst) {
            drop(b);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        write_json(event, &mut b.lines);
        b.lines.push(b'\n');
        b.records += 1;
    }

    fn saturated(&self) -> bool {
        self.overflow == Overflow::Refuse
            && self
                .shared
                .batches
                .get()
                .is_some_and(|b| lock(b).records >= self.shared.cap)
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn flush(&self) {
        let thread = lock(&self.thread);
        let Some(t) = thread.as_ref() else { return };
        let mut f = lock(&self.shared.flush);
        f.0 += 1;
        let want = f.0;
        t.thread().unpark();
        drop(thread);
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.1 < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("audit log flush timed out");
                return;
            }
            f = self
                .shared
                .flushed
                .wait_timeout(f, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What of a call's arguments the record keeps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ArgumentsPolicy {
    /// Nothing (the default: arguments may hold personal data).
    #[default]
    Omit,
    /// `sha256:<hex>` of the arguments' JSON text: proves what was sent
    /// without keeping it.
    Hash,
    /// The arguments, with the values of these keys (at any depth)
    /// replaced by `"[redacted]"`.
    Redact(Vec<String>),
}

/// Settings of [`AuditLayer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// What to keep of arguments.
    pub arguments: ArgumentsPolicy,
}

/// Per-session totals, emitted with `session_end`.
#[derive(Default)]
struct SessionTotals {
    started: Option<Instant>,
    principal: Option<Principal>,
    backend: Option<Arc<str>>,
    protocol_version: Option<Cow<'static, str>>,
    calls: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    cost: u64,
    /// Calls of the session under way (see [`InFlight`]).
    in_flight: u32,
    /// How the session ended, while `session_end` waits for `in_flight`.
    ended: Option<SessionEnd>,
}

struct Shared {
    sink: Arc<dyn AuditSink>,
    cfg: AuditConfig,
    /// Per-session totals, sharded by session id so concurrent calls of
    /// different sessions rarely share a lock.
    sessions: [Mutex<HashMap<String, SessionTotals, foldhash::fast::RandomState>>; 16],
}

impl Shared {
    fn totals(
        &self,
        sid: &str,
    ) -> std::sync::MutexGuard<'_, HashMap<String, SessionTotals, foldhash::fast::RandomState>>
    {
        // foldhash, not SipHash: this runs on every call. The maps keep
        // foldhash's per-map random seed; the shard pick needs none.
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::default().hash_one(sid);
        lock(&self.sessions[h as usize % self.sessions.len()])
    }
}

/// Builds [`Audit`] services; also the [`SessionObserver`] that emits
/// `session_end` (the builder registers it on the session layer).
#[derive(Clone)]
pub struct AuditLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLayer").finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// Records to `sink`.
    pub fn new(sink: Arc<dyn AuditSink>, cfg: AuditConfig) -> Self {
        AuditLayer {
            shared: Arc::new(Shared {
                sink,
                cfg,
                sessions: Default::default(),
            }),
        }
    }

    /// The observer to register on the session layer.
    pub fn session_observer(&self) -> Arc<dyn SessionObserver> {
        Arc::new(SessionEnds(self.shared.clone()))
    }

    /// The sink.
    pub fn sink(&self) -> &Arc<dyn AuditSink> {
        &self.shared.sink
    }
}

struct SessionEnds(Arc<Shared>);

impl SessionObserver for SessionEnds {
    fn ended(&self, record: &SessionRecord, why: SessionEnd) {
        let sid = record.id().as_str();
        let totals = {
            let mut map = self.0.totals(sid);
            match map.get_mut(sid) {
                // Calls still under way: the last of them records the end,
                // with its own figures in the totals.
                Some(t) if t.in_flight > 0 => {
                    t.ended = Some(why);
                    None
                }
                _ => map.remove(sid),
            }
        };
        if let Some(t) = totals {
            self.0.sink.record(session_end_event(sid, t, why));
        }
    }
}

/// The `session_end` record of session `sid`.
fn session_end_event(sid: &str, t: SessionTotals, why: SessionEnd) -> AuditEvent {
    let mut e = AuditEvent {
        event: "session_end".into(),
        time: now_rfc3339(),
        session: Some(sid.to_owned()),
        backend: t.backend.as_deref().map(String::from),
        outcome: "ok".into(),
        duration_us: t.started.map(|s| s.elapsed().as_micros() as u64),
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
        cost: t.cost,
        protocol_version: t.protocol_version,
        calls: Some(t.calls),
        errors: Some(t.errors),
        end_reason: Some(why.as_str().into()),
        ..Default::default()
    };
    set_principal(&mut e, t.principal.as_ref());
    e
}

/// A `POST` of a known session, under way. The session's `session_end`
/// waits until every such call has been recorded: a client may read a
/// call's whole answer and end the session (a `DELETE` on another
/// connection) before the gateway has dropped that answer's body and
/// recorded the call, and the session's totals would miss it. Dropped when
/// the call is recorded, or with the call if it never got an answer; the
/// last one out of an ended session records its end. `GET` streams are not
/// waited for (one may outlive its session indefinitely), nor is the
/// `DELETE` that ends the session.
struct InFlight {
    shared: Arc<Shared>,
    sid: String,
    released: bool,
}

impl InFlight {
    /// Counts a call of `sid`, if the session is one this layer tracks and
    /// has not ended (a call after the end is not the session's work).
    fn start(shared: &Arc<Shared>, sid: &str) -> Option<InFlight> {
        let mut map = shared.totals(sid);
        let t = map.get_mut(sid)?;
        if t.ended.is_some() {
            return None;
        }
        t.in_flight += 1;
        drop(map);
        Some(InFlight {
            shared: shared.clone(),
            sid: sid.to_owned(),
            released: false,
        })
    }

    /// Adds the recorded call's figures to the session's totals and
    /// releases it, under one lock.
    fn finish(mut self, add: impl FnOnce(&mut SessionTotals)) {
        self.release(Some(add));
    }

    fn release(&mut self, add: Option<impl FnOnce(&mut SessionTotals)>) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let ended = {
            let mut map = self.shared.totals(&self.sid);
            let Some(t) = map.get_mut(&self.sid) else {
                return;
            };
            if let Some(add) = add {
                add(t);
            }
            t.in_flight -= 1;
            if t.in_flight > 0 {
                return;
            }
            match t.ended {
                Some(why) => map.remove(&self.sid).map(|t| (t, why)),
                None => None,
            }
        };
        if let Some((t, why)) = ended {
            self.shared
                .sink
                .record(session_end_event(&self.sid, t, why));
        }
    }
}

impl Drop for InFlight {
    /// A call that never got recorded (dropped before its answer).
    fn drop(&mut self) {
        self.release(None::<fn(&mut SessionTotals)>);
    }
}

fn set_principal(e: &mut AuditEvent, p: Option<&Principal>) {
    if let Some(p) = p {
        e.principal = Some(p.subject().to_owned());
        e.tenant = p.tenant().map(str::to_owned);
        e.auth_method = Some(Cow::Borrowed(p.auth_method()));
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The audit service. See the module docs.
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Audit<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for Audit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> BoxFuture {
        let start = Instant::now();
        if self.shared.sink.saturated() {
            let e = GatewayError::new(
                ErrorKind::AuditBacklog,
                "Service Unavailable: the audit log cannot keep up; retry shortly",
            );
            return Box::pin(std::future::ready(Ok(error_response(&e, None))));
        }
        let shared = self.shared.clone();
        let session = req
            .headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok());
        let in_flight = match session {
            Some(sid) if req.method() == http::Method::POST => InFlight::start(&shared, sid),
            _ => None,
        };
        let asked = Asked {
            start,
            http_method: req.method().clone(),
            session: session.map(str::to_owned),
            in_flight,
            declared_len: req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        };
        // Called here, not in the future: the service polled ready is used
        // as it is, with no clone of the stack below (a clone touches the
        // reference count of every layer under this one, counts every
        // serving thread shares).
        let fut = self.inner.call(req);
        // One await; what follows is plain code outside the future.
        Box::pin(async move { Ok(watch(shared, asked, fut.await?)) })
    }
}

/// What the request said, noted before it goes on.
struct Asked {
    start: Instant,
    http_method: http::Method,
    session: Option<String>,
    in_flight: Option<InFlight>,
    declared_len: Option<u64>,
}

/// Notes what the response head says, records a session start, and wraps
/// the body so the call is recorded when it ends.
fn watch(shared: Arc<Shared>, asked: Asked, res: Response<Body>) -> Response<Body> {
    let ttfb = asked.start.elapsed();
    let mcp = res.extensions().get::<McpRequest>().cloned();
    let started_session =
        mcp.as_ref().is_some_and(McpRequest::is_initialize) && res.status().is_success();
    let session = if started_session {
        res.headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        asked.session
    };
    let sse = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let call = CallRecord {
        start: asked.start,
        ttfb,
        http_method: asked.http_method,
        session,
        bytes_in: mcp
            .as_ref()
            .map(|m| m.body().len() as u64)
            .or(asked.declared_len)
            .unwrap_or(0),
        status: res.status().as_u16(),
        kind: res.extensions().get::<ErrorKind>().copied(),
        limit: res.extensions().get::<LimitKind>().copied(),
        principal: res.extensions().get::<Principal>().cloned(),
        // Shared, not copied: the record's `String` is made once, in `base`.
        backend: res.extensions().get::<BackendName>().map(|b| b.0.clone()),
        cost: res.extensions().get::<CostCharged>().map_or(0, |c| c.0),
        mcp,
        in_flight: asked.in_flight,
    };
    if started_session {
        if let Some(sid) = &call.session {
            let mut e = call.base("session_start");
            e.outcome = "ok".into();
            shared.sink.record(e);
            shared.totals(sid).insert(
                sid.clone(),
                SessionTotals {
                    started: Some(asked.start),
                    principal: call.principal.clone(),
                    backend: call.backend.clone(),
                    protocol_version: call.version(),
                    ..Default::default()
                },
            );
        }
    }
    let (parts, body) = res.into_parts();
    Response::from_parts(
        parts,
        Body::new(AuditBody {
            inner: body,
            meter: Meter::new(sse),
            call: Some(call),
            shared,
        }),
    )
}

/// What is known of a call when its response head arrives.
struct CallRecord {
    start: Instant,
    ttfb: Duration,
    http_method: http::Method,
    session: Option<String>,
    bytes_in: u64,
    status: u16,
    kind: Option<ErrorKind>,
    limit: Option<LimitKind>,
    principal: Option<Principal>,
    backend: Option<Arc<str>>,
    cost: u64,
    mcp: Option<McpRequest>,
    /// Released once the call is recorded (see [`InFlight`]).
    in_flight: Option<InFlight>,
}

impl CallRecord {
    fn version(&self) -> Option<Cow<'static, str>> {
        self.mcp.as_ref().map(|m| {
            match m
                .message()
                .and_then(|msg| msg.initialize_protocol_version())
            {
                // What the client asked for, which may be no version we know.
                Some(v) => Cow::Owned(v.to_owned()),
                None => Cow::Borrowed(m.protocol_version().as_str()),
            }
        })
    }

    /// A session event's record, with what the call knows.
    fn base(&self, event: &'static str) -> AuditEvent {
        let mut e = AuditEvent {
            event: event.into(),
            time: now_rfc3339(),
            session: self.session.clone(),
            // Not `to_string`: that goes through the formatting machinery.
            backend: self.backend.as_deref().map(String::from),
            http_status: Some(self.status),
            protocol_version: self.version(),
            ..Default::default()
        };
        set_principal(&mut e, self.principal.as_ref());
        e
    }
}

/// Watches a response body go by.
struct Meter {
    /// For an event stream; `None` for JSON.
    sse: Option<SseWatch>,
    /// The first bytes of a JSON body (enough for an error object).
    head: Head,
    bytes: u64,
    progress: u64,
    error_code: Option<i64>,
    ended: bool,
    failed: bool,
}

/// Events larger than this are counted, not inspected (a result that big
/// is not an error object or a progress notification).
const INSPECT: usize = 8 << 10;

const PROGRESS: &[u8] = b"notifications/progress";

/// What an event stream needs watching for, without assembling events as
/// they pass: progress notifications are counted by searching the bytes
/// (across frame boundaries too), and the stream's last [`INSPECT`] bytes
/// are kept (by reference) to read the response's error code, if it has
/// one, when the stream ends.
#[derive(Default)]
struct SseWatch {
    /// The last bytes of the previous frame, for a name split across two.
    seam: Vec<u8>,
    tail: std::collections::VecDeque<Bytes>,
    tail_len: usize,
}

/// Finders for the two names watched for, built once (a finder per call
/// would redo its set-up every time).
fn progress_finder() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(PROGRESS))
}

fn error_finder() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(b"\"error\""))
}

impl SseWatch {
    /// Progress notifications that end in `data`.
    fn see(&mut self, data: &Bytes) -> u64 {
        const SEAM: usize = PROGRESS.len() - 1;
        let f = progress_finder();
        let mut n = f.find_iter(data).count() as u64;
        // The seam is the stream's last SEAM bytes, too short to hold the
        // name: every match in seam + data[..SEAM] starts before `data` and
        // ends in it, a name split across frames (counted once, here).
        let head = &data[..data.len().min(SEAM)];
        let seam_len = self.seam.len();
        self.seam.extend_from_slice(head);
        if seam_len > 0 {
            n += f.find_iter(&self.seam).count() as u64;
        }
        // Then the new seam: the last SEAM bytes of all seen so far.
        if data.len() >= SEAM {
            self.seam.clear();
            self.seam.extend_from_slice(&data[data.len() - SEAM..]);
        } else if self.seam.len() > SEAM {
            let cut = self.seam.len() - SEAM;
            self.seam.drain(..cut);
        }
        // Kept by reference, unless the frame is larger than what is kept:
        // its last bytes are then copied, so a big frame's buffer is not
        // held for the sake of a few kilobytes.
        let kept = if data.len() > INSPECT {
            Bytes::copy_from_slice(&data[data.len() - INSPECT..])
        } else {
            data.clone()
        };
        self.tail_len += kept.len();
        self.tail.push_back(kept);
        while self.tail.len() > 1 && self.tail_len - self.tail[0].len() >= INSPECT {
            let first = self.tail.pop_front().map_or(0, |b| b.len());
            self.tail_len -= first;
        }
        n
    }

    /// The JSON-RPC error code in the stream's last events, if any.
    fn error_code(&self) -> Option<i64> {
        let skip = self.tail_len.saturating_sub(INSPECT);
        let joined;
        let tail: &[u8] = match self.tail.len() {
            0 => return None,
            // The usual case, a response in one frame: read in place.
            1 => &self.tail[0][skip..],
            _ => {
                let mut v = Vec::with_capacity(self.tail_len - skip);
                let mut skip = skip;
                for b in &self.tail {
                    let from = skip.min(b.len());
                    skip -= from;
                    v.extend_from_slice(&b[from..]);
                }
                joined = v;
                &joined
            }
        };
        error_finder().find(tail)?;
        // Rare: read the events. The tail may start inside an event; that
        // fragment does not parse and is passed over.
        let (mut code, mut progress) = (None, 0);
        let mut scanner = SseScanner::collecting(INSPECT);
        scanner.feed(tail, |ev| {
            if !ev.oversized && !ev.data.is_empty() {
                inspect(ev.data, &mut progress, &mut code);
            }
        });
        // A stream whose last event has no blank line after it.
        scanner.feed(b"\n\n", |ev| {
            if !ev.oversized && !ev.data.is_empty() {
                inspect(ev.data, &mut progress, &mut code);
            }
        });
        code
    }
}

impl Meter {
    fn new(sse: bool) -> Self {
        Meter {
            sse: sse.then(SseWatch::default),
            head: Head::Empty,
            bytes: 0,
            progress: 0,
            error_code: None,
            ended: false,
            failed: false,
        }
    }

    fn see(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
        match &mut self.sse {
            Some(w) => self.progress += w.see(data),
            None => self.head.keep(data),
        }
    }

    fn finish(&mut self) {
        match &self.sse {
            Some(w) => self.error_code = w.error_code(),
            None => match std::mem::replace(&mut self.head, Head::Empty) {
                Head::Empty => {}
                Head::One(b) => inspect(&b, &mut self.progress, &mut self.error_code),
                Head::Many(v) => inspect(&v, &mut self.progress, &mut self.error_code),
            },
        }
    }
}

/// The first [`INSPECT`] bytes of a JSON body: most bodies come in one
/// frame, kept by reference; only a body in several frames is copied.
enum Head {
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

impl Head {
    fn len(&self) -> usize {
        match self {
            Head::Empty => 0,
            Head::One(b) => b.len(),
            Head::Many(v) => v.len(),
        }
    }

    fn keep(&mut self, data: &Bytes) {
        let room = INSPECT.saturating_sub(self.len()).min(data.len());
        if room == 0 {
            return;
        }
        let part = data.slice(..room);
        *self = match std::mem::replace(self, Head::Empty) {
            Head::Empty => Head::One(part),
            Head::One(first) => {
                let mut v = Vec::with_capacity(first.len() + part.len());
                v.extend_from_slice(&first);
                v.extend_from_slice(&part);
                Head::Many(v)
            }
            Head::Many(mut v) => {
                v.extend_from_slice(&part);
                Head::Many(v)
            }
        };
    }
}

/// Counts a progress notification, or notes a JSON-RPC error code.
fn inspect(json: &[u8], progress: &mut u64, code: &mut Option<i64>) {
    if progress_finder().find(json).is_some() {
        *progress += 1;
        return;
    }
    if code.is_none() && error_finder().find(json).is_some() {
        #[derive(Deserialize)]
        struct E {
            code: i64,
        }
        #[derive(Deserialize)]
        struct M {
            error: Option<E>,
        }
        match serde_json::from_slice::<Value>(json) {
            Ok(Value::Array(items)) => {
                *code = items
                    .into_iter()
                    .filter_map(|i| serde_json::from_value::<M>(i).ok())
                    .find_map(|m| m.error.map(|e| e.code));
            }
            Ok(v) => {
                *code = serde_json::from_value::<M>(v)
                    .ok()
                    .and_then(|m| m.error.map(|e| e.code))
            }
            Err(_) => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that emits its call's audit records when it ends
    /// (in the poll that sees the end) or is dropped.
    struct AuditBody {
        #[pin]
        inner: Body,
        meter: Meter,
        call: Option<CallRecord>,
        shared: Arc<Shared>,
    }

    impl PinnedDrop for AuditBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(call) = this.call.take() {
                this.meter.finish();
                emit(this.shared, call, this.meter);
            }
        }
    }
}

impl http_body::Body for AuditBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.meter.see(d);
                }
                if this.inner.is_end_stream() {
                    this.meter.ended = true;
                }
            }
            Poll::Ready(Some(Err(_))) => this.meter.failed = true,
            Poll::Ready(None) => this.meter.ended = true,
            Poll::Pending => {}
        }
        // Recorded in the poll that sees the end, before the server writes
        // the last bytes: a client never has an answer whose call is not
        // yet recorded, so records follow the order in which a client's
        // calls depend on each other (a server drops a body only after
        // writing it, and a fast client's next call would be recorded
        // first).
        if this.meter.ended || this.meter.failed {
            if let Some(call) = this.call.take() {
                this.meter.finish();
                emit(this.shared, call, this.meter);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn emit(shared: &Shared, mut call: CallRecord, meter: &Meter) {
    let ended = meter.ended || (meter.bytes == 0 && !meter.failed && call.status == 202);
    let (outcome, code): (&str, Option<i64>) = match call.kind {
        Some(ErrorKind::Denied | ErrorKind::ToolChanged) => {
            ("denied", call.kind.map(|k| k.code() as i64))
        }
        Some(ErrorKind::Limited | ErrorKind::TooManySessions) => {
            ("limited", call.kind.map(|k| k.code() as i64))
        }
        Some(ErrorKind::UpstreamUnavailable | ErrorKind::UpstreamTimeout) => {
            ("upstream_failure", call.kind.map(|k| k.code() as i64))
        }
        Some(k) => ("rejected", Some(k.code() as i64)),
        None if meter.failed => ("upstream_failure", None),
        None if !ended => ("client_gone", None),
        None => match meter.error_code {
            Some(c) => ("error", Some(c)),
            None if call.status >= 400 => ("error", None),
            None => ("ok", None),
        },
    };
    let duration = call.start.elapsed();
    // One record per message (a batch has several), else one for the request.
    let n = call
        .mcp
        .as_ref()
        .map_or(1, |mcp| mcp.envelope().messages().len() as u64);
    let (bytes_in, bytes_out, cost) = (call.bytes_in, meter.bytes, call.cost);
    let add = move |t: &mut SessionTotals| {
        t.calls += n;
        if outcome != "ok" {
            t.errors += n;
        }
        t.bytes_in += bytes_in;
        t.bytes_out += bytes_out;
        t.cost += cost;
    };
    // A call counted in flight adds its figures when it is released, after
    // its records (below). Any other message of the session adds them now;
    // once the session has ended, such messages (the DELETE that ended it,
    // anything after) no longer count.
    let in_flight = call.in_flight.take();
    if in_flight.is_none() {
        if let Some(sid) = &call.session {
            if let Some(t) = shared
                .totals(sid)
                .get_mut(sid)
                .filter(|t| t.ended.is_none())
            {
                add(t);
            }
        }
    }
    // The records are lent to the sink (`record_ref`): nothing below
    // copies a string, and a sink writing them out at once copies none.
    let mut time = [0u8; 24];
    let time = now_rfc3339_in(&mut time);
    let version = call.version();
    let p = call.principal.as_ref();
    let base = AuditEventRef {
        event: "call",
        time,
        principal: p.map(Principal::subject),
        tenant: p.and_then(Principal::tenant),
        auth_method: p.map(Principal::auth_method),
        session: call.session.as_deref(),
        backend: call.backend.as_deref(),
        outcome,
        error_code: code,
        limit: call.limit.map(LimitKind::as_str),
        http_status: Some(call.status),
        ttfb_us: Some(call.ttfb.as_micros() as u64),
        duration_us: Some(duration.as_micros() as u64),
        bytes_in: call.bytes_in,
        bytes_out: meter.bytes,
        progress: meter.progress,
        cost: call.cost,
        protocol_version: version.as_deref(),
        ..Default::default()
    };
    match &call.mcp {
        Some(mcp) => {
            for m in mcp.envelope().messages() {
                let method = match m.kind() {
                    MessageKind::Response | MessageKind::Error => Some("response"),
                    _ => m.method().map(|x| x.as_str()),
                };
                // JSON text of a UTF-8 body: borrowed, never replaced.
                let id = m.id().map(|i| String::from_utf8_lossy(i.as_bytes()));
                let args = match m.method() {
                    Some(&mcp_gateway_core::Method::ToolsCall) => {
                        arguments(&shared.cfg.arguments, m.arguments())
                    }
                    _ => None,
                };
                shared.sink.record_ref(&AuditEventRef {
                    method,
                    target: m.target(),
                    id: id.as_deref(),
                    arguments: args.as_deref(),
                    ..base
                });
            }
        }
        None => shared.sink.record_ref(&AuditEventRef {
            method: Some(call.http_method.as_str()),
            ..base
        }),
    }
    if let Some(g) = in_flight {
        g.finish(add);
    }
}

fn arguments(policy: &ArgumentsPolicy, raw: Option<&Bytes>) -> Option<String> {
    let raw = raw?;
    match policy {
        ArgumentsPolicy::Omit => None,
        ArgumentsPolicy::Hash => Some(format!("sha256:{}", crate::auth::hex(&Sha256::digest(raw)))),
        ArgumentsPolicy::Redact(keys) => {
            let mut v: Value = serde_json::from_slice(raw).ok()?;
            redact(&mut v, keys);
            serde_json::to_string(&v).ok()
        }
    }
}

fn redact(v: &mut Value, keys: &[String]) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if keys.iter().any(|r| r.eq_ignore_ascii_case(k)) {
                    *x = Value::String("[redacted]".into());
                } else {
                    redact(x, keys);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact(x, keys)),
        _ => {}
    }
}

/// Now, RFC 3339 UTC with milliseconds. The date and time up to the
/// second are formatted once per second per thread; records only append
/// the milliseconds.
pub fn now_rfc3339() -> String {
    now_rfc3339_in(&mut [0; 24]).to_owned()
}

/// [`now_rfc3339`], written into `buf` (no allocation).
fn now_rfc3339_in(buf: &mut [u8; 24]) -> &str {
    use std::cell::Cell;
    thread_local! {
        /// The second last formatted, and its text up to the second.
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let now = SystemTime::now();
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, mut text) = SECOND.get();
    if secs != d.as_secs() {
        text.copy_from_slice(&rfc3339(now).as_bytes()[..19]);
        SECOND.set((d.as_secs(), text));
    }
    buf[..19].copy_from_slice(&text);
    let ms = d.subsec_millis();
    buf[19] = b'.';
    buf[20] = b'0' + (ms / 100) as u8;
    buf[21] = b'0' + (ms / 10 % 10) as u8;
    buf[22] = b'0' + (ms % 10) as u8;
    buf[23] = b'Z';
    // ASCII digits and punctuation: always UTF-8.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// `t` as RFC 3339 UTC with milliseconds (`2026-11-23T22:36:01.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_is_recorded_as_its_answer_ends_not_when_the_body_is_dropped() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let (sink, mut rx) = ChannelSink::new(8, Overflow::Drop);
        let svc = tower::ServiceBuilder::new()
            .layer(AuditLayer::new(Arc::new(sink), AuditConfig::default()))
            .layer(crate::jsonrpc::JsonRpcLayer::default())
            .service(crate::test_support::two_frame_event_stream());
        let req = crate::test_support::tools_call(7);
        let mut body = svc.oneshot(req).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        assert!(rx.try_recv().is_err(), "no record before the end");
        while let Some(f) = body.frame().await {
            f.unwrap();
        }
        // The body is still alive (a server drops it after writing the end).
        let e = rx.try_recv().expect("recorded when the end was seen");
        assert_eq!((e.outcome.as_ref(), e.id.as_deref()), ("ok", Some("7")));
        let sent: usize = crate::test_support::TWO_FRAMES
            .iter()
            .map(|f| f.len())
            .sum();
        assert_eq!(e.bytes_out, sent as u64);
        drop(body);
        assert!(rx.try_recv().is_err(), "recorded once");
    }

    #[test]
    fn escape_check_finds_every_special_byte_anywhere() {
        let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for len in 0..20 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[pos] = b;
                    assert_eq!(needs_escape(&s), naive(&s), "byte {b:#x} at {pos} of {len}");
                }
            }
        }
        assert!(!needs_escape("résumé ✓ 2026-11-24T03:40:00Z".as_bytes()));
    }

    #[test]
    fn the_cached_clock_agrees_with_the_formatter() {
        let a = rfc3339(SystemTime::now());
        let b = now_rfc3339();
        let c = rfc3339(SystemTime::now());
        assert_eq!(b.len(), 24);
        assert!(a <= b && b <= c, "{a} {b} {c}");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_473_361_123)),
            "2026-11-23T22:36:01.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn hand_written_lines_are_what_serde_writes() {
        let plain = AuditEvent {
            event: "call".into(),
            time: now_rfc3339(),
            outcome: "ok".into(),
            ..Default::default()
        };
        let full = AuditEvent {
            event: "session_end".into(),
            time: "2026-11-24T01:02:03.456Z".into(),
            principal: Some("ann \"the\" agent\\".into()),
            tenant: Some("acme\u{1}\n".into()),
            auth_method: Some("jwt".into()),
            session: Some("s-Zx9".into()),
            backend: Some("wetter".into()),
            method: Some("tools/call".into()),
            target: Some("get_weather ☀".into()),
            id: Some("\"abc\"".into()),
            outcome: "limited".into(),
            error_code: Some(-32055),
            limit: Some("cost_budget".into()),
            http_status: Some(200),
            ttfb_us: Some(17),
            duration_us: Some(u64::MAX),
            bytes_in: 12,
            bytes_out: 0,
            progress: 3,
            cost: 9,
            arguments: Some(r#"{"city":"Paris"}"#.into()),
            protocol_version: Some("2025-11-25".into()),
            calls: Some(4),
            errors: Some(1),
            end_reason: Some("deleted".into()),
        };
        for e in [plain, full] {
            let mut mine = Vec::new();
            write_json(&e.borrowed(), &mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(&e).unwrap()
            );
            // Lent and copied back, a record is the same record.
            assert_eq!(e.borrowed().to_event(), e);
        }
    }

    #[test]
    fn event_streams_are_watched_across_any_split() {
        let mut stream = String::new();
        for i in 0..5 {
            stream.push_str(&format!(
                "id: {i}\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progress\":{i}}}}}\n\n"
            ));
        }
        let ok = format!("{stream}data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{}}}}\n\n");
        let failed = format!(
            "{stream}event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata: \"error\":{{\"code\":-32602,\"message\":\"bad\"}}}}\r\n\r\n"
        );
        for (body, code) in [(ok, None), (failed, Some(-32602))] {
            for chunk in [1, 2, 7, 21, 22, 23, 64, body.len()] {
                let mut m = Meter::new(true);
                for part in body.as_bytes().chunks(chunk) {
                    m.see(&Bytes::copy_from_slice(part));
                }
                m.finish();
                assert_eq!(m.progress, 5, "progress, chunks of {chunk}");
                assert_eq!(m.error_code, code, "error code, chunks of {chunk}");
                assert_eq!(m.bytes, body.len() as u64);
            }
        }
        // Only the last INSPECT bytes are kept; of a big frame, a copy.
        let mut m = Meter::new(true);
        let big = Bytes::from(vec![b'x'; 3 * INSPECT]);
        for _ in 0..4 {
            m.see(&big);
        }
        let w = m.sse.as_ref().unwrap();
        assert_eq!(w.tail.len(), 1);
        assert_eq!(w.tail_len, INSPECT);
        assert_ne!(w.tail[0].as_ptr(), big[2 * INSPECT..].as_ptr());
        assert!(w.seam.len() < PROGRESS.len());
        let small = Bytes::from(vec![b'y'; 100]);
        m.see(&small);
        let w = m.sse.as_ref().unwrap();
        assert_eq!(
            w.tail.back().unwrap().as_ptr(),
            small.as_ptr(),
            "by reference"
        );
        assert!(w.tail_len <= 2 * INSPECT, "at most two windows kept");
    }

    #[test]
    fn inspection_counts_progress_and_finds_error_codes() {
        let (mut p, mut c) = (0, None);
        inspect(
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
            &mut p,
            &mut c,
        );
        inspect(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#,
            &mut p,
            &mut c,
        );
        assert_eq!((p, c), (1, Some(-32602)));
        let (mut p, mut c) = (0, None);
        inspect(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"the \"error\" word"}]}}"#, &mut p, &mut c);
        assert_eq!((p, c), (0, None));
    }

    #[test]
    fn redaction_and_hashing() {
        let body =
            Bytes::from_static(br#"{"user":"ann","password":"hunter2","nested":{"Token":"t"}}"#);
        let body = Some(&body);
        assert_eq!(arguments(&ArgumentsPolicy::Omit, body), None);
        let r = arguments(
            &ArgumentsPolicy::Redact(vec!["password".into(), "token".into()]),
            body,
        )
        .unwrap();
        assert!(
            r.contains("\"user\":\"ann\"") && !r.contains("hunter2") && !r.contains("\"t\""),
            "{r}"
        );
        let h = arguments(&ArgumentsPolicy::Hash, body).unwrap();
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
    }

    #[test]
    fn jsonl_rotates_by_size_and_keeps_every_line() {
        let dir = std::env::temp_dir().join(format!("mcpgw-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let sink = JsonlSink::open(JsonlConfig {
            path: path.clone(),
            max_bytes: 4096,
            keep: 100,
            buffer: 1024,
            overflow: Overflow::Drop,
        })
        .unwrap();
        for i in 0..200 {
            sink.record(AuditEvent {
                event: "call".into(),
                id: Some(i.to_string()),
                outcome: "ok".into(),
                ..Default::default()
            });
        }
        sink.close();
        let mut ids = Vec::new();
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            files += 1;
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines() {
                let e: AuditEvent = serde_json::from_str(line).unwrap();
                ids.push(e.id.unwrap().parse::<u32>().unwrap());
            }
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..200).collect::<Vec<_>>());
        assert!(files > 1, "rotated");
        for entry in std::fs::read_dir(&dir).unwrap() {
            // Rotated as the size is reached: over it by less than a line.
            let len = entry.unwrap().metadata().unwrap().len();
            assert!(len < 4096 + 200, "a file of {len} bytes");
        }
        assert_eq!(sink.dropped(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jsonl_overflow_drops_and_counts_or_refuses() {
        let dir = std::env::temp_dir().join(format!("mcpgw-audit-ovf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        // A writer that takes the batches only when asked: the bound is
        // reached deterministically.
        let sink = JsonlSink::open_draining_every(
            JsonlConfig {
                path: path.clone(),
                max_bytes: 1 << 20,
                keep: 1,
                buffer: 4,
                overflow: Overflow::Refuse,
            },
            Duration::from_secs(3600),
        )
        .unwrap();
        let event = |i: u32| AuditEvent {
            event: "call".into(),
            id: Some(i.to_string()),
            outcome: "ok".into(),
            ..Default::default()
        };
        assert!(!sink.saturated());
        for i in 0..10 {
            sink.record(event(i));
        }
        assert_eq!(sink.dropped(), 6);
        assert!(sink.saturated(), "refuse calls while the batch is full");
        sink.flush();
        assert!(!sink.saturated(), "the writer took the batch");
        sink.record(event(10));
        sink.close();
        sink.record(event(11));
        assert_eq!(sink.dropped(), 7, "a record after close is counted");
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().id.unwrap())
            .collect();
        assert_eq!(ids, ["0", "1", "2", "3", "10"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
