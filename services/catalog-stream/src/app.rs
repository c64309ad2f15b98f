//! Running the services: each distributed service as its own process (SPEC §5), wired from
//! [`Settings`], with graceful shutdown on SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use connectors::mongo_source::{ChangeEncoder, KafkaChangeSink, MongoSourceConfig};
use tokio_util::sync::CancellationToken;
use topology::RuntimeConfig;
use topology::serdes::{HttpSchemaRegistry, SchemaRegistry};
use topology::transport::{KafkaClientConfig, KafkaProbe, KafkaTransport, Transport};

use crate::http::ReadinessCheck;
use crate::settings::Settings;
use crate::store::{MongoProductStore, MongoViewStore, ProductStore, ViewStore};
use crate::system::{self, Backends, CdcSource, Options, Roles, System, TopologyFile};

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Serves `router` on `listen` until `shutdown`.
pub async fn serve_http(
    listen: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(address = %listener.local_addr().unwrap_or(listen), "HTTP listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("HTTP server failed")
}

/// How long a readiness check may take before the dependency counts as not answering (a
/// MongoDB driver otherwise waits its whole server selection timeout, 30 s by default).
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// `check`'s answer, or `false` when it takes longer than [`READINESS_TIMEOUT`].
async fn answers(check: impl Future<Output = bool>) -> bool {
    tokio::time::timeout(READINESS_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

fn readiness<F, Fut>(check: F) -> ReadinessCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<(String, bool)>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// The server selection timeout when the MongoDB URI sets none (the driver's own is 30 s): an
/// outage then turns requests into 503s within seconds instead of holding them for half a minute.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);

async fn mongo_database(settings: &Settings) -> anyhow::Result<mongodb::Database> {
    let mut options = mongodb::options::ClientOptions::parse(&settings.mongodb.uri)
        .await
        .context("invalid MongoDB connection string")?;
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    // A 201 from the API, a view write before its offset commit and a stored resume token
    // must survive a crash of the server: with the default `j: false` an acknowledged write
    // may still be only in the server's memory (the outage test saw a SIGKILLed SecantusDB
    // come back without the last products it had acknowledged). A URI that sets `journal`
    // keeps its own choice.
    options
        .write_concern
        .get_or_insert_with(Default::default)
        .journal
        .get_or_insert(true);
    let client =
        mongodb::Client::with_options(options).context("invalid MongoDB connection string")?;
    Ok(client.database(&settings.mongodb.database))
}

/// The service's Kafka client properties: every client (the transport's consumer and
/// producers, the changelog reader, the CDC source's producer, the readiness probe) takes the
/// ones of its kind.
fn kafka_config(settings: &Settings) -> KafkaClientConfig {
    settings.kafka.properties.iter().fold(
        KafkaClientConfig::new(&settings.kafka.bootstrap),
        |config, (key, value)| config.set(key, value),
    )
}

fn kafka_client(settings: &Settings) -> KafkaTransport {
    KafkaTransport::with_config(kafka_config(settings))
}

/// How long a presigned image URL stays valid when the bucket has no public base URL.
const DEFAULT_PRESIGN_SECS: u64 = 3600;

/// S3 settings whose images have an HTTP URL: a presigned one when no public base URL is set.
fn with_link_default(mut s3: images::S3Config) -> images::S3Config {
    if s3.public_base_url.is_none() && s3.presign_expiry_secs.is_none() {
        s3.presign_expiry_secs = Some(DEFAULT_PRESIGN_SECS);
    }
    s3
}

/// The bucket as the image pipeline writes it (created when the settings say so).
async fn image_bucket(settings: &Settings) -> anyhow::Result<Arc<dyn images::ObjectStore>> {
    settings
        .s3
        .validate()
        .map_err(|errors| anyhow::anyhow!("invalid s3 settings: {}", errors.join("; ")))?;
    let s3 = images::S3ObjectStore::new(with_link_default(settings.s3.clone()))
        .await
        .context("cannot reach the S3 bucket")?;
    Ok(Arc::new(s3))
}

/// The bucket as complete-products sees it: only to render image URLs when they are read
/// (never creating the bucket, which is the image pipeline's).
async fn image_links(settings: &Settings) -> anyhow::Result<Arc<dyn images::ObjectStore>> {
    let mut s3 = with_link_default(settings.s3.clone());
    s3.create_bucket = false;
    let store = images::S3ObjectStore::new(s3)
        .await
        .context("invalid s3 settings")?;
    Ok(Arc::new(store))
}

/// The native MongoDB change-stream source writing Debezium envelopes (Avro through the
/// registry) to the CDC topic. For clusters without Kafka Connect.
fn change_stream_source(
    settings: &Settings,
    schema_registry: Arc<dyn SchemaRegistry>,
) -> anyhow::Result<CdcSource> {
    let (prefix, _) = settings
        .topics
        .cdc
        .split_once('.')
        .unwrap_or(("catalog", ""));
    let mut config = MongoSourceConfig::new(
        settings.mongodb.uri.clone(),
        settings.mongodb.database.clone(),
        settings.mongodb.products_collection.clone(),
        settings.state_dir.join("cdc-source"),
    );
    config.topic_prefix = prefix.to_owned();
    config.topic = Some(settings.topics.cdc.clone());
    let encoder = ChangeEncoder::avro(
        schema_registry,
        prefix,
        &settings.mongodb.database,
        &settings.mongodb.products_collection,
    )?;
    let source = config.build(encoder)?;
    let sink = KafkaChangeSink::new(&kafka_config(settings), settings.topics.cdc.clone())?;
    Ok(CdcSource::MongoChangeStream {
        source: Box::new(source),
        sink,
    })
}

/// The backends a distributed service with `roles` needs, opened from `settings`, with its
/// `/readyz` checks: MongoDB for the stores, S3 for the image pipeline, Kafka for every
/// stream.
pub async fn distributed_backends(settings: &Settings, roles: Roles) -> anyhow::Result<Backends> {
    let mut checks: Vec<(&'static str, Probe)> = Vec::new();
    let needs_mongo = roles.product_api || roles.complete_products || roles.cdc;
    let database = if needs_mongo {
        let database = mongo_database(settings).await?;
        checks.push(("mongodb", Probe::Mongo(database.clone())));
        Some(database)
    } else {
        None
    };
    let products = match (&database, roles.product_api || roles.complete_products) {
        (Some(database), true) => Some(ProductStore::Mongo(
            MongoProductStore::open(database.clone(), &settings.mongodb.products_collection)
                .await
                .context("cannot prepare the products collection (is MongoDB up?)")?,
        )),
        _ => None,
    };
    let view = match (&database, roles.complete_products) {
        (Some(database), true) => Some(ViewStore::Mongo(
            MongoViewStore::open(
                database.clone(),
                &settings.mongodb.complete_products_collection,
                &settings.mongodb.status_collection,
            )
            .await
            .context("cannot prepare the complete-products collections (is MongoDB up?)")?,
        )),
        _ => None,
    };
    let objects = if roles.image_pipeline {
        let bucket = image_bucket(settings).await?;
        checks.push(("s3", Probe::ObjectStore(bucket.clone())));
        Some(bucket)
    } else {
        None
    };
    let image_links = if roles.complete_products {
        Some(image_links(settings).await?)
    } else {
        None
    };
    let schema_registry: Arc<dyn SchemaRegistry> = Arc::new(HttpSchemaRegistry::new(
        settings.schema_registry_url.clone(),
    ));
    // The probe asks for a topic the service reads or writes.
    let probed_topic = if roles.image_pipeline || roles.cdc {
        Some(&settings.topics.cdc)
    } else if roles.complete_products {
        Some(&settings.topics.image_events)
    } else {
        None
    };
    if let Some(topic) = probed_topic {
        checks.push(("kafka", Probe::Kafka(kafka_probe(settings, topic)?)));
    }
    let streams = roles.image_pipeline || roles.complete_products;
    Ok(Backends {
        products,
        view,
        objects,
        image_links,
        transport: streams.then(|| Arc::new(kafka_client(settings)) as Arc<dyn Transport>),
        cdc: if roles.cdc {
            Some(change_stream_source(settings, schema_registry.clone())?)
        } else {
            None
        },
        schema_registry: Some(schema_registry),
        routes: Router::new(),
        readiness: readiness_of(checks),
    })
}

/// The options of a distributed service with `roles`, from `settings`.
pub fn distributed_options(settings: &Settings, roles: Roles) -> anyhow::Result<Options> {
    let image_pipeline = match &settings.topology_file {
        Some(path) => TopologyFile {
            text: std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            origin: path.display().to_string(),
        },
        None => TopologyFile::image_pipeline(),
    };
    // The image pipeline's per-product state is a task store: one per partition under
    // `state_dir/<application_id>/`, restored from its changelog partition when the partition
    // is assigned here.
    let mut runtime = RuntimeConfig::new("catalog-stream");
    runtime.exactly_once = settings.kafka.exactly_once;
    runtime.state_dir = Some(settings.state_dir.clone());
    runtime.changelogs = settings.state_changelog;
    runtime.application_server = settings.advertised_address.clone();
    Ok(Options {
        roles,
        topics: settings.topics.clone(),
        image_pipeline,
        fetch: settings.fetch.clone(),
        fetch_retry: settings.fetch_retry.clone(),
        api_token: settings.api_token(),
        group_id: settings.kafka.group_id.clone(),
        runtime,
        metrics: prometheus::Registry::new(),
    })
}

/// Runs the distributed service with `roles` until SIGTERM/SIGINT or until its stream stops.
pub async fn run_service(settings: Settings, roles: Roles) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signals();
    let backends = distributed_backends(&settings, roles).await?;
    let System { router, streams } =
        system::assemble(backends, distributed_options(&settings, roles)?)?;
    let http = serve_http(settings.listen, router, shutdown.clone());
    let (streams, http) = tokio::join!(
        system::then_cancel(
            async { streams.run(shutdown.clone()).await.map(|_| ()) },
            &shutdown
        ),
        http
    );
    streams.and(http)
}

/// A readiness probe of one backend.
enum Probe {
    Mongo(mongodb::Database),
    ObjectStore(Arc<dyn images::ObjectStore>),
    Kafka(KafkaProbe),
}

impl Probe {
    async fn answers(&self) -> bool {
        match self {
            Probe::Mongo(database) => {
                answers(async {
                    database
                        .run_command(mongodb::bson::doc! {"ping": 1})
                        .await
                        .is_ok()
                })
                .await
            }
            // A lookup of a key that need not exist.
            Probe::ObjectStore(objects) => {
                answers(async { objects.exists("readyz").await.is_ok() }).await
            }
            Probe::Kafka(kafka) => kafka.answers(READINESS_TIMEOUT).await,
        }
    }
}

/// `/readyz` over `checks`, asked at once, each within 2 s.
fn readiness_of(checks: Vec<(&'static str, Probe)>) -> ReadinessCheck {
    let checks = Arc::new(checks);
    readiness(move || {
        let checks = checks.clone();
        async move {
            let answers =
                futures::future::join_all(checks.iter().map(|(_, probe)| probe.answers())).await;
            checks
                .iter()
                .zip(answers)
                .map(|((name, _), answer)| ((*name).to_owned(), answer))
                .collect()
        }
    })
}

/// The image pipeline's `/readyz` check: the object store answers (a lookup of a key that
/// need not exist) and, when given, the Kafka cluster answers, each within 2 s.
pub fn object_store_readiness(
    objects: Arc<dyn images::ObjectStore>,
    kafka: Option<KafkaProbe>,
) -> ReadinessCheck {
    let mut checks = vec![("s3", Probe::ObjectStore(objects))];
    if let Some(kafka) = kafka {
        checks.push(("kafka", Probe::Kafka(kafka)));
    }
    readiness_of(checks)
}

/// A readiness probe of the Kafka cluster with the service's client settings, asking for
/// `topic` (one the service reads or writes).
pub fn kafka_probe(settings: &Settings, topic: &str) -> anyhow::Result<KafkaProbe> {
    kafka_client(settings)
        .probe(topic)
        .context("invalid Kafka client settings for the readiness probe")
}
