//! JWT verification: RS256, ES256 and EdDSA only, with public keys from PEM files or a JWKS URL.
//!
//! The algorithm a token names must belong to the family of the key that verifies it, and only
//! the three asymmetric algorithms are accepted, so neither `alg: none` nor an HS256 token
//! "signed" with a public key as the HMAC secret (the classic confusion attack) can pass. The
//! JWKS is fetched at start, again when it is older than the refresh period, and when a token
//! names an unknown `kid` (at most once per minimum interval, so a stream of made-up kids
//! cannot make the service hammer its identity provider).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use converto_core::keys::{Scopes, validate_tenant};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::{AuthSetupError, Principal};

/// How far `exp` and `nbf` may be off (clock skew between the issuer and this server).
pub const LEEWAY_SECS: u64 = 60;
/// The algorithms accepted.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// JWT settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// PEM public keys (RSA, P-256 or Ed25519); several while keys rotate.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS URL.
    pub jwks_url: Option<String>,
    /// The JWKS is fetched again when older than this.
    pub jwks_refresh: Duration,
    /// An unknown `kid` fetches the JWKS again at most this often.
    pub jwks_min_refresh: Duration,
    /// The required `iss`.
    pub issuer: Option<String>,
    /// The required `aud`.
    pub audience: Option<String>,
    /// The claim naming the tenant.
    pub tenant_claim: String,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_refresh: super::DEFAULT_JWKS_REFRESH,
            jwks_min_refresh: super::DEFAULT_JWKS_MIN_REFRESH,
            issuer: None,
            audience: None,
            tenant_claim: "tenant".to_owned(),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a JWT, or its header cannot be read (`alg: none` included).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The algorithm is not RS256, ES256 or EdDSA.
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    /// No configured key verifies the signature.
    #[error("no key verifies the signature")]
    Signature,
    /// Expired, not yet valid, wrong issuer or audience, missing claims.
    #[error("claims refused: {0}")]
    Claims(String),
    /// The tenant claim is missing or not a valid tenant.
    #[error("tenant claim {0:?} missing or invalid")]
    Tenant(String),
}

impl JwtError {
    /// A short reason, safe to show the caller.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed token",
            JwtError::Algorithm(_) => "token algorithm not accepted",
            JwtError::Signature => "token signature not valid",
            JwtError::Claims(_) => "token expired, not yet valid, or not for this service",
            JwtError::Tenant(_) => "token carries no valid tenant claim",
        }
    }
}

/// A verification key and the `kid` it answers to.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family()
    }
}

/// The cached JWKS.
struct JwksCache {
    keys: Vec<VerifyKey>,
    /// When the keys were fetched.
    fetched: Option<Instant>,
    /// When a fetch was last tried (successful or not).
    tried: Option<Instant>,
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    cache: tokio::sync::RwLock<JwksCache>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    refresh: Duration,
    min_refresh: Duration,
}

impl Jwks {
    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                // A symmetric key has no place in a public key set.
                (key.family() != jsonwebtoken::AlgorithmFamily::Hmac).then(|| VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    key,
                })
            })
            .collect())
    }

    /// Fetches again, unless another caller just did or one was tried within `min_gap`.
    async fn refresh(&self, min_gap: Duration) {
        let _one = self.fetching.lock().await;
        if self
            .cache
            .read()
            .await
            .tried
            .is_some_and(|t| t.elapsed() < min_gap)
        {
            return;
        }
        let fetched = self.fetch().await;
        let mut cache = self.cache.write().await;
        cache.tried = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
            }
            // The keys fetched before stay in use.
            Err(error) => tracing::warn!(url = %self.url, %error, "JWKS fetch failed"),
        }
    }

    async fn keys(&self, kid: Option<&str>) -> Vec<VerifyKey> {
        let stale = self
            .cache
            .read()
            .await
            .fetched
            .is_none_or(|t| t.elapsed() >= self.refresh);
        if stale {
            self.refresh(self.min_refresh).await;
        }
        let select = |cache: &JwksCache| -> Vec<VerifyKey> {
            cache
                .keys
                .iter()
                .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
                .cloned()
                .collect()
        };
        let found = select(&*self.cache.read().await);
        if found.is_empty() && kid.is_some() {
            // A key the set did not have: perhaps the provider rotated.
            self.refresh(self.min_refresh).await;
            return select(&*self.cache.read().await);
        }
        found
    }
}

