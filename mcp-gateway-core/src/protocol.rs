//! MCP protocol versions, eras, header names and the 2026-07-28
//! header/body consistency rules.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;

use crate::error::{ErrorKind, GatewayError};
use crate::jsonrpc::{Message, Method};

/// Header names of MCP over HTTP (lower case, as `http` stores them).
pub mod headers {
    /// Session id issued on `initialize` (session eras).
    pub const MCP_SESSION_ID: &str = "mcp-session-id";
    /// Negotiated protocol version, sent on every request after initialization.
    pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
    /// 2026-07-28: the JSON-RPC method, mirrored from the body.
    pub const MCP_METHOD: &str = "mcp-method";
    /// 2026-07-28: the target tool / prompt name or resource URI, mirrored from the body.
    pub const MCP_NAME: &str = "mcp-name";
    /// 2026-07-28: prefix of headers declared by a tool's `x-mcp-header`.
    pub const MCP_PARAM_PREFIX: &str = "mcp-param-";
    /// SSE resumption cursor.
    pub const LAST_EVENT_ID: &str = "last-event-id";
}

/// The names of [`headers`] as [`http::HeaderName`]s: a header map finds
/// these without parsing and lower-casing a string on every lookup, which
/// happens several times per request.
pub mod header_names {
    use http::HeaderName;

    use super::headers;

    /// [`headers::MCP_SESSION_ID`].
    pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static(headers::MCP_SESSION_ID);
    /// [`headers::MCP_PROTOCOL_VERSION`].
    pub const MCP_PROTOCOL_VERSION: HeaderName =
        HeaderName::from_static(headers::MCP_PROTOCOL_VERSION);
    /// [`headers::MCP_METHOD`].
    pub const MCP_METHOD: HeaderName = HeaderName::from_static(headers::MCP_METHOD);
    /// [`headers::MCP_NAME`].
    pub const MCP_NAME: HeaderName = HeaderName::from_static(headers::MCP_NAME);
    /// [`headers::LAST_EVENT_ID`].
    pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static(headers::LAST_EVENT_ID);
}

/// A protocol revision the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// Legacy HTTP+SSE.
    V2024_11_05,
    /// First Streamable HTTP revision.
    V2025_03_26,
    /// Streamable HTTP; batching removed, `MCP-Protocol-Version` header.
    V2025_06_18,
    /// Streamable HTTP; SSE polling and priming events.
    V2025_11_25,
    /// Stateless Streamable HTTP.
    V2026_07_28,
}

impl ProtocolVersion {
    /// Every supported revision, oldest first.
    pub const ALL: [ProtocolVersion; 5] = [
        ProtocolVersion::V2024_11_05,
        ProtocolVersion::V2025_03_26,
        ProtocolVersion::V2025_06_18,
        ProtocolVersion::V2025_11_25,
        ProtocolVersion::V2026_07_28,
    ];

    /// The version assumed when a session-era request carries no header.
    pub const DEFAULT_WITHOUT_HEADER: ProtocolVersion = ProtocolVersion::V2025_03_26;

    /// Parses the wire form (`"2025-11-25"`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "2024-11-05" => ProtocolVersion::V2024_11_05,
            "2025-03-26" => ProtocolVersion::V2025_03_26,
            "2025-06-18" => ProtocolVersion::V2025_06_18,
            "2025-11-25" => ProtocolVersion::V2025_11_25,
            "2026-07-28" => ProtocolVersion::V2026_07_28,
            _ => return None,
        })
    }

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V2024_11_05 => "2024-11-05",
            ProtocolVersion::V2025_03_26 => "2025-03-26",
            ProtocolVersion::V2025_06_18 => "2025-06-18",
            ProtocolVersion::V2025_11_25 => "2025-11-25",
            ProtocolVersion::V2026_07_28 => "2026-07-28",
        }
    }

    /// The transport generation of this revision.
    pub fn era(self) -> Era {
        match self {
            ProtocolVersion::V2024_11_05 => Era::LegacySse,
            ProtocolVersion::V2026_07_28 => Era::Stateless,
            _ => Era::Session,
        }
    }

    /// JSON-RPC batches were removed in 2025-06-18.
    pub fn allows_batch(self) -> bool {
        self <= ProtocolVersion::V2025_03_26
    }

    /// The list of supported versions, for a -32022 error's `data`.
    pub fn supported_strs() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport generation a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    /// 2024-11-05: `GET /sse` plus a `POST` endpoint.
    LegacySse,
    /// 2025-03-26 … 2025-11-25: `initialize`, `Mcp-Session-Id`.
    Session,
    /// 2026-07-28: no session; every request self-contained.
    Stateless,
}

