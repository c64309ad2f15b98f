//! The standalone mode (SPEC §5): the whole system in one process on embedded defaults.
//!
//! Products, the view and the pipeline state live in sled under the data directory; images in
//! `images/` there, served by the process at `/images/…`; the events travel over the embedded
//! log (sled) in the same Avro wire format as on Kafka, through the in-process Schema Registry.
//! The backends are opened here ([`Standalone::open`]); the system on them is assembled by
//! [`crate::system::assemble`], as for the distributed services.
//!
//! What is specific to one process lives beside this file: the in-process registry
//! (`registry.rs`), the image route (`images_route.rs`) and the runtime the stream tasks run on
//! (`streams_runtime.rs`). The outbox relay, the standalone CDC source, is a backend
//! ([`crate::system::OutboxRelay`]).

mod images_route;
mod registry;
mod streams_runtime;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use connectors::mongo_source::{ChangeEncoder, ChangeOrigin};
use topology::RuntimeConfig;
use topology::serdes::SchemaRegistry;
use topology::transport::{EmbeddedLog, EmbeddedTransport};

pub use registry::InProcessRegistry;

use crate::app;
use crate::settings::Topics;
use crate::store::{ProductStore, SledProductStore, SledViewStore, ViewStore};
use crate::system::{self, Backends, CdcSource, Options, OutboxRelay, Roles, System};

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

/// The database and collection the CDC envelopes name, as Debezium would for MongoDB.
fn origin() -> ChangeOrigin {
    ChangeOrigin {
        server_name: TOPIC_PREFIX.to_owned(),
        db: DATABASE.to_owned(),
        collection: COLLECTION.to_owned(),
    }
}

/// The backends of the whole system over one data directory.
pub struct Standalone {
    products: SledProductStore,
    view: SledViewStore,
    log: Arc<EmbeddedLog>,
    registry: Arc<dyn SchemaRegistry>,
    images: Arc<images::LocalDirObjectStore>,
    /// The task stores' root (`<application_id>/<task>/` below it).
    state_dir: PathBuf,
    topics: Topics,
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

    /// The whole system on these backends: every route (and `/images/…`), the outbox relay and
    /// both topologies.
    pub fn assemble(self) -> anyhow::Result<System> {
        let relay = OutboxRelay::new(
            self.products.outbox().clone(),
            self.log.clone(),
            ChangeEncoder::avro(self.registry.clone(), TOPIC_PREFIX, DATABASE, COLLECTION)?,
            origin(),
            self.topics.cdc.clone(),
        )?;
        let backends = Backends {
            products: Some(ProductStore::Sled(self.products.clone())),
            view: Some(ViewStore::Sled(self.view.clone())),
            objects: Some(self.images.clone()),
            image_links: None,
            transport: Some(Arc::new(EmbeddedTransport::new(self.log.clone()))),
            schema_registry: Some(self.registry.clone()),
            cdc: Some(CdcSource::Outbox(relay)),
            routes: images_route::images_route(self.images.clone()),
            readiness: Arc::new(|| Box::pin(async { vec![("embedded".to_owned(), true)] })),
        };
        let options = Options {
            fetch: self.fetch.clone(),
            api_token: self.api_token.clone(),
            ..Options::new(
                Roles::ALL,
                self.topics.clone(),
                runtime_config(&self.state_dir),
            )
        };
        let system = system::assemble(backends, options)?;
        // Nothing else reads the log, so a record every group reading it is done with can go:
        // without this the log (and sled's memory for it) grows with every product ever posted.
        for (topic, group) in system.streams.consumers() {
            self.log.retain_until_committed_by(topic, group);
        }
        Ok(system)
    }
}

/// The engine's settings for the standalone topologies. The image pipeline's task stores live
/// under `state_dir`, local only: one process owns every partition for good and its disk is
/// durable, so a changelog would only be a second copy.
fn runtime_config(state_dir: &Path) -> RuntimeConfig {
    let mut config = RuntimeConfig::new("catalog-stream");
    config.max_in_flight_per_partition = MAX_IN_FLIGHT_PER_PARTITION;
    config.max_unacked_per_partition = MAX_UNACKED_PER_PARTITION;
    config.state_dir = Some(state_dir.to_path_buf());
    config.changelogs = false;
    // Shared by the tasks: one database per partition.
    config.store_page_cache_bytes = STATE_CACHE_BYTES / u64::from(PARTITIONS);
    config
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
    let System { router, streams } = Standalone::open(&data_dir, &format!("http://{address}"))?
        .with_fetch(fetch)
        .with_api_token(api_token)
        .assemble()?;
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
                let result = streams_runtime::streams_runtime()
                    .and_then(|runtime| runtime.block_on(streams.run(shutdown.clone())))
                    .map(|_| ());
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
