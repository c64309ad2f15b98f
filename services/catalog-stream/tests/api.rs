//! The HTTP API of SPEC §2 through `tower::ServiceExt::oneshot` on the full service router
//! (fallback, body limit, OpenAPI route included), over both backends with the same assertions:
//! sled on a temp directory, and MongoDB on the real SecantusDB server (a fresh database per
//! test). The view is driven with `ViewStore::apply`, as the complete-products sink drives it.

mod support;

use std::collections::BTreeSet;

use axum::Router;
use axum::http::{Method, StatusCode};
use catalog_stream::complete_products::MAX_PAGE_SIZE;
use catalog_stream::product::{
    FIELDS, MAX_CONTENT_BYTES, MAX_ID_BYTES, MAX_IMAGE_URL_BYTES, MAX_TITLE_BYTES, Product,
    ProductKey,
};
use catalog_stream::store::{
    CollectedImage, CompleteProduct, MongoProductStore, MongoViewStore, ProductStore,
    SledProductStore, SledViewStore, ViewChange, ViewStore,
};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use support::{Reply, api_router, call, server_env, unique_name};

/// One backend under test: the router over it, and direct handles to check what was written.
struct Harness {
    router: Router,
    products: ProductStore,
    view: ViewStore,
    backend: Backend,
}

enum Backend {
    Sled {
        store: SledProductStore,
        _dir: tempfile::TempDir,
    },
    Mongo {
        database: mongodb::Database,
    },
}

async fn sled() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path().join("db")).expect("sled");
    let store = SledProductStore::open(&db).expect("products");
    let products = ProductStore::Sled(store.clone());
    let view = ViewStore::Sled(SledViewStore::open(&db).expect("view"));
    Harness {
        router: api_router(products.clone(), view.clone(), true),
        products,
        view,
        backend: Backend::Sled { store, _dir: dir },
    }
}

async fn mongo() -> Harness {
    let client = mongodb::Client::with_uri_str(server_env("MONGODB_URI"))
        .await
        .expect("mongodb client");
    let database = client.database(&unique_name("api").replace('-', "_"));
    let products = ProductStore::Mongo(
        MongoProductStore::open(database.clone(), "products")
            .await
            .expect("products collection (is SecantusDB up? `infrastructure/up.sh all`)"),
    );
    let view = ViewStore::Mongo(
        MongoViewStore::open(database.clone(), "complete_products", "product_status")
            .await
            .expect("view collections"),
    );
    Harness {
        router: api_router(products.clone(), view.clone(), true),
        products,
        view,
        backend: Backend::Mongo { database },
    }
}

/// Runs the same test body over both backends.
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sled() {
                super::$name(super::sled().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mongo() {
                let harness = super::mongo().await;
                let database = match &harness.backend {
                    super::Backend::Mongo { database } => database.clone(),
                    super::Backend::Sled { .. } => unreachable!(),
                };
                super::$name(harness).await;
                database.drop().await.expect("drop the test database");
            }
        }
    };
}

both_backends!(every_validation_rule_names_the_field_and_writes_nothing);
both_backends!(create_then_update_with_a_greater_version);
both_backends!(concurrent_upserts_of_one_identity_leave_one_product);
both_backends!(list_filters_and_paginates);
both_backends!(get_one_404_and_409);
both_backends!(delete_then_get_is_404);
both_backends!(status_follows_the_view_and_ignores_stale_versions);

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let Reply {
            status,
            content_type,
            body: bytes,
        } = call(&self.router, method, uri, content_type, body).await;
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            panic!(
                "{uri}: {status} body is not JSON ({error}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(
            content_type.starts_with("application/json"),
            "{uri}: {status} content type {content_type}"
        );
        (status, value)
    }

    async fn post(&self, body: &Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/v1/products",
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None, Vec::new()).await
    }

    async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, uri, None, Vec::new()).await
    }

    /// How many products the store holds, and (sled) how many change records wait.
    async fn written(&self) -> (u64, usize) {
        match &self.backend {
            Backend::Sled { store, .. } => (store.len() as u64, store.outbox().len()),
            Backend::Mongo { database } => (
                database
                    .collection::<Document>("products")
                    .count_documents(doc! {})
                    .await
                    .expect("count"),
                0,
            ),
        }
    }

    /// Makes the product complete in the view, as an image event would.
    async fn collect(&self, key: &ProductKey) -> i64 {
        let stored = self
            .products
            .get(key)
            .await
            .expect("get")
            .expect("posted product");
        let applied = self
            .view
            .apply(&collected(&stored.product, stored.version))
            .await
            .expect("apply");
        assert!(applied, "a newer Collected is applied");
        stored.version
    }
}

