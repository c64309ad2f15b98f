//! The envelope's logical structure, read from and written to JSON objects.
//!
//! Both converters meet here: the JSON converter's payload is such an object already, and an
//! Avro record is turned into one (see `avro`). Field names and order are Debezium's.

use serde_json::{Map, Value, json};

use super::error::{DecodeError, EncodeError};
use super::event::{
    ChangeEvent, Heartbeat, Op, Record, SourceInfo, TransactionBlock, TruncatedArray,
    UpdateDescription,
};
use super::extjson::{self, json_type};

/// Decodes a record from its key and value, both already unwrapped to the logical object
/// (`None` = null).
pub(crate) fn decode(key: Option<&Value>, value: Option<&Value>) -> Result<Record, DecodeError> {
    let key = match key {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(other) => {
            return Err(DecodeError::NotAnObject {
                part: "key",
                found: json_type(other),
            });
        }
    };
    let value = match value {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(other) => {
            return Err(DecodeError::NotAnObject {
                part: "value",
                found: json_type(other),
            });
        }
    };
    if let Some(heartbeat) = heartbeat(key, value)? {
        return Ok(Record::Heartbeat(heartbeat));
    }
    let key_id = key.map(decode_key).transpose()?;
    match value {
        None => match key_id {
            Some(id) => Ok(Record::Change(ChangeEvent::tombstone(id))),
            None if key.is_none() => Err(DecodeError::Empty),
            None => Err(DecodeError::TombstoneWithoutKey),
        },
        Some(value) => decode_envelope(key_id, value).map(Record::Change),
    }
}

fn heartbeat(
    key: Option<&Map<String, Value>>,
    value: Option<&Map<String, Value>>,
) -> Result<Option<Heartbeat>, DecodeError> {
    let key_server = key.and_then(|k| k.get("serverName"));
    let value_is_heartbeat = value.is_some_and(|v| {
        v.contains_key("ts_ms") && !v.contains_key("op") && !v.contains_key("source")
    });
    if key_server.is_none() && !value_is_heartbeat {
        return Ok(None);
    }
    let server_name = match key_server {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(wrong("key", "serverName", "a string", other)),
    };
    let ts_ms = match value {
        Some(v) => opt_i64(v, "value", "ts_ms")?,
        None => None,
    };
    Ok(Some(Heartbeat { server_name, ts_ms }))
}

/// Reads a key `{"id": "<extended JSON>"}` into the relaxed extended JSON `_id`.
fn decode_key(key: &Map<String, Value>) -> Result<Value, DecodeError> {
    match key.get("id") {
        None | Some(Value::Null) => Err(DecodeError::KeyWithoutId),
        Some(Value::String(text)) => {
            extjson::parse_value_str(text).map_err(|reason| DecodeError::InvalidExtJson {
                field: "key.id",
                reason,
            })
        }
        Some(other) => Err(wrong("key", "id", "an extended JSON string", other)),
    }
}

fn decode_envelope(
    key_id: Option<Value>,
    value: &Map<String, Value>,
) -> Result<ChangeEvent, DecodeError> {
    let op = match value.get("op") {
        None | Some(Value::Null) => {
            return Err(DecodeError::MissingField {
                part: "value",
                field: "op",
            });
        }
        Some(Value::String(code)) => Op::from_code(code)?,
        Some(other) => return Err(wrong("value", "op", "a string", other)),
    };
    let source = match value.get("source") {
        Some(Value::Object(map)) => decode_source(map)?,
        None | Some(Value::Null) => {
            return Err(DecodeError::MissingField {
                part: "value",
                field: "source",
            });
        }
        Some(other) => return Err(wrong("value", "source", "an object", other)),
    };
    let after = document(value, "after")?;
    let before = document(value, "before")?;
    let update_description = match value.get("updateDescription") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(decode_update_description(map)?),
        Some(other) => return Err(wrong("value", "updateDescription", "an object", other)),
    };
    match op {
        Op::Create | Op::Read if after.is_none() => {
            return Err(DecodeError::MissingAfter { op: op.code() });
        }
        Op::Update if after.is_none() && update_description.is_none() => {
            return Err(DecodeError::MissingAfter { op: op.code() });
        }
        _ => {}
    }
    let transaction = match value.get("transaction") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(TransactionBlock {
            id: req_str(map, "transaction", "id")?,
            total_order: req_i64(map, "transaction", "total_order")?,
            data_collection_order: req_i64(map, "transaction", "data_collection_order")?,
        }),
        Some(other) => return Err(wrong("value", "transaction", "an object", other)),
    };
    let id = match key_id {
        Some(id) => id,
        None => after
            .as_ref()
            .and_then(|a| a.get("_id"))
            .or_else(|| before.as_ref().and_then(|b| b.get("_id")))
            .cloned()
            .ok_or(DecodeError::MissingId)?,
    };
    Ok(ChangeEvent {
        op,
        db: Some(source.db.clone()),
        collection: Some(source.collection.clone()),
        id,
        after,
        before,
        update_description,
        ts_ms: opt_i64(value, "value", "ts_ms")?,
        source: Some(source),
        transaction,
    })
}

