//! One record per call or session event: [`AuditEvent`], and [`AuditEventRef`] lent to sinks.

#[allow(unused_imports)]
use super::*;

/// What a record is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// One MCP message (or `GET` / `DELETE`) handled.
    #[default]
    Call,
    /// A session began (its `initialize` was answered).
    SessionStart,
    /// A session ended (see [`EndReason`]).
    SessionEnd,
    /// A session moved to another backend instance (failover or drain);
    /// `detail` says from which instance to which, and why.
    Failover,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered without an error.
    #[default]
    Ok,
    /// The backend answered with a JSON-RPC error (or an HTTP error).
    Error,
    /// A policy or tool pin refused it.
    Denied,
    /// A limit refused it.
    Limited,
    /// The backend could not be reached, failed, or did not answer in time.
    UpstreamFailure,
    /// The client left before the answer ended.
    ClientGone,
    /// The gateway refused the request: authentication, bad input, …
    Rejected,
}

/// Why a session ended: the session router's [`SessionEnd`].
pub type EndReason = SessionEnd;

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The name in records (snake case).
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

names!(EventKind { Call => "call", SessionStart => "session_start", SessionEnd => "session_end", Failover => "failover" });
names!(Outcome {
    Ok => "ok",
    Error => "error",
    Denied => "denied",
    Limited => "limited",
    UpstreamFailure => "upstream_failure",
    ClientGone => "client_gone",
    Rejected => "rejected",
});

/// One audit record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What the record is about.
    pub event: EventKind,
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
    /// How the call ended.
    pub outcome: Outcome,
    /// The JSON-RPC error code, for `error`, `denied`, `limited`, `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Which limit, for `limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Cow<'static, str>>,
    /// The client's address (behind a trusted proxy: the client it names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// What the network said when a backend could not be reached (address,
    /// OS error): kept here and in the log, never in the client's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
    /// `session_end`: calls that did not end `ok`, or whose tool failed
    /// (`tool_error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// `session_end`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// Tokens charged by the limit layer's token budget (for
    /// `session_end`: the session's; omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens: u64,
    /// The backend answered with a tool result that has `isError: true`
    /// (a failed tool, not a failed call; omitted when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tool_error: bool,
    /// The W3C trace id of the call's span, when it is traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The span id of the call's span (the gateway's server span).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An [`AuditEvent`] lent rather than given: the same fields, borrowed.
///
/// The audit layer hands every record to [`AuditSink::record`] in this
/// form, so that a sink writing it out at once (the JSON Lines file,
/// `tracing`) copies none of its strings; a sink that keeps records makes
/// an [`AuditEvent`] of it ([`to_event`](Self::to_event)).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[allow(missing_docs)] // The fields are those of `AuditEvent`.
pub struct AuditEventRef<'a> {
    pub event: EventKind,
    pub time: &'a str,
    pub principal: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub auth_method: Option<&'a str>,
    pub session: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub method: Option<&'a str>,
    pub target: Option<&'a str>,
    pub id: Option<&'a str>,
    pub outcome: Outcome,
    pub error_code: Option<i64>,
    pub limit: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub client: Option<&'a str>,
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
    pub end_reason: Option<EndReason>,
    pub tokens: u64,
    pub tool_error: bool,
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
}

impl AuditEvent {
    /// This record, lent.
    pub fn borrowed(&self) -> AuditEventRef<'_> {
        AuditEventRef {
            event: self.event,
            time: &self.time,
            principal: self.principal.as_deref(),
            tenant: self.tenant.as_deref(),
            auth_method: self.auth_method.as_deref(),
            session: self.session.as_deref(),
            backend: self.backend.as_deref(),
            method: self.method.as_deref(),
            target: self.target.as_deref(),
            id: self.id.as_deref(),
            outcome: self.outcome,
            error_code: self.error_code,
            limit: self.limit.as_deref(),
            detail: self.detail.as_deref(),
            client: self.client.as_deref(),
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
            end_reason: self.end_reason,
            tokens: self.tokens,
            tool_error: self.tool_error,
            trace_id: self.trace_id.as_deref(),
            span_id: self.span_id.as_deref(),
        }
    }
}

impl AuditEventRef<'_> {
    /// A record of its own, with copies of the strings.
    pub fn to_event(&self) -> AuditEvent {
        let text = |s: Option<&str>| s.map(str::to_owned);
        let name = |s: Option<&str>| s.map(|s| Cow::Owned(s.to_owned()));
        AuditEvent {
            event: self.event,
            time: self.time.to_owned(),
            principal: text(self.principal),
            tenant: text(self.tenant),
            auth_method: name(self.auth_method),
            session: text(self.session),
            backend: text(self.backend),
            method: name(self.method),
            target: text(self.target),
            id: text(self.id),
            outcome: self.outcome,
            error_code: self.error_code,
            limit: name(self.limit),
            detail: text(self.detail),
            client: text(self.client),
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
            end_reason: self.end_reason,
            tokens: self.tokens,
            tool_error: self.tool_error,
            trace_id: text(self.trace_id),
            span_id: text(self.span_id),
        }
    }
}

/// `event` as one line of JSON, the same as its `Serialize` gives (a test
/// checks), written by hand: most of its strings need no escaping, and
/// checking that is cheaper than escaping byte by byte.
pub(crate) fn write_json(e: &AuditEventRef<'_>, out: &mut Vec<u8>) {
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
    o.text("{\"event\":\"", Some(e.event.as_str()));
    text!(o, "time", Some(e.time));
    text!(o, "principal", e.principal);
    text!(o, "tenant", e.tenant);
    text!(o, "auth_method", e.auth_method);
    text!(o, "session", e.session);
    text!(o, "backend", e.backend);
    text!(o, "method", e.method);
    text!(o, "target", e.target);
    text!(o, "id", e.id);
    text!(o, "outcome", Some(e.outcome.as_str()));
    number!(o, "error_code", e.error_code);
    text!(o, "limit", e.limit);
    text!(o, "client", e.client);
    text!(o, "detail", e.detail);
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
    text!(o, "end_reason", e.end_reason.map(SessionEnd::as_str));
    number!(o, "tokens", (e.tokens != 0).then_some(e.tokens));
    if e.tool_error {
        o.out.extend_from_slice(b",\"tool_error\":true");
    }
    text!(o, "trace_id", e.trace_id);
    text!(o, "span_id", e.span_id);
    o.out.push(b'}');
}

/// Whether `s` holds a byte JSON must escape: `"`, `\\` or a control
/// character. No early exit: the fold over every byte vectorizes, and the
/// strings are short.
pub(crate) fn needs_escape(s: &[u8]) -> bool {
    s.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}
