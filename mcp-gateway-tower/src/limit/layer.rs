//! [`LimitLayer`] and its settings.

#[allow(unused_imports)]
use super::*;

/// The limits, as configured. Every limit is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Calls per principal.
    pub principal_rate: Option<Quota>,
    /// Calls per principal and tool.
    pub principal_tool_rate: Option<Quota>,
    /// Calls per backend.
    pub backend_rate: Option<Quota>,
    /// Methods counted by the rate and in-flight limits besides
    /// `tools/call` (e.g. `["tools/list", "ping"]`).
    #[serde(default)]
    pub count_methods: Vec<String>,
    /// Concurrent sessions per principal (per client address for anonymous
    /// callers). A per-client cap: [`client_caps`](Self::client_caps) sets
    /// a default; 0 turns it off.
    pub principal_sessions: Option<u32>,
    /// New sessions per principal (per client address for anonymous
    /// callers): a token bucket. A per-client cap (see
    /// [`client_caps`](Self::client_caps)); a burst of 0 turns it off.
    pub principal_session_rate: Option<Quota>,
    /// Concurrent sessions per backend.
    pub backend_sessions: Option<u32>,
    /// Calls in flight per principal (per client address for anonymous
    /// callers); refused with 429 and `Retry-After`. A per-client cap (see
    /// [`client_caps`](Self::client_caps)); 0 turns it off.
    pub principal_in_flight: Option<u32>,
    /// Calls in flight per backend.
    pub backend_in_flight: Option<u32>,
    /// Tokens (arguments + results) per principal per window.
    pub token_budget: Option<Budget>,
    /// Cost per principal per window.
    pub cost_budget: Option<Budget>,
    /// Cost of a tool: the first pattern (glob) that matches its name.
    #[serde(default)]
    pub tool_costs: BTreeMap<String, u64>,
    /// Cost of a tool no pattern names. Default 1.
    #[serde(default = "one")]
    pub default_cost: u64,
    /// `Retry-After` for a refused session, seconds. Default 5.
    #[serde(default = "five")]
    pub session_retry_after_secs: u64,
}

/// The default per-client caps: sessions at once.
pub const DEFAULT_CLIENT_SESSIONS: u32 = 256;
/// The default per-client caps: new sessions, a burst then per second.
pub const DEFAULT_CLIENT_SESSION_RATE: Quota = Quota {
    burst: 64,
    per_second: 16.0,
};
/// The default per-client caps: calls in flight.
pub const DEFAULT_CLIENT_IN_FLIGHT: u32 = 64;

impl LimitConfig {
    /// These limits with the per-client caps on: each of
    /// `principal_sessions`, `principal_session_rate` and
    /// `principal_in_flight` left unset takes its default
    /// ([`DEFAULT_CLIENT_SESSIONS`], [`DEFAULT_CLIENT_SESSION_RATE`],
    /// [`DEFAULT_CLIENT_IN_FLIGHT`]); one set to 0 is off.
    ///
    /// With these, one client (a principal, or an anonymous client
    /// address) cannot hold more than a small share of the session table,
    /// churn sessions faster than the sweep can end them, or pile up calls.
    pub fn client_caps(mut self) -> Self {
        self.principal_sessions = match self.principal_sessions {
            None => Some(DEFAULT_CLIENT_SESSIONS),
            Some(0) => None,
            n => n,
        };
        self.principal_session_rate = match self.principal_session_rate {
            None => Some(DEFAULT_CLIENT_SESSION_RATE),
            Some(q) if q.burst == 0 => None,
            q => q,
        };
        self.principal_in_flight = match self.principal_in_flight {
            None => Some(DEFAULT_CLIENT_IN_FLIGHT),
            Some(0) => None,
            n => n,
        };
        self
    }
}

fn one() -> u64 {
    1
}
fn five() -> u64 {
    5
}

/// The cost charged for a call: in the response extensions, for the audit
/// log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostCharged(pub u64);

