//! What a [`ToolPolicy`] decides on: the caller, the backend, the target.

#[allow(unused_imports)]
use super::*;

/// The backend a request went to, by name: in the response extensions for
/// layers outside the ACL (the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendName(pub Arc<str>);

/// What a request wants to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A tool, by name.
    Tool(&'a str),
    /// A prompt, by name.
    Prompt(&'a str),
    /// A resource, by URI.
    Resource(&'a str),
    /// A resource template, by URI template (in `resources/templates/list`).
    ResourceTemplate(&'a str),
}

impl Target<'_> {
    /// `"tool"`, `"prompt"`, `"resource"` or `"resourceTemplate"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Tool(_) => "tool",
            Target::Prompt(_) => "prompt",
            Target::Resource(_) => "resource",
            Target::ResourceTemplate(_) => "resourceTemplate",
        }
    }

    /// The name or URI.
    pub fn name(&self) -> &str {
        match self {
            Target::Tool(n)
            | Target::Prompt(n)
            | Target::Resource(n)
            | Target::ResourceTemplate(n) => n,
        }
    }
}

/// One question to a policy.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// Who asks (`None`: no authentication layer, or anonymous allowed).
    pub principal: Option<&'a Principal>,
    /// The backend's name.
    pub backend: &'a str,
    /// The JSON-RPC method (`tools/call`, `tools/list`, …).
    pub method: &'a str,
    /// What is used or listed.
    pub target: Target<'a>,
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused; the reason (if any) is logged, not sent to the client.
    Deny(Option<String>),
}

impl Decision {
    /// Whether this is [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Decides who may use what. Called on the request path for every guarded
/// call and for every item of a list result: keep it fast and
/// non-blocking (precompute; swap whole policies atomically).
pub trait ToolPolicy: Send + Sync + 'static {
    /// The decision for one access.
    fn check(&self, access: &Access<'_>) -> Decision;
}

impl<F> ToolPolicy for F
where
    F: Fn(&Access<'_>) -> Decision + Send + Sync + 'static,
{
    fn check(&self, access: &Access<'_>) -> Decision {
        self(access)
    }
}

impl<P: ToolPolicy + ?Sized> ToolPolicy for Arc<P> {
    fn check(&self, access: &Access<'_>) -> Decision {
        (**self).check(access)
    }
}
