//! `/openapi.json` is kept true (SPEC §2): the document is a valid OpenAPI 3 document (its
//! structure, every `$ref` resolves, path parameters declared, security schemes defined), every
//! documented operation is routed, and real responses (successes and each documented error)
//! have a documented status code, a documented content type and a body matching the
//! documented schema.
//!
//! The schema check is a small hand-written validator of the JSON Schema subset OpenAPI 3.0
//! uses (`type`, `nullable`, `enum`, `required`, `properties`, `additionalProperties`, `items`,
//! lengths and bounds, `allOf`/`anyOf`/`oneOf`, `$ref` into `#/components/schemas`): it refuses
//! keywords it does not know rather than ignoring them, so the document cannot silently use
//! something the test does not check. `pattern` and `format` are annotations here.

mod support;

use axum::Router;
use axum::http::{Method, StatusCode};
use catalog_stream::product::{Product, ProductKey};
use catalog_stream::store::{
    CollectedImage, CompleteProduct, ProductStore, SledProductStore, SledViewStore, ViewChange,
    ViewStore,
};
use serde_json::{Value, json};
use support::{Reply, api_router, call};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

struct Service {
    router: Router,
    products: ProductStore,
    view: ViewStore,
    _dir: tempfile::TempDir,
}

fn service(ready: bool) -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path().join("db")).expect("sled");
    let products = ProductStore::Sled(SledProductStore::open(&db).expect("products"));
    let view = ViewStore::Sled(SledViewStore::open(&db).expect("view"));
    let router = api_router(products.clone(), view.clone(), ready);
    Service {
        router,
        products,
        view,
        _dir: dir,
    }
}

async fn document() -> Value {
    let service = service(true);
    let reply = call(
        &service.router,
        Method::GET,
        "/openapi.json",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type.starts_with("application/json"));
    serde_json::from_slice(&reply.body).expect("the document is JSON")
}

/// Resolves a local `$ref` (`#/a/b`, JSON pointer escapes included).
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

fn collect_refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    out.push((
                        at.to_owned(),
                        child.as_str().unwrap_or("<not a string>").to_owned(),
                    ));
                } else {
                    collect_refs(child, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                collect_refs(child, &format!("{at}/{index}"), out);
            }
        }
        _ => {}
    }
}

fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_document_is_valid_openapi_3() {
    let document = document().await;
    let mut problems = Vec::new();
    let version = document["openapi"].as_str().unwrap_or_default();
    if !version.starts_with("3.") {
        problems.push(format!("openapi is `{version}`, not 3.x"));
    }
    for field in ["title", "version"] {
        if !document["info"][field].is_string() {
            problems.push(format!("info.{field} is not a string"));
        }
    }
    let paths = document["paths"].as_object().expect("paths is an object");
    assert!(!paths.is_empty());

    let mut refs = Vec::new();
    collect_refs(&document, "#", &mut refs);
    assert!(refs.len() > 10, "the document uses $ref: {refs:?}");
    for (at, reference) in &refs {
        if !reference.starts_with("#/") || resolve(&document, reference).is_none() {
            problems.push(format!("{at}: $ref `{reference}` does not resolve"));
        }
    }

    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in paths {
        if !path.starts_with('/') {
            problems.push(format!("path `{path}` does not start with /"));
        }
        for key in item.as_object().expect("path item").keys() {
            if !METHODS.contains(&key.as_str())
                && !["summary", "description", "parameters", "servers"].contains(&key.as_str())
            {
                problems.push(format!("{path}: unknown path item field `{key}`"));
            }
        }
    }
    for (path, method, operation) in operations(&document) {
        let at = format!("{method} {path}");
        match operation["operationId"].as_str() {
            Some(id) if operation_ids.insert(id.to_owned()) => {}
            Some(id) => problems.push(format!("{at}: operationId `{id}` is not unique")),
            None => problems.push(format!("{at}: no operationId")),
        }
        let responses = operation["responses"].as_object();
        if responses.is_none_or(|responses| responses.is_empty()) {
            problems.push(format!("{at}: no responses"));
        }
        for (code, response) in responses.into_iter().flatten() {
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(reference) => resolve(&document, reference).unwrap_or(&Value::Null),
                None => response,
            };
            if code != "default"
                && !(code.len() == 3 && code.parse::<u16>().is_ok_and(|c| (100..600).contains(&c)))
            {
                problems.push(format!("{at}: response code `{code}`"));
            }
            if !response["description"].is_string() {
                problems.push(format!("{at} {code}: no description"));
            }
            for (media, content) in response["content"].as_object().into_iter().flatten() {
                if !media.contains('/') || !content["schema"].is_object() {
                    problems.push(format!("{at} {code} {media}: no schema"));
                }
            }
        }
        // Every `{name}` of the path is a required path parameter, and no other is declared.
        let templated: Vec<&str> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let parameters: Vec<Value> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                document["paths"][&path]["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .map(
                |parameter| match parameter.get("$ref").and_then(Value::as_str) {
                    Some(reference) => resolve(&document, reference).cloned().unwrap_or_default(),
                    None => parameter.clone(),
                },
            )
            .collect();
        for parameter in &parameters {
            let name = parameter["name"].as_str().unwrap_or_default();
            let location = parameter["in"].as_str().unwrap_or_default();
            if !["query", "header", "path", "cookie"].contains(&location) {
                problems.push(format!("{at}: parameter `{name}` in `{location}`"));
            }
            if !parameter["schema"].is_object() {
                problems.push(format!("{at}: parameter `{name}` has no schema"));
            }
            if location == "path" && (!templated.contains(&name) || parameter["required"] != true) {
                problems.push(format!(
                    "{at}: path parameter `{name}` is not a required part of the path"
                ));
            }
        }
        for name in &templated {
            if !parameters
                .iter()
                .any(|parameter| parameter["name"] == *name && parameter["in"] == "path")
            {
                problems.push(format!("{at}: `{{{name}}}` is not declared"));
            }
        }
        for requirement in operation["security"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(document["security"].as_array().into_iter().flatten())
        {
            for scheme in requirement
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, _)| name)
            {
                if !document["components"]["securitySchemes"][scheme].is_object() {
                    problems.push(format!("{at}: security scheme `{scheme}` is not defined"));
                }
            }
        }
    }
    // Every schema in components uses only what the checker knows.
    for (name, schema) in document["components"]["schemas"]
        .as_object()
        .expect("schemas")
    {
        let mut errors = Vec::new();
        check_keywords(schema, &format!("#/components/schemas/{name}"), &mut errors);
        problems.extend(errors);
    }
    assert!(
        problems.is_empty(),
        "the document is not valid:\n{}",
        problems.join("\n")
    );
}

const KNOWN: [&str; 22] = [
    "$ref",
    "type",
    "nullable",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "allOf",
    "anyOf",
    "oneOf",
    "description",
    "format",
    "pattern",
    "default",
    "example",
];

fn check_keywords(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        problems.push(format!("{at}: a schema must be an object"));
        return;
    };
    for (keyword, value) in map {
        if !KNOWN.contains(&keyword.as_str()) {
            problems.push(format!(
                "{at}: keyword `{keyword}` is not checked by this test"
            ));
        }
        match keyword.as_str() {
            "properties" => {
                for (name, child) in value.as_object().into_iter().flatten() {
                    check_keywords(child, &format!("{at}/properties/{name}"), problems);
                }
            }
            "items" => check_keywords(value, &format!("{at}/items"), problems),
            "additionalProperties" if value.is_object() => {
                check_keywords(value, &format!("{at}/additionalProperties"), problems);
            }
            "allOf" | "anyOf" | "oneOf" => {
                for (index, child) in value.as_array().into_iter().flatten().enumerate() {
                    check_keywords(child, &format!("{at}/{keyword}/{index}"), problems);
                }
            }
            _ => {}
        }
    }
}

