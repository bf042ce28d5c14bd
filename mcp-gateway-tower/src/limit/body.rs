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
    let hold = CallHold {
        slots: a.slots,
        tokens,
    };
    Response::from_parts(
        parts,
        Body::new(HeldBody {
            inner: body,
            hold,
            shared,
            pending: 0,
        }),
    )
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
    let mut slots = Slots::default();
    for (kind, max, subject) in [
        (
            LimitKind::PrincipalSessions,
            shared.cfg.principal_sessions,
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

pin_project_lite::pin_project! {
    /// A response body holding a call's permits until it ends or is
    /// dropped, and charging the result's tokens as they pass (in batches,
    /// and whatever is left when the body ends or is dropped). The end is
    /// acted on in the poll that sees it, before the server writes the last
    /// bytes: a client that has read the whole answer and calls again at
    /// once must find the permit free, and the budget charged.
    struct HeldBody {
        #[pin]
        inner: Body,
        hold: CallHold,
        shared: Arc<Shared>,
        pending: u64,
    }

    impl PinnedDrop for HeldBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let n = std::mem::take(this.pending);
            charge_tokens(this.shared, &this.hold.tokens, n);
        }
    }
}

fn charge_tokens(shared: &Arc<Shared>, tokens: &Option<(LimitKey, Budget)>, n: u64) {
    let Some((key, budget)) = tokens else { return };
    if n == 0 {
        return;
    }
    if shared.limiter.is_local() {
        // A local limiter charges inside `charge`; the ready future only
        // carries the answer, not needed here.
        drop(shared.limiter.charge(key, budget, n, false));
    } else if tokio::runtime::Handle::try_current().is_ok() {
        // A shared store: charge without holding up the stream.
        let (shared, key, budget) = (shared.clone(), key.clone(), *budget);
        tokio::spawn(async move {
            let _ = shared.limiter.charge(&key, &budget, n, false).await;
        });
    }
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        let ended = match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(_)) = (frame.data_ref(), &this.hold.tokens) {
                    *this.pending += this.shared.tokens.count(data);
                    if *this.pending >= TOKEN_BATCH {
                        let n = std::mem::take(this.pending);
                        charge_tokens(this.shared, &this.hold.tokens, n);
                    }
                }
                this.inner.is_end_stream()
            }
            Poll::Ready(_) => true,
            Poll::Pending => false,
        };
        if ended {
            let n = std::mem::take(this.pending);
            charge_tokens(this.shared, &this.hold.tokens, n);
            this.hold.slots.release();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
