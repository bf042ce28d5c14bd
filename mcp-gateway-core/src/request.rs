//! [`McpRequest`]: what the JSON-RPC layer learned about a request, carried
//! in the request extensions for every later layer and handler.

use bytes::Bytes;

use crate::jsonrpc::{Envelope, Message, Method};
use crate::protocol::{Era, ProtocolVersion};

/// A parsed MCP `POST`: the body bytes (exactly as received), the envelope,
/// and the protocol version and era decided once for the whole stack.
#[derive(Debug, Clone)]
pub struct McpRequest {
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
        McpRequest {
            body,
            envelope,
            version,
            version_from_header,
        }
    }

    /// The body, byte for byte as the client sent it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// The parsed envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
    /// The single message, if the body was not a batch.
    pub fn message(&self) -> Option<&Message> {
        self.envelope.single()
    }
    /// The first JSON-RPC id in the body (see [`Envelope::first_id`]).
    pub fn first_id(&self) -> Option<&crate::RequestId> {
        self.envelope.first_id()
    }
    /// The method of a single request or notification.
    pub fn method(&self) -> Option<&Method> {
        self.message().and_then(Message::method)
    }
    /// The protocol version in force for this request.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.version
    }
    /// Whether the version came from the `MCP-Protocol-Version` header.
    pub fn version_from_header(&self) -> bool {
        self.version_from_header
    }
    /// The transport era.
    pub fn era(&self) -> Era {
        self.version.era()
    }
    /// Is this the `initialize` request?
    pub fn is_initialize(&self) -> bool {
        self.message().is_some_and(Message::is_initialize)
    }
}
