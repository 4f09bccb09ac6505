//! `/v1/webhooks`: a tenant's webhook endpoints and signing secret, and
//! `/v1/conversions/{id}/deliveries`: every attempt to tell a conversion's subscribers.
//!
//! How messages are signed, retried and delivered is in [`converto_core::webhook`]; what the
//! client refuses (private addresses, redirects) in `converto_adapters::webhooks`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use converto_core::webhook::{Attempt, Endpoint, Secrets, WebhookError, Webhooks};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

use super::conversions::ConversionIdParam;
use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};

fn service(state: &AppState) -> Result<&Arc<Webhooks>, ApiError> {
    state.engine.webhooks().ok_or_else(|| ApiError::NotFound {
        detail: "webhooks are not enabled on this service".into(),
    })
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::InvalidUrl(d) => ApiError::bad_request("invalid-webhook-url", d),
            WebhookError::NotFound => ApiError::NotFound {
                detail: "no such webhook endpoint".into(),
            },
            WebhookError::NotEnabled => ApiError::NotFound {
                detail: "webhooks are not enabled on this service".into(),
            },
            other => ApiError::from(converto_core::EngineError::Webhook(other)),
        }
    }
}

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// An http or https URL on a public address (or one the operator allow-listed).
    ///
    /// It must have the documented shape (the field's `pattern`): a host name (not an IP literal),
    /// an optional port, path and query.
    // Its pattern, `URL_PATTERN`, is added by `webhooks::document`.
    #[schema(max_length = 2048, example = "https://example.com/converto")]
    pub url: String,
    /// Also send `conversion.started` when an attempt starts (terminal statuses are always
    /// sent).
    #[serde(default)]
    pub on_start: bool,
}

/// A registered endpoint. `secret` is shown only when it was just made (creation, rotation).
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    /// `ep_` and 32 hex digits.
    pub id: String,
    /// Where conversions' records are POSTed.
    pub url: String,
    /// Whether `conversion.started` is sent too.
    pub on_start: bool,
    /// False once the endpoint answered 410 Gone (register it again to resume).
    pub enabled: bool,
    /// Why it was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// The signing secret (`whsec_...`): only in the answer that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when the previous secret also signs (both signatures are sent until then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl EndpointView {
    fn of(e: Endpoint, show_secret: bool) -> Self {
        Self {
            previous_secret_expires_at: e
                .secrets
                .previous_until
                .filter(|until| *until > Utc::now()),
            secret: show_secret.then(|| e.secrets.current.clone()),
            id: e.id,
            url: e.url,
            on_start: e.on_start,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
        }
    }
}

/// The tenant's signing secret for per-conversion `webhook_url`s.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningSecretView {
    /// The new secret (`whsec_...`).
    pub secret: String,
    /// Until when the previous secret also signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl From<Secrets> for SigningSecretView {
    fn from(s: Secrets) -> Self {
        Self {
            secret: s.current,
            previous_secret_expires_at: s.previous_until,
        }
    }
}

/// One attempt to deliver a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The message's `webhook-id` (the same on every retry of it).
    pub webhook_id: String,
    /// `conversion.succeeded`, `conversion.failed`, `conversion.cancelled` or
    /// `conversion.started`.
    pub event: String,
    /// The endpoint, when the message went to a registered one (else the conversion's own
    /// `webhook_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    /// The URL posted to.
    pub url: String,
    /// 1 for the message's first attempt.
    pub attempt: u32,
    /// When it started.
    pub at: DateTime<Utc>,
    /// The answer's status, if one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// What went wrong when no answer came (network, timeout, refused address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
    /// `delivered`, `retrying`, `failed` or `disabled` (410: the endpoint is disabled).
    pub outcome: String,
    /// When the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
}

impl From<Attempt> for DeliveryView {
    fn from(a: Attempt) -> Self {
        Self {
            webhook_id: a.webhook_id,
            event: a.event.as_str().to_owned(),
            endpoint_id: a.endpoint_id,
            url: a.url,
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
            outcome: a.outcome.as_str().to_owned(),
            next_retry_at: a.next_retry_at,
        }
    }
}

/// The attempts, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesView {
    /// The last attempts (at most 50 are kept per conversion).
    pub items: Vec<DeliveryView>,
}

/// The endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointsView {
    /// Oldest first.
    pub items: Vec<EndpointView>,
}

/// Register a webhook endpoint for all of this tenant's conversions.
///
/// Every terminal status (and, with `on_start`, every attempt's start) is POSTed as the
/// conversion's record, signed per the Standard Webhooks specification with the secret in
/// this answer (shown once).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateEndpoint,
    responses((status = 201, body = EndpointView), (status = 400, description = "Not an http(s) URL, or a private address", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Webhooks are not enabled", body = Problem, content_type = "application/problem+json"), (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "The JSON does not have the documented fields", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<CreateEndpoint>,
) -> Result<(StatusCode, Json<EndpointView>), ApiError> {
    check_url_shape(&body.url)?;
    let e = service(&state)?
        .create_endpoint(&principal.tenant, &body.url, body.on_start)
        .await?;
    Ok((StatusCode::CREATED, Json(EndpointView::of(e, true))))
}

/// This tenant's webhook endpoints (without secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = EndpointsView), (status = 404, description = "Webhooks are not enabled", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<EndpointsView>, ApiError> {
    let items = service(&state)?.endpoints(&principal.tenant).await?;
    Ok(Json(EndpointsView {
        items: items
            .into_iter()
            .map(|e| EndpointView::of(e, false))
            .collect(),
    }))
}

/// One webhook endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let e = service(&state)?.endpoint(&principal.tenant, &id).await?;
    Ok(Json(EndpointView::of(e, false)))
}

