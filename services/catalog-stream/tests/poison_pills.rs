//! Poison pills in the CDC topic (SPEC §9): the real image-pipeline topology runs over the real
//! Kafka broker and Schema Registry, and over the embedded log with the in-process registry.
//! Records that cannot be decoded (wrong magic byte, too short, unknown schema id, truncated
//! Avro, JSON bytes) land in `{cdc}.dlq`, unchanged, with `dlq.*` headers naming where they came
//! from and why; envelopes that decode but are not a product change (an upsert without `after`,
//! a document key that is not a catalog identity) are refused by the image collector and land in
//! `{upserts}.dlq`. Every valid change is processed, the runtime keeps running and the consumer
//! lag of every source topic reaches 0.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog_stream::pipeline::{ImageEvent, ImageEventKind};
use catalog_stream::settings::Topics;
use catalog_stream::standalone::InProcessRegistry;
use catalog_stream::system::{self, Backends, Options, Roles};
use connectors::debezium::{ChangeEvent, Op, SourceInfo};
use connectors::mongo_source::ChangeEncoder;
use futures::StreamExt;
use images::ObjectStore;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{server_env, unique_name};
use tokio_util::sync::CancellationToken;
use topology::serdes::{AvroSerde, HttpSchemaRegistry, SchemaRegistry, Serde};
use topology::transport::{EmbeddedLog, EmbeddedTransport, KafkaTransport, Transport};
use topology::{Headers, RawRecord, RuntimeConfig};

const PNG: &[u8] = include_bytes!("../../images/tests/fixtures/pixel.png");
const DB: &str = "catalog";
const COLLECTION: &str = "products";
const VALID_PRODUCTS: usize = 6;
const DEADLINE: Duration = Duration::from_secs(90);

/// A record as read back from a topic.
#[derive(Debug, Clone)]
struct Read {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl Read {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Where the records travel: the real broker or the embedded log.
enum Bus {
    Kafka {
        bootstrap: String,
        producer: FutureProducer,
    },
    Embedded(Arc<EmbeddedLog>),
}

impl Bus {
    async fn produce(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> (i32, i64) {
        match self {
            Bus::Kafka { producer, .. } => {
                let mut record = FutureRecord::<[u8], [u8]>::to(topic);
                if let Some(key) = key {
                    record = record.key(key);
                }
                if let Some(value) = value {
                    record = record.payload(value);
                }
                let delivered = producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(error, _)| error)
                    .expect("delivered to the broker");
                (delivered.partition, delivered.offset)
            }
            Bus::Embedded(log) => log
                .append(&RawRecord {
                    topic: topic.into(),
                    partition: -1,
                    offset: -1,
                    key: key.map(|k| k.to_vec().into()),
                    value: value.map(|v| v.to_vec().into()),
                    headers: Headers::default(),
                    timestamp: Some(0),
                })
                .expect("appended to the embedded log"),
        }
    }

