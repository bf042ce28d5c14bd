//! [`Peer`]: one live connection to a message-based server (a child
//! process, a legacy SSE stream), shared by the client sessions attached
//! to it. Requests leave with the gateway's own ids (and progress tokens)
//! and their answers come back with the client's; notifications and the
//! server's own requests are routed to the session they belong to.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use mcp_gateway_core::{ErrorKind, GatewayError};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::wire::{self, Head, Kind};
use crate::body::lock;

/// A client session attached to a peer (per-session peers have one).
pub(crate) type Conn = u64;

/// The prefix of the ids the gateway gives the server's own requests.
const ASK_PREFIX: &str = "mcpgw-s";

/// Bounds of a peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerLimits {
    /// Calls in flight at once.
    pub(crate) in_flight: usize,
    /// How long a call waits for room (in flight, or in the queue to the
    /// server) before it fails.
    pub(crate) queue_wait: Duration,
    /// How long a message waits for a slow client before it is dropped.
    pub(crate) deliver_wait: Duration,
    /// Messages kept for a session with no stream open to take them.
    pub(crate) backlog: usize,
}

/// One message on its way to a client: the last one ends the call.
pub(crate) struct Item {
    pub(crate) msg: Bytes,
    pub(crate) last: bool,
}

struct Call {
    conn: Conn,
    client_id: Bytes,
    token: Option<Bytes>,
    tx: mpsc::Sender<Item>,
    seq: u64,
}

struct Ask {
    conn: Conn,
    child_id: Bytes,
}

#[derive(Default)]
struct ConnState {
    get: Option<mpsc::Sender<Item>>,
    backlog: VecDeque<Bytes>,
    /// 2026-07-28 `subscriptions/listen` streams: each gets the session's
    /// list-changed and resource-updated notifications.
    listeners: Vec<mpsc::Sender<Item>>,
}

#[derive(Default)]
struct State {
    calls: HashMap<u64, Call>,
    asks: HashMap<u64, Ask>,
    conns: HashMap<Conn, ConnState>,
    own: HashMap<u64, oneshot::Sender<Bytes>>,
    seq: u64,
}

/// One live connection to a server. See the module docs.
pub(crate) struct Peer {
    backend: Arc<str>,
    /// Lines to the server; the transport's writer owns the other end.
    out: mpsc::Sender<Bytes>,
    state: Mutex<State>,
    next: AtomicU64,
    exit: OnceLock<Arc<str>>,
    done: watch::Sender<bool>,
    /// Set to ask the transport to stop (close stdin, then signals).
    stop: watch::Sender<bool>,
    slots: Arc<Semaphore>,
    limits: PeerLimits,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("backend", &self.backend)
            .field("exit", &self.exit.get())
            .finish_non_exhaustive()
    }
}

/// What a transport holds of its peer: where lines to the server come
/// from, and the stop signal.
pub(crate) struct PeerIo {
    pub(crate) out: mpsc::Receiver<Bytes>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl Peer {
    /// A peer and the ends its transport drives.
    pub(crate) fn new(backend: Arc<str>, limits: PeerLimits) -> (Arc<Peer>, PeerIo) {
        let (out, out_rx) = mpsc::channel(limits.in_flight.clamp(16, 1024));
        let (stop, stop_rx) = watch::channel(false);
        let peer = Arc::new(Peer {
            backend,
            out,
            state: Mutex::new(State::default()),
            next: AtomicU64::new(1),
            exit: OnceLock::new(),
            done: watch::channel(false).0,
            stop,
            slots: Arc::new(Semaphore::new(limits.in_flight)),
            limits,
        });
        (
            peer,
            PeerIo {
                out: out_rx,
                stop: stop_rx,
            },
        )
    }

    /// The backend's name.
    pub(crate) fn backend(&self) -> &Arc<str> {
        &self.backend
    }

    /// Why it ended, once it has.
    pub(crate) fn exit_reason(&self) -> Option<&Arc<str>> {
        self.exit.get()
    }

    /// Is it still serving?
    pub(crate) fn alive(&self) -> bool {
        self.exit.get().is_none() && !*self.stop.borrow()
    }

    /// Asks the transport to stop the server (it then calls
    /// [`ended`](Self::ended)).
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once the peer has ended.
    pub(crate) async fn ended_wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// The transport saw the server go (`why`: "exit status: 1", "the
    /// stream ended"): every call in flight ends with an error naming it,
    /// every stream of its sessions ends.
    pub(crate) fn ended(&self, why: &str) {
        if self.exit.set(why.into()).is_err() {
            return;
        }
        let state = std::mem::take(&mut *lock(&self.state));
        let calls = state.calls.len();
        drop(state);
        if calls > 0 {
            tracing::warn!(backend = %self.backend, calls, reason = why, "backend ended with calls in flight: they get an error");
        }
        self.done.send_replace(true);
    }

    /// The error for a call that cannot go on because the peer ended.
    pub(crate) fn gone_error(&self) -> GatewayError {
        let why = self.exit.get().map(|s| &**s).unwrap_or("it was stopped");
        GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!("Bad Gateway: backend {} ended ({why})", self.backend),
        )
    }

