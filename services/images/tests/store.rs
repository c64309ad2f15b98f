//! The object stores for real: [`LocalDirObjectStore`] on temporary directories and
//! [`S3ObjectStore`] against the moto S3 server that `infrastructure/up.sh s3` starts (a unique
//! bucket per test). Missing S3 settings fail the test; they never skip it.

use std::path::Path;

use bytes::Bytes;
use images::{LocalDirObjectStore, ObjectStore, S3Config, S3ObjectStore, StoreError, image_key};
use sha2::{Digest, Sha256};

const PNG: &[u8] = include_bytes!("fixtures/pixel.png");
const JPEG: &[u8] = include_bytes!("fixtures/pixel.jpg");

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// put / get / exists / list / delete, the same for every store.
async fn exercise(store: &dyn ObjectStore) {
    let png_key = image_key("mall-1", "prod/../1", &sha(PNG), "png").expect("key");
    let jpg_key = image_key("mall-1", "prod-2", &sha(JPEG), "jpg").expect("key");
    let other_key = image_key("mall-2", "prod-1", &sha(PNG), "png").expect("key");

    assert!(!store.exists(&png_key).await.expect("exists"));
    assert_eq!(store.get(&png_key).await.expect("get"), None);

    let stored = store
        .put(&png_key, Bytes::from_static(PNG), "image/png")
        .await
        .expect("put png");
    assert_eq!(stored.key, png_key);
    assert_eq!(stored.size, PNG.len() as u64);
    assert_eq!(stored.uri, store.uri(&png_key));
    assert!(stored.etag.as_deref().is_some_and(|t| !t.is_empty()));
    store
        .put(&jpg_key, Bytes::from_static(JPEG), "image/jpeg")
        .await
        .expect("put jpg");
    store
        .put(&other_key, Bytes::from_static(PNG), "image/png")
        .await
        .expect("put other");

    let object = store.get(&png_key).await.expect("get").expect("present");
    assert_eq!(object.bytes.as_ref(), PNG);
    assert_eq!(object.content_type, "image/png");
    let object = store.get(&jpg_key).await.expect("get").expect("present");
    assert_eq!(object.bytes.as_ref(), JPEG);
    assert_eq!(object.content_type, "image/jpeg");
    assert!(store.exists(&png_key).await.expect("exists"));

    // Replacing is allowed and complete.
    store
        .put(&png_key, Bytes::from_static(PNG), "image/png")
        .await
        .expect("put again");

    let mut mall_1 = vec![png_key.clone(), jpg_key.clone()];
    mall_1.sort();
    assert_eq!(store.list("products/mall-1/").await.expect("list"), mall_1);
    assert_eq!(store.list("products/").await.expect("list").len(), 3);
    assert_eq!(
        store.list("products/mall-2/prod").await.expect("list"),
        vec![other_key.clone()]
    );
    assert!(store.list("products/none/").await.expect("list").is_empty());

    store.delete(&png_key).await.expect("delete");
    store
        .delete(&png_key)
        .await
        .expect("deleting twice is fine");
    assert!(!store.exists(&png_key).await.expect("exists"));
    assert_eq!(store.get(&png_key).await.expect("get"), None);
    assert_eq!(
        store.list("products/mall-1/").await.expect("list"),
        vec![jpg_key.clone()]
    );

    for bad in ["../escape.png", "/etc/passwd", "a//b.png", "a/.hidden"] {
        let err = store
            .put(bad, Bytes::from_static(PNG), "image/png")
            .await
            .expect_err(bad);
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{bad}: {err}");
    }
}

#[tokio::test]
async fn local_dir_store_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalDirObjectStore::new(dir.path(), "http://127.0.0.1:8080/").expect("store");
    exercise(&store).await;

    let key = image_key("m", "p", &sha(PNG), "png").expect("key");
    let stored = store
        .put(&key, Bytes::from_static(PNG), "image/png")
        .await
        .expect("put");
    assert_eq!(
        stored.url.as_deref(),
        Some(format!("http://127.0.0.1:8080/images/{key}").as_str())
    );
    assert_eq!(
        store.http_url(&key).await.expect("url"),
        Some(format!("http://127.0.0.1:8080/images/{key}"))
    );
    assert!(stored.uri.starts_with("file:///"), "{}", stored.uri);
    let path = store.path_for(&key).expect("path");
    assert!(path.starts_with(store.root()));
    assert_eq!(std::fs::read(&path).expect("file"), PNG);
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                pending.push(entry.path());
            } else {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn local_dir_writes_are_atomic_and_leave_no_temporary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(
        LocalDirObjectStore::new(dir.path(), "http://localhost:8080").expect("store"),
    );
    let key = image_key("m", "p", &sha(PNG), "png").expect("key");
    // Concurrent writers of the same key: readers only ever see a whole file.
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let body = if i % 2 == 0 { PNG } else { JPEG };
                store
                    .put(&key, Bytes::from_static(body), "image/png")
                    .await
                    .expect("put")
            })
        })
        .collect();
    for _ in 0..50 {
        if let Some(object) = store.get(&key).await.expect("get") {
            assert!(object.bytes.as_ref() == PNG || object.bytes.as_ref() == JPEG);
        }
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.expect("join");
    }
    let names = files_under(dir.path());
    assert_eq!(names.len(), 1, "{names:?}");
    // Removing the last object removes its now-empty directories too.
    store.delete(&key).await.expect("delete");
    assert!(files_under(dir.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("root")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(left, [".incoming"], "only the (empty) write area stays");

    // A write cut short by a crash leaves a file in the write area; reopening clears it.
    std::fs::write(dir.path().join(".incoming/cut-short.tmp-1"), b"partial").expect("write");
    LocalDirObjectStore::new(dir.path(), "http://images.test").expect("reopen");
    let incoming = std::fs::read_dir(dir.path().join(".incoming")).expect("write area");
    assert_eq!(
        incoming.count(),
        0,
        "stale temporary files are removed when the store opens"
    );
}

/// The S3 settings from the environment, else from `infrastructure/.env`.
fn s3_settings() -> (String, String, String, String) {
    let env_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infrastructure/.env");
    let file: Vec<(String, String)> = std::fs::read_to_string(env_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.trim().trim_matches(['"', '\'']).to_owned(),
            )
        })
        .collect();
    let get = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| file.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .unwrap_or_else(|| {
                panic!(
                    "{name} is not set and not in {env_file}: run `infrastructure/up.sh s3` \
                     to start the moto S3 server and write infrastructure/.env"
                )
            })
    };
    (
        get("S3_ENDPOINT"),
        get("AWS_ACCESS_KEY_ID"),
        get("AWS_SECRET_ACCESS_KEY"),
        get("AWS_REGION"),
    )
}

