//! The standalone mode (SPEC §5): the whole system in one process on embedded defaults.
//!
//! Products, the view and the pipeline state live in sled under the data directory; images in
//! `images/` there, served by the process at `/images/…`; the events travel over the embedded
//! log (sled) in the same Avro wire format as on Kafka, through the in-process Schema Registry.
//! The same topology files and processors as the distributed services run here.
//!
//! CDC is durable: the product store writes each product and its change record (an outbox
//! entry) in one sled transaction and flushes before answering. The outbox relay turns entries
//! into Debezium envelopes on the CDC topic, each stamped with its outbox sequence number, and
//! skips what the log already holds after a crash: every accepted change is published exactly
//! once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use apache_avro::Schema;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use connectors::debezium::{ChangeEvent, Op, SourceInfo};
use connectors::mongo_source::ChangeEncoder;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use topology::serdes::{RegistryError, SchemaRegistry};
use topology::transport::{EmbeddedLog, EmbeddedTransport, Transport};
use topology::{Headers, RawRecord, RuntimeConfig};

use crate::app::{self, run_topology, service_router};
use crate::complete_products::{self, CompleteProducts};
use crate::http::ApiError;
use crate::pipeline::{self, ImageMetrics, ImageWork};
use crate::product_collector::{self, ProductCollector};
use crate::settings::Topics;
use crate::store::{
    OUTBOX_SEQUENCE_HEADER, Outbox, ProductStore, SledProductStore, SledViewStore, ViewStore,
};

/// Partitions of every topic of the embedded log.
const PARTITIONS: u32 = 4;
/// The database and collection names the CDC envelopes carry.
const DATABASE: &str = "catalog";
const COLLECTION: &str = "products";
const TOPIC_PREFIX: &str = "catalog";
/// sled's page cache per database. sled's default is 1 GiB for each of the four databases the
/// process opens (store, log, registry, state), which a catalog of 100k products fills; SPEC §8
/// allows the whole process 128 MiB. sled counts serialized sizes, so its real footprint is
/// larger than these figures. Reads that miss it are served from the OS page cache.
const STORE_CACHE_BYTES: u64 = 4 * 1024 * 1024;
const LOG_CACHE_BYTES: u64 = 2 * 1024 * 1024;
const REGISTRY_CACHE_BYTES: u64 = 256 * 1024;
const STATE_CACHE_BYTES: u64 = 2 * 1024 * 1024;
/// Records per partition the standalone topologies hold (being processed / in total) before
/// the partition pauses. The engine's defaults (1,000 / 20,000) suit a pod with its own memory
/// limit; here the whole process shares 128 MiB, and a burst of POSTs otherwise fills it with
/// decoded records waiting for the image step. The log keeps the rest on disk.
const MAX_IN_FLIGHT_PER_PARTITION: usize = 256;
const MAX_UNACKED_PER_PARTITION: usize = 2_000;

/// The in-process Schema Registry as the engine's [`SchemaRegistry`].
#[derive(Debug)]
pub struct InProcessRegistry {
    registry: Arc<schema_registry::Registry>,
    parsed: Mutex<std::collections::HashMap<u32, Arc<Schema>>>,
}

impl InProcessRegistry {
    /// Wraps `registry`.
    pub fn new(registry: Arc<schema_registry::Registry>) -> Self {
        Self {
            registry,
            parsed: Mutex::new(Default::default()),
        }
    }
}

impl SchemaRegistry for InProcessRegistry {
    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<Arc<Schema>, RegistryError>> {
        Box::pin(async move {
            if let Some(schema) = self
                .parsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
            {
                return Ok(schema.clone());
            }
            let text =
                self.registry
                    .schema_by_id(id)
                    .map_err(|error| RegistryError::UnknownId {
                        id,
                        message: error.to_string(),
                    })?;
            let schema =
                Arc::new(
                    Schema::parse_str(&text).map_err(|error| RegistryError::BadSchema {
                        id,
                        message: error.to_string(),
                    })?,
                );
            self.parsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, schema.clone());
            Ok(schema)
        })
    }

    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a Schema,
    ) -> BoxFuture<'a, Result<u32, RegistryError>> {
        Box::pin(async move {
            let register_error = |message: String| RegistryError::Register {
                subject: subject.to_owned(),
                message,
            };
            let text = serde_json::to_string(schema).map_err(|e| register_error(e.to_string()))?;
            self.registry
                .register(subject, &text)
                .map_err(|e| register_error(e.to_string()))
        })
    }
}

