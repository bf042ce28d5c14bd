//! The conformance fixture server (rmcp), served directly over HTTP.
//!
//! ```text
//! cargo run --example conformance_server -- --listen 127.0.0.1:3001
//! ```
//! serves `http://127.0.0.1:3001/mcp`. `scripts/conformance.sh` runs the
//! official conformance suite against it directly and behind the gateway.

#[path = "support/fixtures.rs"]
mod fixtures;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut listen = "127.0.0.1:3001".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?,
            "-h" | "--help" => {
                println!("usage: conformance_server [--listen ADDR]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let app = axum::Router::new().nest_service("/mcp", fixtures::service(""));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "conformance server on http://{}/mcp",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
