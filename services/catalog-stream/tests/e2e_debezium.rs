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
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    ServiceClient, Services, common_settings, create_topics, free_port, get_object, list_objects,
    png_and_jpeg_server, run_topics, s3_client, server_env, unique_name, write_settings,
    write_topology,
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debezium_connector_feeds_the_distributed_services() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    // Underscores: the CDC topic name is the Avro namespace of Debezium's schemas.
    let run_id = unique_name("dbz").replace('-', "_");
    let bucket = run_id.replace('_', "-");
    let database = run_id.clone();
    let topics = run_topics(&run_id, &database);
    let cdc_topic = topics["cdc"].as_str().expect("cdc").to_owned();
    let mut topic_names: Vec<String> = topics
        .as_object()
        .expect("topics")
        .values()
        .map(|topic| topic.as_str().expect("name").to_owned())
        .collect();
    let dead_letters: Vec<String> = topic_names.iter().map(|t| format!("{t}.dlq")).collect();
    topic_names.extend(dead_letters);
    create_topics(&topic_names, 4).await;

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
    let mut children =
        Services::new(DEADLINE, Duration::from_millis(200)).printing(60, Some("E2E_PRINT_LOGS"));
    children.add_log("start-connect.sh", script_log.clone());
    children.add_log("kafka-connect", connect_log.clone());

    // The services. The image pipeline reads Avro from the CDC topic (the
    // shipped topology); its consumer group is unique per run.
    let images = png_and_jpeg_server().await;
    // The default session timeout: on a loaded 2-core machine a short one makes members
    // drop out of their (per-run) groups.
    let common = common_settings(&database, &bucket, &topics);
    let topology = write_topology(dir.path(), &format!("{run_id}-image-pipeline"));
    let mut ports = BTreeMap::new();
    for service in SERVICES {
        let port = free_port();
        ports.insert(service, port);
        let topology_file = (service == "image-pipeline").then_some(topology.as_path());
        let config = write_settings(dir.path(), service, port, &common, topology_file);
        children.spawn(dir.path(), service, &config);
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
    if let Some(pid) = pid {
        children.add_pid("Kafka Connect", pid);
    }
    if !output.status.success() || pid.is_none() {
        panic!(
            "Kafka Connect did not start ({}; stdout `{stdout}`): see the start-connect.sh and \
             kafka-connect logs below. The jars come from Maven Central through \
             infrastructure/connect/*.xml",
            output.status
        );
    }
    eprintln!("Kafka Connect REST up after {:?}", started.elapsed());

    let run = ServiceClient::new(ports);
    let status_url = format!("http://127.0.0.1:{connect_port}/connectors/{connector}/status");
    children
        .eventually("Debezium task RUNNING", || async {
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
        children
            .wait_ready(&run.http, service, run.ports[service])
            .await;
    }
    eprintln!("services ready after {:?}", started.elapsed());

    let s3 = s3_client("e2e-debezium");
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
    let first = children
        .eventually("p1 complete", || async {
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
    let second = children
        .eventually("p1 updated", || async {
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
    children
        .eventually("old image deleted", || async {
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
    let state = children
        .eventually("p1 status deleted", || async {
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
