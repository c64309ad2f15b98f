//! The Debezium MongoDB change-event envelope.
//!
//! Every form a Debezium MongoDB connector writes to Kafka — Avro (Confluent `AvroConverter`),
//! JSON with or without the Connect `schema`/`payload` wrapper, tombstones, heartbeats — decodes
//! into one [`Record`], whose changes are [`ChangeEvent`]s with documents as relaxed extended
//! JSON. The encoders write the same forms back, so a native change-stream source can emit
//! exactly what Debezium emits.
//!
//! # Example
//! ```
//! use connectors::debezium::{AvroSchemas, Op, decode_avro, decode_json};
//! let key = br#"{"id": "1004"}"#;
//! let value = br#"{"op": "r", "ts_ms": 1, "after": "{\"_id\": {\"$numberLong\": \"1004\"}}",
//!   "source": {"version": "3.1.0.Final", "connector": "mongodb", "name": "fulfillment",
//!              "ts_ms": 1000, "snapshot": "true", "db": "inventory",
//!              "collection": "customers", "ord": 1}}"#;
//! let event = decode_json(Some(key), Some(value)).expect("decodes").into_change().expect("a change");
//! assert_eq!(event.op, Op::Read);
//!
//! let schemas = AvroSchemas::for_event(&event).expect("schemas");
//! let (avro_key, avro_value) = schemas.encode(&event).expect("encodes");
//! let again = decode_avro(Some(&avro_key), avro_value.as_ref()).expect("decodes");
//! assert_eq!(again.into_change(), Some(event));
//! ```

mod avro;
mod cli;
mod error;
mod event;
mod extjson;
mod json;
mod payload;

pub use avro::{AvroSchemas, avro_namespace, decode_avro};
pub use cli::decode_cli_input;
pub use error::{DecodeError, EncodeError};
pub use event::{
    ChangeEvent, Heartbeat, Op, Record, SourceInfo, SourcePosition, TransactionBlock,
    TruncatedArray, UpdateDescription,
};
pub use json::{
    connect_envelope_schema, connect_key_schema, decode_json, decode_json_value, encode_json,
};
