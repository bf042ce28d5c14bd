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

/// Turns a request's credential into a [`Principal`].
///
/// Implement it for your own scheme; it sees the request head only (the
/// body is not read yet, so a refusal costs nothing). Answer at once
/// ([`Answer::ready`]) when no waiting is needed (a key lookup, a token
/// verified a moment ago, a request with no credential of your kind): the
/// layer then decides in the same poll. Answer with [`Answer::pending`]
/// for work that waits (a JWKS fetch, an introspection call); the future
/// must be lazy (see [`Answer`]).
pub trait Authenticator: Send + Sync + 'static {
    /// Decides on the request head.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> Answer<'a, AuthOutcome>;

    /// Header names holding credentials this authenticator reads; the
    /// layer removes them before the request goes on. `Authorization`
    /// is always removed.
    fn credential_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> Answer<'a, AuthOutcome> {
        (**self).authenticate(parts)
    }
    fn credential_headers(&self) -> Vec<HeaderName> {
        (**self).credential_headers()
    }
}