/// `after`/`before`: an extended JSON string (as Debezium writes it) or, leniently, an object.
fn document(value: &Map<String, Value>, field: &'static str) -> Result<Option<Value>, DecodeError> {
    let parsed = match value.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => extjson::parse_document_str(text),
        Some(Value::Object(map)) => extjson::document_to_relaxed(Value::Object(map.clone())),
        Some(other) => return Err(wrong("value", field, "an extended JSON string", other)),
    };
    parsed
        .map(Some)
        .map_err(|reason| DecodeError::InvalidExtJson { field, reason })
}

fn decode_source(map: &Map<String, Value>) -> Result<SourceInfo, DecodeError> {
    const P: &str = "source";
    let snapshot = match map.get("snapshot") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(other) => return Err(wrong(P, "snapshot", "a string or boolean", other)),
    };
    let ord = req_i64(map, P, "ord")?;
    let ord = i32::try_from(ord).map_err(|_| DecodeError::WrongType {
        part: P,
        field: "ord",
        expected: "a 32-bit integer",
        found: ord.to_string(),
    })?;
    Ok(SourceInfo {
        version: req_str(map, P, "version")?,
        connector: req_str(map, P, "connector")?,
        name: req_str(map, P, "name")?,
        ts_ms: req_i64(map, P, "ts_ms")?,
        snapshot,
        db: req_str(map, P, "db")?,
        rs: opt_str(map, P, "rs")?,
        sequence: opt_str(map, P, "sequence")?,
        ts_us: opt_i64(map, P, "ts_us")?,
        ts_ns: opt_i64(map, P, "ts_ns")?,
        collection: req_str(map, P, "collection")?,
        ord,
        lsid: opt_str(map, P, "lsid")?,
        txn_number: opt_i64(map, P, "txnNumber")?,
        wall_time: opt_i64(map, P, "wallTime")?,
    })
}

fn decode_update_description(map: &Map<String, Value>) -> Result<UpdateDescription, DecodeError> {
    const P: &str = "updateDescription";
    let removed_fields = match map.get("removedFields") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong(P, "removedFields", "an array of strings", other)),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(wrong(P, "removedFields", "an array of strings", other)),
    };
    let updated_fields = match map.get("updatedFields") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(extjson::parse_document_str(text).map_err(|reason| {
            DecodeError::InvalidExtJson {
                field: "updateDescription.updatedFields",
                reason,
            }
        })?),
        Some(other) => return Err(wrong(P, "updatedFields", "an extended JSON string", other)),
    };
    let truncated_arrays = match map.get("truncatedArrays") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| match item {
                    Value::Object(entry) => {
                        let size = req_i64(entry, "truncatedArrays", "size")?;
                        Ok(TruncatedArray {
                            field: req_str(entry, "truncatedArrays", "field")?,
                            size: i32::try_from(size).map_err(|_| DecodeError::WrongType {
                                part: "truncatedArrays",
                                field: "size",
                                expected: "a 32-bit integer",
                                found: size.to_string(),
                            })?,
                        })
                    }
                    other => Err(wrong(P, "truncatedArrays", "an array of objects", other)),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(wrong(P, "truncatedArrays", "an array", other)),
    };
    Ok(UpdateDescription {
        removed_fields,
        updated_fields,
        truncated_arrays,
    })
}

