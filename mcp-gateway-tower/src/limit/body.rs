//! Limits held in the response body: slots and budgets released or charged when the body ends.

#[allow(unused_imports)]
use super::*;

/// The response of an admitted call: its cost noted for the audit log, its
/// body holding the slots and charging the result's tokens.
pub(crate) fn hold(
    shared: Arc<Shared>,
    who: Arc<str>,
    res: Response<Body>,
    a: Admitted,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    if a.cost > 0 {
        parts.extensions.insert(CostCharged(a.cost));
    }
    let tokens = shared
        .cfg
        .token_budget
        .map(|b| (shared.key(LimitKind::TokenBudget, &who, None), b));
    let charged = tokens.as_ref().map(|_| {
        let c = TokensCharged::default();
        parts.extensions.insert(c.clone());
        c
    });
    let hold = CallHold {
        slots: a.slots,
        tokens,
    };
    Response::from_parts(
        parts,
        Body::new(ObservedBody::new(
            body,
            Held {
                hold,
                shared,
                pending: 0,
                charged,
            },
        )),
    )
}

/// The response of a call that holds only in-flight slots: they go back
/// when its body ends or is dropped.
pub(crate) fn hold_slots(res: Response<Body>, slots: [Option<Slot>; 2]) -> Response<Body> {
    res.map(|body| Body::boxed(ObservedBody::new(body, SlotsHeld(slots))))
}

/// Holds in-flight slots until the body it watches ends.
pub(crate) struct SlotsHeld(pub(crate) [Option<Slot>; 2]);

impl BodyObserver for SlotsHeld {
    fn on_end(&mut self, _: BodyEnd<'_>) {
        self.0 = [None, None];
    }
}

pub(crate) async fn initialize<S>(
    shared: &Arc<Shared>,
    who: &Arc<str>,
    mcp: &McpRequest,
    mut inner: S,
    req: Request<Body>,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let retry = Duration::from_secs(shared.cfg.session_retry_after_secs);
    let identified = who.as_ref() != "anon";
    if let (Some(q), true) = (shared.cfg.principal_session_rate, identified) {
        let key = shared.key(LimitKind::PrincipalSessionRate, who, None);
        if let Err(wait) = shared.limiter.hit(&key, &q).await {
            return Ok(refusal(
                LimitKind::PrincipalSessionRate,
                wait,
                mcp.first_id(),
                ErrorKind::TooManySessions,
            ));
        }
    }
    let mut slots = Slots::default();
    for (kind, max, subject) in [
        (
            LimitKind::PrincipalSessions,
            shared.cfg.principal_sessions.filter(|_| identified),
            who,
        ),
        (
            LimitKind::BackendSessions,
            shared.cfg.backend_sessions,
            &shared.backend,
        ),
    ] {
        let Some(max) = max else { continue };
        match shared
            .limiter
            .acquire(&shared.key(kind, subject, None), max)
            .await
        {
            Some(s) => slots.push(s),
            None => {
                return Ok(refusal(
                    kind,
                    retry,
                    mcp.first_id(),
                    ErrorKind::TooManySessions,
                ));
            }
        }
    }
    let res = inner.call(req).await?;
    if !slots.is_empty() && res.status().is_success() {
        if let Some(sid) = res
            .headers()
            .get(&header_names::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        {
            shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(sid.to_owned(), slots);
        }
    }
    // Otherwise no session started and the slots are released here.
    Ok(res)
}

/// Streamed tokens are charged in batches of this many (and at the end).
const TOKEN_BATCH: u64 = 1024;

/// Watches an admitted call's response body: holds the call's permits
/// until it ends or is dropped, and charges the result's tokens as they
/// pass (in batches, and whatever is left at the end). The end is acted on
/// in the poll that sees it, before the server writes the last bytes: a
/// client that has read the whole answer and calls again at once must
/// find the permit free, and the budget charged.
pub(crate) struct Held {
    pub(crate) hold: CallHold,
    pub(crate) shared: Arc<Shared>,
    pub(crate) pending: u64,
    /// What was charged, for the audit record.
    pub(crate) charged: Option<TokensCharged>,
}

impl Held {
    fn charge(&mut self) {
        let n = std::mem::take(&mut self.pending);
        if let Some(c) = &self.charged {
            c.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        charge_tokens(&self.shared, &self.hold.tokens, n);
    }
}

impl BodyObserver for Held {
    fn on_data(&mut self, data: &Bytes) {
        if self.hold.tokens.is_some() {
            self.pending += self.shared.tokens.count(data);
            if self.pending >= TOKEN_BATCH {
                self.charge();
            }
        }
    }

    fn on_end(&mut self, _: BodyEnd<'_>) {
        self.charge();
        self.hold.slots.release();
    }
}

fn charge_tokens(shared: &Arc<Shared>, tokens: &Option<(LimitKey, Budget)>, n: u64) {
    let Some((key, budget)) = tokens else { return };
    if n == 0 {
        return;
    }
    // An in-process limiter charges at once; a shared store's answer is
    // awaited on a task of its own, without holding up the stream.
    let (shared, key, budget) = (shared.clone(), key.clone(), *budget);
    let mut charge = Box::pin(async move {
        let _ = shared.limiter.charge(&key, &budget, n, false).await;
    });
    if crate::body::poll_once(&mut charge).is_pending() {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(charge);
        } else {
            tracing::warn!("token charge dropped: a shared limiter needs a tokio runtime");
        }
    }
}
