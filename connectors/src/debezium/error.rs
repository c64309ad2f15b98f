//! Typed errors of the Debezium envelope model: what was wrong, and where in the record.

use thiserror::Error;

/// Why a Kafka record could not be read as a Debezium MongoDB change event.
///
/// `part` names where the problem is: `key`, `value`, `source`, `updateDescription`,
/// `transaction`, or a field path such as `after`.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// Neither a key nor a value: nothing to decode.
    #[error("record has neither a key nor a value")]
    Empty,
    /// The bytes are not JSON at all.
    #[error("{part} is not valid JSON: {source}")]
    InvalidJson {
        /// `key` or `value`.
        part: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// A JSON object (or Avro record) was expected.
    #[error("{part} must be an object, found {found}")]
    NotAnObject {
        /// Which part of the record.
        part: &'static str,
        /// The JSON type that was found instead.
        found: &'static str,
    },
    /// A required field is absent or null.
    #[error("missing field `{field}` in {part}")]
    MissingField {
        /// Which part of the record.
        part: &'static str,
        /// The field's name.
        field: &'static str,
    },
    /// A field has a value of the wrong type.
    #[error("field `{field}` in {part} must be {expected}, found {found}")]
    WrongType {
        /// Which part of the record.
        part: &'static str,
        /// The field's name.
        field: &'static str,
        /// What the envelope requires.
        expected: &'static str,
        /// The JSON type (or value) found.
        found: String,
    },
    /// `op` is not one of Debezium's MongoDB operations.
    #[error("unknown op {0:?} (expected \"c\", \"r\", \"u\" or \"d\")")]
    UnknownOp(String),
    /// A field that carries a document as extended JSON does not parse as extended JSON.
    #[error("`{field}` is not valid MongoDB extended JSON: {reason}")]
    InvalidExtJson {
        /// `after`, `before`, `updateDescription.updatedFields` or `key.id`.
        field: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A create or read event without `after`, or an update with neither `after` nor
    /// `updateDescription`.
    #[error("op {op:?} requires `after` (an update may have `updateDescription` instead)")]
    MissingAfter {
        /// The op code (`c`, `r` or `u`).
        op: &'static str,
    },
    /// The key is an object without an `id` field.
    #[error("key has no `id` field (expected {{\"id\": \"<extended JSON of _id>\"}})")]
    KeyWithoutId,
    /// A tombstone (null value) arrived without a key, so it names no document.
    #[error("tombstone (null value) without a key")]
    TombstoneWithoutKey,
    /// No key was given and neither `after` nor `before` holds an `_id`.
    #[error("no document id: no key, and neither `after` nor `before` has an `_id`")]
    MissingId,
    /// An Avro value holds a type the Debezium envelope never uses.
    #[error("Avro {part} holds an unsupported value at `{path}`: {found}")]
    UnsupportedAvro {
        /// `key` or `value`.
        part: &'static str,
        /// Path of the field within the record.
        path: String,
        /// A short description of the Avro value.
        found: String,
    },
}

/// Why a [`ChangeEvent`](super::ChangeEvent) could not be written as a Debezium record.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// A document (`after`, `before`, `id`, `updatedFields`) is not valid relaxed extended JSON.
    #[error("`{field}` is not valid MongoDB extended JSON: {reason}")]
    InvalidExtJson {
        /// Which field of the event.
        field: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// `after`/`before` must be documents (JSON objects).
    #[error("`{field}` must be a document (JSON object)")]
    NotADocument {
        /// Which field of the event.
        field: &'static str,
    },
    /// Only a tombstone may lack a `source` block.
    #[error("op {op:?} needs a `source` block")]
    MissingSource {
        /// The op code.
        op: &'static str,
    },
    /// The Avro schema could not be built or the value does not conform to it.
    #[error("Avro: {0}")]
    Avro(#[from] apache_avro::Error),
}
