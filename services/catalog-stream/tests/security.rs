//! Security (SPEC §9, issue 8): the optional bearer token of the write endpoints, and secrets
//! never in the logs.
//!
//! - The standalone binary with `CATALOG_API_TOKEN`: POST and DELETE without the token, with a
//!   wrong one or another scheme answer 401 with the error body and `WWW-Authenticate: Bearer`;
//!   with it they work; reads stay open; the OpenAPI document declares the scheme.
//! - The `product-collector` service with the token in its settings file and a MongoDB URI with
//!   a password (our own SecantusDB with a user), at `RUST_LOG=debug`: exercised, then its whole
//!   output is searched for both secrets.

mod support;

use std::time::Duration;

use support::own_servers::{Kind, OwnServer, start_product_collector, start_standalone, wait_ok};
use support::{ImageServer, free_port, product};

const TOKEN: &str = "tok-3f9a1c55e0b24d7c-secret";
const MONGO_PASSWORD: &str = "pw-81be02d4c1f6-secret";
const S3_SECRET: &str = "s3-5d0c7a99-secret";

async fn assert_unauthorized(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json")),
        "{what}"
    );
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["code"], "unauthorized", "{what}: {body}");
    assert!(body["message"].is_string(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_write_endpoints_need_the_token_and_it_is_never_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let images = ImageServer::pixel_png().await.base;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut process = start_standalone(
        &dir.path().join("data"),
        port,
        &dir.path().join("out.log"),
        &[("CATALOG_API_TOKEN", TOKEN), ("RUST_LOG", "debug")],
    );
    let client = reqwest::Client::new();
    wait_ok(&client, &format!("{base}/healthz"), Duration::from_secs(30)).await;

    let body = product("sec-mall", "p1", "t", &format!("{images}/p1.png"));
    let post = || client.post(format!("{base}/api/v1/products")).json(&body);
    assert_unauthorized(post().send().await.expect("POST"), "no token").await;
    assert_unauthorized(
        post().bearer_auth("wrong").send().await.expect("POST"),
        "wrong token",
    )
    .await;
    assert_unauthorized(
        post()
            .bearer_auth(format!("{TOKEN}x"))
            .send()
            .await
            .expect("POST"),
        "token with a suffix",
    )
    .await;
    assert_unauthorized(
        post()
            .basic_auth("user", Some(TOKEN))
            .send()
            .await
            .expect("POST"),
        "basic scheme",
    )
    .await;
    // Unauthenticated requests are refused before the body is looked at.
    let refused = client
        .post(format!("{base}/api/v1/products"))
        .header("content-type", "text/plain")
        .body("not json")
        .send()
        .await
        .expect("POST");
    assert_unauthorized(refused, "no token, bad body").await;

    let created = post().bearer_auth(TOKEN).send().await.expect("POST");
    assert_eq!(created.status(), 201);

    // Reads stay open.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .get(format!("{base}/api/v1/complete-products/p1"))
            .send()
            .await
            .expect("GET");
        if response.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "p1 not collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in ["/api/v1/complete-products", "/api/v1/products/p1/status"] {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200, "{path}");
    }

    let delete = || {
        client.delete(format!(
            "{base}/api/v1/complete-products/p1?mallId=sec-mall"
        ))
    };
    assert_unauthorized(delete().send().await.expect("DELETE"), "DELETE no token").await;
    assert_unauthorized(
        delete().bearer_auth("nope").send().await.expect("DELETE"),
        "DELETE wrong token",
    )
    .await;
    let deleted = delete().bearer_auth(TOKEN).send().await.expect("DELETE");
    assert_eq!(deleted.status(), 200);

    // The document declares the scheme on the two write operations, with their 401.
    let document: serde_json::Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        document["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    for (path, method) in [
        ("/api/v1/products", "post"),
        ("/api/v1/complete-products/{productId}", "delete"),
    ] {
        let operation = &document["paths"][path][method];
        assert!(operation["security"].is_array(), "{path} {method}");
        assert!(operation["responses"]["401"].is_object(), "{path} {method}");
    }
    assert!(
        document["paths"]["/api/v1/complete-products"]["get"]["security"].is_null(),
        "reads need no token"
    );

    let (status, _) = process.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit: {status}");
    let output = process.output();
    assert!(
        output.contains("DEBUG"),
        "RUST_LOG=debug gave no debug lines:\n{output}"
    );
    assert!(
        !output.contains(TOKEN),
        "the API token appears in the output:\n{output}"
    );
    println!(
        "standalone: {} bytes of debug output, no token in it",
        output.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_collector_never_logs_its_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut mongo = OwnServer::start(Kind::Secantus, dir.path());
    let admin = mongodb::Client::with_uri_str(mongo.url())
        .await
        .expect("client");
    admin
        .database("admin")
        .run_command(mongodb::bson::doc! {
            "createUser": "catalog", "pwd": MONGO_PASSWORD, "roles": ["root"],
        })
        .await
        .expect("createUser");
    let uri = format!(
        "mongodb://catalog:{MONGO_PASSWORD}@127.0.0.1:{}/?authSource=admin&serverSelectionTimeoutMS=3000",
        mongo.port
    );

    let (mut process, base) = start_product_collector(
        dir.path(),
        &format!(
            "api_token: {TOKEN}\nmongodb: {{database: sec}}\n\
             s3: {{bucket: sec-bucket, access_key_id: AKIATEST, secret_access_key: {S3_SECRET}}}\n"
        ),
        &uri,
        "debug",
    )
    .await;
    let client = reqwest::Client::new();

    let body = product("sec-mall", "p1", "t", "http://images.example/p1.png");
    let post = || client.post(format!("{base}/api/v1/products")).json(&body);
    assert_unauthorized(post().send().await.expect("POST"), "no token").await;
    assert_unauthorized(
        post()
            .bearer_auth(MONGO_PASSWORD)
            .send()
            .await
            .expect("POST"),
        "wrong token",
    )
    .await;
    let created = post().bearer_auth(TOKEN).send().await.expect("POST");
    assert_eq!(created.status(), 201, "{}", process.output());
    let updated = post().bearer_auth(TOKEN).send().await.expect("POST");
    assert_eq!(updated.status(), 200);

    // A MongoDB outage makes the driver report errors: they must not carry the password.
    mongo.stop();
    let failed = post().bearer_auth(TOKEN).send().await.expect("POST");
    assert_eq!(failed.status(), 503);
    let not_ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(not_ready.status(), 503);

    let (status, _) = process.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit: {status}");
    let output = process.output();
    assert!(
        output.contains("settings loaded") && output.contains("<redacted>"),
        "the settings were not logged (redacted) at debug:\n{output}"
    );
    for (name, secret) in [
        ("API token", TOKEN),
        ("MongoDB password", MONGO_PASSWORD),
        ("S3 secret key", S3_SECRET),
    ] {
        assert!(
            !output.contains(secret),
            "the {name} appears in the output:\n{output}"
        );
    }
    println!(
        "product-collector: {} bytes of debug output, no secret in it",
        output.len()
    );
}