/// The whole system over one data directory.
pub struct Standalone {
    products: SledProductStore,
    view: SledViewStore,
    log: Arc<EmbeddedLog>,
    registry: Arc<dyn SchemaRegistry>,
    images: Arc<images::LocalDirObjectStore>,
    /// The task stores' root (`<application_id>/<task>/` below it).
    state_dir: std::path::PathBuf,
    topics: Topics,
    /// The services' own metrics and the image pipeline's engine metrics.
    metrics: prometheus::Registry,
    /// The complete-products topology's engine metrics (label `topology="complete-products"`,
    /// so its series differ from the image pipeline's of the same name).
    sink_metrics: prometheus::Registry,
    /// Image fetch limits and the SSRF guard.
    fetch: images::FetchConfig,
    /// The bearer token of the write endpoints, when configured.
    api_token: Option<crate::http::ApiToken>,
}

/// The image fetch settings of the standalone mode: [`images::FetchConfig`] defaults with
/// loopback addresses allowed (standalone is a local development mode: images served from this
/// machine can be collected) and, when given, another total timeout per image (the connect
/// timeout is capped by it).
pub fn fetch_config(total_timeout: Option<Duration>) -> images::FetchConfig {
    let mut fetch = images::FetchConfig {
        allow_loopback: true,
        ..Default::default()
    };
    if let Some(total) = total_timeout {
        fetch.total_timeout = total;
        fetch.connect_timeout = fetch.connect_timeout.min(total);
    }
    fetch
}

impl Standalone {
    /// Opens (or creates) everything under `data_dir`; stored images are served under
    /// `{base_url}/images/…`.
    pub fn open(data_dir: &Path, base_url: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let db = state::open_sled(
            &sled::Config::new()
                .path(data_dir.join("store"))
                .cache_capacity(STORE_CACHE_BYTES),
        )
        .with_context(|| format!("cannot open {}/store", data_dir.display()))?;
        let products = SledProductStore::open(&db)?;
        let view = SledViewStore::open(&db)?;
        let log = Arc::new(
            EmbeddedLog::open_with(&data_dir.join("log"), LOG_CACHE_BYTES)
                .with_context(|| format!("cannot open {}/log", data_dir.display()))?,
        );
        let topics = Topics::default();
        for topic in [
            &topics.cdc,
            &topics.upserts,
            &topics.deletes,
            &topics.image_events,
        ] {
            log.create_topic(topic, PARTITIONS)
                .with_context(|| format!("cannot create topic {topic}"))?;
        }
        let registry =
            schema_registry::Registry::open_with(data_dir.join("registry"), REGISTRY_CACHE_BYTES)
                .with_context(|| format!("cannot open {}/registry", data_dir.display()))?;
        let images = images::LocalDirObjectStore::new(data_dir.join("images"), base_url)
            .map_err(|error| anyhow::anyhow!("cannot prepare the image directory: {error}"))?;
        Ok(Self {
            products,
            view,
            log,
            registry: Arc::new(InProcessRegistry::new(Arc::new(registry))),
            images: Arc::new(images),
            state_dir: data_dir.join("state"),
            topics,
            metrics: prometheus::Registry::new(),
            sink_metrics: prometheus::Registry::new_custom(
                None,
                Some([("topology".to_owned(), "complete-products".to_owned())].into()),
            )?,
            fetch: fetch_config(None),
            api_token: None,
        })
    }

    /// Requires `Authorization: Bearer <token>` on the write endpoints when `token` is given.
    pub fn with_api_token(mut self, token: Option<crate::http::ApiToken>) -> Self {
        self.api_token = token;
        self
    }

    /// Uses `fetch` for image fetches instead of [`fetch_config`]`(None)`.
    pub fn with_fetch(mut self, fetch: images::FetchConfig) -> Self {
        self.fetch = fetch;
        self
    }

