//! The client side of TLS towards a backend: which certificates it trusts,
//! and the certificate the gateway shows when the backend asks for one.
//!
//! rustls with the *ring* provider (the same provider the binary serves
//! with): it builds with a C compiler alone, where aws-lc-rs also needs
//! CMake, and it covers every cipher suite a backend will ask for.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::body::BoxError;

/// How the gateway speaks TLS to one backend (`https://` URLs).
///
/// In the configuration file these are keys of the backend's table:
/// `ca_file`, `client_cert_file`, `client_key_file`, `insecure_skip_verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsClientConfig {
    /// PEM file of the certificate authorities that sign the backend's
    /// certificate. When set, only these are trusted for this backend (a
    /// private CA should not widen to every public one); when not, the
    /// platform's roots are (read once per process).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain shown to a backend that asks for a client
    /// certificate (mTLS). Goes with [`client_key_file`](Self::client_key_file).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the client certificate.
    pub client_key_file: Option<PathBuf>,
    /// Accept any certificate from the backend. For a test bench only:
    /// anyone between the gateway and the backend can then read and change
    /// every call. Logged as a warning when the upstream is built.
    pub insecure_skip_verify: bool,
}

impl TlsClientConfig {
    /// Trust only the CAs in `file`.
    pub fn ca_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(file.into());
        self
    }

    /// Show this client certificate (chain and key, PEM files).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert_file = Some(cert.into());
        self.client_key_file = Some(key.into());
        self
    }

    /// See [`insecure_skip_verify`](Self::insecure_skip_verify).
    pub fn insecure_skip_verify(mut self, yes: bool) -> Self {
        self.insecure_skip_verify = yes;
        self
    }

    /// The rustls configuration these settings describe (ALPN is set by
    /// the connector). Errors name the file and what is wrong with it.
    pub(crate) fn build(&self, backend: &str) -> Result<ClientConfig, BoxError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if self.insecure_skip_verify {
            warn_insecure(backend);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        let config = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "client_cert_file")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("client_key_file {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client_cert_file / client_key_file: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err("client_cert_file needs client_key_file".into()),
            (None, Some(_)) => return Err("client_key_file needs client_cert_file".into()),
        };
        Ok(config)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, BoxError> {
        match &self.ca_file {
            Some(file) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(file, "ca_file")? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
                }
                Ok(Arc::new(roots))
            }
            None => Ok(platform_roots()),
        }
    }
}

/// Says loudly, once per backend and process (a configuration is built
/// more than once: checked, then run), that its certificate goes unchecked.
fn warn_insecure(backend: &str) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.iter().any(|b| b == backend) {
        warned.push(backend.to_owned());
        tracing::warn!(
            backend,
            "insecure_skip_verify: the backend's TLS certificate is NOT verified; \
             anyone on the path can read and alter its traffic"
        );
    }
}

/// The crypto provider every TLS connection of the gateway uses (rustls'
/// *ring* provider), made once per process.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The platform's trusted roots, read once per process.
fn platform_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a platform root certificate could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no platform root certificates found: https:// backends need a ca_file"
                );
            }
            tracing::debug!(added, ignored, "platform root certificates");
            Arc::new(roots)
        })
        .clone()
}

/// Every certificate in a PEM file; an empty file is an error. Errors
/// name `key` (the flag or configuration key that named the file) and the
/// file.
pub fn read_certs(
    file: &std::path::Path,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key} {}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {}: no certificate in the file", file.display()).into());
    }
    Ok(certs)
}

/// `insecure_skip_verify`: every certificate is taken, but handshake
/// signatures are still checked (the peer must hold the key it shows).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
