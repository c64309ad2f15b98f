//! The distributed mode end to end against the real servers (SPEC §5, §7): the `catalog-stream`
//! binary runs as four processes (`cdc-source`, `image-pipeline`, `complete-products`,
//! `product-collector`) over Kafka, the Schema Registry, MongoDB (SecantusDB) and S3 (moto),
//! with unique topics, database, bucket and consumer group per run. A local image server
//! serves real PNG and JPEG bytes (and a 404). The children's logs go to files, printed when
//! the test fails (or always, with `CATALOG_E2E_LOGS=1`); the children are stopped (SIGTERM,
//! then SIGKILL) whatever happens.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use support::{
    ServiceClient, Services, common_settings, create_topics, free_port, get_object, list_objects,
    png_and_jpeg_server, run_topics, s3_client, unique_name, write_settings, write_topology,
};

const PNG: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.png");
const JPEG: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.jpg");
const DEADLINE: Duration = Duration::from_secs(30);
const SERVICES: [&str; 4] = [
    "cdc-source",
    "image-pipeline",
    "complete-products",
    "product-collector",
];

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_services_collect_update_delete_and_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Underscores: the CDC topic name is also the Avro namespace of the Debezium schemas, and
    // Avro names allow no `-`.
    let run_id = unique_name("e2e").replace('-', "_");
    let bucket = run_id.replace('_', "-");
    let database = run_id.clone();
    let topics = run_topics(&run_id, &database);
    let mut topic_names: Vec<String> = topics
        .as_object()
        .expect("topics")
        .values()
        .map(|topic| topic.as_str().expect("name").to_owned())
        .collect();
    let dead_letters: Vec<String> = topic_names
        .iter()
        .map(|topic| format!("{topic}.dlq"))
        .collect();
    topic_names.extend(dead_letters);
    create_topics(&topic_names, 4).await;

    let images = png_and_jpeg_server().await;
    let mut common = common_settings(&database, &bucket, &topics);
    // A member of a killed run leaves the group quickly.
    common["kafka"]["properties"] = json!({"session.timeout.ms": "6000"});
    // The image pipeline's consumer group is its application id: unique per run.
    let topology = write_topology(dir.path(), &format!("{run_id}-image-pipeline"));

    let mut ports = BTreeMap::new();
    let mut children =
        Services::new(DEADLINE, Duration::from_millis(100)).printing(80, Some("CATALOG_E2E_LOGS"));
    for service in SERVICES {
        let port = free_port();
        ports.insert(service, port);
        let topology_file = (service == "image-pipeline").then_some(topology.as_path());
        let config = write_settings(dir.path(), service, port, &common, topology_file);
        children.spawn(dir.path(), service, &config);
    }
    let run = ServiceClient::new(ports);
    let started = Instant::now();

    for service in SERVICES {
        children
            .wait_ready(&run.http, service, run.ports[service])
            .await;
    }
    eprintln!("all four ready after {:?}", started.elapsed());

    let s3 = s3_client("e2e");
    let mall = "mall-e2e";
    let image_url = |path: &str| format!("http://{images}{path}");
    let product = |product_id: &str, path: &str| {
        json!({"mallId": mall, "productId": product_id, "title": "Mug", "content": "A mug",
               "price": "12000", "imageUrl": image_url(path)})
    };

    // 1. A new product: collected into S3 with the bytes' sha256.
    let (status, body) = run.post_product(&product("p1", "/a.png")).await;
    assert_eq!(status, 201, "{body}");
    let one = format!("/api/v1/complete-products/p1?mallId={mall}");
    let first = children
        .eventually("p1 complete", || async {
            match run.get("complete-products", &one).await {
                (200, body) => Ok(body["data"].clone()),
                (status, body) => Err(format!("{status} {body}")),
            }
        })
        .await;
    eprintln!("p1 complete after {:?}", started.elapsed());
    assert_eq!(first["imageUrl"], image_url("/a.png"));
    assert_eq!(first["image"]["sha256"], sha256_hex(PNG));
    assert_eq!(first["image"]["contentType"], "image/png");
    assert_eq!(first["image"]["size"], PNG.len());
    let uri = first["image"]["uri"].as_str().expect("uri").to_owned();
    let prefix = format!("s3://{bucket}/");
    let first_key = uri
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{uri} is not in s3://{bucket}/"))
        .to_owned();
    assert!(first_key.starts_with("products/"), "{first_key}");
    assert_eq!(
        sha256_hex(&get_object(&s3, &bucket, &first_key).await),
        sha256_hex(PNG)
    );
    let product_prefix = format!(
        "{}/",
        first_key.rsplit_once('/').expect("key has a directory").0
    );
    let (status, list) = run
        .get("complete-products", "/api/v1/complete-products")
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    let (_, state) = run
        .get(
            "complete-products",
            &format!("/api/v1/products/p1/status?mallId={mall}"),
        )
        .await;
    assert_eq!(state["data"]["state"], "collected", "{state}");

    eprintln!("step done after {:?}", started.elapsed());
    // 2. An update with another image: the new one is served, the old object is gone.
    let mut update = product("p1", "/b.jpg");
    update["title"] = json!("Big mug");
    let (status, body) = run.post_product(&update).await;
    assert_eq!(status, 200, "{body}");
    let second = children
        .eventually("p1 updated", || async {
            match run.get("complete-products", &one).await {
                (200, body) if body["data"]["image"]["sha256"] == sha256_hex(JPEG) => {
                    Ok(body["data"].clone())
                }
                (status, body) => Err(format!("{status} {body}")),
            }
        })
        .await;
    assert_eq!(second["title"], "Big mug");
    assert_eq!(second["image"]["contentType"], "image/jpeg");
    let second_key = second["image"]["uri"]
        .as_str()
        .and_then(|uri| uri.strip_prefix(&prefix))
        .expect("s3 uri")
        .to_owned();
    assert_ne!(second_key, first_key);
    assert_eq!(
        sha256_hex(&get_object(&s3, &bucket, &second_key).await),
        sha256_hex(JPEG)
    );
    let objects = children
        .eventually("old image deleted", || async {
            let objects = list_objects(&s3, &bucket, &product_prefix).await;
            if objects == [second_key.clone()] {
                Ok(objects)
            } else {
                Err(format!("{objects:?}"))
            }
        })
        .await;
    assert_eq!(objects.len(), 1);

    eprintln!("step done after {:?}", started.elapsed());
    // 3. DELETE: 404 at once; the image leaves the bucket; the status says deleted.
    let response = run
        .http
        .delete(run.url("complete-products", &one))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 200);
    let (status, body) = run.get("complete-products", &one).await;
    assert_eq!(status, 404, "GET right after DELETE: {body}");
    children
        .eventually("p1 images removed", || async {
            let objects = list_objects(&s3, &bucket, &product_prefix).await;
            if objects.is_empty() {
                Ok(())
            } else {
                Err(format!("{objects:?}"))
            }
        })
        .await;
    let (status, state) = run
        .get("complete-products", "/api/v1/products/p1/status")
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["data"]["state"], "deleted", "{state}");
    let (_, body) = run.get("complete-products", &one).await;
    assert_eq!(
        body["code"], "not_found",
        "still gone after the pipeline: {body}"
    );

    eprintln!("step done after {:?}", started.elapsed());
    // 4. An image URL answering 404 ends `failed` with the reason.
    let (status, body) = run.post_product(&product("p2", "/missing.png")).await;
    assert_eq!(status, 201, "{body}");
    let failed = children
        .eventually("p2 failed", || async {
            match run
                .get(
                    "complete-products",
                    &format!("/api/v1/products/p2/status?mallId={mall}"),
                )
                .await
            {
                (200, body) if body["data"]["state"] == "failed" => Ok(body["data"].clone()),
                (status, body) => Err(format!("{status} {body}")),
            }
        })
        .await;
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("not_found")),
        "{failed}"
    );
    let (status, _) = run
        .get(
            "complete-products",
            &format!("/api/v1/complete-products/p2?mallId={mall}"),
        )
        .await;
    assert_eq!(status, 404, "a failed product is not complete");

    eprintln!("step done after {:?}", started.elapsed());
    // 5. Quiescence: no lag on any partition of the image pipeline's sources; all ready.
    let lag = children
        .eventually("image-pipeline lag 0", || async {
            let metrics = run.text("image-pipeline", "/metrics").await;
            let lines: Vec<String> = metrics
                .lines()
                .filter(|line| line.starts_with("topology_consumer_lag{"))
                .map(str::to_owned)
                .collect();
            let zero = |line: &String| line.rsplit(' ').next().is_some_and(|v| v.trim() == "0");
            let sources = [
                topics["cdc"].as_str().expect("cdc"),
                topics["upserts"].as_str().expect("upserts"),
                topics["deletes"].as_str().expect("deletes"),
            ];
            let covered = sources.iter().all(|topic| {
                lines
                    .iter()
                    .any(|line| line.contains(&format!("topic=\"{topic}\"")))
            });
            if covered && lines.iter().all(zero) {
                Ok(lines)
            } else {
                Err(lines.join("\n"))
            }
        })
        .await;
    assert!(!lag.is_empty());
    for service in SERVICES {
        let (status, body) = run.get(service, "/readyz").await;
        assert_eq!(status, 200, "{service} /readyz: {body}");
        let (status, _) = run.get(service, "/healthz").await;
        assert_eq!(status, 200, "{service} /healthz");
    }
    children.assert_alive();
    eprintln!("e2e done after {:?}", started.elapsed());
}
