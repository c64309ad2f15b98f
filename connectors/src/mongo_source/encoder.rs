//! How the source serializes events: Avro in Confluent's wire format through a schema registry
//! (what Debezium's `AvroConverter` writes), or the JSON converter's form.

use std::sync::Arc;

use topology::Value as EngineValue;
use topology::serdes::{AvroSerde, SchemaRegistry, Serde};

use crate::debezium::{AvroSchemas, ChangeEvent, EncodeError, avro_namespace, encode_json};

use super::error::SourceError;

/// Serializes [`ChangeEvent`]s into Kafka key/value bytes.
///
/// # Example
/// ```
/// # tokio::runtime::Runtime::new().expect("runtime").block_on(async {
/// use std::sync::Arc;
/// use connectors::debezium::ChangeEvent;
/// use connectors::mongo_source::ChangeEncoder;
/// use topology::serdes::MemorySchemaRegistry;
/// let encoder = ChangeEncoder::avro(Arc::new(MemorySchemaRegistry::default()), "catalog", "catalog", "products")
///     .expect("schemas");
/// let tombstone = ChangeEvent::tombstone(serde_json::json!("p-1"));
/// let (key, value) = encoder.encode("catalog.catalog.products", &tombstone).await.expect("encodes");
/// assert_eq!(key[0], 0); // Confluent magic byte
/// assert!(value.is_none());
/// # });
/// ```
#[derive(Debug, Clone)]
pub enum ChangeEncoder {
    /// Avro, Confluent wire format, subjects `{topic}-key` / `{topic}-value`.
    Avro {
        /// Debezium's key and envelope schemas for the collection.
        schemas: Box<AvroSchemas>,
        /// Serde writing keys.
        key: AvroSerde,
        /// Serde writing values.
        value: AvroSerde,
    },
    /// The JSON converter's rendering (`schemas.enable` on or off).
    Json {
        /// Wrap key and value in `{"schema": .., "payload": ..}`.
        schemas_enable: bool,
        /// `<topic.prefix>.<db>.<collection>`, for the Connect schema names.
        namespace: String,
    },
}

impl ChangeEncoder {
    /// Avro through `registry`, with Debezium's schemas for `prefix.db.collection`.
    pub fn avro(
        registry: Arc<dyn SchemaRegistry>,
        prefix: &str,
        db: &str,
        collection: &str,
    ) -> Result<Self, EncodeError> {
        let schemas = AvroSchemas::new(&avro_namespace(prefix, db, collection))?;
        Ok(ChangeEncoder::Avro {
            key: AvroSerde::new(registry.clone()).with_schema(schemas.key().clone()),
            value: AvroSerde::new(registry).with_schema(schemas.value().clone()),
            schemas: Box::new(schemas),
        })
    }

    /// The JSON converter's form for `prefix.db.collection`.
    pub fn json(schemas_enable: bool, prefix: &str, db: &str, collection: &str) -> Self {
        ChangeEncoder::Json {
            schemas_enable,
            namespace: avro_namespace(prefix, db, collection),
        }
    }

    /// Serializes `event` for `topic`: `(key, value)`, value `None` for a tombstone.
    pub async fn encode(
        &self,
        topic: &str,
        event: &ChangeEvent,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), SourceError> {
        let namespace = || {
            event
                .source
                .as_ref()
                .map(|s| format!("{}.{}", s.db, s.collection))
                .unwrap_or_else(|| "tombstone".into())
        };
        let encode_err = |source| SourceError::Encode {
            namespace: namespace(),
            source,
        };
        match self {
            ChangeEncoder::Json {
                schemas_enable,
                namespace: ns,
            } => {
                let (key, value) = encode_json(event, *schemas_enable, ns).map_err(encode_err)?;
                // Serializing a serde_json::Value to bytes cannot fail.
                let key = serde_json::to_vec(&key).unwrap_or_default();
                let value = value.map(|v| serde_json::to_vec(&v).unwrap_or_default());
                Ok((key, value))
            }
            ChangeEncoder::Avro {
                schemas,
                key,
                value,
            } => {
                let (k, v) = schemas.encode(event).map_err(encode_err)?;
                let serde_err = |source| SourceError::Serde {
                    topic: topic.to_owned(),
                    source,
                };
                let k = key
                    .serialize(topic, true, &EngineValue::Avro(k))
                    .await
                    .map_err(serde_err)?;
                let v = match v {
                    None => None,
                    Some(v) => Some(
                        value
                            .serialize(topic, false, &EngineValue::Avro(v))
                            .await
                            .map_err(serde_err)?,
                    ),
                };
                Ok((k, v))
            }
        }
    }
}