    /// The HTTP API of every service, plus `/images/…`.
    pub fn router(&self) -> anyhow::Result<Router> {
        let products = ProductStore::Sled(self.products.clone());
        let view = ViewStore::Sled(self.view.clone());
        let collector = ProductCollector::new(products.clone(), &self.metrics)?
            .with_api_token(self.api_token.clone());
        let api = product_collector::routes(collector)
            .merge(complete_products::routes(
                CompleteProducts::new(products, view).with_api_token(self.api_token.clone()),
            ))
            .route(
                "/images/{*key}",
                axum::routing::get(serve_image).with_state(self.images.clone()),
            );
        let ready = Arc::new(|| {
            Box::pin(async { vec![("embedded".to_owned(), true)] })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(String, bool)>> + Send>>
        });
        Ok(service_router(
            api,
            crate::openapi::Api::All,
            vec![self.metrics.clone(), self.sink_metrics.clone()],
            ready,
        ))
    }

    /// Runs the relay and both topologies until `shutdown`.
    pub async fn run_streams(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let work = ImageWork {
            fetcher: images::ImageFetcher::new(self.fetch.clone())
                .map_err(|error| anyhow::anyhow!("fetch settings: {error}"))?,
            fetch_retry: images::RetryPolicy::default(),
            objects: self.images.clone(),
            metrics: ImageMetrics::new(&self.metrics)?,
        };
        let processors = pipeline::registry(
            Some(work),
            Some(ViewStore::Sled(self.view.clone())),
            self.registry.clone(),
        );
        let (image_pipeline, pipeline_id) = pipeline::load(
            pipeline::IMAGE_PIPELINE_TOPOLOGY,
            "built-in image-pipeline topology",
            &self.topics,
            &processors,
        )?;
        let (sink, sink_id) = pipeline::load(
            pipeline::COMPLETE_PRODUCTS_TOPOLOGY,
            "built-in complete-products topology",
            &self.topics,
            &processors,
        )?;
        // Nothing else reads the log, so a record both topologies' groups are done with can go:
        // without this the log (and sled's memory for it) grows with every product ever posted.
        for (topology, group) in [(&image_pipeline, &pipeline_id), (&sink, &sink_id)] {
            for topic in topology.source_topics() {
                self.log.retain_until_committed_by(&topic, group);
            }
        }
        let transport: Arc<dyn Transport> = Arc::new(EmbeddedTransport::new(self.log.clone()));
        let relay = OutboxRelay::new(
            self.products.outbox().clone(),
            self.log.clone(),
            ChangeEncoder::avro(self.registry.clone(), TOPIC_PREFIX, DATABASE, COLLECTION)?,
            self.topics.cdc.clone(),
        );
        let (relay, first, second) = tokio::join!(
            relay.run(shutdown.clone()),
            run_topology(
                image_pipeline,
                pipeline_runtime_config(&pipeline_id, &self.state_dir),
                transport.clone(),
                app::Durability::default(),
                &self.metrics,
                shutdown.clone(),
            ),
            run_topology(
                sink,
                runtime_config(&sink_id),
                transport,
                app::Durability::default(),
                &self.sink_metrics,
                shutdown.clone(),
            ),
        );
        relay.and(first).and(second)
    }
}

async fn serve_image(
    State(images): State<Arc<images::LocalDirObjectStore>>,
    UrlPath(key): UrlPath<String>,
) -> Response {
    use images::ObjectStore;
    match images.get(&key).await {
        Ok(Some(object)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_str(&object.content_type)
                        .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            object.bytes,
        )
            .into_response(),
        Ok(None) => ApiError::not_found("no such image").into_response(),
        Err(images::StoreError::InvalidKey { .. }) => {
            ApiError::not_found("no such image").into_response()
        }
        Err(error) => ApiError::unavailable("the image directory", &error).into_response(),
    }
    .into_response()
}

/// Publishes outbox entries to the CDC topic of the embedded log, exactly once.
pub struct OutboxRelay {
    outbox: Outbox,
    log: Arc<EmbeddedLog>,
    encoder: ChangeEncoder,
    topic: String,
}

impl OutboxRelay {
    /// A relay from `outbox` to `topic` of `log`.
    pub fn new(
        outbox: Outbox,
        log: Arc<EmbeddedLog>,
        encoder: ChangeEncoder,
        topic: String,
    ) -> Self {
        Self {
            outbox,
            log,
            encoder,
            topic,
        }
    }

