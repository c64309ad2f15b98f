//! The system, assembled once from its backends.
//!
//! Both ways of running catalog-stream build the same thing: [`Backends`] names the product
//! store, the view store, the object store, the transport, the schema registry and the CDC
//! source, made either from [`Settings`](crate::settings::Settings) (each distributed service
//! opens the backends its [`Roles`] need, see [`crate::app`]) or from a data directory (the
//! standalone mode, see [`crate::standalone`]). [`assemble`] turns them into a [`System`]: the
//! HTTP router and the stream tasks (the CDC source and the topologies). The image work, the
//! topologies and their runtime settings are built here and nowhere else.
//!
//! Depends on the pipeline, the stores, the HTTP services and `connectors`; the entry points
//! (`app`, `standalone`) depend on it, never the other way round.

mod cdc;
mod outbox_relay;
mod router;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use topology::serdes::SchemaRegistry;
use topology::transport::Transport;
use topology::{Metrics, Runtime, RuntimeConfig, Topology};

pub use cdc::CdcSource;
pub use outbox_relay::OutboxRelay;
pub use router::service_router;

use crate::complete_products::{self, CompleteProducts};
use crate::http::{ApiToken, ReadinessCheck};
use crate::openapi::Api;
use crate::pipeline::{self, ImageWork};
use crate::pipeline_state::{self, PipelineState};
use crate::product_collector::{self, ProductCollector};
use crate::settings::Topics;
use crate::store::{ProductStore, ViewStore};

/// The parts of the system one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    /// `POST /api/v1/products` (product-collector).
    pub product_api: bool,
    /// The complete-products API and the image-events sink topology (complete-products).
    pub complete_products: bool,
    /// The image pipeline topology: diff-checker, collector, remover (image-pipeline).
    pub image_pipeline: bool,
    /// The change-data-capture source of the product store (cdc-source).
    pub cdc: bool,
}

impl Roles {
    /// Everything: the standalone process.
    pub const ALL: Roles = Roles {
        product_api: true,
        complete_products: true,
        image_pipeline: true,
        cdc: true,
    };
    /// The `product-collector` service.
    pub const PRODUCT_COLLECTOR: Roles = Roles {
        product_api: true,
        ..Roles::NONE
    };
    /// The `complete-products` service.
    pub const COMPLETE_PRODUCTS: Roles = Roles {
        complete_products: true,
        ..Roles::NONE
    };
    /// The `image-pipeline` service.
    pub const IMAGE_PIPELINE: Roles = Roles {
        image_pipeline: true,
        ..Roles::NONE
    };
    /// The `cdc-source` service.
    pub const CDC_SOURCE: Roles = Roles {
        cdc: true,
        ..Roles::NONE
    };
    const NONE: Roles = Roles {
        product_api: false,
        complete_products: false,
        image_pipeline: false,
        cdc: false,
    };

    /// The part of the API these roles serve (what `/openapi.json` documents).
    fn api(self) -> Api {
        match (
            self.product_api,
            self.complete_products,
            self.image_pipeline,
        ) {
            (true, true, _) => Api::All,
            (true, false, _) => Api::ProductCollector,
            (false, true, _) => Api::CompleteProducts,
            (false, false, true) => Api::ImagePipeline,
            (false, false, false) => Api::OpsOnly,
        }
    }
}

/// What the system runs on. A field a process's [`Roles`] do not use may be `None`.
pub struct Backends {
    /// Products as the shops pushed them (MongoDB, or sled with its outbox).
    pub products: Option<ProductStore>,
    /// The complete-products view and each product's status.
    pub view: Option<ViewStore>,
    /// Where the image pipeline stores images (S3, or a local directory).
    pub objects: Option<Arc<dyn images::ObjectStore>>,
    /// Renders image URLs when complete products are read (fresh presigned URLs); `None` serves
    /// the URL recorded at collection.
    pub image_links: Option<Arc<dyn images::ObjectStore>>,
    /// The event transport (Kafka, or the embedded log).
    pub transport: Option<Arc<dyn Transport>>,
    /// The schema registry the Avro serdes use.
    pub schema_registry: Option<Arc<dyn SchemaRegistry>>,
    /// The change-data-capture source feeding the CDC topic.
    pub cdc: Option<CdcSource>,
    /// Routes the backends serve themselves (the standalone mode's `/images/…`).
    pub routes: Router,
    /// What `/readyz` asks of the backends.
    pub readiness: ReadinessCheck,
}

/// A topology file: its text and where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct TopologyFile {
    /// The file's text.
    pub text: String,
    /// The file's path, or which built-in file it is.
    pub origin: String,
}

impl TopologyFile {
    /// The built-in image pipeline.
    pub fn image_pipeline() -> Self {
        TopologyFile {
            text: pipeline::IMAGE_PIPELINE_TOPOLOGY.to_owned(),
            origin: "built-in image-pipeline topology".to_owned(),
        }
    }