    /// Adds a client session.
    pub(crate) fn attach(&self, conn: Conn) {
        lock(&self.state).conns.entry(conn).or_default();
    }

    /// Removes a client session and what it had in flight.
    pub(crate) fn detach(&self, conn: Conn) {
        let mut st = lock(&self.state);
        st.conns.remove(&conn);
        st.calls.retain(|_, c| c.conn != conn);
        st.asks.retain(|_, a| a.conn != conn);
    }

    async fn send_line(&self, line: Bytes) -> Result<(), GatewayError> {
        if !self.alive() {
            return Err(self.gone_error());
        }
        match tokio::time::timeout(self.limits.queue_wait, self.out.send(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.gone_error()),
            Err(_) => Err(busy(&self.backend, self.limits.queue_wait)),
        }
    }

    /// Sends request `line` (parsed as `head`) of session `conn`: the
    /// answer and what the server says about it come from the stream.
    pub(crate) async fn call(
        self: &Arc<Self>,
        conn: Conn,
        line: Bytes,
        head: &Head,
    ) -> Result<CallStream, GatewayError> {
        let Some(id) = head.id.clone() else {
            return Err(GatewayError::new(
                ErrorKind::Internal,
                "a call without an id",
            ));
        };
        if !self.alive() {
            return Err(self.gone_error());
        }
        let permit =
            match tokio::time::timeout(self.limits.queue_wait, self.slots.clone().acquire_owned())
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(self.gone_error()),
                Err(_) => return Err(busy(&self.backend, self.limits.queue_wait)),
            };
        let gid = self.next.fetch_add(1, Ordering::Relaxed);
        let g = wire::number(gid);
        let client_id = Bytes::copy_from_slice(&line[id.clone()]);
        let token = head.token.clone().map(|r| Bytes::copy_from_slice(&line[r]));
        let mut edits: Vec<(std::ops::Range<usize>, &[u8])> = vec![(id, &g)];
        if let Some(t) = head.token.clone() {
            edits.push((t, &g));
        }
        let out = wire::splice(&line, &mut edits);
        let (tx, rx) = mpsc::channel(64);
        {
            let mut st = lock(&self.state);
            if self.exit.get().is_some() {
                return Err(self.gone_error());
            }
            st.seq += 1;
            let seq = st.seq;
            st.calls.insert(
                gid,
                Call {
                    conn,
                    client_id: client_id.clone(),
                    token,
                    tx,
                    seq,
                },
            );
        }
        let stream = CallStream {
            peer: self.clone(),
            gid,
            rx,
            client_id,
            finished: false,
            failed: false,
            cancel_on_drop: false,
            _permit: permit,
        };
        self.send_line(out).await?;
        Ok(stream)
    }

    /// Sends a client notification: `notifications/cancelled` names the
    /// gateway's id of the call it cancels.
    pub(crate) async fn notify(
        &self,
        conn: Conn,
        line: Bytes,
        head: &Head,
    ) -> Result<(), GatewayError> {
        let line = match (head.method(), head.token.clone()) {
            ("notifications/cancelled", Some(r)) => {
                let gid = {
                    let st = lock(&self.state);
                    st.calls
                        .iter()
                        .find(|(_, c)| c.conn == conn && c.client_id[..] == line[r.clone()])
                        .map(|(g, _)| *g)
                };
                match gid {
                    Some(g) => wire::splice(&line, &mut [(r, &wire::number(g))]),
                    // Not in flight any more: nothing to cancel.
                    None => return Ok(()),
                }
            }
            _ => line,
        };
        self.send_line(line).await
    }

    /// Sends the client's answer to one of the server's requests, with the
    /// server's own id back in place. An answer to nothing the session was
    /// asked is dropped.
    pub(crate) async fn answer(
        &self,
        conn: Conn,
        line: Bytes,
        head: &Head,
    ) -> Result<(), GatewayError> {
        let Some(r) = head.id.clone() else {
            return Ok(());
        };
        let n = std::str::from_utf8(&line[r.clone()])
            .ok()
            .and_then(|s| s.strip_prefix('"')?.strip_suffix('"'))
            .and_then(|s| s.strip_prefix(ASK_PREFIX))
            .and_then(|s| s.parse::<u64>().ok());
        let ask = n.and_then(|n| {
            let mut st = lock(&self.state);
            match st.asks.get(&n) {
                Some(a) if a.conn == conn => st.asks.remove(&n),
                _ => None,
            }
        });
        let Some(ask) = ask else {
            tracing::debug!(backend = %self.backend, "an answer to no request of the backend's: dropped");
            return Ok(());
        };
        self.send_line(wire::splice(&line, &mut [(r, &ask.child_id)]))
            .await
    }

    /// Sends a message the gateway writes itself (`notifications/initialized`).
    pub(crate) async fn send_own(&self, line: Bytes) -> Result<(), GatewayError> {
        self.send_line(line).await
    }

    /// Sends a request of the gateway's own (`method`, `params` raw JSON)
    /// and waits for its answer, at most `wait`.
    pub(crate) async fn request_own(
        &self,
        method: &str,
        params: &[u8],
        wait: Duration,
    ) -> Result<Bytes, GatewayError> {
        let gid = self.next.fetch_add(1, Ordering::Relaxed);
        let mut line = Vec::with_capacity(64 + params.len());
        line.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        line.extend_from_slice(&wire::number(gid));
        line.extend_from_slice(b",\"method\":");
        line.extend_from_slice(serde_json::to_string(method).unwrap_or_default().as_bytes());
        line.extend_from_slice(b",\"params\":");
        line.extend_from_slice(params);
        line.push(b'}');
        let (tx, rx) = oneshot::channel();
        lock(&self.state).own.insert(gid, tx);
        self.send_line(Bytes::from(line)).await?;
        let answer = tokio::select! {
            a = rx => a.map_err(|_| self.gone_error()),
            _ = tokio::time::sleep(wait) => Err(GatewayError::new(
                ErrorKind::UpstreamTimeout,
                format!("Gateway Timeout: backend {} did not answer {method} in time", self.backend),
            )),
        };
        lock(&self.state).own.remove(&gid);
        answer
    }

    /// Opens the stream of session `conn`'s messages that belong to no
    /// call (a `GET`): what waited for it comes first. A second one
    /// replaces the first.
    pub(crate) fn open_stream(&self, conn: Conn) -> Option<mpsc::Receiver<Item>> {
        if !self.alive() {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.limits.backlog.max(16));
        let mut st = lock(&self.state);
        let c = st.conns.get_mut(&conn)?;
        for m in c.backlog.drain(..) {
            let _ = tx.try_send(Item {
                msg: m,
                last: false,
            });
        }
        c.get = Some(tx);
        Some(rx)
    }

    /// Adds a listener to session `conn`: the list-changed and
    /// resource-updated notifications of the server from now on.
    pub(crate) fn listen(&self, conn: Conn) -> Option<mpsc::Receiver<Item>> {
        if !self.alive() {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.limits.backlog.max(16));
        let mut st = lock(&self.state);
        let c = st.conns.get_mut(&conn)?;
        c.listeners.retain(|l| !l.is_closed());
        c.listeners.push(tx);
        Some(rx)
    }

    /// One line from the server.
    pub(crate) async fn inbound(&self, line: Bytes) {
        let Some(head) = Head::parse(&line) else {
            tracing::warn!(backend = %self.backend, "the backend wrote a line that is not a JSON-RPC message: ignored");
            return;
        };
        match head.kind {
            Kind::Response => self.on_response(line, &head).await,
            Kind::Notification => self.on_notification(line, &head).await,
            Kind::Request => self.on_request(line, &head).await,
        }
    }

    async fn on_response(&self, line: Bytes, head: &Head) {
        let Some(gid) = head.id.clone().and_then(|r| wire::parse_number(&line[r])) else {
            tracing::debug!(backend = %self.backend, "an answer without one of the gateway's ids: dropped");
            return;
        };
        let (tx, msg) = {
            let mut st = lock(&self.state);
            if let Some(own) = st.own.remove(&gid) {
                let _ = own.send(line);
                return;
            }
            match st.calls.remove(&gid) {
                Some(call) => {
                    let r = head.id.clone().unwrap_or(0..0);
                    let msg = wire::splice(&line, &mut [(r, &call.client_id)]);
                    (call.tx, msg)
                }
                None => {
                    tracing::debug!(backend = %self.backend, "an answer to a call no one waits for: dropped");
                    return;
                }
            }
        };
        self.deliver(&tx, Item { msg, last: true }).await;
    }

    async fn on_notification(&self, line: Bytes, head: &Head) {
        match (head.method(), head.token.clone()) {
            ("notifications/progress", Some(r)) => {
                let target = wire::parse_number(&line[r.clone()]).and_then(|gid| {
                    let st = lock(&self.state);
                    let c = st.calls.get(&gid)?;
                    let t = c.token.clone()?;
                    Some((c.tx.clone(), t))
                });
                match target {
                    Some((tx, t)) => {
                        let msg = wire::splice(&line, &mut [(r, &t)]);
                        self.deliver(&tx, Item { msg, last: false }).await;
                    }
                    None => {
                        tracing::debug!(backend = %self.backend, "progress for a call that ended: dropped")
                    }
                }
            }
            ("notifications/cancelled", Some(r)) => {
                // The server withdraws one of its own requests.
                let found = {
                    let st = lock(&self.state);
                    st.asks
                        .iter()
                        .find(|(_, a)| a.child_id[..] == line[r.clone()])
                        .map(|(n, a)| (*n, a.conn))
                };
                if let Some((n, conn)) = found {
                    let id = ask_id(n);
                    let msg = wire::splice(&line, &mut [(r, id.as_bytes())]);
                    self.to_conn(conn, msg).await;
                }
            }
            (m, _) => {
                let broadcast =
                    m.ends_with("list_changed") || m == "notifications/resources/updated";
                let conns: Vec<Conn> = {
                    let st = lock(&self.state);
                    if broadcast || st.conns.len() == 1 {
                        st.conns.keys().copied().collect()
                    } else {
                        latest_call(&st).map(|c| c.conn).into_iter().collect()
                    }
                };
                if conns.is_empty() {
                    tracing::debug!(backend = %self.backend, method = m, "a notification for no session: dropped");
                }
                for c in conns {
                    let listeners: Vec<mpsc::Sender<Item>> = {
                        let mut st = lock(&self.state);
                        match st.conns.get_mut(&c) {
                            Some(cs) if broadcast => {
                                cs.listeners.retain(|l| !l.is_closed());
                                cs.listeners.clone()
                            }
                            _ => Vec::new(),
                        }
                    };
                    if listeners.is_empty() {
                        self.to_conn(c, line.clone()).await;
                    }
                    for l in listeners {
                        let item = Item {
                            msg: line.clone(),
                            last: false,
                        };
                        self.deliver(&l, item).await;
                    }
                }
            }
        }
    }

    async fn on_request(&self, line: Bytes, head: &Head) {
        let r = head.id.clone().unwrap_or(0..0);
        if head.method() == "ping" {
            let _ = self.send_line(wire::result_message(&line[r], b"{}")).await;
            return;
        }
        let target = {
            let mut st = lock(&self.state);
            let target = match latest_call(&st) {
                Some(c) => Some((c.conn, Some(c.tx.clone()))),
                None if st.conns.len() == 1 => st.conns.keys().next().map(|c| (*c, None)),
                None => None,
            };
            target.map(|(conn, tx)| {
                st.seq += 1;
                let n = st.seq;
                st.asks.insert(
                    n,
                    Ask {
                        conn,
                        child_id: Bytes::copy_from_slice(&line[r.clone()]),
                    },
                );
                (n, conn, tx)
            })
        };
        let Some((n, conn, tx)) = target else {
            let msg = format!(
                "the gateway has no client session to ask {} (no call of this server is in flight)",
                head.method()
            );
            let _ = self
                .send_line(wire::error_message(&line[r], -32603, &msg))
                .await;
            return;
        };
        let id = ask_id(n);
        let msg = wire::splice(&line, &mut [(r, id.as_bytes())]);
        match tx {
            Some(tx) => self.deliver(&tx, Item { msg, last: false }).await,
            None => self.to_conn(conn, msg).await,
        }
    }

    /// Session `conn`'s message that belongs to no call: its stream if one
    /// is open, else its latest call's, else kept (bounded) until a stream
    /// opens.
    async fn to_conn(&self, conn: Conn, msg: Bytes) {
        let tx = {
            let mut st = lock(&self.state);
            let latest = st
                .calls
                .values()
                .filter(|c| c.conn == conn)
                .max_by_key(|c| c.seq)
                .map(|c| c.tx.clone());
            let Some(c) = st.conns.get_mut(&conn) else {
                return;
            };
            match (c.get.as_ref().filter(|g| !g.is_closed()), latest) {
                (Some(g), _) => g.clone(),
                (None, Some(tx)) => tx,
                (None, None) => {
                    if c.backlog.len() >= self.limits.backlog {
                        c.backlog.pop_front();
                        tracing::warn!(backend = %self.backend, "a session's undelivered messages are over the bound: the oldest is dropped");
                    }
                    c.backlog.push_back(msg);
                    return;
                }
            }
        };
        self.deliver(&tx, Item { msg, last: false }).await;
    }

    async fn deliver(&self, tx: &mpsc::Sender<Item>, item: Item) {
        match tokio::time::timeout(self.limits.deliver_wait, tx.send(item)).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(backend = %self.backend, "a client does not read its stream: a message for it is dropped")
            }
        }
    }

    fn forget(&self, gid: u64) {
        lock(&self.state).calls.remove(&gid);
    }
}

