//! Test-driver tests: the real runtime over the embedded log, no broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use topology::serdes::{JsonSerde, StringSerde};
use topology::transport::EmbeddedLog;
use topology::{
    AsyncOptions, DriverError, Ordering, Predicate, ProcessError, RebalanceKind, RetryPolicy,
    RuntimeConfig, RuntimeError, StoreSpec, TaskId, TopologyBuilder, TopologyTestDriver, Value,
    processor_fn,
};

fn op_is(ops: &'static [&'static str]) -> Predicate {
    Arc::new(move |r| {
        r.value
            .as_ref()
            .and_then(|v| v.field_str("op"))
            .is_some_and(|op| ops.contains(&op.as_str()))
    })
}

fn json(v: serde_json::Value) -> Option<Value> {
    Some(Value::Json(v))
}

#[tokio::test]
async fn filter_map_and_branch() {
    let b = TopologyBuilder::new();
    let src = b.source(
        "cdc",
        "products",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    );
    let branches = src.filter("not-heartbeat", |r| r.value.is_some()).branch(
        "split",
        vec![
            ("upserts", op_is(&["c", "r", "u"])),
            ("deletes", op_is(&["d"])),
        ],
    );
    branches[0]
        .map("to-product", |r| {
            let after = r.value.as_ref().map(|v| v.to_json()["after"].clone());
            r.with_value(after.map(Value::Json))
        })
        .to(
            "upsert-sink",
            "upserts",
            Arc::new(StringSerde),
            Arc::new(JsonSerde),
        );
    branches[1].to(
        "delete-sink",
        "deletes",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    );
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");

    let events = [
        ("p1", serde_json::json!({"op": "c", "after": {"id": "p1"}})),
        ("p2", serde_json::json!({"op": "u", "after": {"id": "p2"}})),
        ("p1", serde_json::json!({"op": "d"})),
        ("p3", serde_json::json!({"op": "x"})),
    ];
    for (k, v) in events {
        driver
            .pipe("products", Some(k.into()), json(v))
            .await
            .expect("pipe");
    }
    driver
        .pipe("products", Some("p1".into()), None)
        .await
        .expect("tombstone");
    driver.settle().await.expect("settle");

    let ups = driver.read_output("upserts").await.expect("read");
    let ids: Vec<_> = ups
        .iter()
        .map(|r| {
            r.value
                .as_ref()
                .and_then(|v| v.field_str("id"))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ids, ["p1", "p2"]);
    let dels = driver.read_output("deletes").await.expect("read");
    assert_eq!(dels.len(), 1);
    assert_eq!(dels[0].key.as_ref().and_then(|k| k.as_str()), Some("p1"));
    let m = driver.metrics();
    assert_eq!(
        m.records_total
            .with_label_values(&["not-heartbeat", "dropped"])
            .get(),
        1
    );
    assert_eq!(
        m.records_total
            .with_label_values(&["split", "dropped"])
            .get(),
        1
    );
    assert_eq!(driver.committed("products", 0).expect("committed"), Some(5));
    driver.close().await.expect("close");
}

#[tokio::test]
async fn flat_map_fans_out() {
    let b = TopologyBuilder::new();
    b.source("in", "words", Arc::new(StringSerde), Arc::new(StringSerde))
        .flat_map("split", |r| {
            let text = r
                .value
                .as_ref()
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            text.split(' ')
                .map(|w| r.clone().with_value(Some(Value::from(w))))
                .collect()
        })
        .to(
            "out",
            "single",
            Arc::new(StringSerde),
            Arc::new(StringSerde),
        );
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    driver
        .pipe("words", None, Some("a b c".into()))
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    assert_eq!(driver.read_output("single").await.expect("read").len(), 3);
    driver.close().await.expect("close");
}

/// Records with the same key stay in order; different keys run concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_key_order_kept_and_keys_concurrent() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let proc = processor_fn(move |rec| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, AtomicOrdering::SeqCst) + 1;
            p.fetch_max(now, AtomicOrdering::SeqCst);
            // Later records of a key are faster: without ordering they would overtake.
            let n: u64 = rec
                .value
                .as_ref()
                .and_then(|v| v.field_str("n"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(40 - n * 4)).await;
            r.fetch_sub(1, AtomicOrdering::SeqCst);
            Ok(vec![rec])
        }
    });
    let b = TopologyBuilder::new();
    b.source("in", "in", Arc::new(StringSerde), Arc::new(JsonSerde))
        .process_async(
            "slow",
            proc,
            AsyncOptions {
                concurrency: 8,
                ..Default::default()
            },
        )
        .to("out", "out", Arc::new(StringSerde), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for n in 0..5 {
        for key in ["a", "b", "c", "d"] {
            driver
                .pipe(
                    "in",
                    Some(key.into()),
                    json(serde_json::json!({"k": key, "n": n})),
                )
                .await
                .expect("pipe");
        }
    }
    driver.settle().await.expect("settle");
    let out = driver.read_output("out").await.expect("read");
    assert_eq!(out.len(), 20);
    for key in ["a", "b", "c", "d"] {
        let ns: Vec<String> = out
            .iter()
            .filter(|r| r.key.as_ref().and_then(|k| k.as_str()) == Some(key))
            .filter_map(|r| r.value.as_ref().and_then(|v| v.field_str("n")))
            .collect();
        assert_eq!(ns, ["0", "1", "2", "3", "4"], "order of key {key}");
    }
    assert!(
        peak.load(AtomicOrdering::SeqCst) >= 2,
        "different keys ran concurrently"
    );
    assert!(
        peak.load(AtomicOrdering::SeqCst) <= 4,
        "one record per key at a time"
    );
    driver.close().await.expect("close");
}

