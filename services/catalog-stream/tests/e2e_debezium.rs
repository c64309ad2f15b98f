//! End to end with the REAL Debezium connector instead of the native `cdc-source` (issue 4,
//! item 3): Kafka Connect 4.1.1 standalone runs Debezium's MongoDB source connector 3.6.1.Final
//! against the shared SecantusDB, writing Avro in the Confluent wire format through Apicurio's
//! converter (`as-confluent`, content ids) into the shared Apicurio Registry. Debezium registers
//! its `Source` record as a separate schema, referenced from the envelope: the engine's Avro
//! serde must resolve that reference to decode. The distributed `product-collector`,
//! `image-pipeline` and `complete-products` services run as child processes over the shared
//! Kafka, MongoDB and S3 with unique names; a local image host serves real PNG and JPEG bytes.
//!
//! Connect comes from `infrastructure/connect/start-connect.sh`, which fetches the jars with
//! Maven into `~/.cache/catalog-stream/connect` when they are not cached. If they cannot be
//! fetched or Connect does not start, the test fails (it never skips). Every child's log goes
//! to a file whose tail is printed when the test fails (or always, with `E2E_PRINT_LOGS=1`);
//! every child is stopped on drop.

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
use support::{server_env, unique_name};

const PNG: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.png");
const JPEG: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.jpg");
const DEADLINE: Duration = Duration::from_secs(60);
const SERVICES: [&str; 3] = ["product-collector", "image-pipeline", "complete-products"];
const CONNECTOR_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../connectors/kafka-connect/debezium-mongodb-source.apicurio.json"
);
const START_CONNECT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../infrastructure/connect/start-connect.sh"
);

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every child: the services (our own `Child`ren) and Connect (started by the script, known by
/// PID). Stopped on drop, SIGTERM then SIGKILL; logs printed when the test panicked.
struct Children {
    running: Vec<(String, Child)>,
    connect_pid: Option<u32>,
    logs: Vec<(String, PathBuf)>,
}

impl Children {
    fn print_logs(&self) {
        for (name, path) in &self.logs {
            eprintln!(
                "===== {name} ({}) =====\n{}",
                path.display(),
                tail(path, 60)
            );
        }
    }

    /// Panics if a child has exited.
    fn assert_alive(&mut self) {
        for (name, child) in &mut self.running {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early: {status}");
            }
        }
        if let Some(pid) = self.connect_pid
            && !pid_alive(pid)
        {
            panic!("Kafka Connect (pid {pid}) exited early");
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([name, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &self.running {
            signal(child.id(), "-TERM");
        }
        if let Some(pid) = self.connect_pid {
            signal(pid, "-TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, child) in &mut self.running {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        eprintln!("{name} did not stop on SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if let Some(pid) = self.connect_pid {
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if pid_alive(pid) {
                eprintln!("Kafka Connect did not stop on SIGTERM; killing it");
                signal(pid, "-KILL");
            }
        }
        if std::thread::panicking() || std::env::var_os("E2E_PRINT_LOGS").is_some() {
            self.print_logs();
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
            "e2e-debezium",
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

/// Polls `check` every 200 ms until it returns `Ok`, or panics with `what` after `DEADLINE`.
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
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Java properties text from string pairs.
fn properties(pairs: &BTreeMap<String, String>) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect()
}

/// The shipped connector configuration (`connectors/kafka-connect/…apicurio.json`) with this
/// run's connection string, prefix, database and registry in place of its placeholders.
fn connector_properties(name: &str, prefix: &str, database: &str, apicurio: &str) -> String {
    let text = std::fs::read_to_string(CONNECTOR_CONFIG).expect("shipped connector config");
    let shipped: Value = serde_json::from_str(&text).expect("connector config is JSON");
    let mut config: BTreeMap<String, String> = shipped["config"]
        .as_object()
        .expect("`config` object")
        .iter()
        .map(|(key, value)| (key.clone(), value.as_str().expect("string").to_owned()))
        .collect();
    let mongodb = format!(
        "{}/?replicaSet=secantus",
        server_env("MONGODB_URI").trim_end_matches('/')
    );
    for (key, value) in [
        ("name", name.to_owned()),
        ("mongodb.connection.string", mongodb),
        ("topic.prefix", prefix.to_owned()),
        ("database.include.list", database.to_owned()),
        ("collection.include.list", format!("{database}.products")),
        ("key.converter.apicurio.registry.url", apicurio.to_owned()),
        ("value.converter.apicurio.registry.url", apicurio.to_owned()),
        // Heartbeats go to a topic of their own, which the shared broker need not grow.
        ("heartbeat.interval.ms", "0".to_owned()),
    ] {
        config.insert(key.to_owned(), value);
    }
    for (key, value) in &config {
        assert!(
            !value.contains("${"),
            "placeholder left in {key}={value}: the test must replace it"
        );
    }
    properties(&config)
}

/// The Connect worker: standalone, REST on `port`, offsets in `dir`. Its converters are the
/// JSON defaults; the connector overrides them with Apicurio's AvroConverter.
fn worker_properties(dir: &Path, port: u16) -> String {
    let pairs: BTreeMap<String, String> = [
        ("bootstrap.servers", server_env("KAFKA_BOOTSTRAP")),
        ("listeners", format!("http://127.0.0.1:{port}")),
        (
            "offset.storage.file.filename",
            dir.join("connect.offsets").display().to_string(),
        ),
        ("offset.flush.interval.ms", "1000".to_owned()),
        (
            "key.converter",
            "org.apache.kafka.connect.json.JsonConverter".to_owned(),
        ),
        (
            "value.converter",
            "org.apache.kafka.connect.json.JsonConverter".to_owned(),
        ),
        ("key.converter.schemas.enable", "false".to_owned()),
        ("value.converter.schemas.enable", "false".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    properties(&pairs)
}

fn write_settings(
    dir: &Path,
    service: &str,
    port: u16,
    common: &Value,
    topology: &Path,
) -> PathBuf {
    let mut settings = common.clone();
    settings["listen"] = json!(format!("127.0.0.1:{port}"));
    settings["state_dir"] = json!(dir.join(format!("{service}-state")));
    if service == "image-pipeline" {
        settings["topology_file"] = json!(topology);
    }
    let path = dir.join(format!("{service}.yaml"));
    // JSON is YAML.
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&settings).expect("json"),
    )
    .expect("write settings");
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

struct Run {
    http: reqwest::Client,
    ports: BTreeMap<&'static str, u16>,
}

impl Run {
    fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    async fn get(&self, service: &str, path: &str) -> (u16, Value) {
        match self.http.get(self.url(service, path)).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(error) => (0, Value::String(error.to_string())),
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debezium_connector_feeds_the_distributed_services() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    // Underscores: the CDC topic name is the Avro namespace of Debezium's schemas.
    let run_id = unique_name("dbz").replace('-', "_");
    let bucket = run_id.replace('_', "-");
    let database = run_id.clone();
    let cdc_topic = format!("{run_id}.{database}.products");
    let topics = json!({
        "cdc": cdc_topic,
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
    let dead_letters: Vec<String> = topic_names.iter().map(|t| format!("{t}.dlq")).collect();
    topic_names.extend(dead_letters);
    create_topics(&topic_names).await;

    // Kafka Connect: the script fetches the jars when needed and returns once REST answers.
    let registry = server_env("SCHEMA_REGISTRY_URL");
    let apicurio = std::env::var("APICURIO_REGISTRY_URL").unwrap_or_else(|_| {
        registry
            .trim_end_matches('/')
            .replace("/apis/ccompat/v7", "/apis/registry/v2")
    });
    let connect_port = free_port();
    let connector = format!("{run_id}-source");
    let worker_file = dir.path().join("worker.properties");
    std::fs::write(&worker_file, worker_properties(dir.path(), connect_port)).expect("worker");
    let connector_file = dir.path().join("connector.properties");
    std::fs::write(
        &connector_file,
        connector_properties(&connector, &run_id, &database, &apicurio),
    )
    .expect("connector");
    let connect_log = dir.path().join("connect.log");
    let script_log = dir.path().join("start-connect.log");
    let mut children = Children {
        running: Vec::new(),
        connect_pid: None,
        logs: vec![
            ("start-connect.sh".to_owned(), script_log.clone()),
            ("kafka-connect".to_owned(), connect_log.clone()),
        ],
    };

    // The services. The image pipeline reads Avro from the CDC topic (the
    // shipped topology); its consumer group is unique per run.
    let images = image_server().await;
    let common = json!({
        // The default session timeout: on a loaded 2-core machine a short one makes members
        // drop out of their (per-run) groups.
        "kafka": {"bootstrap": server_env("KAFKA_BOOTSTRAP")},
        "schema_registry_url": registry,
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
    let topology = dir.path().join("image-pipeline.topology.yaml");
    let template = IMAGE_PIPELINE_TOPOLOGY.replace(
        "application_id: catalog-stream-image-pipeline",
        &format!("application_id: {run_id}-image-pipeline"),
    );
    assert_ne!(template, IMAGE_PIPELINE_TOPOLOGY, "application id replaced");
    std::fs::write(&topology, template).expect("topology file");
    let mut ports = BTreeMap::new();
    for service in SERVICES {
        let port = free_port();
        ports.insert(service, port);
        let config = write_settings(dir.path(), service, port, &common, &topology);
        let (child, log) = spawn(dir.path(), service, &config);
        children.running.push((service.to_owned(), child));
        children.logs.push((service.to_owned(), log));
    }

    // Connect starts while the services do; the PID is known once the script returns.
    let starter = Command::new("bash")
        .arg(START_CONNECT)
        .arg(&worker_file)
        .arg(&connector_file)
        .env("CONNECT_LOG", &connect_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&script_log).expect("script log"))
        .spawn()
        .expect("cannot run bash infrastructure/connect/start-connect.sh");

    let output = tokio::task::spawn_blocking(move || starter.wait_with_output())
        .await
        .expect("join")
        .expect("start-connect.sh output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid: Option<u32> = stdout
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok());
    children.connect_pid = pid;
    if !output.status.success() || pid.is_none() {
        panic!(
            "Kafka Connect did not start ({}; stdout `{stdout}`): see the start-connect.sh and \
             kafka-connect logs below. The jars come from Maven Central through \
             infrastructure/connect/*.xml",
            output.status
        );
    }
    eprintln!("Kafka Connect REST up after {:?}", started.elapsed());

    let run = Run {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
        ports,
    };
    let status_url = format!("http://127.0.0.1:{connect_port}/connectors/{connector}/status");
    eventually(&mut children, "Debezium task RUNNING", || async {
        let body = match run.http.get(&status_url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(error) => return Err(error.to_string()),
        };
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let task = &status["tasks"][0]["state"];
        match (&status["connector"]["state"], task) {
            (Value::String(c), Value::String(t)) if c == "RUNNING" && t == "RUNNING" => Ok(()),
            (_, Value::String(t)) if t == "FAILED" => {
                panic!("the Debezium task failed: {body}")
            }
            _ => Err(body),
        }
    })
    .await;
    eprintln!("Debezium task RUNNING after {:?}", started.elapsed());
    for service in SERVICES {
        eventually(&mut children, &format!("{service} /readyz"), || async {
            match run.get(service, "/readyz").await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        })
        .await;
    }
    eprintln!("services ready after {:?}", started.elapsed());

    let s3 = s3_client();
    let mall = "mall-dbz";
    let image_url = |path: &str| format!("http://{images}{path}");
    let product = |path: &str| {
        json!({"mallId": mall, "productId": "p1", "title": "Mug", "content": "A mug",
               "price": "12000", "imageUrl": image_url(path)})
    };
    let one = format!("/api/v1/complete-products/p1?mallId={mall}");
    let prefix = format!("s3://{bucket}/");

    // 1. A new product: Debezium's `c` event → the image in S3 → a complete product.
    let (status, body) = run.post_product(&product("/a.png")).await;
    assert_eq!(status, 201, "{body}");
    let posted = Instant::now();
    let first = eventually(&mut children, "p1 complete", || async {
        match run.get("complete-products", &one).await {
            (200, body) => Ok(body["data"].clone()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    eprintln!("p1 complete {:?} after the POST", posted.elapsed());
    assert_eq!(first["imageUrl"], image_url("/a.png"));
    assert_eq!(first["image"]["contentType"], "image/png");
    assert_eq!(first["image"]["size"], PNG.len());
    let first_key = first["image"]["uri"]
        .as_str()
        .and_then(|uri| uri.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("not an object of {prefix}: {first}"))
        .to_owned();
    let sha = first["image"]["sha256"].as_str().expect("sha256");
    assert!(first_key.contains(sha), "content-addressed: {first_key}");
    assert_eq!(get_object(&s3, &bucket, &first_key).await, PNG);
    let product_prefix = format!("{}/", first_key.rsplit_once('/').expect("directory").0);

    // The records really were Avro through the registry, with Debezium's `Source` record as a
    // schema reference that the engine had to resolve.
    let (status, latest) = {
        let response = run
            .http
            .get(format!(
                "{}/subjects/{cdc_topic}-value/versions/latest",
                registry.trim_end_matches('/')
            ))
            .send()
            .await
            .expect("registry");
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    assert_eq!(status, 200, "the envelope schema is registered: {latest}");
    assert_eq!(
        latest["references"][0]["name"], "io.debezium.connector.mongo.Source",
        "{latest}"
    );

    // 2. An update with the other image: new object, the old one deleted.
    let mut update = product("/b.jpg");
    update["title"] = json!("Big mug");
    let (status, body) = run.post_product(&update).await;
    assert_eq!(status, 200, "{body}");
    let second = eventually(&mut children, "p1 updated", || async {
        match run.get("complete-products", &one).await {
            (200, body) if body["data"]["image"]["contentType"] == "image/jpeg" => {
                Ok(body["data"].clone())
            }
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(second["title"], "Big mug");
    let second_key = second["image"]["uri"]
        .as_str()
        .and_then(|uri| uri.strip_prefix(&prefix))
        .expect("s3 uri")
        .to_owned();
    assert_ne!(second_key, first_key);
    assert_eq!(get_object(&s3, &bucket, &second_key).await, JPEG);
    eventually(&mut children, "old image deleted", || async {
        let objects = list_objects(&s3, &bucket, &product_prefix).await;
        if objects == [second_key.clone()] {
            Ok(())
        } else {
            Err(format!("{objects:?}"))
        }
    })
    .await;

    // 3. DELETE: 404 at once; Debezium's `d` event empties the bucket for it; status deleted.
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
    let state = eventually(&mut children, "p1 status deleted", || async {
        match run
            .get(
                "complete-products",
                &format!("/api/v1/products/p1/status?mallId={mall}"),
            )
            .await
        {
            (200, body) if body["data"]["state"] == "deleted" => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(state["data"]["state"], "deleted");
    let (status, _) = run.get("complete-products", &one).await;
    assert_eq!(status, 404, "still gone after the pipeline");
    children.assert_alive();
    eprintln!("whole run {:?}", started.elapsed());
}
