//! The stateful operators (tables, aggregations, windows, suppression, joins, punctuation)
//! in the test driver: the real runtime, task stores and changelogs over the embedded log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use topology::serdes::{JsonSerde, LongSerde, StringSerde};
use topology::stateful::{
    JoinKind, JoinWindows, LatePolicy, OperatorContext, Punctuation, PunctuationType,
    SessionWindows, StatefulOperator, TimeWindows, windowed_key,
};
use topology::{
    ProcessError, RebalanceKind, Record, StoreSpec, TopologyBuilder, TopologyTestDriver, Value,
};

fn s(text: &str) -> Option<Value> {
    Some(Value::from(text))
}

fn string() -> Arc<StringSerde> {
    Arc::new(StringSerde)
}

/// The last value per key of `topic` (a tombstone removes the key), keys and values as text.
async fn latest(driver: &TopologyTestDriver, topic: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in driver.read_output(topic).await.expect("read output") {
        let key = r.key.map(|k| text(&k)).unwrap_or_default();
        match r.value {
            Some(v) => out.insert(key, text(&v)),
            None => out.remove(&key),
        };
    }
    out
}

fn text(v: &Value) -> String {
    match v.as_str() {
        Some(s) => s.to_owned(),
        None => v.to_json().to_string(),
    }
}

/// `key@start` for a windowed key.
fn window_label(key: &Value) -> String {
    let (k, w) = windowed_key(key).expect("a windowed key");
    format!("{}@{}", text(&k), w.start)
}

async fn windowed(driver: &TopologyTestDriver, topic: &str) -> Vec<(String, String)> {
    driver
        .read_output(topic)
        .await
        .expect("read output")
        .into_iter()
        .map(|r| {
            (
                window_label(r.key.as_ref().expect("key")),
                r.value.as_ref().map(text).unwrap_or_else(|| "null".into()),
            )
        })
        .collect()
}

