//! A call record carried in the response body, emitted when the body ends or is dropped.

#[allow(unused_imports)]
use super::*;

/// What is known of a call when its response head arrives.
pub(crate) struct CallRecord {
    pub(crate) start: Instant,
    pub(crate) ttfb: Duration,
    pub(crate) http_method: http::Method,
    pub(crate) session: Option<String>,
    pub(crate) bytes_in: u64,
    pub(crate) status: u16,
    pub(crate) kind: Option<ErrorKind>,
    pub(crate) limit: Option<LimitKind>,
    pub(crate) detail: Option<Arc<str>>,
    pub(crate) client: Option<std::net::IpAddr>,
    pub(crate) principal: Option<Principal>,
    pub(crate) backend: Option<Arc<str>>,
    pub(crate) cost: u64,
    pub(crate) mcp: Option<McpRequest>,
    /// Released once the call is recorded (see [`InFlight`]).
    pub(crate) in_flight: Option<InFlight>,
    /// Tokens charged to the call's result, read at its end.
    pub(crate) tokens: Option<crate::limit::TokensCharged>,
    /// The call's SERVER span, ended with the record.
    #[cfg(feature = "otel")]
    pub(crate) span: Option<tracing::Span>,
}

impl CallRecord {
    pub(crate) fn version(&self) -> Option<Cow<'static, str>> {
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
    pub(crate) fn base(&self, event: EventKind) -> AuditEvent {
        let mut e = AuditEvent {
            event,
            time: now_rfc3339(),
            session: self.session.clone(),
            // Not `to_string`: that goes through the formatting machinery.
            backend: self.backend.as_deref().map(String::from),
            http_status: Some(self.status),
            protocol_version: self.version(),
            client: self.client.map(|ip| ip.to_string()),
            ..Default::default()
        };
        set_principal(&mut e, self.principal.as_ref());
        e
    }
}

/// Watches a response body go by.
pub(crate) struct Meter {
    /// For an event stream; `None` for JSON.
    pub(crate) sse: Option<SseWatch>,
    /// The first bytes of a JSON body (enough for an error object).
    head: Head,
    pub(crate) bytes: u64,
    pub(crate) progress: u64,
    pub(crate) error_code: Option<i64>,
    /// A tool result with `isError: true`.
    pub(crate) tool_error: bool,
    ended: bool,
    failed: bool,
}

/// Events larger than this are counted, not inspected (a result that big
/// is not an error object or a progress notification).
pub(crate) const INSPECT: usize = 8 << 10;

pub(crate) const PROGRESS: &[u8] = b"notifications/progress";

/// What an event stream needs watching for, without assembling events as
/// they pass: progress notifications are counted by searching the bytes
/// (across frame boundaries too), and the stream's last [`INSPECT`] bytes
/// are kept (by reference) to read the response's error code, if it has
/// one, when the stream ends.
#[derive(Default)]
pub(crate) struct SseWatch {
    /// The last bytes of the previous frame, for a name split across two.
    pub(crate) seam: Vec<u8>,
    pub(crate) tail: std::collections::VecDeque<Bytes>,
    pub(crate) tail_len: usize,
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

