//! Smoke tests of every real server the project runs against (SPEC §7), each through the
//! production client crate. They prove the servers started by `infrastructure/up.sh` behave as
//! production would: Kafka transactions commit and abort, MongoDB enforces unique indexes and
//! streams changes, S3 stores objects path-style, the registry serves schemas by id, Prometheus
//! answers.

mod support;

use std::time::Duration;

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use support::{server_env, unique_name};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn kafka_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", server_env("KAFKA_BOOTSTRAP"));
    config
}

async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
        )
        .await
        .expect("create_topics request");
    for result in results {
        result.expect("topic created");
    }
}

fn consumer(group: &str, isolation: &str) -> StreamConsumer {
    kafka_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Reads messages until `expected` arrived or nothing more comes within a few seconds.
async fn read_values(consumer: &StreamConsumer, expected: usize) -> Vec<String> {
    let mut values = Vec::new();
    let mut stream = consumer.stream();
    while values.len() < expected {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(message)) => {
                let message = message.expect("kafka message");
                let value = message
                    .payload()
                    .map(|bytes| String::from_utf8_lossy(bytes));
                values.push(value.unwrap_or_default().into_owned());
            }
            Ok(None) | Err(_) => break,
        }
    }
    values
}

#[tokio::test]
async fn kafka_produce_consume_commit_and_watermarks() {
    let topic = unique_name("smoke");
    let group = unique_name("smoke-group");
    create_topic(&topic, 1).await;

    let producer: FutureProducer = kafka_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for i in 0..3 {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&format!("v{i}")),
                KAFKA_TIMEOUT,
            )
            .await
            .expect("delivered");
    }

    let consumer = consumer(&group, "read_committed");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let values = read_values(&consumer, 3).await;
    assert_eq!(values, ["v0", "v1", "v2"]);
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");

    let mut partition = TopicPartitionList::new();
    partition.add_partition(&topic, 0);
    let committed = consumer
        .committed_offsets(partition, KAFKA_TIMEOUT)
        .expect("committed offsets");
    let offset = committed
        .find_partition(&topic, 0)
        .expect("partition 0")
        .offset();
    assert_eq!(offset, Offset::Offset(3));

    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, KAFKA_TIMEOUT)
        .expect("watermarks");
    assert_eq!((low, high), (0, 3));
}

#[tokio::test]
async fn kafka_transactions_commit_one_batch_and_abort_another() {
    let topic = unique_name("smoke-txn");
    create_topic(&topic, 1).await;

    let producer: FutureProducer = kafka_config()
        .set("transactional.id", unique_name("smoke-txn-id"))
        .create()
        .expect("transactional producer");
    producer.init_transactions(KAFKA_TIMEOUT).expect("init");

    producer.begin_transaction().expect("begin");
    for value in ["committed-1", "committed-2"] {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(value),
                KAFKA_TIMEOUT,
            )
            .await
            .expect("delivered");
    }
    producer.commit_transaction(KAFKA_TIMEOUT).expect("commit");

    producer.begin_transaction().expect("begin");
    for value in ["aborted-1", "aborted-2"] {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(value),
                KAFKA_TIMEOUT,
            )
            .await
            .expect("delivered");
    }
    producer.abort_transaction(KAFKA_TIMEOUT).expect("abort");

    // A read_uncommitted consumer sees every record the broker stored, so the aborted batch
    // really reached the log; read_committed must hide it.
    let uncommitted = consumer(&unique_name("smoke-ru"), "read_uncommitted");
    uncommitted.subscribe(&[&topic]).expect("subscribe");
    let all = read_values(&uncommitted, 4).await;
    assert_eq!(
        all,
        ["committed-1", "committed-2", "aborted-1", "aborted-2"]
    );

    let committed = consumer(&unique_name("smoke-rc"), "read_committed");
    committed.subscribe(&[&topic]).expect("subscribe");
    let visible = read_values(&committed, 3).await;
    assert_eq!(visible, ["committed-1", "committed-2"]);
}