/// Validates `value` against an OpenAPI 3.0 schema; every mismatch with its JSON path.
fn validate(document: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        match resolve(document, reference) {
            Some(target) => validate(document, target, value, at, errors),
            None => errors.push(format!("{at}: $ref `{reference}` does not resolve")),
        }
        return;
    }
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(kind) = schema["type"].as_str() {
        let matches = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => {
                errors.push(format!("{at}: unknown type `{other}`"));
                true
            }
        };
        if !matches {
            errors.push(format!("{at}: {value} is not of type {kind}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| length < min) {
            errors.push(format!("{at}: shorter than minLength"));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
            errors.push(format!("{at}: longer than maxLength"));
        }
    }
    if let Some(number) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| number < min) {
            errors.push(format!("{at}: below minimum"));
        }
        if schema["maximum"].as_f64().is_some_and(|max| number > max) {
            errors.push(format!("{at}: above maximum"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                errors.push(format!("{at}: required `{name}` is missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (name, child) in object {
            match properties.and_then(|properties| properties.get(name)) {
                Some(property) => {
                    validate(document, property, child, &format!("{at}.{name}"), errors);
                }
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => {
                        errors.push(format!("{at}: `{name}` is not a documented property"));
                    }
                    extra @ Value::Object(_) => {
                        validate(document, extra, child, &format!("{at}.{name}"), errors);
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (index, item) in items.iter().enumerate() {
            validate(document, schema, item, &format!("{at}[{index}]"), errors);
        }
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        validate(document, part, value, at, errors);
    }
    for (keyword, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        if let Some(choices) = schema[keyword].as_array() {
            let passing = choices
                .iter()
                .filter(|choice| {
                    let mut scratch = Vec::new();
                    validate(document, choice, value, at, &mut scratch);
                    scratch.is_empty()
                })
                .count();
            if passing == 0 || (exactly_one && passing > 1) {
                errors.push(format!("{at}: {passing} of the {keyword} choices match"));
            }
        }
    }
}

/// The concrete request path of a documented path template.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "probe"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let document = document().await;
    let service = service(true);
    let operations = operations(&document);
    assert!(operations.len() >= 9, "{operations:?}");
    for (path, method, _) in operations {
        let uri = concrete(&path);
        let (content_type, body) = if method == "post" || method == "put" {
            (Some("application/json"), b"{}".to_vec())
        } else {
            (None, Vec::new())
        };
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let reply = call(&service.router, method.clone(), &uri, content_type, body).await;
        let text = String::from_utf8_lossy(&reply.body);
        assert!(
            !text.contains("no such route") && reply.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but not routed: {} {text}",
            reply.status
        );
    }
    // And the reverse for the fallback: an undocumented path says so.
    let reply = call(
        &service.router,
        Method::GET,
        "/api/v1/undocumented",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&reply.body).contains("no such route"));
}

/// Checks one real response against the document: the operation of `template` + `method`
/// documents its status code and content type, and the body matches the schema.
fn conforms(
    document: &Value,
    method: &Method,
    template: &str,
    reply: &Reply,
) -> Result<(), String> {
    let what = format!("{method} {template} -> {}", reply.status);
    let operation = &document["paths"][template][method.as_str().to_lowercase()];
    if !operation.is_object() {
        return Err(format!("{what}: the operation is not documented"));
    }
    let code = reply.status.as_u16().to_string();
    let response = operation["responses"]
        .get(&code)
        .or_else(|| operation["responses"].get("default"))
        .ok_or_else(|| format!("{what}: status {code} is not documented"))?;
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve(document, reference).ok_or("unresolved response $ref")?,
        None => response,
    };
    let Some(content) = response["content"].as_object() else {
        return if reply.body.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: a body where none is documented"))
        };
    };
    let media = reply
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let documented = content.get(media).ok_or_else(|| {
        format!(
            "{what}: content type `{}` is not documented ({:?})",
            reply.content_type,
            content.keys()
        )
    })?;
    let body: Value = if media == "application/json" {
        serde_json::from_slice(&reply.body).map_err(|error| format!("{what}: not JSON: {error}"))?
    } else {
        Value::String(String::from_utf8_lossy(&reply.body).into_owned())
    };
    let mut errors = Vec::new();
    validate(document, &documented["schema"], &body, "$", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: the body breaks the schema:\n  {}\n  body: {body}",
            errors.join("\n  ")
        ))
    }
}

fn product(mall_id: &str, product_id: &str) -> Value {
    json!({"mallId": mall_id, "productId": product_id, "title": "Mug", "content": "A mug",
           "price": "12.50", "imageUrl": "https://img.example/mug.png"})
}

