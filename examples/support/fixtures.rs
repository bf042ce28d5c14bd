//! An rmcp MCP server with every fixture the official conformance suite's
//! server scenarios expect, plus a few the gateway's own tests use.
//!
//! Model values are built from JSON with `serde_json::from_value`, which keeps
//! this file readable and close to the wire format the scenarios check.
#![allow(dead_code, deprecated)]

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// 1×1 red PNG.
pub const TEST_IMAGE: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// Minimal WAV file.
pub const TEST_AUDIO: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("fixture JSON matches the rmcp model")
}

fn text(t: impl Into<String>) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::success(vec![ContentBlock::text(t)]))
}

/// The fixture server. Cheap to clone; one per session.
#[derive(Clone, Default)]
pub struct Fixtures {
    /// Name reported in `serverInfo` (tests use it to tell instances apart).
    pub name: Arc<str>,
}

impl Fixtures {
    /// A server that reports `name` as its implementation name.
    pub fn named(name: &str) -> Self {
        Fixtures { name: name.into() }
    }
}

fn tools() -> Value {
    let empty = json!({"type": "object", "properties": {}});
    json!([
        {"name": "test_simple_text", "description": "Tests simple text content response", "inputSchema": empty},
        {"name": "test_image_content", "description": "Tests image content response", "inputSchema": empty},
        {"name": "test_audio_content", "description": "Tests audio content response", "inputSchema": empty},
        {"name": "test_embedded_resource", "description": "Tests embedded resource content response", "inputSchema": empty},
        {"name": "test_multiple_content_types", "description": "Tests response with multiple content types (text, image, resource)", "inputSchema": empty},
        {"name": "test_tool_with_logging", "description": "Tests tool that emits log messages during execution", "inputSchema": empty},
        {"name": "test_tool_with_progress", "description": "Tests tool that reports progress notifications", "inputSchema": empty},
        {"name": "test_error_handling", "description": "Tests error response handling", "inputSchema": empty},
        {"name": "test_sampling", "description": "Tests server-initiated sampling (LLM completion request)",
         "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}}, "required": ["prompt"]}},
        {"name": "test_elicitation", "description": "Tests server-initiated elicitation (user input request)",
         "inputSchema": {"type": "object", "properties": {"message": {"type": "string", "description": "The message to show the user"}}, "required": ["message"]}},
        {"name": "test_elicitation_sep1034_defaults", "description": "Tests elicitation with default values per SEP-1034", "inputSchema": empty},
        {"name": "test_elicitation_sep1330_enums", "description": "Tests elicitation with enum schema improvements per SEP-1330", "inputSchema": empty},
        {"name": "json_schema_2020_12_tool", "description": "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
         "inputSchema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": false}},
        {"name": "echo", "description": "Echoes its `text` argument",
         "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
        {"name": "progress_burst", "description": "Sends `count` progress notifications (`interval_ms` apart), then returns `count`",
         "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"}, "interval_ms": {"type": "integer"}}}},
        {"name": "notify_later", "description": "Returns at once; 50 ms later sends notifications/tools/list_changed on the standalone stream", "inputSchema": empty},
        {"name": "whoami", "description": "Returns the server instance name", "inputSchema": empty},
        {"name": "wait", "description": "Waits `ms` milliseconds (at most 60 000), then returns `done`",
         "inputSchema": {"type": "object", "properties": {"ms": {"type": "integer"}}}},
        {"name": "show_auth", "description": "Returns the Authorization header this server received (to check credential injection)", "inputSchema": empty},
        {"name": "show_trace", "description": "Returns the W3C trace context this server received, as JSON text: the traceparent and baggage headers and params._meta entries", "inputSchema": empty}
    ])
}

