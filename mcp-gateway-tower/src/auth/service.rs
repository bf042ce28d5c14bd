//! [`Auth`]: the service, which admits or refuses each request.

#[allow(unused_imports)]
use super::*;

/// The authentication service. See the module docs.
#[derive(Clone)]
pub struct Auth<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S> Auth<S> {
    inner_accessors!();
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

fn refuse(kind: ErrorKind, msg: String, challenge: HeaderValue) -> Response<Body> {
    let mut res = error_response(&GatewayError::new(kind, msg), None);
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    res
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let (parts, body) = req.into_parts();
        if parts.uri.query().is_some_and(query_has_credential) {
            return Box::pin(std::future::ready(Ok(refuse(
                ErrorKind::InvalidRequest,
                "credentials in the query string are not accepted; send Authorization: Bearer"
                    .into(),
                challenge(
                    &shared.cfg,
                    Some("invalid_request"),
                    Some("credentials in the query string are not accepted"),
                ),
            ))));
        }
        // Known at once, or (`None`) pending: the pending answer borrows
        // the head, which the task must own, so it is dropped here and
        // asked again there (answers are lazy until polled).
        let decided = shared.authenticator.authenticate(&parts).now().ok();
        if let Some(outcome) = decided {
            // Decided at once: no future holds the request while it waits.
            return match admit(shared, parts, outcome) {
                Ok((parts, principal)) => {
                    // The service polled ready, as it is: no clone of the
                    // stack below (see `Audit::call`).
                    let fut = self.inner.call(Request::from_parts(parts, body));
                    Box::pin(async move { fut.await.map(|res| with_principal(res, principal)) })
                }
                Err(refused) => Box::pin(std::future::ready(Ok(refused))),
            };
        }
        let mut inner = take_ready(&mut self.inner);
        let shared = shared.clone();
        Box::pin(async move {
            let outcome = shared.authenticator.authenticate(&parts).await;
            match admit(&shared, parts, outcome) {
                Ok((parts, principal)) => inner
                    .call(Request::from_parts(parts, body))
                    .await
                    .map(|res| with_principal(res, principal)),
                Err(refused) => Ok(refused),
            }
        })
    }
}

/// Acts on what the authenticator said: the request's head, made ready to
/// go on (the principal in its extensions, the credentials removed), and
/// the principal; or the refusal to answer with.
#[allow(clippy::result_large_err)]
fn admit(
    shared: &Shared,
    mut parts: Parts,
    outcome: AuthOutcome,
) -> Result<(Parts, Option<Principal>), Response<Body>> {
    let principal = match outcome {
        AuthOutcome::Authenticated(p) => Some(p),
        AuthOutcome::NotMine if shared.cfg.allow_anonymous => None,
        AuthOutcome::NotMine => {
            return Err(refuse(
                ErrorKind::Unauthorized,
                "Unauthorized: a credential is required".into(),
                shared.challenge.clone(),
            ))
        }
        AuthOutcome::Rejected(f) => {
            tracing::info!(reason = %f.description, "credential refused");
            return Err(refuse(
                ErrorKind::Unauthorized,
                format!("Unauthorized: {}", f.description),
                challenge(&shared.cfg, Some("invalid_token"), Some(&f.description)),
            ));
        }
    };
    if let Some(p) = &principal {
        if let Some(missing) = shared.cfg.required_scopes.iter().find(|s| !p.has_scope(s)) {
            return Err(refuse(
                ErrorKind::InsufficientScope,
                format!("Forbidden: the token lacks the scope {missing}"),
                challenge(
                    &shared.cfg,
                    Some("insufficient_scope"),
                    Some(&format!("the scope {missing} is required")),
                ),
            ));
        }
        // Its key is also the owner of the sessions it starts.
        parts.extensions.insert(p.clone());
    }
    for h in &shared.strip {
        parts.headers.remove(h);
    }
    parts.headers.remove(header::COOKIE);
    Ok((parts, principal))
}

/// `res` with the caller's principal, for layers outside this one (the
/// audit log).
fn with_principal(mut res: Response<Body>, principal: Option<Principal>) -> Response<Body> {
    if let Some(p) = principal {
        res.extensions_mut().insert(p);
    }
    res
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
