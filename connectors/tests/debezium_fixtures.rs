//! Every real Debezium MongoDB event in `shared/fixtures/debezium-mongodb` decodes, as given, and
//! survives the Avro and JSON round trips through the encoders.

use std::path::{Path, PathBuf};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use connectors::debezium::{
    AvroSchemas, ChangeEvent, Op, Record, SourcePosition, decode_avro, decode_cli_input,
    decode_json, encode_json,
};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/debezium-mongodb"
);

/// The namespace of the DERIVED schemas as written in the fixtures.
const DERIVED_NAMESPACE: &str = "dbserver1.inventory.customers";

fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from(FIXTURES);
    assert!(
        dir.is_dir(),
        "fixture directory {} is missing: the shared folder must sit beside the repository",
        dir.display()
    );
    dir
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

fn read_json(name: &str) -> Value {
    serde_json::from_slice(&read(name))
        .unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
}

fn schema(name: &str) -> Schema {
    let text = String::from_utf8(read(name)).expect("schema is UTF-8");
    Schema::parse_str(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

/// The Paimon (Debezium 2.7.0) key/value pairs: (stem, op).
const PAIMON: &[(&str, Op)] = &[
    ("dbz-2.7.0-paimon-insert", Op::Create),
    ("dbz-2.7.0-paimon-update-after-only", Op::Update),
    ("dbz-2.7.0-paimon-update-with-preimage", Op::Update),
    ("dbz-2.7.0-paimon-delete", Op::Delete),
    ("dbz-2.7.0-paimon-delete-string-id", Op::Delete),
    ("dbz-2.7.0-paimon-delete-with-preimage", Op::Delete),
];
const DOCS_PAYLOAD: &str = "dbz-docs-update-with-updateDescription.payload.json";

fn decode_change(key: Option<&[u8]>, value: Option<&[u8]>) -> ChangeEvent {
    match decode_json(key, value).expect("fixture decodes") {
        Record::Change(event) => event,
        Record::Heartbeat(h) => panic!("fixture decoded as heartbeat {h:?}"),
    }
}

fn paimon(stem: &str) -> ChangeEvent {
    decode_change(
        Some(&read(&format!("{stem}.key.json"))),
        Some(&read(&format!("{stem}.value.json"))),
    )
}

fn docs() -> ChangeEvent {
    decode_change(None, Some(&read(DOCS_PAYLOAD)))
}

/// Every event fixture (including each key alone, as its tombstone).
fn all_events() -> Vec<(String, ChangeEvent)> {
    let mut events = Vec::new();
    for (stem, _) in PAIMON {
        events.push((stem.to_string(), paimon(stem)));
        let key = read(&format!("{stem}.key.json"));
        events.push((format!("{stem} tombstone"), decode_change(Some(&key), None)));
    }
    events.push((DOCS_PAYLOAD.to_owned(), docs()));
    events
}

fn oid() -> Value {
    json!({"$oid": "67ab25755c0d5ac87eb8c632"})
}

fn paimon_doc(tag: &str, updated_at: &str) -> Value {
    json!({
        "_id": oid(),
        "created_at": 1736207571013_i64,
        "created_by": "peter",
        "tags": [tag],
        "updated_at": {"$date": updated_at},
    })
}

const PENDING_AT: &str = "2025-02-13T14:01:37.97Z";
const SUCCEED_AT: &str = "2025-02-13T14:03:17.97Z";

#[test]
fn every_fixture_file_is_covered() {
    let mut covered: Vec<String> = PAIMON
        .iter()
        .flat_map(|(stem, _)| [format!("{stem}.key.json"), format!("{stem}.value.json")])
        .collect();
    covered.push(DOCS_PAYLOAD.to_owned());
    covered.extend(
        [
            "DERIVED-debezium-3.x-mongodb-envelope.avsc",
            "DERIVED-debezium-3.x-mongodb-key.avsc",
            "mongo-kafka-source-default-key.avsc",
            "mongo-kafka-source-default-value.avsc",
            "SOURCES.md",
        ]
        .map(String::from),
    );
    for entry in std::fs::read_dir(fixture_dir()).expect("fixture dir lists") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            covered.contains(&name),
            "fixture {name} has no test: add it here"
        );
    }
    for name in &covered {
        assert!(
            Path::new(FIXTURES).join(name).is_file(),
            "fixture {name} is missing"
        );
    }
}