fn elicit_schema(which: &str) -> Value {
    match which {
        "defaults" => json!({"type": "object", "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "description": "Verification status", "default": true}
        }, "required": []}),
        "enums" => json!({"type": "object", "properties": {
            "untitledSingle": {"type": "string", "description": "Select one option", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "description": "Select one option with titles", "oneOf": [
                {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"}, {"const": "value3", "title": "Third Option"}]},
            "legacyEnum": {"type": "string", "description": "Select one option (legacy)", "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "description": "Select multiple options", "minItems": 1, "maxItems": 3,
                "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "description": "Select multiple options with titles", "minItems": 1, "maxItems": 3,
                "items": {"anyOf": [{"const": "value1", "title": "First Choice"}, {"const": "value2", "title": "Second Choice"}, {"const": "value3", "title": "Third Choice"}]}}
        }, "required": []}),
        _ => {
            json!({"type": "object", "properties": {"response": {"type": "string", "description": "User's response"}}, "required": ["response"]})
        }
    }
}

fn resource_contents(uri: &str) -> Option<Value> {
    Some(match uri {
        "test://static-text" => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."})
        }
        "test://static-binary" => json!({"uri": uri, "mimeType": "image/png", "blob": TEST_IMAGE}),
        "test://watched-resource" => {
            json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"})
        }
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")?;
            json!({"uri": uri, "mimeType": "application/json",
                   "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()})
        }
    })
}

impl Fixtures {
    async fn elicit(
        &self,
        ctx: &RequestContext<RoleServer>,
        message: &str,
        schema: &str,
    ) -> CallToolResponse {
        let params: ElicitRequestParams = from(json!({
            "mode": "form", "message": message, "requestedSchema": elicit_schema(schema)
        }));
        match ctx.peer.create_elicitation(params).await {
            Ok(r) => {
                let v = serde_json::to_value(&r).unwrap_or_default();
                let prefix = if schema == "basic" {
                    "User response"
                } else {
                    "Elicitation completed"
                };
                text(format!(
                    "{prefix}: action={}, content={}",
                    v["action"].as_str().unwrap_or("?"),
                    v.get("content").cloned().unwrap_or(json!({}))
                ))
            }
            Err(e) => text(format!("Elicitation not supported or error: {e}")),
        }
    }
}

impl ServerHandler for Fixtures {
    fn get_info(&self) -> ServerConfig {
        let caps: ServerCapabilities = from(json!({
            "tools": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true},
            "prompts": {"listChanged": true},
            "logging": {},
            "completions": {}
        }));
        let name = if self.name.is_empty() {
            "mcp-gateway-conformance-server"
        } else {
            &self.name
        };
        ServerConfig::new(caps).with_server_info(from(json!({"name": name, "version": "0.1.0"})))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(from(json!({"tools": tools()})))
    }

    #[allow(deprecated)]
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.clone().unwrap_or_default();
        Ok(match &*request.name {
            "test_simple_text" => text("This is a simple text response for testing."),
            "show_auth" => {
                let seen = ctx
                    .extensions
                    .get::<http::request::Parts>()
                    .and_then(|p| p.headers.get(http::header::AUTHORIZATION))
                    .map_or("none".to_owned(), |v| {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    });
                text(&seen)
            }
            "show_trace" => {
                let header = |name: &str| {
                    ctx.extensions
                        .get::<http::request::Parts>()
                        .and_then(|p| p.headers.get(name))
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                };
                let seen = json!({
                    "header": header("traceparent"),
                    "baggage_header": header("baggage"),
                    "meta": ctx.meta.get("traceparent"),
                    "baggage_meta": ctx.meta.get("baggage"),
                });
                text(seen.to_string())
            }
            "test_image_content" => {
                CallToolResponse::Complete(CallToolResult::success(vec![ContentBlock::image(
                    TEST_IMAGE,
                    "image/png",
                )]))
            }
            "test_audio_content" => {
                CallToolResponse::Complete(CallToolResult::success(vec![ContentBlock::audio(
                    TEST_AUDIO,
                    "audio/wav",
                )]))
            }
            "test_embedded_resource" => CallToolResponse::Complete(from(
                json!({"content": [{"type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."}}]}),
            )),
            "test_multiple_content_types" => CallToolResponse::Complete(from(json!({"content": [
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": TEST_IMAGE, "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "test://mixed-content-resource", "mimeType": "application/json",
                    "text": json!({"test": "data", "value": 123}).to_string()}}]}))),
            "test_tool_with_logging" => {
                for (i, msg) in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ]
                .iter()
                .enumerate()
                {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = ctx
                        .peer
                        .notify_logging_message(from(json!({"level": "info", "data": msg})))
                        .await;
                }
                text("Tool with logging executed successfully")
            }
            "test_tool_with_progress" => {
                let token = ctx.meta.get_progress_token();
                let token_json = token
                    .as_ref()
                    .map(|t| serde_json::to_value(t).unwrap_or_default())
                    .unwrap_or(json!(0));
                for (i, p) in [0, 50, 100].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = ctx
                        .peer
                        .notify_progress(from(
                            json!({"progressToken": token_json, "progress": p, "total": 100,
                            "message": format!("Completed step {p} of 100")}),
                        ))
                        .await;
                }
                text(match &token_json {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                })
            }
            "test_error_handling" => {
                CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(
                    "This tool intentionally returns an error for testing",
                )]))
            }
            "test_sampling" => {
                let prompt = args
                    .get("prompt")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let params: CreateMessageRequestParams = from(json!({
                    "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}], "maxTokens": 100
                }));
                match ctx.peer.create_message(params).await {
                    Ok(r) => {
                        let v = serde_json::to_value(&r).unwrap_or_default();
                        let t = v["content"]["text"]
                            .as_str()
                            .or(v["content"][0]["text"].as_str())
                            .unwrap_or("No response");
                        text(format!("LLM response: {t}"))
                    }
                    Err(e) => text(format!("Sampling not supported or error: {e}")),
                }
            }
            "test_elicitation" => {
                let m = args
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("Please respond")
                    .to_owned();
                self.elicit(&ctx, &m, "basic").await
            }
            "test_elicitation_sep1034_defaults" => {
                self.elicit(
                    &ctx,
                    "Please review and update the form fields with defaults",
                    "defaults",
                )
                .await
            }
            "test_elicitation_sep1330_enums" => {
                self.elicit(&ctx, "Please select options from the enum fields", "enums")
                    .await
            }
            "json_schema_2020_12_tool" => text(format!(
                "JSON Schema 2020-12 tool called with: {}",
                Value::Object(args)
            )),
            "echo" => text(
                args.get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            "progress_burst" => {
                let n = args.get("count").and_then(Value::as_u64).unwrap_or(10);
                let pause = args
                    .get("interval_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .min(1000);
                if let Some(token) = ctx.meta.get_progress_token() {
                    let token_json = serde_json::to_value(&token).unwrap_or_default();
                    for i in 1..=n {
                        if pause > 0 && i > 1 {
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                        let _ = ctx
                            .peer
                            .notify_progress(from(
                                json!({"progressToken": token_json, "progress": i, "total": n}),
                            ))
                            .await;
                    }
                }
                text(n.to_string())
            }
            "notify_later" => {
                let peer = ctx.peer.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = peer.notify_tool_list_changed().await;
                });
                text("scheduled")
            }
            "whoami" => text(self.get_info().server_info.name.clone()),
            "wait" => {
                let ms = args
                    .get("ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text("done")
            }
            other => {
                return Err(McpError::invalid_params(
                    format!("Unknown tool: {other}"),
                    None,
                ))
            }
        })
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(from(json!({"resources": [
            {"uri": "test://static-text", "name": "static-text", "title": "Static Text Resource", "description": "A static text resource for testing", "mimeType": "text/plain"},
            {"uri": "test://static-binary", "name": "static-binary", "title": "Static Binary Resource", "description": "A static binary resource (image) for testing", "mimeType": "image/png"},
            {"uri": "test://watched-resource", "name": "watched-resource", "title": "Watched Resource", "description": "A resource that auto-updates every 3 seconds", "mimeType": "text/plain"}
        ]})))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(from(json!({"resourceTemplates": [
            {"uriTemplate": "test://template/{id}/data", "name": "template", "title": "Resource Template",
             "description": "A resource template with parameter substitution", "mimeType": "application/json"}
        ]})))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        match resource_contents(&request.uri) {
            Some(c) => Ok(ReadResourceResponse::Complete(from(
                json!({"contents": [c]}),
            ))),
            None => Err(McpError::resource_not_found(
                format!("Resource not found: {}", request.uri),
                Some(json!({"uri": request.uri})),
            )),
        }
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(from(json!({"prompts": [
            {"name": "test_simple_prompt", "title": "Simple Test Prompt", "description": "A simple prompt without arguments"},
            {"name": "test_prompt_with_arguments", "title": "Prompt With Arguments", "description": "A prompt with required arguments",
             "arguments": [{"name": "arg1", "description": "First test argument", "required": true},
                           {"name": "arg2", "description": "Second test argument", "required": true}]},
            {"name": "test_prompt_with_embedded_resource", "title": "Prompt With Embedded Resource", "description": "A prompt that includes an embedded resource",
             "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": true}]},
            {"name": "test_prompt_with_image", "title": "Prompt With Image", "description": "A prompt that includes image content"}
        ]})))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let args = request.arguments.clone().unwrap_or_default();
        let arg = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let messages = match &*request.name {
            "test_simple_prompt" => {
                json!([{"role": "user", "content": {"type": "text", "text": "This is a simple prompt for testing."}}])
            }
            "test_prompt_with_arguments" => json!([{"role": "user", "content": {"type": "text",
                "text": format!("Prompt with arguments: arg1='{}', arg2='{}'", arg("arg1"), arg("arg2"))}}]),
            "test_prompt_with_embedded_resource" => json!([
                {"role": "user", "content": {"type": "resource", "resource": {"uri": arg("resourceUri"), "mimeType": "text/plain", "text": "Embedded resource content for testing."}}},
                {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}}]),
            "test_prompt_with_image" => json!([
                {"role": "user", "content": {"type": "image", "data": TEST_IMAGE, "mimeType": "image/png"}},
                {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}}]),
            other => {
                return Err(McpError::invalid_params(
                    format!("Unknown prompt: {other}"),
                    None,
                ))
            }
        };
        Ok(GetPromptResponse::Complete(from(
            json!({"messages": messages}),
        )))
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        Ok(from(
            json!({"completion": {"values": [], "total": 0, "hasMore": false}}),
        ))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let level = serde_json::to_value(request.level).unwrap_or_default();
        let _ = ctx
            .peer
            .notify_logging_message(from(json!({"level": "info", "data": format!("Log level set to: {}", level.as_str().unwrap_or("?"))})))
            .await;
        Ok(())
    }
}

