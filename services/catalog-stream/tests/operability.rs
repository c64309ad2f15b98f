//! Operability end to end (SPEC §4 metrics, §6; issue 6 item 3) against the real servers: the
//! distributed `image-pipeline` and `complete-products` services run as child processes over
//! Kafka, the registry, MongoDB and S3; the real Prometheus of `infrastructure/up.sh` scrapes
//! them through a file_sd target file (`infrastructure/.run/prometheus-targets/`, removed at the
//! end). CDC change events are produced straight into the CDC topic (Avro through the registry,
//! the way the connector writes them), plus poison pills.
//!
//! Checked:
//! - while some images hang in the image server (a deterministic non-zero moment), the lag
//!   Prometheus recorded for the pipeline's group, the lag the service itself exports and the
//!   broker's own figure (committed offsets of the group against high watermarks) are equal and
//!   non-zero; at quiescence all three are 0;
//! - `topology_dead_letter_total` queried from Prometheus returns the number of poison pills,
//!   and the dead-letter topic holds them;
//! - every metric name the chart's PrometheusRule and autoscalers use is exported by the
//!   services (in their /metrics and in what Prometheus scraped);
//! - `promtool check metrics` accepts each service's /metrics text.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use connectors::mongo_source::ChangeEncoder;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::{
    Services, common_settings, create_topics, free_port, metric_sum, product_event, run_topics,
    server_env, unique_name, write_settings, write_topology,
};
use topology::serdes::{HttpSchemaRegistry, SchemaRegistry};

const PNG: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.png");
const DEADLINE: Duration = Duration::from_secs(180);
const PARTITIONS: i32 = 3;
/// Products whose image hangs until released (the non-zero lag moment).
const GATED: usize = 6;
/// Products collected at once.
const PLAIN: usize = 20;
/// Poison pills (garbage bytes) in the CDC topic.
const POISON_PILLS: usize = 7;

/// The file_sd target file; removed on drop so Prometheus forgets the run's targets.
struct ScrapeTargets(PathBuf);

impl ScrapeTargets {
    fn write(run_id: &str, targets: &[(&str, u16)]) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../infrastructure/.run/prometheus-targets");
        std::fs::create_dir_all(&dir).expect("prometheus-targets directory");
        let groups: Vec<Value> = targets
            .iter()
            .map(|(service, port)| {
                json!({"targets": [format!("127.0.0.1:{port}")],
                       "labels": {"service": service, "run": run_id}})
            })
            .collect();
        let path = dir.join(format!("operability-{run_id}.json"));
        // Written whole then renamed, so Prometheus never reads half a file.
        let partial = dir.join(format!(".operability-{run_id}.json.partial"));
        std::fs::write(&partial, serde_json::to_vec_pretty(&groups).expect("json"))
            .expect("write targets");
        std::fs::rename(&partial, &path).expect("rename targets");
        ScrapeTargets(path)
    }
}

impl Drop for ScrapeTargets {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// --- the image host -------------------------------------------------------------------------------

/// `/ok/{name}.png` serves a PNG at once; `/gated/{name}.png` waits until the gate opens;
/// anything else is a 404.
async fn image_server(gate: tokio::sync::watch::Receiver<bool>) -> SocketAddr {
    use axum::extract::Path as UrlPath;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/ok/{name}",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG) }),
        )
        .route(
            "/gated/{name}",
            get(move |UrlPath(_name): UrlPath<String>| {
                let mut gate = gate.clone();
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                    ([(header::CONTENT_TYPE, "image/png")], PNG).into_response()
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such image") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

// --- Kafka ----------------------------------------------------------------------------------------

/// The broker's own figure for `group`: for every partition of `topics`, the high watermark
/// minus the group's committed offset (the low watermark when it has none), summed.
fn broker_lag(group: &str, topics: &[String]) -> Result<i64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", server_env("KAFKA_BOOTSTRAP"))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|error| error.to_string())?;
    let timeout = Duration::from_secs(10);
    let mut list = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..PARTITIONS {
            list.add_partition(topic, partition);
        }
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .map_err(|error| format!("committed offsets: {error}"))?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), timeout)
            .map_err(|error| format!("watermarks: {error}"))?;
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        lag += (high - position).max(0);
    }
    Ok(lag)
}

