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

#[path = "support/fixtures.rs"]
mod fixtures;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut listen = "127.0.0.1:3001".to_string();
    let mut paged: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?,
            "--paged" => paged = Some(args.next().ok_or("--paged needs NAME")?),
            "-h" | "--help" => {
                println!("usage: conformance_server [--listen ADDR] [--paged NAME]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
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