/// The fixture server as a tower service (rmcp's Streamable HTTP server).
pub fn service(
    name: &str,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    Fixtures,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    let f = Fixtures::named(name);
    rmcp::transport::streamable_http_server::StreamableHttpService::new(
        move || Ok(f.clone()),
        Default::default(),
        rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default(),
    )
}

/// The revisions [`handshake_only`] admits, newest first.
pub const HANDSHAKE_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// [`service`] restricted to the handshake revisions: rmcp 3.11 answers
/// 2026-07-28 requests without the `resultType` member that revision
/// requires, so a server built on it must not claim that revision. Every
/// 2026-07-28 request (a `server/discover` probe first) gets -32022
/// (unsupported protocol version) naming the revisions it does speak, and
/// clients fall back to the `initialize` handshake, as the specification
/// asks of them.
pub fn handshake_only(
    name: &str,
) -> impl tower::Service<
    http::Request<mcp_gateway::tower::Body>,
    Response = http::Response<axum::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let inner = service(name);
    tower::service_fn(move |req: http::Request<mcp_gateway::tower::Body>| {
        let inner = inner.clone();
        async move {
            let modern = req
                .headers()
                .get("mcp-protocol-version")
                .is_some_and(|v| v.as_bytes() >= b"2026-07-28".as_slice());
            if !modern {
                let res = tower::ServiceExt::oneshot(inner, req).await?;
                return Ok(res.map(axum::body::Body::new));
            }
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            let answer = json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": -32022,
                    "message": "Unsupported protocol version: this server speaks the initialize handshake revisions",
                    "data": {"supported": HANDSHAKE_VERSIONS},
                },
            });
            Ok(http::Response::builder()
                .status(400)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(answer.to_string()))
                .expect("a valid response"))
        }
    })
}