/// Remove a webhook endpoint (messages still queued for it are dropped).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service(&state)?
        .delete_endpoint(&principal.tenant, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give an endpoint a new secret (returned once). The previous one keeps signing for 24 hours:
/// until then every message carries both signatures, space-separated.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let e = service(&state)?
        .rotate_endpoint(&principal.tenant, &id)
        .await?;
    Ok(Json(EndpointView::of(e, true)))
}

/// Rotate (the first call: create) the tenant's signing secret, which signs the messages sent
/// to a conversion's own `webhook_url`. Returned once; the previous one keeps signing for 24
/// hours. A submission with a `webhook_url` creates the secret if there is none yet: call this
/// to learn it.
#[utoipa::path(post, path = "/v1/webhook-secret/rotate", tag = "webhooks",
    responses((status = 200, body = SigningSecretView), (status = 404, description = "Webhooks are not enabled", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn rotate_signing_secret(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<SigningSecretView>, ApiError> {
    let s = service(&state)?
        .rotate_tenant_secret(&principal.tenant)
        .await?;
    Ok(Json(s.into()))
}

/// Every attempt to deliver this conversion's webhooks (the last 50), oldest first.
#[utoipa::path(get, path = "/v1/conversions/{id}/deliveries", tag = "webhooks",
    params(ConversionIdParam),
    responses((status = 200, body = DeliveriesView), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such conversion", body = Problem, content_type = "application/problem+json"), (status = 503, description = "A backend is unavailable", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeliveriesView>, ApiError> {
    let id = super::conversions::parse_id(&id)?;
    // The record first: another tenant's id answers 404 like an unknown one.
    let record = state.engine.tenant(&principal.tenant).get(id).await?;
    let items = match state.engine.webhooks() {
        Some(w) => w.deliveries(&record.tenant, id).await?,
        None => Vec::new(),
    };
    Ok(Json(DeliveriesView {
        items: items.into_iter().map(DeliveryView::from).collect(),
    }))
}

/// The shape of every webhook URL the API takes (`POST /v1/webhooks`, a submit's
/// `webhook_url`), as the OpenAPI document states it: http or https, a host name whose last
/// label starts with a letter (IP literals are refused: a public service has a name), an
/// optional port, path and query of URL characters. The address checks after DNS resolution
/// come on top, at delivery.
pub(crate) const URL_PATTERN: &str = r"^https?://([A-Za-z0-9](-?[A-Za-z0-9]){0,31}\.){0,8}[A-Za-z](-?[A-Za-z0-9]){0,31}(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,256}){0,16}(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,1024})?$";

/// The webhook URL fields of the request schemas: (schema, property).
const URL_FIELDS: [(&str, &str); 3] = [
    ("SubmitForm", "webhook_url"),
    ("SubmitJson", "webhook_url"),
    ("CreateEndpoint", "url"),
];

/// Adds [`URL_PATTERN`] to every webhook URL field of the spec. The pattern is added here
/// rather than in the fields' `#[schema]` attributes because utoipa's `pattern` takes only a
/// string literal: this way the text exists once.
pub(crate) fn document(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};
    let Some(components) = spec.components.as_mut() else {
        return;
    };
    for (schema, field) in URL_FIELDS {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
            && let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field)
        {
            property.pattern = Some(URL_PATTERN.to_owned());
        }
    }
}

static URL_SHAPE: std::sync::LazyLock<Option<regex::Regex>> =
    std::sync::LazyLock::new(|| regex::Regex::new(URL_PATTERN).ok());

/// Refuses a webhook URL without the documented shape with a 400 `invalid-webhook-url`. One
/// trailing newline is allowed, as JSON Schema validators written in Python read `$`.
pub(crate) fn check_url_shape(url: &str) -> Result<(), ApiError> {
    let bare = url.strip_suffix('\n').unwrap_or(url);
    let fits = bare.len() <= 2048 && URL_SHAPE.as_ref().is_some_and(|re| re.is_match(bare));
    if fits {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid-webhook-url",
            "expected an http(s) URL with a host name, e.g. https://example.com/hook (see the \
             pattern in /openapi.json)"
                .to_owned(),
        ))
    }
}

#[cfg(test)]
mod url_shape_tests {
    use super::{URL_FIELDS, URL_PATTERN, URL_SHAPE, check_url_shape};

    #[test]
    fn the_documented_shape_is_the_one_checked() {
        assert!(URL_SHAPE.is_some(), "the pattern compiles");
        // Every webhook URL field of the spec documents it.
        let engine = converto_core::Engine::builder()
            .backends(converto_core::Backends::in_memory())
            .registry(converto_core::ConverterRegistry::new())
            .build()
            .expect("engine");
        let state = crate::AppState::new(engine, crate::ApiSettings::default());
        let spec = serde_json::to_value(crate::router_and_spec(state).1).expect("spec");
        for (schema, field) in URL_FIELDS {
            assert_eq!(
                spec["components"]["schemas"][schema]["properties"][field]["pattern"], URL_PATTERN,
                "{schema}.{field}"
            );
        }
        for good in [
            "https://example.com/hooks/converto?token=a%20b",
            "http://hooks.example.org:8080/",
            "http://localhost:65535/x",
            "http://localhost/x",
            "https://a.b\n",
        ] {
            assert!(check_url_shape(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            " https://example.com",
            "ftp://example.com",
            "http://127.0.0.1/",
            "http://example.com:65536/",
            "http://[::1]/",
            "https://user:pw@example.com/",
            "https://xn--zz.example",
            "https://example.com/a b",
        ] {
            assert!(check_url_shape(bad).is_err(), "{bad}");
        }
    }
}
