//! Every route and error of the REST API, through `tower::ServiceExt::oneshot` (no socket).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use schema_registry::{CONTENT_TYPE, Registry, app};
use serde_json::{Value, json};
use tower::ServiceExt;

const V1: &str = r#"{"type":"record","name":"Product","namespace":"catalog","fields":[{"name":"id","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"Product","namespace":"catalog","fields":[{"name":"id","type":"string"},{"name":"name","type":"string","default":""}]}"#;
/// V2 without the default: backward compatible with V2, not with V1.
const V3: &str = r#"{"type":"record","name":"Product","namespace":"catalog","fields":[{"name":"id","type":"string"},{"name":"name","type":"string"}]}"#;
const OTHER: &str = r#"{"type":"record","name":"Mall","fields":[{"name":"mallId","type":"long"}]}"#;

fn router() -> Router {
    app(Arc::new(Registry::in_memory()))
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    (status, content_type, value)
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let builder = Request::builder().method(method).uri(uri);
    let request = match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("request");
    let (status, _, value) = send(app, request).await;
    (status, value)
}

async fn register(app: &Router, subject: &str, schema: &str) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        &format!("/subjects/{subject}/versions"),
        Some(json!({ "schema": schema })),
    )
    .await
}

/// `PUT /config/{subject}` with `level`, answered 200: the setup step of many tests.
async fn set_compatibility(app: &Router, subject: &str, level: &str) {
    let (status, body) = call(
        app,
        "PUT",
        &format!("/config/{subject}"),
        Some(json!({ "compatibility": level })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{subject} to {level}: {body}");
}

fn assert_error(result: (StatusCode, Value), status: u16, code: u64) {
    assert_case_error("", result, status, code);
}

/// [`assert_error`] naming the table case in every message.
fn assert_case_error(case: &str, result: (StatusCode, Value), status: u16, code: u64) {
    assert_eq!(result.0.as_u16(), status, "{case}: {}", result.1);
    assert_eq!(result.1["error_code"], json!(code), "{case}: {}", result.1);
    assert!(result.1["message"].is_string(), "{case}: {}", result.1);
}

#[tokio::test]
async fn register_returns_ids_shared_across_subjects() {
    let app = router();
    assert_eq!(
        register(&app, "products-value", V1).await,
        (StatusCode::OK, json!({"id": 1}))
    );
    // Same schema again, and the same schema written differently: same id, no new version.
    assert_eq!(
        register(&app, "products-value", V1).await.1,
        json!({"id": 1})
    );
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(V1).expect("json"))
        .expect("json");
    assert_eq!(
        register(&app, "products-value", &pretty).await.1,
        json!({"id": 1})
    );
    assert_eq!(
        call(&app, "GET", "/subjects/products-value/versions", None)
            .await
            .1,
        json!([1])
    );
    // Identical schema under another subject: one global id.
    assert_eq!(register(&app, "mirror-value", V1).await.1, json!({"id": 1}));
    assert_eq!(
        register(&app, "products-value", V2).await.1,
        json!({"id": 2})
    );
    assert_eq!(
        register(&app, "malls-value", OTHER).await.1,
        json!({"id": 3})
    );
    assert_eq!(
        call(&app, "GET", "/subjects/products-value/versions", None)
            .await
            .1,
        json!([1, 2])
    );
}

#[tokio::test]
async fn responses_use_the_registry_content_type_and_any_json_request_type() {
    let app = router();
    for content_type in [None, Some("application/json"), Some(CONTENT_TYPE)] {
        let mut builder = Request::builder()
            .method("POST")
            .uri("/subjects/t-value/versions");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let request = builder
            .body(Body::from(
                json!({ "schema": V1, "schemaType": "AVRO", "references": [] }).to_string(),
            ))
            .expect("request");
        let (status, ct, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{content_type:?}: {body}");
        assert_eq!(ct.as_deref(), Some(CONTENT_TYPE));
        assert_eq!(body, json!({"id": 1}));
    }
}

#[tokio::test]
async fn lookup_finds_the_version_or_says_why_not() {
    let app = router();
    register(&app, "products-value", V1).await;
    register(&app, "products-value", V2).await;
    let (status, body) = call(
        &app,
        "POST",
        "/subjects/products-value",
        Some(json!({"schema": V2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["subject"], "products-value");
    assert_eq!(body["id"], 2);
    assert_eq!(body["version"], 2);
    assert_eq!(body["schema"], V2);
    assert_error(
        call(
            &app,
            "POST",
            "/subjects/products-value",
            Some(json!({"schema": OTHER})),
        )
        .await,
        404,
        40403,
    );
    assert_error(
        call(
            &app,
            "POST",
            "/subjects/nobody-value",
            Some(json!({"schema": V1})),
        )
        .await,
        404,
        40401,
    );
    let (_, body) = call(
        &app,
        "POST",
        "/subjects/nobody-value",
        Some(json!({"schema": V1})),
    )
    .await;
    assert_eq!(body["message"], "Subject 'nobody-value' not found.");
}

#[tokio::test]
async fn schemas_by_id() {
    let app = router();
    register(&app, "products-value", V1).await;
    register(&app, "mirror-value", V1).await;
    assert_eq!(
        call(&app, "GET", "/schemas/ids/1", None).await,
        (StatusCode::OK, json!({"schema": V1}))
    );
    assert_eq!(
        call(&app, "GET", "/schemas/ids/1?deleted=true", None)
            .await
            .1,
        json!({"schema": V1})
    );
    assert_eq!(
        call(&app, "GET", "/schemas/ids/1/schema", None).await.1,
        serde_json::from_str::<Value>(V1).expect("json")
    );
    assert_eq!(
        call(&app, "GET", "/schemas/ids/1/versions", None).await.1,
        json!([{"subject": "mirror-value", "version": 1}, {"subject": "products-value", "version": 1}])
    );
    assert_eq!(
        call(&app, "GET", "/schemas/ids/1/subjects", None).await.1,
        json!(["mirror-value", "products-value"])
    );
    assert_eq!(
        call(&app, "GET", "/schemas/types", None).await.1,
        json!(["AVRO"])
    );
    assert_error(call(&app, "GET", "/schemas/ids/99", None).await, 404, 40403);
    assert_error(
        call(&app, "GET", "/schemas/ids/abc", None).await,
        404,
        40403,
    );
    assert_error(
        call(&app, "GET", "/schemas/ids/99/versions", None).await,
        404,
        40403,
    );
}

#[tokio::test]
async fn subjects_and_versions() {
    let app = router();
    register(&app, "products-value", V1).await;
    register(&app, "products-value", V2).await;
    register(&app, "malls-value", OTHER).await;
    assert_eq!(
        call(&app, "GET", "/subjects", None).await.1,
        json!(["malls-value", "products-value"])
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/subjects?subjectPrefix=prod&deleted=false",
            None
        )
        .await
        .1,
        json!(["products-value"])
    );
    for (uri, version, id) in [
        ("/subjects/products-value/versions/1", 1, 1),
        ("/subjects/products-value/versions/2", 2, 2),
        ("/subjects/products-value/versions/latest", 2, 2),
        ("/subjects/products-value/versions/-1", 2, 2),
    ] {
        let (status, body) = call(&app, "GET", uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(body["subject"], "products-value");
        assert_eq!(body["version"], version, "{uri}");
        assert_eq!(body["id"], id, "{uri}");
        assert!(body.get("schemaType").is_none(), "AVRO is implied");
    }
    assert_eq!(
        call(
            &app,
            "GET",
            "/subjects/products-value/versions/1/schema",
            None
        )
        .await
        .1,
        serde_json::from_str::<Value>(V1).expect("json")
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/subjects/products-value/versions/latest/referencedby",
            None
        )
        .await
        .1,
        json!([])
    );
    assert_error(
        call(&app, "GET", "/subjects/nobody/versions", None).await,
        404,
        40401,
    );
    assert_error(
        call(&app, "GET", "/subjects/nobody/versions/latest", None).await,
        404,
        40401,
    );
    assert_error(
        call(&app, "GET", "/subjects/products-value/versions/7", None).await,
        404,
        40402,
    );
    let (_, body) = call(&app, "GET", "/subjects/products-value/versions/7", None).await;
    assert_eq!(body["message"], "Version 7 not found.");
    assert_error(
        call(&app, "GET", "/subjects/products-value/versions/0", None).await,
        422,
        42202,
    );
    assert_error(
        call(&app, "GET", "/subjects/products-value/versions/abc", None).await,
        422,
        42202,
    );
}

#[tokio::test]
async fn path_encoded_subject_names() {
    let app = router();
    for (path, name) in [
        (
            "dbserver1.inventory.products-value",
            "dbserver1.inventory.products-value",
        ),
        ("with%2Fslash-value", "with/slash-value"),
        ("with%20space", "with space"),
    ] {
        assert_eq!(register(&app, path, V1).await.0, StatusCode::OK, "{path}");
        let (status, body) = call(
            &app,
            "GET",
            &format!("/subjects/{path}/versions/latest"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body["subject"], name);
    }
    let (_, subjects) = call(&app, "GET", "/subjects", None).await;
    assert_eq!(
        subjects,
        json!([
            "dbserver1.inventory.products-value",
            "with space",
            "with/slash-value"
        ])
    );
}

#[tokio::test]
async fn soft_and_permanent_deletes() {
    let app = router();
    register(&app, "products-value", V1).await;
    register(&app, "products-value", V2).await;

    // Versions: permanent first is refused, soft then permanent works.
    assert_error(
        call(
            &app,
            "DELETE",
            "/subjects/products-value/versions/1?permanent=true",
            None,
        )
        .await,
        404,
        40407,
    );
    assert_eq!(
        call(&app, "DELETE", "/subjects/products-value/versions/1", None)
            .await
            .1,
        json!(1)
    );
    assert_error(
        call(&app, "DELETE", "/subjects/products-value/versions/1", None).await,
        404,
        40406,
    );
    assert_eq!(
        call(&app, "GET", "/subjects/products-value/versions", None)
            .await
            .1,
        json!([2])
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/subjects/products-value/versions?deleted=true",
            None
        )
        .await
        .1,
        json!([1, 2])
    );
    assert_error(
        call(&app, "GET", "/subjects/products-value/versions/1", None).await,
        404,
        40402,
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/subjects/products-value/versions/1?deleted=true",
            None
        )
        .await
        .1["id"],
        1
    );
    assert_eq!(
        call(
            &app,
            "DELETE",
            "/subjects/products-value/versions/1?permanent=true",
            None
        )
        .await
        .1,
        json!(1)
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/subjects/products-value/versions?deleted=true",
            None
        )
        .await
        .1,
        json!([2])
    );
    assert_error(
        call(&app, "DELETE", "/subjects/products-value/versions/9", None).await,
        404,
        40402,
    );
    assert_error(
        call(&app, "DELETE", "/subjects/nobody/versions/1", None).await,
        404,
        40401,
    );

    // Subjects.
    assert_error(
        call(
            &app,
            "DELETE",
            "/subjects/products-value?permanent=true",
            None,
        )
        .await,
        404,
        40405,
    );
    assert_eq!(
        call(&app, "DELETE", "/subjects/products-value", None)
            .await
            .1,
        json!([2])
    );
    assert_error(
        call(&app, "DELETE", "/subjects/products-value", None).await,
        404,
        40404,
    );
    assert_eq!(call(&app, "GET", "/subjects", None).await.1, json!([]));
    assert_eq!(
        call(&app, "GET", "/subjects?deleted=true", None).await.1,
        json!(["products-value"])
    );
    assert_eq!(
        call(&app, "GET", "/subjects?deleted_only=true", None)
            .await
            .1,
        json!(["products-value"])
    );
    assert_error(
        call(&app, "GET", "/subjects/products-value/versions", None).await,
        404,
        40401,
    );
    // Ids stay resolvable after a soft delete (consumers still decode old records).
    assert_eq!(
        call(&app, "GET", "/schemas/ids/2", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &app,
            "DELETE",
            "/subjects/products-value?permanent=true",
            None
        )
        .await
        .1,
        json!([2])
    );
    assert_eq!(
        call(&app, "GET", "/subjects?deleted=true", None).await.1,
        json!([])
    );
    assert_error(
        call(&app, "DELETE", "/subjects/products-value", None).await,
        404,
        40401,
    );
    // Registering again starts the subject over, reusing the global id.
    assert_eq!(
        register(&app, "products-value", V1).await.1,
        json!({"id": 1})
    );
    assert_eq!(
        call(&app, "GET", "/subjects/products-value/versions", None)
            .await
            .1,
        json!([1])
    );
}

#[tokio::test]
async fn global_and_subject_config() {
    let app = router();
    assert_eq!(
        call(&app, "GET", "/config", None).await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        call(
            &app,
            "PUT",
            "/config",
            Some(json!({"compatibility": "full"}))
        )
        .await,
        (StatusCode::OK, json!({"compatibility": "FULL"}))
    );
    assert_eq!(
        call(&app, "GET", "/config", None).await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    assert_error(
        call(&app, "GET", "/config/products-value", None).await,
        404,
        40408,
    );
    assert_eq!(
        call(
            &app,
            "GET",
            "/config/products-value?defaultToGlobal=true",
            None
        )
        .await
        .1,
        json!({"compatibilityLevel": "FULL"})
    );
    for level in [
        "NONE",
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
    ] {
        assert_eq!(
            call(
                &app,
                "PUT",
                "/config/products-value",
                Some(json!({"compatibility": level}))
            )
            .await
            .1,
            json!({"compatibility": level})
        );
        assert_eq!(
            call(&app, "GET", "/config/products-value", None).await.1,
            json!({"compatibilityLevel": level})
        );
    }
    assert_eq!(
        call(&app, "DELETE", "/config/products-value", None).await.1,
        json!({"compatibilityLevel": "FULL_TRANSITIVE"})
    );
    assert_error(
        call(&app, "DELETE", "/config/products-value", None).await,
        404,
        40408,
    );
    assert_error(
        call(
            &app,
            "PUT",
            "/config",
            Some(json!({"compatibility": "SIDEWAYS"})),
        )
        .await,
        422,
        42203,
    );
    assert_error(
        call(&app, "PUT", "/config/x", Some(json!({}))).await,
        422,
        42203,
    );
    assert_eq!(
        call(&app, "GET", "/mode", None).await.1,
        json!({"mode": "READWRITE"})
    );
}

#[tokio::test]
async fn incompatible_registration_is_refused_with_409() {
    let app = router();
    register(&app, "products-value", V1).await;
    let result = register(&app, "products-value", V3).await;
    assert_error(result.clone(), 409, 409);
    assert!(
        result.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("incompatible")),
        "{}",
        result.1
    );
    // Another subject is unaffected; NONE lets anything through.
    assert_eq!(
        register(&app, "elsewhere-value", V3).await.0,
        StatusCode::OK
    );
    set_compatibility(&app, "products-value", "NONE").await;
    assert_eq!(
        register(&app, "products-value", OTHER).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn transitive_levels_check_every_live_version() {
    let app = router();
    register(&app, "a-value", V1).await;
    register(&app, "a-value", V2).await;
    set_compatibility(&app, "a-value", "BACKWARD_TRANSITIVE").await;
    assert_error(register(&app, "a-value", V3).await, 409, 409);
    set_compatibility(&app, "a-value", "BACKWARD").await;
    assert_eq!(register(&app, "a-value", V3).await.1, json!({"id": 3}));

    // FORWARD: dropping a field without default breaks old readers.
    register(&app, "f-value", V3).await;
    set_compatibility(&app, "f-value", "FORWARD").await;
    assert_error(register(&app, "f-value", V1).await, 409, 409);
    set_compatibility(&app, "f-value", "FULL").await;
    assert_error(register(&app, "f-value", V1).await, 409, 409);
    assert_eq!(
        register(&app, "f-value", V2).await.0,
        StatusCode::OK,
        "adding a default is FULL compatible"
    );
}

#[tokio::test]
async fn compatibility_endpoint() {
    let app = router();
    register(&app, "products-value", V1).await;
    register(&app, "products-value", V2).await;
    let body = Some(json!({"schema": V3}));
    assert_eq!(
        call(
            &app,
            "POST",
            "/compatibility/subjects/products-value/versions/latest",
            body.clone()
        )
        .await,
        (StatusCode::OK, json!({"is_compatible": true}))
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/compatibility/subjects/products-value/versions/1",
            body.clone()
        )
        .await
        .1,
        json!({"is_compatible": false})
    );
    let (_, verbose) = call(
        &app,
        "POST",
        "/compatibility/subjects/products-value/versions/1?verbose=true",
        body.clone(),
    )
    .await;
    assert_eq!(verbose["is_compatible"], false);
    assert!(
        verbose["messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "{verbose}"
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/compatibility/subjects/products-value/versions",
            body.clone()
        )
        .await
        .1,
        json!({"is_compatible": true})
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/compatibility/subjects/new-value/versions",
            body.clone()
        )
        .await
        .1,
        json!({"is_compatible": true}),
        "nothing to be incompatible with"
    );
    assert_error(
        call(
            &app,
            "POST",
            "/compatibility/subjects/nobody/versions/latest",
            body.clone(),
        )
        .await,
        404,
        40401,
    );
    assert_error(
        call(
            &app,
            "POST",
            "/compatibility/subjects/products-value/versions/5",
            body,
        )
        .await,
        404,
        40402,
    );
    assert_error(
        call(
            &app,
            "POST",
            "/compatibility/subjects/products-value/versions/latest",
            Some(json!({"schema": "nope"})),
        )
        .await,
        422,
        42201,
    );
}

#[tokio::test]
async fn bad_schemas_and_bodies() {
    let app = router();
    let invalid = [
        (
            "unterminated schema JSON",
            json!({"schema": "{\"type\": \"record\""}),
        ),
        (
            "unknown field type",
            json!({"schema": r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nosuchtype"}]}"#}),
        ),
        ("empty schema", json!({"schema": ""})),
        ("no schema field", json!({})),
        (
            "references",
            json!({"schema": V1, "references": [{"name": "a", "subject": "b", "version": 1}]}),
        ),
    ];
    for (case, body) in invalid {
        let result = call(&app, "POST", "/subjects/x/versions", Some(body)).await;
        assert_case_error(case, result, 422, 42201);
    }
    let protobuf = call(
        &app,
        "POST",
        "/subjects/x/versions",
        Some(json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"})),
    )
    .await;
    assert_error(protobuf.clone(), 422, 42201);
    let message = protobuf.1["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("PROTOBUF") && message.contains("AVRO"),
        "{message}"
    );
    let request = Request::builder()
        .method("POST")
        .uri("/subjects/x/versions")
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Body::from("not json"))
        .expect("request");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_code"], 400);
    // Nothing was registered by any of that.
    assert_eq!(call(&app, "GET", "/subjects", None).await.1, json!([]));
    // Primitive schemas are valid Avro.
    assert_eq!(
        register(&app, "products-key", r#""string""#).await.1,
        json!({"id": 1})
    );
}

#[tokio::test]
async fn unknown_routes_and_root() {
    let app = router();
    assert_eq!(
        call(&app, "GET", "/", None).await,
        (StatusCode::OK, json!({}))
    );
    assert_error(call(&app, "GET", "/no/such/route", None).await, 404, 404);
}
