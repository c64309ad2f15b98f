//! `AvroSerde::compact` against the `apache_avro` path on real schemas and events: the Debezium
//! MongoDB fixtures in `shared/fixtures/debezium-mongodb` (never edited), under the fixtures'
//! schemas and the connector's envelope schema. Both forms must read the same datum (same JSON,
//! same fields) and write it back to the same bytes.

use std::path::PathBuf;
use std::sync::Arc;

use apache_avro::Schema;
use topology::Value;
use topology::avro::{AvroRecord, AvroValue, RecordShape};
use topology::serdes::{AvroSerde, MemorySchemaRegistry, Serde};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/debezium-mongodb"
);

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(FIXTURES).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

fn schema_text(name: &str) -> String {
    String::from_utf8(fixture(name)).expect("schema is UTF-8")
}

/// The value events of the fixtures (Debezium's JSON form).
fn events() -> Vec<(String, serde_json::Value)> {
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .expect("fixture directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".value.json") || n.ends_with(".payload.json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let json = serde_json::from_slice(&fixture(&n)).expect("fixture is JSON");
            (n, json)
        })
        .collect()
}

/// The schemas the fixtures are written with, and the connector's own envelope.
fn schemas() -> Vec<(&'static str, Schema)> {
    let connector = include_str!("../../connectors/src/debezium/envelope.avsc");
    vec![
        (
            "DERIVED-debezium-3.x-mongodb-envelope.avsc",
            Schema::parse_str(&schema_text("DERIVED-debezium-3.x-mongodb-envelope.avsc"))
                .expect("derived envelope"),
        ),
        (
            "mongo-kafka-source-default-value.avsc",
            Schema::parse_str(&schema_text("mongo-kafka-source-default-value.avsc"))
                .expect("mongo source value"),
        ),
        (
            "connectors/src/debezium/envelope.avsc",
            Schema::parse_str(connector).expect("connector envelope"),
        ),
    ]
}

const PATHS: &[&str] = &[
    "op",
    "ts_ms",
    "before",
    "after",
    "source.ts_ms",
    "source.snapshot",
    "source.collection",
    "updateDescription.updatedFields",
    "updateDescription.removedFields",
    "fullDocument",
    "ns.db",
    "documentKey",
];

#[tokio::test]
async fn compact_reads_and_writes_the_fixtures_like_apache_avro() {
    let mut checked = 0;
    for (schema_name, schema) in schemas() {
        let registry = Arc::new(MemorySchemaRegistry::default());
        let writer = AvroSerde::new(registry.clone()).with_schema(schema.clone());
        let apache = AvroSerde::new(registry.clone());
        let compact = AvroSerde::new(registry.clone()).compact();
        for (event, json) in events() {
            // Events that do not fit this schema (another connector's shape) are not its data.
            let Ok(bytes) = writer.serialize("t", false, &Value::Json(json)).await else {
                continue;
            };
            let what = format!("{event} under {schema_name}");
            let a = apache.deserialize("t", false, &bytes).await.expect(&what);
            let c = compact.deserialize("t", false, &bytes).await.expect(&what);
            let Value::AvroCompact(cv) = &c else {
                panic!("{what}: compact serde gave {c:?}");
            };
            assert!(matches!(a, Value::Avro(_)), "{what}");
            assert_eq!(c.to_json(), a.to_json(), "{what}: same datum");
            for path in PATHS {
                assert_eq!(c.field_str(path), a.field_str(path), "{what}: {path}");
            }
            // Both forms write back to the bytes read, the compact one positionally.
            let again = writer.serialize("t", false, &c).await.expect(&what);
            assert_eq!(again, bytes, "{what}: compact re-encodes");
            let again = writer.serialize("t", false, &a).await.expect(&what);
            assert_eq!(again, bytes, "{what}: apache re-encodes");
            // A compact value made from the apache one (unnamed shapes, so fields go by name)
            // writes the same bytes too.
            let Value::Avro(av) = &a else { unreachable!() };
            let converted = Value::AvroCompact(AvroValue::from_apache(av));
            let again = writer.serialize("t", false, &converted).await.expect(&what);
            assert_eq!(again, bytes, "{what}: converted value re-encodes");
            assert_eq!(
                &AvroValue::from_apache(&cv.to_apache()),
                &AvroValue::from_apache(av)
            );
            // Truncated data fails the same way on both paths.
            let cut = &bytes[..bytes.len() - 1];
            let (ae, ce) = (
                apache.deserialize("t", false, cut).await,
                compact.deserialize("t", false, cut).await,
            );
            assert_eq!(
                ae.map(|_| ()).map_err(|e| e.to_string()),
                ce.map(|_| ()).map_err(|e| e.to_string()),
                "{what}: truncated"
            );
            checked += 1;
        }
    }
    // Every Paimon event (6) and the docs payload fit the derived schema at least.
    assert!(checked >= 7, "only {checked} event/schema pairs checked");
}

