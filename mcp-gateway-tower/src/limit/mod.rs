//! Limits and quotas: every call counted and capped.
//!
//! [`LimitLayer`] runs after authorization (only allowed calls count) and
//! before the session router. Who is limited: the request's
//! [`Principal`], or an anonymous principal keyed by the client's address
//! (axum's `ConnectInfo<SocketAddr>`) when there is none.
//!
//! | limit | key | when | refusal |
//! | --- | --- | --- | --- |
//! | rate (burst + sustained, token bucket) | principal; principal × tool; backend | each `tools/call` (and the methods in `count_methods`) | -32055 |
//! | concurrent sessions | principal; backend | `initialize`; released when the session ends (DELETE, expiry, backend loss) | `429` + `Retry-After`, -32055 |
//! | in-flight calls | principal; backend | each counted call; the permit lives in the response body until it ends or the client goes away | -32055 |
//! | token budget per window | principal | arguments before the call, the result as it streams through ([`TokenCounter`]) | -32055 |
//! | cost budget per window | principal | each `tools/call` costs what configuration says; refused before reaching the backend | -32055 |
//!
//! A refusal is answered by the gateway with JSON-RPC error -32055 whose
//! `data` names the limit (`limit`) and says when to retry
//! (`retryAfterMs`). Nothing is queued: a request over a limit is refused
//! at once.
//!
//! The counters live behind the [`Limiter`] trait, whose operations return
//! an [`Answer`] (ready at once for the in-process [`InMemoryLimiter`]),
//! so a shared-store implementation for several replicas can be added
//! without touching the layer.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota as GovQuota, RateLimiter};
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response};
use mcp_gateway_core::protocol::header_names;
use mcp_gateway_core::session::SessionRecord;
use mcp_gateway_core::Answer;
use mcp_gateway_core::{
    ErrorKind, GatewayError, McpRequest, Message, Method, Principal, RequestId,
};
use serde::{Deserialize, Serialize};
use thread_local::ThreadLocal;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{take_ready, Body, BoxFuture};
use crate::body::{BodyEnd, BodyObserver, ObservedBody};
use crate::error::error_response;
use crate::rules::Glob;
use crate::session::{SessionEnd, SessionHooks, SessionObserver};

mod clock;
use clock::LimiterClock;

mod limiter;
use self::limiter::*;
pub use self::limiter::{
    Budget, Check, CheckOp, LimitKey, LimitKind, Limiter, Quota, Slot, IN_FLIGHT_RETRY,
};
mod memory;
pub use self::memory::InMemoryLimiter;
use self::memory::*;
mod tokens;
pub use self::tokens::{ApproxTokenCounter, TokenCounter};
mod layer;
use self::layer::*;
pub use self::layer::{
    CostCharged, Limit, LimitConfig, LimitLayer, TokensCharged, DEFAULT_CLIENT_IN_FLIGHT,
    DEFAULT_CLIENT_SESSIONS, DEFAULT_CLIENT_SESSION_RATE,
};
mod service;
use self::service::*;
pub use self::service::{ClientAddr, ResponseFuture};
mod body;
use self::body::*;
#[cfg(test)]
mod tests;
