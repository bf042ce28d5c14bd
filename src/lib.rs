//! **mcp-gateway**: the `mcp-gateway` binary's program modules, and a
//! facade over the crates of the workspace.
//!
//! - [`core`]: protocol and policy vocabulary (`mcp-gateway-core`);
//! - [`tower`]: the tower layers and upstreams (`mcp-gateway-tower`);
//! - [`axum`]: the axum builder and extractors (`mcp-gateway-axum`);
//! - [`http1`]: the built-in HTTP/1.1 server and client (`mcp-gateway-http1`).
//!
//! The program itself: [`cli`] (flags, running), [`config`] (the TOML
//! file), [`serve`] (a runtime per core, TLS, graceful shutdown).

pub use mcp_gateway_axum as axum;
pub use mcp_gateway_core as core;
pub use mcp_gateway_http1 as http1;
pub use mcp_gateway_tower as tower;

pub mod admin;
pub mod cli;
pub mod config;
pub mod observability;
pub mod reload;
pub mod serve;

/// The README's Rust snippets, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
