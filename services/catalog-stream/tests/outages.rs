//! Outages (SPEC §9, issue 8): the S3 server goes away for ~10 s mid-stream and comes back on the
//! same address. Work pauses (records retry as transient), `/readyz` of the image pipeline goes
//! 503 and back to 200, work resumes, nothing is lost and every product is collected exactly
//! once, with exactly one stored object per product.
//!
//! Built from the services' blocks, in process: the sled product store with its outbox relay,
//! the image-pipeline and complete-products topologies on the embedded log through the
//! in-process Schema Registry, and an [`images::S3ObjectStore`] on this test's OWN moto server
//! (never the shared one). The outage is the real thing: the moto process is killed (SIGKILL)
//! and started again on the same port. moto keeps its objects in memory, and a real S3 does not
//! lose stored objects when it is unreachable, so this moto persists: every request is recorded
//! to disk and replayed into the new process before it listens (`support/moto_persistent.py`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog_stream::app;
use catalog_stream::product::{ProductKey, validate_product};
use catalog_stream::settings::Topics;
use catalog_stream::standalone::{InProcessRegistry, fetch_config};
use catalog_stream::store::{ProductStore, SledProductStore, SledViewStore, ViewStore};
use catalog_stream::system::{self, Backends, CdcSource, Options, OutboxRelay, Roles};
use connectors::mongo_source::{ChangeEncoder, ChangeOrigin};
use images::ObjectStore;
use tokio_util::sync::CancellationToken;
use topology::serdes::SchemaRegistry;
use topology::transport::{EmbeddedLog, EmbeddedTransport};

use support::own_servers::{Kind, OwnServer};
use support::{ImageServer, collected, metric_sum, product, router_get};

const MALL: &str = "outage-mall";
const BEFORE: usize = 100;
const DURING: usize = 150;
const OUTAGE: Duration = Duration::from_secs(10);

fn s3_config(endpoint: String, bucket: &str) -> images::S3Config {
    images::S3Config {
        bucket: bucket.to_owned(),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        create_bucket: true,
        ..Default::default()
    }
}