fn latest_call(st: &State) -> Option<&Call> {
    st.calls.values().max_by_key(|c| c.seq)
}

fn ask_id(n: u64) -> String {
    format!("\"{ASK_PREFIX}{n}\"")
}

fn busy(backend: &str, wait: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamTimeout,
        format!(
            "Gateway Timeout: backend {backend} is busy: the call waited {} ms for room",
            wait.as_millis()
        ),
    )
}

/// The messages of one call, its answer last. Dropped early, the call is
/// forgotten (and, for 2026-07-28 callers, cancelled at the server).
pub(crate) struct CallStream {
    peer: Arc<Peer>,
    gid: u64,
    rx: mpsc::Receiver<Item>,
    client_id: Bytes,
    finished: bool,
    /// The answer is the gateway's: the server ended first.
    failed: bool,
    cancel_on_drop: bool,
    _permit: OwnedSemaphorePermit,
}

impl CallStream {
    /// The next message: `(message, is the answer)`. After the answer, or
    /// an error when the server ended first, `None`.
    pub(crate) async fn next(&mut self) -> Option<Item> {
        if self.finished {
            return None;
        }
        match self.rx.recv().await {
            Some(item) => {
                self.finished = item.last;
                Some(item)
            }
            None => {
                self.finished = true;
                self.failed = true;
                let e = self.peer.gone_error();
                let msg = wire::error_message(&self.client_id, e.code(), e.message());
                Some(Item { msg, last: true })
            }
        }
    }