fn product(mall_id: &str, product_id: &str) -> Value {
    json!({"mallId": mall_id, "productId": product_id, "title": "Mug", "content": "A mug",
           "price": "12.50", "imageUrl": "https://img.example/mug.png"})
}

fn collected(product: &Product, version: i64) -> ViewChange {
    let key = format!(
        "products/{}/{}/{}.png",
        product.mall_id,
        product.product_id,
        "a".repeat(64)
    );
    ViewChange::Collected(Box::new(CompleteProduct {
        product: product.clone(),
        version,
        image: CollectedImage {
            uri: format!("s3://bucket/{key}"),
            http_url: format!("http://127.0.0.1:9/{key}"),
            key,
            content_type: "image/png".into(),
            size: 67,
            sha256: "a".repeat(64),
            collected_at_ms: 1_700_000_000_000,
        },
    }))
}

fn assert_invalid(what: &str, (status, body): (StatusCode, Value), field: Option<&str>) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["code"], "validation_failed", "{what}: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(body["field"].as_str(), field, "{what}: {body}");
}

async fn every_validation_rule_names_the_field_and_writes_nothing(h: Harness) {
    for field in FIELDS {
        let mut body = product("m1", "p1");
        body.as_object_mut().expect("object").remove(field);
        assert_invalid(
            &format!("missing {field}"),
            h.post(&body).await,
            Some(field),
        );
        for empty in ["", "   "] {
            let mut body = product("m1", "p1");
            body[field] = json!(empty);
            assert_invalid(&format!("empty {field}"), h.post(&body).await, Some(field));
        }
        for wrong in [
            json!(12),
            json!(true),
            json!(null),
            json!(["x"]),
            json!({"a": "b"}),
        ] {
            let mut body = product("m1", "p1");
            body[field] = wrong.clone();
            assert_invalid(
                &format!("{field} = {wrong}"),
                h.post(&body).await,
                Some(field),
            );
        }
    }
    for (field, limit) in [
        ("mallId", MAX_ID_BYTES),
        ("productId", MAX_ID_BYTES),
        ("title", MAX_TITLE_BYTES),
        ("content", MAX_CONTENT_BYTES),
    ] {
        let mut body = product("m1", "p1");
        body[field] = json!("x".repeat(limit + 1));
        assert_invalid(&format!("long {field}"), h.post(&body).await, Some(field));
        // Bytes, not characters: `é` is two bytes.
        body[field] = json!("é".repeat(limit / 2 + 1));
        assert_invalid(
            &format!("long {field} (bytes)"),
            h.post(&body).await,
            Some(field),
        );
    }
    let mut body = product("m1", "p1");
    body["imageUrl"] = json!(format!("https://h/{}", "x".repeat(MAX_IMAGE_URL_BYTES)));
    assert_invalid("long imageUrl", h.post(&body).await, Some("imageUrl"));
    for bad in [
        "-1", "1e3", "12.", ".5", "12,50", "abc", "1 000", "+3", "NaN", "0x10", "١٢",
    ] {
        let mut body = product("m1", "p1");
        body["price"] = json!(bad);
        assert_invalid(&format!("price {bad}"), h.post(&body).await, Some("price"));
    }
    for bad in [
        "file:///etc/passwd",
        "ftp://h/x.png",
        "gopher://h/x.png",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "/relative.png",
        "img.example/x.png",
        "http://",
        "http://user:pw@h/x.png",
    ] {
        let mut body = product("m1", "p1");
        body["imageUrl"] = json!(bad);
        assert_invalid(
            &format!("imageUrl {bad}"),
            h.post(&body).await,
            Some("imageUrl"),
        );
    }
    let mut body = product("m1", "p1");
    body["colour"] = json!("red");
    assert_invalid("unknown field", h.post(&body).await, Some("colour"));
    assert_invalid(
        "an array body",
        h.post(&json!([product("m1", "p1")])).await,
        None,
    );

    // Malformed JSON.
    for malformed in [&b"{\"mallId\": "[..], b"not json", b"", b"{\"a\":1}}"] {
        let response = h
            .call(
                Method::POST,
                "/api/v1/products",
                Some("application/json"),
                malformed.to_vec(),
            )
            .await;
        assert_invalid(
            &format!("malformed {}", String::from_utf8_lossy(malformed)),
            response,
            None,
        );
    }

    // 413: over 1 MiB, even though JSON and otherwise valid in shape.
    let mut huge = product("m1", "p1");
    huge["content"] = json!("x".repeat(1024 * 1024 + 1));
    let (status, body) = h.post(&huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "payload_too_large");

    // 415: another content type, or none.
    let valid = product("m1", "p1").to_string().into_bytes();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (status, body) = h
            .call(
                Method::POST,
                "/api/v1/products",
                content_type,
                valid.clone(),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {body}"
        );
        assert_eq!(body["code"], "unsupported_media_type");
    }

    assert_eq!(h.written().await, (0, 0), "a rejection wrote something");
    assert!(h.products.malls_with("p1").await.expect("malls").is_empty());

    // Limits are inclusive, and the charset parameter is accepted.
    let mut body = product("m1", "p1");
    body["mallId"] = json!("m".repeat(MAX_ID_BYTES));
    body["title"] = json!("t".repeat(MAX_TITLE_BYTES));
    body["content"] = json!("c".repeat(MAX_CONTENT_BYTES));
    body["imageUrl"] = json!(format!(
        "http://h/{}",
        "x".repeat(MAX_IMAGE_URL_BYTES - "http://h/".len())
    ));
    body["price"] = json!("0");
    let (status, reply) = h
        .call(
            Method::POST,
            "/api/v1/products",
            Some("application/json; charset=utf-8"),
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    assert_eq!(h.written().await.0, 1);
}

