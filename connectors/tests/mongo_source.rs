//! The native change-stream source against the real SecantusDB server: the records it emits are
//! Debezium's, field by field (compared with the shared fixtures and with Debezium 3.6.1's own
//! output against the same server), and a restart loses nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use connectors::debezium::{ChangeEvent, Op, SourcePosition, decode_avro, decode_json};
use connectors::mongo_source::{ChangeEncoder, MongoSourceConfig, SourceStats};
use mongodb::bson::{Document, doc};
use serde_json::Value;
use tokio::sync::oneshot;
use topology::serdes::{AvroSerde, MemorySchemaRegistry, Serde};

use common::{Collected, mongo_uri, unique_db};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/debezium-mongodb"
);
/// Debezium 3.6.1's output for the same operations against SecantusDB (infrastructure/TRIALS.md).
const DEBEZIUM_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../infrastructure/connect/samples/schemas-disabled.txt"
);

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn fixture(name: &str) -> Value {
    read_json(&format!("{FIXTURES}/{name}"))
}

/// Debezium's sample lines `key | value`.
fn debezium_sample() -> Vec<(Value, Value)> {
    let text = std::fs::read_to_string(DEBEZIUM_SAMPLE)
        .unwrap_or_else(|e| panic!("cannot read {DEBEZIUM_SAMPLE}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(" | ").expect("key | value");
            (
                serde_json::from_str(k).expect("key JSON"),
                serde_json::from_str(v).expect("value JSON"),
            )
        })
        .collect()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Same field names; same JSON type where both are non-null (`nullable` fields may be null on
/// one side).
fn assert_same_shape(what: &str, ours: &Value, theirs: &Value) {
    assert_eq!(keys(ours), keys(theirs), "{what}: field names differ");
    for (name, theirs_v) in theirs.as_object().expect("object") {
        let ours_v = &ours[name];
        if !ours_v.is_null() && !theirs_v.is_null() {
            assert_eq!(
                json_type(ours_v),
                json_type(theirs_v),
                "{what}: type of {name} differs ({ours_v} vs {theirs_v})"
            );
        }
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), connectors::mongo_source::SourceError>>,
    stats: Arc<SourceStats>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("source task")
            .expect("source stops cleanly");
    }
}

fn start(config: MongoSourceConfig, encoder: ChangeEncoder, out: &Collected) -> Running {
    let mut source = config.build(encoder).expect("source builds");
    let stats = source.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let sink = out.sink();
    let task = tokio::spawn(async move {
        source
            .run(sink, async {
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, task, stats }
}

async fn collection(uri: &str, db: &str) -> mongodb::Collection<Document> {
    mongodb::Client::with_uri_str(uri)
        .await
        .expect("client")
        .database(db)
        .collection("products")
}

fn decode_all(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<ChangeEvent> {
    records
        .iter()
        .map(|(k, v)| {
            decode_json(Some(k), v.as_deref())
                .expect("our record decodes")
                .into_change()
                .expect("a change, not a heartbeat")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_what_debezium_emits() {
    let uri = mongo_uri().await;
    let db = unique_db();
    let products = collection(&uri, &db).await;
    // The operations of infrastructure/connect/trial.sh, so the output can be compared with
    // Debezium's own.
    products
        .insert_one(doc! {"_id": "seed-1", "sku": "SEED-1", "name": "seed", "price": 1.5})
        .await
        .expect("seed");
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = MongoSourceConfig::new(&uri, &db, "products", state.path());
    config.topic_prefix = "catalog".into();
    let encoder = ChangeEncoder::json(false, "catalog", &db, "products");
    let out = Collected::default();
    let running = start(config, encoder, &out);

    out.wait_for(1, "the snapshot read").await;
    products
        .insert_one(doc! {"_id": "p-1", "sku": "SKU-1", "name": "Widget", "price": 9.99, "tags": ["a", "b"]})
        .await
        .expect("insert");
    out.wait_for(2, "the insert").await;
    products
        .update_one(
            doc! {"_id": "p-1"},
            doc! {"$set": {"price": 12.5}, "$unset": {"tags": ""}},
        )
        .await
        .expect("update");
    out.wait_for(3, "the update").await;
    products
        .replace_one(
            doc! {"_id": "p-1"},
            doc! {"sku": "SKU-1", "name": "Widget v2", "price": 13.0},
        )
        .await
        .expect("replace");
    out.wait_for(4, "the replace").await;
    products
        .delete_one(doc! {"_id": "p-1"})
        .await
        .expect("delete");
    out.wait_for(6, "the delete and its tombstone").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    let records = out.snapshot();
    assert_eq!(records.len(), 6, "exactly r c u u d tombstone");

    // 1. Our own decoder reads every record, in order.
    let events = decode_all(&records);
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(
        ops,
        [
            Op::Read,
            Op::Create,
            Op::Update,
            Op::Update,
            Op::Delete,
            Op::Tombstone
        ]
    );
    assert_eq!(events[0].after.as_ref().expect("after")["price"], 1.5);
    assert_eq!(
        events[1].after.as_ref().expect("after")["tags"],
        serde_json::json!(["a", "b"])
    );
    assert_eq!(
        events[3].after.as_ref().expect("after")["name"],
        "Widget v2"
    );
    assert!(events[4].after.is_none());
    for e in &events[1..5] {
        assert_eq!(e.id, serde_json::json!("p-1"));
    }
    let positions: Vec<SourcePosition> = events[1..5]
        .iter()
        .map(|e| e.position().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions ascend: {positions:?}"
    );

    // 2. Byte for byte where Debezium is deterministic: keys, `after`, `updateDescription`,
    //    `op`, tombstones; the shape of everything else.
    let sample = debezium_sample();
    assert_eq!(sample.len(), 6);
    for (i, ((key, value), (dbz_key, dbz_value))) in records.iter().zip(&sample).enumerate() {
        let key: Value = serde_json::from_slice(key).expect("key JSON");
        assert_eq!(&key, dbz_key, "record {i}: key");
        let Some(value) = value else {
            assert!(
                dbz_value.is_null(),
                "record {i}: we wrote a tombstone, Debezium did not"
            );
            continue;
        };
        let value: Value = serde_json::from_slice(value).expect("value JSON");
        assert_same_shape(&format!("record {i} value"), &value, dbz_value);
        assert_same_shape(
            &format!("record {i} source"),
            &value["source"],
            &dbz_value["source"],
        );
        for field in ["before", "after", "updateDescription", "op", "transaction"] {
            assert_eq!(value[field], dbz_value[field], "record {i}: {field}");
        }
        for field in [
            "connector",
            "name",
            "snapshot",
            "sequence",
            "lsid",
            "txnNumber",
        ] {
            assert_eq!(
                value["source"][field], dbz_value["source"][field],
                "record {i}: source.{field}"
            );
        }
        assert_eq!(value["source"]["db"], db.as_str());
        assert_eq!(value["source"]["collection"], "products");
        // Null exactly where Debezium has null (wallTime of a snapshot read).
        assert_eq!(
            value["source"]["wallTime"].is_null(),
            dbz_value["source"]["wallTime"].is_null(),
            "record {i}: source.wallTime"
        );
        assert_eq!(
            value["source"]["ord"].as_i64() == Some(-1),
            dbz_value["source"]["ord"] == -1
        );
    }

    // 3. The shared fixtures (Debezium 2.7.0 via Paimon): same fields and types.
    let insert =
        serde_json::from_slice::<Value>(records[1].1.as_ref().expect("value")).expect("JSON");
    let delete =
        serde_json::from_slice::<Value>(records[4].1.as_ref().expect("value")).expect("JSON");
    let update =
        serde_json::from_slice::<Value>(records[3].1.as_ref().expect("value")).expect("JSON");
    for (ours, name) in [
        (&insert, "dbz-2.7.0-paimon-insert"),
        (&update, "dbz-2.7.0-paimon-update-after-only"),
        (&delete, "dbz-2.7.0-paimon-delete"),
    ] {
        let theirs = fixture(&format!("{name}.value.json"));
        assert_same_shape(name, ours, &theirs);
        assert_same_shape(
            &format!("{name} source"),
            &ours["source"],
            &theirs["source"],
        );
        let their_key = fixture(&format!("{name}.key.json"));
        let our_key: Value = serde_json::from_slice(&records[1].0).expect("key JSON");
        assert_same_shape(&format!("{name} key"), &our_key, &their_key);
        assert!(ours["after"].is_string() || ours["after"].is_null());
    }
    assert_eq!(insert["source"]["snapshot"], "false");

    collection(&uri, &db)
        .await
        .drop()
        .await
        .expect("drop test collection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_decode_back() {
    let uri = mongo_uri().await;
    let db = unique_db();
    let products = collection(&uri, &db).await;
    products
        .insert_one(doc! {"_id": mongodb::bson::oid::ObjectId::new(), "n": 5_i64, "at": mongodb::bson::DateTime::from_millis(1_739_455_297_970)})
        .await
        .expect("seed");
    let registry = Arc::new(MemorySchemaRegistry::default());
    let encoder =
        ChangeEncoder::avro(registry.clone(), "catalog", &db, "products").expect("schemas");
    let state = tempfile::tempdir().expect("tempdir");
    let config = MongoSourceConfig::new(&uri, &db, "products", state.path());
    let topic = config.topic();
    let out = Collected::default();
    let running = start(config, encoder, &out);
    out.wait_for(1, "the snapshot read").await;
    products
        .insert_one(doc! {"_id": 7_i32, "x": "y"})
        .await
        .expect("insert");
    products
        .delete_one(doc! {"_id": 7_i32})
        .await
        .expect("delete");
    out.wait_for(4, "insert, delete, tombstone").await;
    running.stop().await;

    let serde = AvroSerde::new(registry);
    let mut events = Vec::new();
    for (k, v) in out.snapshot() {
        assert_eq!(k[0], 0, "Confluent magic byte");
        let key = serde
            .deserialize(&topic, true, &k)
            .await
            .expect("key decodes");
        let value = match &v {
            Some(v) => Some(
                serde
                    .deserialize(&topic, false, v)
                    .await
                    .expect("value decodes"),
            ),
            None => None,
        };
        let as_avro = |x: &topology::Value| match x {
            topology::Value::Avro(a) => a.clone(),
            other => panic!("not Avro: {other:?}"),
        };
        let key = as_avro(&key);
        let value = value.as_ref().map(as_avro);
        events.push(
            decode_avro(Some(&key), value.as_ref())
                .expect("decodes")
                .into_change()
                .expect("a change"),
        );
    }
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Read, Op::Create, Op::Delete, Op::Tombstone]);
    let seed = events[0].after.as_ref().expect("after");
    assert_eq!(seed["n"], 5);
    assert_eq!(
        seed["at"],
        serde_json::json!({"$date": "2025-02-13T14:01:37.97Z"})
    );
    assert_eq!(events[1].id, serde_json::json!(7));
    assert_eq!(events[3].id, serde_json::json!(7));
    products.drop().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_stored_token_without_loss() {
    let uri = mongo_uri().await;
    let db = unique_db();
    let products = collection(&uri, &db).await;
    for i in 0..3 {
        products
            .insert_one(doc! {"_id": format!("d{i}"), "v": 0})
            .await
            .expect("seed");
    }
    let state = tempfile::tempdir().expect("tempdir");
    let config = MongoSourceConfig::new(&uri, &db, "products", state.path());

    // Run 1: snapshot of three, then two inserts; stop.
    let first = Collected::default();
    let running = start(
        config.clone(),
        ChangeEncoder::json(false, "catalog", &db, "products"),
        &first,
    );
    first.wait_for(3, "three snapshot reads").await;
    products
        .insert_one(doc! {"_id": "d3", "v": 0})
        .await
        .expect("insert");
    products
        .insert_one(doc! {"_id": "d4", "v": 0})
        .await
        .expect("insert");
    first.wait_for(5, "two inserts").await;
    let stats = running.stats.clone();
    running.stop().await;
    assert!(SourceStats::get(&stats.offsets_stored) >= 1);

    // While stopped: more changes.
    products
        .insert_one(doc! {"_id": "d5", "v": 0})
        .await
        .expect("insert");
    products
        .update_one(doc! {"_id": "d3"}, doc! {"$set": {"v": 1}})
        .await
        .expect("update");
    products
        .delete_one(doc! {"_id": "d4"})
        .await
        .expect("delete");

    // Run 2: same state dir.
    let second = Collected::default();
    let running = start(
        config,
        ChangeEncoder::json(false, "catalog", &db, "products"),
        &second,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = decode_all(&second.snapshot());
        if events.iter().any(|e| e.op == Op::Tombstone) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run 2 never reached the delete: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;

    let run1 = decode_all(&first.snapshot());
    let run2 = decode_all(&second.snapshot());
    assert!(
        run2.iter().all(|e| e.op != Op::Read),
        "no second snapshot: {run2:?}"
    );

    // Nothing lost: every change is in one run or the other.
    let seen: Vec<(Op, Value)> = run1
        .iter()
        .chain(&run2)
        .map(|e| (e.op, e.id.clone()))
        .collect();
    for expected in [
        (Op::Read, "d0"),
        (Op::Read, "d1"),
        (Op::Read, "d2"),
        (Op::Create, "d3"),
        (Op::Create, "d4"),
        (Op::Create, "d5"),
        (Op::Update, "d3"),
        (Op::Delete, "d4"),
        (Op::Tombstone, "d4"),
    ] {
        assert!(
            seen.contains(&(expected.0, Value::from(expected.1))),
            "{expected:?} was lost; run 1 {run1:?}, run 2 {run2:?}"
        );
    }

    // No reordering: run 2 re-emits at most what run 1 saw last, then goes forward.
    let last_run1 = run1
        .iter()
        .filter_map(ChangeEvent::position)
        .filter(|p| p.ord >= 0)
        .max()
        .expect("run 1 saw changes");
    let positions: Vec<SourcePosition> = run2.iter().filter_map(ChangeEvent::position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "run 2 in order: {positions:?}"
    );
    let mut by_id: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for e in &run2 {
        by_id.entry(e.id.to_string()).or_default().push(e.op);
    }
    for e in &run2 {
        if let Some(p) = e.position() {
            let repeat = run1.iter().any(|r| r.op == e.op && r.id == e.id);
            if repeat {
                assert!(p <= last_run1, "a repeat after what run 1 saw: {e:?}");
            } else {
                assert!(p > last_run1, "a new event before what run 1 saw: {e:?}");
            }
        }
    }
    products.drop().await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_collection_stops_with_a_clear_error() {
    let uri = mongo_uri().await;
    let db = unique_db();
    let products = collection(&uri, &db).await;
    products.insert_one(doc! {"_id": 1}).await.expect("seed");
    let state = tempfile::tempdir().expect("tempdir");
    let config = MongoSourceConfig::new(&uri, &db, "products", state.path());
    let out = Collected::default();
    let running = start(
        config,
        ChangeEncoder::json(false, "catalog", &db, "products"),
        &out,
    );
    out.wait_for(1, "the snapshot read").await;
    products.drop().await.expect("drop");
    let result = tokio::time::timeout(Duration::from_secs(20), running.task)
        .await
        .expect("the source stops on its own")
        .expect("task");
    let err = result.expect_err("a dropped collection is an error");
    let text = err.to_string();
    assert!(!err.is_transient());
    assert!(
        text.contains("drop") || text.contains("invalidate"),
        "{text}"
    );
    assert!(text.contains(&db), "{text}");
}