const B64_PREFIX: &str = "=?base64?";
const B64_SUFFIX: &str = "?=";

/// Decodes a 2026-07-28 header value: `=?base64?…?=` wraps values that
/// cannot travel as bare header text. Returns `None` for a sentinel that
/// does not hold valid base64 of UTF-8.
pub fn decode_header_value(raw: &str) -> Option<Cow<'_, str>> {
    match raw
        .strip_prefix(B64_PREFIX)
        .and_then(|inner| inner.strip_suffix(B64_SUFFIX))
    {
        Some(inner) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(inner)
                .ok()?;
            String::from_utf8(bytes).ok().map(Cow::Owned)
        }
        None => Some(Cow::Borrowed(raw)),
    }
}

/// Encodes a value for a 2026-07-28 header, wrapping it in the base64
/// sentinel when it has leading/trailing blanks, control or non-ASCII
/// characters, or already looks like a sentinel.
pub fn encode_header_value(value: &str) -> Cow<'_, str> {
    let b = value.as_bytes();
    let needs = matches!(b.first(), Some(b' ' | b'\t'))
        || matches!(b.last(), Some(b' ' | b'\t'))
        || b.iter().any(|&c| !(0x20..=0x7e).contains(&c))
        || (value.starts_with(B64_PREFIX) && value.ends_with(B64_SUFFIX));
    if needs {
        Cow::Owned(format!(
            "{B64_PREFIX}{}{B64_SUFFIX}",
            base64::engine::general_purpose::STANDARD.encode(value)
        ))
    } else {
        Cow::Borrowed(value)
    }
}

/// Does `method` carry an `Mcp-Name` header on 2026-07-28? Only
/// `tools/call`, `prompts/get` and `resources/read` do; the subscribe pair
/// was removed in that revision, and the backend must answer it with
/// 404 / -32601, which a header check here would mask.
pub fn method_has_name_header(method: &Method) -> bool {
    matches!(
        method,
        Method::ToolsCall | Method::PromptsGet | Method::ResourcesRead
    )
}

/// The 2026-07-28 standard headers of one request, as found on the wire.
///
/// A header sent more than once must be reported by the caller as
/// [`HeaderValue::Invalid`], since an intermediary that resolved
/// duplicates differently could route on a value the backend never sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// Not sent.
    Absent,
    /// Sent once, with this (visible ASCII) text.
    One(&'a str),
    /// Sent more than once, or not valid header text.
    Invalid,
}

