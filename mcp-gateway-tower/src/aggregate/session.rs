//! An aggregate session: one upstream session per backend, and what routes
//! the traffic that names no backend (answers to server-to-client requests,
//! cancellations, progress).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use mcp_gateway_core::{Principal, RequestId};

use crate::body::lock;

/// A backend's part of a session.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub(crate) instance: usize,
    pub(crate) sid: Option<HeaderValue>,
    /// The version this backend answered `initialize` with.
    pub(crate) version: Option<HeaderValue>,
    /// Changes on every (re-)initialization: a caller that saw a failure
    /// re-joins only if nobody did meanwhile.
    pub(crate) generation: u64,
}

#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) joined: Mutex<Option<Joined>>,
    /// Serialises (re-)initialization of this backend's part.
    pub(crate) join: tokio::sync::Mutex<()>,
    /// Resource URIs (the backend's own) this session subscribed to here.
    pub(crate) subscriptions: Mutex<HashSet<String>>,
}

impl Slot {
    pub(crate) fn current(&self) -> Option<Joined> {
        lock(&self.joined).clone()
    }
}

/// What the gateway needs to initialize a backend again for the client.
pub(crate) struct Setup {
    /// The client's `initialize` body.
    pub(crate) init: Bytes,
    /// Its headers (no session id).
    pub(crate) headers: HeaderMap,
    pub(crate) principal: Option<Principal>,
}

/// A server-to-client request on its way to the client.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) member: usize,
    pub(crate) id: RequestId,
}

pub(crate) struct AggSession {
    pub(crate) id: Arc<str>,
    pub(crate) setup: Setup,
    /// The version the session speaks (the merged `initialize` answer's).
    pub(crate) version: Mutex<Option<HeaderValue>>,
    pub(crate) slots: Vec<Slot>,
    /// Gateway id (its JSON text) → the backend that asked, with its id.
    pending: Mutex<(HashMap<Bytes, Pending>, VecDeque<Bytes>)>,
    max_pending: usize,
    /// Progress tokens (JSON text) of server-to-client requests → backend.
    tokens: Mutex<HashMap<Bytes, usize>>,
    /// The client's requests in flight → backend (a handful: scanned).
    calls: Mutex<Vec<(RequestId, usize)>>,
    /// The last `logging/setLevel` body.
    pub(crate) level: Mutex<Option<Bytes>>,
    next: AtomicU64,
}

impl AggSession {
    pub(crate) fn new(setup: Setup, members: usize, max_pending: usize) -> Self {
        AggSession {
            id: mcp_gateway_core::session::SessionId::random()
                .as_str()
                .into(),
            setup,
            version: Mutex::new(None),
            slots: (0..members).map(|_| Slot::default()).collect(),
            pending: Mutex::new((HashMap::new(), VecDeque::new())),
            max_pending: max_pending.max(1),
            tokens: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            level: Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    /// A new gateway id for `member`'s request `id` (JSON text of a
    /// string: `"mcpgw-{member}-{n}"`).
    pub(crate) fn remember_request(&self, member: usize, id: RequestId) -> Bytes {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let gid = Bytes::from(format!("\"mcpgw-{member}-{n}\""));
        let mut p = lock(&self.pending);
        let (map, order) = &mut *p;
        while map.len() >= self.max_pending {
            match order.pop_front() {
                Some(old) => {
                    if map.remove(&old).is_some() {
                        tracing::warn!(session = %self.id, "too many unanswered server-to-client requests: the oldest is forgotten");
                    }
                }
                None => break,
            }
        }
        map.insert(gid.clone(), Pending { member, id });
        order.push_back(gid.clone());
        if order.len() > 2 * self.max_pending {
            order.retain(|k| map.contains_key(k));
        }
        gid
    }

    /// The backend request a client's answer (with gateway id `gid`)
    /// belongs to; forgets it.
    pub(crate) fn take_request(&self, gid: &[u8]) -> Option<Pending> {
        lock(&self.pending).0.remove(gid)
    }

    pub(crate) fn remember_token(&self, token: Bytes, member: usize) {
        let mut t = lock(&self.tokens);
        if t.len() >= self.max_pending {
            t.clear();
        }
        t.insert(token, member);
    }

    pub(crate) fn token_owner(&self, token: &[u8]) -> Option<usize> {
        lock(&self.tokens).get(token).copied()
    }

    /// Notes request `id` as `member`'s until the guard is dropped.
    pub(crate) fn call_started(self: &Arc<Self>, id: &RequestId, member: usize) -> CallGuard {
        lock(&self.calls).push((id.clone(), member));
        CallGuard {
            session: self.clone(),
            id: id.clone(),
        }
    }

    fn call_ended(&self, id: &RequestId) {
        let mut calls = lock(&self.calls);
        if let Some(i) = calls.iter().position(|(c, _)| c == id) {
            calls.swap_remove(i);
        }
    }

    pub(crate) fn call_owner(&self, id: &[u8]) -> Option<usize> {
        lock(&self.calls)
            .iter()
            .find(|(c, _)| c.as_bytes() == id)
            .map(|(_, m)| *m)
    }

    /// The members that are part of the session now.
    pub(crate) fn joined(&self) -> Vec<(usize, Joined)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(m, s)| s.current().map(|j| (m, j)))
            .collect()
    }
}

/// Ends a call's entry in [`AggSession`]'s table when dropped (with the
/// call's response body).
pub(crate) struct CallGuard {
    session: Arc<AggSession>,
    id: RequestId,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.session.call_ended(&self.id);
    }
}

type Fast = foldhash::fast::RandomState;

/// The live sessions, by the aggregate's own id.
#[derive(Default)]
pub(crate) struct Sessions(RwLock<HashMap<Arc<str>, Arc<AggSession>, Fast>>);

impl Sessions {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<AggSession>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub(crate) fn insert(&self, s: Arc<AggSession>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s.id.clone(), s);
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Arc<AggSession>> {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
