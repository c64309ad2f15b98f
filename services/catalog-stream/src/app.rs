//! Running the services: each distributed service as its own process (SPEC §5), wired from
//! [`Settings`], with graceful shutdown on SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio_util::sync::CancellationToken;
use topology::serdes::{HttpSchemaRegistry, SchemaRegistry};
use topology::transport::{KafkaProbe, KafkaTransport, Transport};
use topology::{Metrics, Runtime, RuntimeConfig, Topology};

use crate::complete_products::{self, CompleteProducts};
use crate::http::{ReadinessCheck, fallback, method_not_allowed, ops_routes};
use crate::pipeline::{self, ImageMetrics, ImageWork};
use crate::product_collector::{self, ProductCollector};
use crate::settings::Settings;
use crate::store::{MongoProductStore, MongoViewStore, ProductStore, ViewStore};

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

/// The full router of a service: its API routes (`documented` says which part of the API they
/// are, for `/openapi.json`), the ops routes, the fallback, body limit.
pub fn service_router(
    api: Router,
    documented: crate::openapi::Api,
    registries: Vec<prometheus::Registry>,
    readiness: ReadinessCheck,
) -> Router {
    let document = Arc::new(crate::openapi::document_for(documented));
    api.merge(ops_routes(registries, readiness))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { crate::openapi::response(&document) }
            }),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::MAX_BODY_BYTES,
        ))
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

async fn mongo_product_store(settings: &Settings) -> anyhow::Result<ProductStore> {
    let database = mongo_database(settings).await?;
    let store = MongoProductStore::open(database, &settings.mongodb.products_collection)
        .await
        .context("cannot prepare the products collection (is MongoDB up?)")?;
    Ok(ProductStore::Mongo(store))
}

async fn mongo_view_store(settings: &Settings) -> anyhow::Result<ViewStore> {
    let database = mongo_database(settings).await?;
    let store = MongoViewStore::open(
        database,
        &settings.mongodb.complete_products_collection,
        &settings.mongodb.status_collection,
    )
    .await
    .context("cannot prepare the complete-products collections (is MongoDB up?)")?;
    Ok(ViewStore::Mongo(store))
}

fn kafka_client(settings: &Settings) -> KafkaTransport {
    let mut transport = KafkaTransport::new(&settings.kafka.bootstrap);
    for (key, value) in &settings.kafka.properties {
        transport = transport.set(key, value);
    }
    transport
}

fn kafka_transport(settings: &Settings) -> Arc<dyn Transport> {
    Arc::new(kafka_client(settings))
}

/// What a runtime flushes before it commits offsets past the work recorded there.
#[derive(Clone, Default)]
pub struct Durability {
    /// The processors' state directory.
    pub state: Option<state::StateDir>,
    /// The changelog of that state.
    pub changelog: Option<Arc<dyn state::ChangelogSink>>,
}

/// The engine's settings for a distributed service's topology: its defaults, with
/// exactly-once as configured.
fn kafka_runtime_config(settings: &Settings, application_id: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(application_id);
    config.exactly_once = settings.kafka.exactly_once;
    config
}

/// Runs a topology until `shutdown`, with metrics in `registry`; `state` is flushed before
/// offsets are committed.
pub async fn run_topology(
    topology: Topology,
    config: RuntimeConfig,
    transport: Arc<dyn Transport>,
    durability: Durability,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new(registry).context("cannot register the engine metrics")?;
    let mut runtime = Runtime::new(topology, transport, config).with_metrics(metrics);
    if let Some(dir) = durability.state {
        // Flushed before every offset commit: processors record their effects there without
        // a flush of their own.
        runtime = runtime.with_state_dir(dir);
    }
    if let Some(sink) = durability.changelog {
        runtime = runtime.with_changelog(sink);
    }
    let summary = runtime
        .run(shutdown)
        .await
        .context("the topology stopped")?;
    tracing::info!(
        consumed = summary.consumed,
        abandoned = summary.abandoned,
        "topology stopped"
    );
    Ok(())
}

/// `product-collector`: the ingest API over MongoDB.
pub async fn product_collector(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signals();
    let registry = prometheus::Registry::new();
    let store = mongo_product_store(&settings).await?;
    let collector =
        ProductCollector::new(store.clone(), &registry)?.with_api_token(settings.api_token());
    let ready = readiness(move || {
        let store = store.clone();
        async move { vec![("mongodb".to_owned(), answers(store.ping()).await)] }
    });
    let router = service_router(
        product_collector::routes(collector),
        crate::openapi::Api::ProductCollector,
        vec![registry],
        ready,
    );
    serve_http(settings.listen, router, shutdown).await
}

