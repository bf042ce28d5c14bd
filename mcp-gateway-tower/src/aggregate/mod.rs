//! Several MCP servers behind one endpoint: [`Aggregate`], an upstream
//! service that looks like one Streamable HTTP server to the layers above
//! it and fans out to named backends (each an [`Upstreams`] set, with its
//! own credentials, health and, through [`Member::with_acl`], its own
//! policy and pins).
//!
//! - **Sessions.** The client's `initialize` initializes every backend in
//!   parallel (bounded by [`AggregateConfig::init_timeout`]) with the
//!   client's own parameters, so each backend offers what this client can
//!   do. The answer merges the capabilities (one is advertised if any
//!   backend has it), names the gateway in `serverInfo` and joins the
//!   `instructions`, each headed by its backend. A backend that fails is
//!   left out of the session (logged; tried again when the client first
//!   uses it) unless [`AggregateConfig::require_all`]. A backend's own
//!   `404` for its session, or an instance that is lost or unreachable,
//!   re-initializes that backend's part (replaying the client's
//!   `initialize`, `notifications/initialized`, log level and
//!   subscriptions) and sends the request again: the other backends never
//!   notice. `DELETE` and expiry end every backend session.
//! - **Names.** Tools and prompts are shown as `{backend}{separator}{name}`
//!   ([`PrefixMode::Always`]), only where two backends share a name
//!   ([`PrefixMode::Conflicts`]), or never ([`PrefixMode::Never`], where a
//!   shared name is refused at start and reported on every refresh). URIs
//!   pass unchanged unless two backends list the same one, which is then
//!   shown as `mcpgw://{backend}/{uri}`; other URIs route by the exact
//!   resource, else by the backend whose template matches. Requests are
//!   routed by name and the prefix is stripped before forwarding (the
//!   `Mcp-Name` header too); an unknown name is a JSON-RPC -32602 naming
//!   it, never a guess.
//! - **Lists** are merged page by page with the gateway's own cursors
//!   (which backend, and that backend's cursor, come next): a client
//!   following `nextCursor` gets exactly the union.
//! - **Server-to-client traffic.** A backend's request to the client
//!   (`sampling/createMessage`, `elicitation/create`, `roots/list`, `ping`)
//!   gets a gateway-unique id; the client's answer goes back to the
//!   backend that asked, with its own id. `notifications/cancelled` and
//!   `notifications/progress` go to the backend that owns the request or
//!   token; `notifications/initialized`, `notifications/roots/list_changed`
//!   and `logging/setLevel` go to every backend; `ping` is answered here.
//!   The session's `GET` stream merges every backend's; event ids are
//!   prefixed with the backend's index, so `Last-Event-ID` resumes at the
//!   right backend. A `list_changed` from a backend refreshes the gateway's
//!   catalog of that backend before the client sees it.
//! - **2026-07-28** (stateless): `server/discover` merges the backends'
//!   answers (versions intersected, capabilities merged); each request is
//!   routed by its name; `subscriptions/listen` merges the backends'
//!   notification streams into one; `input_required` results pass through
//!   (the retry carries the same name, so it reaches the same backend).
//!
//! Batches (2025-03-26) are refused with -32600: each message of one would
//! go to another backend.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acl::{Acl, AclLayer};
use crate::upstream::{Instances, Upstreams};

mod forward;
mod lists;
mod names;
mod route;
mod service;
mod session;
mod stream;
#[cfg(test)]
mod tests;

pub use self::names::{Kind, URI_PREFIX};
pub use self::route::{RouteLayer, RouteService, Routed};
pub use self::service::Aggregate;

/// When tool and prompt names carry their backend's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// Every name: `db__query` (the default with two or more backends).
    #[default]
    Always,
    /// Only names that two backends share.
    Conflicts,
    /// None: two backends with the same name are refused at start and
    /// reported on every refresh.
    Never,
}

/// How an [`Aggregate`] names and joins its backends.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AggregateConfig {
    /// When names carry a prefix. Default [`PrefixMode::Always`].
    pub prefix: PrefixMode,
    /// Between the backend's name and the tool's. Default `__`.
    pub separator: String,
    /// A session starts only if every backend initializes. Default false:
    /// it starts with the others, the failed one left out.
    pub require_all: bool,
    /// How long the backends get to initialize. Default 10 s.
    pub init_timeout: Duration,
    /// Merged list results are marked `cacheScope: "private"` (set when a
    /// policy filters lists: the answer depends on the caller). Default
    /// false: a backend's hint passes.
    pub private_lists: bool,
    /// Server-to-client requests awaiting the client's answer, per
    /// session; past it the oldest is forgotten (its answer then goes
    /// nowhere, logged). Default 1024.
    pub max_pending: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            prefix: PrefixMode::Always,
            separator: "__".into(),
            require_all: false,
            init_timeout: Duration::from_secs(10),
            private_lists: false,
            max_pending: 1024,
        }
    }
}

impl AggregateConfig {
    /// Sets [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: PrefixMode) -> Self {
        self.prefix = prefix;
        self
    }
    /// Sets [`separator`](Self::separator).
    pub fn separator(mut self, sep: impl Into<String>) -> Self {
        self.separator = sep.into();
        self
    }
    /// Sets [`require_all`](Self::require_all).
    pub fn require_all(mut self, on: bool) -> Self {
        self.require_all = on;
        self
    }
    /// Sets [`init_timeout`](Self::init_timeout).
    pub fn init_timeout(mut self, d: Duration) -> Self {
        self.init_timeout = d;
        self
    }
    /// Sets [`private_lists`](Self::private_lists).
    pub fn private_lists(mut self, on: bool) -> Self {
        self.private_lists = on;
        self
    }
}

/// What a member's requests go through: its instances, behind its policy
/// layer when it has one. Called in place (a clone of either is a
/// reference count).
#[derive(Clone)]
pub(crate) enum Stack {
    Plain(Upstreams),
    Guarded(Acl<Upstreams>),
}

impl Stack {
    pub(crate) fn call(&self, req: http::Request<crate::Body>) -> crate::body::BoxFuture {
        match self {
            Stack::Plain(u) => tower_service::Service::call(&mut u.clone(), req),
            Stack::Guarded(a) => tower_service::Service::call(&mut a.clone(), req),
        }
    }
}

/// One named backend of an [`Aggregate`].
#[derive(Clone)]
pub struct Member {
    pub(crate) name: Arc<str>,
    pub(crate) upstreams: Upstreams,
    pub(crate) instances: Instances,
    pub(crate) stack: Stack,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("name", &self.name).finish()
    }
}

impl Member {
    /// The backend `name` (its namespace), served by `upstreams`.
    pub fn new(name: impl Into<Arc<str>>, upstreams: Upstreams) -> Self {
        let stack = Stack::Plain(upstreams.clone());
        Member {
            name: name.into(),
            instances: upstreams.instances(),
            upstreams,
            stack,
        }
    }

    /// Guards this backend's calls and filters its lists with `acl` (built
    /// with this backend's name): policies and pins see the backend's own
    /// names, without prefixes.
    pub fn with_acl(mut self, acl: AclLayer) -> Self {
        self.stack = Stack::Guarded(tower_layer::Layer::layer(&acl, self.upstreams.clone()));
        self
    }

    /// The backend's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The backend's instances (health, drain, admin).
    pub fn instances(&self) -> &Instances {
        &self.instances
    }
}