fn wrong(
    part: &'static str,
    field: &'static str,
    expected: &'static str,
    found: &Value,
) -> DecodeError {
    DecodeError::WrongType {
        part,
        field,
        expected,
        found: json_type(found).to_owned(),
    }
}

fn req_str(
    map: &Map<String, Value>,
    part: &'static str,
    field: &'static str,
) -> Result<String, DecodeError> {
    opt_str(map, part, field)?.ok_or(DecodeError::MissingField { part, field })
}

fn opt_str(
    map: &Map<String, Value>,
    part: &'static str,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong(part, field, "a string", other)),
    }
}

fn req_i64(
    map: &Map<String, Value>,
    part: &'static str,
    field: &'static str,
) -> Result<i64, DecodeError> {
    opt_i64(map, part, field)?.ok_or(DecodeError::MissingField { part, field })
}

fn opt_i64(
    map: &Map<String, Value>,
    part: &'static str,
    field: &'static str,
) -> Result<Option<i64>, DecodeError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong(part, field, "an integer", &Value::Number(n.clone()))),
        Some(other) => Err(wrong(part, field, "an integer", other)),
    }
}

/// The key object `{"id": "<relaxed extended JSON of _id>"}`.
pub(crate) fn encode_key(event: &ChangeEvent) -> Result<Value, EncodeError> {
    let id = extjson::to_debezium_id_string(&event.id).map_err(|reason| {
        EncodeError::InvalidExtJson {
            field: "id",
            reason,
        }
    })?;
    Ok(json!({ "id": id }))
}

/// The envelope object as Debezium writes it; `None` for a tombstone (null Kafka value).
pub(crate) fn encode_value(event: &ChangeEvent) -> Result<Option<Value>, EncodeError> {
    if event.op == Op::Tombstone {
        return Ok(None);
    }
    let source = event.source.as_ref().ok_or(EncodeError::MissingSource {
        op: event.op.code(),
    })?;
    let render = |field: &'static str, doc: &Option<Value>| -> Result<Value, EncodeError> {
        match doc {
            None => Ok(Value::Null),
            Some(doc @ Value::Object(_)) => extjson::to_debezium_document_string(doc)
                .map(Value::String)
                .map_err(|reason| EncodeError::InvalidExtJson { field, reason }),
            Some(_) => Err(EncodeError::NotADocument { field }),
        }
    };
    let update_description = match &event.update_description {
        None => Value::Null,
        Some(ud) => json!({
            "removedFields": ud.removed_fields,
            "updatedFields": render("updateDescription.updatedFields", &ud.updated_fields)?,
            "truncatedArrays": ud.truncated_arrays.as_ref().map(|arrays| arrays
                .iter()
                .map(|a| json!({"field": a.field, "size": a.size}))
                .collect::<Vec<_>>()),
        }),
    };
    let mut source_json = Map::new();
    source_json.insert("version".into(), json!(source.version));
    source_json.insert("connector".into(), json!(source.connector));
    source_json.insert("name".into(), json!(source.name));
    source_json.insert("ts_ms".into(), json!(source.ts_ms));
    source_json.insert("snapshot".into(), json!(source.snapshot));
    source_json.insert("db".into(), json!(source.db));
    if let Some(rs) = &source.rs {
        source_json.insert("rs".into(), json!(rs));
    }
    source_json.insert("sequence".into(), json!(source.sequence));
    source_json.insert("ts_us".into(), json!(source.ts_us));
    source_json.insert("ts_ns".into(), json!(source.ts_ns));
    source_json.insert("collection".into(), json!(source.collection));
    source_json.insert("ord".into(), json!(source.ord));
    source_json.insert("lsid".into(), json!(source.lsid));
    source_json.insert("txnNumber".into(), json!(source.txn_number));
    source_json.insert("wallTime".into(), json!(source.wall_time));
    Ok(Some(json!({
        "before": render("before", &event.before)?,
        "after": render("after", &event.after)?,
        "updateDescription": update_description,
        "source": Value::Object(source_json),
        "op": event.op.code(),
        "ts_ms": event.ts_ms,
        "transaction": event.transaction.as_ref().map(|t| json!({
            "id": t.id,
            "total_order": t.total_order,
            "data_collection_order": t.data_collection_order,
        })),
    })))
}
