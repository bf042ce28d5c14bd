//! Authentication: who is calling.
//!
//! [`AuthLayer`] asks an [`Authenticator`] to turn the request's credential
//! into a [`Principal`], puts it in the request extensions (its key is
//! the [`SessionOwner`](crate::session::SessionOwner) of the sessions it
//! starts), and removes the credential headers so they never travel
//! further. It behaves as an OAuth 2.1 resource server:
//!
//! - no credential, or one that does not verify: `401` with
//!   `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728) and the
//!   scopes the endpoint needs;
//! - a valid credential without a required scope: `403` with
//!   `error="insufficient_scope"`;
//! - a token in the query string (`access_token=`, `api_key=`, …): `400`
//!   `error="invalid_request"`, since query strings end up in logs.
//!
//! Authenticators compose with [`AuthChain`]: the first that recognises the
//! credential decides. Built in: [`ApiKeys`] (hashed keys), and with the
//! `jwt` feature [`crate::jwt::JwtAuthenticator`]. A principal from a
//! verified client certificate comes from [`ClientCertAuthenticator`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use mcp_gateway_core::{Answer, ErrorKind, GatewayError, Principal};
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{take_ready, Body, BoxFuture};
use crate::error::error_response;

mod authenticator;
#[cfg(feature = "jwt")]
pub mod jwt;
pub use self::authenticator::{AuthFailure, AuthOutcome, Authenticator};
mod chain;
pub use self::chain::AuthChain;
mod api_key;
#[cfg(feature = "jwt")]
use self::api_key::*;
pub use self::api_key::{bearer_token, looks_like_jwt, ApiKeys, X_API_KEY};
mod cert;
pub use self::cert::{ClientCertAuthenticator, PeerCertificate};
mod layer;
use self::layer::*;
pub use self::layer::{AuthConfig, AuthLayer};
mod service;
pub(crate) use self::service::hex;
pub use self::service::Auth;
mod metadata;
pub use self::metadata::ProtectedResourceMetadata;
use self::metadata::*;
#[cfg(test)]
mod tests;
