//! Reading a CDC record (Debezium MongoDB envelope, Avro or JSON) as a change to one product.

use connectors::debezium::{self, ChangeEvent, Op, SourcePosition};
use topology::{ProcessError, Record, Value};

use crate::product::{Product, ProductKey, validate_product};

/// A change to a product, as the image processors need it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductChange {
    /// Create/read/update, or delete.
    pub op: Op,
    /// The product identity (the document `_id`).
    pub key: ProductKey,
    /// Where the change sits in the source (cluster time seconds, ordinal).
    pub position: SourcePosition,
    /// The product after the change and its version (c/r/u).
    pub after: Option<(Product, i64)>,
}

fn permanent(message: impl Into<String>) -> ProcessError {
    ProcessError::permanent(message)
}

/// Decodes the record's key and value into a [`ChangeEvent`].
pub fn change_event(record: &Record) -> Result<ChangeEvent, ProcessError> {
    let decoded = match (&record.key, &record.value) {
        (Some(Value::Avro(_)) | None, Some(Value::Avro(value))) => {
            let key = match &record.key {
                Some(Value::Avro(key)) => Some(key),
                _ => None,
            };
            debezium::decode_avro(key, Some(value))
        }
        (key, value) => debezium::decode_json_value(
            key.as_ref().map(Value::to_json).as_ref(),
            value.as_ref().map(Value::to_json).as_ref(),
        ),
    }
    .map_err(|error| permanent(format!("not a Debezium MongoDB change event: {error}")))?;
    match decoded {
        debezium::Record::Change(event) => Ok(event),
        debezium::Record::Heartbeat(_) => Err(permanent("a heartbeat is not a change")),
    }
}

/// Reads a change event as a product change.
pub fn product_change(record: &Record) -> Result<ProductChange, ProcessError> {
    let event = change_event(record)?;
    let position = event
        .position()
        .ok_or_else(|| permanent("the change event has no `source` position"))?;
    let key = identity(&event)?;
    let after = match event.op {
        Op::Create | Op::Read | Op::Update => {
            let document = event.after.as_ref().ok_or_else(|| {
                permanent("an upsert without `after` (capture the full document on update)")
            })?;
            Some(product_of(&key, document)?)
        }
        Op::Delete => None,
        Op::Tombstone => return Err(permanent("a tombstone is not a product change")),
    };
    Ok(ProductChange {
        op: event.op,
        key,
        position,
        after,
    })
}

/// The identity from the document key `{"mallId", "productId"}`.
fn identity(event: &ChangeEvent) -> Result<ProductKey, ProcessError> {
    let id = &event.id;
    match (
        id.get("mallId").and_then(serde_json::Value::as_str),
        id.get("productId").and_then(serde_json::Value::as_str),
    ) {
        (Some(mall_id), Some(product_id)) => Ok(ProductKey::new(mall_id, product_id)),
        _ => Err(permanent(format!(
            "document key {id} is not a catalog product identity {{mallId, productId}}"
        ))),
    }
}

fn product_of(
    key: &ProductKey,
    document: &serde_json::Value,
) -> Result<(Product, i64), ProcessError> {
    let mut fields = serde_json::Map::new();
    for field in crate::product::FIELDS {
        if let Some(value) = document.get(field) {
            fields.insert(field.to_owned(), value.clone());
        }
    }
    let product = validate_product(&serde_json::Value::Object(fields))
        .map_err(|error| permanent(format!("the stored product is invalid: {error}")))?;
    if product.key() != *key {
        return Err(permanent(format!(
            "document fields name {} but its key is {key}",
            product.key()
        )));
    }
    let version = match document.get("version") {
        Some(serde_json::Value::Number(number)) => number.as_i64(),
        Some(serde_json::Value::Object(long)) => long
            .get("$numberLong")
            .and_then(serde_json::Value::as_str)
            .and_then(|text| text.parse().ok()),
        _ => None,
    }
    .ok_or_else(|| permanent("the stored product has no integer `version`"))?;
    Ok((product, version))
}
