//! Header hygiene between the client's hop and the backend's.

use http::header::{self, HeaderName};
use http::HeaderMap;

/// Headers meaningful for one hop only (RFC 9110 §7.6.1), plus the client's
/// credentials, which never travel past the gateway.
pub(crate) const STRIP: [HeaderName; 10] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
];

/// Whether `n` names a hop-by-hop header (RFC 9110 §7.6.1, plus the two
/// pre-standard ones still seen in the wild).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    STRIP[..7].contains(n) || n == "keep-alive" || n == "proxy-connection"
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names that are there is
    // cheaper than nine hashed removals of names that are not.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &STRIP[..7] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// Removes the client's credentials (`Authorization`, `Cookie`): tokens
/// stop at the gateway.
pub(crate) fn strip_client_credentials(h: &mut HeaderMap) {
    for n in &STRIP[8..] {
        h.remove(n);
    }
}

/// Prepares a request's headers for the backend: hop-by-hop fields, the
/// client's `Host` and its credentials removed.
pub(crate) fn for_backend(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
    for n in &STRIP[7..] {
        h.remove(n);
    }
}