    /// The stream's last [`INSPECT`] bytes.
    fn tail(&self) -> Cow<'_, [u8]> {
        let skip = self.tail_len.saturating_sub(INSPECT);
        match self.tail.len() {
            0 => Cow::Borrowed(&[]),
            // The usual case, a response in one frame: read in place.
            1 => Cow::Borrowed(&self.tail[0][skip..]),
            _ => {
                let mut v = Vec::with_capacity(self.tail_len - skip);
                let mut skip = skip;
                for b in &self.tail {
                    let from = skip.min(b.len());
                    skip -= from;
                    v.extend_from_slice(&b[from..]);
                }
                Cow::Owned(v)
            }
        }
    }

    /// The JSON-RPC error code in the stream's last events, if any, and
    /// whether they hold a tool result with `isError: true`.
    fn ending(&self) -> (Option<i64>, bool) {
        let tail = self.tail();
        (Self::error_code(&tail), tool_error(&tail))
    }

    fn error_code(tail: &[u8]) -> Option<i64> {
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
    pub(crate) fn new(sse: bool) -> Self {
        Meter {
            sse: sse.then(SseWatch::default),
            head: Head::Empty,
            bytes: 0,
            progress: 0,
            error_code: None,
            tool_error: false,
            ended: false,
            failed: false,
        }
    }

    pub(crate) fn see(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
        match &mut self.sse {
            Some(w) => self.progress += w.see(data),
            None => self.head.keep(data),
        }
    }

    pub(crate) fn finish(&mut self) {
        match &self.sse {
            Some(w) => (self.error_code, self.tool_error) = w.ending(),
            None => match std::mem::replace(&mut self.head, Head::Empty) {
                Head::Empty => {}
                Head::One(b) => {
                    inspect(&b, &mut self.progress, &mut self.error_code);
                    self.tool_error = tool_error(&b);
                }
                Head::Many(v) => {
                    inspect(&v, &mut self.progress, &mut self.error_code);
                    self.tool_error = tool_error(&v);
                }
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

fn is_error_finder() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(b"\"isError\""))
}

/// Whether `json` holds `"isError": true` (a tool result reporting a
/// failed tool). Found by its bytes: a result's `isError` member is the
/// only one of that name a gateway answer carries outside arguments, and
/// results are not echoed arguments.
pub(crate) fn tool_error(json: &[u8]) -> bool {
    is_error_finder().find_iter(json).any(|at| {
        let rest = &json[at + b"\"isError\"".len()..];
        let rest = rest.trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|r| r.trim_ascii_start().starts_with(b"true"))
    })
}

/// Counts a progress notification, or notes a JSON-RPC error code.
pub(crate) fn inspect(json: &[u8], progress: &mut u64, code: &mut Option<i64>) {
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

/// Watches a call's response body: meters it and emits the call's audit
/// records when it ends (in the poll that sees the end) or is dropped.
pub(crate) struct AuditWatch {
    pub(crate) meter: Meter,
    pub(crate) call: Option<CallRecord>,
    pub(crate) shared: Arc<Shared>,
}

impl BodyObserver for AuditWatch {
    fn on_data(&mut self, data: &Bytes) {
        self.meter.see(data);
    }

    // Recorded in the poll that sees the end, before the server writes
    // the last bytes: a client never has an answer whose call is not yet
    // recorded, so records follow the order in which a client's calls
    // depend on each other (a server drops a body only after writing it,
    // and a fast client's next call would be recorded first).
    fn on_end(&mut self, end: BodyEnd<'_>) {
        match end {
            BodyEnd::Complete => self.meter.ended = true,
            BodyEnd::Failed(_) => self.meter.failed = true,
            BodyEnd::Dropped => {}
        }
        if let Some(call) = self.call.take() {
            self.meter.finish();
            emit(&self.shared, call, &self.meter);
        }
    }
}

fn emit(shared: &Shared, mut call: CallRecord, meter: &Meter) {
    // An answer without a body (202 Accepted, 204 No Content: the
    // `DELETE` that ends a session) is whole once its head is sent,
    // whether or not the server polls the empty body to its end.
    let ended =
        meter.ended || (meter.bytes == 0 && !meter.failed && matches!(call.status, 202 | 204));
    let (outcome, code): (Outcome, Option<i64>) = match call.kind {
        Some(ErrorKind::Denied | ErrorKind::ToolChanged) => {
            (Outcome::Denied, call.kind.map(|k| k.code() as i64))
        }
        Some(ErrorKind::Limited | ErrorKind::TooManySessions | ErrorKind::TooManyRequests) => {
            (Outcome::Limited, call.kind.map(|k| k.code() as i64))
        }
        Some(ErrorKind::UpstreamUnavailable | ErrorKind::UpstreamTimeout) => {
            (Outcome::UpstreamFailure, call.kind.map(|k| k.code() as i64))
        }
        Some(k) => (Outcome::Rejected, Some(k.code() as i64)),
        None if meter.failed => (Outcome::UpstreamFailure, None),
        None if !ended => (Outcome::ClientGone, None),
        None => match meter.error_code {
            Some(c) => (Outcome::Error, Some(c)),
            None if call.status >= 400 => (Outcome::Error, None),
            None => (Outcome::Ok, None),
        },
    };
    let duration = call.start.elapsed();
    // One record per message (a batch has several), else one for the request.
    let n = call
        .mcp
        .as_ref()
        .map_or(1, |mcp| mcp.envelope().messages().len() as u64);
    let (bytes_in, bytes_out, cost) = (call.bytes_in, meter.bytes, call.cost);
    let tokens = call.tokens.as_ref().map_or(0, |t| t.get());
    let tool_error = meter.tool_error && outcome == Outcome::Ok;
    let add = move |t: &mut SessionTotals| {
        t.calls += n;
        if outcome != Outcome::Ok || tool_error {
            t.errors += n;
        }
        t.bytes_in += bytes_in;
        t.bytes_out += bytes_out;
        t.cost += cost;
        t.tokens += tokens;
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
    // The records are lent to the sink (`AuditSink::record`): nothing below
    // copies a string, and a sink writing them out at once copies none.
    let mut time = [0u8; 24];
    let time = now_rfc3339_in(&mut time);
    let version = call.version();
    let p = call.principal.as_ref();
    let client = call.client.map(|ip| ip.to_string());
    #[cfg(feature = "otel")]
    let ids = call.span.take().and_then(|span| {
        let first = call
            .mcp
            .as_ref()
            .and_then(|m| m.envelope().messages().first());
        let method = match first {
            Some(m) => m.method().map(|x| x.as_str()),
            None => Some(call.http_method.as_str()),
        };
        let id = first
            .and_then(|m| m.id())
            .map(|i| String::from_utf8_lossy(i.as_bytes()));
        let mut code_text = itoa::Buffer::new();
        let error_type = if tool_error {
            Some("tool_error")
        } else if outcome == Outcome::Ok {
            None
        } else {
            Some(match code {
                Some(c) => code_text.format(c),
                None => outcome.as_str(),
            })
        };
        crate::telemetry::end_server(
            &span,
            &crate::telemetry::ServerEnd {
                method,
                id: id.as_deref(),
                session: call.session.as_deref(),
                version: version.as_deref(),
                outcome: outcome.as_str(),
                error_type,
                rpc_status: code,
                http_status: call.status,
                principal: p.map(Principal::subject),
                tenant: p.and_then(Principal::tenant),
                backend: call.backend.as_deref(),
            },
        )
    });
    #[cfg(feature = "otel")]
    let (trace_id, span_id) = match &ids {
        Some((t, s)) => (Some(t.as_str()), Some(s.as_str())),
        None => (None, None),
    };
    #[cfg(not(feature = "otel"))]
    let (trace_id, span_id) = (None, None);
    let base = AuditEventRef {
        client: client.as_deref(),
        event: EventKind::Call,
        time,
        principal: p.map(Principal::subject),
        tenant: p.and_then(Principal::tenant),
        auth_method: p.map(Principal::auth_method),
        session: call.session.as_deref(),
        backend: call.backend.as_deref(),
        outcome,
        error_code: code,
        limit: call.limit.map(LimitKind::as_str),
        detail: call.detail.as_deref(),
        http_status: Some(call.status),
        ttfb_us: Some(call.ttfb.as_micros() as u64),
        duration_us: Some(duration.as_micros() as u64),
        bytes_in: call.bytes_in,
        bytes_out: meter.bytes,
        progress: meter.progress,
        cost: call.cost,
        protocol_version: version.as_deref(),
        tokens,
        tool_error,
        trace_id,
        span_id,
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
                shared.sink.record(&AuditEventRef {
                    method,
                    target: m.target(),
                    id: id.as_deref(),
                    arguments: args.as_deref(),
                    ..base
                });
            }
        }
        None => shared.sink.record(&AuditEventRef {
            method: Some(call.http_method.as_str()),
            ..base
        }),
    }
    if let Some(g) = in_flight {
        g.finish(add);
    }
}

pub(crate) fn arguments(policy: &ArgumentsPolicy, raw: Option<&Bytes>) -> Option<String> {
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