/// The commit never passes the oldest unfinished record, even when later ones are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_aware_commit_waits_for_oldest() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let proc = processor_fn(move |rec| {
        let g = g.clone();
        async move {
            if rec.offset == 0 {
                g.notified().await;
            }
            Ok(vec![rec])
        }
    });
    let b = TopologyBuilder::new();
    b.source("in", "in", Arc::new(StringSerde), Arc::new(StringSerde))
        .process_async(
            "gated",
            proc,
            AsyncOptions {
                ordering: Ordering::Unordered,
                concurrency: 4,
                ..Default::default()
            },
        )
        .to("out", "out", Arc::new(StringSerde), Arc::new(StringSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for i in 0..3 {
        driver
            .pipe("in", None, Some(format!("v{i}").into()))
            .await
            .expect("pipe");
    }
    // Records 1 and 2 finish while 0 waits.
    for _ in 0..500 {
        if driver.read_raw("out").expect("read").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(driver.read_raw("out").expect("read").len(), 2);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        driver.committed("in", 0).expect("committed").unwrap_or(0),
        0
    );
    gate.notify_one();
    driver.settle().await.expect("settle");
    assert_eq!(driver.committed("in", 0).expect("committed"), Some(3));
    driver.close().await.expect("close");
}

/// Transient errors retry; when the budget is spent, the record goes to the DLQ with headers.
#[tokio::test]
async fn retries_then_dead_letter_with_headers() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let proc = processor_fn(move |rec| {
        let c = c.clone();
        async move {
            c.fetch_add(1, AtomicOrdering::SeqCst);
            match rec.value.as_ref().and_then(|v| v.as_str()) {
                Some("bad") => Err(ProcessError::permanent("not an image")),
                Some("flaky") => Err(ProcessError::transient("503 from image host")),
                _ => Ok(vec![rec]),
            }
        }
    });
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        jitter: 0.5,
    };
    let b = TopologyBuilder::new();
    b.source("in", "images", Arc::new(StringSerde), Arc::new(StringSerde))
        .process_async(
            "collect",
            proc,
            AsyncOptions {
                retry,
                ..Default::default()
            },
        )
        .to(
            "out",
            "image-events",
            Arc::new(StringSerde),
            Arc::new(StringSerde),
        );
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for v in ["ok", "flaky", "bad"] {
        driver
            .pipe("images", Some(v.into()), Some(v.into()))
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    assert_eq!(
        driver
            .read_output("image-events")
            .await
            .expect("read")
            .len(),
        1
    );
    let dlq = driver.read_raw("images.dlq").expect("dlq");
    assert_eq!(dlq.len(), 2);
    let flaky = dlq
        .iter()
        .find(|r| r.value.as_deref() == Some(&b"flaky"[..]))
        .expect("flaky");
    assert_eq!(flaky.headers.get_str("dlq.source.topic"), Some("images"));
    assert_eq!(flaky.headers.get_str("dlq.source.partition"), Some("0"));
    assert_eq!(flaky.headers.get_str("dlq.source.offset"), Some("1"));
    assert_eq!(flaky.headers.get_str("dlq.error.class"), Some("Transient"));
    assert_eq!(flaky.headers.get_str("dlq.attempts"), Some("3"));
    assert!(
        flaky
            .headers
            .get_str("dlq.error.message")
            .is_some_and(|m| m.contains("503"))
    );
    let bad = dlq
        .iter()
        .find(|r| r.value.as_deref() == Some(&b"bad"[..]))
        .expect("bad");
    assert_eq!(bad.headers.get_str("dlq.error.class"), Some("Permanent"));
    assert_eq!(bad.headers.get_str("dlq.attempts"), Some("1"));
    assert_eq!(calls.load(AtomicOrdering::SeqCst), 1 + 3 + 1);
    assert_eq!(
        driver
            .metrics()
            .retries_total
            .with_label_values(&["collect"])
            .get(),
        2
    );
    assert_eq!(driver.committed("images", 0).expect("committed"), Some(3));
    driver.close().await.expect("close");
}

