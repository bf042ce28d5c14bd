//! **mcp-gateway**: a facade over the three crates of the workspace.
//!
//! - [`core`]: protocol and policy vocabulary (`mcp-gateway-core`);
//! - [`tower`]: the tower layers and upstreams (`mcp-gateway-tower`);
//! - [`axum`]: the axum builder and extractors (`mcp-gateway-axum`).
//!
//! This package also owns the runnable examples, the cross-crate integration
//! tests against real MCP peers, and the benchmarks.

pub use mcp_gateway_axum as axum;
pub use mcp_gateway_core as core;
pub use mcp_gateway_tower as tower;

/// The README's Rust snippets, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