async fn collect(service: &Service, key: &ProductKey) {
    let stored = service
        .products
        .get(key)
        .await
        .expect("get")
        .expect("stored");
    let product: Product = stored.product;
    let object = format!(
        "products/{}/{}/{}.png",
        key.mall_id,
        key.product_id,
        "b".repeat(64)
    );
    service
        .view
        .apply(&ViewChange::Collected(Box::new(CompleteProduct {
            product,
            version: stored.version,
            image: CollectedImage {
                uri: format!("s3://bucket/{object}"),
                http_url: format!("http://127.0.0.1:9/{object}"),
                key: object,
                content_type: "image/png".into(),
                size: 67,
                sha256: "b".repeat(64),
                collected_at_ms: 1_700_000_000_000,
            },
        })))
        .await
        .expect("apply");
}

#[tokio::test]
async fn real_responses_match_the_document() {
    let document = document().await;
    let service = service(true);
    let router = &service.router;
    let json_type = Some("application/json");
    let post = |body: Vec<u8>, content_type: Option<&'static str>| {
        call(router, Method::POST, "/api/v1/products", content_type, body)
    };
    let mut checked: Vec<(Method, &str, Reply, StatusCode)> = Vec::new();
    let products = "/api/v1/products";
    let list = "/api/v1/complete-products";
    let one = "/api/v1/complete-products/{productId}";
    let status = "/api/v1/products/{productId}/status";

    let valid = |mall: &str, id: &str| product(mall, id).to_string().into_bytes();
    checked.push((
        Method::POST,
        products,
        post(valid("m1", "p1"), json_type).await,
        StatusCode::CREATED,
    ));
    checked.push((
        Method::POST,
        products,
        post(valid("m1", "p1"), json_type).await,
        StatusCode::OK,
    ));
    let mut missing = product("m1", "p1");
    missing.as_object_mut().expect("object").remove("price");
    checked.push((
        Method::POST,
        products,
        post(missing.to_string().into_bytes(), json_type).await,
        StatusCode::BAD_REQUEST,
    ));
    checked.push((
        Method::POST,
        products,
        post(b"{".to_vec(), json_type).await,
        StatusCode::BAD_REQUEST,
    ));
    let mut huge = product("m1", "p1");
    huge["content"] = json!("x".repeat(1024 * 1024 + 1));
    checked.push((
        Method::POST,
        products,
        post(huge.to_string().into_bytes(), json_type).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    ));
    checked.push((
        Method::POST,
        products,
        post(valid("m1", "p1"), Some("text/plain")).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    ));

    // p1 complete in m1 and m2, p2 pending in m1, p3 failed in m1.
    post(valid("m2", "p1"), json_type).await;
    post(valid("m1", "p2"), json_type).await;
    post(valid("m1", "p3"), json_type).await;
    collect(&service, &ProductKey::new("m1", "p1")).await;
    collect(&service, &ProductKey::new("m2", "p1")).await;
    let p3 = service
        .products
        .get(&ProductKey::new("m1", "p3"))
        .await
        .expect("get")
        .expect("p3");
    service
        .view
        .apply(&ViewChange::Failed {
            key: ProductKey::new("m1", "p3"),
            version: p3.version,
            reason: "not_found: HTTP 404".into(),
        })
        .await
        .expect("apply");

    let get = |uri: String| call(router, Method::GET, uri, None, Vec::new());
    let page = get(format!("{list}?limit=1")).await;
    assert!(
        String::from_utf8_lossy(&page.body).contains("nextCursor"),
        "a page with a cursor"
    );
    checked.push((Method::GET, list, page, StatusCode::OK));
    checked.push((
        Method::GET,
        list,
        get(format!("{list}?mallId=m2")).await,
        StatusCode::OK,
    ));
    checked.push((
        Method::GET,
        list,
        get(format!("{list}?limit=0")).await,
        StatusCode::BAD_REQUEST,
    ));
    checked.push((
        Method::GET,
        list,
        get(format!("{list}?cursor=zz")).await,
        StatusCode::BAD_REQUEST,
    ));

    checked.push((
        Method::GET,
        one,
        get(format!("{list}/p1?mallId=m1")).await,
        StatusCode::OK,
    ));
    checked.push((
        Method::GET,
        one,
        get(format!("{list}/p1")).await,
        StatusCode::CONFLICT,
    ));
    checked.push((
        Method::GET,
        one,
        get(format!("{list}/p2")).await,
        StatusCode::NOT_FOUND,
    ));
    checked.push((
        Method::GET,
        one,
        get(format!("{list}/p1?mallId=")).await,
        StatusCode::BAD_REQUEST,
    ));

    checked.push((
        Method::GET,
        status,
        get("/api/v1/products/p2/status".into()).await,
        StatusCode::OK,
    ));
    checked.push((
        Method::GET,
        status,
        get("/api/v1/products/p3/status".into()).await,
        StatusCode::OK,
    ));
    checked.push((
        Method::GET,
        status,
        get("/api/v1/products/p1/status?mallId=m1".into()).await,
        StatusCode::OK,
    ));
    checked.push((
        Method::GET,
        status,
        get("/api/v1/products/p1/status".into()).await,
        StatusCode::CONFLICT,
    ));
    checked.push((
        Method::GET,
        status,
        get("/api/v1/products/none/status".into()).await,
        StatusCode::NOT_FOUND,
    ));
    checked.push((
        Method::GET,
        status,
        get(format!("/api/v1/products/{}/status", "x".repeat(200))).await,
        StatusCode::BAD_REQUEST,
    ));

    let delete = |uri: String| call(router, Method::DELETE, uri, None, Vec::new());
    checked.push((
        Method::DELETE,
        one,
        delete(format!("{list}/p1")).await,
        StatusCode::CONFLICT,
    ));
    checked.push((
        Method::DELETE,
        one,
        delete(format!("{list}/p1?mallId=m2")).await,
        StatusCode::OK,
    ));
    checked.push((
        Method::DELETE,
        one,
        delete(format!("{list}/p1?mallId=m2")).await,
        StatusCode::NOT_FOUND,
    ));
    checked.push((
        Method::DELETE,
        one,
        delete(format!("{list}/p1?mallId=")).await,
        StatusCode::BAD_REQUEST,
    ));
    checked.push((
        Method::GET,
        status,
        get("/api/v1/products/p1/status?mallId=m2".into()).await,
        StatusCode::OK,
    ));

    for ops in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        checked.push((Method::GET, ops, get(ops.into()).await, StatusCode::OK));
    }
    let unready = self::service(false);
    checked.push((
        Method::GET,
        "/readyz",
        call(&unready.router, Method::GET, "/readyz", None, Vec::new()).await,
        StatusCode::SERVICE_UNAVAILABLE,
    ));

    let mut failures = Vec::new();
    for (method, template, reply, expected) in &checked {
        if reply.status != *expected {
            failures.push(format!(
                "{method} {template}: expected {expected}, got {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
        if let Err(error) = conforms(&document, method, template, reply) {
            failures.push(error);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} responses break the document:\n{}",
        failures.len(),
        checked.len(),
        failures.join("\n")
    );
}

#[test]
fn the_checker_catches_mismatches() {
    let document = json!({"components": {"schemas": {"E": {
        "type": "object", "required": ["code"], "additionalProperties": false,
        "properties": {"code": {"type": "string"}, "n": {"type": "integer", "nullable": true}}}}}});
    let schema = json!({"$ref": "#/components/schemas/E"});
    let check = |value: Value| {
        let mut errors = Vec::new();
        validate(&document, &schema, &value, "$", &mut errors);
        errors
    };
    assert!(check(json!({"code": "x", "n": null})).is_empty());
    assert!(check(json!({"code": "x", "n": 3})).is_empty());
    assert_eq!(check(json!({"n": 3})).len(), 1, "missing required");
    assert_eq!(check(json!({"code": 1})).len(), 1, "wrong type");
    assert_eq!(
        check(json!({"code": "x", "n": 1.5})).len(),
        1,
        "not an integer"
    );
    assert_eq!(
        check(json!({"code": "x", "extra": 1})).len(),
        1,
        "undocumented property"
    );
    let mut problems = Vec::new();
    check_keywords(&json!({"type": "string", "const": "x"}), "#", &mut problems);
    assert_eq!(problems.len(), 1, "unknown keywords are refused");
}