#[tokio::test]
async fn word_count_repartitions_by_word_and_survives_a_move_to_a_new_instance() {
    let b = TopologyBuilder::new();
    b.source("lines", "text", string(), string())
        .flat_map("words", |r: Record| {
            let line = r
                .value
                .as_ref()
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            line.split_whitespace()
                .map(|w| {
                    let mut out = r.clone();
                    out.value = Some(Value::from(w.to_lowercase()));
                    out
                })
                .collect()
        })
        .group_by("by-word", |r| r.value.clone())
        .count("word-counts")
        .to_stream("changes")
        .to("out", "counts", string(), Arc::new(LongSerde));
    let topology = b.build().expect("valid");
    assert_eq!(topology.internal_topics(), ["by-word-repartition"]);
    let described = topology.describe();
    assert!(described.contains("by-word-repartition"), "{described}");
    assert!(
        described.contains("Processor: word-counts (stores: [word-counts])"),
        "{described}"
    );
    let mut driver = TopologyTestDriver::with_partitions(topology, 2).expect("driver");
    for (i, line) in ["the cat", "The dog", "a cat and the dog"]
        .iter()
        .enumerate()
    {
        driver
            .pipe("text", s(&format!("line-{i}")), s(line))
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let counts = latest(&driver, "counts").await;
    let expected = [
        ("a", "1"),
        ("and", "1"),
        ("cat", "2"),
        ("dog", "2"),
        ("the", "3"),
    ];
    assert_eq!(
        counts,
        expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    );
    // The repartition topic is the application's own, named as Kafka Streams names it.
    assert_eq!(
        driver
            .log()
            .partitions("test-driver-by-word-repartition")
            .expect("log"),
        Some(2)
    );
    assert_eq!(
        driver
            .store_get::<Vec<u8>, topology::stateful::StoredValue, _>(
                "word-counts",
                b"the".as_slice()
            )
            .expect("get")
            .map(Value::from),
        Some(Value::Json(3.into()))
    );
    let restored = driver
        .rebalance(RebalanceKind::NewInstance)
        .await
        .expect("rebalance");
    assert!(restored >= 5, "restored {restored}");
    driver
        .pipe("text", s("line-9"), s("the end"))
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    let counts = latest(&driver, "counts").await;
    assert_eq!(counts.get("the").map(String::as_str), Some("4"));
    assert_eq!(counts.get("end").map(String::as_str), Some("1"));
    driver.close().await.expect("close");
}

#[tokio::test]
async fn reduce_and_aggregate_keep_one_value_per_key_and_skip_null_values() {
    let b = TopologyBuilder::new();
    let grouped = b
        .source("in", "amounts", string(), Arc::new(JsonSerde))
        .group_by_key();
    grouped
        .reduce("max", |a, v| {
            if v.to_json().as_i64() > a.to_json().as_i64() {
                v.clone()
            } else {
                a
            }
        })
        .to_stream("max-changes")
        .to("max-out", "max", string(), Arc::new(JsonSerde));
    grouped
        .aggregate(
            "sum",
            || Value::Json(0.into()),
            |_, v, sum| {
                Value::Json(
                    (sum.to_json().as_i64().unwrap_or(0) + v.to_json().as_i64().unwrap_or(0))
                        .into(),
                )
            },
        )
        .to_stream("sum-changes")
        .to("sum-out", "sum", string(), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for (k, v) in [
        ("a", Some(3)),
        ("a", Some(7)),
        ("b", Some(1)),
        ("a", None),
        ("a", Some(5)),
    ] {
        driver
            .pipe("amounts", s(k), v.map(|n| Value::Json(n.into())))
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let max = latest(&driver, "max").await;
    assert_eq!((max["a"].as_str(), max["b"].as_str()), ("7", "1"));
    let sum = latest(&driver, "sum").await;
    assert_eq!((sum["a"].as_str(), sum["b"].as_str()), ("15", "1"));
    // The null value produced no update.
    assert_eq!(driver.read_output("sum").await.expect("read").len(), 4);
    driver.close().await.expect("close");
}

#[tokio::test]
async fn tumbling_windows_count_out_of_order_records_within_grace_and_dead_letter_late_ones() {
    let b = TopologyBuilder::new();
    b.source("in", "clicks", string(), string())
        .group_by_key()
        .windowed_by(TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)))
        .count("clicks-per-minute")
        .to_stream("changes")
        .to("out", "counts", Arc::new(JsonSerde), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    let at = |k: &'static str, t: i64| (k, t);
    for (k, t) in [
        at("u1", 1_000),
        at("u1", 59_000),
        at("u2", 30_000),
        at("u1", 65_000), // next window; stream time 65 s
        at("u1", 58_000), // out of order, within grace (window 0 closes at 70 s)
        at("u1", 71_000), // stream time 71 s: window 0 closed
        at("u1", 10_000), // late: dead-lettered
    ] {
        driver
            .pipe_at("clicks", s(k), s("click"), t)
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let updates = windowed(&driver, "counts").await;
    let last: BTreeMap<String, String> = updates.iter().cloned().collect();
    assert_eq!(last["u1@0"], "3");
    assert_eq!(last["u2@0"], "1");
    assert_eq!(last["u1@60000"], "2");
    assert_eq!(updates.len(), 6, "{updates:?}");
    let dlq = driver.read_raw("clicks.dlq").expect("dlq");
    assert_eq!(dlq.len(), 1);
    let message = dlq[0]
        .headers
        .get_str("dlq.error.message")
        .unwrap_or_default();
    assert!(message.contains("late record"), "{message}");
    driver.close().await.expect("close");
}

#[tokio::test]
async fn hopping_windows_count_a_record_in_every_window_holding_it_and_drop_policy_counts_late_ones()
 {
    let b = TopologyBuilder::new();
    b.source("in", "clicks", string(), string())
        .group_by_key()
        .windowed_by(
            TimeWindows::hopping(Duration::from_secs(60), Duration::from_secs(30))
                .late_records(LatePolicy::Drop),
        )
        .count("counts")
        .to_stream("changes")
        .to("out", "counts", Arc::new(JsonSerde), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for t in [45_000, 75_000, 200_000, 1_000] {
        driver
            .pipe_at("clicks", s("k"), s("x"), t)
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let last: BTreeMap<String, String> = windowed(&driver, "counts").await.into_iter().collect();
    assert_eq!(last["k@0"], "1");
    assert_eq!(last["k@30000"], "2");
    assert_eq!(last["k@60000"], "1");
    assert!(driver.read_raw("clicks.dlq").expect("dlq").is_empty());
    assert_eq!(
        driver
            .metrics()
            .late_records_total
            .with_label_values(&["counts"])
            .get(),
        1
    );
    driver.close().await.expect("close");
}

#[tokio::test]
async fn suppression_emits_one_final_result_per_window_once_it_closes_even_after_a_move() {
    let b = TopologyBuilder::new();
    b.source("in", "clicks", string(), string())
        .group_by_key()
        .windowed_by(TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)))
        .count("counts")
        .suppress_until_window_closes("finals")
        .to_stream("final-changes")
        .to("out", "finals", Arc::new(JsonSerde), Arc::new(JsonSerde));
    let mut driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for t in [1_000, 2_000, 30_000, 61_000] {
        driver
            .pipe_at("clicks", s("u1"), s("x"), t)
            .await
            .expect("pipe");
    }
    driver
        .pipe_at("clicks", s("u2"), s("x"), 50_000)
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    assert!(
        windowed(&driver, "finals").await.is_empty(),
        "nothing closed yet"
    );
    driver
        .rebalance(RebalanceKind::NewInstance)
        .await
        .expect("move");
    // Stream time 70 s closes the first window (end 60 s + grace 10 s).
    driver
        .pipe_at("clicks", s("u1"), s("x"), 70_000)
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    assert_eq!(
        windowed(&driver, "finals").await,
        [
            ("u1@0".to_owned(), "3".to_owned()),
            ("u2@0".to_owned(), "1".to_owned())
        ]
    );
    driver
        .pipe_at("clicks", s("u1"), s("x"), 200_000)
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    let finals = windowed(&driver, "finals").await;
    assert_eq!(finals.len(), 3, "{finals:?}");
    assert_eq!(finals[2], ("u1@60000".to_owned(), "2".to_owned()));
    driver.close().await.expect("close");
}

#[tokio::test]
async fn sessions_merge_when_a_record_bridges_them_and_the_merged_ones_are_deleted() {
    let b = TopologyBuilder::new();
    b.source("in", "clicks", string(), string())
        .group_by_key()
        .session_windowed_by(
            SessionWindows::with_inactivity_gap(Duration::from_secs(10))
                .grace(Duration::from_secs(30)),
        )
        .count("sessions")
        .to_stream("changes")
        .to("out", "sessions", Arc::new(JsonSerde), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    // 20 s is 15 s after 5 s: a session of its own; 12 s is within 10 s of both.
    for t in [0, 5_000, 20_000, 12_000, 100_000, 1_000] {
        driver
            .pipe_at("clicks", s("k"), s("x"), t)
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        windowed(&driver, "sessions").await,
        [
            pair("k@0", "1"),
            pair("k@0", "null"),
            pair("k@0", "2"),
            pair("k@20000", "1"),
            pair("k@0", "null"),
            pair("k@20000", "null"),
            pair("k@0", "4"),
            pair("k@100000", "1"),
        ]
    );
    // 1 s, after stream time reached 100 s: its session would end long before 100 s - 30 s.
    assert_eq!(driver.read_raw("clicks.dlq").expect("dlq").len(), 1);
    driver.close().await.expect("close");
}

#[tokio::test]
async fn a_table_keeps_the_latest_row_and_a_stream_joins_it_inner_and_left() {
    let b = TopologyBuilder::new();
    let regions = b.table("regions", "user-regions", string(), string());
    let clicks = b.source("clicks", "user-clicks", string(), string());
    clicks
        .join_table("enriched", &regions, JoinKind::Inner, |l, r| {
            Value::from(format!(
                "{}|{}",
                text(l.expect("left")),
                text(r.expect("right"))
            ))
        })
        .to("inner-out", "inner", string(), string());
    clicks
        .join_table("left-enriched", &regions, JoinKind::Left, |l, r| {
            Value::from(format!(
                "{}|{}",
                text(l.expect("left")),
                r.map(text).unwrap_or("null".into())
            ))
        })
        .to("left-out", "left", string(), string());
    let driver = TopologyTestDriver::with_partitions(b.build().expect("valid"), 3).expect("driver");
    driver
        .pipe("user-regions", s("alice"), s("eu"))
        .await
        .expect("pipe");
    driver
        .pipe("user-regions", s("bob"), s("us"))
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    driver
        .pipe("user-clicks", s("alice"), s("home"))
        .await
        .expect("pipe");
    driver
        .pipe("user-clicks", s("carol"), s("cart"))
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    driver
        .pipe("user-regions", s("alice"), s("asia"))
        .await
        .expect("pipe");
    driver
        .pipe("user-regions", s("bob"), None)
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    driver
        .pipe("user-clicks", s("alice"), s("checkout"))
        .await
        .expect("pipe");
    driver
        .pipe("user-clicks", s("bob"), s("home"))
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    let values = |records: Vec<Record>| -> Vec<String> {
        records
            .iter()
            .filter_map(|r| r.value.as_ref().map(text))
            .collect()
    };
    let mut inner = values(driver.read_output("inner").await.expect("read"));
    inner.sort();
    assert_eq!(inner, ["checkout|asia", "home|eu"]);
    let mut left = values(driver.read_output("left").await.expect("read"));
    left.sort();
    assert_eq!(left, ["cart|null", "checkout|asia", "home|eu", "home|null"]);
    let rows: BTreeMap<String, String> = driver
        .store_entries::<Vec<u8>, topology::stateful::StoredValue>("regions")
        .expect("entries")
        .into_iter()
        .map(|(_, k, v)| (String::from_utf8(k).expect("utf-8"), text(&Value::from(v))))
        .collect();
    assert_eq!(
        rows,
        BTreeMap::from([("alice".to_owned(), "asia".to_owned())])
    );
    driver.close().await.expect("close");
}

#[tokio::test]
async fn a_table_from_debezium_events_holds_the_after_image_and_forgets_deletes() {
    let fixture = |name: &str| -> Value {
        let path = format!(
            "{}/../../shared/fixtures/debezium-mongodb/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Value::Json(serde_json::from_str(&text).expect("fixture is JSON"))
    };
    let b = TopologyBuilder::new();
    b.cdc_table(
        "products",
        "mongo.products",
        Arc::new(JsonSerde),
        Arc::new(JsonSerde),
    )
    .map_values("names", |row| {
        Value::from(row.field_str("created_by").unwrap_or_default())
    })
    .to_stream("changes")
    .to("out", "creators", Arc::new(JsonSerde), string());
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    let insert_key = fixture("dbz-2.7.0-paimon-insert.key.json");
    driver
        .pipe(
            "mongo.products",
            Some(insert_key.clone()),
            Some(fixture("dbz-2.7.0-paimon-insert.value.json")),
        )
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    let rows = driver
        .store_entries::<Vec<u8>, topology::stateful::StoredValue>("products")
        .expect("entries");
    assert_eq!(rows.len(), 1);
    let row = Value::from(rows[0].2.clone());
    assert_eq!(row.field_str("created_by").as_deref(), Some("peter"));
    assert_eq!(
        row.field_str("_id.$oid").as_deref(),
        Some("67ab25755c0d5ac87eb8c632")
    );
    driver
        .pipe(
            "mongo.products",
            Some(fixture("dbz-2.7.0-paimon-delete.key.json")),
            Some(fixture("dbz-2.7.0-paimon-delete.value.json")),
        )
        .await
        .expect("pipe");
    driver
        .pipe("mongo.products", Some(insert_key), None)
        .await
        .expect("pipe a tombstone");
    driver.settle().await.expect("settle");
    let out = driver.read_output("creators").await.expect("read");
    assert_eq!(
        out[0].value.as_ref().and_then(|v| v.as_str()),
        Some("peter")
    );
    assert!(out[1..].iter().all(|r| r.value.is_none()), "{out:?}");
    driver.close().await.expect("close");
}

#[tokio::test]
async fn table_table_joins_follow_both_sides_and_delete_rows_that_stop_qualifying() {
    let b = TopologyBuilder::new();
    let left = b.table("left", "left-topic", string(), string());
    let right = b.table("right", "right-topic", string(), string());
    let pair = |l: Option<&Value>, r: Option<&Value>| {
        Value::from(format!(
            "{}|{}",
            l.map(text).unwrap_or("null".into()),
            r.map(text).unwrap_or("null".into())
        ))
    };
    for (name, kind) in [
        ("inner", JoinKind::Inner),
        ("left-join", JoinKind::Left),
        ("outer", JoinKind::Outer),
    ] {
        left.join(name, &right, kind, pair)
            .to_stream(&format!("{name}-changes"))
            .to(&format!("{name}-out"), name, string(), string());
    }
    let driver = TopologyTestDriver::with_partitions(b.build().expect("valid"), 2).expect("driver");
    for (topic, k, v) in [
        ("left-topic", "a", Some("l1")),
        ("right-topic", "a", Some("r1")),
        ("right-topic", "b", Some("r2")),
        ("left-topic", "c", Some("l3")),
        ("left-topic", "a", Some("l1b")),
        ("right-topic", "c", Some("r3")),
        ("right-topic", "c", None),
    ] {
        driver.pipe(topic, s(k), v.and_then(s)).await.expect("pipe");
        driver.settle().await.expect("settle");
    }
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(latest(&driver, "inner").await, map(&[("a", "l1b|r1")]));
    assert_eq!(
        latest(&driver, "left-join").await,
        map(&[("a", "l1b|r1"), ("c", "l3|null")])
    );
    assert_eq!(
        latest(&driver, "outer").await,
        map(&[("a", "l1b|r1"), ("b", "null|r2"), ("c", "l3|null")])
    );
    driver.close().await.expect("close");
}

#[tokio::test]
async fn a_grouped_table_moves_a_row_from_its_old_group_to_its_new_one() {
    let b = TopologyBuilder::new();
    b.table("users", "user-regions", string(), string())
        .group_by("by-region", |_user, region| region.clone())
        .count("users-per-region")
        .to_stream("changes")
        .to("out", "region-counts", string(), Arc::new(LongSerde));
    let driver = TopologyTestDriver::with_partitions(b.build().expect("valid"), 2).expect("driver");
    for (user, region) in [
        ("alice", Some("eu")),
        ("bob", Some("eu")),
        ("carol", Some("us")),
        ("alice", Some("us")),
        ("bob", None),
        ("dave", Some("eu")),
    ] {
        driver
            .pipe("user-regions", s(user), region.and_then(s))
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let counts = latest(&driver, "region-counts").await;
    assert_eq!(
        counts,
        BTreeMap::from([
            ("eu".to_owned(), "1".to_owned()),
            ("us".to_owned(), "2".to_owned())
        ])
    );
    driver.close().await.expect("close");
}

#[tokio::test]
async fn stream_stream_joins_pair_records_within_the_window_and_left_joins_emit_the_unpaired_at_close()
 {
    let b = TopologyBuilder::new();
    let views = b.source("views", "views", string(), string());
    let clicks = b.source("clicks", "clicks", string(), string());
    let pair = |l: Option<&Value>, r: Option<&Value>| {
        Value::from(format!(
            "{}|{}",
            l.map(text).unwrap_or("null".into()),
            r.map(text).unwrap_or("null".into())
        ))
    };
    let window = JoinWindows::of_time_difference(Duration::from_secs(10));
    views
        .join_stream("inner", &clicks, window, JoinKind::Inner, pair)
        .to("inner-out", "inner", string(), string());
    views
        .join_stream("left", &clicks, window, JoinKind::Left, pair)
        .to("left-out", "left", string(), string());
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for (topic, k, v, t) in [
        ("views", "a", "v1", 1_000),
        ("clicks", "a", "c1", 5_000),  // pairs with v1
        ("views", "b", "v2", 6_000),   // never clicked
        ("clicks", "a", "c2", 30_000), // too far from v1
        ("views", "c", "v3", 60_000),  // advances stream time: v2's window closed
    ] {
        driver.pipe_at(topic, s(k), s(v), t).await.expect("pipe");
        driver.settle().await.expect("settle");
    }
    let values = |records: Vec<Record>| -> Vec<String> {
        records
            .iter()
            .filter_map(|r| r.value.as_ref().map(text))
            .collect()
    };
    assert_eq!(
        values(driver.read_output("inner").await.expect("read")),
        ["v1|c1"]
    );
    assert_eq!(
        values(driver.read_output("left").await.expect("read")),
        ["v1|c1", "v2|null"]
    );
    driver.close().await.expect("close");
}

/// Counts records per key and, every 10 s of stream time, forwards and clears the counts.
struct FlushEveryTenSeconds;

impl StatefulOperator for FlushEveryTenSeconds {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let counts = ctx.store::<String, i64>("pending")?;
        let key = record
            .key
            .as_ref()
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        counts
            .update(&key, |n| Some(n.copied().unwrap_or(0) + 1))
            .map_err(ProcessError::from_state)?;
        Ok(())
    }

    fn punctuation(&self) -> Option<Punctuation> {
        Some(Punctuation {
            interval: Duration::from_secs(10),
            kind: PunctuationType::StreamTime,
        })
    }

    fn punctuate(&self, timestamp: i64, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let counts = ctx.store::<String, i64>("pending")?;
        for entry in counts.iter() {
            let (key, n) = entry.map_err(ProcessError::from_state)?;
            let mut out = Record::new(Some(Value::from(key)), Some(Value::Json(n.into())));
            out.timestamp = Some(timestamp);
            ctx.forward(out);
        }
        counts.clear().map_err(ProcessError::from_state)?;
        Ok(())
    }
}

#[tokio::test]
async fn a_stream_time_punctuator_runs_when_records_advance_stream_time() {
    let b = TopologyBuilder::new();
    b.store(StoreSpec::new("pending"));
    b.source("in", "events", string(), string())
        .stateful("flush", Arc::new(FlushEveryTenSeconds), &["pending"])
        .to("out", "flushed", string(), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for (k, t) in [
        ("a", 0),
        ("a", 3_000),
        ("b", 9_000),
        ("a", 10_000),
        ("b", 12_000),
        ("b", 21_000),
    ] {
        driver
            .pipe_at("events", s(k), s("x"), t)
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let out: Vec<(String, String)> = driver
        .read_output("flushed")
        .await
        .expect("read")
        .iter()
        .map(|r| {
            (
                text(r.key.as_ref().expect("key")),
                text(r.value.as_ref().expect("value")),
            )
        })
        .collect();
    // Due at 10 s (first record at 0 s + 10 s): a=3, b=1; then at 21 s: b=1 (12 s).
    assert_eq!(
        out,
        [
            ("a".to_owned(), "3".to_owned()),
            ("b".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned())
        ]
    );
    driver.close().await.expect("close");
}

#[tokio::test]
async fn join_inputs_that_are_not_co_partitioned_are_refused_at_start() {
    let b = TopologyBuilder::new();
    let regions = b.table("regions", "user-regions", string(), string());
    b.source("clicks", "user-clicks", string(), string())
        .join_table("enriched", &regions, JoinKind::Inner, |l, _| {
            l.cloned().unwrap_or(Value::from(""))
        })
        .to("out", "enriched", string(), string());
    let log = Arc::new(topology::transport::EmbeddedLog::temporary().expect("log"));
    log.create_topic("user-regions", 2).expect("topic");
    log.create_topic("user-clicks", 3).expect("topic");
    let driver = TopologyTestDriver::with_log(
        b.build().expect("valid"),
        log,
        1,
        topology::RuntimeConfig::new("copartition"),
    )
    .expect("driver");
    let error = driver.settle().await.expect_err("refused");
    let message = driver.close().await.expect_err("stopped").to_string();
    assert!(
        matches!(error, topology::DriverError::Stopped(_)),
        "{error}"
    );
    assert!(
        message.contains("user-clicks") && message.contains("user-regions"),
        "{message}"
    );
}

#[tokio::test]
async fn interactive_queries_read_tables_aggregates_and_windows_and_say_where_a_key_lives() {
    let b = TopologyBuilder::new();
    let clicks = b.source("in", "clicks", string(), string());
    clicks.group_by_key().count("clicks-per-user");
    clicks
        .group_by_key()
        // Kept ten minutes for queries (by default a window goes once closed: size + grace).
        .windowed_by(
            TimeWindows::tumbling(Duration::from_secs(60)).retention(Duration::from_secs(600)),
        )
        .count("clicks-per-minute");
    let driver = TopologyTestDriver::with_partitions(b.build().expect("valid"), 3).expect("driver");
    for (user, t) in [
        ("ann", 1_000),
        ("ann", 61_000),
        ("bo", 2_000),
        ("cy", 3_000),
        ("ann", 62_000),
    ] {
        driver
            .pipe_at("clicks", s(user), s("x"), t)
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let stores = driver.stores();
    assert_eq!(
        stores
            .table_get("clicks-per-user", &Value::from("ann"))
            .expect("get"),
        Some(Value::Json(3.into()))
    );
    assert_eq!(
        stores
            .table_get("clicks-per-user", &Value::from("zed"))
            .expect("get"),
        None
    );
    let all = stores
        .table_range("clicks-per-user", None, None)
        .expect("scan");
    assert_eq!(
        all.iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect::<Vec<_>>(),
        [
            ("ann".into(), "3".into()),
            ("bo".into(), "1".into()),
            ("cy".into(), "1".into())
        ]
    );
    let some = stores
        .table_range(
            "clicks-per-user",
            Some(&Value::from("b")),
            Some(&Value::from("c")),
        )
        .expect("range");
    assert_eq!(some.len(), 1);
    let windows = stores
        .window_fetch("clicks-per-minute", &Value::from("ann"), 0, 120_000)
        .expect("fetch");
    assert_eq!(
        windows
            .iter()
            .map(|(w, v)| (w.start, text(v)))
            .collect::<Vec<_>>(),
        [(0, "1".to_owned()), (60_000, "2".to_owned())]
    );
    // The embedded log has one process: every key is local, no instance announced itself.
    for user in ["ann", "bo", "cy"] {
        let owner = stores
            .owner_of("clicks-per-user", &Value::from(user))
            .await
            .expect("owner");
        assert!(owner.local, "{owner:?}");
        assert_eq!(owner.application_server, None);
        let held = driver
            .stores()
            .store::<Vec<u8>, topology::stateful::StoredValue>(owner.task, "clicks-per-user")
            .expect("store")
            .expect("running")
            .get(user.as_bytes())
            .expect("get");
        assert!(held.is_some(), "{user} is in task {}", owner.task);
    }
    assert!(matches!(
        stores.owner_of("no-such-store", &Value::from("ann")).await,
        Err(topology::stateful::QueryError::UnknownStore(_))
    ));
    driver.close().await.expect("close");
}

/// Every minute of wall-clock time, forwards how many records arrived since the last time.
struct ReportEveryMinute;

impl StatefulOperator for ReportEveryMinute {
    fn process(&self, _record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let seen = ctx.store::<String, i64>("seen")?;
        seen.update("records", |n| Some(n.copied().unwrap_or(0) + 1))
            .map_err(ProcessError::from_state)?;
        Ok(())
    }

    fn punctuation(&self) -> Option<Punctuation> {
        Some(Punctuation {
            interval: Duration::from_secs(60),
            kind: PunctuationType::WallClockTime,
        })
    }

    fn punctuate(&self, timestamp: i64, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let seen = ctx.store::<String, i64>("seen")?;
        let n = seen
            .get("records")
            .map_err(ProcessError::from_state)?
            .unwrap_or(0);
        seen.delete("records").map_err(ProcessError::from_state)?;
        let mut out = Record::new(Some(Value::from("records")), Some(Value::Json(n.into())));
        out.timestamp = Some(timestamp);
        ctx.forward(out);
        Ok(())
    }
}

#[tokio::test]
async fn a_wall_clock_punctuator_runs_when_the_clock_moves_whether_records_arrive_or_not() {
    let b = TopologyBuilder::new();
    b.store(StoreSpec::new("seen"));
    b.source("in", "events", string(), string())
        .stateful("report", Arc::new(ReportEveryMinute), &["seen"])
        .to("out", "reports", string(), Arc::new(JsonSerde));
    let driver = TopologyTestDriver::new(b.build().expect("valid")).expect("driver");
    for i in 0..3 {
        driver
            .pipe("events", s(&format!("k{i}")), s("x"))
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    driver
        .advance_wall_clock(Duration::from_secs(30))
        .await
        .expect("advance");
    assert!(
        driver
            .read_output("reports")
            .await
            .expect("read")
            .is_empty()
    );
    driver
        .advance_wall_clock(Duration::from_secs(31))
        .await
        .expect("advance");
    driver
        .advance_wall_clock(Duration::from_secs(61))
        .await
        .expect("advance");
    let reports: Vec<String> = driver
        .read_output("reports")
        .await
        .expect("read")
        .iter()
        .map(|r| text(r.value.as_ref().expect("value")))
        .collect();
    assert_eq!(reports, ["3", "0"]);
    driver.close().await.expect("close");
}

const STATEFUL_FILE: &str = r#"
application_id: shop-analytics
nodes:
  - name: products
    type: table
    topic: mongo.products
    key: string
    value: json
    cdc: true
  - name: orders
    type: source
    topic: orders
    key: string
    value: json
  - name: enriched
    type: join
    from: orders
    table: products
    kind: left
    into: product
  - name: enriched-out
    type: sink
    from: enriched
    topic: enriched-orders
    key: string
    value: json
  - name: orders-per-region
    type: count
    from: orders
    group_by: {field: region}
    window: {size_ms: 60000, grace_ms: 5000, late: drop}
    suppress: true
  - name: counts-out
    type: sink
    from: orders-per-region
    topic: region-counts
    key: json
    value: long
"#;

#[tokio::test]
async fn the_stateful_kinds_of_the_configuration_file_run_like_the_builder_dsl() {
    let config = topology::config::TopologyConfig::from_yaml(STATEFUL_FILE).expect("parses");
    let topology = config
        .build(&topology::config::Registry::new())
        .expect("valid");
    assert_eq!(
        topology.internal_topics(),
        ["orders-per-region-by-repartition"]
    );
    let driver = TopologyTestDriver::new(topology).expect("driver");
    let product = |name: &str| {
        Some(Value::Json(serde_json::json!({
            "op": "c", "after": format!("{{\"name\": \"{name}\"}}")
        })))
    };
    driver
        .pipe("mongo.products", s("p1"), product("mug"))
        .await
        .expect("pipe");
    driver.settle().await.expect("settle");
    for (id, region, t) in [
        ("p1", "eu", 1_000),
        ("p2", "eu", 2_000),
        ("p1", "us", 3_000),
        ("p1", "eu", 70_000),
    ] {
        let order = Value::Json(serde_json::json!({"region": region}));
        driver
            .pipe_at("orders", s(id), Some(order), t)
            .await
            .expect("pipe");
    }
    driver.settle().await.expect("settle");
    let enriched: Vec<serde_json::Value> = driver
        .read_output("enriched-orders")
        .await
        .expect("read")
        .iter()
        .map(|r| r.value.as_ref().expect("value").to_json())
        .collect();
    assert_eq!(enriched[0]["product"]["name"], "mug");
    assert_eq!(enriched[1]["product"], serde_json::Value::Null);
    let finals = windowed(&driver, "region-counts").await;
    assert_eq!(
        finals,
        [
            ("eu@0".to_owned(), "2".to_owned()),
            ("us@0".to_owned(), "1".to_owned())
        ]
    );
    driver.close().await.expect("close");
}

#[test]
fn the_configuration_file_says_what_is_wrong_with_a_stateful_node() {
    let bad = r#"
nodes:
  - name: in
    type: source
    topic: t
  - name: c
    type: count
    from: in
    suppress: true
    window: {size_ms: 1000, advance_ms: 2000, late: sometimes}
  - name: j
    type: join
    from: in
    table: nowhere
    kind: outer
"#;
    let errors = topology::config::TopologyConfig::from_yaml(bad)
        .expect("parses")
        .build(&topology::config::Registry::new())
        .expect_err("invalid")
        .to_string();
    for expected in [
        "nodes[1].window.advance_ms",
        "nodes[1].window.late: unknown late policy `sometimes`",
        "nodes[2].table: unknown table node `nowhere`",
        "nodes[2].kind: a stream–table join is `inner` or `left`, not `outer`",
    ] {
        assert!(errors.contains(expected), "{expected} in {errors}");
    }
}
