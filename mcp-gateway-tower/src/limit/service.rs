//! [`Limit`]: the service, which admits or refuses each call.

#[allow(unused_imports)]
use super::*;

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
        Some(a) => format!("anon:{}", a.0.ip()).into(),
        None => Arc::from("anon"),
    }
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
    ) -> Result<(Slots, u64), (LimitKind, Duration)> {
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
        let mut theirs =
            backend_limited.then(|| self.key(LimitKind::BackendRate, &self.backend, None));
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
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let shared = self.shared.clone();
        let Some(mcp) = req.extensions().get::<McpRequest>().cloned() else {
            return Box::pin(self.inner.call(req));
        };
        let who = limit_subject(&req);
        if mcp.is_initialize() {
            let mut req = req;
            SessionHooks::add(&mut req, &self.hook);
            let inner = take_ready(&mut self.inner);
            return Box::pin(async move { initialize(&shared, &who, &mcp, inner, req).await });
        }
        // Decide here when the limiter answers at once (in process): the
        // future then holds only the wait for the response, calling the
        // service polled ready as it is (no clone of the stack below: see
        // `Audit::call`). A shared store's answers are awaited.
        let (s2, w2) = (shared.clone(), who.clone());
        let mut admit = Box::pin(async move { admit_all(&s2, &w2, &mcp).await });
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
        match shared.admit(who, m).await {
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
                // The per-client cap is a 429 with `Retry-After`; call
                // limits refuse the call in JSON-RPC (200).
                let as_kind = if kind == LimitKind::PrincipalInFlight {
                    ErrorKind::TooManyRequests
                } else {
                    ErrorKind::Limited
                };
                return Err(refusal(kind, retry, m.id(), as_kind));
            }
        }
    }
    Ok(counted.then_some(admitted))
}
