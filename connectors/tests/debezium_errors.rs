//! Malformed Debezium records fail with an error that names what is wrong; heartbeats are
//! recognized, not mistaken for changes.

use apache_avro::types::Value as AvroValue;
use connectors::debezium::{
    AvroSchemas, ChangeEvent, DecodeError, EncodeError, Heartbeat, Record, decode_avro,
    decode_cli_input, decode_json, encode_json,
};
use serde_json::{Value, json};

fn source() -> Value {
    json!({"version": "3.1.0.Final", "connector": "mongodb", "name": "cdc", "ts_ms": 1_000,
           "snapshot": "false", "db": "shop", "collection": "products", "ord": 3})
}

fn envelope(fields: Value) -> Value {
    let mut value = json!({
        "before": null,
        "after": "{\"_id\": {\"$oid\": \"67ab25755c0d5ac87eb8c632\"}, \"name\": \"pen\"}",
        "updateDescription": null,
        "source": source(),
        "op": "c",
        "ts_ms": 1_500,
        "transaction": null,
    });
    for (k, v) in fields.as_object().expect("object") {
        value[k] = v.clone();
    }
    value
}

fn decode(key: Option<Value>, value: Option<Value>) -> Result<Record, DecodeError> {
    let key = key.map(|k| serde_json::to_vec(&k).expect("json"));
    let value = value.map(|v| serde_json::to_vec(&v).expect("json"));
    decode_json(key.as_deref(), value.as_deref())
}