/// Checks the 2026-07-28 rules for a request: `Mcp-Method` equals the body
/// method; `Mcp-Name` (for the methods that carry it) equals `params.name` /
/// `params.uri` after base64-sentinel decoding; the `_meta` protocol version
/// equals the `MCP-Protocol-Version` header. Any failure is 400 / -32020.
pub fn check_stateless_headers(
    message: &Message,
    mcp_method: HeaderValue<'_>,
    mcp_name: HeaderValue<'_>,
    header_version: ProtocolVersion,
) -> Result<(), GatewayError> {
    let Some(method) = message.method() else {
        // Responses carry no method; nothing to mirror.
        return Ok(());
    };
    let mismatch = |msg: String, header: &str| {
        GatewayError::new(ErrorKind::HeaderMismatch, msg)
            .with_data(&serde_json::json!({ "header": header }))
    };
    match mcp_method {
        HeaderValue::Absent => {
            return Err(mismatch(
                "missing required Mcp-Method header".into(),
                "Mcp-Method",
            ))
        }
        HeaderValue::Invalid => {
            return Err(mismatch(
                "Mcp-Method header is repeated or not valid header text".into(),
                "Mcp-Method",
            ))
        }
        HeaderValue::One(v) if v != method.as_str() => {
            return Err(mismatch(
                format!(
                    "Mcp-Method header `{v}` does not match body method `{}`",
                    method.as_str()
                ),
                "Mcp-Method",
            ))
        }
        HeaderValue::One(_) => {}
    }
    if method_has_name_header(method) {
        let expected = message.target().unwrap_or("");
        match mcp_name {
            HeaderValue::Absent => {
                return Err(mismatch(
                    format!("missing required Mcp-Name header for `{}`", method.as_str()),
                    "Mcp-Name",
                ))
            }
            HeaderValue::Invalid => {
                return Err(mismatch(
                    "Mcp-Name header is repeated or not valid header text".into(),
                    "Mcp-Name",
                ))
            }
            HeaderValue::One(raw) => match decode_header_value(raw) {
                None => {
                    return Err(mismatch(
                        "Mcp-Name header is not valid base64".into(),
                        "Mcp-Name",
                    ))
                }
                Some(decoded) if decoded != expected => {
                    return Err(mismatch(
                        format!(
                            "Mcp-Name header `{decoded}` does not match body value `{expected}`"
                        ),
                        "Mcp-Name",
                    ))
                }
                Some(_) => {}
            },
        }
    }
    if message.is_request() {
        match message.meta_protocol_version() {
            Some(v) if v == header_version.as_str() => {}
            Some(v) => {
                return Err(mismatch(
                    format!(
                        "_meta protocol version `{v}` does not match MCP-Protocol-Version `{header_version}`"
                    ),
                    "MCP-Protocol-Version",
                ))
            }
            None => {
                return Err(GatewayError::new(
                    ErrorKind::InvalidParams,
                    "missing _meta[\"io.modelcontextprotocol/protocolVersion\"]",
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::Envelope;
    use bytes::Bytes;

    fn msg(json: &str) -> Message {
        match Envelope::parse(Bytes::copy_from_slice(json.as_bytes())).unwrap() {
            Envelope::Single(m) => m,
            Envelope::Batch(_) => panic!("batch"),
        }
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wéather","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

    #[test]
    fn versions_round_trip() {
        for v in ProtocolVersion::ALL {
            assert_eq!(ProtocolVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(ProtocolVersion::parse("2099-01-01"), None);
        assert!(ProtocolVersion::V2025_03_26.allows_batch());
        assert!(!ProtocolVersion::V2025_06_18.allows_batch());
        assert_eq!(ProtocolVersion::V2026_07_28.era(), Era::Stateless);
    }

    #[test]
    fn sentinel_round_trip() {
        for s in [
            "plain",
            " lead",
            "trail ",
            "wéather",
            "=?base64?abc?=",
            "a\r\nb",
        ] {
            let enc = encode_header_value(s);
            assert!(enc.bytes().all(|c| (0x20..=0x7e).contains(&c)));
            assert_eq!(decode_header_value(&enc).unwrap(), s);
        }
        assert!(decode_header_value("=?base64?!!!?=").is_none());
    }

    #[test]
    fn accepts_matching_headers() {
        let m = msg(CALL);
        let name = encode_header_value("wéather");
        check_stateless_headers(
            &m,
            HeaderValue::One("tools/call"),
            HeaderValue::One(&name),
            ProtocolVersion::V2026_07_28,
        )
        .unwrap();
    }

    #[test]
    fn rejects_mismatches() {
        let m = msg(CALL);
        let v = ProtocolVersion::V2026_07_28;
        let cases = [
            (HeaderValue::Absent, HeaderValue::One("x")),
            (HeaderValue::One("tools/list"), HeaderValue::One("wéather")),
            (HeaderValue::One("tools/call"), HeaderValue::Absent),
            (HeaderValue::One("tools/call"), HeaderValue::One("other")),
            (HeaderValue::One("tools/call"), HeaderValue::Invalid),
            (HeaderValue::Invalid, HeaderValue::One("wéather")),
        ];
        for (method, name) in cases {
            let err = check_stateless_headers(&m, method, name, v).unwrap_err();
            assert_eq!(err.code(), -32020, "{method:?} {name:?}");
        }
    }

    #[test]
    fn rejects_meta_version_mismatch() {
        let m = msg(&CALL.replace("2026-07-28", "2025-11-25"));
        let name = encode_header_value("wéather");
        let err = check_stateless_headers(
            &m,
            HeaderValue::One("tools/call"),
            HeaderValue::One(&name),
            ProtocolVersion::V2026_07_28,
        )
        .unwrap_err();
        assert_eq!(err.code(), -32020);
    }
}
