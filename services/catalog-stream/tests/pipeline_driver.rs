//! The pipeline's logic without a broker: the real `image-pipeline.yaml` and
//! `complete-products.yaml`, with their real processors, driven through the engine's
//! `TopologyTestDriver` over one embedded log, with a local object store, the sled view and an
//! image server on 127.0.0.1. CDC events are built the way every source builds them
//! (`connectors`' `DocumentChange`, encoded as Avro through a schema registry).
//!
//! Collect, update with a new image, replay, a stale change, delete: each checked where it
//! lands (the view's rows, the image files, the image server's requests).

mod support;

use std::sync::Arc;
use std::time::Duration;

use catalog_stream::pipeline::{self, ImageWork};
use catalog_stream::product::{Product, ProductKey, validate_product};
use catalog_stream::settings::Topics;
use catalog_stream::store::{
    SledViewStore, StoredProduct, ViewStore, identity, stored_product_document,
};
use connectors::debezium::Op;
use connectors::mongo_source::{ChangeEncoder, ChangeOrigin, DocumentChange};
use topology::serdes::{MemorySchemaRegistry, SchemaRegistry};
use topology::transport::EmbeddedLog;
use topology::{Headers, RuntimeConfig, TopologyTestDriver};

use support::{ImageServer, files_under, fixture, product};

const MALL: &str = "driver-mall";
const SECONDS: i64 = 1_765_000_000;

/// The two topologies over one log, and where their effects land.
struct Pipeline {
    images: TopologyTestDriver,
    sink: TopologyTestDriver,
    view: ViewStore,
    image_dir: tempfile::TempDir,
    encoder: ChangeEncoder,
    topics: Topics,
}

impl Pipeline {
    async fn start() -> Self {
        let topics = Topics::default();
        let log = Arc::new(EmbeddedLog::temporary().expect("log"));
        for topic in [
            &topics.cdc,
            &topics.upserts,
            &topics.deletes,
            &topics.image_events,
        ] {
            log.create_topic(topic, 4).expect("topic");
        }
        let registry: Arc<dyn SchemaRegistry> = Arc::new(MemorySchemaRegistry::default());
        let image_dir = tempfile::tempdir().expect("image dir");
        let objects = Arc::new(
            images::LocalDirObjectStore::new(image_dir.path(), "http://images.test")
                .expect("object store"),
        );
        let view_db = sled::Config::new().temporary(true).open().expect("sled");
        let view = ViewStore::Sled(SledViewStore::open(&view_db).expect("view"));
        let metrics = prometheus::Registry::new();
        let work = ImageWork::new(
            images::FetchConfig {
                allow_loopback: true,
                ..Default::default()
            },
            images::RetryPolicy::default(),
            objects,
            &metrics,
        )
        .expect("image work");
        let processors = pipeline::registry(Some(work), Some(view.clone()), registry.clone());
        let (image_pipeline, pipeline_id) = pipeline::load(
            pipeline::IMAGE_PIPELINE_TOPOLOGY,
            "image-pipeline.yaml",
            &topics,
            &processors,
        )
        .expect("the image pipeline loads");
        let (sink, sink_id) = pipeline::load(
            pipeline::COMPLETE_PRODUCTS_TOPOLOGY,
            "complete-products.yaml",
            &topics,
            &processors,
        )
        .expect("the complete-products topology loads");
        let images = TopologyTestDriver::with_log(
            image_pipeline,
            log.clone(),
            4,
            config(pipeline_id.as_deref().expect("the file names its group")),
        )
        .expect("image pipeline driver");
        let sink = TopologyTestDriver::with_log(
            sink,
            log,
            4,
            config(sink_id.as_deref().expect("the file names its group")),
        )
        .expect("sink driver");
        Pipeline {
            images,
            sink,
            view,
            image_dir,
            encoder: ChangeEncoder::avro(registry, "catalog", "catalog", "products")
                .expect("encoder"),
            topics,
        }
    }

    /// Pipes the records of one change (a delete is followed by its tombstone) into the CDC
    /// topic, as the source would.
    async fn change(&self, op: Op, product: &Product, version: i64, ord: i32) {
        let after = (op != Op::Delete).then(|| {
            stored_product_document(&StoredProduct {
                product: product.clone(),
                version,
                updated_at_ms: SECONDS * 1000,
            })
            .expect("document")
        });
        let change = DocumentChange {
            op,
            id: identity(&product.key()).into(),
            after,
            before: None,
            ts_ms: SECONDS * 1000,
            wall_time_ms: Some(SECONDS * 1000),
            ord,
            update_description: None,
            lsid: None,
            txn_number: None,
        };
        let origin = ChangeOrigin {
            server_name: "catalog".into(),
            db: "catalog".into(),
            collection: "products".into(),
        };
        for event in change.into_events(&origin, true, SECONDS * 1000) {
            let (key, value) = self
                .encoder
                .encode(&self.topics.cdc, &event)
                .await
                .expect("encodes");
            self.images
                .pipe_raw(&self.topics.cdc, Some(key), value, Headers::default())
                .expect("piped");
        }
    }

