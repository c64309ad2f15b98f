//! `connectors`: where change events come from.
//!
//! The Debezium MongoDB envelope (Avro and JSON-converter forms), a native MongoDB change-stream
//! source that emits the same envelope, and the Kafka Connect configurations shipped for
//! production. Depends on `state` and `topology`; the services depend on it, never the
//! other way round.

pub mod debezium;
pub mod kafka_connect;
pub mod mongo_source;

/// The CDC topic of the products collection: `{topic.prefix}.{db}.{collection}` with Debezium's
/// defaults here (`catalog`, `catalog`, `products`). The Debezium configuration in
/// `kafka-connect/` and [`mongo_source::MongoSourceConfig`] both produce it.
pub const CDC_TOPIC_DEFAULT: &str = "catalog.catalog.products";

/// The topic of image events (`ImageCollected`, `ImageFailed`, `ImageRemoved`), read by the
/// complete-products projection (the service, or the MongoDB sink connector in `kafka-connect/`).
pub const IMAGE_EVENTS_TOPIC_DEFAULT: &str = "image-events";