    /// The built-in complete-products topology.
    pub fn complete_products() -> Self {
        TopologyFile {
            text: pipeline::COMPLETE_PRODUCTS_TOPOLOGY.to_owned(),
            origin: "built-in complete-products topology".to_owned(),
        }
    }
}

/// How the system runs on its backends: everything that is not a backend.
pub struct Options {
    /// The parts this process runs.
    pub roles: Roles,
    /// Topic names.
    pub topics: Topics,
    /// The image pipeline's topology file.
    pub image_pipeline: TopologyFile,
    /// Image fetch limits and the SSRF guard.
    pub fetch: images::FetchConfig,
    /// How transient fetch failures are retried.
    pub fetch_retry: images::RetryPolicy,
    /// Guards the write endpoints when given.
    pub api_token: Option<ApiToken>,
    /// Replaces the topology file's application id (the consumer group); only for a process
    /// that runs one topology.
    pub group_id: Option<String>,
    /// The engine settings every topology starts from (its application id is set per
    /// topology; the stores' settings matter only to the stateful image pipeline).
    pub runtime: RuntimeConfig,
    /// The services' metrics and the image pipeline's engine metrics.
    pub metrics: prometheus::Registry,
}

impl Options {
    /// `roles` over `topics` with `runtime`: the built-in image pipeline, the default fetch
    /// limits and retries, no token, each topology's own group, a new metrics registry.
    pub fn new(roles: Roles, topics: Topics, runtime: RuntimeConfig) -> Self {
        Options {
            roles,
            topics,
            image_pipeline: TopologyFile::image_pipeline(),
            fetch: images::FetchConfig::default(),
            fetch_retry: images::RetryPolicy::default(),
            api_token: None,
            group_id: None,
            runtime,
            metrics: prometheus::Registry::new(),
        }
    }
}

/// The assembled system.
pub struct System {
    /// Every HTTP route of the process: the roles' API, the backends' routes, the ops routes.
    pub router: Router,
    /// The CDC source and the topologies, not started yet.
    pub streams: Streams,
}

/// A stream task: runs until the token is cancelled, then says how many records it abandoned.
type StreamTask =
    Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<usize>> + Send>;

/// How the stream tasks stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stopped {
    /// Records whose processing was given up at shutdown because the drain timed out (they
    /// are processed again by whoever consumes their partition next).
    pub abandoned: usize,
}

/// The stream tasks of a system: run together, and the first to fail stops the others.
pub struct Streams {
    tasks: Vec<(&'static str, StreamTask)>,
    consumers: Vec<(String, String)>,
}

impl Streams {
    /// Runs every task until `shutdown` (or until one fails, which cancels `shutdown`). With
    /// no task (a process that only serves HTTP), waits for `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<Stopped> {
        if self.tasks.is_empty() {
            shutdown.cancelled().await;
            return Ok(Stopped::default());
        }
        let running = self.tasks.into_iter().map(|(name, task)| {
            let shutdown = shutdown.clone();
            async move {
                let result = task(shutdown.clone())
                    .await
                    .with_context(|| format!("{name} stopped"));
                if result.is_err() {
                    shutdown.cancel();
                }
                result
            }
        });
        let abandoned = futures::future::join_all(running)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<usize>>>()?;
        Ok(Stopped {
            abandoned: abandoned.into_iter().sum(),
        })
    }

    /// Each topic a topology reads, with the consumer group that reads it.
    pub fn consumers(&self) -> &[(String, String)] {
        &self.consumers
    }

    fn add(
        &mut self,
        name: &'static str,
        task: impl FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<usize>>
        + Send
        + 'static,
    ) {
        self.tasks.push((name, Box::new(task)));
    }

    fn add_topology(
        &mut self,
        name: &'static str,
        topology: Topology,
        config: RuntimeConfig,
        transport: Arc<dyn Transport>,
        metrics: prometheus::Registry,
    ) {
        let group = config.application_id.clone();
        self.add_runtime(
            name,
            Runtime::new(topology, transport, config),
            &group,
            metrics,
        );
    }

    /// Adds a runtime made already (to take its [`StoreReader`](topology::StoreReader) first).
    fn add_runtime(
        &mut self,
        name: &'static str,
        runtime: Runtime,
        group: &str,
        metrics: prometheus::Registry,
    ) {
        for topic in runtime.topology().source_topics() {
            self.consumers.push((topic, group.to_owned()));
        }
        self.add(name, move |shutdown| {
            Box::pin(async move { run_runtime(runtime, &metrics, shutdown).await })
        });
    }
}

