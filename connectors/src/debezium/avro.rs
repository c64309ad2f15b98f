//! The Avro rendering of Debezium MongoDB records (what Confluent's `AvroConverter` registers).
//!
//! The schemas are Debezium 3.x's MongoDB key and envelope as Confluent's `AvroData` names them
//! (key record `Key`, value record `Envelope`, both in namespace
//! `<topic.prefix>.<db>.<collection>`). They were derived by hand from Debezium's sources and
//! never checked against a registry fed by a real connector (see the fixtures' `SOURCES.md`).
//! Decoding reads fields by name, so any writer schema with the same field names works.
//! The Confluent wire format (magic byte, schema id) is the transport's business, not this
//! module's.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::types::Value as AvroValue;
use serde_json::{Map, Value};

use super::error::{DecodeError, EncodeError};
use super::event::{ChangeEvent, Record};
use super::payload;

const ENVELOPE_TEMPLATE: &str = include_str!("envelope.avsc");
const KEY_TEMPLATE: &str = include_str!("key.avsc");

/// The Avro namespace Debezium's records get for a collection: `<topic.prefix>.<db>.<collection>`,
/// with every character Avro names do not allow replaced by `_` (as Connect's `AvroData` does).
///
/// # Example
/// ```
/// use connectors::debezium::avro_namespace;
/// assert_eq!(avro_namespace("dbserver1", "inventory", "customers"), "dbserver1.inventory.customers");
/// assert_eq!(avro_namespace("cdc", "shop-1", "products"), "cdc.shop_1.products");
/// ```
pub fn avro_namespace(topic_prefix: &str, db: &str, collection: &str) -> String {
    [topic_prefix, db, collection]
        .iter()
        .map(|part| {
            let mut name: String = part
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                name.insert(0, '_');
            }
            name
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The key and envelope schemas of one collection's topic, ready to encode events.
#[derive(Debug, Clone)]
pub struct AvroSchemas {
    namespace: String,
    key: Schema,
    value: Schema,
}

impl AvroSchemas {
    /// Builds the schemas for records in `namespace` (see [`avro_namespace`]).
    ///
    /// # Example
    /// ```
    /// use connectors::debezium::AvroSchemas;
    /// let schemas = AvroSchemas::new("dbserver1.inventory.customers").expect("valid namespace");
    /// assert!(schemas.value().canonical_form().contains("dbserver1.inventory.customers.Envelope"));
    /// ```
    pub fn new(namespace: &str) -> Result<Self, EncodeError> {
        Ok(AvroSchemas {
            namespace: namespace.to_owned(),
            key: schema_in(KEY_TEMPLATE, namespace, "Key")?,
            value: schema_in(ENVELOPE_TEMPLATE, namespace, "Envelope")?,
        })
    }

    /// The schemas for the event's own collection (needs its `source`: not for a tombstone).
    pub fn for_event(event: &ChangeEvent) -> Result<Self, EncodeError> {
        let source = event.source.as_ref().ok_or(EncodeError::MissingSource {
            op: event.op.code(),
        })?;
        Self::new(&avro_namespace(
            &source.name,
            &source.db,
            &source.collection,
        ))
    }

    /// The namespace these schemas are in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key schema (`<namespace>.Key`).
    pub fn key(&self) -> &Schema {
        &self.key
    }

    /// The envelope schema (`<namespace>.Envelope`).
    pub fn value(&self) -> &Schema {
        &self.value
    }

    /// Encodes an event as `(key, value)` Avro values conforming to these schemas; `value` is
    /// `None` for a tombstone (a null Kafka value).
    pub fn encode(
        &self,
        event: &ChangeEvent,
    ) -> Result<(AvroValue, Option<AvroValue>), EncodeError> {
        let key = to_avro(payload::encode_key(event)?).resolve(&self.key)?;
        let value = match payload::encode_value(event)? {
            None => None,
            Some(v) => Some(to_avro(v).resolve(&self.value)?),
        };
        Ok((key, value))
    }
}

fn schema_in(template: &str, namespace: &str, record: &str) -> Result<Schema, EncodeError> {
    let mut json: Value = serde_json::from_str(template)
        .map_err(|e| apache_avro::Error::new(apache_avro::error::Details::ParseSchemaJson(e)))?;
    json["namespace"] = Value::String(namespace.to_owned());
    json["connect.name"] = Value::String(format!("{namespace}.{record}"));
    Ok(Schema::parse(&json)?)
}

/// Decodes a record from Avro key and value (as read with the Debezium key/envelope schemas);
/// `None` stands for a null Kafka key or value.
pub fn decode_avro(
    key: Option<&AvroValue>,
    value: Option<&AvroValue>,
) -> Result<Record, DecodeError> {
    let key = key.map(|k| to_json("key", "", k)).transpose()?;
    let value = value.map(|v| to_json("value", "", v)).transpose()?;
    payload::decode(key.as_ref(), value.as_ref())
}

/// The logical structure of an Avro value as JSON (records and maps become objects, unions
/// their branch).
fn to_json(part: &'static str, path: &str, value: &AvroValue) -> Result<Value, DecodeError> {
    let field_path = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    Ok(match value {
        AvroValue::Null => Value::Null,
        AvroValue::Boolean(b) => Value::Bool(*b),
        AvroValue::Int(i) => Value::from(*i),
        AvroValue::Long(i) => Value::from(*i),
        AvroValue::Float(f) => Value::from(f64::from(*f)),
        AvroValue::Double(f) => Value::from(*f),
        AvroValue::String(s) | AvroValue::Enum(_, s) => Value::String(s.clone()),
        AvroValue::Union(_, inner) => to_json(part, path, inner)?,
        AvroValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| to_json(part, path, item))
                .collect::<Result<_, _>>()?,
        ),
        AvroValue::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, v)| Ok((name.clone(), to_json(part, &field_path(name), v)?)))
                .collect::<Result<Map<_, _>, DecodeError>>()?,
        ),
        AvroValue::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(name, v)| Ok((name.clone(), to_json(part, &field_path(name), v)?)))
                .collect::<Result<Map<_, _>, DecodeError>>()?,
        ),
        other => {
            let mut found = format!("{other:?}");
            found.truncate(80);
            return Err(DecodeError::UnsupportedAvro {
                part,
                path: path.to_owned(),
                found,
            });
        }
    })
}

/// A JSON object as an Avro value to be resolved against a schema (objects become maps).
fn to_avro(json: Value) -> AvroValue {
    match json {
        Value::Null => AvroValue::Null,
        Value::Bool(b) => AvroValue::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AvroValue::Long(i),
            None => AvroValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AvroValue::String(s),
        Value::Array(items) => AvroValue::Array(items.into_iter().map(to_avro).collect()),
        Value::Object(map) => AvroValue::Map(
            map.into_iter()
                .map(|(k, v)| (k, to_avro(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}