#[test]
fn paimon_fixtures_decode_with_op_db_collection_id() {
    for (stem, op) in PAIMON {
        let event = paimon(stem);
        assert_eq!(event.op, *op, "{stem}");
        assert_eq!(event.db.as_deref(), Some("bigdata_test"), "{stem}");
        assert_eq!(
            event.collection.as_deref(),
            Some("sync_test_table"),
            "{stem}"
        );
        assert_eq!(event.ts_ms, Some(1739321992890), "{stem}");
        assert_eq!(event.update_description, None, "{stem}");
        assert_eq!(event.transaction, None, "{stem}");
        let source = event.source.as_ref().expect("source");
        assert_eq!(source.version, "2.7.0.Final");
        assert_eq!(source.connector, "mongodb");
        assert_eq!(source.name, "mongodb_bigdata_test");
        assert_eq!(source.snapshot.as_deref(), Some("false"));
        assert!(!source.is_snapshot());
        assert_eq!(source.ts_us, Some(1739321992000000));
        assert_eq!(source.ts_ns, Some(1739321992000000000));
        assert_eq!(
            (source.lsid.as_deref(), source.txn_number, source.wall_time),
            (None, None, None)
        );
        assert_eq!(
            event.position(),
            Some(SourcePosition {
                seconds: 1739321992,
                ord: 28
            })
        );
        let expected_id = if stem.ends_with("string-id") {
            json!("67ab25755c0d5ac87eb8c632")
        } else {
            oid()
        };
        assert_eq!(event.id, expected_id, "{stem}");
    }
}

#[test]
fn paimon_documents_are_relaxed_extended_json() {
    let insert = paimon("dbz-2.7.0-paimon-insert");
    assert_eq!(insert.after, Some(paimon_doc("pending", PENDING_AT)));
    assert_eq!(insert.before, None);

    let replace = paimon("dbz-2.7.0-paimon-update-after-only");
    assert_eq!(replace.after, Some(paimon_doc("succeed", SUCCEED_AT)));
    assert_eq!(replace.before, None);

    let update = paimon("dbz-2.7.0-paimon-update-with-preimage");
    assert_eq!(update.before, Some(paimon_doc("pending", PENDING_AT)));
    assert_eq!(update.after, Some(paimon_doc("succeed", SUCCEED_AT)));

    for stem in [
        "dbz-2.7.0-paimon-delete",
        "dbz-2.7.0-paimon-delete-string-id",
    ] {
        let delete = paimon(stem);
        assert_eq!((delete.before, delete.after), (None, None), "{stem}");
    }
    let delete = paimon("dbz-2.7.0-paimon-delete-with-preimage");
    assert_eq!(delete.before, Some(paimon_doc("pending", PENDING_AT)));
    assert_eq!(delete.after, None);
}

#[test]
fn docs_update_with_update_description_decodes() {
    let event = docs();
    assert_eq!(event.op, Op::Update);
    assert_eq!(event.db.as_deref(), Some("inventory"));
    assert_eq!(event.collection.as_deref(), Some("customers"));
    assert_eq!(
        event.id,
        json!(1004),
        "id comes from after._id without a key"
    );
    assert_eq!(
        event.after,
        Some(
            json!({"_id": 1004, "first_name": "Anne Marie", "last_name": "Kretchmar",
                    "email": "annek@noanswer.org"})
        )
    );
    assert_eq!(
        event.before,
        Some(
            json!({"_id": 1004, "first_name": "unknown", "last_name": "Kretchmar",
                    "email": "annek@noanswer.org"})
        )
    );
    let ud = event
        .update_description
        .as_ref()
        .expect("updateDescription");
    assert_eq!(ud.updated_fields, Some(json!({"first_name": "Anne Marie"})));
    assert_eq!((&ud.removed_fields, &ud.truncated_arrays), (&None, &None));
    assert_eq!(event.ts_ms, Some(1465491461815));
    let source = event.source.as_ref().expect("source");
    assert_eq!(source.name, "fulfillment");
    assert_eq!(source.rs.as_deref(), Some("rs0"));
    assert_eq!(
        source.snapshot.as_deref(),
        Some("false"),
        "boolean snapshot kept as text"
    );
    assert_eq!(source.txn_number, Some(1));
    assert!(
        source
            .lsid
            .as_deref()
            .is_some_and(|l| l.contains("FA7YEzXgQXSX9OxmzllH2w=="))
    );
    assert_eq!(
        event.position(),
        Some(SourcePosition {
            seconds: 1558965508,
            ord: 1
        })
    );
}

