//! The JSON-RPC 2.0 envelope, parsed without building a `serde_json::Value`.
//!
//! Only what routing needs is decoded: the message kind, the id (kept
//! verbatim as its JSON text), the method and, for the methods that name a
//! target, `params.name` / `params.uri`, plus the `_meta` protocol version of
//! 2026-07-28. Every decoded string that has no escapes is a zero-copy slice
//! of the original body [`Bytes`]; the body itself is never re-serialised.
//! The body is read in one pass by a strict JSON scanner of this crate
//! (RFC 8259, nesting limited to 128), not through serde's visitors, which
//! cost twice as much on a small `tools/call`. A member that routing reads
//! and that appears twice is refused (-32600): the backend might read the
//! other copy.
//!
//! ```
//! use bytes::Bytes;
//! use mcp_gateway_core::jsonrpc::{Envelope, Method};
//!
//! let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#);
//! let Envelope::Single(msg) = Envelope::parse(body).unwrap() else { unreachable!() };
//! assert_eq!(msg.method(), Some(&Method::ToolsCall));
//! assert_eq!(msg.target(), Some("echo"));
//! assert_eq!(msg.id().unwrap().as_bytes(), b"7");
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use crate::error::{ErrorKind, GatewayError};
use crate::json_scan::{Kind, ScanError, Scanner};

/// UTF-8 text that shares the body's buffer when it can.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Text(Bytes);

impl Text {
    fn from_cow(body: &Bytes, s: Cow<'_, str>) -> Text {
        match s {
            Cow::Borrowed(b) => Text(body.slice_ref(b.as_bytes())),
            Cow::Owned(o) => Text(Bytes::from(o)),
        }
    }

    /// Wraps a static string.
    pub fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// The UTF-8 bytes, sharing the body's buffer (a clone is a reference
    /// count, not a copy).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Always built from a `str`, so this never fails; no `unsafe` needed.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A JSON-RPC id: a number or a string, kept as its exact JSON text so the
/// response can echo it byte for byte.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Bytes);

impl RequestId {
    /// The JSON text (`7`, `"abc"`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Builds an id from JSON text; `None` unless it is a number or string.
    pub fn from_raw_json(raw: &[u8]) -> Option<RequestId> {
        let mut sc = Scanner::new(std::str::from_utf8(raw).ok()?);
        let v = sc.raw().ok()?;
        sc.finish().ok()?;
        id_kind_ok(v).then(|| RequestId(Bytes::copy_from_slice(v.as_bytes())))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

fn id_kind_ok(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

macro_rules! methods {
    ($($variant:ident => $name:literal,)*) => {
        /// A JSON-RPC method: the MCP ones the gateway routes on, or any other.
        #[derive(Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Method {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
            /// Any other method, verbatim.
            Other(Text),
        }

        impl Method {
            fn from_text(body: &Bytes, s: Cow<'_, str>) -> Method {
                match s.as_ref() {
                    $($name => Method::$variant,)*
                    _ => Method::Other(Text::from_cow(body, s)),
                }
            }

            /// Parses a method name (allocates only for unknown methods).
            pub fn parse(s: &str) -> Method {
                match s {
                    $($name => Method::$variant,)*
                    _ => Method::Other(Text(Bytes::copy_from_slice(s.as_bytes()))),
                }
            }

            /// The method name.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Method::$variant => $name,)*
                    Method::Other(t) => t.as_str(),
                }
            }

            /// The name of a method MCP defines, with no borrow (`None`
            /// for [`Method::Other`]).
            pub fn static_name(&self) -> Option<&'static str> {
                match self {
                    $(Method::$variant => Some($name),)*
                    Method::Other(_) => None,
                }
            }
        }
    };
}

