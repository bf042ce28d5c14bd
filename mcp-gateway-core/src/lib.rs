//! Protocol and policy vocabulary of **mcp-gateway**.
//!
//! No async runtime and no HTTP stack: only the types every layer shares.
//!
//! - [`jsonrpc`]: the JSON-RPC 2.0 envelope, parsed without `serde_json::Value`;
//! - [`protocol`]: MCP versions, eras, header names, 2026-07-28 header rules;
//! - [`sse`]: the incremental, byte-preserving SSE scanner and an encoder;
//! - [`session`]: session ids, records and the [`session::SessionStore`] trait;
//! - [`error`]: the one error type that maps every failure to an HTTP status
//!   and a JSON-RPC error;
//! - [`request`]: [`McpRequest`], what the parser learned, for later layers;
//! - [`principal`]: [`Principal`], who is calling, as authentication found it.
#![deny(missing_docs)]

pub mod answer;
pub mod body;
pub mod error;
mod json_scan;
pub mod jsonrpc;
pub mod meta;
pub mod principal;
pub mod protocol;
pub mod request;
pub mod session;
mod setup;
pub mod sse;

pub use answer::Answer;
pub use body::{Body, BoxError};
pub use error::{ErrorKind, GatewayError};
pub use jsonrpc::{Envelope, Message, MessageKind, Method, RequestId};
pub use principal::Principal;
pub use protocol::{Era, ProtocolVersion};
pub use request::McpRequest;
