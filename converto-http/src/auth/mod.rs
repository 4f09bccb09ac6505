//! Who is calling: API keys and JWTs become a [`Principal`] (tenant and scopes) that every
//! handler can take as an extractor.
//!
//! [`authenticate`] is a middleware over the whole router. It answers 401 (with
//! `WWW-Authenticate: Bearer`, plus `error="invalid_token"` when a credential was given but is
//! bad) without valid credentials, and 403 when the credential lacks the scope the request
//! needs: `read` for GET and HEAD, `write` for everything else, `admin` for `/metrics`; `admin`
//! allows everything. `/healthz` and `/readyz` are always open, `/openapi.json` and `/metrics`
//! as configured. With [`AuthMode::None`] every request acts as tenant `default` with every
//! scope (the loopback developer default).

pub mod cli;
pub mod jwt;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use converto_core::keys::{KeyStore, Scope, Scopes, parse_key};
use serde::Deserialize;

/// The tenant of anonymous requests.
pub const ANONYMOUS_TENANT: &str = "default";

/// Which credentials the service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// None: every request is anonymous (tenant `default`, every scope).
    #[default]
    None,
    /// API keys (`converto keys create`).
    Keys,
    /// JWTs from an identity provider.
    Jwt,
    /// API keys and JWTs.
    KeysAndJwt,
}

impl AuthMode {
    /// Whether API keys are accepted.
    pub fn keys(self) -> bool {
        matches!(self, AuthMode::Keys | AuthMode::KeysAndJwt)
    }

    /// Whether JWTs are accepted.
    pub fn jwt(self) -> bool {
        matches!(self, AuthMode::Jwt | AuthMode::KeysAndJwt)
    }
}

/// An `--auth` value that is not `none`, `keys`, `jwt` or `keys,jwt`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid --auth {0:?}: use none, keys, jwt or keys,jwt")]
pub struct InvalidAuthMode(String);

impl std::str::FromStr for AuthMode {
    type Err = InvalidAuthMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut keys = false;
        let mut jwt = false;
        let mut none = false;
        for part in s.split([',', '+']).map(str::trim) {
            match part {
                "keys" => keys = true,
                "jwt" => jwt = true,
                "none" => none = true,
                _ => return Err(InvalidAuthMode(s.to_owned())),
            }
        }
        match (none, keys, jwt) {
            (true, false, false) => Ok(AuthMode::None),
            (false, true, false) => Ok(AuthMode::Keys),
            (false, false, true) => Ok(AuthMode::Jwt),
            (false, true, true) => Ok(AuthMode::KeysAndJwt),
            _ => Err(InvalidAuthMode(s.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for AuthMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The authentication settings of `converto serve`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Which credentials are accepted.
    pub mode: AuthMode,
    /// Allow [`AuthMode::None`] on a non-loopback address.
    pub allow_anonymous: bool,
    /// `/metrics` without credentials (`None`: open only when auth is off).
    pub public_metrics: Option<bool>,
    /// `/openapi.json` without credentials (`None`: open).
    pub public_openapi: Option<bool>,
    /// JWT verification.
    pub jwt: jwt::JwtSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            allow_anonymous: false,
            public_metrics: None,
            public_openapi: None,
            jwt: jwt::JwtSettings::default(),
        }
    }
}

/// Why the authentication could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    /// Anonymous access was not allowed on a non-loopback address.
    #[error(
        "refusing to serve {listen} without authentication: --auth none lets anyone who can reach \
         this address act as tenant \"default\". Use --auth keys (or jwt), listen on a loopback \
         address (127.0.0.1), or pass --allow-anonymous if that is really wanted"
    )]
    AnonymousNotLoopback {
        /// The address.
        listen: std::net::SocketAddr,
    },
    /// `--auth jwt` without any key to verify with.
    #[error("--auth jwt needs --jwt-public-key FILE or --jwks-url URL")]
    NoJwtKeys,
    /// A JWT public key could not be read.
    #[error("JWT public key {path}: {reason}")]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The JWKS client could not be built.
    #[error("JWKS client: {0}")]
    Jwks(String),
}

/// Checks that anonymous access is only served where it is safe: on loopback, unless allowed.
pub fn check_listen(
    settings: &AuthSettings,
    listen: std::net::SocketAddr,
) -> Result<(), AuthSetupError> {
    if settings.mode == AuthMode::None && !settings.allow_anonymous && !listen.ip().is_loopback() {
        return Err(AuthSetupError::AnonymousNotLoopback { listen });
    }
    Ok(())
}

