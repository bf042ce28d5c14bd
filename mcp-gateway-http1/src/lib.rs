//! The HTTP/1.1 wire code of **mcp-gateway**: not a layer, but the two ends
//! of the gateway's own HTTP/1.1 connections.
//!
//! - [`server`]: serves a tower service on one accepted TCP connection
//!   (`--http1-server builtin` in the binary; hyper is the default).
//! - [`client`]: the pooled upstream client that `HttpUpstream` uses for
//!   `http://` backends (`https://` and HTTP/2 backends go through hyper).
//!
//! Both exist because hyper's connection dispatchers cost a large share of
//! a small MCP call (see `docs/benchmarks.md`). The framing rules they
//! share (RFC 9112) live in one private module.
#![deny(missing_docs)]

pub mod client;
mod framing;
pub mod server;