#[test]
fn keys_alone_are_tombstones() {
    for (stem, _) in PAIMON {
        let event = decode_change(Some(&read(&format!("{stem}.key.json"))), None);
        assert_eq!(event.op, Op::Tombstone, "{stem}");
        assert_eq!(
            (event.db, event.collection, event.source),
            (None, None, None)
        );
        assert_eq!(event.id, paimon(stem).id, "{stem}");
    }
}

#[test]
fn the_wrapped_json_form_decodes_like_the_bare_one() {
    let bare = paimon("dbz-2.7.0-paimon-update-with-preimage");
    let key = json!({
        "schema": {"type": "struct", "fields": [{"type": "string", "optional": false, "field": "id"}],
                   "optional": false, "name": "x.Key"},
        "payload": read_json("dbz-2.7.0-paimon-update-with-preimage.key.json"),
    });
    let value = json!({
        "schema": {"type": "struct", "fields": [], "optional": false, "name": "x.Envelope"},
        "payload": read_json("dbz-2.7.0-paimon-update-with-preimage.value.json"),
    });
    let wrapped = decode_change(
        Some(&serde_json::to_vec(&key).expect("json")),
        Some(&serde_json::to_vec(&value).expect("json")),
    );
    assert_eq!(wrapped, bare);
}

#[test]
fn derived_schemas_are_the_ones_the_encoder_uses() {
    let ours = AvroSchemas::new(DERIVED_NAMESPACE).expect("schemas build");
    let envelope = schema("DERIVED-debezium-3.x-mongodb-envelope.avsc");
    let key = schema("DERIVED-debezium-3.x-mongodb-key.avsc");
    assert_eq!(ours.value().canonical_form(), envelope.canonical_form());
    assert_eq!(ours.key().canonical_form(), key.canonical_form());
    // The copies embedded in the crate are the fixtures, byte for byte.
    assert_eq!(
        include_str!("../src/debezium/envelope.avsc").as_bytes(),
        read("DERIVED-debezium-3.x-mongodb-envelope.avsc")
    );
    assert_eq!(
        include_str!("../src/debezium/key.avsc").as_bytes(),
        read("DERIVED-debezium-3.x-mongodb-key.avsc")
    );
}

/// Writes an Avro datum (no container, no wire-format header) and reads it back.
fn bytes_round_trip(schema: &Schema, value: AvroValue) -> AvroValue {
    let bytes = GenericDatumWriter::builder(schema)
        .build()
        .expect("writer builds")
        .write_value_to_vec(value)
        .expect("datum writes");
    GenericDatumReader::builder(schema)
        .build()
        .expect("reader builds")
        .read_value(&mut bytes.as_slice())
        .expect("datum reads")
}

/// Encodes with our encoder, validates against the DERIVED schemas as given, writes and reads
/// Avro bytes, decodes.
fn avro_round_trip(event: &ChangeEvent) -> ChangeEvent {
    let envelope = schema("DERIVED-debezium-3.x-mongodb-envelope.avsc");
    let key_schema = schema("DERIVED-debezium-3.x-mongodb-key.avsc");
    let schemas = AvroSchemas::new(DERIVED_NAMESPACE).expect("schemas build");
    let (key, value) = schemas.encode(event).expect("encodes");

    assert!(key.validate(&key_schema), "key does not validate: {key:?}");
    let key = key.resolve(&key_schema).expect("key resolves");
    let key_back = bytes_round_trip(&key_schema, key);

    let value_back = value.map(|value| {
        assert!(
            value.validate(&envelope),
            "value does not validate: {value:?}"
        );
        let value = value.resolve(&envelope).expect("value resolves");
        bytes_round_trip(&envelope, value)
    });
    decode_avro(Some(&key_back), value_back.as_ref())
        .expect("Avro decodes")
        .into_change()
        .expect("a change")
}

