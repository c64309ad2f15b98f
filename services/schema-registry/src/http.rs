//! The Confluent REST API over a [`Registry`]: `app(registry)` returns the axum router.
//!
//! Request bodies are read as JSON whatever their content type (Confluent clients send
//! `application/vnd.schemaregistry.v1+json`); responses carry that content type, and errors are
//! `{"error_code": N, "message": "..."}` with Confluent's codes.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::compat::CompatibilityLevel;
use crate::error::RegistryError;
use crate::registry::{AVRO, Registry, VersionSpec, check_schema_type};

/// The content type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Shared = Arc<Registry>;
type ApiResult = Result<Response, RegistryError>;

/// The router serving the registry's REST API.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use schema_registry::{Registry, app};
///
/// let router: axum::Router = app(Arc::new(Registry::in_memory()));
/// ```
pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(|| async { reply(StatusCode::OK, &json!({})) }))
        .route(
            "/schemas/types",
            get(|| async { reply(StatusCode::OK, &[AVRO]) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/mode",
            get(|| async { reply(StatusCode::OK, &json!({"mode": "READWRITE"})) }),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
        .fallback(|| async {
            reply(
                StatusCode::NOT_FOUND,
                &json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
            )
        })
        .with_state(registry)
}

/// Serves [`app`] on `listener` until the process ends.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use schema_registry::{Registry, serve};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let url = format!("http://{}", listener.local_addr()?);
/// tokio::spawn(serve(listener, Arc::new(Registry::in_memory())));
/// // ... point clients at `url` ...
/// # Ok(()) }
/// ```
pub fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
) -> impl Future<Output = std::io::Result<()>> + Send {
    serve_with_shutdown(listener, registry, std::future::pending())
}

/// Serves [`app`] on `listener` until `shutdown` completes, then finishes in-flight requests.
pub fn serve_with_shutdown(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = std::io::Result<()>> + Send {
    let router = app(registry);
    async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        reply(
            status,
            &json!({"error_code": self.error_code(), "message": self.to_string()}),
        )
    }
}

fn reply<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn ok<T: Serialize + ?Sized>(body: &T) -> ApiResult {
    Ok(reply(StatusCode::OK, body))
}

/// Query flags Confluent clients send; unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Flags {
    deleted: Option<String>,
    #[serde(alias = "deleted_only")]
    deleted_only: Option<String>,
    subject_prefix: Option<String>,
    permanent: Option<String>,
    verbose: Option<String>,
    default_to_global: Option<String>,
}

fn flag(value: &Option<String>) -> bool {
    value
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::MalformedRequest(e.to_string()))
}

fn parse_id(id: &str) -> Result<u32, RegistryError> {
    id.parse().map_err(|_| RegistryError::SchemaNotFound)
}

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: Option<String>,
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<serde_json::Value>>,
}

impl SchemaBody {
    fn avro(body: &Bytes) -> Result<String, RegistryError> {
        let parsed: SchemaBody = parse_body(body)?;
        check_schema_type(
            parsed.schema_type.as_deref(),
            parsed.references.as_ref().map_or(0, Vec::len),
        )?;
        parsed
            .schema
            .ok_or_else(|| RegistryError::InvalidSchema("Empty schema".to_owned()))
    }
}

async fn schema_by_id(State(registry): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let schema = registry.schema_by_id(parse_id(&id)?)?;
    ok(&json!({ "schema": schema }))
}

async fn raw_schema_by_id(State(registry): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let schema = registry.schema_by_id(parse_id(&id)?)?;
    raw_schema(&schema)
}

fn raw_schema(schema: &str) -> ApiResult {
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema.to_owned(),
    )
        .into_response())
}

async fn versions_of_id(
    State(registry): State<Shared>,
    Path(id): Path<String>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    ok(&registry.versions_of_id(parse_id(&id)?, flag(&flags.deleted))?)
}

async fn subjects_of_id(
    State(registry): State<Shared>,
    Path(id): Path<String>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    let mut subjects: Vec<String> = registry
        .versions_of_id(parse_id(&id)?, flag(&flags.deleted))?
        .into_iter()
        .map(|r| r.subject)
        .collect();
    subjects.dedup();
    ok(&subjects)
}