    /// The highest outbox sequence already in the log (scanning each partition's tail).
    fn published_through(&self) -> anyhow::Result<Option<u64>> {
        let mut highest = None;
        let partitions = self.log.partitions(&self.topic)?.unwrap_or(0);
        for partition in 0..i32::try_from(partitions).unwrap_or(0) {
            let end = self.log.end_offset(&self.topic, partition)?;
            // Tombstones carry the sequence too, so the last record of a partition has the
            // highest sequence written there.
            let tail = self.log.read(&self.topic, partition, (end - 1).max(0), 1)?;
            for record in tail {
                if let Some(sequence) = record
                    .headers
                    .get_str(OUTBOX_SEQUENCE_HEADER)
                    .and_then(|text| text.parse::<u64>().ok())
                {
                    highest = highest.max(Some(sequence));
                }
            }
        }
        Ok(highest)
    }

    /// Runs until `shutdown`, publishing entries as they are written.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut next = match self.published_through()? {
            Some(sequence) => {
                self.outbox.remove_through(sequence)?;
                sequence + 1
            }
            None => 0,
        };
        loop {
            let outbox = self.outbox.clone();
            // Only what is on disk: a change the store could still lose in a crash must not
            // reach the pipeline.
            let pending = blocking(move || Ok(outbox.pending(next, 256)?)).await?;
            if pending.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.outbox.changed() => {}
                    // The notification can race the write it announces; look again anyway.
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let mut records = Vec::with_capacity(pending.len());
            for (sequence, entry) in pending {
                self.publish(sequence, &entry, &mut records).await?;
                next = sequence + 1;
            }
            // sled calls on a blocking thread: they can wait for a flush in progress.
            let (log, outbox) = (self.log.clone(), self.outbox.clone());
            blocking(move || {
                for record in &records {
                    log.append(record)?;
                }
                log.flush_blocking()?;
                outbox.remove_through(next - 1)?;
                Ok(())
            })
            .await?;
        }
    }

    /// The change records of one outbox entry, added to `records`.
    async fn publish(
        &self,
        sequence: u64,
        entry: &crate::store::OutboxEntry,
        records: &mut Vec<RawRecord>,
    ) -> anyhow::Result<()> {
        let id =
            serde_json::json!({"mallId": entry.key.mall_id, "productId": entry.key.product_id});
        let (op, after) = match &entry.after {
            Some(stored) => {
                let mut document = serde_json::to_value(stored)?;
                if let Some(object) = document.as_object_mut() {
                    object.insert("_id".into(), id.clone());
                    object.insert(
                        "version".into(),
                        serde_json::json!({"$numberLong": stored.version.to_string()}),
                    );
                }
                (
                    if entry.existed {
                        Op::Update
                    } else {
                        Op::Create
                    },
                    Some(document),
                )
            }
            None => (Op::Delete, None),
        };
        let seconds = entry.ts_ms.div_euclid(1000);
        let source = SourceInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            connector: "mongodb".into(),
            name: TOPIC_PREFIX.into(),
            ts_ms: seconds * 1000,
            snapshot: Some("false".into()),
            db: DATABASE.into(),
            rs: None,
            sequence: None,
            ts_us: None,
            ts_ns: None,
            collection: COLLECTION.into(),
            // The outbox sequence orders changes like a cluster time's increment would.
            ord: i32::try_from(sequence % (i32::MAX as u64)).unwrap_or(0),
            lsid: None,
            txn_number: None,
            wall_time: Some(entry.ts_ms),
        };
        let mut event = ChangeEvent::tombstone(id.clone());
        event.op = op;
        event.db = Some(DATABASE.into());
        event.collection = Some(COLLECTION.into());
        event.after = after;
        event.source = Some(source);
        event.ts_ms = Some(entry.ts_ms);
        records.push(self.record(sequence, &event).await?);
        if op == Op::Delete {
            records.push(self.record(sequence, &ChangeEvent::tombstone(id)).await?);
        }
        Ok(())
    }

    async fn record(&self, sequence: u64, event: &ChangeEvent) -> anyhow::Result<RawRecord> {
        let (key, value) = self.encoder.encode(&self.topic, event).await?;
        let mut headers = Headers::default();
        headers.insert(OUTBOX_SEQUENCE_HEADER, sequence.to_string().into_bytes());
        Ok(RawRecord {
            topic: self.topic.as_str().into(),
            partition: -1,
            offset: -1,
            key: Some(key.into()),
            value: value.map(Into::into),
            headers,
            timestamp: Some(crate::store::now_ms()),
        })
    }
}