/// `complete-products`: the image-events sink and the read API over MongoDB.
pub async fn complete_products(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signals();
    let registry = prometheus::Registry::new();
    let products = mongo_product_store(&settings).await?;
    let view = mongo_view_store(&settings).await?;
    let schema_registry: Arc<dyn SchemaRegistry> = Arc::new(HttpSchemaRegistry::new(
        settings.schema_registry_url.clone(),
    ));
    let processors = pipeline::registry(None, Some(view.clone()), schema_registry);
    let (topology, application_id) = pipeline::load(
        pipeline::COMPLETE_PRODUCTS_TOPOLOGY,
        "complete-products topology",
        &settings.topics,
        &processors,
    )?;
    let ready_view = view.clone();
    let kafka = kafka_probe(&settings, &settings.topics.image_events)?;
    let ready = readiness(move || {
        let (view, kafka) = (ready_view.clone(), kafka.clone());
        async move {
            let (mongodb, kafka) =
                tokio::join!(answers(view.ping()), kafka.answers(READINESS_TIMEOUT));
            vec![("mongodb".to_owned(), mongodb), ("kafka".to_owned(), kafka)]
        }
    });
    let api = complete_products::routes(
        CompleteProducts::new(products, view)
            .with_api_token(settings.api_token())
            .with_image_links(image_links(&settings).await?),
    );
    let router = service_router(
        api,
        crate::openapi::Api::CompleteProducts,
        vec![registry.clone()],
        ready,
    );
    let application_id = settings.kafka.group_id.clone().unwrap_or(application_id);
    let stream = run_topology(
        topology,
        kafka_runtime_config(&settings, &application_id),
        kafka_transport(&settings),
        Durability::default(),
        &registry,
        shutdown.clone(),
    );
    let http = serve_http(settings.listen, router, shutdown.clone());
    let (stream, http) = tokio::join!(stream_then_cancel(stream, &shutdown), http);
    stream.and(http)
}