/// Runs a topology until `shutdown`, with its engine metrics in `registry`; returns the records
/// abandoned at shutdown.
pub async fn run_topology(
    topology: Topology,
    config: RuntimeConfig,
    transport: Arc<dyn Transport>,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<usize> {
    run_runtime(
        Runtime::new(topology, transport, config),
        registry,
        shutdown,
    )
    .await
}

/// Runs `runtime` until `shutdown`, with its engine metrics in `registry`; returns the records
/// abandoned at shutdown.
pub async fn run_runtime(
    runtime: Runtime,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<usize> {
    let metrics = Metrics::new(registry).context("cannot register the engine metrics")?;
    let summary = runtime
        .with_metrics(metrics)
        .run(shutdown)
        .await
        .context("the topology stopped")?;
    tracing::info!(
        consumed = summary.consumed,
        abandoned = summary.abandoned,
        "topology stopped"
    );
    Ok(summary.abandoned)
}

fn needs<T>(backend: Option<T>, what: &str, role: &str) -> anyhow::Result<T> {
    backend.with_context(|| format!("{role} needs {what}, and none was configured"))
}

/// Builds the system's router and stream tasks from `backends`, for `options.roles`.
pub fn assemble(backends: Backends, options: Options) -> anyhow::Result<System> {
    let Options {
        roles,
        topics,
        image_pipeline,
        fetch,
        fetch_retry,
        api_token,
        group_id,
        runtime,
        metrics,
    } = options;
    if group_id.is_some() && roles.image_pipeline && roles.complete_products {
        anyhow::bail!("a group id override names one topology's group, and this process runs two");
    }
    let Backends {
        products,
        view,
        objects,
        image_links,
        transport,
        schema_registry,
        cdc,
        routes,
        readiness,
    } = backends;

    let mut api = routes;
    if roles.product_api {
        let products = needs(products.clone(), "a product store", "product-collector")?;
        let collector =
            ProductCollector::new(products, &metrics)?.with_api_token(api_token.clone());
        api = api.merge(product_collector::routes(collector));
    }
    if roles.complete_products {
        let products = needs(products.clone(), "a product store", "complete-products")?;
        let view = needs(view.clone(), "a view store", "complete-products")?;
        let mut service = CompleteProducts::new(products, view).with_api_token(api_token.clone());
        if let Some(links) = image_links {
            service = service.with_image_links(links);
        }
        api = api.merge(complete_products::routes(service));
    }

    let mut registries = vec![metrics.clone()];
    let mut streams = Streams {
        tasks: Vec::new(),
        consumers: Vec::new(),
    };
    if roles.cdc {
        let cdc = needs(cdc, "a CDC source", "cdc-source")?;
        streams.add("the change-data-capture source", move |shutdown| {
            Box::pin(async move { cdc.run(shutdown).await.map(|()| 0) })
        });
    }
    if roles.image_pipeline || roles.complete_products {
        let transport = needs(transport, "a transport", "a topology")?;
        let schema_registry = needs(schema_registry, "a schema registry", "a topology")?;
        if roles.image_pipeline {
            let objects = needs(objects, "an object store", "image-pipeline")?;
            let work = ImageWork::new(fetch, fetch_retry, objects, &metrics)?;
            let processors = pipeline::registry(Some(work), None, schema_registry.clone());
            let (topology, application_id) = pipeline::load(
                &image_pipeline.text,
                &image_pipeline.origin,
                &topics,
                &processors,
            )?;
            let config = RuntimeConfig {
                application_id: group_id
                    .clone()
                    .or(application_id)
                    .unwrap_or_else(|| "catalog-stream-image-pipeline".to_owned()),
                ..runtime.clone()
            };
            let advertised = config.application_server.clone();
            let runtime = Runtime::new(topology, transport.clone(), config.clone());
            // Interactive queries of the pipeline's per-product state, from its running tasks.
            api = api.merge(pipeline_state::routes(PipelineState::new(
                runtime.stores(),
                advertised,
            )));
            streams.add_runtime(
                "the image pipeline",
                runtime,
                &config.application_id,
                metrics.clone(),
            );
        }
        if roles.complete_products {
            let view = needs(view, "a view store", "complete-products")?;
            let processors = pipeline::registry(None, Some(view), schema_registry);
            let file = TopologyFile::complete_products();
            let (topology, application_id) =
                pipeline::load(&file.text, &file.origin, &topics, &processors)?;
            // Two topologies in one process register engine metrics of the same names: the
            // sink's carry a label of their own.
            let sink_metrics = if roles.image_pipeline {
                let labelled = prometheus::Registry::new_custom(
                    None,
                    Some([("topology".to_owned(), "complete-products".to_owned())].into()),
                )?;
                registries.push(labelled.clone());
                labelled
            } else {
                metrics.clone()
            };
            let config = RuntimeConfig {
                application_id: group_id
                    .or(application_id)
                    .unwrap_or_else(|| "catalog-stream-complete-products".to_owned()),
                ..runtime
            };
            streams.add_topology(
                "the complete-products sink",
                topology,
                config,
                transport,
                sink_metrics,
            );
        }
    }
    let router = service_router(api, roles.api(), registries, readiness);
    Ok(System { router, streams })
}

/// Runs `work`, then cancels `shutdown`, so a stream that stops also stops the HTTP side.
pub async fn then_cancel(
    work: impl Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let result = work.await;
    shutdown.cancel();
    result
}
