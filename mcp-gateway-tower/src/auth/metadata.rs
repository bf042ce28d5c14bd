//! Hex digests, and RFC 9728 protected-resource metadata ([`ProtectedResourceMetadata`]).

#[allow(unused_imports)]
use super::*;

pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// Compares without an early exit, so timing says nothing about where two
/// secrets differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the RFC 9728 protected-resource metadata document.
#[derive(Debug, Clone)]
pub struct ProtectedResourceMetadata {
    body: bytes::Bytes,
}

impl ProtectedResourceMetadata {
    /// Metadata naming `resource` (this MCP endpoint's absolute URL), the
    /// authorization servers that issue tokens for it, and its scopes.
    pub fn new(resource: &str, authorization_servers: &[String], scopes: &[String]) -> Self {
        let doc = serde_json::json!({
            "resource": resource,
            "authorization_servers": authorization_servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
        });
        ProtectedResourceMetadata {
            body: serde_json::to_vec(&doc).unwrap_or_default().into(),
        }
    }
}

impl<B> Service<Request<B>> for ProtectedResourceMetadata {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let mut res = Response::new(Body::full(self.body.clone()));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok(res))
    }
}
