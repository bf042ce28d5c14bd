//! The names of metrics and attributes: OpenTelemetry's MCP semantic
//! conventions (`docs/gen-ai/mcp.md` of `semantic-conventions-genai`), and
//! the gateway's own, prefixed `mcp.gateway.`.
//!
//! In the Prometheus exposition dots become underscores and the unit is a
//! suffix: `mcp.server.operation.duration` (seconds) is scraped as
//! `mcp_server_operation_duration_seconds`, `mcp.gateway.calls` as
//! `mcp_gateway_calls_total`.

/// Histogram (s): each MCP request the gateway answered, as a server.
pub const SERVER_OPERATION_DURATION: &str = "mcp.server.operation.duration";
/// Histogram (s): each request the gateway sent a backend, as a client.
pub const CLIENT_OPERATION_DURATION: &str = "mcp.client.operation.duration";
/// Histogram (s): client sessions with the gateway, from `initialize` to
/// their end.
pub const SERVER_SESSION_DURATION: &str = "mcp.server.session.duration";
/// Histogram (s): the gateway's sessions with backends.
pub const CLIENT_SESSION_DURATION: &str = "mcp.client.session.duration";

/// Counter: calls, by tenant (and principal when configured), tool,
/// backend and outcome: the basis of cost attribution.
pub const CALLS: &str = "mcp.gateway.calls";
/// Counter: cost units charged (the limit layer's tool costs).
pub const COST: &str = "mcp.gateway.cost";
/// Counter: result tokens charged against token budgets.
pub const TOKENS: &str = "mcp.gateway.tokens";
/// Gauge: sessions open, by backend.
pub const SESSIONS_ACTIVE: &str = "mcp.gateway.sessions.active";
/// Gauge: calls in flight at each backend instance.
pub const CALLS_IN_FLIGHT: &str = "mcp.gateway.calls.in_flight";
/// Histogram (s): establishing a connection to a backend (TCP, and TLS for
/// `https://`).
pub const UPSTREAM_CONNECT_DURATION: &str = "mcp.gateway.upstream.connect.duration";
/// Histogram (s): from sending a request to a backend to its response head.
pub const UPSTREAM_TTFB: &str = "mcp.gateway.upstream.time_to_first_byte";
/// Counter: SSE events relayed to clients.
pub const SSE_EVENTS: &str = "mcp.gateway.sse.events";
/// Counter: `notifications/progress` relayed to clients.
pub const PROGRESS_NOTIFICATIONS: &str = "mcp.gateway.progress.notifications";
/// Counter: calls refused by a limit, by limit.
pub const LIMIT_REFUSALS: &str = "mcp.gateway.limit.refusals";
/// Counter: calls refused by the tool policy.
pub const POLICY_DENIALS: &str = "mcp.gateway.policy.denials";
/// Counter: calls refused because a pinned tool definition changed.
pub const PIN_VIOLATIONS: &str = "mcp.gateway.pin.violations";
/// Counter: audit records dropped by a full sink.
pub const AUDIT_DROPPED: &str = "mcp.gateway.audit.dropped";
/// Counter: commands to the Redis replicas share that failed or timed out.
pub const REDIS_ERRORS: &str = "mcp.gateway.redis.errors";
/// Counter: limit decisions taken without Redis (let through with
/// `fail_open`, refused with `fail_closed`).
pub const LIMIT_UNDECIDED: &str = "mcp.gateway.limit.undecided";
/// Counter: stream events the shared event store could not keep (its
/// writer fell behind).
pub const RESUME_EVENTS_DROPPED: &str = "mcp.gateway.resume.events_dropped";
/// Gauge: 1 when a backend instance takes new sessions, else 0.
pub const BACKEND_HEALTHY: &str = "mcp.gateway.backend.healthy";
/// Counter: ejections of a backend instance (passive outlier detection).
pub const BACKEND_EJECTIONS: &str = "mcp.gateway.backend.ejections";
/// Counter: sessions moved to another instance.
pub const FAILOVERS: &str = "mcp.gateway.failovers";

/// `mcp.method.name`: the JSON-RPC method.
pub const METHOD: &str = "mcp.method.name";
/// `gen_ai.tool.name`: the tool of a `tools/call`.
pub const TOOL: &str = "gen_ai.tool.name";
/// `gen_ai.prompt.name`: the prompt of a `prompts/get`.
pub const PROMPT: &str = "gen_ai.prompt.name";
/// `gen_ai.operation.name`: `execute_tool` for `tools/call`.
pub const OPERATION: &str = "gen_ai.operation.name";
/// `mcp.resource.uri` (spans only: URIs are unbounded).
pub const RESOURCE_URI: &str = "mcp.resource.uri";
/// `jsonrpc.request.id` (spans only).
pub const REQUEST_ID: &str = "jsonrpc.request.id";
/// `mcp.session.id` (spans only).
pub const SESSION_ID: &str = "mcp.session.id";
/// `mcp.protocol.version`.
pub const PROTOCOL_VERSION: &str = "mcp.protocol.version";
/// `error.type`: the JSON-RPC error code, `tool_error` for a tool result
/// with `isError`, else what went wrong.
pub const ERROR_TYPE: &str = "error.type";
/// `rpc.response.status_code`: the JSON-RPC error code.
pub const RPC_STATUS: &str = "rpc.response.status_code";
/// `network.transport`.
pub const NETWORK_TRANSPORT: &str = "network.transport";
/// `server.address` of a backend.
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port` of a backend.
pub const SERVER_PORT: &str = "server.port";
/// `mcp.gateway.backend`: the backend's configured name.
pub const BACKEND: &str = "mcp.gateway.backend";
/// `mcp.gateway.instance`: a backend instance (its URL).
pub const INSTANCE: &str = "mcp.gateway.instance";
/// `mcp.gateway.outcome`: how a call ended (the audit log's `outcome`).
pub const OUTCOME: &str = "mcp.gateway.outcome";
/// `mcp.gateway.tenant`: the principal's tenant.
pub const TENANT: &str = "mcp.gateway.tenant";
/// `enduser.id`: the principal's subject (metrics: only when configured).
pub const PRINCIPAL: &str = "enduser.id";
/// `mcp.gateway.limit`: which limit refused a call.
pub const LIMIT: &str = "mcp.gateway.limit";
/// `mcp.gateway.session.end_reason`: why a session ended.
pub const END_REASON: &str = "mcp.gateway.session.end_reason";

/// The value of a label past its cap of distinct values.
pub const OTHER: &str = "_other";
