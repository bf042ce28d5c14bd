//! Checks of the parsed message against its head (2026-07-28 `Mcp-Method` / `Mcp-Name`, versions).

#[allow(unused_imports)]
use super::*;

/// One header's value for the 2026-07-28 checks: repeated or non-text
/// values are reported as invalid rather than resolved one way or another.
fn single<'a>(h: &'a HeaderMap, name: &http::HeaderName) -> HeaderValue<'a> {
    let mut it = h.get_all(name).iter();
    match (it.next(), it.next()) {
        (None, _) => HeaderValue::Absent,
        (Some(v), None) => v.to_str().map_or(HeaderValue::Invalid, HeaderValue::One),
        (Some(_), Some(_)) => HeaderValue::Invalid,
    }
}

pub(crate) fn validate(
    h: &HeaderMap,
    body: Bytes,
    envelope: Envelope,
    header_version: Option<ProtocolVersion>,
) -> Result<McpRequest, GatewayError> {
    let first = &envelope.messages()[0];
    let version = match header_version {
        Some(v) => v,
        None => {
            if first.meta_protocol_version() == Some(ProtocolVersion::V2026_07_28.as_str()) {
                return Err(GatewayError::new(
                    ErrorKind::HeaderMismatch,
                    "missing MCP-Protocol-Version header (required on 2026-07-28)",
                )
                .with_data(&serde_json::json!({ "header": "MCP-Protocol-Version" })));
            }
            // An initialize request names its version in the body; anything
            // else without the header is 2025-03-26 by the spec's rule.
            first
                .initialize_protocol_version()
                .and_then(ProtocolVersion::parse)
                .filter(|v| *v != ProtocolVersion::V2026_07_28)
                .unwrap_or(ProtocolVersion::DEFAULT_WITHOUT_HEADER)
        }
    };
    if let Envelope::Batch(msgs) = &envelope {
        if !version.allows_batch() {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                format!("JSON-RPC batches are not supported on protocol version {version}"),
            ));
        }
        if msgs.iter().any(|m| m.is_initialize()) && msgs.len() > 1 {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "initialize must not be part of a batch",
            ));
        }
    }
    if version == ProtocolVersion::V2026_07_28 && !first.is_initialize() {
        check_stateless_headers(
            first,
            single(h, &header_names::MCP_METHOD),
            single(h, &header_names::MCP_NAME),
            version,
        )?;
    }
    Ok(McpRequest::new(
        body,
        envelope,
        version,
        header_version.is_some(),
    ))
}