    /// Waits until both topologies processed everything piped so far.
    async fn settle(&self) {
        let wait = Duration::from_secs(30);
        self.images
            .settle_within(wait)
            .await
            .expect("image pipeline settles");
        self.sink.settle_within(wait).await.expect("sink settles");
        // The sink's input is the pipeline's output: settle once more for records the
        // pipeline wrote while the sink was being checked.
        self.images
            .settle_within(wait)
            .await
            .expect("image pipeline settles");
        self.sink.settle_within(wait).await.expect("sink settles");
    }

    fn stored_images(&self) -> Vec<String> {
        files_under(self.image_dir.path())
    }
}

fn config(application_id: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(application_id);
    config.commit_interval = Duration::from_millis(5);
    config.drain_timeout = Duration::from_secs(5);
    config
}

fn mug(images: &ImageServer, path: &str) -> Product {
    validate_product(&product(MALL, "mug-1", "Mug", &images.url(path))).expect("valid product")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_update_replay_stale_and_delete() {
    let images = ImageServer::start(
        vec![
            ("/mug.png".into(), fixture("pixel.png"), "image/png"),
            ("/mug-v2.jpg".into(), fixture("pixel.jpg"), "image/jpeg"),
        ],
        (Vec::new(), "text/plain"),
        Duration::ZERO,
    )
    .await;
    let pipeline = Pipeline::start().await;
    let key = ProductKey::new(MALL, "mug-1");

    // Collect: the image is fetched once, stored, and the product is complete.
    let first = mug(&images, "/mug.png");
    pipeline.change(Op::Create, &first, 1, 1).await;
    pipeline.settle().await;
    let complete = pipeline
        .view
        .get(&key)
        .await
        .expect("view")
        .expect("complete");
    assert_eq!(complete.version, 1);
    assert_eq!(complete.product.image_url, images.url("/mug.png"));
    assert_eq!(complete.image.content_type, "image/png");
    assert_eq!(pipeline.stored_images().len(), 1, "one stored image");
    assert_eq!(images.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let first_key = complete.image.key.clone();

    // Update with a new image: the new one replaces the old, which is deleted.
    let second = mug(&images, "/mug-v2.jpg");
    pipeline.change(Op::Update, &second, 2, 2).await;
    pipeline.settle().await;
    let complete = pipeline
        .view
        .get(&key)
        .await
        .expect("view")
        .expect("complete");
    assert_eq!(complete.version, 2);
    assert_eq!(complete.image.content_type, "image/jpeg");
    assert_ne!(complete.image.key, first_key);
    let stored = pipeline.stored_images();
    assert_eq!(stored.len(), 1, "the replaced image is deleted: {stored:?}");
    assert!(stored[0].ends_with(complete.image.key.rsplit('/').next().expect("file")));
    assert_eq!(images.requests.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Replay (the same change delivered again): no second fetch, nothing changes.
    pipeline.change(Op::Update, &second, 2, 2).await;
    pipeline.settle().await;
    assert_eq!(images.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(pipeline.stored_images().len(), 1);
    assert_eq!(
        pipeline
            .view
            .get(&key)
            .await
            .expect("view")
            .expect("complete")
            .version,
        2
    );

    // A stale change (an older position than the one applied) is ignored.
    pipeline.change(Op::Update, &first, 1, 1).await;
    pipeline.settle().await;
    assert_eq!(images.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    let complete = pipeline
        .view
        .get(&key)
        .await
        .expect("view")
        .expect("complete");
    assert_eq!(
        (complete.version, complete.image.content_type.as_str()),
        (2, "image/jpeg")
    );

    // Delete: the product leaves the view and its image the object store.
    pipeline.change(Op::Delete, &second, 3, 3).await;
    pipeline.settle().await;
    assert!(pipeline.view.get(&key).await.expect("view").is_none());
    assert!(
        pipeline.stored_images().is_empty(),
        "{:?}",
        pipeline.stored_images()
    );

    // Every product change reached the pipeline's state: the delete is recorded.
    let recorded = pipeline
        .images
        .store_get::<String, pipeline::ProductImageState, String>(
            pipeline::PRODUCT_IMAGES_STORE,
            &catalog_stream::pipeline::event_key(&key),
        )
        .expect("store read");
    let recorded = recorded.expect("the product's state");
    assert!(recorded.deleted);
    assert_eq!(recorded.position, state::SourcePosition::new(SECONDS, 3));
}
