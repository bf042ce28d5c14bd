//! Serving HTTPS: the gateway's certificate, and client certificates when a
//! client CA is configured (mutual TLS).
//!
//! rustls with the *ring* provider: it builds with a C compiler alone (no
//! CMake, unlike aws-lc-rs), and the same provider serves the upstream
//! side. ALPN offers `h2` and `http/1.1`.

use std::path::Path;
use std::sync::Arc;

use mcp_gateway_tower::auth::PeerCertificate;
use mcp_gateway_tower::upstream::tls::{provider, read_certs};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong building the TLS configuration: the file (by the flag or
/// key that named it) and why.
pub type TlsError = String;

/// The rustls configuration for serving with the certificate chain in
/// `cert_file` and the key in `key_file` (PEM). With `client_ca_file`,
/// every client must present a certificate signed by one of its CAs; the
/// verified leaf reaches the layers as a [`PeerCertificate`] (see
/// `ClientCertAuthenticator`).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = read_certs(cert_file, "cert_file").map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(file, "client_ca_file").map_err(|e| e.to_string())? {
                roots
                    .add(c)
                    .map_err(|e| format!("client_ca_file {}: {e}", file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca_file {}: {e}", file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("cert_file / key_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the layers learn from a client certificate rustls verified: its
/// DER, subject common name and DNS / URI / email alternative names.
pub fn peer_certificate(der: &CertificateDer<'_>) -> Option<PeerCertificate> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::URI(s) | GeneralName::DNSName(s) | GeneralName::RFC822Name(s) => {
                        Some(s.to_string())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(PeerCertificate {
        der: Arc::from(der.as_ref()),
        common_name,
        sans,
    })
}