    /// Reads `topic` from the start until at least `expected` records arrived (or the deadline
    /// passed), then a little longer to catch any extra record.
    async fn read(&self, topic: &str, expected: usize) -> Vec<Read> {
        match self {
            Bus::Kafka { bootstrap, .. } => {
                let consumer: StreamConsumer = ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .set("group.id", unique_name("poison-reader"))
                    .set("enable.auto.commit", "false")
                    .set("auto.offset.reset", "earliest")
                    .create()
                    .expect("consumer");
                // Every partition from the beginning, no group rebalance in the way.
                let metadata = consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .expect("metadata");
                let mut assignment = rdkafka::TopicPartitionList::new();
                for partition in metadata
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                {
                    assignment
                        .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
                        .expect("partition");
                }
                consumer.assign(&assignment).expect("assign");
                let mut out = Vec::new();
                let mut stream = consumer.stream();
                let started = Instant::now();
                loop {
                    let wait = if out.len() >= expected {
                        Duration::from_secs(2)
                    } else {
                        DEADLINE.saturating_sub(started.elapsed())
                    };
                    match tokio::time::timeout(wait, stream.next()).await {
                        Ok(Some(message)) => {
                            let message = message.expect("kafka message");
                            let headers = message
                                .headers()
                                .map(|headers| {
                                    use rdkafka::message::Headers as _;
                                    headers
                                        .iter()
                                        .map(|h| {
                                            (
                                                h.key.to_owned(),
                                                String::from_utf8_lossy(
                                                    h.value.unwrap_or_default(),
                                                )
                                                .into_owned(),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            out.push(Read {
                                partition: message.partition(),
                                offset: message.offset(),
                                key: message.key().map(<[u8]>::to_vec),
                                value: message.payload().map(<[u8]>::to_vec),
                                headers,
                            });
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                out
            }
            Bus::Embedded(log) => {
                let started = Instant::now();
                loop {
                    let records = if log.partitions(topic).expect("log").is_some() {
                        log.read_all(topic).expect("read the embedded log")
                    } else {
                        Vec::new()
                    };
                    if records.len() >= expected || started.elapsed() > DEADLINE {
                        return records
                            .into_iter()
                            .map(|record| Read {
                                partition: record.partition,
                                offset: record.offset,
                                key: record.key.map(|k| k.to_vec()),
                                value: record.value.map(|v| v.to_vec()),
                                headers: record
                                    .headers
                                    .iter()
                                    .map(|h| {
                                        (
                                            h.key.clone(),
                                            String::from_utf8_lossy(
                                                h.value.as_deref().unwrap_or_default(),
                                            )
                                            .into_owned(),
                                        )
                                    })
                                    .collect(),
                            })
                            .collect();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A local image server: `/img/{anything}` answers the PNG fixture.
async fn image_server() -> String {
    let app = axum::Router::new().route(
        "/img/{name}",
        axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, "image/png")], PNG) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the image server");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

fn source(ts_ms: i64, ord: i32, prefix: &str) -> SourceInfo {
    SourceInfo {
        version: "2.7.0.Final".into(),
        connector: "mongodb".into(),
        name: prefix.into(),
        ts_ms,
        snapshot: Some("false".into()),
        db: DB.into(),
        rs: Some("rs0".into()),
        sequence: None,
        ts_us: None,
        ts_ns: None,
        collection: COLLECTION.into(),
        ord,
        lsid: None,
        txn_number: None,
        wall_time: None,
    }
}

fn event(
    op: Op,
    id: serde_json::Value,
    after: Option<serde_json::Value>,
    ord: i32,
    prefix: &str,
) -> ChangeEvent {
    let mut event = ChangeEvent::tombstone(id);
    event.op = op;
    event.db = Some(DB.into());
    event.collection = Some(COLLECTION.into());
    event.after = after;
    event.source = Some(source(1_700_000_000_000, ord, prefix));
    event.ts_ms = Some(1_700_000_000_000);
    event
}

fn product_document(mall: &str, product: &str, image_url: &str) -> serde_json::Value {
    serde_json::json!({
        "_id": {"mallId": mall, "productId": product},
        "mallId": mall,
        "productId": product,
        "title": format!("Product {product}"),
        "content": "A product with a perfectly fine image.",
        "price": "12.50",
        "imageUrl": image_url,
        "version": {"$numberLong": "1"},
    })
}

/// What one poison pill is and where it must land.
struct Pill {
    name: &'static str,
    /// `true`: dead-lettered by the CDC source (`{cdc}.dlq`); `false`: by the collector.
    at_source: bool,
    class: &'static str,
    /// A fragment `dlq.error.message` must contain.
    message: &'static str,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Where it was written (CDC topic).
    place: Option<(i32, i64)>,
}

#[allow(clippy::too_many_lines)]
async fn run_case(label: &str, bus: Bus, registry: Arc<dyn SchemaRegistry>, topics: Topics) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let prefix = topics.cdc.split('.').next().expect("prefix").to_owned();
    let mall = unique_name("mall");
    let images_url = image_server().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let objects = Arc::new(
        images::LocalDirObjectStore::new(dir.path().join("images"), "http://images.test")
            .expect("image dir"),
    );
    let metrics = prometheus::Registry::new();
    let transport: Arc<dyn Transport> = match &bus {
        Bus::Kafka { bootstrap, .. } => Arc::new(KafkaTransport::new(bootstrap)),
        Bus::Embedded(log) => Arc::new(EmbeddedTransport::new(log.clone())),
    };
    let mut runtime = RuntimeConfig::new("replaced by the group id");
    runtime.commit_interval = Duration::from_millis(300);
    runtime.state_dir = Some(dir.path().join("state"));
    let backends = Backends {
        products: None,
        view: None,
        objects: Some(objects.clone()),
        image_links: None,
        transport: Some(transport),
        schema_registry: Some(registry.clone()),
        cdc: None,
        routes: axum::Router::new(),
        readiness: Arc::new(|| Box::pin(async { Vec::new() })),
    };
    let options = Options {
        fetch: images::FetchConfig {
            allow_loopback: true,
            ..Default::default()
        },
        group_id: Some(unique_name("poison-pipeline")),
        metrics: metrics.clone(),
        ..Options::new(Roles::IMAGE_PIPELINE, topics.clone(), runtime)
    };
    let system = system::assemble(backends, options).expect("the built-in topology loads");
    let shutdown = CancellationToken::new();
    let runtime = tokio::spawn(system.streams.run(shutdown.clone()));

    let encoder = ChangeEncoder::avro(registry.clone(), &prefix, DB, COLLECTION).expect("encoder");
    let encode = |event: ChangeEvent| {
        let encoder = encoder.clone();
        let topic = topics.cdc.clone();
        async move { encoder.encode(&topic, &event).await.expect("encodes") }
    };

    // Valid changes: creates, a delete of a product never seen, and its tombstone.
    let mut valid = Vec::new();
    for i in 0..VALID_PRODUCTS {
        let product = format!("p{i}");
        let document = product_document(&mall, &product, &format!("{images_url}/img/{i}.png"));
        let id = serde_json::json!({"mallId": mall, "productId": product});
        let ord = i32::try_from(i).expect("small") + 1;
        valid.push(encode(event(Op::Create, id, Some(document), ord, &prefix)).await);
    }
    let gone = serde_json::json!({"mallId": mall, "productId": "gone"});
    valid.push(encode(event(Op::Delete, gone.clone(), None, 100, &prefix)).await);
    valid.push(encode(ChangeEvent::tombstone(gone)).await);

    // The poison pills.
    let (good_key, good_value) = {
        let (key, value) = &valid[0];
        (key.clone(), value.clone().expect("a create has a value"))
    };
    let mut wrong_magic = good_value.clone();
    wrong_magic[0] = 1;
    let mut unknown_id = vec![0, 0x7f, 0xff, 0xff, 0xf0];
    unknown_id.extend_from_slice(&good_value[5..]);
    let truncated = good_value[..good_value.len() / 2].to_vec();
    let json = br#"{"op": "c", "after": "{\"_id\": 1}", "source": {"ts_ms": 0"#.to_vec();
    let (no_after_key, no_after_value) = encode(event(
        Op::Create,
        serde_json::json!({"mallId": mall, "productId": "no-after"}),
        None,
        200,
        &prefix,
    ))
    .await;
    let oid = serde_json::json!({"$oid": "65f0c0ffee0000000000beef"});
    let mut foreign = product_document(&mall, "foreign", &format!("{images_url}/img/f.png"));
    foreign["_id"] = oid.clone();
    let (foreign_key, foreign_value) =
        encode(event(Op::Create, oid, Some(foreign), 201, &prefix)).await;
    let mut pills = vec![
        Pill {
            name: "wrong magic byte",
            at_source: true,
            class: "WrongMagicByte",
            message: "value of",
            key: good_key.clone(),
            value: wrong_magic,
            place: None,
        },
        Pill {
            name: "too short for the wire format",
            at_source: true,
            class: "TooShort",
            message: "value of",
            key: good_key.clone(),
            value: vec![0, 0, 1],
            place: None,
        },
        Pill {
            name: "unknown schema id",
            at_source: true,
            class: "UnknownSchemaId",
            message: "2147483632",
            key: good_key.clone(),
            value: unknown_id,
            place: None,
        },
        Pill {
            name: "truncated Avro",
            at_source: true,
            class: "AvroDecode",
            message: "value of",
            key: good_key.clone(),
            value: truncated,
            place: None,
        },
        Pill {
            name: "garbage JSON bytes",
            at_source: true,
            class: "WrongMagicByte",
            message: "value of",
            key: good_key.clone(),
            value: json,
            place: None,
        },
        Pill {
            name: "upsert without `after`",
            at_source: false,
            class: "Permanent",
            message: "after",
            key: no_after_key,
            value: no_after_value.expect("an envelope"),
            place: None,
        },
        Pill {
            name: "document key not a catalog identity",
            at_source: false,
            class: "Permanent",
            message: "not a catalog product identity",
            key: foreign_key,
            value: foreign_value.expect("an envelope"),
            place: None,
        },
    ];

    // Interleave: valid, pill, valid, pill, ...
    let mut valid_iter = valid.iter();
    for pill in &mut pills {
        if let Some((key, value)) = valid_iter.next() {
            bus.produce(&topics.cdc, Some(key), value.as_deref()).await;
        }
        pill.place = Some(
            bus.produce(&topics.cdc, Some(&pill.key), Some(&pill.value))
                .await,
        );
    }
    for (key, value) in valid_iter {
        bus.produce(&topics.cdc, Some(key), value.as_deref()).await;
    }

    // Every valid product is processed: 6 COLLECTED + 1 REMOVED image events.
    let expected_events = VALID_PRODUCTS + 1;
    let events = bus.read(&topics.image_events, expected_events).await;
    let avro = AvroSerde::new(registry.clone());
    let mut kinds: BTreeMap<String, ImageEventKind> = BTreeMap::new();
    for record in &events {
        let value = avro
            .deserialize(
                &topics.image_events,
                false,
                record.value.as_deref().expect("an image event value"),
            )
            .await
            .expect("image events decode");
        let event: ImageEvent = value.deserialize_into().expect("an image event");
        assert_eq!(event.mall_id, mall);
        kinds.insert(event.product_id.clone(), event.kind);
    }
    assert_eq!(
        events.len(),
        expected_events,
        "{label}: image events {kinds:?}; lag {:?}; upserts.dlq {:?}",
        lag_by_topic(&metrics),
        bus.read(&format!("{}.dlq", topics.upserts), 2)
            .await
            .iter()
            .map(|r| r.header("dlq.error.message").unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    );
    for i in 0..VALID_PRODUCTS {
        assert_eq!(
            kinds.get(&format!("p{i}")),
            Some(&ImageEventKind::Collected),
            "{label}: p{i} collected; all: {kinds:?}"
        );
    }
    assert_eq!(kinds.get("gone"), Some(&ImageEventKind::Removed));
    let stored = objects
        .list(&format!("products/{mall}/"))
        .await
        .expect("list stored images");
    assert_eq!(
        stored.len(),
        VALID_PRODUCTS,
        "{label}: one image per product: {stored:?}"
    );

    // Each pill is in its dead-letter topic, unchanged, with its reason.
    let source_pills = pills.iter().filter(|p| p.at_source).count();
    let cdc_dlq = bus.read(&format!("{}.dlq", topics.cdc), source_pills).await;
    let upserts_dlq = bus
        .read(
            &format!("{}.dlq", topics.upserts),
            pills.len() - source_pills,
        )
        .await;
    assert_eq!(cdc_dlq.len(), source_pills, "{label}: {cdc_dlq:#?}");
    assert_eq!(
        upserts_dlq.len(),
        pills.len() - source_pills,
        "{label}: {upserts_dlq:#?}"
    );
    for pill in &pills {
        let dead = if pill.at_source {
            &cdc_dlq
        } else {
            &upserts_dlq
        };
        let found = dead
            .iter()
            .find(|record| record.value.as_deref() == Some(pill.value.as_slice()))
            .unwrap_or_else(|| panic!("{label}: `{}` is not dead-lettered", pill.name));
        assert_eq!(found.key.as_deref(), Some(pill.key.as_slice()));
        let class = found.header("dlq.error.class");
        let message = found.header("dlq.error.message").unwrap_or_default();
        assert_eq!(class, Some(pill.class), "{label}: {}: {message}", pill.name);
        assert!(
            message.contains(pill.message),
            "{label}: {}: message `{message}` lacks `{}`",
            pill.name,
            pill.message
        );
        assert_eq!(found.header("dlq.attempts"), Some("1"), "{}", pill.name);
        let partition: i32 = found
            .header("dlq.source.partition")
            .and_then(|p| p.parse().ok())
            .expect("dlq.source.partition");
        let offset: i64 = found
            .header("dlq.source.offset")
            .and_then(|o| o.parse().ok())
            .expect("dlq.source.offset");
        if pill.at_source {
            assert_eq!(found.header("dlq.source.topic"), Some(topics.cdc.as_str()));
            assert_eq!(Some((partition, offset)), pill.place, "{}", pill.name);
        } else {
            assert_eq!(
                found.header("dlq.source.topic"),
                Some(topics.upserts.as_str())
            );
            assert!(partition >= 0 && offset >= 0);
        }
        println!(
            "{label}: {:<36} -> {}.dlq p{}@{} class={} message={message}",
            pill.name,
            found.header("dlq.source.topic").unwrap_or_default(),
            found.partition,
            found.offset,
            pill.class,
        );
    }

    // The runtime is still running and the lag of every source topic reaches 0.
    let started = Instant::now();
    let lag = loop {
        let lags = lag_by_topic(&metrics);
        let all_sources = [&topics.cdc, &topics.upserts, &topics.deletes]
            .iter()
            .all(|topic| lags.contains_key(topic.as_str()));
        if all_sources && lags.values().all(|lag| *lag == 0) {
            break lags;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{label}: lag never reached 0: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!runtime.is_finished(), "{label}: the runtime stopped");
    let dead_lettered: f64 = metrics
        .gather()
        .iter()
        .filter(|family| family.name() == "topology_dead_letter_total")
        .flat_map(|family| {
            family
                .get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
        })
        .sum();
    println!(
        "{label}: valid={} processed_events={} stored_images={} dead_lettered={dead_lettered} lag={lag:?}",
        valid.len(),
        events.len(),
        stored.len()
    );
    assert_eq!(dead_lettered as usize, pills.len());
    shutdown.cancel();
    let stopped = runtime
        .await
        .expect("runtime task")
        .expect("the runtime stops cleanly");
    assert_eq!(stopped.abandoned, 0);
}

fn lag_by_topic(registry: &prometheus::Registry) -> BTreeMap<String, i64> {
    let mut lags = BTreeMap::new();
    for family in registry.gather() {
        if family.name() != "topology_consumer_lag" {
            continue;
        }
        for metric in family.get_metric() {
            let topic = metric
                .get_label()
                .iter()
                .find(|label| label.name() == "topic")
                .map(|label| label.value().to_owned())
                .unwrap_or_default();
            *lags.entry(topic).or_insert(0) += metric.get_gauge().get_value() as i64;
        }
    }
    lags
}

fn topics(prefix: &str) -> Topics {
    Topics {
        cdc: format!("{prefix}.{DB}.{COLLECTION}"),
        upserts: format!("{prefix}.upserts"),
        deletes: format!("{prefix}.deletes"),
        image_events: format!("{prefix}.image-events"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pills_over_the_real_broker_and_registry() {
    let bootstrap = server_env("KAFKA_BOOTSTRAP");
    let registry_url = server_env("SCHEMA_REGISTRY_URL");
    let prefix = unique_name("poison").replace('-', "_");
    let topics = topics(&prefix);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let dlqs = [
        format!("{}.dlq", topics.cdc),
        format!("{}.dlq", topics.upserts),
        format!("{}.dlq", topics.deletes),
    ];
    let mut new_topics = vec![
        NewTopic::new(&topics.cdc, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.upserts, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.deletes, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.image_events, 3, TopicReplication::Fixed(1)),
    ];
    for dlq in &dlqs {
        new_topics.push(NewTopic::new(dlq, 1, TopicReplication::Fixed(1)));
    }
    for result in admin
        .create_topics(
            &new_topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topics")
    {
        result.expect("topic created");
    }
    // Let the new topics' metadata settle before anything subscribes to them.
    let started = Instant::now();
    for topic in new_topics.iter().map(|t| t.name) {
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("metadata");
            let ready = metadata.topics().iter().any(|t| {
                t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            });
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{topic} never ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let registry: Arc<dyn SchemaRegistry> = Arc::new(HttpSchemaRegistry::new(registry_url));
    run_case(
        "kafka",
        Bus::Kafka {
            bootstrap,
            producer,
        },
        registry,
        topics,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pills_over_the_embedded_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log")).expect("log"));
    let topics = topics("catalog");
    for topic in [
        &topics.cdc,
        &topics.upserts,
        &topics.deletes,
        &topics.image_events,
    ] {
        log.create_topic(topic, 4).expect("topic");
    }
    let registry = schema_registry::Registry::open(dir.path().join("registry")).expect("registry");
    let registry: Arc<dyn SchemaRegistry> = Arc::new(InProcessRegistry::new(Arc::new(registry)));
    run_case("embedded", Bus::Embedded(log), registry, topics).await;
}
