//! [`McpRequest`]: what the JSON-RPC layer learned about a request, carried
//! in the request extensions for every later layer and handler.

use std::sync::Arc;

use bytes::Bytes;

use crate::jsonrpc::{Envelope, Message, Method};
use crate::protocol::{Era, ProtocolVersion};

/// A parsed MCP `POST`: the body bytes (exactly as received), the envelope,
/// and the protocol version and era decided once for the whole stack.
///
/// Cloning is one reference count: several layers keep a copy (in the
/// request and response extensions) and the parsed names inside share the
/// body's buffer.
#[derive(Debug, Clone)]
pub struct McpRequest(Arc<Parsed>);

#[derive(Debug)]
struct Parsed {
    body: Bytes,
    envelope: Envelope,
    version: ProtocolVersion,
    version_from_header: bool,
}

impl McpRequest {
    /// Assembles a request. `version_from_header` tells whether
    /// `MCP-Protocol-Version` was sent or the version was inferred.
    pub fn new(
        body: Bytes,
        envelope: Envelope,
        version: ProtocolVersion,
        version_from_header: bool,
    ) -> Self {
        McpRequest(Arc::new(Parsed {
            body,
            envelope,
            version,
            version_from_header,
        }))
    }

    /// The body, byte for byte as the client sent it.
    pub fn body(&self) -> &Bytes {
        &self.0.body
    }
    /// The parsed envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.0.envelope
    }
    /// The single message, if the body was not a batch.
    pub fn message(&self) -> Option<&Message> {
        self.0.envelope.single()
    }
    /// The first JSON-RPC id in the body (see [`Envelope::first_id`]).
    pub fn first_id(&self) -> Option<&crate::RequestId> {
        self.0.envelope.first_id()
    }
    /// The method of a single request or notification.
    pub fn method(&self) -> Option<&Method> {
        self.message().and_then(Message::method)
    }
    /// The protocol version in force for this request.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.0.version
    }
    /// Whether the version came from the `MCP-Protocol-Version` header.
    pub fn version_from_header(&self) -> bool {
        self.0.version_from_header
    }
    /// The transport era.
    pub fn era(&self) -> Era {
        self.0.version.era()
    }
    /// Is this the `initialize` request?
    pub fn is_initialize(&self) -> bool {
        self.message().is_some_and(Message::is_initialize)
    }
}