#[tokio::test]
async fn records_built_for_a_shape_encode_by_position_or_by_name() {
    let schema = Schema::parse_str(
        r#"{"type": "record", "name": "P", "namespace": "shop", "fields": [
            {"name": "id", "type": "string"},
            {"name": "price", "type": ["null", "long"], "default": null},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "attrs", "type": {"type": "map", "values": "int"}},
            {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#,
    )
    .expect("schema");
    let registry = Arc::new(MemorySchemaRegistry::default());
    let serde = AvroSerde::new(registry).with_schema(schema.clone());
    let shape = RecordShape::of(&schema).expect("record");
    let values = vec![
        AvroValue::from("p-1"),
        AvroValue::Long(1250),
        AvroValue::Array(vec![AvroValue::from("a"), AvroValue::from("b")]),
        AvroValue::Map(vec![("x".into(), AvroValue::Int(1))]),
        AvroValue::Enum(1, "B".into()),
        AvroValue::Long(1_760_000_000_000),
    ];
    let positional = AvroRecord::new(shape.clone(), values.clone()).expect("shape fits");
    assert!(AvroRecord::new(shape, values[..2].to_vec()).is_err());
    // The same fields in another order, under no name: written by name.
    let mut named: Vec<(&str, AvroValue)> = ["id", "price", "tags", "attrs", "kind", "at"]
        .into_iter()
        .zip(values.clone())
        .collect();
    named.reverse();
    let by_name = AvroRecord::from_fields("", named);
    let json = serde_json::json!({"id": "p-1", "price": 1250, "tags": ["a", "b"],
        "attrs": {"x": 1}, "kind": "B", "at": 1_760_000_000_000i64});
    let expected = serde
        .serialize("t", false, &Value::Json(json))
        .await
        .expect("json");
    for v in [positional, by_name] {
        let got = serde
            .serialize("t", false, &Value::AvroCompact(AvroValue::Record(v)))
            .await
            .expect("compact");
        assert_eq!(got, expected);
    }
    // A null price picks the union's null branch; an int where a long is wanted goes through
    // apache_avro's resolution (promotion) and still writes.
    let mut v = values.clone();
    v[1] = AvroValue::Null;
    v[5] = AvroValue::Int(7);
    let r = AvroRecord::from_fields(
        "shop.P",
        ["id", "price", "tags", "attrs", "kind", "at"]
            .into_iter()
            .zip(v),
    );
    let bytes = serde
        .serialize("t", false, &Value::AvroCompact(AvroValue::Record(r)))
        .await
        .expect("resolved");
    // Decoded against the writer's own schema as the reader schema: the generic path, then
    // converted.
    let Value::AvroCompact(decoded) = serde
        .clone()
        .compact()
        .deserialize("t", false, &bytes)
        .await
        .expect("decodes")
    else {
        panic!("compact");
    };
    assert!(decoded.get("price").is_some_and(AvroValue::is_null));
    assert_eq!(decoded.get("at").and_then(AvroValue::as_long), Some(7));
}
