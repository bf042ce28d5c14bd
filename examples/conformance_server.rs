//! The conformance fixture server (rmcp), served directly over HTTP.
//!
//! ```text
//! cargo run --example conformance_server -- --listen 127.0.0.1:3001
//! ```
//! serves `http://127.0.0.1:3001/mcp`. `scripts/conformance.sh` runs the
//! official conformance suite against it directly and behind the gateway.
//! With `--paged NAME` it serves a second, different server instead (the
//! `Paged` fixture: tools `p_0`… and `paged_echo`, in pages of 2), which
//! the script puts beside the first behind one aggregating gateway.
//! With `--stdio` it speaks newline-delimited JSON-RPC on stdin / stdout
//! instead (a stdio server, as the gateway's stdio backends start them).

#[path = "support/fixtures.rs"]
mod fixtures;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut listen = "127.0.0.1:3001".to_string();
    let mut paged: Option<String> = None;
    let mut stdio = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?,
            "--paged" => paged = Some(args.next().ok_or("--paged needs NAME")?),
            "--stdio" => stdio = true,
            "-h" | "--help" => {
                println!("usage: conformance_server [--listen ADDR] [--paged NAME] [--stdio]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if stdio {
        use rmcp::ServiceExt;
        let name = std::env::var("FIXTURE_NAME").unwrap_or_default();
        let running = match &paged {
            None => {
                fixtures::Fixtures::named(&name)
                    .serve(rmcp::transport::stdio())
                    .await?
                    .waiting()
                    .await
            }
            Some(p) => {
                fixtures::Paged::new(p, 5, 2, false)
                    .serve(rmcp::transport::stdio())
                    .await?
                    .waiting()
                    .await
            }
        };
        running?;
        return Ok(());
    }
    let app = match &paged {
        None => axum::Router::new().nest_service("/mcp", fixtures::service("")),
        Some(name) => axum::Router::new().nest_service(
            "/mcp",
            fixtures::paged_service(fixtures::Paged::new(name, 5, 2, false)),
        ),
    };
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
