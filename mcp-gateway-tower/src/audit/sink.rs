//! Where records go: the [`AuditSink`] trait, [`TracingSink`], [`ChannelSink`].

#[allow(unused_imports)]
use super::*;

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
///
/// One method to implement. Records are lent: a sink that writes them out
/// at once copies nothing, one that keeps them calls
/// [`AuditEventRef::to_event`]. The provided methods report back pressure
/// and flush at shutdown; their defaults suit a sink that never fills.
pub trait AuditSink: Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, event: &AuditEventRef<'_>);
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
    fn record(&self, event: &AuditEventRef<'_>) {
        (**self).record(event)
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

/// The access log: one `tracing` event per MCP message at INFO (target
/// `mcp_gateway::access`), and one per session start and end, with the
/// fields an operator greps for: method, tool (or prompt, resource),
/// session, principal, client, backend, HTTP status, JSON-RPC error code,
/// outcome and duration. The `tracing` subscriber decides the format
/// (text or JSON lines).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog;

impl AuditSink for AccessLog {
    fn record(&self, e: &AuditEventRef<'_>) {
        let ms = e.duration_us.map(|us| us as f64 / 1000.0);
        match e.event {
            EventKind::Call => tracing::info!(
                target: "mcp_gateway::access",
                method = e.method,
                target_name = e.target,
                id = e.id,
                session = e.session,
                principal = e.principal,
                client = e.client,
                backend = e.backend,
                status = e.http_status,
                error_code = e.error_code,
                outcome = e.outcome.as_str(),
                limit = e.limit,
                duration_ms = ms,
                detail = e.detail,
                "mcp request"
            ),
            EventKind::Failover => tracing::info!(
                target: "mcp_gateway::access",
                event = e.event.as_str(),
                session = e.session,
                backend = e.backend,
                detail = e.detail,
                "mcp session moved"
            ),
            EventKind::SessionStart | EventKind::SessionEnd => tracing::info!(
                target: "mcp_gateway::access",
                event = e.event.as_str(),
                session = e.session,
                principal = e.principal,
                client = e.client,
                backend = e.backend,
                protocol_version = e.protocol_version,
                end_reason = e.end_reason.map(SessionEnd::as_str),
                calls = e.calls,
                duration_ms = ms,
                "mcp session"
            ),
        }
    }
}

/// Several sinks as one: every record goes to each, in order. Saturated
/// when any is; `dropped` is the sum.
#[derive(Clone, Default)]
pub struct FanOut(pub Vec<Arc<dyn AuditSink>>);

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FanOut").field(&self.0.len()).finish()
    }
}

impl AuditSink for FanOut {
    fn record(&self, event: &AuditEventRef<'_>) {
        for s in &self.0 {
            s.record(event);
        }
    }
    fn saturated(&self) -> bool {
        self.0.iter().any(|s| s.saturated())
    }
    fn dropped(&self) -> u64 {
        self.0.iter().map(|s| s.dropped()).sum()
    }
    fn flush(&self) {
        for s in &self.0 {
            s.flush();
        }
    }
}

/// Records as `tracing` events (target `mcp_gateway::audit`, level INFO)
/// with structured fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn record(&self, e: &AuditEventRef<'_>) {
        tracing::info!(
            target: "mcp_gateway::audit",
            event = e.event.as_str(),
            principal = e.principal,
            tenant = e.tenant,
            session = e.session,
            backend = e.backend,
            method = e.method,
            target_name = e.target,
            id = e.id,
            outcome = e.outcome.as_str(),
            error_code = e.error_code,
            limit = e.limit,
            detail = e.detail,
            client = e.client,
            http_status = e.http_status,
            ttfb_us = e.ttfb_us,
            duration_us = e.duration_us,
            bytes_in = e.bytes_in,
            bytes_out = e.bytes_out,
            progress = e.progress,
            cost = e.cost,
            calls = e.calls,
            errors = e.errors,
            end_reason = e.end_reason.map(SessionEnd::as_str),
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
    fn record(&self, event: &AuditEventRef<'_>) {
        if self.tx.try_send(event.to_event()).is_err() {
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