async fn create_then_update_with_a_greater_version(h: Harness) {
    let (status, created) = h.post(&product("m1", "p1")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["message"], "success");
    assert_eq!(created["data"]["mallId"], "m1");
    assert_eq!(created["data"]["title"], "Mug");
    let first = created["data"]["version"].as_i64().expect("version");

    let mut update = product("m1", "p1");
    update["title"] = json!("Big mug");
    update["imageUrl"] = json!("http://img.example/big.jpg");
    let (status, updated) = h.post(&update).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let second = updated["data"]["version"].as_i64().expect("version");
    assert!(second > first, "{second} > {first}");

    // Same identity, another mall: a new product.
    let (status, _) = h.post(&product("m2", "p1")).await;
    assert_eq!(status, StatusCode::CREATED);

    let stored = h
        .products
        .get(&ProductKey::new("m1", "p1"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.version, second);
    assert_eq!(stored.product.title, "Big mug");
    assert_eq!(stored.product.image_url, "http://img.example/big.jpg");
    assert_eq!(h.written().await.0, 2);
    if let Backend::Sled { store, .. } = &h.backend {
        assert_eq!(
            store.outbox().len(),
            3,
            "one change record per accepted write"
        );
    }
}

async fn concurrent_upserts_of_one_identity_leave_one_product(h: Harness) {
    if let Backend::Mongo { database } = &h.backend {
        let indexes: Vec<_> = database
            .collection::<Document>("products")
            .list_indexes()
            .await
            .expect("indexes")
            .try_collect()
            .await
            .expect("indexes");
        assert!(
            indexes.iter().any(|index| {
                index.keys == doc! {"mallId": 1, "productId": 1}
                    && index
                        .options
                        .as_ref()
                        .and_then(|options| options.unique)
                        .unwrap_or(false)
            }),
            "no unique (mallId, productId) index: {indexes:?}"
        );
        // The index holds even for a writer that bypasses the application.
        let raw = database.collection::<Document>("products");
        raw.insert_one(doc! {"_id": 1, "mallId": "raw", "productId": "r1"})
            .await
            .expect("first");
        let duplicate = raw
            .insert_one(doc! {"_id": 2, "mallId": "raw", "productId": "r1"})
            .await
            .expect_err("the unique index refuses a second (mallId, productId)");
        assert!(duplicate.to_string().contains("11000"), "{duplicate}");
        raw.delete_one(doc! {"_id": 1}).await.expect("cleanup");
    }

    let writers = (0..16).map(|writer| {
        let router = h.router.clone();
        tokio::spawn(async move {
            let mut body = product("m1", "same");
            body["title"] = json!(format!("writer {writer}"));
            let reply = call(
                &router,
                Method::POST,
                "/api/v1/products",
                Some("application/json"),
                body.to_string().into_bytes(),
            )
            .await;
            let value: Value = serde_json::from_slice(&reply.body).expect("json");
            let status = reply.status;
            (status, value)
        })
    });
    let mut results = Vec::new();
    for writer in writers {
        results.push(writer.await.expect("writer"));
    }
    let created = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "exactly one create: {results:?}");
    assert!(
        results
            .iter()
            .all(|(status, _)| matches!(*status, StatusCode::CREATED | StatusCode::OK)),
        "{results:?}"
    );
    let mut versions: Vec<(i64, String)> = results
        .iter()
        .map(|(_, body)| {
            (
                body["data"]["version"].as_i64().expect("version"),
                body["data"]["title"].as_str().expect("title").to_owned(),
            )
        })
        .collect();
    versions.sort();
    assert!(
        versions.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "versions are strictly increasing: {versions:?}"
    );
    let (last_version, last_title) = versions.last().expect("16 writes").clone();

    let stored = h
        .products
        .get(&ProductKey::new("m1", "same"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.version, last_version);
    assert_eq!(stored.product.title, last_title, "the last write wins");
    assert_eq!(
        h.products.malls_with("same").await.expect("malls"),
        vec!["m1".to_owned()]
    );
    match &h.backend {
        Backend::Mongo { database } => {
            let count = database
                .collection::<Document>("products")
                .count_documents(doc! {"mallId": "m1", "productId": "same"})
                .await
                .expect("count");
            assert_eq!(count, 1);
        }
        Backend::Sled { store, .. } => {
            assert_eq!(store.len(), 1);
            assert_eq!(store.outbox().len(), 16, "one change record per write");
        }
    }
}

async fn list_filters_and_paginates(h: Harness) {
    let mut expected = BTreeSet::new();
    for (mall, count) in [("ma", 4), ("mb", 3)] {
        for index in 0..count {
            let product_id = format!("p{index}");
            let (status, _) = h.post(&product(mall, &product_id)).await;
            assert_eq!(status, StatusCode::CREATED);
            h.collect(&ProductKey::new(mall, &product_id)).await;
            expected.insert((mall.to_owned(), product_id));
        }
    }
    // Posted but never collected: not listed.
    let (status, _) = h.post(&product("ma", "pending")).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, all) = h.get("/api/v1/complete-products").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["message"], "success");
    assert!(all.get("nextCursor").is_none(), "{all}");
    let listed: Vec<(String, String)> = all["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(|item| {
            assert!(
                item["image"]["uri"]
                    .as_str()
                    .expect("uri")
                    .starts_with("s3://")
            );
            assert_eq!(item["image"]["contentType"], "image/png");
            assert_eq!(item["imageUrl"], "https://img.example/mug.png");
            (
                item["mallId"].as_str().expect("mallId").to_owned(),
                item["productId"].as_str().expect("productId").to_owned(),
            )
        })
        .collect();
    assert_eq!(listed, expected.iter().cloned().collect::<Vec<_>>());

    let (status, mall) = h.get("/api/v1/complete-products?mallId=mb").await;
    assert_eq!(status, StatusCode::OK);
    let malls: Vec<&str> = mall["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|item| item["mallId"].as_str().expect("mallId"))
        .collect();
    assert_eq!(malls, ["mb", "mb", "mb"]);
    let (_, none) = h.get("/api/v1/complete-products?mallId=nobody").await;
    assert_eq!(none["data"], json!([]));

    // Pages of 2, then of 3 within a mall: every item once, in order, no cursor at the end.
    for (query, want) in [
        ("", expected.iter().cloned().collect::<Vec<_>>()),
        (
            "&mallId=ma",
            expected
                .iter()
                .filter(|(mall, _)| mall == "ma")
                .cloned()
                .collect(),
        ),
    ] {
        for limit in [1, 2, 3, 7] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let uri = match &cursor {
                    Some(cursor) => {
                        format!("/api/v1/complete-products?limit={limit}{query}&cursor={cursor}")
                    }
                    None => format!("/api/v1/complete-products?limit={limit}{query}"),
                };
                let (status, page) = h.get(&uri).await;
                assert_eq!(status, StatusCode::OK, "{uri}: {page}");
                let items = page["data"].as_array().expect("list");
                assert!(items.len() <= limit);
                seen.extend(items.iter().map(|item| {
                    (
                        item["mallId"].as_str().expect("mallId").to_owned(),
                        item["productId"].as_str().expect("productId").to_owned(),
                    )
                }));
                pages += 1;
                match page.get("nextCursor") {
                    Some(next) => {
                        assert_eq!(items.len(), limit, "a non-final page is full");
                        cursor = Some(next.as_str().expect("cursor string").to_owned());
                    }
                    None => break,
                }
                assert!(pages <= want.len() + 1, "pagination does not end");
            }
            assert_eq!(seen, want, "limit {limit}{query}");
        }
    }

    for bad in ["0", "-1", "abc", "1.5", &(MAX_PAGE_SIZE + 1).to_string()] {
        assert_invalid(
            &format!("limit {bad}"),
            h.get(&format!("/api/v1/complete-products?limit={bad}"))
                .await,
            Some("limit"),
        );
    }
    let (status, _) = h
        .get(&format!("/api/v1/complete-products?limit={MAX_PAGE_SIZE}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    for bad in ["zz", "00", "6869", "%E2%9C%93"] {
        assert_invalid(
            &format!("cursor {bad}"),
            h.get(&format!("/api/v1/complete-products?cursor={bad}"))
                .await,
            Some("cursor"),
        );
    }
    assert_invalid(
        "long mallId",
        h.get(&format!(
            "/api/v1/complete-products?mallId={}",
            "m".repeat(MAX_ID_BYTES + 1)
        ))
        .await,
        Some("mallId"),
    );
}

