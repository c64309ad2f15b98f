//! Shared helpers for the integration tests, one definition each (every test binary includes
//! this module with `mod support;`).
//!
//! Addresses of the real servers of SPEC §7 come from the environment, or from
//! `infrastructure/.env` as written by `infrastructure/up.sh`. A missing address fails the test
//! with the command that fixes it: these tests never skip.
//!
//! Also here: ports, fixtures and product bodies; an in-test image server; `/metrics` parsing;
//! in-process router calls; and the distributed services run as child processes. Tests that
//! start their own server processes (killed and restarted for outages) use [`own_servers`];
//! those that run the standalone binary use [`standalone`].

// Each test binary uses a part of this module.
#![allow(dead_code)]

pub mod own_servers;
pub mod standalone;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::ServiceExt;

fn dotenv() -> &'static HashMap<String, String> {
    static VALUES: OnceLock<HashMap<String, String>> = OnceLock::new();
    VALUES.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infrastructure/.env");
        std::fs::read_to_string(path)
            .map(|text| {
                text.lines()
                    .filter_map(|line| line.split_once('='))
                    .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The value of a server address variable such as `KAFKA_BOOTSTRAP`; panics with the fix when
/// neither the environment nor `infrastructure/.env` has it.
pub fn server_env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .or_else(|| dotenv().get(name).cloned())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set and infrastructure/.env does not define it: \
                 start the real servers with `infrastructure/up.sh all` first"
            )
        })
}

/// A name no other test run has used, for topics, groups, buckets and collections.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `services/images/tests/fixtures/{name}`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/tests/fixtures/");
    std::fs::read(format!("{path}{name}")).expect("fixture")
}

/// A product body.
pub fn product(mall: &str, id: &str, title: &str, image_url: &str) -> Value {
    json!({
        "mallId": mall,
        "productId": id,
        "title": title,
        "content": format!("content of {id}"),
        "price": "9.90",
        "imageUrl": image_url,
    })
}

/// Every file under `dir`, recursively, relative to it (empty when `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

// --- an image server ------------------------------------------------------------------------

