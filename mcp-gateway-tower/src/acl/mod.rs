//! Tool-level authorization: which principal may use which tool, prompt
//! and resource, on which backend.
//!
//! [`AclLayer`] sits after the JSON-RPC layer (it reads the parsed
//! request, so on 2026-07-28 the header/body consistency check has already
//! run and a mismatched `Mcp-Name` header cannot smuggle a denied call). It
//! asks a [`ToolPolicy`] about every `tools/call`, `prompts/get`,
//! `resources/read`, `resources/subscribe` / `unsubscribe` and
//! `completion/complete`; a denial is answered by the gateway with a
//! JSON-RPC error (-32053) naming the target, and nothing is forwarded.
//!
//! List results (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`) are filtered so a principal never sees what
//! it may not use, in JSON responses and inside SSE streams alike; every
//! other member (`nextCursor` included) is kept.
//!
//! With [`ToolPins`] attached, the layer also pins tool definitions (see
//! [`crate::pinning`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use mcp_gateway_core::sse::{encode_event, SseScanner};
use mcp_gateway_core::{
    ErrorKind, GatewayError, McpRequest, Message, Method, Principal, RequestId,
};
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use crate::aggregate::Routed;
use crate::body::{Body, BoxFuture};
use crate::error::error_response;
use crate::pinning::ToolPins;
use thread_local::ThreadLocal;

pub mod pinning;
mod policy;
pub mod rules;
pub use self::policy::{Access, BackendName, Decision, Target, ToolPolicy};
mod layer;
use self::layer::*;
pub use self::layer::{Acl, AclLayer};
mod decide;
use self::decide::*;
mod filter_sse;
use self::filter_sse::*;
#[cfg(test)]
mod tests;