/// Records in `topic` (high minus low watermark, summed over partitions).
fn topic_records(topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", server_env("KAFKA_BOOTSTRAP"))
        .create()
        .expect("consumer");
    (0..PARTITIONS)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

// --- Prometheus and /metrics ----------------------------------------------------------------------

/// The value of a PromQL query with one scalar-like answer (`None` for an empty vector).
async fn prometheus_value(http: &reqwest::Client, query: &str) -> Result<Option<f64>, String> {
    let url = format!("{}/api/v1/query", server_env("PROMETHEUS_URL"));
    let body: Value = http
        .get(url)
        .query(&[("query", query)])
        .send()
        .await
        .map_err(|error| format!("Prometheus: {error}"))?
        .json()
        .await
        .map_err(|error| format!("Prometheus answer: {error}"))?;
    if body["status"] != "success" {
        return Err(format!("Prometheus: {body}"));
    }
    let result = body["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("not a vector: {body}"))?;
    match result.as_slice() {
        [] => Ok(None),
        [one] => one["value"][1]
            .as_str()
            .and_then(|text| text.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("no value: {one}")),
        more => Err(format!("{} series for {query}", more.len())),
    }
}

async fn metrics_text(http: &reqwest::Client, port: u16) -> Result<String, String> {
    http.get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .map_err(|error| error.to_string())?
        .text()
        .await
        .map_err(|error| error.to_string())
}

/// The metric family names in an exposition text (from its `# TYPE` lines).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Every `topology_*` / `catalog_*` metric name in `text`.
fn project_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["topology_", "catalog_"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(prefix) {
            let start = from + found;
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| start + n);
            if boundary && end > start + prefix.len() {
                names.insert(text[start..end].to_owned());
            }
            from = end.max(start + 1);
        }
    }
    names
}

/// The metric names the chart's PrometheusRule and autoscalers use: from `helm template`
/// (rules rendered, and the HPA alternative) when the pinned helm of `helm/check.sh` is in
/// the cache, and always from the templates themselves. `kube_pod_status_ready` (from
/// kube-state-metrics) and `up` (from Prometheus) are not the services' to export.
fn chart_metric_names() -> BTreeSet<String> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/catalog-stream");
    let mut names = BTreeSet::new();
    for template in ["prometheusrule.yaml", "autoscaling.yaml"] {
        let text = std::fs::read_to_string(chart.join("templates").join(template))
            .expect("chart template");
        names.extend(project_metric_names(&text));
    }
    let cache = std::env::var_os("CATALOG_STREAM_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/catalog-stream"))
        });
    let helm = cache.map(|cache| cache.join("helm-tools/helm-v4.1.4/helm"));
    match helm.filter(|helm| helm.is_file()) {
        Some(helm) => {
            let renders: [&[&str]; 2] = [
                &["--api-versions", "monitoring.coreos.com/v1"],
                &[
                    "-f",
                    "ci/alternatives-values.yaml",
                    "--api-versions",
                    "monitoring.coreos.com/v1",
                ],
            ];
            for extra in renders {
                let output = Command::new(&helm)
                    .current_dir(&chart)
                    .args(["template", "catalog-stream", "."])
                    .args(extra)
                    .output()
                    .expect("helm template");
                assert!(
                    output.status.success(),
                    "helm template {extra:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let rendered = String::from_utf8_lossy(&output.stdout).into_owned();
                for document in rendered.split("\n---") {
                    let kind = document
                        .lines()
                        .find_map(|line| line.strip_prefix("kind: "))
                        .unwrap_or_default();
                    if ["PrometheusRule", "ScaledObject", "HorizontalPodAutoscaler"]
                        .contains(&kind.trim())
                    {
                        names.extend(project_metric_names(document));
                    }
                }
            }
        }
        None => eprintln!("no cached helm binary: the metric names come from the templates only"),
    }
    names
}

