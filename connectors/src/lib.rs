//! `connectors`: where change events come from.
//!
//! The Debezium MongoDB envelope (Avro and JSON-converter forms), a native MongoDB change-stream
//! source that emits the same envelope, and the Kafka Connect configurations shipped for
//! production. Depends on `state` (and later `topology`); the services depend on it, never the
//! other way round.

pub mod debezium;
