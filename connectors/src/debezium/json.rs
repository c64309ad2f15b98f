//! The JSON converter's rendering of Debezium MongoDB records, in and out.
//!
//! Kafka Connect's `JsonConverter` writes the envelope either bare (`schemas.enable=false`) or
//! wrapped as `{"schema": {..}, "payload": {..}}`; both are read. The key is
//! `{"id": "<relaxed extended JSON of _id>"}`; a null value after a delete is a tombstone.

use serde_json::{Value, json};

use super::error::{DecodeError, EncodeError};
use super::event::{ChangeEvent, Record};
use super::payload;

const ENVELOPE_SCHEMA_TEMPLATE: &str = include_str!("connect-envelope-schema.json");

/// Decodes a record from the JSON converter's key and value bytes.
///
/// A value that is absent, empty or the JSON `null` is a tombstone (the key names the
/// document). Both the bare and the `schema`/`payload`-wrapped forms are accepted.
///
/// # Example
/// ```
/// use connectors::debezium::{Op, Record, decode_json};
/// let key = br#"{"id": "{\"$oid\": \"67ab25755c0d5ac87eb8c632\"}"}"#;
/// let Record::Change(event) = decode_json(Some(key), None).expect("decodes") else {
///     panic!("not a heartbeat");
/// };
/// assert_eq!(event.op, Op::Tombstone);
/// assert_eq!(event.id, serde_json::json!({"$oid": "67ab25755c0d5ac87eb8c632"}));
/// ```
pub fn decode_json(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Record, DecodeError> {
    let key = parse_bytes("key", key)?;
    let value = parse_bytes("value", value)?;
    decode_json_value(key.as_ref(), value.as_ref())
}

/// Decodes a record from the JSON converter's key and value, already parsed as JSON.
pub fn decode_json_value(
    key: Option<&Value>,
    value: Option<&Value>,
) -> Result<Record, DecodeError> {
    payload::decode(key.map(unwrap_payload), value.map(unwrap_payload))
}

fn parse_bytes(part: &'static str, bytes: Option<&[u8]>) -> Result<Option<Value>, DecodeError> {
    match bytes {
        None => Ok(None),
        Some(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Some(b) => serde_json::from_slice(b)
            .map(Some)
            .map_err(|source| DecodeError::InvalidJson { part, source }),
    }
}

/// The `payload` of a `{"schema": .., "payload": ..}` wrapper, or the value itself.
fn unwrap_payload(value: &Value) -> &Value {
    match value {
        Value::Object(map) if map.len() == 2 && map.contains_key("schema") => {
            map.get("payload").unwrap_or(value)
        }
        _ => value,
    }
}

/// Encodes an event as the JSON converter renders it: `(key, value)`, with `value` `None` for a
/// tombstone. With `schemas_enable`, both are wrapped in `{"schema": .., "payload": ..}` using
/// the Connect schema of Debezium 3.x named after `namespace` (`<topic.prefix>.<db>.<collection>`,
/// see [`avro_namespace`](super::avro_namespace)).
///
/// # Example
/// ```
/// use connectors::debezium::{ChangeEvent, encode_json};
/// let tombstone = ChangeEvent::tombstone(serde_json::json!(1004));
/// let (key, value) = encode_json(&tombstone, false, "fulfillment.inventory.customers")
///     .expect("encodes");
/// assert_eq!(key, serde_json::json!({"id": "1004"}));
/// assert!(value.is_none());
/// ```
pub fn encode_json(
    event: &ChangeEvent,
    schemas_enable: bool,
    namespace: &str,
) -> Result<(Value, Option<Value>), EncodeError> {
    let key = payload::encode_key(event)?;
    let value = payload::encode_value(event)?;
    if !schemas_enable {
        return Ok((key, value));
    }
    let key = json!({"schema": connect_key_schema(namespace), "payload": key});
    let value = value.map(|v| json!({"schema": connect_envelope_schema(namespace), "payload": v}));
    Ok((key, value))
}

/// The Connect JSON schema of the key, as the JSON converter embeds it.
pub fn connect_key_schema(namespace: &str) -> Value {
    json!({
        "type": "struct",
        "fields": [{"type": "string", "optional": false, "field": "id"}],
        "optional": false,
        "name": format!("{namespace}.Key"),
    })
}

/// The Connect JSON schema of the envelope (Debezium 3.x MongoDB), as the JSON converter embeds
/// it.
pub fn connect_envelope_schema(namespace: &str) -> Value {
    // The template is a constant, parsed by the tests; it cannot fail at run time.
    let mut schema: Value = serde_json::from_str(ENVELOPE_SCHEMA_TEMPLATE).unwrap_or(Value::Null);
    schema["name"] = Value::String(format!("{namespace}.Envelope"));
    schema
}
