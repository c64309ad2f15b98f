//! The distributed mode end to end against the real servers (SPEC §5, §7): the `catalog-stream`
//! binary runs as four processes (`cdc-source`, `image-pipeline`, `complete-products`,
//! `product-collector`) over Kafka, the Schema Registry, MongoDB (SecantusDB) and S3 (moto),
//! with unique topics, database, bucket and consumer group per run. A local image server
//! serves real PNG and JPEG bytes (and a 404). The children's logs go to files, printed when
//! the test fails (or always, with `CATALOG_E2E_LOGS=1`); the children are stopped (SIGTERM,
//! then SIGKILL) whatever happens.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use catalog_stream::pipeline::IMAGE_PIPELINE_TOPOLOGY;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{server_env, unique_name};

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

/// The four children; stopped on drop, their logs printed when the test panicked.
struct Children {
    running: Vec<(String, Child)>,
    logs: Vec<(String, PathBuf)>,
}

impl Children {
    fn print_logs(&self, which: impl Fn(&str) -> bool) {
        for (name, path) in self.logs.iter().filter(|(name, _)| which(name)) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "===== {name} ({} lines, last {}) =====\n{}",
                lines.len(),
                tail.len(),
                tail.join("\n")
            );
        }
    }

    /// Panics (with the logs) if a child has exited.
    fn assert_alive(&mut self) {
        for (name, child) in &mut self.running {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early: {status}");
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &self.running {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stuck = Vec::new();
        for (name, child) in &mut self.running {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        eprintln!("{name} did not stop within 10 s of SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        stuck.push(name.clone());
                        break;
                    }
                }
            }
        }
        if std::thread::panicking() || std::env::var_os("CATALOG_E2E_LOGS").is_some() {
            self.print_logs(|_| true);
        } else if !stuck.is_empty() {
            self.print_logs(|name| stuck.iter().any(|stuck| stuck == name));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

async fn create_topics(topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", server_env("KAFKA_BOOTSTRAP"))
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, 4, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics (is Kafka up? `infrastructure/up.sh all`)");
    for result in results {
        result.expect("topic created");
    }
}

/// A local image host: `/a.png`, `/b.jpg`, and 404 for anything else.
async fn image_server() -> SocketAddr {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/a.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG) }),
        )
        .route(
            "/b.jpg",
            get(|| async { ([(header::CONTENT_TYPE, "image/jpeg")], JPEG) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such image") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

fn s3_client() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(server_env("AWS_REGION")))
        .endpoint_url(server_env("S3_ENDPOINT"))
        .credentials_provider(Credentials::new(
            server_env("AWS_ACCESS_KEY_ID"),
            server_env("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "e2e",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn list_objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list objects");
    listed
        .contents()
        .iter()
        .filter_map(|object| object.key().map(str::to_owned))
        .collect()
}

async fn get_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    s3.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{key} is not in the bucket: {error:?}"))
        .body
        .collect()
        .await
        .expect("object body")
        .to_vec()
}

struct Run {
    http: reqwest::Client,
    ports: BTreeMap<&'static str, u16>,
}

impl Run {
    fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    async fn get(&self, service: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(service, path))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {service}{path}: {error}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn text(&self, service: &str, path: &str) -> String {
        self.http
            .get(self.url(service, path))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    async fn post_product(&self, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("product-collector", "/api/v1/products"))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `DEADLINE`.
async fn eventually<T, F, Fut>(children: &mut Children, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() > DEADLINE => {
                panic!("{what}: not within {DEADLINE:?}; last: {last}")
            }
            Err(_) => {
                children.assert_alive();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn write_settings(
    dir: &Path,
    service: &str,
    port: u16,
    common: &Value,
    topology_file: Option<&Path>,
) -> PathBuf {
    let mut settings = common.clone();
    settings["listen"] = json!(format!("127.0.0.1:{port}"));
    let state_dir = dir.join(format!("{service}-state"));
    settings["state_dir"] = json!(state_dir);
    if let Some(file) = topology_file {
        settings["topology_file"] = json!(file);
    }
    let path = dir.join(format!("{service}.yaml"));
    // JSON is YAML.
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&settings).expect("json"),
    )
    .expect("write");
    path
}

fn spawn(dir: &Path, service: &str, config: &Path) -> (Child, PathBuf) {
    let log = dir.join(format!("{service}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_catalog-stream"))
        .arg(service)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,rdkafka=warn")
        .env("AWS_ACCESS_KEY_ID", server_env("AWS_ACCESS_KEY_ID"))
        .env("AWS_SECRET_ACCESS_KEY", server_env("AWS_SECRET_ACCESS_KEY"))
        // The file says it all: no override from the environment of whoever runs the test.
        .env_remove("MONGODB_DATABASE")
        .env_remove("S3_BUCKET")
        .env_remove("S3_PUBLIC_BASE_URL")
        .env_remove("CATALOG_STATE_DIR")
        .env_remove("CATALOG_LISTEN")
        .env_remove("CATALOG_CONFIG")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {service}: {error}"));
    (child, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_services_collect_update_delete_and_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Underscores: the CDC topic name is also the Avro namespace of the Debezium schemas, and
    // Avro names allow no `-`.
    let run_id = unique_name("e2e").replace('-', "_");
    let bucket = run_id.replace('_', "-");
    let database = run_id.clone();
    let topics = json!({
        "cdc": format!("{run_id}.{database}.products"),
        "upserts": format!("{run_id}.upserts"),
        "deletes": format!("{run_id}.deletes"),
        "image_events": format!("{run_id}.image-events"),
    });
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
    create_topics(&topic_names).await;

    let images = image_server().await;
    let common = json!({
        "kafka": {
            "bootstrap": server_env("KAFKA_BOOTSTRAP"),
            // A member of a killed run leaves the group quickly.
            "properties": {"session.timeout.ms": "6000"},
        },
        "schema_registry_url": server_env("SCHEMA_REGISTRY_URL"),
        "mongodb": {"uri": server_env("MONGODB_URI"), "database": database},
        "s3": {
            "bucket": bucket,
            "region": server_env("AWS_REGION"),
            "endpoint": server_env("S3_ENDPOINT"),
            "access_key_id": server_env("AWS_ACCESS_KEY_ID"),
            "secret_access_key": server_env("AWS_SECRET_ACCESS_KEY"),
            "create_bucket": true,
        },
        "fetch": {"allowlist": ["127.0.0.1/32"], "total_timeout": "5s"},
        "fetch_retry": {"max_attempts": 2, "initial_backoff": "50ms", "max_backoff": "200ms"},
        "topics": topics,
    });
    // The image pipeline's consumer group is its application id: unique per run.
    let topology = dir.path().join("image-pipeline.topology.yaml");
    let application_id = format!("{run_id}-image-pipeline");
    let template = IMAGE_PIPELINE_TOPOLOGY.replace(
        "application_id: catalog-stream-image-pipeline",
        &format!("application_id: {application_id}"),
    );
    assert_ne!(template, IMAGE_PIPELINE_TOPOLOGY, "application id replaced");
    std::fs::write(&topology, template).expect("topology file");

    let mut ports = BTreeMap::new();
    let mut children = Children {
        running: Vec::new(),
        logs: Vec::new(),
    };
    for service in SERVICES {
        let port = free_port();
        ports.insert(service, port);
        let topology_file = (service == "image-pipeline").then_some(topology.as_path());
        let config = write_settings(dir.path(), service, port, &common, topology_file);
        let (child, log) = spawn(dir.path(), service, &config);
        children.running.push((service.to_owned(), child));
        children.logs.push((service.to_owned(), log));
    }
    let run = Run {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
        ports,
    };
    let started = Instant::now();

    for service in SERVICES {
        eventually(&mut children, &format!("{service} /readyz"), || async {
            match run.http.get(run.url(service, "/readyz")).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("{}", response.status())),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
    }
    eprintln!("all four ready after {:?}", started.elapsed());

    let s3 = s3_client();
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
    let first = eventually(&mut children, "p1 complete", || async {
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
    let second = eventually(&mut children, "p1 updated", || async {
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
    let objects = eventually(&mut children, "old image deleted", || async {
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
    eventually(&mut children, "p1 images removed", || async {
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
    let failed = eventually(&mut children, "p2 failed", || async {
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
    let lag = eventually(&mut children, "image-pipeline lag 0", || async {
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