/// Who is calling, as the middleware resolved it; handlers take it as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant every record and blob of the request belongs to.
    pub tenant: String,
    /// What the caller may do.
    pub scopes: Scopes,
    /// Who it is, for logs: `key:ID`, `jwt:SUBJECT` or `anonymous`.
    pub subject: String,
}

impl Principal {
    /// The anonymous caller of [`AuthMode::None`]: tenant `default`, every scope.
    pub fn anonymous() -> Principal {
        Principal {
            tenant: ANONYMOUS_TENANT.to_owned(),
            scopes: Scopes::ALL,
            subject: "anonymous".to_owned(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| unauthorized(None))
    }
}

/// Checks credentials; built from [`AuthSettings`] by [`Authenticator::open`], or by hand.
#[derive(Debug, Clone)]
pub struct Authenticator {
    mode: AuthMode,
    keys: Option<Arc<dyn KeyStore>>,
    jwt: Option<Arc<jwt::JwtVerifier>>,
    public_metrics: bool,
    public_openapi: bool,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::anonymous()
    }
}

impl Authenticator {
    /// No authentication: every request is [`Principal::anonymous`].
    pub fn anonymous() -> Self {
        Self {
            mode: AuthMode::None,
            keys: None,
            jwt: None,
            public_metrics: true,
            public_openapi: true,
        }
    }

    /// API keys from `store` (and JWTs too, if [`with_jwt`](Self::with_jwt) adds them).
    pub fn with_keys(mut self, store: Arc<dyn KeyStore>) -> Self {
        self.keys = Some(store);
        self.mode = if self.jwt.is_some() {
            AuthMode::KeysAndJwt
        } else {
            AuthMode::Keys
        };
        self.public_metrics = false;
        self
    }

    /// JWTs checked by `verifier` (and API keys too, if [`with_keys`](Self::with_keys) adds
    /// them).
    pub fn with_jwt(mut self, verifier: Arc<jwt::JwtVerifier>) -> Self {
        self.jwt = Some(verifier);
        self.mode = if self.keys.is_some() {
            AuthMode::KeysAndJwt
        } else {
            AuthMode::Jwt
        };
        self.public_metrics = false;
        self
    }

    /// Whether `/metrics` is served without credentials.
    pub fn public_metrics(mut self, public: bool) -> Self {
        self.public_metrics = public;
        self
    }

    /// Whether `/openapi.json` is served without credentials.
    pub fn public_openapi(mut self, public: bool) -> Self {
        self.public_openapi = public;
        self
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The authenticator the settings describe; `keys` is the key store (`--store`), needed
    /// when API keys are accepted.
    pub async fn open(
        settings: &AuthSettings,
        keys: Option<Arc<dyn KeyStore>>,
    ) -> Result<Self, AuthSetupError> {
        let mode = settings.mode;
        let mut auth = Self::anonymous();
        auth.mode = mode;
        if mode.keys() {
            // Without a store every key is refused.
            auth.keys = keys;
        }
        if mode.jwt() {
            auth.jwt = Some(Arc::new(jwt::JwtVerifier::open(&settings.jwt).await?));
        }
        auth.public_metrics = settings.public_metrics.unwrap_or(mode == AuthMode::None);
        auth.public_openapi = settings.public_openapi.unwrap_or(true);
        tracing::info!(
            mode = ?mode,
            public_metrics = auth.public_metrics,
            public_openapi = auth.public_openapi,
            "authentication"
        );
        Ok(auth)
    }

    /// What a request to `path` with `method` needs.
    fn needs(&self, method: &Method, path: &str) -> Option<Scope> {
        match path {
            "/healthz" | "/readyz" => None,
            // The web UI's page and scripts hold no data; the calls they make carry the key.
            _ if crate::ui::is_ui_path(path) && matches!(*method, Method::GET | Method::HEAD) => {
                None
            }
            "/openapi.json" if self.public_openapi => None,
            "/metrics" if self.public_metrics => None,
            "/metrics" => Some(Scope::Admin),
            _ if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) => {
                Some(Scope::Read)
            }
            _ => Some(Scope::Write),
        }
    }