fn promtool_check_metrics(service: &str, text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics rejects the /metrics of {service}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_chart_names_the_metrics_it_uses() {
    let names = chart_metric_names();
    for expected in [
        "topology_consumer_lag",
        "topology_dead_letter_total",
        "catalog_images_failed_total",
        "catalog_images_collected_total",
    ] {
        assert!(
            names.contains(expected),
            "{expected} not found in {names:?}"
        );
    }
}

// --- the run --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_lag_equals_the_broker_and_dead_letters_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_id = unique_name("ops").replace('-', "_");
    let bucket = run_id.replace('_', "-");
    let database = run_id.clone();
    let topics = run_topics(&run_id, &database);
    let cdc = topics["cdc"].as_str().expect("cdc").to_owned();
    let group_topics: Vec<String> = ["cdc", "upserts", "deletes"]
        .iter()
        .map(|name| topics[name].as_str().expect("topic").to_owned())
        .collect();
    let mut all_topics = group_topics.clone();
    all_topics.push(topics["image_events"].as_str().expect("topic").to_owned());
    let dead_letters: Vec<String> = group_topics.iter().map(|t| format!("{t}.dlq")).collect();
    all_topics.extend(dead_letters.clone());
    create_topics(&all_topics, PARTITIONS).await;

    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let images = image_server(gate).await;

    // The pipeline's consumer group is its application id: unique per run.
    let group = format!("{run_id}-image-pipeline");
    let topology = write_topology(dir.path(), &group);

    let mut common = common_settings(&database, &bucket, &topics);
    common["kafka"]["properties"] = json!({"session.timeout.ms": "6000"});
    // OPERABILITY_KAFKA_DEBUG (e.g. msg,topic) turns on librdkafka's debug contexts in the
    // services (shown with SERVICES_RUST_LOG=...,librdkafka=debug).
    if let Ok(contexts) = std::env::var("OPERABILITY_KAFKA_DEBUG") {
        common["kafka"]["properties"]["debug"] = json!(contexts);
    }
    // Gated images hang for as long as the test holds them: no timeout meanwhile.
    common["fetch"]["total_timeout"] = json!("300s");
    let mut ports = BTreeMap::new();
    let mut children = Services::new(DEADLINE, Duration::from_millis(250));
    for service in ["image-pipeline", "complete-products"] {
        let port = free_port();
        ports.insert(service, port);
        let topology_file = (service == "image-pipeline").then_some(topology.as_path());
        let config = write_settings(dir.path(), service, port, &common, topology_file);
        children.spawn(dir.path(), service, &config);
    }
    let pipeline_port = ports["image-pipeline"];
    let targets = ScrapeTargets::write(
        &run_id,
        &[
            ("image-pipeline", pipeline_port),
            ("complete-products", ports["complete-products"]),
        ],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");

    for (service, port) in &ports {
        children.wait_ready(&http, service, *port).await;
    }
    // The pipeline owns its partitions once it reports their lag.
    let group_label = format!("group=\"{group}\"");
    children
        .eventually("the pipeline's partitions assigned", || async {
            let text = metrics_text(&http, pipeline_port).await?;
            let series = text
                .lines()
                .filter(|line| {
                    line.starts_with("topology_consumer_lag{") && line.contains(&group_label)
                })
                .count();
            if series == group_topics.len() * PARTITIONS as usize {
                Ok(())
            } else {
                Err(format!("{series} lag series"))
            }
        })
        .await;
    // Prometheus scrapes both services.
    let up_query = format!("sum(up{{run=\"{run_id}\"}})");
    children
        .eventually("Prometheus scrapes both services", || async {
            let up = prometheus_value(&http, &up_query).await?;
            if up == Some(2.0) {
                Ok(())
            } else {
                Err(format!("up = {up:?}"))
            }
        })
        .await;

    // Change events straight into the CDC topic, Avro through the registry, and poison pills.
    let prefix = run_id.clone();
    let registry: Arc<dyn SchemaRegistry> =
        Arc::new(HttpSchemaRegistry::new(server_env("SCHEMA_REGISTRY_URL")));
    let encoder = ChangeEncoder::avro(registry, &prefix, &database, "products").expect("encoder");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server_env("KAFKA_BOOTSTRAP"))
        .create()
        .expect("producer");
    let mall = "mall-ops";
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut ord = 0;
    let mut product = |product_id: String, path: String| {
        ord += 1;
        product_event(
            &prefix,
            &database,
            mall,
            &product_id,
            &format!("http://{images}{path}"),
            ord,
        )
    };
    let mut events = Vec::new();
    for i in 0..GATED {
        events.push(product(format!("gated-{i}"), format!("/gated/{i}.png")));
    }
    for i in 0..PLAIN {
        events.push(product(format!("plain-{i}"), format!("/ok/{i}.png")));
    }
    events.push(product("missing".into(), "/missing.png".into()));
    for event in &events {
        let (key, value) = encoder.encode(&cdc, event).await.expect("encode");
        records.push((key, value.expect("not a tombstone")));
    }
    for i in 0..POISON_PILLS {
        records.push((
            format!("\u{1}poison-key-{i}").into_bytes(),
            format!("\u{ff}\u{0}not avro, not json: pill {i}").into_bytes(),
        ));
    }
    for (key, value) in &records {
        producer
            .send(
                FutureRecord::to(&cdc).key(key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("produce");
    }

    // 1. The non-zero moment: the gated products hang in the image collector, so the group's
    // committed offsets on the upserts topic stay below them. Prometheus, the service and the
    // broker must agree on the same non-zero lag.
    let lag_query = format!("sum(topology_consumer_lag{{{group_label}, run=\"{run_id}\"}})");
    let held = children
        .eventually("non-zero lag agreed", || async {
            let broker = broker_lag(&group, &group_topics)?;
            let own = metric_sum(
                &metrics_text(&http, pipeline_port).await?,
                "topology_consumer_lag",
                &[&group_label],
            ) as i64;
            let prometheus = prometheus_value(&http, &lag_query).await?;
            if broker >= GATED as i64 && Some(broker as f64) == prometheus && own == broker {
                Ok(broker)
            } else {
                Err(format!(
                    "broker {broker}, service {own}, Prometheus {prometheus:?}"
                ))
            }
        })
        .await;
    eprintln!("while {GATED} images hang: lag {held} (broker = service = Prometheus)");

    // 2. Release the images; wait for quiescence: every product's image event is out and the
    // group has committed everything.
    open_gate.send(true).expect("open the gate");
    let image_events = topics["image_events"].as_str().expect("topic").to_owned();
    let expected_events = (GATED + PLAIN + 1) as i64;
    children
        .eventually("every image event written", || async {
            let written = topic_records(&image_events);
            if written >= expected_events {
                Ok(())
            } else {
                // What the image pipeline did, for the failure message (dead-lettered outputs
                // are how a registry refusal showed).
                let text = metrics_text(&http, pipeline_port).await?;
                let doing: Vec<&str> = text
                    .lines()
                    .filter(|line| {
                        line.starts_with("topology_in_flight")
                            || line.starts_with("catalog_images_")
                            || line.starts_with("topology_records_total")
                            || line.starts_with("topology_dead_letter_total")
                    })
                    .collect();
                Err(format!(
                    "{written} of {expected_events}; image pipeline: {}",
                    doing.join("; ")
                ))
            }
        })
        .await;
    children
        .eventually("zero lag agreed at quiescence", || async {
            let broker = broker_lag(&group, &group_topics)?;
            let own = metric_sum(
                &metrics_text(&http, pipeline_port).await?,
                "topology_consumer_lag",
                &[&group_label],
            ) as i64;
            let prometheus = prometheus_value(&http, &lag_query).await?;
            if broker == 0 && prometheus == Some(0.0) && own == 0 {
                Ok(())
            } else {
                Err(format!(
                    "broker {broker}, service {own}, Prometheus {prometheus:?}"
                ))
            }
        })
        .await;
    eprintln!("at quiescence: lag 0 (broker = service = Prometheus)");

    // 3. The dead-letter counter, as Prometheus recorded it, is the number of pills sent.
    let dead_letter_query = format!("sum(topology_dead_letter_total{{run=\"{run_id}\"}})");
    children
        .eventually("dead letters counted in Prometheus", || async {
            match prometheus_value(&http, &dead_letter_query).await? {
                Some(n) if n == POISON_PILLS as f64 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(
        topic_records(&dead_letters[0]),
        POISON_PILLS as i64,
        "the CDC dead-letter topic holds the pills"
    );
    let per_topic = format!(
        "sum(topology_dead_letter_total{{run=\"{run_id}\", topic=\"{}\"}})",
        dead_letters[0]
    );
    assert_eq!(
        prometheus_value(&http, &per_topic).await.expect("query"),
        Some(POISON_PILLS as f64)
    );

    // A collected product reached the read model.
    let one = format!(
        "http://127.0.0.1:{}/api/v1/complete-products/plain-0?mallId={mall}",
        ports["complete-products"]
    );
    children
        .eventually("plain-0 complete", || async {
            match http.get(&one).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(response.status().to_string()),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;

    // 4. Every metric name the rules and autoscalers use is exported (and scraped), and the
    // exposition passes promtool.
    let mut exported = BTreeSet::new();
    for (service, port) in &ports {
        let text = metrics_text(&http, *port).await.expect("/metrics");
        promtool_check_metrics(service, &text);
        exported.extend(exported_names(&text));
    }
    let used = chart_metric_names();
    assert!(!used.is_empty(), "no metric names found in the chart");
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "the chart uses metrics no service exports: {missing:?} (exported: {exported:?})"
    );
    for name in &used {
        let query = format!("count({{__name__=\"{name}\", run=\"{run_id}\"}})");
        children
            .eventually(&format!("Prometheus has {name}"), || async {
                match prometheus_value(&http, &query).await? {
                    Some(n) if n > 0.0 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
    }
    eprintln!("the chart's metrics, all exported and scraped: {used:?}");

    drop(children);
    drop(targets);
}