/// The tokens a call's result was charged against the token budget, as
/// they are counted: in the response extensions (when a token budget is
/// on) for the audit log and the metrics, read when the body has ended.
#[derive(Debug, Clone, Default)]
pub struct TokensCharged(pub Arc<std::sync::atomic::AtomicU64>);

impl TokensCharged {
    /// Tokens charged so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: LimitConfig,
    pub(crate) backend: Arc<str>,
    pub(crate) limiter: Arc<dyn Limiter>,
    pub(crate) tokens: Arc<dyn TokenCounter>,
    /// `cfg.tool_costs`, compiled, in the same order.
    pub(crate) tool_costs: Vec<(Glob, u64)>,
    /// Session slots by gateway session id, released when it ends.
    pub(crate) sessions: Mutex<HashMap<String, Slots>>,
    /// The only call limits are caps on calls in flight (see
    /// `service::in_flight_only`).
    pub(crate) in_flight_only: bool,
}

impl LimitConfig {
    /// Whether calls are limited by in-flight caps alone: no rate, no
    /// budget.
    fn in_flight_only(&self) -> bool {
        self.principal_rate.is_none()
            && self.principal_tool_rate.is_none()
            && self.backend_rate.is_none()
            && self.token_budget.is_none()
            && self.cost_budget.is_none()
    }
}

/// Builds [`Limit`] services. Its [`SessionObserver`], which frees session
/// slots when a session ends, reaches the session router with each
/// `initialize` request ([`SessionHooks`](crate::session::SessionHooks)).
#[derive(Clone)]
pub struct LimitLayer {
    shared: Arc<Shared>,
    hook: Arc<dyn SessionObserver>,
}

impl std::fmt::Debug for LimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitLayer")
            .field("cfg", &self.shared.cfg)
            .finish()
    }
}

fn compile_costs(cfg: &LimitConfig) -> Vec<(Glob, u64)> {
    cfg.tool_costs
        .iter()
        .map(|(p, c)| (Glob::new(p), *c))
        .collect()
}

impl LimitLayer {
    /// Limits for the backend named `backend`, counted by `limiter`.
    pub fn new(cfg: LimitConfig, backend: impl Into<Arc<str>>, limiter: Arc<dyn Limiter>) -> Self {
        Self::from_shared(Arc::new(Shared {
            tool_costs: compile_costs(&cfg),
            in_flight_only: cfg.in_flight_only(),
            cfg,
            backend: backend.into(),
            limiter,
            tokens: Arc::new(ApproxTokenCounter),
            sessions: Mutex::new(HashMap::new()),
        }))
    }

    fn from_shared(shared: Arc<Shared>) -> Self {
        LimitLayer {
            hook: Arc::new(SlotReleaser(shared.clone())),
            shared,
        }
    }

    /// Counts tokens with `counter` instead of the approximation.
    pub fn token_counter(self, counter: Arc<dyn TokenCounter>) -> Self {
        let s = &self.shared;
        Self::from_shared(Arc::new(Shared {
            cfg: s.cfg.clone(),
            backend: s.backend.clone(),
            limiter: s.limiter.clone(),
            tokens: counter,
            tool_costs: s.tool_costs.clone(),
            sessions: Mutex::new(HashMap::new()),
            in_flight_only: s.in_flight_only,
        }))
    }

    /// The observer that releases a session's slots when it ends. The
    /// layer hands it to the session router itself; this is for session
    /// routers of your own.
    pub fn session_observer(&self) -> Arc<dyn SessionObserver> {
        self.hook.clone()
    }

    /// Sessions holding slots (for tests and metrics).
    pub fn sessions_held(&self) -> usize {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

struct SlotReleaser(Arc<Shared>);

impl SessionObserver for SlotReleaser {
    fn ended(&self, record: &SessionRecord, _why: SessionEnd) {
        self.gone(record.id().as_str());
    }

    fn gone(&self, id: &str) {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            shared: self.shared.clone(),
            hook: self.hook.clone(),
        }
    }
}

/// The limit service. See the module docs.
#[derive(Clone)]
pub struct Limit<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) hook: Arc<dyn SessionObserver>,
}

impl<S> Limit<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Limit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit").finish_non_exhaustive()
    }
}