fn unique_bucket(test: &str) -> String {
    format!("images-{test}-{:016x}", rand::random::<u64>())
}

fn s3_config(test: &str) -> S3Config {
    let (endpoint, access_key_id, secret_access_key, region) = s3_settings();
    S3Config {
        bucket: unique_bucket(test),
        region: Some(region),
        endpoint: Some(endpoint),
        access_key_id: Some(access_key_id),
        secret_access_key: Some(secret_access_key),
        create_bucket: true,
        ..S3Config::default()
    }
}

async fn s3_store(test: &str, tweak: impl FnOnce(&mut S3Config)) -> S3ObjectStore {
    let mut config = s3_config(test);
    tweak(&mut config);
    let endpoint = config.endpoint.clone().unwrap_or_default();
    S3ObjectStore::new(config).await.unwrap_or_else(|e| {
        panic!("S3 at {endpoint} is not usable ({e}): run `infrastructure/up.sh s3`")
    })
}

#[tokio::test]
async fn s3_store_round_trip() {
    let store = s3_store("roundtrip", |_| {}).await;
    exercise(&store).await;
    let key = image_key("m", "p", &sha(PNG), "png").expect("key");
    let stored = store
        .put(&key, Bytes::from_static(PNG), "image/png")
        .await
        .expect("put");
    assert_eq!(stored.uri, format!("s3://{}/{key}", store.bucket()));
    assert_eq!(
        stored.url, None,
        "no public base URL and no presigning configured"
    );
    // Opening the store again on the existing bucket is fine and sees the object.
    let again = S3ObjectStore::new(S3Config {
        bucket: store.bucket().to_owned(),
        ..s3_config("unused")
    })
    .await
    .expect("existing bucket");
    assert!(again.exists(&key).await.expect("exists"));
    // Without create_bucket, a missing bucket is an error on first use, not a silent success.
    let missing = S3ObjectStore::new(S3Config {
        create_bucket: false,
        ..s3_config("missing")
    })
    .await
    .expect("no request made yet");
    let err = missing
        .put(&key, Bytes::from_static(PNG), "image/png")
        .await
        .expect_err("no such bucket");
    assert!(
        matches!(
            err,
            StoreError::S3 {
                op: "PutObject",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn s3_store_http_locations() {
    let public = s3_store("public", |c| {
        c.public_base_url = Some("https://cdn.example/images/".into());
    })
    .await;
    let key = image_key("m", "p", &sha(PNG), "png").expect("key");
    let stored = public
        .put(&key, Bytes::from_static(PNG), "image/png")
        .await
        .expect("put");
    assert_eq!(
        stored.url,
        Some(format!("https://cdn.example/images/{key}"))
    );

    let presigned = s3_store("presign", |c| c.presign_expiry_secs = Some(300)).await;
    presigned
        .put(&key, Bytes::from_static(JPEG), "image/jpeg")
        .await
        .expect("put");
    let url = presigned
        .http_url(&key)
        .await
        .expect("presign")
        .expect("a presigned URL");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    // The presigned URL serves the object (moto is on loopback).
    images::install_tls_provider();
    let response = reqwest::get(&url).await.expect("GET presigned");
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.bytes().await.expect("body").as_ref(), JPEG);
}

#[tokio::test]
async fn s3_store_refuses_bad_configuration() {
    let err = S3ObjectStore::new(S3Config {
        bucket: "Bad_Bucket".into(),
        access_key_id: Some("only-the-id".into()),
        ..S3Config::default()
    })
    .await
    .expect_err("invalid");
    let message = err.to_string();
    assert!(
        message.contains("bucket") && message.contains("together"),
        "{message}"
    );
}
