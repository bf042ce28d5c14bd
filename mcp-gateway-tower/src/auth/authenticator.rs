//! The [`Authenticator`] trait and what it answers.

#[allow(unused_imports)]
use super::*;

/// What an authenticator made of a request.
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    /// The credential verified: this is the caller.
    Authenticated(Principal),
    /// This authenticator does not handle the credential (or there is
    /// none for it): ask the next one.
    NotMine,
    /// The credential is this authenticator's kind and does not verify.
    Rejected(AuthFailure),
}

/// Why a credential was refused. The description goes to the client in
/// `WWW-Authenticate` (keep secrets out of it) and to the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// A short reason: "expired token", "bad signature", …
    pub description: String,
}

impl AuthFailure {
    /// A failure with `description`.
    pub fn new(description: impl Into<String>) -> Self {
        AuthFailure {
            description: description.into(),
        }
    }
}

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'a>>;

/// Turns a request's credential into a [`Principal`].
///
/// Implement it for your own scheme; it sees the request head only (the
/// body is not read yet, so a refusal costs nothing).
pub trait Authenticator: Send + Sync + 'static {
    /// Decides on the request head.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a>;

    /// Decides at once, without a future, when that needs no waiting (a
    /// credential seen lately, or none of this authenticator's kind);
    /// `None` sends the request to [`authenticate`](Self::authenticate).
    /// Must agree with it. The default always says `None`.
    ///
    /// Why: most calls carry a token verified a moment ago, and answering
    /// them here spares the layer a boxed future and a suspended state.
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        let _ = parts;
        None
    }

    /// Header names holding credentials this authenticator reads; the
    /// layer removes them before the request goes on. `Authorization`
    /// is always removed.
    fn credential_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        (**self).authenticate(parts)
    }
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        (**self).authenticate_now(parts)
    }
    fn credential_headers(&self) -> Vec<HeaderName> {
        (**self).credential_headers()
    }
}