async fn get_one_404_and_409(h: Harness) {
    let (status, body) = h.get("/api/v1/complete-products/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");

    // Posted, not collected: 404.
    h.post(&product("m1", "shared")).await;
    let (status, _) = h.get("/api/v1/complete-products/shared").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.get("/api/v1/complete-products/shared?mallId=m1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Collected: 200 with the product, the original imageUrl and the stored image.
    h.collect(&ProductKey::new("m1", "shared")).await;
    let (status, one) = h.get("/api/v1/complete-products/shared").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["data"]["mallId"], "m1");
    assert_eq!(one["data"]["productId"], "shared");
    assert_eq!(one["data"]["title"], "Mug");
    assert_eq!(one["data"]["price"], "12.50");
    assert_eq!(one["data"]["imageUrl"], "https://img.example/mug.png");
    let image = &one["data"]["image"];
    assert!(
        image["uri"]
            .as_str()
            .expect("uri")
            .starts_with("s3://bucket/products/m1/shared/")
    );
    assert!(image["url"].as_str().expect("url").starts_with("http://"));
    assert_eq!(image["size"], 67);
    assert_eq!(image["sha256"], "a".repeat(64));
    assert_eq!(image["collectedAt"], "2023-11-14T22:13:20.000Z");

    // The same productId complete in two malls: 409 naming both, unless mallId is given.
    h.post(&product("m2", "shared")).await;
    h.collect(&ProductKey::new("m2", "shared")).await;
    let (status, conflict) = h.get("/api/v1/complete-products/shared").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["code"], "ambiguous_product");
    assert_eq!(conflict["details"]["mallIds"], json!(["m1", "m2"]));
    let (status, two) = h.get("/api/v1/complete-products/shared?mallId=m2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(two["data"]["mallId"], "m2");
    let (status, _) = h.get("/api/v1/complete-products/shared?mallId=m3").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_invalid(
        "long productId",
        h.get(&format!(
            "/api/v1/complete-products/{}",
            "p".repeat(MAX_ID_BYTES + 1)
        ))
        .await,
        Some("productId"),
    );
    assert_invalid(
        "empty mallId",
        h.get("/api/v1/complete-products/shared?mallId=").await,
        Some("mallId"),
    );
}

