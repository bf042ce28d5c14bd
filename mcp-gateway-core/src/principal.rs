//! Who is calling: the [`Principal`] an authenticator found.
//!
//! Authentication puts one in the request extensions; the session router
//! binds sessions to it, the policy decides by it, the audit sink records
//! it. It is cheap to clone (one `Arc`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// An authenticated caller.
///
/// ```
/// use mcp_gateway_core::Principal;
/// let p = Principal::builder("agent-7")
///     .tenant("acme")
///     .roles(["reader"])
///     .scopes(["tools:call"])
///     .claim("email", "agent7@acme.example")
///     .auth_method("jwt")
///     .build();
/// assert!(p.has_role("reader"));
/// assert!(p.has_scope("tools:call"));
/// assert_eq!(p.claim("email"), Some("agent7@acme.example"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Principal(Arc<Inner>);

#[derive(PartialEq, Eq)]
struct Inner {
    subject: String,
    tenant: Option<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    claims: BTreeMap<String, String>,
    auth_method: &'static str,
    /// `subject` qualified by tenant and method: the session owner key.
    key: Arc<str>,
}

impl Principal {
    /// Starts a principal for `subject`.
    pub fn builder(subject: impl Into<String>) -> PrincipalBuilder {
        PrincipalBuilder {
            subject: subject.into(),
            tenant: None,
            roles: Vec::new(),
            scopes: Vec::new(),
            claims: BTreeMap::new(),
            auth_method: "custom",
        }
    }

    /// The subject (user, agent or service id).
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The tenant, if the credential named one.
    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }

    /// Roles.
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// OAuth scopes.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// Whether the principal has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.0.roles.iter().any(|r| r == role)
    }

    /// Whether the principal has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| s == scope)
    }

    /// A selected claim of the credential (as text).
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.0.claims.get(name).map(String::as_str)
    }

    /// All selected claims.
    pub fn claims(&self) -> &BTreeMap<String, String> {
        &self.0.claims
    }

    /// How the principal was authenticated (`"api_key"`, `"jwt"`, `"mtls"`,
    /// `"anonymous"`, or what a custom authenticator said).
    pub fn auth_method(&self) -> &'static str {
        self.0.auth_method
    }

    /// A stable key for this identity (method, tenant, subject): what a
    /// session is bound to. Two credentials of one subject share it.
    pub fn key(&self) -> &Arc<str> {
        &self.0.key
    }

    /// An equal principal that shares no allocation with this one.
    ///
    /// Clones of one `Principal` share a reference count; on several
    /// threads at once, every clone and drop moves that counter's cache
    /// line between cores. A per-thread cache keeps a detached copy so
    /// that each thread counts its own.
    ///
    /// ```
    /// use mcp_gateway_core::Principal;
    /// let p = Principal::builder("ann").roles(["agent"]).build();
    /// let d = p.detached();
    /// assert_eq!(p, d);
    /// assert!(!std::sync::Arc::ptr_eq(p.key(), d.key()));
    /// ```
    pub fn detached(&self) -> Principal {
        let i = &self.0;
        Principal(Arc::new(Inner {
            subject: i.subject.clone(),
            tenant: i.tenant.clone(),
            roles: i.roles.clone(),
            scopes: i.scopes.clone(),
            claims: i.claims.clone(),
            auth_method: i.auth_method,
            key: Arc::from(&*i.key),
        }))
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.0.subject)
            .field("tenant", &self.0.tenant)
            .field("roles", &self.0.roles)
            .field("scopes", &self.0.scopes)
            .field("auth_method", &self.0.auth_method)
            .finish()
    }
}

/// Builds a [`Principal`].
#[derive(Debug, Clone)]
pub struct PrincipalBuilder {
    subject: String,
    tenant: Option<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    claims: BTreeMap<String, String>,
    auth_method: &'static str,
}

impl PrincipalBuilder {
    /// Sets the tenant.
    pub fn tenant(mut self, t: impl Into<String>) -> Self {
        self.tenant = Some(t.into());
        self
    }

    /// Adds roles.
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, r: I) -> Self {
        self.roles.extend(r.into_iter().map(Into::into));
        self
    }

    /// Adds scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.scopes.extend(s.into_iter().map(Into::into));
        self
    }

    /// Adds a claim.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Names the authentication method.
    pub fn auth_method(mut self, m: &'static str) -> Self {
        self.auth_method = m;
        self
    }

    /// The principal.
    pub fn build(self) -> Principal {
        let key = format!(
            "{}\u{1f}{}\u{1f}{}",
            self.auth_method,
            self.tenant.as_deref().unwrap_or(""),
            self.subject
        );
        Principal(Arc::new(Inner {
            subject: self.subject,
            tenant: self.tenant,
            roles: self.roles,
            scopes: self.scopes,
            claims: self.claims,
            auth_method: self.auth_method,
            key: key.into(),
        }))
    }
}