methods! {
    Initialize => "initialize",
    Initialized => "notifications/initialized",
    Ping => "ping",
    ServerDiscover => "server/discover",
    ToolsList => "tools/list",
    ToolsCall => "tools/call",
    PromptsList => "prompts/list",
    PromptsGet => "prompts/get",
    ResourcesList => "resources/list",
    ResourcesTemplatesList => "resources/templates/list",
    ResourcesRead => "resources/read",
    ResourcesSubscribe => "resources/subscribe",
    ResourcesUnsubscribe => "resources/unsubscribe",
    SubscriptionsListen => "subscriptions/listen",
    CompletionComplete => "completion/complete",
    LoggingSetLevel => "logging/setLevel",
    Cancelled => "notifications/cancelled",
    Progress => "notifications/progress",
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four shapes of a JSON-RPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result`.
    Response,
    /// Has `id` and `error`.
    Error,
}

/// One parsed JSON-RPC message: only the routing fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    kind: MessageKind,
    id: Option<RequestId>,
    method: Option<Method>,
    target: Option<Text>,
    meta_version: Option<Text>,
    initialize_version: Option<Text>,
    arguments: Option<Bytes>,
}

impl Message {
    /// The raw JSON of `params.arguments` of a `tools/call` or
    /// `prompts/get`, sharing the body's buffer.
    pub fn arguments(&self) -> Option<&Bytes> {
        self.arguments.as_ref()
    }

    /// Request, notification, response or error.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }
    /// The id (requests, responses; errors may carry none).
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }
    /// The method (requests and notifications).
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }
    /// `params.name` for `tools/call` / `prompts/get`; `params.uri` for
    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe`.
    pub fn target(&self) -> Option<&str> {
        self.target.as_ref().map(Text::as_str)
    }
    /// [`Message::target`] as shared [`Text`] (no copy).
    pub fn target_text(&self) -> Option<&Text> {
        self.target.as_ref()
    }
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` (2026-07-28).
    pub fn meta_protocol_version(&self) -> Option<&str> {
        self.meta_version.as_ref().map(Text::as_str)
    }
    /// `params.protocolVersion` of an `initialize` request.
    pub fn initialize_protocol_version(&self) -> Option<&str> {
        self.initialize_version.as_ref().map(Text::as_str)
    }
    /// Is this a request (expects a response)?
    pub fn is_request(&self) -> bool {
        self.kind == MessageKind::Request
    }
    /// Is this the `initialize` request?
    pub fn is_initialize(&self) -> bool {
        self.kind == MessageKind::Request && self.method == Some(Method::Initialize)
    }
}

/// A parsed POST body: one message or (2025-03-26 and older) a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A single message.
    Single(Message),
    /// A JSON array of messages.
    Batch(Vec<Message>),
}

impl Envelope {
    /// Parses a body. The returned strings borrow `body`'s buffer.
    ///
    /// Errors: invalid JSON → -32700; valid JSON of the wrong shape
    /// (missing `jsonrpc: "2.0"`, an id that is not a number or string, a
    /// message that is neither request, notification nor response, an empty
    /// batch) → -32600.
    pub fn parse(body: Bytes) -> Result<Envelope, GatewayError> {
        let Ok(text) = std::str::from_utf8(&body) else {
            return Err(GatewayError::new(
                ErrorKind::Parse,
                "parse error: body is not UTF-8",
            ));
        };
        let mut sc = Scanner::new(text);
        if sc.peek_kind().map_err(scan_error)? != Kind::Array {
            let wire = Wire::scan(&mut sc).map_err(scan_error)?;
            sc.finish().map_err(scan_error)?;
            return Ok(Envelope::Single(wire.into_message(&body)?));
        }
        let mut wires = Vec::new();
        sc.array(|sc| {
            wires.push(Wire::scan(sc)?);
            Ok(())
        })
        .map_err(scan_error)?;
        if wires.is_empty() {
            sc.shape_error("empty JSON-RPC batch");
        }
        sc.finish().map_err(scan_error)?;
        let msgs: Result<Vec<_>, _> = wires.into_iter().map(|w| w.into_message(&body)).collect();
        Ok(Envelope::Batch(msgs?))
    }

    /// The messages, one or many.
    pub fn messages(&self) -> &[Message] {
        match self {
            Envelope::Single(m) => std::slice::from_ref(m),
            Envelope::Batch(v) => v,
        }
    }

    /// The single message, if this is not a batch.
    pub fn single(&self) -> Option<&Message> {
        match self {
            Envelope::Single(m) => Some(m),
            Envelope::Batch(_) => None,
        }
    }

    /// The first id in the body: what an error about the whole body answers.
    pub fn first_id(&self) -> Option<&RequestId> {
        self.messages().iter().find_map(Message::id)
    }

    /// Does the body hold at least one request (so a response is owed)?
    pub fn has_request(&self) -> bool {
        self.messages().iter().any(Message::is_request)
    }
}

fn scan_error(e: ScanError) -> GatewayError {
    match e {
        ScanError::Syntax(m) => GatewayError::new(ErrorKind::Parse, format!("parse error: {m}")),
        ScanError::Shape(m) => {
            GatewayError::new(ErrorKind::InvalidRequest, format!("invalid request: {m}"))
        }
    }
}

/// The members of one message that routing needs. `id`, `result` and
/// `error` are raw JSON text (`null` included, so that an `"id": null`
/// request is refused rather than taken for a notification); the strings
/// are decoded, borrowing the body when they hold no escape.
#[derive(Default)]
struct Wire<'a> {
    jsonrpc: Option<Cow<'a, str>>,
    id: Option<&'a str>,
    method: Option<Cow<'a, str>>,
    params: Option<Params<'a>>,
    result: Option<&'a str>,
    error: Option<&'a str>,
}

/// The few `params` members routing needs; everything else is skipped.
#[derive(Default)]
struct Params<'a> {
    name: Option<Cow<'a, str>>,
    uri: Option<Cow<'a, str>>,
    protocol_version: Option<Cow<'a, str>>,
    meta_version: Option<Cow<'a, str>>,
    arguments: Option<&'a str>,
    /// Members already read: a repeated one is refused, since the backend
    /// might read the other copy (say, of the tool name the policy saw).
    seen: [bool; 5],
}

/// Sets a member seen for the first time; a repeated member is a shape
/// error (its value is still read, so the scan goes on).
fn once<T>(sc: &mut Scanner<'_>, slot: &mut Option<T>, seen: &mut bool, value: Option<T>) {
    if std::mem::replace(seen, true) {
        sc.shape_error("duplicate member in a JSON-RPC message");
    }
    *slot = value;
}

/// A string member, or `null` (absent); another type is a shape error.
fn opt_string<'a>(sc: &mut Scanner<'a>) -> Result<Option<Cow<'a, str>>, ScanError> {
    match sc.peek_kind()? {
        Kind::String => sc.string().map(Some),
        Kind::Null => sc.skip().map(|()| None),
        _ => {
            sc.shape_error("a JSON-RPC member has the wrong type");
            sc.skip().map(|()| None)
        }
    }
}

/// An object member, or `null` (absent); another type is a shape error.
/// Returns whether `read` walked an object.
fn opt_object<'a>(
    sc: &mut Scanner<'a>,
    read: impl FnMut(&mut Scanner<'a>, Cow<'a, str>) -> Result<(), ScanError>,
) -> Result<bool, ScanError> {
    match sc.peek_kind()? {
        Kind::Object => sc.object(read).map(|()| true),
        Kind::Null => sc.skip().map(|()| false),
        // By-position params: nothing routing reads.
        Kind::Array => sc.skip().map(|()| false),
        _ => {
            sc.shape_error("a JSON-RPC member has the wrong type");
            sc.skip().map(|()| false)
        }
    }
}

impl<'a> Wire<'a> {
    /// Reads one message; anything but an object is a shape error.
    fn scan(sc: &mut Scanner<'a>) -> Result<Wire<'a>, ScanError> {
        let mut w = Wire::default();
        if sc.peek_kind()? != Kind::Object {
            sc.shape_error("a JSON-RPC message must be an object");
            sc.skip()?;
            return Ok(w);
        }
        let mut seen = [false; 6];
        sc.object(|sc, key| {
            match key.as_ref() {
                "jsonrpc" => {
                    let v = opt_string(sc)?;
                    once(sc, &mut w.jsonrpc, &mut seen[0], v);
                }
                "id" => {
                    let v = sc.raw()?;
                    once(sc, &mut w.id, &mut seen[1], Some(v));
                }
                "method" => {
                    let v = opt_string(sc)?;
                    once(sc, &mut w.method, &mut seen[2], v);
                }
                "params" => {
                    let mut p = Params::default();
                    let got = opt_object(sc, |sc, key| p.member(sc, key))?;
                    once(sc, &mut w.params, &mut seen[3], got.then_some(p));
                }
                "result" => {
                    let v = sc.raw()?;
                    once(sc, &mut w.result, &mut seen[4], Some(v));
                }
                "error" => {
                    let v = sc.raw()?;
                    once(sc, &mut w.error, &mut seen[5], Some(v));
                }
                _ => sc.skip()?,
            }
            Ok(())
        })?;
        Ok(w)
    }
}

impl<'a> Params<'a> {
    fn member(&mut self, sc: &mut Scanner<'a>, key: Cow<'a, str>) -> Result<(), ScanError> {
        match key.as_ref() {
            "name" => {
                let v = opt_string(sc)?;
                once(sc, &mut self.name, &mut self.seen[0], v);
            }
            "uri" => {
                let v = opt_string(sc)?;
                once(sc, &mut self.uri, &mut self.seen[1], v);
            }
            "protocolVersion" => {
                let v = opt_string(sc)?;
                once(sc, &mut self.protocol_version, &mut self.seen[2], v);
            }
            "_meta" => {
                let (mut version, mut seen) = (None, false);
                opt_object(sc, |sc, key| {
                    if key == "io.modelcontextprotocol/protocolVersion" {
                        let v = opt_string(sc)?;
                        once(sc, &mut version, &mut seen, v);
                        Ok(())
                    } else {
                        sc.skip()
                    }
                })?;
                once(sc, &mut self.meta_version, &mut self.seen[3], version);
            }
            "arguments" => {
                let raw = sc.raw()?;
                let v = (raw != "null").then_some(raw);
                once(sc, &mut self.arguments, &mut self.seen[4], v);
            }
            _ => sc.skip()?,
        }
        Ok(())
    }
}

impl Wire<'_> {
    fn into_message(self, body: &Bytes) -> Result<Message, GatewayError> {
        let invalid = |m: &'static str| GatewayError::new(ErrorKind::InvalidRequest, m);
        if self.jsonrpc.as_deref() != Some("2.0") {
            return Err(invalid("\"jsonrpc\" must be \"2.0\""));
        }
        let id = match self.id {
            None => None,
            Some(raw) if id_kind_ok(raw) => Some(RequestId(body.slice_ref(raw.as_bytes()))),
            Some("null") => None,
            Some(_) => return Err(invalid("\"id\" must be a string or a number")),
        };
        let id_was_null = self.id == Some("null");
        let (kind, method) = match (self.method, self.result.is_some(), self.error.is_some()) {
            (Some(m), false, false) => {
                if id_was_null {
                    return Err(invalid("a request id must not be null"));
                }
                let kind = if id.is_some() {
                    MessageKind::Request
                } else {
                    MessageKind::Notification
                };
                (kind, Some(Method::from_text(body, m)))
            }
            (None, true, false) if id.is_some() => (MessageKind::Response, None),
            (None, false, true) => (MessageKind::Error, None),
            _ => return Err(invalid("not a JSON-RPC request, notification or response")),
        };
        let (mut target, mut meta_version, mut initialize_version) = (None, None, None);
        let mut arguments = None;
        if let (Some(p), Some(m)) = (self.params, method.as_ref()) {
            if matches!(m, Method::ToolsCall | Method::PromptsGet) {
                arguments = p.arguments.map(|a| body.slice_ref(a.as_bytes()));
            }
            target = match m {
                Method::ToolsCall | Method::PromptsGet => p.name,
                Method::ResourcesRead
                | Method::ResourcesSubscribe
                | Method::ResourcesUnsubscribe => p.uri,
                _ => None,
            }
            .map(|t| Text::from_cow(body, t));
            meta_version = p.meta_version.map(|t| Text::from_cow(body, t));
            if *m == Method::Initialize {
                initialize_version = p.protocol_version.map(|t| Text::from_cow(body, t));
            }
        }
        Ok(Message {
            kind,
            id,
            method,
            target,
            meta_version,
            initialize_version,
            arguments,
        })
    }
}

#[cfg(test)]
mod tests;
