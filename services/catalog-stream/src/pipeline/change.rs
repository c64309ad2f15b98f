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
    if event.op == Op::Tombstone {
        // It only marks a deleted key for compaction: no position, no product.
        return Err(permanent("a tombstone is not a product change"));
    }
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

#[cfg(test)]
mod tests {
    use connectors::debezium::encode_json;
    use connectors::mongo_source::{ChangeOrigin, DocumentChange};
    use mongodb::bson::{Bson, doc};

    use super::*;
    use crate::store::{StoredProduct, identity as document_id, stored_product_document};

    fn mug() -> Product {
        Product {
            mall_id: "m1".into(),
            product_id: "mug".into(),
            title: "Mug".into(),
            content: "A mug".into(),
            price: "12000".into(),
            image_url: "https://images.example/mug.png".into(),
        }
    }

    /// The records a source writes for one change (`connectors`' one path), as the engine
    /// hands them to a processor (JSON values).
    fn records(op: Op, id: Bson, after: Option<mongodb::bson::Document>) -> Vec<Record> {
        let change = DocumentChange {
            op,
            id,
            after,
            before: None,
            ts_ms: 1_765_000_123_456,
            wall_time_ms: Some(1_765_000_123_456),
            ord: 7,
            update_description: None,
            lsid: None,
            txn_number: None,
        };
        let origin = ChangeOrigin {
            server_name: "catalog".into(),
            db: "catalog".into(),
            collection: "products".into(),
        };
        change
            .into_events(&origin, true, 0)
            .iter()
            .map(|event| {
                let (key, value) =
                    encode_json(event, false, "catalog.catalog.products").expect("encodes");
                Record::new(Some(Value::Json(key)), value.map(Value::Json))
            })
            .collect()
    }

    fn stored(version: i64) -> mongodb::bson::Document {
        stored_product_document(&StoredProduct {
            product: mug(),
            version,
            updated_at_ms: 1,
        })
        .expect("document")
    }

    #[test]
    fn an_upsert_carries_the_product_its_version_and_position() {
        let records = records(
            Op::Create,
            document_id(&mug().key()).into(),
            Some(stored(4)),
        );
        assert_eq!(records.len(), 1);
        let change = product_change(&records[0]).expect("a product change");
        assert_eq!(change.op, Op::Create);
        assert_eq!(change.key, mug().key());
        assert_eq!(change.after, Some((mug(), 4)));
        assert_eq!(change.position, SourcePosition::new(1_765_000_123, 7));
    }

    #[test]
    fn a_delete_has_no_product_and_its_tombstone_is_not_a_change() {
        let records = records(Op::Delete, document_id(&mug().key()).into(), None);
        assert_eq!(records.len(), 2, "the delete and its tombstone");
        let change = product_change(&records[0]).expect("a product change");
        assert_eq!((change.op, change.after), (Op::Delete, None));
        let error = product_change(&records[1]).expect_err("a tombstone");
        assert!(error.to_string().contains("tombstone"), "{error}");
    }

    #[test]
    fn a_foreign_document_key_or_a_missing_version_is_refused_as_permanent() {
        let foreign = records(Op::Create, Bson::String("x".into()), Some(stored(1)));
        let error = product_change(&foreign[0]).expect_err("a foreign _id");
        assert!(
            error.to_string().contains("not a catalog product identity"),
            "{error}"
        );
        assert!(!error.is_transient());

        let mut without_version = stored(1);
        without_version.remove("version");
        let records = records(
            Op::Update,
            document_id(&mug().key()).into(),
            Some(without_version),
        );
        let error = product_change(&records[0]).expect_err("no version");
        assert!(error.to_string().contains("version"), "{error}");

        let mismatched = records_for_other_key();
        let error = product_change(&mismatched[0]).expect_err("fields and key disagree");
        assert!(error.to_string().contains("but its key is"), "{error}");
    }

    fn records_for_other_key() -> Vec<Record> {
        records(
            Op::Create,
            doc! {"mallId": "m1", "productId": "other"}.into(),
            Some(stored(1)),
        )
    }

    #[test]
    fn bytes_that_are_not_a_change_event_are_refused_as_permanent() {
        let record = Record::new(
            Some(Value::Json(serde_json::json!({"id": "1"}))),
            Some(Value::Json(serde_json::json!({"hello": "world"}))),
        );
        let error = product_change(&record).expect_err("not an envelope");
        assert!(
            error
                .to_string()
                .contains("not a Debezium MongoDB change event"),
            "{error}"
        );
        assert!(!error.is_transient());
    }
}