    /// The principal the request's credentials name.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        if self.mode == AuthMode::None {
            return Ok(Principal::anonymous());
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(AuthFailure::Missing);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Invalid(
                "the Authorization header is not `Bearer TOKEN`",
            ))?;
        if token.starts_with(converto_core::keys::KEY_PREFIX) {
            return match &self.keys {
                Some(store) => self.check_key(store.as_ref(), token).await,
                None => Err(AuthFailure::Invalid("API keys are not accepted here")),
            };
        }
        match &self.jwt {
            Some(verifier) => verifier.verify(token).await.map_err(|e| {
                tracing::debug!(error = %e, "JWT refused");
                AuthFailure::Invalid(e.reason())
            }),
            None => Err(AuthFailure::Invalid("not an API key")),
        }
    }

    async fn check_key(&self, store: &dyn KeyStore, token: &str) -> Result<Principal, AuthFailure> {
        // Shape and checksum first: a made-up key costs no store lookup.
        let hash = parse_key(token).map_err(|_| AuthFailure::Invalid("malformed API key"))?;
        let key = store.find_by_hash(&hash).await.map_err(|e| {
            tracing::warn!(error = %e, "API key lookup failed");
            AuthFailure::Unavailable
        })?;
        let Some(key) = key else {
            return Err(AuthFailure::Invalid("unknown API key"));
        };
        key.check(chrono::Utc::now()).map_err(|e| {
            tracing::debug!(key = %key.id, reason = %e, "API key refused");
            AuthFailure::Invalid(match e {
                converto_core::keys::KeyRefused::Revoked => "the API key was revoked",
                converto_core::keys::KeyRefused::Expired => "the API key has expired",
            })
        })?;
        Ok(Principal {
            tenant: key.tenant,
            scopes: key.scopes,
            subject: format!("key:{}", key.id),
        })
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials.
    Missing,
    /// Credentials were given but are not valid (the reason is safe to show).
    Invalid(&'static str),
    /// The key store did not answer.
    Unavailable,
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        match self {
            AuthFailure::Missing => unauthorized(None),
            AuthFailure::Invalid(reason) => unauthorized(Some(reason)),
            AuthFailure::Unavailable => crate::problem::problem_with(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "credentials cannot be checked right now; try again".to_owned(),
            ),
        }
    }
}

/// 401 with the `WWW-Authenticate` challenge of RFC 6750.
fn unauthorized(invalid: Option<&'static str>) -> Response {
    let (challenge, detail) = match invalid {
        None => (
            HeaderValue::from_static("Bearer realm=\"converto\""),
            "credentials required: send `Authorization: Bearer KEY_OR_TOKEN`".to_owned(),
        ),
        Some(reason) => (
            HeaderValue::from_static("Bearer realm=\"converto\", error=\"invalid_token\""),
            reason.to_owned(),
        ),
    };
    let mut resp = crate::problem::problem_with(StatusCode::UNAUTHORIZED, "unauthorized", detail);
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    resp
}

fn forbidden(needed: Scope) -> Response {
    let mut resp = crate::problem::problem_with(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this request needs the {:?} scope", needed.as_str()),
    );
    // RFC 6750: the scope the request needs.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"converto\", error=\"insufficient_scope\", scope=\"{}\"",
        needed.as_str()
    )) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The middleware: resolves the request's [`Principal`], checks its scope for the request and
/// inserts it as an extension, or answers 401/403.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(needed) = auth.needs(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    // A signed artifact link carries its own proof, checked by the handler: a browser or an
    // <img> follows it without a credential.
    if !req.headers().contains_key(header::AUTHORIZATION)
        && crate::api::conversions::is_signed_artifact_link(req.method(), req.uri())
    {
        return next.run(req).await;
    }
    let principal = match auth.authenticate(req.headers()).await {
        Ok(p) => p,
        Err(failure) => return failure.into_response(),
    };
    if !principal.scopes.allows(needed) {
        tracing::debug!(subject = %principal.subject, needed = needed.as_str(), "scope missing");
        return forbidden(needed);
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Adds what authentication means to the spec: 401 and 403 answers on every operation that
/// needs credentials, the bearer scheme, and (when `enforced`) the requirement itself, so that
/// a client generator sends the header. With authentication off no requirement is declared:
/// the spec says what the running service does.
pub fn document(spec: &mut utoipa::openapi::OpenApi, enforced: bool) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};

    crate::problem::document_everywhere(
        spec,
        "401",
        &crate::problem::documented("No valid credentials (see WWW-Authenticate)"),
    );
    crate::problem::document_everywhere(
        spec,
        "403",
        &crate::problem::documented("The credentials lack the scope this request needs"),
    );
    let components = spec.components.get_or_insert_with(Default::default);
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.description = Some(
        "An API key (`converto keys create`, `cvt_...`) or a JWT from the identity provider".into(),
    );
    components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
    if enforced {
        spec.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The default for `--jwks-refresh`.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// The default for `--jwks-min-refresh`.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