/// A second kind of server, for aggregates: `tools` tools `p_0`, `p_1`, …
/// (each returns its own name), `paged_echo`, and `echo` when `with_echo`
/// (a name it then shares with [`Fixtures`]); resources `paged://r/{i}`
/// and the template `paged://t/{id}`; the prompt `paged_prompt`. Every list
/// comes in pages of `page` entries.
#[derive(Clone)]
pub struct Paged {
    pub name: Arc<str>,
    pub tools: usize,
    pub resources: usize,
    pub page: usize,
    pub with_echo: bool,
}

impl Paged {
    /// `tools` tools and as many resources, in pages of `page`.
    pub fn new(name: &str, tools: usize, page: usize, with_echo: bool) -> Self {
        Paged {
            name: name.into(),
            tools,
            resources: tools,
            page: page.max(1),
            with_echo,
        }
    }

    fn page_of(&self, all: Vec<Value>, cursor: Option<&str>) -> (Vec<Value>, Option<String>) {
        let start: usize = cursor
            .and_then(|c| c.strip_prefix("page-")?.parse().ok())
            .unwrap_or(0);
        let end = (start + self.page).min(all.len());
        let next = (end < all.len()).then(|| format!("page-{end}"));
        (all.get(start..end).unwrap_or_default().to_vec(), next)
    }

