//! Against the real broker (and schema registry): run `infrastructure/up.sh` first.
//! Addresses come from `KAFKA_BOOTSTRAP` / `SCHEMA_REGISTRY_URL` or `infrastructure/.env`;
//! without them these tests fail rather than skip.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{committed, create_topics, producer, read_all, setting, unique};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use topology::serdes::{
    AvroSerde, HttpSchemaRegistry, JsonSerde, SchemaRegistry, Serde, StringSerde,
};
use topology::transport::KafkaTransport;
use topology::{
    AsyncOptions, Metrics, ProcessError, RetryPolicy, Runtime, RuntimeConfig, TopologyBuilder,
    Value, processor_fn,
};

/// Reads everything from `topic` (all partitions) until `want` records or 30 s.
fn read_topic(
    bootstrap: &str,
    topic: &str,
    want: usize,
    committed_only: bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    read_all(
        bootstrap,
        topic,
        want,
        committed_only,
        Duration::ZERO,
        Duration::from_secs(30),
    )
}

async fn run_pipeline(exactly_once: bool) {
    let bootstrap = setting("KAFKA_BOOTSTRAP");
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{input}.dlq");
    create_topics(&bootstrap, &[(&input, 3), (&output, 3), (&dlq, 1)]).await;

    let p = producer(&bootstrap);
    for i in 0..30 {
        let value =
            serde_json::json!({"op": if i % 3 == 0 { "d" } else { "c" }, "n": i}).to_string();
        let key = format!("k{}", i % 7);
        p.send(
            FutureRecord::to(&input).key(&key).payload(&value),
            Duration::from_secs(5),
        )
        .await
        .expect("produce");
    }
    // A poison pill and a record the processor rejects.
    p.send(
        FutureRecord::<str, str>::to(&input)
            .key("bad")
            .payload("{oops"),
        Duration::from_secs(5),
    )
    .await
    .expect("produce");
    p.send(
        FutureRecord::to(&input)
            .key("rej")
            .payload(&serde_json::json!({"op": "c", "n": 999}).to_string())
            .headers(OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some("t1"),
            })),
        Duration::from_secs(5),
    )
    .await
    .expect("produce");

    let proc = processor_fn(|rec: topology::Record| async move {
        if rec.value.as_ref().and_then(|v| v.field_str("n")).as_deref() == Some("999") {
            return Err(ProcessError::permanent("rejected"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(vec![rec])
    });
    let b = TopologyBuilder::new();
    b.source("src", &input, Arc::new(StringSerde), Arc::new(JsonSerde))
        .filter("upserts", |r| {
            r.value.as_ref().and_then(|v| v.field_str("op")).as_deref() == Some("c")
        })
        .process_async(
            "work",
            proc,
            AsyncOptions {
                concurrency: 8,
                retry: RetryPolicy::none(),
                ..Default::default()
            },
        )
        .to("sink", &output, Arc::new(StringSerde), Arc::new(JsonSerde));
    let topology = b.build().expect("valid");

    let group = unique("app");
    let mut config = RuntimeConfig::new(&group);
    config.commit_interval = Duration::from_millis(200);
    config.exactly_once = exactly_once;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("metrics");
    let runtime = Runtime::new(topology, Arc::new(KafkaTransport::new(&bootstrap)), config)
        .with_metrics(metrics.clone());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));

    let b2 = bootstrap.clone();
    let out_topic = output.clone();
    let outputs =
        tokio::task::spawn_blocking(move || read_topic(&b2, &out_topic, 20, exactly_once))
            .await
            .expect("reader");
    assert_eq!(outputs.len(), 20, "all upserts processed");
    let b3 = bootstrap.clone();
    let dlq_topic = dlq.clone();
    let dead = tokio::task::spawn_blocking(move || read_topic(&b3, &dlq_topic, 2, exactly_once))
        .await
        .expect("reader");
    assert_eq!(dead.len(), 2);
    let header = |m: &rdkafka::message::OwnedMessage, k: &str| -> Option<String> {
        m.headers().and_then(|h| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        })
    };
    let classes: Vec<_> = dead
        .iter()
        .filter_map(|m| header(m, "dlq.error.class"))
        .collect();
    assert!(classes.contains(&"JsonDecode".to_owned()), "{classes:?}");
    assert!(classes.contains(&"Permanent".to_owned()), "{classes:?}");
    let rej = dead
        .iter()
        .find(|m| header(m, "dlq.error.class").as_deref() == Some("Permanent"))
        .expect("rejected");
    assert_eq!(
        header(rej, "dlq.source.topic").as_deref(),
        Some(input.as_str())
    );
    assert_eq!(
        header(rej, "trace").as_deref(),
        Some("t1"),
        "original headers kept"
    );
    assert!(header(rej, "dlq.source.offset").is_some());

    // Let a commit happen, then shut down gracefully (drain + commit).
    tokio::time::sleep(Duration::from_millis(600)).await;
    shutdown.cancel();
    let summary = handle.await.expect("join").expect("runtime ok");
    assert_eq!(summary.consumed, 32);
    assert_eq!(summary.abandoned, 0);
    let offsets = committed(&bootstrap, &group, &input, 3);
    assert_eq!(
        offsets.iter().sum::<i64>(),
        32,
        "committed every record: {offsets:?}"
    );
    assert!(metrics.rebalances_total.get() >= 1);
    assert_eq!(
        metrics
            .records_total
            .with_label_values(&["upserts", "dropped"])
            .get(),
        10
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    assert!(text.contains("topology_consumer_lag{"), "{text}");
    assert!(text.contains("topology_commit_latency_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_at_least_once_pipeline_commits_and_dead_letters() {
    run_pipeline(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_exactly_once_pipeline_with_transactions() {
    run_pipeline(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_through_schema_registry() {
    let bootstrap = setting("KAFKA_BOOTSTRAP");
    let registry_url = setting("SCHEMA_REGISTRY_URL");
    let (input, output) = (unique("avro-in"), unique("avro-out"));
    create_topics(&bootstrap, &[(&input, 1), (&output, 1)]).await;
    let schema = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Change","namespace":"test","fields":[
            {"name":"op","type":"string"},{"name":"id","type":["null","string"],"default":null}]}"#,
    )
    .expect("schema");
    let out_schema = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Product","namespace":"test","fields":[{"name":"id","type":"string"}]}"#,
    )
    .expect("schema");
    let sr: Arc<dyn SchemaRegistry> = Arc::new(HttpSchemaRegistry::new(registry_url.clone()));
    let writer = AvroSerde::new(sr.clone()).with_schema(schema);
    let p = producer(&bootstrap);
    for (op, id) in [("c", "p1"), ("d", "p2"), ("u", "p3")] {
        let bytes = writer
            .serialize(
                &input,
                false,
                &Value::Json(serde_json::json!({"op": op, "id": id})),
            )
            .await
            .expect("encode through the registry");
        assert_eq!(bytes[0], 0);
        p.send(
            FutureRecord::<str, [u8]>::to(&input).payload(&bytes[..]),
            Duration::from_secs(5),
        )
        .await
        .expect("produce");
    }
    let b = TopologyBuilder::new();
    b.source(
        "src",
        &input,
        Arc::new(StringSerde),
        Arc::new(AvroSerde::new(sr.clone())),
    )
    .filter("upserts", |r| {
        r.value.as_ref().and_then(|v| v.field_str("op")).as_deref() != Some("d")
    })
    .map("product", |r| {
        let id = r
            .value
            .as_ref()
            .and_then(|v| v.field_str("id"))
            .unwrap_or_default();
        r.with_value(Some(Value::Json(serde_json::json!({"id": id}))))
    })
    .to(
        "sink",
        &output,
        Arc::new(StringSerde),
        Arc::new(AvroSerde::new(sr.clone()).with_schema(out_schema)),
    );
    let mut config = RuntimeConfig::new(&unique("avro-app"));
    config.commit_interval = Duration::from_millis(100);
    let runtime = Runtime::new(
        b.build().expect("valid"),
        Arc::new(KafkaTransport::new(&bootstrap)),
        config,
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    let b2 = bootstrap.clone();
    let out_topic = output.clone();
    let outs = tokio::task::spawn_blocking(move || read_topic(&b2, &out_topic, 2, false))
        .await
        .expect("reader");
    shutdown.cancel();
    handle.await.expect("join").expect("runtime");
    assert_eq!(outs.len(), 2);
    // A fresh client (empty cache) decodes with the writer schema fetched by id.
    let reader = AvroSerde::new(Arc::new(HttpSchemaRegistry::new(registry_url)));
    let mut ids = Vec::new();
    for m in &outs {
        let v = reader
            .deserialize(&output, false, m.payload().expect("payload"))
            .await
            .expect("decode");
        ids.push(v.field_str("id").unwrap_or_default());
    }
    assert_eq!(ids, ["p1", "p3"]);
    // An unknown schema id is a typed error, not a panic.
    let err = reader
        .deserialize(&output, false, &[0, 0x7f, 0xff, 0xff, 0xf0, 2])
        .await
        .expect_err("unknown id");
    assert_eq!(err.class(), "UnknownSchemaId");
}