async fn wait_collected(view: &ViewStore, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let done = collected(view, MALL, count).await;
        if done == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {count} collected after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_status(router: &axum::Router, status: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (answer, body) = router_get(router, "/readyz").await;
        if answer == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/readyz answered {answer} ({body}), not {status}, for {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_outage_pauses_and_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut moto = OwnServer::start(Kind::Moto, dir.path());
    let images = ImageServer::pixel_png().await;
    let images_base = images.base.clone();
    let bucket = format!("outage-{}", uuid::Uuid::new_v4().simple());

    // The blocks of the image pipeline.
    let db = sled::open(dir.path().join("store")).expect("sled");
    let products = SledProductStore::open(&db).expect("products");
    let view = ViewStore::Sled(SledViewStore::open(&db).expect("view"));
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("log"));
    let topics = Topics::default();
    for topic in [
        &topics.cdc,
        &topics.upserts,
        &topics.deletes,
        &topics.image_events,
    ] {
        log.create_topic(topic, 4).expect("topic");
    }
    let schemas: Arc<dyn SchemaRegistry> = Arc::new(InProcessRegistry::new(Arc::new(
        schema_registry::Registry::in_memory(),
    )));
    let objects: Arc<dyn ObjectStore> = Arc::new(
        images::S3ObjectStore::new(s3_config(moto.url(), &bucket))
            .await
            .expect("S3 store"),
    );
    let metrics = prometheus::Registry::new();
    let relay = OutboxRelay::new(
        products.outbox().clone(),
        log.clone(),
        ChangeEncoder::avro(schemas.clone(), "catalog", "catalog", "products").expect("encoder"),
        ChangeOrigin {
            server_name: "catalog".into(),
            db: "catalog".into(),
            collection: "products".into(),
        },
        topics.cdc.clone(),
    )
    .expect("relay");
    // The image pipeline service's real S3 readiness check (the log is embedded here: no
    // Kafka check).
    let backends = Backends {
        products: Some(ProductStore::Sled(products.clone())),
        view: Some(view.clone()),
        objects: Some(objects.clone()),
        image_links: None,
        transport: Some(Arc::new(EmbeddedTransport::new(log.clone()))),
        schema_registry: Some(schemas.clone()),
        cdc: Some(CdcSource::Outbox(relay)),
        routes: axum::Router::new(),
        readiness: app::object_store_readiness(objects.clone(), None),
    };
    let mut runtime = topology::RuntimeConfig::new("named by each topology file");
    runtime.state_dir = Some(dir.path().join("state"));
    runtime.changelogs = false;
    let options = Options {
        fetch: fetch_config(None),
        metrics: metrics.clone(),
        ..Options::new(Roles::ALL, topics.clone(), runtime)
    };
    let system = system::assemble(backends, options).expect("the system assembles");
    let ops = system.router;
    let shutdown = CancellationToken::new();
    let streams = tokio::spawn(system.streams.run(shutdown.clone()));

    let store = ProductStore::Sled(products.clone());
    let upsert = |index: usize| {
        let store = store.clone();
        let url = format!("{images_base}/images/p{index:04}.png");
        async move {
            let body = product(MALL, &format!("p{index:04}"), "t", &url);
            let product = validate_product(&body).expect("valid product");
            store.upsert(&product).await.expect("upsert");
        }
    };

    // Before: everything flows.
    assert_eq!(router_get(&ops, "/readyz").await.0, 200);
    for index in 0..BEFORE {
        upsert(index).await;
    }
    wait_collected(&view, BEFORE, Duration::from_secs(60)).await;

    // The outage: new products keep coming while S3 is gone.
    let outage_started = Instant::now();
    tokio::task::block_in_place(|| moto.stop());
    let not_ready_after = wait_status(&ops, 503, Duration::from_secs(5)).await;
    for index in BEFORE..BEFORE + DURING {
        upsert(index).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_early = collected(&view, MALL, BEFORE + DURING).await;
    let remaining = OUTAGE.saturating_sub(outage_started.elapsed());
    tokio::time::sleep(remaining).await;
    let during_late = collected(&view, MALL, BEFORE + DURING).await;
    let (_, text) = router_get(&ops, "/metrics").await;
    let retries_during = metric_sum(&text, "topology_retries_total", &["image-collector"]);
    assert_eq!(
        during_early, during_late,
        "work went on while S3 was down ({during_early} → {during_late})"
    );
    assert!(
        during_late < BEFORE + DURING,
        "every product was collected during the outage"
    );
    assert!(
        retries_during > 0.0,
        "no retries while S3 was down:\n{text}"
    );
    assert_eq!(router_get(&ops, "/readyz").await.0, 503);

    // Back: ready again, work resumes, everything ends collected.
    tokio::task::block_in_place(|| moto.restart());
    let outage = outage_started.elapsed();
    let moto_restart = moto.last_start;
    let ready_after = wait_status(&ops, 200, Duration::from_secs(10)).await;
    let resumed = Instant::now();
    wait_collected(&view, BEFORE + DURING, Duration::from_secs(90)).await;
    let caught_up = resumed.elapsed();

    // Settle, then count.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (_, text) = router_get(&ops, "/metrics").await;
        let in_flight = metric_sum(&text, "topology_in_flight", &[]);
        let lag = metric_sum(&text, "topology_consumer_lag", &[]);
        // Absent gauges would sum to 0 too: lag must have been measured.
        let measured = text.contains("topology_consumer_lag{");
        if measured && in_flight == 0.0 && lag == 0.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "lag {lag}, in flight {in_flight}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = BEFORE + DURING;
    let uploads = metric_sum(&text, "catalog_image_uploads_total", &[]);
    let collected_events = metric_sum(&text, "catalog_images_collected_total", &[]);
    let failed = metric_sum(&text, "catalog_images_failed_total", &[]);
    let dead = metric_sum(&text, "topology_dead_letter_total", &[]);
    let retries = metric_sum(&text, "topology_retries_total", &["image-collector"]);
    assert_eq!(failed, 0.0, "failed images:\n{text}");
    assert_eq!(dead, 0.0, "dead-lettered records:\n{text}");
    assert_eq!(uploads as usize, total, "uploads");
    assert_eq!(collected_events as usize, total, "collected events");

    // Exactly one object per product, listed at the (restarted) server.
    let stored = objects.list("products/").await.expect("list");
    assert_eq!(stored.len(), total, "objects in the bucket: {stored:?}");
    for index in 0..total {
        let prefix = format!("products/{MALL}/p{index:04}/");
        let count = stored.iter().filter(|key| key.starts_with(&prefix)).count();
        assert_eq!(count, 1, "objects of p{index:04}");
        let complete = view
            .get(&ProductKey::new(MALL, format!("p{index:04}")))
            .await
            .expect("view")
            .expect("collected");
        assert!(
            stored.contains(&complete.image.key),
            "p{index:04} points at {}",
            complete.image.key
        );
    }

    shutdown.cancel();
    streams.await.expect("stream task").expect("streams");
    println!(
        "s3 outage: products={total} (during outage {DURING}) outage={outage:?} \
         moto_restart={moto_restart:?} readyz_503_after={not_ready_after:?} readyz_200_after={ready_after:?} \
         collected_during_outage={} retries={retries} caught_up_in={caught_up:?} \
         collected={collected_events} uploads={uploads} objects={} lost=0 duplicate_uploads=0",
        during_late - BEFORE,
        stored.len()
    );
}