async fn delete_then_get_is_404(h: Harness) {
    h.post(&product("m1", "gone")).await;
    let version = h.collect(&ProductKey::new("m1", "gone")).await;
    let (status, _) = h.get("/api/v1/complete-products/gone").await;
    assert_eq!(status, StatusCode::OK);

    let (status, deleted) = h.delete("/api/v1/complete-products/gone").await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(
        deleted["data"],
        json!({"mallId": "m1", "productId": "gone", "deleted": true})
    );
    // At once, before any event went through the pipeline.
    let (status, _) = h.get("/api/v1/complete-products/gone").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.get("/api/v1/complete-products/gone?mallId=m1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = h.get("/api/v1/complete-products").await;
    assert_eq!(list["data"], json!([]));
    assert!(
        h.products
            .get(&ProductKey::new("m1", "gone"))
            .await
            .expect("get")
            .is_none()
    );
    // A late event of the deleted version does not bring it back.
    let late = h
        .view
        .apply(&collected(
            &serde_json::from_value(product("m1", "gone")).expect("product"),
            version,
        ))
        .await
        .expect("apply");
    assert!(!late, "a stale Collected after the deletion is ignored");
    let (status, _) = h.get("/api/v1/complete-products/gone").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = h.delete("/api/v1/complete-products/gone").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a second DELETE");
    let (status, _) = h.delete("/api/v1/complete-products/never").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // DELETE follows the same mallId rule.
    h.post(&product("m1", "twice")).await;
    h.post(&product("m2", "twice")).await;
    let (status, conflict) = h.delete("/api/v1/complete-products/twice").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["details"]["mallIds"], json!(["m1", "m2"]));
    let (status, _) = h.delete("/api/v1/complete-products/twice?mallId=m2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.products.malls_with("twice").await.expect("malls"),
        vec!["m1".to_owned()]
    );
}

