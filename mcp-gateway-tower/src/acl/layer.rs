//! [`AclLayer`] and the service [`Acl`].

#[allow(unused_imports)]
use super::*;

/// Largest JSON list response the layer buffers to filter (and largest
/// SSE event it rewrites). Larger ones are refused with 502, never passed
/// unfiltered.
pub(crate) const MAX_LIST_BYTES: usize = 16 << 20;

pub(crate) struct Shared {
    pub(crate) policy: Arc<dyn ToolPolicy>,
    pub(crate) backend: Arc<str>,
    /// Each thread's copy of `backend`, for the name every response
    /// carries: a count only that thread moves (the shared name's count
    /// would move between cores on every call).
    pub(crate) backend_here: ThreadLocal<Arc<str>>,
    pub(crate) pins: Option<Arc<ToolPins>>,
    /// Filters list results (off for an aggregate's guard in front of its
    /// backends, which filter their own lists).
    pub(crate) lists: bool,
}

impl Shared {
    /// The backend's name for a response: this thread's copy.
    pub(crate) fn backend_name(&self) -> BackendName {
        BackendName(
            self.backend_here
                .get_or(|| Arc::from(&*self.backend))
                .clone(),
        )
    }
}

/// Builds [`Acl`] services.
#[derive(Clone)]
pub struct AclLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AclLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclLayer")
            .field("backend", &self.shared.backend)
            .finish()
    }
}

impl AclLayer {
    /// Guards the backend named `backend` with `policy`.
    pub fn new(policy: impl ToolPolicy, backend: impl Into<Arc<str>>) -> Self {
        Self::shared(Arc::new(policy), backend, None)
    }

    /// Like [`new`](Self::new) with a shared policy and optional pins.
    pub fn shared(
        policy: Arc<dyn ToolPolicy>,
        backend: impl Into<Arc<str>>,
        pins: Option<Arc<ToolPins>>,
    ) -> Self {
        AclLayer {
            shared: Arc::new(Shared {
                policy,
                backend: backend.into(),
                backend_here: ThreadLocal::new(),
                pins,
                lists: true,
            }),
        }
    }

    /// Only guards calls, leaving list results alone: in front of an
    /// [`Aggregate`](crate::aggregate::Aggregate), whose backends filter
    /// their own lists (each with its own `AclLayer`). Calls the aggregate
    /// routed are checked against their backend and the name they have
    /// there ([`Routed`](crate::aggregate::Routed)), before limits count
    /// them.
    pub fn guard_only(self) -> Self {
        let s = &self.shared;
        AclLayer {
            shared: Arc::new(Shared {
                policy: s.policy.clone(),
                backend: s.backend.clone(),
                backend_here: ThreadLocal::new(),
                pins: s.pins.clone(),
                lists: false,
            }),
        }
    }

    /// Pins tool definitions with `pins`.
    pub fn with_pins(self, pins: Arc<ToolPins>) -> Self {
        let s = &self.shared;
        Self::shared(s.policy.clone(), s.backend.clone(), Some(pins))
    }
}

impl<S> Layer<S> for AclLayer {
    type Service = Acl<S>;
    fn layer(&self, inner: S) -> Acl<S> {
        Acl {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The authorization service. See the module docs.
#[derive(Clone)]
pub struct Acl<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S> Acl<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Acl<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl").finish_non_exhaustive()
    }
}
