//! Client certificates (mutual TLS): [`ClientCertAuthenticator`].

#[allow(unused_imports)]
use super::*;

/// The verified client certificate of a TLS connection, as the server put
/// it in the request extensions (DER of the leaf certificate, plus the
/// subject and SAN values the server extracted after verification).
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The leaf certificate, DER.
    pub der: Arc<[u8]>,
    /// The subject common name, if any.
    pub common_name: Option<String>,
    /// DNS / URI / email subject alternative names.
    pub sans: Vec<String>,
}

/// A principal from a client certificate the TLS stack already verified
/// (mTLS). The server must put a [`PeerCertificate`] in the request
/// extensions; requests without one are `NotMine`. The subject is the
/// first SAN, else the common name; the certificate's SHA-256 fingerprint
/// is kept as the claim `x5t#S256`.
#[derive(Debug, Clone, Default)]
pub struct ClientCertAuthenticator {
    tenant: Option<String>,
    roles: Vec<String>,
}

impl ClientCertAuthenticator {
    /// Principals with no tenant and no roles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives every certificate principal this tenant.
    pub fn tenant(mut self, t: impl Into<String>) -> Self {
        self.tenant = Some(t.into());
        self
    }

    /// Gives every certificate principal these roles.
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, r: I) -> Self {
        self.roles = r.into_iter().map(Into::into).collect();
        self
    }
}

impl Authenticator for ClientCertAuthenticator {
    /// Always decides at once: the certificate was verified by TLS.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> Answer<'a, AuthOutcome> {
        Answer::ready(match parts.extensions.get::<PeerCertificate>() {
            None => AuthOutcome::NotMine,
            Some(cert) => match cert.sans.first().or(cert.common_name.as_ref()) {
                None => AuthOutcome::Rejected(AuthFailure::new("client certificate names nobody")),
                Some(subject) => {
                    let mut b = Principal::builder(subject.clone())
                        .auth_method("mtls")
                        .roles(self.roles.iter().cloned())
                        .claim("x5t#S256", hex(&Sha256::digest(&cert.der)));
                    if let Some(t) = &self.tenant {
                        b = b.tenant(t.clone());
                    }
                    AuthOutcome::Authenticated(b.build())
                }
            },
        })
    }
}