    fn all_tools(&self) -> Vec<Value> {
        let empty = json!({"type": "object", "properties": {}});
        let mut t: Vec<Value> = (0..self.tools)
            .map(|i| json!({"name": format!("p_{i}"), "description": "Returns its own name", "inputSchema": empty}))
            .collect();
        t.push(
            json!({"name": "paged_echo", "description": "Echoes `text` with this server's name",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}),
        );
        if self.with_echo {
            t.push(
                json!({"name": "echo", "description": "Echoes `text` with this server's name",
                "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}),
            );
        }
        t
    }
}

impl ServerHandler for Paged {
    fn get_info(&self) -> ServerConfig {
        let caps: ServerCapabilities = from(json!({
            "tools": {"listChanged": true},
            "resources": {},
            "prompts": {},
        }));
        ServerConfig::new(caps)
            .with_server_info(from(json!({"name": &*self.name, "version": "0.1.0"})))
            .with_instructions(format!("{} lists in pages of {}", self.name, self.page))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let cursor = request.as_ref().and_then(|r| r.cursor.clone());
        let (page, next) = self.page_of(self.all_tools(), cursor.as_deref());
        Ok(from(json!({"tools": page, "nextCursor": next})))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.clone().unwrap_or_default();
        let name = &*request.name;
        if name == "echo" || name == "paged_echo" {
            let t = args.get("text").and_then(Value::as_str).unwrap_or("");
            return Ok(text(format!("{}:{t}", self.name)));
        }
        if self.all_tools().iter().any(|t| t["name"] == name) {
            return Ok(text(name));
        }
        Err(McpError::invalid_params(
            format!("Unknown tool: {name}"),
            None,
        ))
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let all = (0..self.resources)
            .map(|i| json!({"uri": format!("paged://r/{i}"), "name": format!("r{i}"), "mimeType": "text/plain"}))
            .collect();
        let cursor = request.as_ref().and_then(|r| r.cursor.clone());
        let (page, next) = self.page_of(all, cursor.as_deref());
        Ok(from(json!({"resources": page, "nextCursor": next})))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(from(json!({"resourceTemplates": [
            {"uriTemplate": "paged://t/{id}", "name": "paged-template", "mimeType": "text/plain"}
        ]})))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.clone();
        if uri.starts_with("paged://") {
            let c = json!({"uri": uri, "mimeType": "text/plain", "text": format!("{} has {uri}", self.name)});
            return Ok(ReadResourceResponse::Complete(from(
                json!({"contents": [c]}),
            )));
        }
        Err(McpError::resource_not_found(
            format!("Resource not found: {uri}"),
            Some(json!({"uri": uri})),
        ))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(from(json!({"prompts": [
            {"name": "paged_prompt", "description": "A prompt of the paged server"}
        ]})))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if &*request.name != "paged_prompt" {
            return Err(McpError::invalid_params("Unknown prompt", None));
        }
        Ok(GetPromptResponse::Complete(from(json!({"messages": [
            {"role": "user", "content": {"type": "text", "text": format!("prompt of {}", self.name)}}
        ]}))))
    }
}

/// [`Paged`] as a tower service (rmcp's Streamable HTTP server).
pub fn paged_service(
    p: Paged,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    Paged,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    rmcp::transport::streamable_http_server::StreamableHttpService::new(
        move || Ok(p.clone()),
        Default::default(),
        rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default(),
    )
}
