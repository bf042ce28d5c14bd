//! JWT bearer tokens (`jwt` feature): static keys or a JWKS URL.
//!
//! What is checked, in order: the token is a JWS whose `alg` is on the
//! explicit allow list (`none` cannot be: it is not an algorithm here); a
//! key is found by `kid` (or, without a `kid`, by algorithm) and the key's
//! own algorithm must equal the header's, so an RSA public key can never be
//! used as an HMAC secret; the signature; `exp` (required) and `nbf` with a
//! bounded leeway; `iss`; `aud` (the RFC 8707 resource of this server).
//!
//! JWKS: fetched at first use, refetched when a token names an unknown
//! `kid` (key rotation; at most once per `min_refresh`) and when the set is
//! older than `max_age`. A failed refresh keeps the keys already known.
//!
//! Verified tokens are cached by SHA-256 of the token until they expire (or
//! `cache_ttl` passes), so a client reusing its token costs one hash and a
//! map lookup per call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, Validation};
use mcp_gateway_core::{Answer, Principal};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use thread_local::ThreadLocal;

use crate::auth::{
    bearer_bytes, bearer_token, looks_like_jwt, AuthFailure, AuthOutcome, Authenticator,
};

/// Leeway beyond which clock skew is not forgiven.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

mod config;
pub use self::config::{ClaimMapping, JwtConfig, JwtKey};
mod jwks;
pub use self::jwks::{FetchFuture, HttpJwksFetcher, JwksCache, JwksFetcher};
mod authenticator;
pub use self::authenticator::JwtAuthenticator;
#[cfg(test)]
use self::authenticator::*;
mod cache;
use self::cache::*;
#[cfg(test)]
mod tests;