/// Undecodable input goes to the DLQ and the stream goes on.
#[tokio::test]
async fn poison_pill_goes_to_dead_letter() {
    let b = TopologyBuilder::new();
    b.source("in", "cdc", Arc::new(StringSerde), Arc::new(JsonSerde))
        .to("out", "copy", Arc::new(StringSerde), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    driver
        .pipe_raw("cdc", None, Some(b"{not json".to_vec()), Default::default())
        .expect("pipe");
    driver
        .pipe("cdc", None, json(serde_json::json!({"ok": true})))
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    assert_eq!(driver.read_output("copy").await.expect("read").len(), 1);
    let dlq = driver.read_raw("cdc.dlq").expect("dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].headers.get_str("dlq.error.class"),
        Some("JsonDecode")
    );
    assert_eq!(dlq[0].headers.get_str("dlq.source.offset"), Some("0"));
    driver.close().await.expect("close");
}

/// A registry that answers "unavailable" to its first `outage` schema lookups, as an HTTP
/// registry does while it is down (connection refused, 503).
#[derive(Debug)]
struct FlakyRegistry {
    inner: topology::serdes::MemorySchemaRegistry,
    outage: AtomicUsize,
    lookups: AtomicUsize,
}

impl topology::serdes::SchemaRegistry for FlakyRegistry {
    fn schema_by_id(
        &self,
        id: u32,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Arc<apache_avro::Schema>, topology::serdes::RegistryError>,
    > {
        self.lookups.fetch_add(1, AtomicOrdering::SeqCst);
        let down = self
            .outage
            .fetch_update(AtomicOrdering::SeqCst, AtomicOrdering::SeqCst, |n| {
                n.checked_sub(1)
            })
            .is_ok();
        if down {
            return Box::pin(async {
                Err(topology::serdes::RegistryError::Unavailable {
                    message: "connection refused".into(),
                })
            });
        }
        self.inner.schema_by_id(id)
    }

    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a apache_avro::Schema,
    ) -> futures::future::BoxFuture<'a, Result<u32, topology::serdes::RegistryError>> {
        self.inner.register(subject, schema)
    }
}

/// A schema registry outage pauses the record and retries it; it is processed once the
/// registry answers, and nothing goes to the dead-letter topic.
#[tokio::test]
async fn registry_outage_is_retried_not_dead_lettered() {
    let schema = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"P","fields":[{"name":"id","type":"string"}]}"#,
    )
    .expect("schema");
    let registry = Arc::new(FlakyRegistry {
        inner: topology::serdes::MemorySchemaRegistry::default(),
        outage: AtomicUsize::new(0),
        lookups: AtomicUsize::new(0),
    });
    let avro =
        Arc::new(topology::serdes::AvroSerde::new(registry.clone()).with_schema(schema.clone()));
    let b = TopologyBuilder::new();
    b.source("in", "cdc", Arc::new(StringSerde), avro.clone())
        .to("out", "copy", Arc::new(StringSerde), avro);
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    // Three failed lookups (retried after 100, 200 and 400 ms), then the registry answers.
    registry.outage.store(3, AtomicOrdering::SeqCst);
    let value = apache_avro::types::Value::Record(vec![(
        "id".into(),
        apache_avro::types::Value::String("p1".into()),
    )]);
    driver
        .pipe("cdc", None, Some(Value::Avro(value)))
        .await
        .expect("pipe");
    driver
        .settle_within(Duration::from_secs(10))
        .await
        .expect("settle");
    assert_eq!(driver.read_output("copy").await.expect("read").len(), 1);
    assert!(
        driver.read_raw("cdc.dlq").expect("dlq").is_empty(),
        "dead-lettered during a registry outage"
    );
    assert!(
        registry.lookups.load(AtomicOrdering::SeqCst) >= 4,
        "the lookup was retried"
    );
    driver.close().await.expect("close");
}

