//! What a [`JwtAuthenticator`] accepts: [`JwtConfig`], keys, claim mapping.

#[allow(unused_imports)]
use super::*;

/// Where claims are read from (dotted paths reach into objects, e.g.
/// `realm_access.roles`).
#[derive(Debug, Clone)]
pub struct ClaimMapping {
    /// Subject claim. Default `sub`.
    pub subject: String,
    /// Roles: an array of strings or a space-separated string. Default `roles`.
    pub roles: String,
    /// Scopes: a space-separated string or an array. Default `scope`
    /// (`scp` is read too when `scope` is absent).
    pub scopes: String,
    /// Tenant claim, if tenants are used (e.g. `tid`).
    pub tenant: Option<String>,
    /// Other claims copied into the principal (as text).
    pub extra: Vec<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            subject: "sub".into(),
            roles: "roles".into(),
            scopes: "scope".into(),
            tenant: None,
            extra: Vec::new(),
        }
    }
}

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Accepted issuers (`iss`); empty accepts any (not recommended).
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`): this server's resource URL. Empty
    /// accepts any (not recommended: tokens for other services would pass).
    pub audiences: Vec<String>,
    /// Algorithms accepted at all. Each key also pins its own.
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew leeway for `exp` / `nbf`; capped at [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Claim mapping.
    pub claims: ClaimMapping,
    /// Longest a verified token stays cached (never past its `exp`).
    pub cache_ttl: Duration,
    /// Most cached tokens.
    pub cache_capacity: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuers: Vec::new(),
            audiences: Vec::new(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            leeway: Duration::from_secs(30),
            claims: ClaimMapping::default(),
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 100_000,
        }
    }
}

/// One verification key with the one algorithm it may verify.
#[derive(Clone)]
pub struct JwtKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

type KeyResult = Result<JwtKey, String>;

impl JwtKey {
    /// An HMAC secret (HS256 / HS384 / HS512).
    pub fn hmac(kid: Option<&str>, alg: Algorithm, secret: &[u8]) -> KeyResult {
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!("{alg:?} is not an HMAC algorithm"));
        }
        Ok(Self::new(kid, alg, DecodingKey::from_secret(secret)))
    }

    /// A public key in PEM (RSA, EC or Ed25519, matching `alg`).
    pub fn pem(kid: Option<&str>, alg: Algorithm, pem: &[u8]) -> KeyResult {
        use Algorithm::*;
        let key = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
            ES256 | ES384 => DecodingKey::from_ec_pem(pem),
            EdDSA => DecodingKey::from_ed_pem(pem),
            HS256 | HS384 | HS512 => {
                return Err("HMAC keys are secrets, not PEM public keys".into())
            }
        }
        .map_err(|e| format!("bad {alg:?} PEM key: {e}"))?;
        Ok(Self::new(kid, alg, key))
    }

    fn new(kid: Option<&str>, alg: Algorithm, key: DecodingKey) -> JwtKey {
        JwtKey {
            kid: kid.map(str::to_owned),
            alg,
            key,
        }
    }

    /// The keys of a JWKS document that carry an algorithm this
    /// authenticator can use (a key without `alg` gets the one its type
    /// implies for RSA/EC/OKP only when unambiguous).
    pub fn from_jwks(set: &JwkSet) -> Vec<JwtKey> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
        set.keys
            .iter()
            .filter_map(|jwk| {
                let alg = match jwk.common.key_algorithm {
                    Some(a) => a.to_string().parse::<Algorithm>().ok()?,
                    None => match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        AlgorithmParameters::EllipticCurve(p) => match p.curve {
                            EllipticCurve::P256 => Algorithm::ES256,
                            EllipticCurve::P384 => Algorithm::ES384,
                            _ => return None,
                        },
                        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                        // Symmetric keys are never published in a JWKS.
                        AlgorithmParameters::OctetKey(_) => return None,
                    },
                };
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return None;
                }
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(JwtKey::new(jwk.common.key_id.as_deref(), alg, key))
            })
            .collect()
    }
}
