//! Checks on the request head: `Accept`, `Content-Type`, `MCP-Protocol-Version`.

#[allow(unused_imports)]
use super::*;

/// The `MCP-Protocol-Version` header, if sent; unknown → -32022.
pub(crate) fn header_version(h: &HeaderMap) -> Result<Option<ProtocolVersion>, GatewayError> {
    let Some(raw) = h.get(&header_names::MCP_PROTOCOL_VERSION) else {
        return Ok(None);
    };
    let s = raw.to_str().unwrap_or("");
    ProtocolVersion::parse(s.trim()).map(Some).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::UnsupportedVersion,
            format!("Unsupported protocol version: {s}"),
        )
        .with_data(&serde_json::json!({
            "supported": ProtocolVersion::supported_strs(),
            "requested": s,
        }))
    })
}

/// Whether `Accept` allows JSON and event streams (directly or by
/// wildcard): what every POST must, read in one pass over the ranges, as
/// bytes (splitting a `str` by `char` patterns cost more than the rest of
/// the check).
pub(crate) fn accepts_json_and_sse(h: &HeaderMap) -> (bool, bool) {
    let (mut json, mut sse) = (false, false);
    for v in h.get_all(ACCEPT) {
        for m in media_ranges(v.as_bytes()) {
            if m == b"*/*" {
                return (true, true);
            }
            json |= m.eq_ignore_ascii_case(b"application/json")
                || m.eq_ignore_ascii_case(b"application/*");
            sse |=
                m.eq_ignore_ascii_case(b"text/event-stream") || m.eq_ignore_ascii_case(b"text/*");
        }
    }
    (json, sse)
}

/// The media types of a header value's comma-separated ranges, without
/// their parameters and surrounding whitespace.
fn media_ranges(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(media_type)
}

/// The media type of one range or `Content-Type` (before any `;`).
fn media_type(v: &[u8]) -> &[u8] {
    v.split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Does `Accept` allow `mime` (directly or by wildcard)?
pub(crate) fn accepts(h: &HeaderMap, mime: &str) -> bool {
    let (ty, _) = mime.split_once('/').unwrap_or((mime, ""));
    h.get_all(ACCEPT).iter().any(|v| {
        media_ranges(v.as_bytes()).any(|m| {
            m.eq_ignore_ascii_case(mime.as_bytes())
                || m == b"*/*"
                || m.strip_suffix(b"/*")
                    .is_some_and(|t| t.eq_ignore_ascii_case(ty.as_bytes()))
        })
    })
}

pub(crate) fn check_post_headers(h: &HeaderMap) -> Result<(), GatewayError> {
    let ct_ok = h
        .get(CONTENT_TYPE)
        .is_some_and(|v| media_type(v.as_bytes()).eq_ignore_ascii_case(b"application/json"));
    if !ct_ok {
        return Err(GatewayError::new(
            ErrorKind::UnsupportedMediaType,
            "Unsupported Media Type: Content-Type must be application/json",
        ));
    }
    if accepts_json_and_sse(h) != (true, true) {
        return Err(GatewayError::new(
            ErrorKind::NotAcceptable,
            "Not Acceptable: Accept must allow both application/json and text/event-stream",
        ));
    }
    Ok(())
}