/// An image server on 127.0.0.1 serving fixed bytes: `paths` by exact path, `fallback` for any
/// other path, counting requests, after an optional fixed delay.
#[derive(Clone)]
pub struct ImageServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Requests answered.
    pub requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Served {
    paths: Arc<Vec<(String, Vec<u8>, &'static str)>>,
    fallback: Arc<(Vec<u8>, &'static str)>,
    delay: Duration,
    requests: Arc<AtomicUsize>,
}

async fn serve(State(served): State<Served>, uri: Uri) -> Response {
    if !served.delay.is_zero() {
        tokio::time::sleep(served.delay).await;
    }
    served.requests.fetch_add(1, Ordering::SeqCst);
    let (bytes, content_type) = served
        .paths
        .iter()
        .find(|(path, _, _)| path == uri.path())
        .map(|(_, bytes, content_type)| (bytes.clone(), *content_type))
        .unwrap_or_else(|| (served.fallback.0.clone(), served.fallback.1));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        bytes,
    )
        .into_response()
}

impl ImageServer {
    /// Serves `services/images/tests/fixtures/pixel.png` for every path.
    pub async fn pixel_png() -> Self {
        Self::slow_pixel_png(Duration::ZERO).await
    }

    /// Serves `services/images/tests/fixtures/pixel.png` for every path, each after `delay`.
    pub async fn slow_pixel_png(delay: Duration) -> Self {
        Self::start(Vec::new(), (fixture("pixel.png"), "image/png"), delay).await
    }

    /// Starts the server.
    pub async fn start(
        paths: Vec<(String, Vec<u8>, &'static str)>,
        fallback: (Vec<u8>, &'static str),
        delay: Duration,
    ) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let served = Served {
            paths: Arc::new(paths),
            fallback: Arc::new(fallback),
            delay,
            requests: requests.clone(),
        };
        let app = Router::new().fallback(serve).with_state(served);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the image server");
        let address = listener.local_addr().expect("image server address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{address}"),
            requests,
        }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A local image host: `/a.png` (`pixel.png`), `/b.jpg` (`pixel.jpg`), and 404 for anything else.
pub async fn png_and_jpeg_server() -> std::net::SocketAddr {
    let (png, jpeg) = (fixture("pixel.png"), fixture("pixel.jpg"));
    let app = Router::new()
        .route(
            "/a.png",
            axum::routing::get(|| async { ([(header::CONTENT_TYPE, "image/png")], png) }),
        )
        .route(
            "/b.jpg",
            axum::routing::get(|| async { ([(header::CONTENT_TYPE, "image/jpeg")], jpeg) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such image") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

// --- /metrics -------------------------------------------------------------------------------

/// Every sample of `name` in a Prometheus text exposition, with its label text.
pub fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.rsplit_once('}')?;
                (labels.to_owned(), value)
            } else if rest.starts_with(' ') {
                (String::new(), rest)
            } else {
                return None;
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The sum of the samples of `name` whose label text contains every one of `labels` (0 when
/// there is none).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|(text, _)| labels.iter().all(|label| text.contains(label)))
        .map(|(_, value)| value)
        .sum()
}

// --- a router in process --------------------------------------------------------------------

/// The service router (ops routes included) over the product-collector and complete-products
/// APIs on `products` and `view`; `/readyz` reports one check, `store`, as `ready`.
pub fn api_router(
    products: catalog_stream::store::ProductStore,
    view: catalog_stream::store::ViewStore,
    ready: bool,
) -> Router {
    use catalog_stream::complete_products::{self, CompleteProducts};
    use catalog_stream::product_collector::{self, ProductCollector};
    let registry = prometheus::Registry::new();
    let collector = ProductCollector::new(products.clone(), &registry).expect("collector");
    // The pipeline-state route over a runtime that never runs: no task holds anything.
    let b = topology::TopologyBuilder::new();
    let text: topology::serdes::SerdeRef = Arc::new(topology::serdes::StringSerde);
    b.source("in", "in", text.clone(), text.clone())
        .to("out", "out", text.clone(), text);
    let runtime = topology::Runtime::new(
        b.build().expect("topology"),
        Arc::new(topology::transport::EmbeddedTransport::new(Arc::new(
            topology::transport::EmbeddedLog::temporary().expect("log"),
        ))),
        topology::RuntimeConfig::new("api-router"),
    );
    let api = product_collector::routes(collector)
        .merge(complete_products::routes(CompleteProducts::new(
            products, view,
        )))
        .merge(catalog_stream::pipeline_state::routes(
            catalog_stream::pipeline_state::PipelineState::new(runtime.stores(), None),
        ));
    catalog_stream::system::service_router(
        api,
        catalog_stream::openapi::Api::All,
        vec![registry],
        Arc::new(move || Box::pin(async move { vec![("store".to_owned(), ready)] })),
    )
}

/// A whole answer of [`call`].
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// One request through `router` in process (`tower::ServiceExt::oneshot`).
pub async fn call(
    router: &Router,
    method: Method,
    uri: impl Into<String>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri.into());
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}

/// `GET path` through `router` in process: the status and the body as text.
pub async fn router_get(router: &Router, path: &str) -> (u16, String) {
    let reply = call(router, Method::GET, path, None, Vec::new()).await;
    (
        reply.status.as_u16(),
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// How many of the products `mall`/`p0000`… `mall`/`p{count-1}` the view holds.
pub async fn collected(view: &catalog_stream::store::ViewStore, mall: &str, count: usize) -> usize {
    let mut done = 0;
    for index in 0..count {
        let key = catalog_stream::product::ProductKey::new(mall, format!("p{index:04}"));
        if view.get(&key).await.expect("view").is_some() {
            done += 1;
        }
    }
    done
}

// --- CDC events -----------------------------------------------------------------------------

/// A Debezium MongoDB change event for a product, like the connector (or the standalone
/// outbox relay) writes: `_id` = {mallId, productId}, `after` with the fields and the version.
pub fn product_event(
    prefix: &str,
    database: &str,
    mall: &str,
    product_id: &str,
    image_url: &str,
    ord: i32,
) -> connectors::debezium::ChangeEvent {
    use connectors::debezium::{ChangeEvent, Op, SourceInfo};
    let id = json!({"mallId": mall, "productId": product_id});
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let after = json!({"_id": id, "mallId": mall, "productId": product_id, "title": "Mug",
                       "content": "A mug", "price": "12000", "imageUrl": image_url,
                       "version": 1});
    let mut event = ChangeEvent::tombstone(id);
    event.op = Op::Create;
    event.db = Some(database.to_owned());
    event.collection = Some("products".to_owned());
    event.after = Some(after);
    event.source = Some(SourceInfo {
        version: "2.7.0.Final".into(),
        connector: "mongodb".into(),
        name: prefix.to_owned(),
        ts_ms: (now_ms / 1000) * 1000,
        snapshot: Some("false".into()),
        db: database.to_owned(),
        rs: None,
        sequence: None,
        ts_us: None,
        ts_ns: None,
        collection: "products".into(),
        ord,
        lsid: None,
        txn_number: None,
        wall_time: Some(now_ms),
    });
    event.ts_ms = Some(now_ms);
    event
}

// --- the real servers -----------------------------------------------------------------------

/// Creates `topics` with `partitions` partitions each on the shared broker.
pub async fn create_topics(topics: &[String], partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", server_env("KAFKA_BOOTSTRAP"))
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(1)))
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

/// An S3 client of the shared S3 server; `provider` names the credentials.
pub fn s3_client(provider: &'static str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(server_env("AWS_REGION")))
        .endpoint_url(server_env("S3_ENDPOINT"))
        .credentials_provider(Credentials::new(
            server_env("AWS_ACCESS_KEY_ID"),
            server_env("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            provider,
        ))
        .force_path_style(true)
        .http_client(images::s3_https_client())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The keys under `prefix` in `bucket`.
pub async fn list_objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
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

/// The bytes of `key` in `bucket`; panics when it is not there.
pub async fn get_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
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

// --- the distributed services as child processes --------------------------------------------

/// The four topics of a run (`topics:` of the settings): the CDC topic is
/// `{run_id}.{database}.products`, as the connector names it.
pub fn run_topics(run_id: &str, database: &str) -> Value {
    json!({
        "cdc": format!("{run_id}.{database}.products"),
        "upserts": format!("{run_id}.upserts"),
        "deletes": format!("{run_id}.deletes"),
        "image_events": format!("{run_id}.image-events"),
    })
}

/// The settings every service of a run shares: the shared servers, the run's database, bucket
/// and topics, fetches allowed to 127.0.0.1 with a 5 s total timeout and two quick attempts.
pub fn common_settings(database: &str, bucket: &str, topics: &Value) -> Value {
    json!({
        "kafka": {"bootstrap": server_env("KAFKA_BOOTSTRAP")},
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
    })
}

/// The shipped image-pipeline topology with `application_id` (its consumer group), written
/// to `dir/image-pipeline.topology.yaml`.
pub fn write_topology(dir: &Path, application_id: &str) -> PathBuf {
    use catalog_stream::pipeline::IMAGE_PIPELINE_TOPOLOGY;
    let topology = dir.join("image-pipeline.topology.yaml");
    let template = IMAGE_PIPELINE_TOPOLOGY.replace(
        "application_id: catalog-stream-image-pipeline",
        &format!("application_id: {application_id}"),
    );
    assert_ne!(template, IMAGE_PIPELINE_TOPOLOGY, "application id replaced");
    std::fs::write(&topology, template).expect("topology file");
    topology
}

/// `dir/{service}.yaml`: `common` with the service's listen address, its state directory
/// `dir/{service}-state` and, when given, its topology file.
pub fn write_settings(
    dir: &Path,
    service: &str,
    port: u16,
    common: &Value,
    topology_file: Option<&Path>,
) -> PathBuf {
    let mut settings = common.clone();
    settings["listen"] = json!(format!("127.0.0.1:{port}"));
    settings["state_dir"] = json!(dir.join(format!("{service}-state")));
    if let Some(file) = topology_file {
        settings["topology_file"] = json!(file);
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

fn tail(path: &Path, lines: usize) -> (usize, String) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    (all.len(), tail.join("\n"))
}

/// The child processes of a test of the distributed services: `catalog-stream <service>`
/// children, and processes known only by PID (started by a script). All are stopped on drop
/// (SIGTERM, then SIGKILL after 10 s); the tails of the logs are printed when the test
/// failed, when a child had to be killed (its own), or always when `print_env` is set.
pub struct Services {
    running: Vec<(String, Child)>,
    pids: Vec<(String, u32)>,
    logs: Vec<(String, PathBuf)>,
    /// How long [`Services::eventually`] waits, and how often it polls.
    deadline: Duration,
    poll: Duration,
    /// Log lines printed per child.
    tail: usize,
    /// A variable that prints the logs even when the test passed.
    print_env: Option<&'static str>,
}

impl Services {
    /// No child yet; `eventually` waits up to `deadline`, polling every `poll`; 60 log lines.
    pub fn new(deadline: Duration, poll: Duration) -> Self {
        Self {
            running: Vec::new(),
            pids: Vec::new(),
            logs: Vec::new(),
            deadline,
            poll,
            tail: 60,
            print_env: None,
        }
    }

    /// Prints the last `lines` of each log, and every log whenever `print_env` is set.
    pub fn printing(mut self, lines: usize, print_env: Option<&'static str>) -> Self {
        self.tail = lines;
        self.print_env = print_env;
        self
    }

    /// Starts `catalog-stream <service> --config <config>` with its output in
    /// `dir/{service}.log`, with nothing from the caller's environment overriding the file.
    pub fn spawn(&mut self, dir: &Path, service: &str, config: &Path) {
        self.spawn_named(dir, service, service, config);
    }

    /// Starts `catalog-stream <service> --config <config>` as the child `name` (one of several
    /// instances of a service), with its output in `dir/{name}.log`.
    pub fn spawn_named(&mut self, dir: &Path, name: &str, service: &str, config: &Path) {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_catalog-stream"))
            .arg(service)
            .arg("--config")
            .arg(config)
            // SERVICES_RUST_LOG (e.g. info,topology=debug) to see more of the services.
            .env(
                "RUST_LOG",
                std::env::var("SERVICES_RUST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()),
            )
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
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        self.running.push((name.to_owned(), child));
        self.logs.push((name.to_owned(), log));
    }

    /// Sends `signal` (`-KILL`, `-TERM`) to the child `name` and waits up to `within` for it
    /// to exit; it is no longer watched (its log still is). Panics when it does not exit.
    pub fn stop_child(
        &mut self,
        name: &str,
        signal_name: &str,
        within: Duration,
    ) -> std::process::ExitStatus {
        let index = self
            .running
            .iter()
            .position(|(running, _)| running == name)
            .unwrap_or_else(|| panic!("no running child {name}"));
        let (_, mut child) = self.running.remove(index);
        signal(child.id(), signal_name);
        let deadline = Instant::now() + within;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{name} did not exit within {within:?} of {signal_name}");
                }
            }
        }
    }

    /// A log printed with the children's.
    pub fn add_log(&mut self, name: &str, path: PathBuf) {
        self.logs.push((name.to_owned(), path));
    }

    /// A process started elsewhere, known by its PID, watched and stopped like the children.
    pub fn add_pid(&mut self, name: &str, pid: u32) {
        self.pids.push((name.to_owned(), pid));
    }

    /// Panics if a child has exited.
    pub fn assert_alive(&mut self) {
        for (name, child) in &mut self.running {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early: {status}");
            }
        }
        for (name, pid) in &self.pids {
            if !pid_alive(*pid) {
                panic!("{name} (pid {pid}) exited early");
            }
        }
    }

    /// Polls `check` until it returns `Ok`, or panics with `what` and the last answer after the
    /// deadline; panics at once when a child exits.
    pub async fn eventually<T, F, Fut>(&mut self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let started = Instant::now();
        loop {
            match check().await {
                Ok(value) => return value,
                Err(last) if started.elapsed() > self.deadline => {
                    panic!("{what}: not within {:?}; last: {last}", self.deadline)
                }
                Err(_) => {
                    self.assert_alive();
                    tokio::time::sleep(self.poll).await;
                }
            }
        }
    }

    /// Waits (as [`Services::eventually`]) until `service` on `port` answers `/readyz` with 2xx.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, service: &str, port: u16) {
        let url = format!("http://127.0.0.1:{port}/readyz");
        self.eventually(&format!("{service} /readyz"), || async {
            match http.get(&url).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(response.status().to_string()),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
    }

    fn print_logs(&self, which: impl Fn(&str) -> bool) {
        for (name, path) in self.logs.iter().filter(|(name, _)| which(name)) {
            // Whole logs outlive the test's temporary directory, for a closer look.
            let kept = std::env::temp_dir().join(format!("services-{name}.log"));
            if std::fs::copy(path, &kept).is_ok() {
                eprintln!("{name}'s whole log: {}", kept.display());
            }
            let (lines, tail) = tail(path, self.tail);
            eprintln!(
                "===== {name} ({lines} lines, last {}) =====\n{tail}",
                tail.lines().count()
            );
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &self.running {
            signal(child.id(), "-TERM");
        }
        for (_, pid) in &self.pids {
            signal(*pid, "-TERM");
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
        for (name, pid) in &self.pids {
            while pid_alive(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if pid_alive(*pid) {
                eprintln!("{name} did not stop within 10 s of SIGTERM; killing it");
                signal(*pid, "-KILL");
            }
        }
        if std::thread::panicking()
            || self
                .print_env
                .is_some_and(|name| std::env::var_os(name).is_some())
        {
            self.print_logs(|_| true);
        } else if !stuck.is_empty() {
            self.print_logs(|name| stuck.iter().any(|stuck| stuck == name));
        }
    }
}

/// HTTP to the services of a run by name, on 127.0.0.1 and their ports.
pub struct ServiceClient {
    pub http: reqwest::Client,
    pub ports: BTreeMap<&'static str, u16>,
}

impl ServiceClient {
    /// A client with a 10 s timeout per request.
    pub fn new(ports: BTreeMap<&'static str, u16>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            ports,
        }
    }

    /// `http://127.0.0.1:{port of service}{path}`.
    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    /// `GET`: the status and the body as JSON (as a string when it is not JSON); status 0 with
    /// the error when there is no answer.
    pub async fn get(&self, service: &str, path: &str) -> (u16, Value) {
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

    /// `GET`: the body as text.
    pub async fn text(&self, service: &str, path: &str) -> String {
        self.http
            .get(self.url(service, path))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    /// `POST /api/v1/products` to the product-collector: the status and the JSON answer.
    pub async fn post_product(&self, body: &Value) -> (u16, Value) {
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