async fn status_follows_the_view_and_ignores_stale_versions(h: Harness) {
    let uri = "/api/v1/products/s1/status";
    let (status, body) = h.get(uri).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (_, created) = h.post(&product("m1", "s1")).await;
    let v1 = created["data"]["version"].as_i64().expect("version");
    let state = |body: &Value| {
        body["data"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (status, body) = h.get(uri).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(state(&body), "pending");
    assert_eq!(body["data"]["version"], v1);
    assert_eq!(body["data"]["mallId"], "m1");

    h.collect(&ProductKey::new("m1", "s1")).await;
    let (_, body) = h.get(uri).await;
    assert_eq!(state(&body), "collected", "{body}");

    // A stale failure of an older version is ignored.
    let key = ProductKey::new("m1", "s1");
    let stale = h
        .view
        .apply(&ViewChange::Failed {
            key: key.clone(),
            version: v1 - 1,
            reason: "not_found: HTTP 404".into(),
        })
        .await
        .expect("apply");
    assert!(!stale);
    let (_, body) = h.get(uri).await;
    assert_eq!(state(&body), "collected");

    // An update: pending again until the pipeline speaks about the new version.
    let mut update = product("m1", "s1");
    update["imageUrl"] = json!("https://img.example/missing.png");
    let (_, updated) = h.post(&update).await;
    let v2 = updated["data"]["version"].as_i64().expect("version");
    let (_, body) = h.get(uri).await;
    assert_eq!(state(&body), "pending", "{body}");
    assert_eq!(body["data"]["version"], v2);

    assert!(
        h.view
            .apply(&ViewChange::Failed {
                key: key.clone(),
                version: v2,
                reason: "not_found: HTTP 404".into(),
            })
            .await
            .expect("apply")
    );
    let (_, body) = h.get(uri).await;
    assert_eq!(state(&body), "failed", "{body}");
    assert!(
        body["data"]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("not_found")),
        "{body}"
    );
    // A failed product is not complete.
    let (status, _) = h.get("/api/v1/complete-products/s1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The late Collected of v1 cannot overwrite the failure of v2.
    let late = h
        .view
        .apply(&collected(
            &serde_json::from_value(product("m1", "s1")).expect("product"),
            v1,
        ))
        .await
        .expect("apply");
    assert!(!late);
    let (_, body) = h.get(uri).await;
    assert_eq!(state(&body), "failed");

    let (status, _) = h.delete("/api/v1/complete-products/s1").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.get(uri).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(state(&body), "deleted", "{body}");
    let (_, body) = h.get("/api/v1/products/s1/status?mallId=m1").await;
    assert_eq!(state(&body), "deleted");

    // The image remover's own Removed event, later, changes nothing visible.
    let removed_version = h
        .view
        .status(&key)
        .await
        .expect("status")
        .expect("recorded")
        .version;
    h.view
        .apply(&ViewChange::Removed {
            key: key.clone(),
            version: removed_version + 1,
        })
        .await
        .expect("apply");
    let (_, body) = h.get(uri).await;
    assert_eq!(state(&body), "deleted");

    // Several malls: 409 with the candidates.
    h.post(&product("m1", "s2")).await;
    h.post(&product("m2", "s2")).await;
    let (status, conflict) = h.get("/api/v1/products/s2/status").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["details"]["mallIds"], json!(["m1", "m2"]));
    let (status, body) = h.get("/api/v1/products/s2/status?mallId=m2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state(&body), "pending");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_the_error_body() {
    let h = sled().await;
    let (status, body) = h.get("/api/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "no such route");
    let (status, body) = h
        .call(Method::PUT, "/api/v1/products", None, Vec::new())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(body["code"].is_string(), "{body}");
}