#[tokio::test]
async fn mongodb_unique_compound_index_and_change_stream() {
    use mongodb::bson::{Document, doc};
    use mongodb::options::IndexOptions;
    use mongodb::{Client, IndexModel};

    let client = Client::with_uri_str(server_env("MONGODB_URI"))
        .await
        .expect("mongodb client");
    let collection = client
        .database("smoke")
        .collection::<Document>(&unique_name("products"));
    collection
        .create_index(
            IndexModel::builder()
                .keys(doc! {"mallId": 1, "productId": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("unique index");

    let mut changes = collection.watch().await.expect("change stream");
    collection
        .insert_one(doc! {"mallId": "m1", "productId": "p1", "title": "first"})
        .await
        .expect("first insert");

    let duplicate = collection
        .insert_one(doc! {"mallId": "m1", "productId": "p1", "title": "second"})
        .await
        .expect_err("the unique index rejects a duplicate identity");
    match *duplicate.kind {
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref error)) => {
            assert_eq!(error.code, 11000, "duplicate key error code")
        }
        ref other => panic!("expected a duplicate key write error, got {other:?}"),
    }

    let event = tokio::time::timeout(Duration::from_secs(20), changes.next())
        .await
        .expect("a change event within 20 s")
        .expect("stream open")
        .expect("change event");
    assert_eq!(
        event.operation_type,
        mongodb::change_stream::event::OperationType::Insert
    );
    let document = event.full_document.expect("insert carries the document");
    assert_eq!(document.get_str("title"), Ok("first"));
}

#[tokio::test]
async fn s3_put_get_delete_path_style() {
    use aws_sdk_s3::primitives::ByteStream;

    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(server_env("S3_ENDPOINT"))
        .region(aws_config::Region::new(server_env("AWS_REGION")))
        // The SDK is built without its default HTTPS client: the project's (rustls on ring).
        .http_client(images::s3_https_client())
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            server_env("AWS_ACCESS_KEY_ID"),
            server_env("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "smoke-test",
        ))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let bucket = unique_name("smoke");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let body = b"\x89PNG\r\n\x1a\nnot really an image".to_vec();
    s3.put_object()
        .bucket(&bucket)
        .key("products/m1/p1/abc.png")
        .content_type("image/png")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put");
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key("products/m1/p1/abc.png")
        .send()
        .await
        .expect("get");
    assert_eq!(object.content_type(), Some("image/png"));
    let fetched = object.body.collect().await.expect("body").into_bytes();
    assert_eq!(fetched.as_ref(), body.as_slice());

    s3.delete_object()
        .bucket(&bucket)
        .key("products/m1/p1/abc.png")
        .send()
        .await
        .expect("delete");
    let missing = s3
        .get_object()
        .bucket(&bucket)
        .key("products/m1/p1/abc.png")
        .send()
        .await;
    assert!(
        missing.is_err_and(|error| error.into_service_error().is_no_such_key()),
        "a deleted object is gone"
    );
}

#[tokio::test]
async fn schema_registry_registers_and_serves_by_id() {
    use schema_registry_converter::async_impl::schema_registry::{
        SrSettings, get_schema_by_id, post_schema,
    };
    use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

    let settings = SrSettings::new(server_env("SCHEMA_REGISTRY_URL"));
    let schema = r#"{"type":"record","name":"Product","namespace":"catalog","fields":[{"name":"mallId","type":"string"},{"name":"productId","type":"string"}]}"#;
    let subject = format!("{}-value", unique_name("smoke"));
    let registered = post_schema(
        &settings,
        subject,
        SuppliedSchema::new(
            Some("catalog.Product".into()),
            SchemaType::Avro,
            schema.into(),
        ),
    )
    .await
    .expect("register");

    let fetched = get_schema_by_id(registered.id, &settings)
        .await
        .expect("fetch by id");
    let parsed = apache_avro::Schema::parse_str(&fetched.schema).expect("valid avro");
    assert_eq!(
        parsed.canonical_form(),
        apache_avro::Schema::parse_str(schema)
            .expect("valid avro")
            .canonical_form()
    );
}

#[tokio::test]
async fn prometheus_is_ready() {
    let url = format!("{}/-/ready", server_env("PROMETHEUS_URL"));
    let response = reqwest::get(&url).await.expect("prometheus answers");
    assert!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
}
