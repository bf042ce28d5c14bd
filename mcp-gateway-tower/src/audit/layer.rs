//! [`AuditLayer`] and its settings; session start and end records.

#[allow(unused_imports)]
use super::*;
use crate::session::Moved;

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
pub(crate) struct SessionTotals {
    pub(crate) started: Option<Instant>,
    pub(crate) principal: Option<Principal>,
    pub(crate) backend: Option<Arc<str>>,
    pub(crate) protocol_version: Option<Cow<'static, str>>,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) cost: u64,
    pub(crate) tokens: u64,
    /// Calls of the session under way (see [`InFlight`]).
    pub(crate) in_flight: u32,
    /// How the session ended, while `session_end` waits for `in_flight`.
    pub(crate) ended: Option<SessionEnd>,
}

pub(crate) struct Shared {
    pub(crate) sink: Arc<dyn AuditSink>,
    pub(crate) cfg: AuditConfig,
    /// The backend records name when no inner layer said (see
    /// [`AuditLayer::backend_name`]).
    pub(crate) backend: Option<Arc<str>>,
    /// Whether calls get a SERVER span (see [`AuditLayer::telemetry`]).
    #[cfg(feature = "otel")]
    pub(crate) traces: bool,
    /// Per-session totals, sharded by session id so concurrent calls of
    /// different sessions rarely share a lock.
    sessions: [Mutex<HashMap<String, SessionTotals, foldhash::fast::RandomState>>; 16],
}

impl Shared {
    pub(crate) fn totals(
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

/// Builds [`Audit`] services. Its [`SessionObserver`], which records
/// `session_end`, reaches the session router with the requests that may
/// start a session ([`SessionHooks`](crate::session::SessionHooks)).
#[derive(Clone)]
pub struct AuditLayer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) hook: Arc<dyn SessionObserver>,
}

impl std::fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLayer").finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// Records to `sink`.
    pub fn new(sink: Arc<dyn AuditSink>, cfg: AuditConfig) -> Self {
        Self::with_backend(sink, cfg, None, false)
    }

    fn with_backend(
        sink: Arc<dyn AuditSink>,
        cfg: AuditConfig,
        backend: Option<Arc<str>>,
        traces: bool,
    ) -> Self {
        #[cfg(not(feature = "otel"))]
        let _ = traces;
        let shared = Arc::new(Shared {
            sink,
            cfg,
            backend,
            #[cfg(feature = "otel")]
            traces,
            sessions: Default::default(),
        });
        AuditLayer {
            hook: Arc::new(SessionEnds(shared.clone())),
            shared,
        }
    }

    /// Names the backend in records when no inner layer does (the policy
    /// layer names it when there is one). Call before the layer is used.
    pub fn backend_name(self, name: impl Into<Arc<str>>) -> Self {
        Self::with_backend(
            self.shared.sink.clone(),
            self.shared.cfg.clone(),
            Some(name.into()),
            self.traces(),
        )
    }

    /// Records telemetry too: metrics as one more sink (beside the
    /// current one, whose dropped records it counts), and, with
    /// [`Telemetry::traces`](crate::telemetry::Telemetry::traces), a SERVER
    /// span per request (see [`telemetry`](crate::telemetry)). Call before
    /// the layer is used.
    #[cfg(feature = "otel")]
    pub fn telemetry(self, t: &crate::telemetry::Telemetry) -> Self {
        let sink = match &t.metrics {
            Some(m) => {
                m.watch_audit(self.shared.sink.clone());
                Arc::new(FanOut(vec![self.shared.sink.clone(), m.clone()])) as Arc<dyn AuditSink>
            }
            None => self.shared.sink.clone(),
        };
        Self::with_backend(
            sink,
            self.shared.cfg.clone(),
            self.shared.backend.clone(),
            t.traces,
        )
    }

    fn traces(&self) -> bool {
        #[cfg(feature = "otel")]
        return self.shared.traces;
        #[cfg(not(feature = "otel"))]
        false
    }

    /// The observer that records `session_end`. The layer hands it to the
    /// session router itself; this is for session routers of your own.
    pub fn session_observer(&self) -> Arc<dyn SessionObserver> {
        self.hook.clone()
    }

    /// The sink.
    pub fn sink(&self) -> &Arc<dyn AuditSink> {
        &self.shared.sink
    }
}

struct SessionEnds(Arc<Shared>);

impl SessionObserver for SessionEnds {
    fn moved(&self, record: &SessionRecord, from: usize, why: Moved) {
        let e = AuditEvent {
            event: EventKind::Failover,
            time: now_rfc3339(),
            session: Some(record.id().as_str().to_owned()),
            backend: self.0.backend.as_deref().map(String::from),
            protocol_version: record.protocol_version().map(|v| Cow::Borrowed(v.as_str())),
            detail: Some(format!(
                "from instance {from} to instance {}: {}",
                record.instance(),
                why.as_str()
            )),
            ..Default::default()
        };
        self.0.sink.record(&e.borrowed());
    }

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
            self.0
                .sink
                .record(&session_end_event(sid, t, why).borrowed());
        }
    }
}

/// The `session_end` record of session `sid`.
fn session_end_event(sid: &str, t: SessionTotals, why: SessionEnd) -> AuditEvent {
    let mut e = AuditEvent {
        event: EventKind::SessionEnd,
        time: now_rfc3339(),
        session: Some(sid.to_owned()),
        backend: t.backend.as_deref().map(String::from),
        outcome: Outcome::Ok,
        duration_us: t.started.map(|s| s.elapsed().as_micros() as u64),
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
        cost: t.cost,
        tokens: t.tokens,
        protocol_version: t.protocol_version,
        calls: Some(t.calls),
        errors: Some(t.errors),
        end_reason: Some(why),
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
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    sid: String,
    released: bool,
}

impl InFlight {
    /// Counts a call of `sid`, if the session is one this layer tracks and
    /// has not ended (a call after the end is not the session's work).
    pub(crate) fn start(shared: &Arc<Shared>, sid: &str) -> Option<InFlight> {
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
    pub(crate) fn finish(mut self, add: impl FnOnce(&mut SessionTotals)) {
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
                .record(&session_end_event(&self.sid, t, why).borrowed());
        }
    }
}

impl Drop for InFlight {
    /// A call that never got recorded (dropped before its answer).
    fn drop(&mut self) {
        self.release(None::<fn(&mut SessionTotals)>);
    }
}

pub(crate) fn set_principal(e: &mut AuditEvent, p: Option<&Principal>) {
    if let Some(p) = p {
        e.principal = Some(p.subject().to_owned());
        e.tenant = p.tenant().map(str::to_owned);
        e.auth_method = Some(Cow::Borrowed(p.auth_method()));
    }
}
