//! [`Limit`]: the service, which admits or refuses each call.

use super::*;
#[allow(unused_imports)]
use crate::aggregate::Routed;

/// The client's address, in the request extensions. The axum builder
/// copies it from axum's `ConnectInfo<SocketAddr>` when the app is served
/// with connect info (as `mcp_gateway_axum::serve` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Who is limited: the principal's key, else `anon:<client ip>`, else
/// `anon` (a caller the gateway cannot tell apart from others: the
/// per-client caps, sessions, new sessions and calls in flight, do not
/// apply to it, since they would make every such caller share one).
pub(crate) fn limit_subject<B>(req: &Request<B>) -> Arc<str> {
    if let Some(p) = req.extensions().get::<Principal>() {
        return p.key().clone();
    }
    match req.extensions().get::<ClientAddr>() {
        Some(a) => anon_key(a.0.ip()),
        None => Arc::from("anon"),
    }
}

thread_local! {
    /// The last anonymous key this thread made: a client's calls come from
    /// one address, and formatting an address costs more than the rest of
    /// a limit check.
    static LAST_ANON: RefCell<Option<(std::net::IpAddr, Arc<str>)>> = const { RefCell::new(None) };
}

/// `anon:<ip>`, formatted once per address and thread in a row.
fn anon_key(ip: std::net::IpAddr) -> Arc<str> {
    LAST_ANON.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((seen, key)) if *seen == ip => key.clone(),
            _ => {
                let key: Arc<str> = format!("anon:{ip}").into();
                *last = Some((ip, key.clone()));
                key
            }
        }
    })
}