/// Runs sled calls on tokio's blocking pool: sled 0.34's calls can wait for a flush in progress
/// (its process-wide lock), which must not stall an async worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("sled task")?
}

/// Nice value of the threads that run the relay and the topologies (0 is the default; 19 the
/// lowest priority).
const STREAMS_NICE: i32 = 10;

/// Most blocking threads of the streams runtime (tokio's default is 512). The image pipeline
/// has up to 256 records in flight, each with its file and sled calls on the blocking pool:
/// under a burst the pool grew to 512 threads, each with its own allocator heap and stack
/// (2.2 GiB RSS), for no throughput since they all queue on the same disk and sled's lock.
/// Each thread also keeps part-used pages of mimalloc's per-thread heap, and those of a thread
/// that ends idle are abandoned: after ~100k products, 16 threads left 151–166 MiB RSS and 4
/// left 111–124 MiB, with the images collected as fast (`infrastructure/BENCHMARKS.md`).
const STREAMS_BLOCKING_THREADS: usize = 4;

/// The engine's settings for a standalone topology consumed by `group`.
fn runtime_config(group: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(group);
    config.max_in_flight_per_partition = MAX_IN_FLIGHT_PER_PARTITION;
    config.max_unacked_per_partition = MAX_UNACKED_PER_PARTITION;
    config
}

/// The image pipeline's runtime: its task stores under `state_dir`, local only. One process
/// owns every partition for good and its disk is durable, so a changelog would only be a
/// second copy.
fn pipeline_runtime_config(group: &str, state_dir: &Path) -> RuntimeConfig {
    let mut config = runtime_config(group);
    config.state_dir = Some(state_dir.to_path_buf());
    config.changelogs = false;
    // Shared by the tasks: one database per partition.
    config.store_page_cache_bytes = STATE_CACHE_BYTES / u64::from(PARTITIONS);
    config
}

/// The runtime of the relay and the topologies: two workers (and their blocking pool) at a
/// lower CPU priority than the API's runtime.
///
/// On one runtime, the image pipeline's tasks (fetches, image files, state, the embedded log)
/// filled the async workers under a burst of POSTs and the requests queued behind them: 17k
/// POSTs/s without the pipeline running, under 1k with it. With its own lower-priority
/// threads, the pipeline runs on whatever CPU the API leaves and catches up when the burst
/// ends; acknowledged products are on disk either way.
fn streams_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(STREAMS_BLOCKING_THREADS)
        .thread_name("streams-worker")
        .on_thread_start(lower_thread_priority)
        .enable_all()
        .build()
        .context("cannot start the streams runtime")
}

/// Lowers the calling thread's CPU priority to [`STREAMS_NICE`] (Linux: nice applies per thread).
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), STREAMS_NICE)
    {
        tracing::debug!(%error, "cannot lower the priority of a streams thread");
    }
}

/// `catalog-stream` with no arguments.
///
/// `fetch` as made by [`fetch_config`]; `api_token`, when given, guards the write endpoints.
pub async fn run(
    listen: SocketAddr,
    data_dir: PathBuf,
    fetch: images::FetchConfig,
    api_token: Option<crate::http::ApiToken>,
) -> anyhow::Result<()> {
    let shutdown = app::shutdown_on_signals();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr().unwrap_or(listen);
    let system = Standalone::open(&data_dir, &format!("http://{address}"))?
        .with_fetch(fetch)
        .with_api_token(api_token);
    let router = system.router()?;
    tracing::info!(%address, data_dir = %data_dir.display(), "standalone: serving the API");
    let http = async {
        axum::serve(listener, router)
            .with_graceful_shutdown({
                let shutdown = shutdown.clone();
                async move { shutdown.cancelled().await }
            })
            .await
            .context("HTTP server failed")
    };
    // The relay and both topologies run on their own runtime, whose threads yield the CPU to
    // the API's: see `streams_runtime`.
    let (done, streams_done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("streams".into())
        .spawn({
            let shutdown = shutdown.clone();
            move || {
                let result = streams_runtime()
                    .and_then(|runtime| runtime.block_on(system.run_streams(shutdown.clone())));
                shutdown.cancel();
                let _ = done.send(result);
            }
        })
        .context("cannot start the streams thread")?;
    let streams = async {
        streams_done
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the streams thread stopped")))
    };
    let (http, streams) = tokio::join!(http, streams);
    streams.and(http)
}
