//! The [`Limiter`] trait and what it decides on: keys, quotas, budgets, slots.

#[allow(unused_imports)]
use super::*;

/// Which limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Calls per principal.
    PrincipalRate,
    /// Calls per principal and tool.
    PrincipalToolRate,
    /// Calls per backend.
    BackendRate,
    /// Concurrent sessions per principal.
    PrincipalSessions,
    /// New sessions per principal.
    PrincipalSessionRate,
    /// Concurrent sessions per backend.
    BackendSessions,
    /// Calls in flight per principal.
    PrincipalInFlight,
    /// Calls in flight per backend.
    BackendInFlight,
    /// Tokens per principal per window.
    TokenBudget,
    /// Cost per principal per window.
    CostBudget,
}

impl LimitKind {
    /// The name used in configuration, refusals and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::PrincipalRate => "principal_rate",
            LimitKind::PrincipalToolRate => "principal_tool_rate",
            LimitKind::BackendRate => "backend_rate",
            LimitKind::PrincipalSessions => "principal_sessions",
            LimitKind::PrincipalSessionRate => "principal_session_rate",
            LimitKind::BackendSessions => "backend_sessions",
            LimitKind::PrincipalInFlight => "principal_in_flight",
            LimitKind::BackendInFlight => "backend_in_flight",
            LimitKind::TokenBudget => "token_budget",
            LimitKind::CostBudget => "cost_budget",
        }
    }
}

/// What a counter is about: the limit, and whose (a principal key, a
/// backend name, or a principal key and a tool).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// The limit.
    pub kind: LimitKind,
    /// The principal key or backend name.
    pub subject: Arc<str>,
    /// The tool, for per-tool limits.
    pub tool: Option<Bytes>,
}

/// A token bucket: `burst` calls at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Calls allowed at once.
    pub burst: u32,
    /// Sustained calls per second (fractions allowed: 0.5 = one per 2 s).
    pub per_second: f64,
}

/// An amount per fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Units per window.
    pub amount: u64,
    /// Window length, seconds.
    pub window_secs: u64,
}

/// A held slot of a concurrency cap; released when dropped.
pub struct Slot(#[allow(dead_code)] pub(crate) SlotKind);

/// How a slot is given back: by dropping what it holds (never read).
#[allow(dead_code)]
pub(crate) enum SlotKind {
    /// The in-process limiter's own: no allocation (two per call, with a
    /// principal's and a backend's cap).
    Local(SlotGuard),
    /// Any other limiter's guard.
    Guard(Box<dyn Send + Sync>),
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Slot {
    /// A slot releasing through `guard`'s `Drop`.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Slot(SlotKind::Guard(Box::new(guard)))
    }
}

/// The counters behind [`LimitLayer`]. `Err(d)` means "refused; retry in
/// `d`". Every operation returns an [`Answer`]: ready at once in process
/// (decided in the same poll as the request), pending for a shared store.
pub trait Limiter: Send + Sync + 'static {
    /// Takes one unit from the token bucket of `key`.
    fn hit(&self, key: &LimitKey, quota: &Quota) -> Answer<'_, Result<(), Duration>>;
    /// Takes one of at most `max` concurrent slots of `key`.
    fn acquire(&self, key: &LimitKey, max: u32) -> Answer<'_, Option<Slot>>;
    /// Adds `amount` to `key`'s use in the current window. With
    /// `must_fit`, refuses (charging nothing) when the window's use would
    /// pass the budget; without, always charges (results already
    /// delivered are paid for).
    fn charge(
        &self,
        key: &LimitKey,
        budget: &Budget,
        amount: u64,
        must_fit: bool,
    ) -> Answer<'_, Result<(), Duration>>;

    /// Whether this limiter decides a call's checks together
    /// ([`check_all`](Self::check_all)) faster than one by one: true for a
    /// shared store, where each decision is a round trip. Default: false.
    fn batches(&self) -> bool {
        false
    }

    /// Decides every check of one call, in order: the slots to hold, or
    /// the index of the first refused check and when to retry. Called
    /// instead of the single operations when [`batches`](Self::batches)
    /// is true. A batching limiter should spend nothing when a check is
    /// refused; the default (one by one) keeps what the checks before the
    /// refused one took, as the single operations do.
    fn check_all(&self, checks: Vec<Check>) -> Answer<'_, Result<Vec<Slot>, (usize, Duration)>> {
        Answer::pending(async move {
            let mut slots = Vec::new();
            for (i, c) in checks.iter().enumerate() {
                match c.op {
                    CheckOp::Hit(q) => self.hit(&c.key, &q).await.map_err(|d| (i, d))?,
                    CheckOp::Acquire(max) => match self.acquire(&c.key, max).await {
                        Some(s) => slots.push(s),
                        None => return Err((i, IN_FLIGHT_RETRY)),
                    },
                    CheckOp::Charge(b, amount) => self
                        .charge(&c.key, &b, amount, true)
                        .await
                        .map_err(|d| (i, d))?,
                }
            }
            Ok(slots)
        })
    }
}

/// The retry hint of a full in-flight cap: calls end in milliseconds to
/// seconds.
pub const IN_FLIGHT_RETRY: Duration = Duration::from_millis(100);

/// One check of a call's admission ([`Limiter::check_all`]).
#[derive(Debug, Clone)]
pub struct Check {
    /// Whose counter.
    pub key: LimitKey,
    /// What to do with it.
    pub op: CheckOp,
}

/// What a [`Check`] does.
#[derive(Debug, Clone, Copy)]
pub enum CheckOp {
    /// [`Limiter::hit`] with this quota.
    Hit(Quota),
    /// [`Limiter::acquire`] one of at most this many slots.
    Acquire(u32),
    /// [`Limiter::charge`] this amount against this budget, refused when
    /// it does not fit.
    Charge(Budget, u64),
}

pub(crate) type Direct = RateLimiter<NotKeyed, InMemoryState, LimiterClock, NoOpMiddleware<Nanos>>;