async fn list_subjects(State(registry): State<Shared>, Query(flags): Query<Flags>) -> ApiResult {
    let deleted_only = flag(&flags.deleted_only);
    let mut subjects = registry.subjects(flag(&flags.deleted) || deleted_only);
    if deleted_only {
        let live = registry.subjects(false);
        subjects.retain(|s| !live.contains(s));
    }
    if let Some(prefix) = &flags.subject_prefix {
        subjects.retain(|s| s.starts_with(prefix.as_str()));
    }
    ok(&subjects)
}

async fn register(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let schema = SchemaBody::avro(&body)?;
    let id = registry.register(&subject, &schema)?;
    ok(&json!({ "id": id }))
}

async fn lookup(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let schema = SchemaBody::avro(&body)?;
    ok(&registry.lookup_with(&subject, &schema, flag(&flags.deleted))?)
}

async fn delete_subject(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    ok(&registry.delete_subject(&subject, flag(&flags.permanent))?)
}

async fn list_versions(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    ok(&registry.versions(&subject, flag(&flags.deleted))?)
}

async fn get_version(
    State(registry): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    ok(&registry.version(&subject, version.parse()?, flag(&flags.deleted))?)
}

async fn get_version_schema(
    State(registry): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    let found = registry.version(&subject, version.parse()?, flag(&flags.deleted))?;
    raw_schema(&found.schema)
}

async fn referenced_by(
    State(registry): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    // References are not supported, so nothing refers to anything; still 404 for unknown ones.
    registry.version(&subject, version.parse()?, true)?;
    ok(&Vec::<u32>::new())
}

async fn delete_version(
    State(registry): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    let spec: VersionSpec = version.parse()?;
    ok(&registry.delete_version(&subject, spec, flag(&flags.permanent))?)
}

/// `PUT /config` bodies: Confluent documents `compatibility`; accept `compatibilityLevel` too.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
}

impl ConfigBody {
    fn level(body: &Bytes) -> Result<CompatibilityLevel, RegistryError> {
        let parsed: ConfigBody = parse_body(body)?;
        parsed
            .compatibility
            .or(parsed.compatibility_level)
            .ok_or_else(|| RegistryError::InvalidCompatibilityLevel(String::new()))?
            .parse()
    }
}

async fn get_global_config(State(registry): State<Shared>) -> ApiResult {
    ok(&json!({ "compatibilityLevel": registry.global_compatibility() }))
}

async fn put_global_config(State(registry): State<Shared>, body: Bytes) -> ApiResult {
    let level = ConfigBody::level(&body)?;
    registry.set_global_compatibility(level)?;
    ok(&json!({ "compatibility": level }))
}

async fn get_subject_config(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> ApiResult {
    let level = match registry.subject_compatibility(&subject) {
        Some(level) => level,
        None if flag(&flags.default_to_global) => registry.global_compatibility(),
        None => return Err(RegistryError::SubjectConfigNotFound(subject)),
    };
    ok(&json!({ "compatibilityLevel": level }))
}

async fn put_subject_config(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = ConfigBody::level(&body)?;
    registry.set_subject_compatibility(&subject, level)?;
    ok(&json!({ "compatibility": level }))
}

async fn delete_subject_config(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
) -> ApiResult {
    let previous = registry.delete_subject_compatibility(&subject)?;
    ok(&json!({ "compatibilityLevel": previous }))
}

fn compatibility_reply(problems: Vec<String>, verbose: bool) -> ApiResult {
    let mut body = json!({ "is_compatible": problems.is_empty() });
    if verbose {
        body["messages"] = json!(problems);
    }
    ok(&body)
}

async fn compatibility_all(
    State(registry): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let schema = SchemaBody::avro(&body)?;
    let problems = registry.test_compatibility(&subject, &schema, None)?;
    compatibility_reply(problems, flag(&flags.verbose))
}

async fn compatibility_version(
    State(registry): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let spec: VersionSpec = version.parse()?;
    let schema = SchemaBody::avro(&body)?;
    let problems = registry.test_compatibility(&subject, &schema, Some(spec))?;
    compatibility_reply(problems, flag(&flags.verbose))
}