/// Cancels `shutdown` when `work` ends, so a failed stream also stops the HTTP side.
async fn stream_then_cancel(
    work: impl Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let result = work.await;
    shutdown.cancel();
    result
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

/// Builds the image work (fetcher, object store, metrics) from settings.
pub async fn image_work(
    settings: &Settings,
    objects: Arc<dyn images::ObjectStore>,
    registry: &prometheus::Registry,
) -> anyhow::Result<ImageWork> {
    let fetcher = images::ImageFetcher::new(settings.fetch.clone())
        .map_err(|error| anyhow::anyhow!("invalid fetch settings: {error}"))?;
    Ok(ImageWork {
        fetcher,
        fetch_retry: settings.fetch_retry.clone(),
        objects,
        metrics: ImageMetrics::new(registry)?,
    })
}

/// `image-pipeline`: the diff-checker, the image collector and the image remover over Kafka
/// and S3.
pub async fn image_pipeline(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signals();
    let registry = prometheus::Registry::new();
    settings
        .s3
        .validate()
        .map_err(|errors| anyhow::anyhow!("invalid s3 settings: {}", errors.join("; ")))?;
    let s3 = images::S3ObjectStore::new(with_link_default(settings.s3.clone()))
        .await
        .context("cannot reach the S3 bucket")?;
    let objects: Arc<dyn images::ObjectStore> = Arc::new(s3);
    let (template, origin) = topology_template(&settings, pipeline::IMAGE_PIPELINE_TOPOLOGY)?;
    let application_id = match &settings.kafka.group_id {
        Some(group) => group.clone(),
        None => pipeline::application_id(&template, &settings.topics)?
            .unwrap_or_else(|| "catalog-stream-image-pipeline".to_owned()),
    };
    let work = image_work(&settings, objects.clone(), &registry).await?;
    let schema_registry: Arc<dyn SchemaRegistry> = Arc::new(HttpSchemaRegistry::new(
        settings.schema_registry_url.clone(),
    ));
    let processors = pipeline::registry(Some(work), None, schema_registry);
    let (topology, _) = pipeline::load(&template, &origin, &settings.topics, &processors)?;
    let kafka = kafka_probe(&settings, &settings.topics.cdc)?;
    let router = service_router(
        Router::new(),
        crate::openapi::Api::OpsOnly,
        vec![registry.clone()],
        object_store_readiness(objects, Some(kafka)),
    );
    let application_id = settings.kafka.group_id.clone().unwrap_or(application_id);
    // The collector's and remover's per-product state is a task store: one per partition
    // under `state_dir/<application_id>/`, restored from its changelog partition when the
    // partition is assigned here.
    let mut config = kafka_runtime_config(&settings, &application_id);
    config.state_dir = Some(settings.state_dir.clone());
    config.changelogs = settings.state_changelog;
    let stream = run_topology(
        topology,
        config,
        kafka_transport(&settings),
        Durability::default(),
        &registry,
        shutdown.clone(),
    );
    let http = serve_http(settings.listen, router, shutdown.clone());
    let (stream, http) = tokio::join!(stream_then_cancel(stream, &shutdown), http);
    stream.and(http)
}

/// The image pipeline's `/readyz` check: the object store answers (a lookup of a key that
/// need not exist) and, when given, the Kafka cluster answers, each within 2 s.
pub fn object_store_readiness(
    objects: Arc<dyn images::ObjectStore>,
    kafka: Option<KafkaProbe>,
) -> ReadinessCheck {
    readiness(move || {
        let (objects, kafka) = (objects.clone(), kafka.clone());
        async move {
            let s3 = answers(async { objects.exists("readyz").await.is_ok() }).await;
            let mut checks = vec![("s3".to_owned(), s3)];
            if let Some(kafka) = kafka {
                checks.push(("kafka".to_owned(), kafka.answers(READINESS_TIMEOUT).await));
            }
            checks
        }
    })
}

/// A readiness probe of the Kafka cluster with the service's client settings, asking for
/// `topic` (one the service reads or writes).
pub fn kafka_probe(settings: &Settings, topic: &str) -> anyhow::Result<KafkaProbe> {
    kafka_client(settings)
        .probe(topic)
        .context("invalid Kafka client settings for the readiness probe")
}

/// The topology file named in the settings, or the built-in one.
pub fn topology_template(settings: &Settings, built_in: &str) -> anyhow::Result<(String, String)> {
    match &settings.topology_file {
        Some(path) => Ok((
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        )),
        None => Ok((
            built_in.to_owned(),
            "built-in image-pipeline topology".to_owned(),
        )),
    }
}

/// `cdc-source`: the native MongoDB change-stream source, emitting Debezium envelopes (Avro
/// through the registry) to the CDC topic. For clusters without Kafka Connect.
pub async fn cdc_source(settings: Settings) -> anyhow::Result<()> {
    use connectors::mongo_source::{ChangeEncoder, KafkaChangeSink, MongoSourceConfig};

    let shutdown = shutdown_on_signals();
    let registry = prometheus::Registry::new();
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
    let schema_registry: Arc<dyn SchemaRegistry> = Arc::new(HttpSchemaRegistry::new(
        settings.schema_registry_url.clone(),
    ));
    let encoder = ChangeEncoder::avro(
        schema_registry,
        prefix,
        &settings.mongodb.database,
        &settings.mongodb.products_collection,
    )?;
    let mut source = config.build(encoder)?;
    let extra: Vec<(&str, &str)> = settings
        .kafka
        .properties
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let sink = KafkaChangeSink::new(
        &settings.kafka.bootstrap,
        settings.topics.cdc.clone(),
        &extra,
    )?;
    let database = mongo_database(&settings).await?;
    let kafka = kafka_probe(&settings, &settings.topics.cdc)?;
    let ready = readiness(move || {
        let (database, kafka) = (database.clone(), kafka.clone());
        async move {
            let (mongodb, kafka) = tokio::join!(
                answers(async {
                    database
                        .run_command(mongodb::bson::doc! {"ping": 1})
                        .await
                        .is_ok()
                }),
                kafka.answers(READINESS_TIMEOUT)
            );
            vec![("mongodb".to_owned(), mongodb), ("kafka".to_owned(), kafka)]
        }
    });
    let router = service_router(
        Router::new(),
        crate::openapi::Api::OpsOnly,
        vec![registry],
        ready,
    );
    let http = serve_http(settings.listen, router, shutdown.clone());
    let stream = async {
        let result = source
            .run(sink, {
                let shutdown = shutdown.clone();
                async move { shutdown.cancelled().await }
            })
            .await
            .context("the change-stream source stopped");
        shutdown.cancel();
        result
    };
    let (stream, http) = tokio::join!(stream, http);
    stream.and(http)
}