fn err(key: Option<Value>, value: Option<Value>) -> DecodeError {
    match decode(key, value) {
        Ok(record) => panic!("expected an error, decoded {record:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_baseline_envelope_decodes() {
    let event = decode(None, Some(envelope(json!({}))))
        .expect("decodes")
        .into_change()
        .expect("change");
    assert_eq!(event.id, json!({"$oid": "67ab25755c0d5ac87eb8c632"}));
}

#[test]
fn missing_op() {
    let mut value = envelope(json!({}));
    value.as_object_mut().expect("object").remove("op");
    let e = err(None, Some(value));
    assert!(
        matches!(e, DecodeError::MissingField { field: "op", .. }),
        "{e}"
    );
    assert_eq!(e.to_string(), "missing field `op` in value");
}

#[test]
fn unknown_op() {
    let e = err(None, Some(envelope(json!({"op": "t"}))));
    assert!(matches!(&e, DecodeError::UnknownOp(op) if op == "t"), "{e}");
    let e = err(None, Some(envelope(json!({"op": 1}))));
    assert!(
        matches!(e, DecodeError::WrongType { field: "op", .. }),
        "{e}"
    );
}

#[test]
fn after_not_extended_json() {
    for bad in [
        json!("{not json"),
        json!("[1, 2]"),
        json!("{\"_id\": {\"$oid\": \"not-hex\"}}"),
        json!("{\"n\": {\"$numberLong\": \"twelve\"}}"),
    ] {
        let e = err(None, Some(envelope(json!({ "after": bad }))));
        assert!(
            matches!(e, DecodeError::InvalidExtJson { field: "after", .. }),
            "{bad}: {e}"
        );
        assert!(
            e.to_string()
                .starts_with("`after` is not valid MongoDB extended JSON"),
            "{e}"
        );
    }
    let e = err(None, Some(envelope(json!({"after": 42}))));
    assert!(
        matches!(e, DecodeError::WrongType { field: "after", .. }),
        "{e}"
    );
}

#[test]
fn missing_after_for_create_read_and_bare_update() {
    for op in ["c", "r", "u"] {
        let e = err(None, Some(envelope(json!({"op": op, "after": null}))));
        assert!(
            matches!(e, DecodeError::MissingAfter { op: o } if o == op),
            "{op}: {e}"
        );
    }
    // An update captured without a full-document lookup has updateDescription instead.
    let key = json!({"id": "{\"$oid\": \"67ab25755c0d5ac87eb8c632\"}"});
    let value = envelope(json!({"op": "u", "after": null,
        "updateDescription": {"removedFields": ["old"], "updatedFields": "{\"n\": 1}",
                              "truncatedArrays": [{"field": "tags", "size": 1}]}}));
    let event = decode(Some(key), Some(value))
        .expect("decodes")
        .into_change()
        .expect("change");
    let ud = event.update_description.expect("updateDescription");
    assert_eq!(ud.removed_fields, Some(vec!["old".to_owned()]));
    assert_eq!(ud.truncated_arrays.map(|t| t[0].size), Some(1));
}

#[test]
fn key_problems() {
    let e = err(Some(json!({"_id": "1"})), None);
    assert!(matches!(e, DecodeError::KeyWithoutId), "{e}");
    let e = err(Some(json!({"id": 5})), Some(envelope(json!({}))));
    assert!(
        matches!(
            e,
            DecodeError::WrongType {
                part: "key",
                field: "id",
                ..
            }
        ),
        "{e}"
    );
    let e = err(Some(json!({"id": "{\"$oid\": 5}"})), None);
    assert!(
        matches!(
            e,
            DecodeError::InvalidExtJson {
                field: "key.id",
                ..
            }
        ),
        "{e}"
    );
    let e = err(Some(json!(["id"])), None);
    assert!(
        matches!(e, DecodeError::NotAnObject { part: "key", .. }),
        "{e}"
    );
}

#[test]
fn nothing_to_name_the_document() {
    let e = decode_json(None, None).expect_err("empty record");
    assert!(matches!(e, DecodeError::Empty), "{e}");
    // A delete without key and without before names no document.
    let e = err(None, Some(envelope(json!({"op": "d", "after": null}))));
    assert!(matches!(e, DecodeError::MissingId), "{e}");
    // A CLI input without a key takes the id from after._id, and fails without one.
    let e = decode_cli_input(None, Some(br#"{"op": "c", "after": "{\"x\": 1}", "source": {"version": "v", "connector": "mongodb", "name": "n", "ts_ms": 0, "db": "d", "collection": "c", "ord": 0}}"#))
        .expect_err("no id");
    assert!(matches!(e, DecodeError::MissingId), "{e}");
}

#[test]
fn garbage_and_wrong_shapes() {
    let e = decode_json(None, Some(b"\x00\x00\x00\x00\x01garbage")).expect_err("garbage");
    assert!(
        matches!(e, DecodeError::InvalidJson { part: "value", .. }),
        "{e}"
    );
    let e = err(None, Some(json!([1, 2])));
    assert!(
        matches!(
            e,
            DecodeError::NotAnObject {
                part: "value",
                found: "an array"
            }
        ),
        "{e}"
    );
    let mut value = envelope(json!({}));
    value.as_object_mut().expect("object").remove("source");
    let e = err(None, Some(value));
    assert!(
        matches!(
            e,
            DecodeError::MissingField {
                field: "source",
                ..
            }
        ),
        "{e}"
    );
    let mut bad_source = source();
    bad_source["ord"] = json!("3");
    let e = err(None, Some(envelope(json!({ "source": bad_source }))));
    assert!(
        matches!(
            e,
            DecodeError::WrongType {
                part: "source",
                field: "ord",
                ..
            }
        ),
        "{e}"
    );
    let mut no_db = source();
    no_db.as_object_mut().expect("object").remove("db");
    let e = err(None, Some(envelope(json!({ "source": no_db }))));
    assert!(
        matches!(
            e,
            DecodeError::MissingField {
                part: "source",
                field: "db"
            }
        ),
        "{e}"
    );
    let e = err(
        None,
        Some(envelope(
            json!({"updateDescription": {"updatedFields": "{oops"}}),
        )),
    );
    assert!(
        matches!(
            e,
            DecodeError::InvalidExtJson {
                field: "updateDescription.updatedFields",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn heartbeats_are_recognized() {
    let record = decode(
        Some(json!({"serverName": "cdc"})),
        Some(json!({"ts_ms": 1_700_000_000_000_i64})),
    )
    .expect("decodes");
    assert_eq!(
        record,
        Record::Heartbeat(Heartbeat {
            server_name: Some("cdc".into()),
            ts_ms: Some(1_700_000_000_000)
        })
    );
    // Wrapped form, without a key.
    let record = decode(
        None,
        Some(
            json!({"schema": {"type": "struct", "name": "io.debezium.connector.common.Heartbeat"},
                    "payload": {"ts_ms": 5}}),
        ),
    )
    .expect("decodes");
    assert_eq!(
        record,
        Record::Heartbeat(Heartbeat {
            server_name: None,
            ts_ms: Some(5)
        })
    );
    let cli = decode_cli_input(None, Some(br#"{"ts_ms": 5}"#)).expect("decodes");
    assert_eq!(cli["op"], "heartbeat");
    let avro = AvroValue::Record(vec![("ts_ms".into(), AvroValue::Long(9))]);
    assert_eq!(
        decode_avro(None, Some(&avro)).expect("decodes"),
        Record::Heartbeat(Heartbeat {
            server_name: None,
            ts_ms: Some(9)
        })
    );
}

#[test]
fn avro_problems() {
    let key = AvroValue::Record(vec![("id".into(), AvroValue::Bytes(vec![1, 2]))]);
    let e = decode_avro(Some(&key), None).expect_err("bytes id");
    assert!(
        matches!(&e, DecodeError::UnsupportedAvro { part: "key", path, .. } if path == "id"),
        "{e}"
    );
    let value = AvroValue::Record(vec![
        (
            "after".into(),
            AvroValue::Union(1, Box::new(AvroValue::String("{\"_id\": 1}".into()))),
        ),
        ("op".into(), AvroValue::Union(0, Box::new(AvroValue::Null))),
        ("source".into(), AvroValue::Record(vec![])),
    ]);
    let e = decode_avro(None, Some(&value)).expect_err("no op");
    assert!(
        matches!(e, DecodeError::MissingField { field: "op", .. }),
        "{e}"
    );
}

#[test]
fn encoder_refuses_what_it_cannot_write() {
    let schemas = AvroSchemas::new("cdc.shop.products").expect("schemas");
    let mut event = ChangeEvent::tombstone(json!(1));
    event.op = connectors::debezium::Op::Create;
    let e = schemas.encode(&event).expect_err("no source");
    assert!(matches!(e, EncodeError::MissingSource { op: "c" }), "{e}");

    let mut event = decode(None, Some(envelope(json!({}))))
        .expect("decodes")
        .into_change()
        .expect("change");
    event.after = Some(json!([1]));
    let e = encode_json(&event, false, "cdc.shop.products").expect_err("array after");
    assert!(
        matches!(e, EncodeError::NotADocument { field: "after" }),
        "{e}"
    );
    event.after = Some(json!({"_id": {"$oid": "zz"}}));
    let e = encode_json(&event, false, "cdc.shop.products").expect_err("bad oid");
    assert!(
        matches!(e, EncodeError::InvalidExtJson { field: "after", .. }),
        "{e}"
    );
    // A key with an ID the encoder cannot render.
    let e = schemas
        .encode(&ChangeEvent::tombstone(json!({"$numberLong": "x"})))
        .expect_err("bad id");
    assert!(
        matches!(e, EncodeError::InvalidExtJson { field: "id", .. }),
        "{e}"
    );
}