pub(crate) fn refusal(
    limit: LimitKind,
    retry: Duration,
    id: Option<&RequestId>,
    kind: ErrorKind,
) -> Response<Body> {
    // Rounded up: retrying after exactly this long must succeed.
    let ms = (retry.as_nanos().div_ceil(1_000_000) as u64).max(1);
    let e = GatewayError::new(
        kind,
        format!("limit {} reached; retry in {ms} ms", limit.as_str()),
    )
    .with_data(&serde_json::json!({"limit": limit.as_str(), "retryAfterMs": ms}));
    let mut res = error_response(&e, id);
    // For the audit log, outside this layer.
    res.extensions_mut().insert(limit);
    if matches!(
        kind,
        ErrorKind::TooManySessions | ErrorKind::TooManyRequests
    ) {
        let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// A call refused by `limit`: the per-client cap on calls in flight is a
/// 429 with `Retry-After`; the other call limits refuse the call in
/// JSON-RPC (200).
fn call_refusal(limit: LimitKind, retry: Duration, id: Option<&RequestId>) -> Response<Body> {
    let kind = if limit == LimitKind::PrincipalInFlight {
        ErrorKind::TooManyRequests
    } else {
        ErrorKind::Limited
    };
    refusal(limit, retry, id, kind)
}

/// The slots a call or a session holds: the first two (a principal's and
/// a backend's, all one message takes) in place, any more (a batch's) in
/// a vector. Saves an allocation per call.
#[derive(Default)]
pub(crate) struct Slots {
    first: [Option<Slot>; 2],
    more: Vec<Slot>,
}

impl Slots {
    pub(crate) fn push(&mut self, s: Slot) {
        match self.first.iter_mut().find(|f| f.is_none()) {
            Some(free) => *free = Some(s),
            None => self.more.push(s),
        }
    }

    pub(crate) fn append(&mut self, other: Slots) {
        for s in other.first.into_iter().flatten().chain(other.more) {
            self.push(s);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.iter().all(Option::is_none) && self.more.is_empty()
    }

    /// Gives every slot back.
    pub(crate) fn release(&mut self) {
        *self = Slots::default();
    }
}

/// Permits and counters a call carries until its response body ends.
pub(crate) struct CallHold {
    pub(crate) slots: Slots,
    pub(crate) tokens: Option<(LimitKey, Budget)>,
}

impl Shared {
    fn counted(&self, m: &Message) -> bool {
        match m.method() {
            Some(Method::ToolsCall) => true,
            Some(other) => self.cfg.count_methods.iter().any(|c| c == other.as_str()),
            None => false,
        }
    }

    pub(crate) fn key(&self, kind: LimitKind, subject: &Arc<str>, tool: Option<Bytes>) -> LimitKey {
        LimitKey {
            kind,
            subject: subject.clone(),
            tool,
        }
    }

    /// The cost of a call of `tool` (its name as sent: the name is read as
    /// text only when some tool has a cost of its own).
    fn cost_of(&self, tool: &[u8]) -> u64 {
        if self.tool_costs.is_empty() {
            return self.cfg.default_cost;
        }
        let tool = std::str::from_utf8(tool).unwrap_or("");
        self.tool_costs
            .iter()
            .find(|(pat, _)| pat.matches(tool))
            .map_or(self.cfg.default_cost, |(_, c)| *c)
    }

    /// Checks one counted message; `Err` is the refusal. Returns the slots
    /// to hold and the cost charged.
    async fn admit(
        &self,
        who: &Arc<str>,
        m: &Message,
        routed: Option<&Arc<str>>,
    ) -> Result<(Slots, u64), (LimitKind, Duration)> {
        if self.limiter.batches() {
            return self.admit_batched(who, m, routed).await;
        }
        // An aggregate's call is counted against the backend it goes to.
        let backend = routed.unwrap_or(&self.backend);
        // One key for the principal and one for the backend, whose kind
        // changes from check to check: fewer reference-count updates on the
        // shared names (every one a cache line bounced between threads).
        // The tool name shares the request body; the limiter copies it if
        // it keeps the key.
        let tool = (m.method() == Some(&Method::ToolsCall))
            .then(|| m.target_text().map(|t| t.as_bytes().clone()))
            .flatten();
        let mut mine = self.key(LimitKind::PrincipalToolRate, who, tool);
        // The backend's key only when a backend limit is set: its name is
        // shared by every thread, and a clone touches that shared count.
        let backend_limited =
            self.cfg.backend_rate.is_some() || self.cfg.backend_in_flight.is_some();
        let mut theirs = backend_limited.then(|| self.key(LimitKind::BackendRate, backend, None));
        // Narrowest first: a call refused by its tool's limit does not
        // spend the principal's or the backend's allowance.
        if let (Some(q), true) = (self.cfg.principal_tool_rate, mine.tool.is_some()) {
            self.limiter
                .hit(&mine, &q)
                .await
                .map_err(|d| (LimitKind::PrincipalToolRate, d))?;
        }
        let tool = mine.tool.take();
        mine.kind = LimitKind::PrincipalRate;
        if let Some(q) = self.cfg.principal_rate {
            self.limiter
                .hit(&mine, &q)
                .await
                .map_err(|d| (LimitKind::PrincipalRate, d))?;
        }
        if let (Some(q), Some(k)) = (self.cfg.backend_rate, &theirs) {
            self.limiter
                .hit(k, &q)
                .await
                .map_err(|d| (LimitKind::BackendRate, d))?;
        }
        // At most two: the principal's and the backend's.
        let mut slots = Slots::default();
        mine.kind = LimitKind::PrincipalInFlight;
        if let Some(k) = &mut theirs {
            k.kind = LimitKind::BackendInFlight;
        }
        let identified = who.as_ref() != "anon";
        for (key, max) in [
            (
                Some(&mine),
                self.cfg.principal_in_flight.filter(|_| identified),
            ),
            (theirs.as_ref(), self.cfg.backend_in_flight),
        ] {
            let (Some(key), Some(max)) = (key, max) else {
                continue;
            };
            match self.limiter.acquire(key, max).await {
                Some(s) => slots.push(s),
                // In-flight calls end in milliseconds to seconds: a short hint.
                None => return Err((key.kind, Duration::from_millis(100))),
            }
        }
        if let Some(b) = self.cfg.token_budget {
            mine.kind = LimitKind::TokenBudget;
            let args = m.arguments().map_or(0, |a| self.tokens.count(a));
            self.limiter
                .charge(&mine, &b, args, true)
                .await
                .map_err(|d| (LimitKind::TokenBudget, d))?;
        }
        let mut cost = 0;
        if let (Some(b), Some(t)) = (self.cfg.cost_budget, &tool) {
            mine.kind = LimitKind::CostBudget;
            cost = self.cost_of(t);
            self.limiter
                .charge(&mine, &b, cost, true)
                .await
                .map_err(|d| (LimitKind::CostBudget, d))?;
        }
        Ok((slots, cost))
    }
}

impl Shared {
    /// [`Shared::admit`] for a limiter that decides a call's checks in one
    /// go (a shared store: one round trip): the same checks, in the same
    /// order.
    async fn admit_batched(
        &self,
        who: &Arc<str>,
        m: &Message,
        routed: Option<&Arc<str>>,
    ) -> Result<(Slots, u64), (LimitKind, Duration)> {
        let backend = routed.unwrap_or(&self.backend);
        let tool = (m.method() == Some(&Method::ToolsCall))
            .then(|| m.target_text().map(|t| t.as_bytes().clone()))
            .flatten();
        let cfg = &self.cfg;
        let mut checks = Vec::new();
        let mut check = |kind, subject: &Arc<str>, tool: Option<Bytes>, op| {
            checks.push(Check {
                key: self.key(kind, subject, tool),
                op,
            })
        };
        if let (Some(q), Some(t)) = (cfg.principal_tool_rate, &tool) {
            check(
                LimitKind::PrincipalToolRate,
                who,
                Some(t.clone()),
                CheckOp::Hit(q),
            );
        }
        if let Some(q) = cfg.principal_rate {
            check(LimitKind::PrincipalRate, who, None, CheckOp::Hit(q));
        }
        if let Some(q) = cfg.backend_rate {
            check(LimitKind::BackendRate, backend, None, CheckOp::Hit(q));
        }
        if let Some(max) = cfg.principal_in_flight.filter(|_| who.as_ref() != "anon") {
            check(
                LimitKind::PrincipalInFlight,
                who,
                None,
                CheckOp::Acquire(max),
            );
        }
        if let Some(max) = cfg.backend_in_flight {
            check(
                LimitKind::BackendInFlight,
                backend,
                None,
                CheckOp::Acquire(max),
            );
        }
        if let Some(b) = cfg.token_budget {
            let args = m.arguments().map_or(0, |a| self.tokens.count(a));
            check(LimitKind::TokenBudget, who, None, CheckOp::Charge(b, args));
        }
        let mut cost = 0;
        if let (Some(b), Some(t)) = (cfg.cost_budget, &tool) {
            cost = self.cost_of(t);
            check(LimitKind::CostBudget, who, None, CheckOp::Charge(b, cost));
        }
        if checks.is_empty() {
            return Ok((Slots::default(), 0));
        }
        let kinds: Vec<LimitKind> = checks.iter().map(|c| c.key.kind).collect();
        match self.limiter.check_all(checks).await {
            Ok(held) => {
                let mut slots = Slots::default();
                for s in held {
                    slots.push(s);
                }
                Ok((slots, cost))
            }
            Err((i, retry)) => Err((kinds[i], retry)),
        }
    }
}

impl<S> Service<Request<Body>> for Limit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The calls the per-client cap alone decides (the default
        // configuration) take no box: the inner future is polled in place.
        if self.shared.in_flight_only {
            if let Some(parsed) = req.extensions().get::<McpRequest>() {
                if !parsed.is_initialize() {
                    let who = limit_subject(&req);
                    let routed = req.extensions().get::<Routed>().map(Routed::backend);
                    match in_flight_only(&self.shared, who, parsed, routed) {
                        Fast::Uncounted => return ResponseFuture::inner(self.inner.call(req)),
                        Fast::Refused(res) => return ResponseFuture::ready(res),
                        Fast::Held(slots) => {
                            return ResponseFuture::held(self.inner.call(req), slots)
                        }
                        // A limiter that has to wait: the general path.
                        Fast::Waits => {}
                    }
                }
            }
        }
        ResponseFuture::boxed(self.call_boxed(req))
    }
}

impl<S> Limit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    /// Every other call: `initialize`, batches, rates and budgets, a
    /// limiter that answers later.
    fn call_boxed(&mut self, req: Request<Body>) -> BoxFuture {
        // The request's parse, borrowed: cloned only on the paths that keep it.
        let Some(parsed) = req.extensions().get::<McpRequest>() else {
            return Box::pin(self.inner.call(req));
        };
        let who = limit_subject(&req);
        if parsed.is_initialize() {
            let mcp = parsed.clone();
            let shared = self.shared.clone();
            let mut req = req;
            SessionHooks::add(&mut req, &self.hook);
            let inner = take_ready(&mut self.inner);
            return Box::pin(async move { initialize(&shared, &who, &mcp, inner, req).await });
        }
        let mcp = parsed.clone();
        let shared = self.shared.clone();
        // Decide here when the limiter answers at once (in process): the
        // future then holds only the wait for the response, calling the
        // service polled ready as it is (no clone of the stack below: see
        // `Audit::call`). A shared store's answers are awaited.
        let (s2, w2) = (shared.clone(), who.clone());
        let routed = req
            .extensions()
            .get::<Routed>()
            .map(|r| r.backend().clone());
        let mut admit = Box::pin(async move { admit_all(&s2, &w2, &mcp, routed.as_ref()).await });
        // One clock reading for all the checks that do not wait.
        match clock::pinned(|| crate::body::poll_once(&mut admit)) {
            Poll::Ready(Ok(None)) => Box::pin(self.inner.call(req)),
            Poll::Ready(Ok(Some(admitted))) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let res = fut.await?;
                    Ok(hold(shared, who, res, admitted))
                })
            }
            Poll::Ready(Err(refused)) => Box::pin(std::future::ready(Ok(refused))),
            Poll::Pending => {
                let mut inner = take_ready(&mut self.inner);
                Box::pin(async move {
                    let admitted = match admit.await {
                        Ok(None) => return inner.call(req).await,
                        Ok(Some(a)) => a,
                        Err(refused) => return Ok(refused),
                    };
                    let res = inner.call(req).await?;
                    Ok(hold(shared, who, res, admitted))
                })
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The [`Limit`] service's future: the inner future polled in place
    /// (with the slots its answer will hold), a refusal, or a boxed future
    /// for the paths that wait on the limiter.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] fut: F, slots: Option<[Option<Slot>; 2]> },
        Ready { res: Option<Response<Body>> },
        Boxed { fut: BoxFuture },
    }
}

