//! What every HTTP service shares: the success envelope `{"message": "success", "data": …}`,
//! the error body `{"message", "code", "field"}`, a JSON body extractor that turns every
//! rejection into that error body (400, 413, 415), the optional bearer token of the write
//! endpoints ([`ApiToken`], [`require_token`]), and the `/healthz`, `/readyz` and `/metrics`
//! routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest request body any service accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An error response: status, a stable machine code, a message and the field to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code for programs, e.g. `validation_failed`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The request field to blame, if one is.
    pub field: Option<String>,
    /// Extra data (e.g. candidate mallIds for a 409).
    pub details: Option<Box<serde_json::Value>>,
}

impl ApiError {
    /// A new error without field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    /// 400 naming the field.
    pub fn invalid(field: Option<String>, message: impl Into<String>) -> Self {
        Self {
            field,
            ..Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 for a dependency that does not answer; the cause goes to the log, not the client.
    pub fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(dependency = what, error = %cause, "dependency failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency_unavailable",
            format!("{what} is not available right now; retry later"),
        )
    }

    /// Adds extra data to the body.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            message: &self.message,
            code: self.code,
            field: self.field.as_deref(),
            details: self.details.as_deref(),
        };
        json_response(self.status, &body)
    }
}

/// Serializes `body` with the JSON content type of SPEC §2.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )],
            bytes,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "response serialization failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The success envelope.
#[derive(Debug, Serialize)]
pub struct Success<T: Serialize> {
    /// Always `success`.
    pub message: &'static str,
    /// The payload.
    pub data: T,
    /// Present on paginated lists while more items remain.
    #[serde(rename = "nextCursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `{"message": "success", "data": data}` with `status`.
pub fn success<T: Serialize>(status: StatusCode, data: T) -> Response {
    json_response(
        status,
        &Success {
            message: "success",
            data,
            next_cursor: None,
        },
    )
}

/// A JSON request body as a [`serde_json::Value`], with rejections mapped to [`ApiError`]:
/// 415 for another content type, 413 past [`MAX_BODY_BYTES`], 400 for malformed JSON.
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(rejection)
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        JsonRejection::JsonSyntaxError(error) => ApiError::invalid(
            None,
            format!("the body is not valid JSON: {}", error.body_text()),
        ),
        JsonRejection::JsonDataError(error) => ApiError::invalid(
            None,
            format!("the body is not valid JSON: {}", error.body_text()),
        ),
        other => ApiError::invalid(None, other.body_text()),
    }
}

/// The bearer token the write endpoints require when configured. Only its SHA-256 digest is
/// kept, and a presented token is compared digest against digest in constant time, so neither
/// the comparison's timing nor a memory dump gives the token away; `Debug` prints no part of it.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl ApiToken {
    /// The token `secret`; `None` when it is empty or only whitespace (no token configured).
    pub fn new(secret: &str) -> Option<Self> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Self {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token (constant time over the digests).
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.digest.ct_eq(&digest))
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiToken(<redacted>)")
    }
}

/// 401 with the error body and `WWW-Authenticate: Bearer`.
fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"catalog-stream\""),
    );
    response
}

/// Requires `Authorization: Bearer <token>` on every route of `router` asked with a method
/// that writes (anything but GET, HEAD and OPTIONS) when `token` is given; reads stay open.
/// The check runs before the body is read, so an unauthenticated request costs no parsing.
pub fn require_token(router: Router, token: Option<ApiToken>) -> Router {
    match token {
        None => router,
        Some(token) => router.route_layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let token = token.clone();
                async move {
                    if matches!(
                        *request.method(),
                        Method::GET | Method::HEAD | Method::OPTIONS
                    ) {
                        return next.run(request).await;
                    }
                    let presented = request
                        .headers()
                        .get(header::AUTHORIZATION)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| {
                            let (scheme, credentials) = value.trim().split_once(' ')?;
                            scheme
                                .eq_ignore_ascii_case("bearer")
                                .then(|| credentials.trim())
                        });
                    match presented {
                        None => unauthorized("this endpoint needs `Authorization: Bearer <token>`"),
                        Some(presented) if token.matches(presented) => next.run(request).await,
                        Some(_) => unauthorized("the bearer token is not valid"),
                    }
                }
            },
        )),
    }
}

/// What `/readyz` asks: each dependency's name and whether it answers.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<(String, bool)>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registries: Arc<Vec<prometheus::Registry>>,
    readiness: ReadinessCheck,
}

/// `/healthz` (the process answers), `/readyz` (its dependencies answer: 200 or 503 with each
/// dependency's state) and `/metrics` (Prometheus text format of every registry, families of
/// the same name merged: a process running two topologies gives each its own registry with a
/// distinguishing constant label).
pub fn ops_routes(registries: Vec<prometheus::Registry>, readiness: ReadinessCheck) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { success(StatusCode::OK, "alive") }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registries: Arc::new(registries),
            readiness,
        })
}

/// The metric families of every registry, same names merged into one family.
fn gather(registries: &[prometheus::Registry]) -> Vec<prometheus::proto::MetricFamily> {
    let mut families: std::collections::BTreeMap<String, prometheus::proto::MetricFamily> =
        std::collections::BTreeMap::new();
    for registry in registries {
        for family in registry.gather() {
            match families.get_mut(family.name()) {
                Some(existing) => existing
                    .mut_metric()
                    .extend(family.get_metric().iter().cloned()),
                None => {
                    families.insert(family.name().to_owned(), family);
                }
            }
        }
    }
    families.into_values().collect()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let checks = (state.readiness)().await;
    let ready = checks.iter().all(|(_, ok)| *ok);
    let data: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, ok)| (name, serde_json::Value::Bool(ok)))
        .collect();
    if ready {
        success(StatusCode::OK, data)
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "a dependency does not answer",
        )
        .with_details(serde_json::Value::Object(data))
        .into_response()
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&gather(&state.registries)) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Answers every unknown route with the error body rather than an empty 404.
pub async fn fallback() -> ApiError {
    ApiError::not_found("no such route")
}

/// Answers a known route asked with another method with the error body rather than an empty
/// 405.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not answer that method",
    )
}
