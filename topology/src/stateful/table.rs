//! Tables: the latest value per key, materialized in a task store.

use crate::processor::ProcessError;
use crate::{Record, Value};

use super::stored::{StoredValue, key_bytes};
use super::{OperatorContext, StatefulOperator, require_key};

/// Upserts each record into the table's store (a tombstone deletes its key) and forwards it:
/// what [`TopologyBuilder::table`](crate::TopologyBuilder::table) and
/// [`Table::materialize`](super::Table::materialize) add. Keyless records are bad input.
pub(crate) struct Materialize {
    pub(crate) store: String,
}

impl StatefulOperator for Materialize {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = key_bytes(require_key(&record, "table")?);
        let table = ctx.cached::<Vec<u8>, StoredValue>(&self.store)?;
        table.set(key, record.value.as_ref().map(StoredValue::from))?;
        ctx.forward(record);
        Ok(())
    }
}

/// The current value of `key` in the table store `store`.
pub(crate) fn lookup(
    ctx: &OperatorContext,
    store: &str,
    key: &Value,
) -> Result<Option<Value>, ProcessError> {
    let table = ctx.cached::<Vec<u8>, StoredValue>(store)?;
    Ok(table.get(&key_bytes(key))?.map(Value::from))
}

/// The row a Debezium change event describes: its `after` image (parsed when the connector
/// sends it as JSON text, as the MongoDB connector does) for creates, reads and updates,
/// `None` for deletes and tombstones. Events of any other shape pass through unchanged
/// (a table of plain values).
pub(crate) fn debezium_row(value: Option<&Value>) -> Option<Value> {
    let value = value?;
    match value.field_str("op").as_deref() {
        Some("d") => None,
        Some(_) => {
            let json = value.to_json();
            match json.get("after") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(text)) => Some(
                    serde_json::from_str(text)
                        .map(Value::Json)
                        .unwrap_or_else(|_| Value::String(text.clone())),
                ),
                Some(after) => Some(Value::Json(after.clone())),
            }
        }
        None => Some(value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_debezium_event_becomes_its_after_image_or_a_delete() {
        let create = Value::Json(json!({"op": "c", "after": "{\"_id\": 1, \"name\": \"mug\"}"}));
        assert_eq!(
            debezium_row(Some(&create)),
            Some(Value::Json(json!({"_id": 1, "name": "mug"})))
        );
        let update = Value::Json(json!({"op": "u", "after": {"id": 1}}));
        assert_eq!(
            debezium_row(Some(&update)),
            Some(Value::Json(json!({"id": 1})))
        );
        let delete = Value::Json(json!({"op": "d", "after": null, "before": {"id": 1}}));
        assert_eq!(debezium_row(Some(&delete)), None);
        assert_eq!(debezium_row(None), None);
        let plain = Value::from("not an envelope");
        assert_eq!(debezium_row(Some(&plain)), Some(plain));
    }
}
