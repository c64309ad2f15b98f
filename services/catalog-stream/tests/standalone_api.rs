//! The README's curl session against the standalone binary (SPEC §2, §5; issue 5): post a
//! product whose image is served locally, list, get one, status, update with another image
//! (the new image is served at its `url` with its content type, the old file is gone), delete
//! (404, file gone); the pipeline's per-product state (an interactive query of its task store);
//! SIGTERM exits 0 within 10 s; a restart on the same directory keeps the data.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::standalone::Standalone;
use support::{ImageServer, files_under, fixture, product};

const MALL: &str = "readme-mall";

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = client.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn post(client: &reqwest::Client, server: &Standalone, body: &serde_json::Value) -> u16 {
    client
        .post(server.url("/api/v1/products"))
        .json(body)
        .send()
        .await
        .expect("POST")
        .status()
        .as_u16()
}

/// Polls `GET /api/v1/complete-products/{id}` until `accept` holds for the product.
async fn wait_for(
    client: &reqwest::Client,
    server: &Standalone,
    product_id: &str,
    accept: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = server.url(&format!(
        "/api/v1/complete-products/{product_id}?mallId={MALL}"
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get_json(client, &url).await;
        if accept(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{product_id}: still {status} {body} after 20 s: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The file of a stored image, from its `file://` URI.
fn image_file(data_dir: &Path, image: &serde_json::Value) -> String {
    let uri = image["uri"].as_str().expect("uri");
    let relative = uri
        .split_once("/images/")
        .map(|(_, relative)| relative.to_owned())
        .expect("a file under images/");
    assert!(
        data_dir.join("images").join(&relative).is_file(),
        "{uri} is not on disk"
    );
    relative
}

/// Fetches an image URL, expecting it served with `content_type` and exactly `bytes`.
async fn assert_served(client: &reqwest::Client, url: &str, content_type: &str, bytes: &[u8]) {
    let response = client.get(url).send().await.expect("GET image");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some(content_type),
        "{url}"
    );
    assert_eq!(response.bytes().await.expect("image bytes").as_ref(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_session_post_list_get_status_update_delete_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let png = fixture("pixel.png");
    let jpg = fixture("pixel.jpg");
    let images = ImageServer::start(
        vec![
            ("/mug.png".into(), png.clone(), "image/png"),
            ("/mug-v2.jpg".into(), jpg.clone(), "image/jpeg"),
        ],
        (b"not found".to_vec(), "text/plain"),
        Duration::ZERO,
    )
    .await;
    let client = http_client();
    let mut server = Standalone::start(&data_dir).await;

    // Post two products.
    let mug = product(MALL, "mug-1", "Mug", &images.url("/mug.png"));
    let cup = product(MALL, "cup-1", "Cup", &images.url("/mug.png"));
    assert_eq!(post(&client, &server, &mug).await, 201);
    assert_eq!(post(&client, &server, &cup).await, 201);

    // Get one, once collected.
    let one = wait_for(&client, &server, "mug-1", |status, _| status == 200).await;
    let data = &one["data"];
    assert_eq!(data["title"], "Mug");
    assert_eq!(data["imageUrl"], images.url("/mug.png"));
    assert_eq!(data["image"]["contentType"], "image/png");
    assert_eq!(data["image"]["size"], png.len());
    let first_file = image_file(&data_dir, &data["image"]);
    assert!(data_dir.join("images").join(&first_file).is_file());
    let first_url = data["image"]["url"].as_str().expect("url").to_owned();
    assert!(first_url.starts_with(&format!("{}/images/", server.base)));
    assert_served(&client, &first_url, "image/png", &png).await;
    wait_for(&client, &server, "cup-1", |status, _| status == 200).await;

    // List.
    let (status, list) = get_json(
        &client,
        &server.url(&format!("/api/v1/complete-products?mallId={MALL}")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["message"], "success");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .filter_map(|item| item["productId"].as_str())
        .collect();
    assert_eq!(ids, ["cup-1", "mug-1"]);

    // Status.
    let (status, body) = get_json(
        &client,
        &server.url(&format!("/api/v1/products/mug-1/status?mallId={MALL}")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["state"], "collected");

    // The pipeline's own state of the product, read from the task store that holds it.
    let (status, body) = get_json(
        &client,
        &server.url(&format!(
            "/api/v1/pipeline/products/mug-1/state?mallId={MALL}"
        )),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let state = &body["data"]["state"];
    assert_eq!(state["deleted"], false, "{body}");
    assert!(state["image"]["sha256"].is_string(), "{body}");
    assert!(
        body["data"]["task"]
            .as_str()
            .is_some_and(|t| t.contains('_')),
        "{body}"
    );
    // Without the mall: found by scanning this instance's tasks (one mall has it).
    let (status, body) = get_json(
        &client,
        &server.url("/api/v1/pipeline/products/mug-1/state"),
    )
    .await;
    assert_eq!(
        (status, &body["data"]["mallId"]),
        (200, &serde_json::json!(MALL)),
        "{body}"
    );
    let (status, body) = get_json(
        &client,
        &server.url("/api/v1/pipeline/products/mug-1/state?mallId=%01"),
    )
    .await;
    assert_eq!(
        (status, &body["field"]),
        (400, &serde_json::json!("mallId")),
        "{body}"
    );
    let (status, body) = get_json(
        &client,
        &server.url(&format!(
            "/api/v1/pipeline/products/nobody/state?mallId={MALL}"
        )),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["details"]["localTasks"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );

    // Update with another image: the new one is served, the old file is gone.
    let mug_v2 = product(MALL, "mug-1", "Mug v2", &images.url("/mug-v2.jpg"));
    assert_eq!(post(&client, &server, &mug_v2).await, 200);
    let updated = wait_for(&client, &server, "mug-1", |status, body| {
        status == 200 && body["data"]["title"] == "Mug v2"
    })
    .await;
    let image = &updated["data"]["image"];
    assert_eq!(image["contentType"], "image/jpeg");
    let second_file = image_file(&data_dir, image);
    assert_ne!(second_file, first_file);
    let second_url = image["url"].as_str().expect("url").to_owned();
    assert_served(&client, &second_url, "image/jpeg", &jpg).await;
    assert!(
        !data_dir.join("images").join(&first_file).exists(),
        "the replaced image {first_file} is still stored"
    );
    assert_eq!(
        client
            .get(&first_url)
            .send()
            .await
            .expect("GET old image")
            .status()
            .as_u16(),
        404
    );

    // Delete: 404 at once, the file goes.
    let deleted = client
        .delete(server.url(&format!("/api/v1/complete-products/mug-1?mallId={MALL}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 200);
    let (status, _) = get_json(
        &client,
        &server.url(&format!("/api/v1/complete-products/mug-1?mallId={MALL}")),
    )
    .await;
    assert_eq!(status, 404, "GET after DELETE");
    let deadline = Instant::now() + Duration::from_secs(20);
    while data_dir.join("images").join(&second_file).exists() {
        assert!(
            Instant::now() < deadline,
            "the deleted product's image {second_file} is still stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get_json(
        &client,
        &server.url(&format!("/api/v1/products/mug-1/status?mallId={MALL}")),
    )
    .await;
    assert_eq!((status, &body["data"]["state"]), (200, &"deleted".into()));
    let remaining = files_under(&data_dir.join("images"));
    assert_eq!(
        remaining.len(),
        1,
        "only cup-1's image is left: {remaining:?}"
    );

    // SIGTERM: exit 0 within 10 s.
    let (exit, took) = server.terminate(Duration::from_secs(10)).await;
    assert!(
        exit.success(),
        "exit status {exit} after SIGTERM: {}",
        server.log()
    );
    assert!(took < Duration::from_secs(10));

    // Restart on the same directory: the data is still there.
    let server = Standalone::start(&data_dir).await;
    let kept = wait_for(&client, &server, "cup-1", |status, _| status == 200).await;
    assert_eq!(kept["data"]["title"], "Cup");
    let kept_file = image_file(&data_dir, &kept["data"]["image"]);
    assert_served(
        &client,
        &server.url(&format!("/images/{kept_file}")),
        "image/png",
        &png,
    )
    .await;
    let (status, _) = get_json(
        &client,
        &server.url(&format!("/api/v1/complete-products/mug-1?mallId={MALL}")),
    )
    .await;
    assert_eq!(
        status, 404,
        "a deleted product stays deleted after the restart"
    );
    assert_eq!(files_under(&data_dir.join("images")), [kept_file]);
}