/// Counts records per key in the task's `counts` store and emits the key's new count.
fn counter() -> Arc<dyn topology::Processor> {
    topology::processor_with_context(|record, ctx| async move {
        let counts = ctx
            .store::<String, u64>("counts")
            .map_err(|e| ProcessError::transient(e.to_string()))?;
        let key = record
            .key
            .as_ref()
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let (count, _) = counts
            .update(&key, |n| Some(n.copied().unwrap_or(0) + 1))
            .map_err(|e| ProcessError::transient(e.to_string()))?;
        Ok(vec![record.with_value(Some(Value::Json(
            serde_json::json!(count.unwrap_or(0)),
        )))])
    })
}

fn counting_topology() -> topology::Topology {
    let b = TopologyBuilder::new();
    b.store(StoreSpec::new("counts"));
    b.source("in", "words", Arc::new(StringSerde), Arc::new(StringSerde))
        .process_async("count", counter(), AsyncOptions::default())
        .with_stores(&["counts"])
        .to("out", "counted", Arc::new(StringSerde), Arc::new(JsonSerde));
    b.build().expect("valid")
}

/// Every `(task, key, count)` of the `counts` store, sorted by key: comparable between
/// instances, which assign a key to the task of its partition alike.
fn counts(driver: &TopologyTestDriver) -> Vec<(TaskId, String, u64)> {
    let mut entries = driver
        .store_entries::<String, u64>("counts")
        .expect("store entries");
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    entries
}

async fn pipe_words(driver: &TopologyTestDriver, words: &[&str]) {
    for w in words {
        driver
            .pipe("words", Some((*w).into()), Some((*w).into()))
            .await
            .expect("pipe");
    }
}

/// A store's contents survive a move to a new instance (restored from the changelog) and a
/// return to the same one (nothing to restore past the checkpoint), and counting goes on from
/// the restored values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_are_restored_across_rebalances() {
    let mut driver = TopologyTestDriver::with_partitions(counting_topology(), 2).expect("driver");
    pipe_words(&driver, &["a", "b", "a", "c", "a", "b"]).await;
    driver.settle().await.expect("settle");

    let before = counts(&driver);
    let as_map = |entries: &[(TaskId, String, u64)]| {
        entries
            .iter()
            .map(|(_, k, v)| (k.clone(), *v))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        as_map(&before),
        [
            ("a".to_owned(), 3),
            ("b".to_owned(), 2),
            ("c".to_owned(), 1)
        ]
    );
    // Each key lives in the task of its input partition.
    let inputs = driver.read_raw("words").expect("read");
    for (task, key, _) in &before {
        assert!(
            inputs
                .iter()
                .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
                .all(|r| r.partition == task.partition),
            "{key} outside task {task}"
        );
    }
    assert_eq!(
        driver
            .store_get::<String, u64, _>("counts", "a")
            .expect("get"),
        Some(3)
    );
    assert_eq!(
        driver
            .store_get::<String, u64, _>("counts", "zz")
            .expect("get"),
        None
    );
    assert!(matches!(
        driver.store_entries::<String, u64>("nope"),
        Err(DriverError::NotAStore(_))
    ));
    // One changelog record per write, in the task's partition.
    let changelog = driver
        .read_raw("test-driver-counts-changelog")
        .expect("changelog");
    assert_eq!(changelog.len(), 6);
    assert!(
        driver
            .state_dir()
            .join("test-driver")
            .join(before[0].0.to_string())
            .join("sled")
            .exists(),
        "stores live in the driver's state directory"
    );

    let restored = driver
        .rebalance(RebalanceKind::NewInstance)
        .await
        .expect("rebalance to a new instance");
    assert_eq!(restored, changelog.len() as u64);
    assert_eq!(driver.restored_records(), restored);
    assert_eq!(counts(&driver), before);

    pipe_words(&driver, &["a", "c", "d"]).await;
    driver.settle().await.expect("settle");
    assert_eq!(
        as_map(&counts(&driver)),
        [
            ("a".to_owned(), 4),
            ("b".to_owned(), 2),
            ("c".to_owned(), 2),
            ("d".to_owned(), 1)
        ]
    );
    let last_a = driver
        .read_output("counted")
        .await
        .expect("read")
        .into_iter()
        .rfind(|r| r.key.as_ref().and_then(|k| k.as_str()) == Some("a"))
        .expect("an output for a");
    assert_eq!(last_a.value, Some(Value::Json(serde_json::json!(4))));

    let after = counts(&driver);
    let restored = driver
        .rebalance(RebalanceKind::SameInstance)
        .await
        .expect("rebalance to the same instance");
    assert_eq!(restored, 0, "the checkpoints were current");
    assert_eq!(counts(&driver), after);

    // A new instance again restores everything written so far, not just the first run's.
    let restored = driver
        .rebalance(RebalanceKind::NewInstance)
        .await
        .expect("rebalance to a new instance");
    assert_eq!(restored, 9);
    assert_eq!(counts(&driver), after);
    driver.close().await.expect("close");
}