/// Verifies JWTs and turns them into [`Principal`]s.
pub struct JwtVerifier {
    static_keys: Vec<VerifyKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("static_keys", &self.static_keys.len())
            .field("jwks_url", &self.jwks.as_ref().map(|j| &j.url))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .finish()
    }
}

/// The key in a PEM file: RSA, then EC, then Ed25519.
fn pem_key(path: &PathBuf) -> Result<DecodingKey, AuthSetupError> {
    let pem = std::fs::read(path).map_err(|e| AuthSetupError::PublicKey {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|e| AuthSetupError::PublicKey {
            path: path.clone(),
            reason: format!("not an RSA, EC or Ed25519 public key in PEM: {e}"),
        })
}

impl JwtVerifier {
    /// Reads the PEM keys and fetches the JWKS (a failed first fetch is logged and tried again
    /// on use).
    pub async fn open(settings: &JwtSettings) -> Result<JwtVerifier, AuthSetupError> {
        if settings.public_keys.is_empty() && settings.jwks_url.is_none() {
            return Err(AuthSetupError::NoJwtKeys);
        }
        let static_keys = settings
            .public_keys
            .iter()
            .map(|p| pem_key(p).map(|key| VerifyKey { kid: None, key }))
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = match &settings.jwks_url {
            Some(url) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| AuthSetupError::Jwks(e.to_string()))?;
                let jwks = Jwks {
                    url: url.clone(),
                    client,
                    cache: tokio::sync::RwLock::new(JwksCache {
                        keys: Vec::new(),
                        fetched: None,
                        tried: None,
                    }),
                    fetching: tokio::sync::Mutex::new(()),
                    refresh: settings.jwks_refresh,
                    min_refresh: settings.jwks_min_refresh,
                };
                jwks.refresh(Duration::ZERO).await;
                Some(jwks)
            }
            None => None,
        };
        Ok(JwtVerifier {
            static_keys,
            jwks,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            tenant_claim: settings.tenant_claim.clone(),
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        v
    }

    /// Checks `token` and gives its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, JwtError> {
        let header = decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        let alg = header.alg;
        if !ALGORITHMS.contains(&alg) {
            return Err(JwtError::Algorithm(alg));
        }
        let validation = self.validation(alg);
        let mut candidates: Vec<VerifyKey> = self
            .static_keys
            .iter()
            .filter(|k| k.fits(alg))
            .cloned()
            .collect();
        if let Some(jwks) = &self.jwks {
            candidates.extend(
                jwks.keys(header.kid.as_deref())
                    .await
                    .into_iter()
                    .filter(|k| k.fits(alg)),
            );
        }
        for candidate in &candidates {
            match decode::<Map<String, Value>>(token, &candidate.key, &validation) {
                Ok(data) => return self.principal(&data.claims),
                Err(e)
                    if matches!(
                        e.kind(),
                        jsonwebtoken::errors::ErrorKind::InvalidSignature
                            | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                            | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                            | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(JwtError::Claims(e.to_string())),
            }
        }
        Err(JwtError::Signature)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, JwtError> {
        let tenant = claims
            .get(&self.tenant_claim)
            .and_then(Value::as_str)
            .filter(|t| validate_tenant(t).is_ok())
            .ok_or_else(|| JwtError::Tenant(self.tenant_claim.clone()))?;
        let mut scopes = Scopes::NONE;
        if let Some(s) = claims.get("scope").and_then(Value::as_str) {
            scopes = Scopes::from_names(s.split_whitespace());
        }
        match claims.get("scp") {
            Some(Value::String(s)) => {
                scopes = scopes_union(scopes, Scopes::from_names(s.split_whitespace()));
            }
            Some(Value::Array(items)) => {
                scopes = scopes_union(
                    scopes,
                    Scopes::from_names(items.iter().filter_map(Value::as_str)),
                );
            }
            _ => {}
        }
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or("-");
        Ok(Principal {
            tenant: tenant.to_owned(),
            scopes,
            subject: format!("jwt:{subject}"),
        })
    }
}

fn scopes_union(a: Scopes, b: Scopes) -> Scopes {
    b.iter().fold(a, Scopes::with)
}