#[test]
fn every_fixture_round_trips_through_avro_bytes() {
    for (name, event) in all_events() {
        let mut expected = event.clone();
        // `rs` is a pre-3.x source field: the 3.x Avro schema has no place for it.
        if let Some(source) = expected.source.as_mut() {
            source.rs = None;
        }
        assert_eq!(avro_round_trip(&event), expected, "{name}");
    }
}

#[test]
fn every_fixture_round_trips_through_json_both_forms() {
    for (name, event) in all_events() {
        for schemas_enable in [false, true] {
            let (key, value) =
                encode_json(&event, schemas_enable, DERIVED_NAMESPACE).expect("encodes");
            let key = serde_json::to_vec(&key).expect("json");
            let value = value.map(|v| serde_json::to_vec(&v).expect("json"));
            let back = decode_change(Some(&key), value.as_deref());
            assert_eq!(back, event, "{name} (schemas.enable={schemas_enable})");
        }
    }
}

#[test]
fn encoder_writes_what_debezium_wrote() {
    for (stem, _) in PAIMON {
        let (key, value) = encode_json(&paimon(stem), false, DERIVED_NAMESPACE).expect("encodes");
        assert_eq!(key, read_json(&format!("{stem}.key.json")), "{stem} key");
        let value = value.expect("not a tombstone");
        let original = read_json(&format!("{stem}.value.json"));
        assert_eq!(value, original, "{stem} value");
        // `after`/`before` strings are byte-identical to Debezium's STRICT rendering.
        for field in ["after", "before"] {
            assert_eq!(value[field], original[field], "{stem} {field}");
        }
    }
}

#[test]
fn wrapped_json_carries_connect_schemas() {
    let (key, value) =
        encode_json(&docs(), true, "fulfillment.inventory.customers").expect("encodes");
    assert_eq!(key["schema"]["name"], "fulfillment.inventory.customers.Key");
    let value = value.expect("not a tombstone");
    assert_eq!(
        value["schema"]["name"],
        "fulfillment.inventory.customers.Envelope"
    );
    let field_names: Vec<&str> = value["schema"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert_eq!(
        field_names,
        [
            "before",
            "after",
            "updateDescription",
            "source",
            "op",
            "ts_ms",
            "transaction"
        ]
    );
    assert_eq!(value["payload"]["op"], "u");
}

#[test]
fn avro_tombstone_is_a_key_without_value() {
    let key = AvroValue::Record(vec![(
        "id".into(),
        AvroValue::String(r#"{"$oid": "67ab25755c0d5ac87eb8c632"}"#.into()),
    )]);
    let event = decode_avro(Some(&key), None)
        .expect("decodes")
        .into_change()
        .expect("change");
    assert_eq!(event, ChangeEvent::tombstone(oid()));
}

#[test]
fn cli_summaries_of_the_fixtures() {
    let insert = decode_cli_input(
        Some(&read("dbz-2.7.0-paimon-insert.key.json")),
        Some(&read("dbz-2.7.0-paimon-insert.value.json")),
    )
    .expect("decodes");
    assert_eq!(
        insert,
        json!({"op": "c", "db": "bigdata_test", "collection": "sync_test_table", "id": oid(),
               "after": paimon_doc("pending", PENDING_AT)})
    );
    let tombstone = decode_cli_input(
        Some(&read("dbz-2.7.0-paimon-delete-string-id.key.json")),
        None,
    )
    .expect("decodes");
    assert_eq!(
        tombstone,
        json!({"op": "tombstone", "db": null, "collection": null,
               "id": "67ab25755c0d5ac87eb8c632", "after": null})
    );
    let docs = decode_cli_input(None, Some(&read(DOCS_PAYLOAD))).expect("decodes");
    assert_eq!(docs["op"], "u");
    assert_eq!(docs["id"], json!(1004));
    assert_eq!(docs["after"]["first_name"], "Anne Marie");
    let delete = decode_cli_input(
        None,
        Some(&read("dbz-2.7.0-paimon-delete-with-preimage.value.json")),
    )
    .expect("decodes");
    assert_eq!(
        delete["id"],
        oid(),
        "a delete without key takes its id from before._id"
    );
}