    /// Why the server ended, when the call's answer is the gateway's error
    /// because of it.
    pub(crate) fn failure(&self) -> Option<&Arc<str>> {
        self.failed.then(|| self.peer.exit_reason()).flatten()
    }

    /// Closing the stream early cancels the call at the server.
    pub(crate) fn cancel_on_drop(&mut self) {
        self.cancel_on_drop = true;
    }

    /// The peer it runs on.
    pub(crate) fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.peer.forget(self.gid);
        if self.cancel_on_drop && self.peer.alive() {
            let mut line = Vec::with_capacity(96);
            line.extend_from_slice(
                b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":",
            );
            line.extend_from_slice(&wire::number(self.gid));
            line.extend_from_slice(b"}}");
            let _ = self.peer.out.try_send(Bytes::from(line));
        }
    }
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("gid", &self.gid)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(in_flight: usize) -> PeerLimits {
        PeerLimits {
            in_flight,
            queue_wait: Duration::from_millis(50),
            deliver_wait: Duration::from_secs(1),
            backlog: 4,
        }
    }

    fn head(line: &Bytes) -> Head {
        Head::parse(line).unwrap()
    }

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[tokio::test]
    async fn answers_progress_and_requests_find_their_session_and_call() {
        let (peer, mut io) = Peer::new("t".into(), limits(8));
        peer.attach(1);
        peer.attach(2);
        // Two sessions use the same id and token.
        let line = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"p"}}}"#,
        );
        let mut a = peer.call(1, line.clone(), &head(&line)).await.unwrap();
        let mut b = peer.call(2, line.clone(), &head(&line)).await.unwrap();
        let sent_a = json(&io.out.recv().await.unwrap());
        let sent_b = json(&io.out.recv().await.unwrap());
        assert_ne!(sent_a["id"], sent_b["id"], "ids rewritten apart");
        assert_eq!(sent_a["id"], sent_a["params"]["_meta"]["progressToken"]);
        let (ga, gb) = (sent_a["id"].clone(), sent_b["id"].clone());
        // Progress for b, then a request of the server's (to the latest call: b).
        let p = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{gb},"progress":1}}}}"#
        );
        peer.inbound(Bytes::from(p)).await;
        let got = b.next().await.unwrap();
        assert!(!got.last);
        assert_eq!(json(&got.msg)["params"]["progressToken"], "p");
        peer.inbound(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{}}"#,
        ))
        .await;
        let ask = json(&b.next().await.unwrap().msg);
        let ask_id = ask["id"].as_str().unwrap().to_owned();
        assert!(ask_id.starts_with(ASK_PREFIX));
        // The other session cannot answer it; its own can, and the server
        // gets its own id back.
        let answer = Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":"{ask_id}","result":{{}}}}"#
        ));
        peer.answer(1, answer.clone(), &head(&answer))
            .await
            .unwrap();
        peer.answer(2, answer.clone(), &head(&answer))
            .await
            .unwrap();
        assert_eq!(json(&io.out.recv().await.unwrap())["id"], "srv-1");
        assert!(
            io.out.try_recv().is_err(),
            "the wrong session's answer was dropped"
        );
        // Answers, each with its client's id.
        for (g, s) in [(ga, &mut a), (gb, &mut b)] {
            let r = format!(r#"{{"jsonrpc":"2.0","id":{g},"result":{{"ok":true}}}}"#);
            peer.inbound(Bytes::from(r)).await;
            let last = s.next().await.unwrap();
            assert!(last.last);
            assert_eq!(json(&last.msg)["id"], 1);
            assert!(s.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn a_peer_that_ends_fails_its_calls_with_the_reason() {
        let (peer, mut io) = Peer::new("files".into(), limits(8));
        peer.attach(1);
        let line = Bytes::from_static(br#"{"jsonrpc":"2.0","id":"q","method":"tools/list"}"#);
        let mut call = peer.call(1, line.clone(), &head(&line)).await.unwrap();
        io.out.recv().await.unwrap();
        peer.ended("signal: 9 (SIGKILL)");
        let last = call.next().await.unwrap();
        assert!(last.last);
        let v = json(&last.msg);
        assert_eq!(v["id"], "q");
        assert_eq!(v["error"]["code"], -32050);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signal: 9"));
        // New calls are refused at once.
        let e = peer.call(1, line.clone(), &head(&line)).await.unwrap_err();
        assert_eq!(e.code(), -32050);
    }

    #[tokio::test]
    async fn a_full_server_makes_calls_wait_then_fail() {
        let (peer, _io) = Peer::new("slow".into(), limits(1));
        peer.attach(1);
        let line = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let _first = peer.call(1, line.clone(), &head(&line)).await.unwrap();
        let e = peer.call(1, line.clone(), &head(&line)).await.unwrap_err();
        assert_eq!(e.code(), -32051, "{}", e.message());
        assert!(e.message().contains("busy"));
    }

    #[tokio::test]
    async fn messages_for_no_call_wait_bounded_for_a_stream() {
        let (peer, _io) = Peer::new("t".into(), limits(8));
        peer.attach(7);
        for i in 0..6 {
            let n = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"n":{i}}}}}"#
            );
            peer.inbound(Bytes::from(n)).await;
        }
        let mut rx = peer.open_stream(7).unwrap();
        // The bound is 4: the oldest two were dropped.
        let first = json(&rx.recv().await.unwrap().msg);
        assert_eq!(first["params"]["n"], 2);
    }
}
