//! The audit log: one record per MCP message handled, and per session.
//!
//! [`AuditLayer`] is the outermost MCP layer (right after the origin
//! guard), so it sees every request, including the ones authentication,
//! parsing, authorization or limits refuse. Inner layers leave what they
//! learned in the *response* extensions (the principal, the parsed
//! request, the backend, the error kind, the limit, the cost), and the
//! audit layer reads it there.
//!
//! A call's [`AuditEvent`] is emitted when its response body ends or is
//! dropped, so a streamed call reports its real duration, the progress
//! notifications relayed, the bytes sent, and whether the client went
//! away. The end is acted on as it is read, before the server writes the
//! last bytes: a client never holds an answer whose call is not recorded,
//! and one client's records come in the order its calls depended on each
//! other. Session events: `session_start` (principal, backend, protocol
//! version) and `session_end` (duration, calls, errors, bytes, cost, why);
//! a session ended while some of its `POST`s are under way has its
//! `session_end` recorded after the last of them, which its totals count.
//!
//! Arguments are not recorded unless configured ([`ArgumentsPolicy`]):
//! their SHA-256, or the arguments with named keys redacted.
//!
//! Sinks ([`AuditSink`]) never block the request path: [`TracingSink`]
//! (structured `tracing` fields), [`JsonlSink`] (a JSON Lines file written
//! by its own thread, buffered, rotated by size, flushed on shutdown),
//! [`ClickHouseSink`] (an analytics store, over HTTP, batched) and
//! [`ChannelSink`] (a bounded channel, for tests and custom consumers).
//! When a sink cannot keep up, its [`Overflow`] policy decides: drop the
//! record and count it ([`AuditSink::dropped`]), or refuse calls (503,
//! -32056) until it catches up.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::SessionRecord;
use mcp_gateway_core::sse::SseScanner;
use mcp_gateway_core::{ErrorKind, GatewayError, McpRequest, MessageKind, Principal};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thread_local::ThreadLocal;
use tower_layer::Layer;
use tower_service::Service;

use crate::acl::BackendName;
use crate::body::{lock, Body, BodyEnd, BodyObserver, BoxFuture, ObservedBody};
use crate::error::error_response;
use crate::limit::{CostCharged, LimitKind};
use crate::session::{SessionEnd, SessionHooks, SessionObserver};

mod event;
use self::event::*;
pub use self::event::{AuditEvent, AuditEventRef, EndReason, EventKind, Outcome};
mod sink;
pub use self::sink::{AccessLog, AuditSink, ChannelSink, FanOut, Overflow, TracingSink};
mod jsonl;
use self::jsonl::{Batched, Lines};
pub use self::jsonl::{JsonlConfig, JsonlSink};
mod clickhouse;
pub use self::clickhouse::{ClickHouseConfig, ClickHouseSink};
mod layer;
use self::layer::*;
pub use self::layer::{ArgumentsPolicy, AuditConfig, AuditLayer};
mod service;
pub use self::service::Audit;
mod body;
use self::body::*;
mod time;
use self::time::*;
#[cfg(test)]
mod tests;
