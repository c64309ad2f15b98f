//! A native MongoDB change-stream source emitting Debezium MongoDB records.
//!
//! [`MongoChangeSource`] does what Debezium's MongoDB connector does for one collection, with
//! `capture.mode=change_streams_update_full` and `snapshot.mode=initial`: on first start it
//! records the change stream's current position, emits every existing document as a snapshot
//! read (`op` `r`), then follows the collection's change stream (`watch()` with
//! `fullDocument: updateLookup`) from that position, emitting `c` (insert), `u` (update,
//! replace), `d` (delete) and a tombstone after each delete. Records are Debezium's envelope,
//! serialized by a [`ChangeEncoder`] (Avro through a schema registry, or the JSON converter's
//! form) and written to a [`ChangeSink`] (the engine's transports, an idempotent Kafka
//! producer, or a closure).
//!
//! **Delivery is at-least-once.** The resume token of an event is stored (a sled tree of the
//! `state` crate) only after the sink acknowledged every record up to that event; a restart
//! resumes after the stored token, so it may repeat the last events but never skips one.
//! Consumers absorb repeats with the source position (`source.ts_ms` + `source.ord`).
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use connectors::mongo_source::{ChangeEncoder, KafkaChangeSink, MongoSourceConfig};
//! use topology::serdes::HttpSchemaRegistry;
//!
//! let config = MongoSourceConfig::new("mongodb://127.0.0.1:27017", "catalog", "products", "/var/lib/cdc");
//! let encoder = ChangeEncoder::avro(Arc::new(HttpSchemaRegistry::new("http://127.0.0.1:8081")),
//!     &config.topic_prefix, &config.database, &config.collection)?;
//! let kafka = topology::transport::KafkaClientConfig::new("127.0.0.1:9092");
//! let sink = KafkaChangeSink::new(&kafka, config.topic())?;
//! let mut source = config.build(encoder)?;
//! source.run(sink, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod config;
mod convert;
mod encoder;
mod error;
mod offsets;
mod sink;
mod source;

pub use config::MongoSourceConfig;
pub use convert::{ChangeOrigin, DocumentChange, SOURCE_VERSION};
pub use encoder::ChangeEncoder;
pub use error::SourceError;
pub use offsets::{OFFSETS_STORE, StoredOffset};
pub use sink::{
    CallbackSink, ChangeRecord, ChangeSink, Delivery, EmbeddedLogSink, KafkaChangeSink, SinkError,
    TransportSink,
};
pub use source::{MongoChangeSource, SourceStats};