/// Two topics feeding two processors that share a store run as one sub-topology, whose task
/// sees the records of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_share_one_store() {
    let b = TopologyBuilder::new();
    b.store(StoreSpec::new("counts"));
    b.source("left", "left", Arc::new(StringSerde), Arc::new(StringSerde))
        .process_async("count-left", counter(), AsyncOptions::default())
        .with_stores(&["counts"]);
    b.source(
        "right",
        "right",
        Arc::new(StringSerde),
        Arc::new(StringSerde),
    )
    .process_async("count-right", counter(), AsyncOptions::default())
    .with_stores(&["counts"]);
    let topology = b.build().expect("valid");
    assert_eq!(topology.subtopologies().len(), 1);
    let driver = TopologyTestDriver::new(topology).expect("driver");
    for (topic, key) in [("left", "k"), ("right", "k"), ("right", "k"), ("left", "j")] {
        driver
            .pipe(topic, Some(key.into()), Some("x".into()))
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let task = TaskId {
        subtopology: 0,
        partition: 0,
    };
    assert_eq!(driver.stores().tasks(), [task]);
    assert_eq!(
        counts(&driver),
        [(task, "j".to_owned(), 1), (task, "k".to_owned(), 3)]
    );
    driver.close().await.expect("close");
}

/// Sources of one stateful sub-topology with different partition counts: the runtime refuses
/// to start.
#[tokio::test]
async fn a_store_shared_across_topics_not_copartitioned_fails_to_start() {
    let b = TopologyBuilder::new();
    b.store(StoreSpec::new("counts"));
    b.source("left", "left", Arc::new(StringSerde), Arc::new(StringSerde))
        .process_async("count-left", counter(), AsyncOptions::default())
        .with_stores(&["counts"]);
    b.source(
        "right",
        "right",
        Arc::new(StringSerde),
        Arc::new(StringSerde),
    )
    .process_async("count-right", counter(), AsyncOptions::default())
    .with_stores(&["counts"]);
    let log = Arc::new(EmbeddedLog::temporary().expect("log"));
    log.create_topic("left", 1).expect("left");
    log.create_topic("right", 2).expect("right");
    let driver = TopologyTestDriver::with_log(
        b.build().expect("valid"),
        log,
        1,
        RuntimeConfig::new("test-driver"),
    )
    .expect("driver");
    let settled = driver.settle().await;
    assert!(
        matches!(&settled, Err(DriverError::Stopped(m)) if m.contains("co-partitioned")),
        "{settled:?}"
    );
    match driver.close().await {
        Err(RuntimeError::NotCopartitioned {
            subtopology,
            partitions,
        }) => {
            assert_eq!(subtopology, 0);
            assert_eq!(
                partitions,
                [("left".to_owned(), 1), ("right".to_owned(), 2)]
            );
        }
        other => panic!("expected NotCopartitioned, got {other:?}"),
    }
}
