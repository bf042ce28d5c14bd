//! The whole gateway in front of an embedded demo MCP server (rmcp, in this
//! process). Nothing else to install or start:
//!
//! ```text
//! cargo run --example quickstart            # listens on 127.0.0.1:8080
//! cargo run --example quickstart -- --listen 127.0.0.1:0
//! ```
//!
//! Then point any MCP client at the printed URL, or try it with curl.

#[path = "support/fixtures.rs"]
mod fixtures;

use mcp_gateway_axum::McpGateway;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut listen = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?,
            other => {
                return Err(
                    format!("unknown argument {other} (usage: quickstart [--listen ADDR])").into(),
                )
            }
        }
    }
    // The demo server: rmcp's Streamable HTTP service, used as an in-process
    // backend instance. A real deployment uses .upstream_url(..) instead.
    let app = McpGateway::builder()
        .path("/mcp")
        .upstream_service(fixtures::handshake_only("demo-server"))
        .build()?
        .route(
            "/",
            axum::routing::get(|| async { "mcp-gateway quickstart: POST JSON-RPC to /mcp\n" }),
        );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    println!("mcp-gateway quickstart: MCP endpoint at http://{addr}/mcp (demo server behind it)");
    println!("a whole exchange (initialize, a call with the session id, DELETE): see the README's quickstart");
    println!(
        "try: curl -si http://{addr}/mcp -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
-d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}'"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
