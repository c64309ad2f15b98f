//! The native source through the real Kafka broker and schema registry: records produced by
//! `KafkaChangeSink` in the Confluent Avro wire format decode back into the same changes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use connectors::debezium::{Op, decode_avro};
use connectors::mongo_source::{ChangeEncoder, KafkaChangeSink, MongoSourceConfig};
use mongodb::bson::{Document, doc};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio::sync::oneshot;
use topology::serdes::{AvroSerde, HttpSchemaRegistry, Serde};
use topology::transport::KafkaClientConfig;

use common::{mongo_uri, setting, unique_db};

fn avro(v: topology::Value) -> apache_avro::types::Value {
    match v {
        topology::Value::Avro(a) => a,
        other => panic!("not Avro: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_avro_records_to_kafka_that_decode_back() {
    let uri = mongo_uri().await;
    let bootstrap = setting("KAFKA_BOOTSTRAP", "kafka");
    let registry_url = setting("SCHEMA_REGISTRY_URL", "registry");
    let db = unique_db();
    let products = mongodb::Client::with_uri_str(&uri)
        .await
        .expect("client")
        .database(&db)
        .collection::<Document>("products");
    products
        .insert_one(doc! {"_id": "seed-1", "price": 1.5})
        .await
        .expect("seed");

    let state = tempfile::tempdir().expect("tempdir");
    let mut config = MongoSourceConfig::new(&uri, &db, "products", state.path());
    // A fresh topic per run.
    config.topic = Some(format!("cs-test-cdc-{}", uuid::Uuid::new_v4().simple()));
    let topic = config.topic();
    let registry = Arc::new(HttpSchemaRegistry::new(registry_url.clone()));
    let encoder =
        ChangeEncoder::avro(registry.clone(), "catalog", &db, "products").expect("schemas");
    let kafka = KafkaClientConfig::new(&bootstrap).set("message.timeout.ms", "20000");
    let sink = KafkaChangeSink::new(&kafka, topic.clone()).expect("producer");
    let mut source = config.build(encoder).expect("source");
    let stats = source.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        source
            .run(sink, async {
                let _ = stopped.await;
            })
            .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while connectors::mongo_source::SourceStats::get(&stats.snapshot_records) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot read was never acknowledged by Kafka at {bootstrap}: run `infrastructure/up.sh kafka`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    products
        .insert_one(doc! {"_id": "p-1", "price": 2})
        .await
        .expect("insert");
    products
        .delete_one(doc! {"_id": "p-1"})
        .await
        .expect("delete");
    while connectors::mongo_source::SourceStats::get(&stats.tombstones) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "changes never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.expect("task").expect("source stops cleanly");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set(
            "group.id",
            format!("cs-test-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let serde = AvroSerde::new(Arc::new(HttpSchemaRegistry::new(registry_url)));
    let mut events = Vec::new();
    while events.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} records on {topic}", events.len()))
            .expect("consume");
        let key = serde
            .deserialize(&topic, true, message.key().expect("a key"))
            .await
            .expect("key decodes");
        let value = match message.payload() {
            Some(v) => Some(avro(
                serde
                    .deserialize(&topic, false, v)
                    .await
                    .expect("value decodes"),
            )),
            None => None,
        };
        events.push(
            decode_avro(Some(&avro(key)), value.as_ref())
                .expect("a Debezium record")
                .into_change()
                .expect("a change"),
        );
    }
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Read, Op::Create, Op::Delete, Op::Tombstone]);
    assert_eq!(events[0].after.as_ref().expect("after")["price"], 1.5);
    assert_eq!(events[1].after.as_ref().expect("after")["price"], 2);
    assert_eq!(events[2].id, serde_json::json!("p-1"));
    let source = events[1].source.as_ref().expect("source");
    assert_eq!(
        (source.connector.as_str(), source.db.as_str()),
        ("mongodb", db.as_str())
    );
    products.drop().await.expect("drop");
}
