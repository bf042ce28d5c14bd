//! [`AuthLayer`] and its settings; `WWW-Authenticate` challenges.

#[allow(unused_imports)]
use super::*;

/// Settings of [`AuthLayer`].
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The absolute URL of this server's RFC 9728 metadata document, sent
    /// in `WWW-Authenticate` so clients can find the authorization server.
    pub resource_metadata: Option<String>,
    /// Scopes every request must carry (403 `insufficient_scope` without).
    pub required_scopes: Vec<String>,
    /// Let requests without any credential through with no principal
    /// (sessions are then shared by all anonymous callers). Off by default.
    pub allow_anonymous: bool,
}

/// Query parameters that carry credentials; refused (RFC 9700 / OAuth 2.1).
const QUERY_CREDENTIALS: [&str; 4] = ["access_token", "api_key", "apikey", "token"];

pub(crate) fn query_has_credential(query: &str) -> bool {
    query.split('&').any(|kv| {
        let k = kv.split('=').next().unwrap_or("");
        QUERY_CREDENTIALS.iter().any(|c| k.eq_ignore_ascii_case(c))
    })
}

/// Builds [`Auth`] services.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) cfg: AuthConfig,
    pub(crate) strip: Vec<HeaderName>,
    pub(crate) challenge: HeaderValue,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("cfg", &self.shared.cfg)
            .finish()
    }
}

impl AuthLayer {
    /// Authenticates with `authenticator`.
    pub fn new(authenticator: impl Authenticator, cfg: AuthConfig) -> Self {
        Self::shared(Arc::new(authenticator), cfg)
    }

    /// Authenticates with a shared authenticator.
    pub fn shared(authenticator: Arc<dyn Authenticator>, cfg: AuthConfig) -> Self {
        let mut strip = authenticator.credential_headers();
        strip.push(header::AUTHORIZATION);
        let challenge = challenge(&cfg, None, None);
        AuthLayer {
            shared: Arc::new(Shared {
                authenticator,
                cfg,
                strip,
                challenge,
            }),
        }
    }
}

/// `Bearer resource_metadata="…", scope="…"[, error="…", error_description="…"]`.
pub(crate) fn challenge(
    cfg: &AuthConfig,
    error: Option<&str>,
    description: Option<&str>,
) -> HeaderValue {
    let mut parts = Vec::new();
    if let Some(m) = &cfg.resource_metadata {
        parts.push(format!("resource_metadata=\"{}\"", quote_safe(m)));
    }
    if !cfg.required_scopes.is_empty() {
        parts.push(format!(
            "scope=\"{}\"",
            quote_safe(&cfg.required_scopes.join(" "))
        ));
    }
    if let Some(e) = error {
        parts.push(format!("error=\"{e}\""));
    }
    if let Some(d) = description {
        parts.push(format!("error_description=\"{}\"", quote_safe(d)));
    }
    let v = if parts.is_empty() {
        "Bearer".to_owned()
    } else {
        format!("Bearer {}", parts.join(", "))
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// Keeps a value inside a quoted-string: no quotes, backslashes or
/// control characters (RFC 6750 limits error_description to printable
/// ASCII without `"` and `\`).
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.shared.clone(),
        }
    }
}