impl<F> ResponseFuture<F> {
    fn inner(fut: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { fut, slots: None },
        }
    }
    fn held(fut: F, slots: [Option<Slot>; 2]) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                fut,
                slots: Some(slots),
            },
        }
    }
    fn ready(res: Response<Body>) -> Self {
        ResponseFuture {
            kind: Kind::Ready { res: Some(res) },
        }
    }
    fn boxed(fut: BoxFuture) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { fut },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut, slots } => {
                let res = std::task::ready!(fut.poll(cx))?;
                Poll::Ready(Ok(match slots.take() {
                    Some(s) => hold_slots(res, s),
                    None => res,
                }))
            }
            KindProj::Ready { res } => Poll::Ready(Ok(res
                .take()
                .expect("ResponseFuture polled after it completed"))),
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// What the in-flight-only check decided.
enum Fast {
    /// Nothing in the request is counted.
    Uncounted,
    /// The slots to hold until the answer ends (a principal's and a
    /// backend's at most).
    Held([Option<Slot>; 2]),
    /// The refusal to answer with.
    Refused(Response<Body>),
    /// The limiter did not answer at once.
    Waits,
}

/// The check when the only call limits are caps on calls in flight (the
/// per-client cap of the defaults): one message, its slots taken from a
/// limiter that answers at once, no future, no clock; anything else goes
/// the general way.
fn in_flight_only(
    shared: &Shared,
    who: Arc<str>,
    mcp: &McpRequest,
    routed: Option<&Arc<str>>,
) -> Fast {
    let Some(m) = mcp.message() else {
        return Fast::Waits;
    };
    if !shared.counted(m) {
        return Fast::Uncounted;
    }
    let identified = who.as_ref() != "anon";
    let mut slots: [Option<Slot>; 2] = [None, None];
    let mut key = LimitKey {
        kind: LimitKind::PrincipalInFlight,
        subject: who,
        tool: None,
    };
    for (i, (max, kind)) in [
        (
            shared.cfg.principal_in_flight.filter(|_| identified),
            LimitKind::PrincipalInFlight,
        ),
        (shared.cfg.backend_in_flight, LimitKind::BackendInFlight),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(max) = max else { continue };
        key.kind = kind;
        if kind == LimitKind::BackendInFlight {
            key.subject = routed.unwrap_or(&shared.backend).clone();
        }
        match shared.limiter.acquire(&key, max).now() {
            Ok(Some(s)) => slots[i] = Some(s),
            Ok(None) => {
                return Fast::Refused(call_refusal(kind, Duration::from_millis(100), m.id()));
            }
            // Given back by the drop of what was taken so far.
            Err(_) => return Fast::Waits,
        }
    }
    if slots.iter().all(Option::is_none) {
        Fast::Uncounted
    } else {
        Fast::Held(slots)
    }
}

/// What the admitted messages of a request took: slots and cost.
pub(crate) struct Admitted {
    pub(crate) slots: Slots,
    pub(crate) cost: u64,
}

/// Checks every counted message of `mcp`. `Ok(None)`: nothing counted;
/// `Err`: the refusal to answer with.
async fn admit_all(
    shared: &Shared,
    who: &Arc<str>,
    mcp: &McpRequest,
    routed: Option<&Arc<str>>,
) -> Result<Option<Admitted>, Response<Body>> {
    let mut admitted = Admitted {
        slots: Slots::default(),
        cost: 0,
    };
    let mut counted = false;
    for m in mcp.envelope().messages() {
        if !shared.counted(m) {
            continue;
        }
        counted = true;
        match shared.admit(who, m, routed).await {
            Ok((s, c)) => {
                // One message (the usual case): its slots as they are.
                if admitted.slots.is_empty() {
                    admitted.slots = s;
                } else {
                    admitted.slots.append(s);
                }
                admitted.cost += c;
            }
            Err((kind, retry)) => {
                return Err(call_refusal(kind, retry, m.id()));
            }
        }
    }
    Ok(counted.then_some(admitted))
}
