//! The library half of `cdc decode`: one Kafka record in, one small JSON summary out.

use serde_json::{Value, json};

use super::error::DecodeError;
use super::event::Record;
use super::json::decode_json;

/// Decodes one JSON-converter record (key and/or value bytes, as `kcat` prints them) into the
/// summary `cdc decode` prints:
///
/// `{"op": "c"|"r"|"u"|"d"|"tombstone", "db", "collection", "id", "after"}`
///
/// - `db` and `collection` are `null` for a tombstone (it carries only a key);
/// - `id` is the document key as relaxed extended JSON (`{"$oid": ".."}`, a number, a string);
///   without a key it is taken from `after._id` (or `before._id` for a delete);
/// - `after` is the document as relaxed extended JSON, or `null`;
/// - a heartbeat record gives `{"op": "heartbeat", "ts_ms": ..}` with the other fields `null`.
///
/// Errors are the [`DecodeError`] of the record (not JSON, unknown `op`, `after` not extended
/// JSON, ...).
///
/// # Example
/// ```
/// use connectors::debezium::decode_cli_input;
/// let value = br#"{"op": "c", "after": "{\"_id\": {\"$numberLong\": \"7\"}, \"name\": \"pen\"}",
///   "source": {"version": "3.1.0.Final", "connector": "mongodb", "name": "cdc", "ts_ms": 1000,
///              "db": "shop", "collection": "products", "ord": 1}}"#;
/// let out = decode_cli_input(None, Some(value)).expect("decodes");
/// assert_eq!(out, serde_json::json!({
///     "op": "c", "db": "shop", "collection": "products", "id": 7,
///     "after": {"_id": 7, "name": "pen"},
/// }));
/// ```
pub fn decode_cli_input(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Value, DecodeError> {
    Ok(match decode_json(key, value)? {
        Record::Change(event) => json!({
            "op": event.op.code(),
            "db": event.db,
            "collection": event.collection,
            "id": event.id,
            "after": event.after,
        }),
        Record::Heartbeat(heartbeat) => json!({
            "op": "heartbeat",
            "db": null,
            "collection": null,
            "id": null,
            "after": null,
            "ts_ms": heartbeat.ts_ms,
        }),
    })
}
