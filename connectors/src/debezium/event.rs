//! The normalized change event: one type for every Debezium MongoDB record, whatever its
//! converter (Avro or JSON, with or without the Connect schema wrapper).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::DecodeError;

/// What happened to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// `c`: an insert.
    Create,
    /// `r`: a snapshot read.
    Read,
    /// `u`: an update or a replace.
    Update,
    /// `d`: a delete.
    Delete,
    /// The null-valued record Debezium writes after a delete, so compaction can drop the key.
    Tombstone,
}

impl Op {
    /// Parses Debezium's one-letter op code.
    ///
    /// # Example
    /// ```
    /// use connectors::debezium::Op;
    /// assert_eq!(Op::from_code("u").expect("known op"), Op::Update);
    /// assert!(Op::from_code("x").is_err());
    /// ```
    pub fn from_code(code: &str) -> Result<Self, DecodeError> {
        match code {
            "c" => Ok(Op::Create),
            "r" => Ok(Op::Read),
            "u" => Ok(Op::Update),
            "d" => Ok(Op::Delete),
            other => Err(DecodeError::UnknownOp(other.to_owned())),
        }
    }

    /// The op code as Debezium writes it (`c`, `r`, `u`, `d`); `tombstone` for a tombstone,
    /// which has no `op` field on the wire.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Read => "r",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Tombstone => "tombstone",
        }
    }

    /// True for the ops that carry the new state of the document (c, r, u).
    pub fn is_upsert(self) -> bool {
        matches!(self, Op::Create | Op::Read | Op::Update)
    }
}

/// The `source` block: where and when the change happened.
///
/// Field names follow Debezium 3.x (`io.debezium.connector.mongo.Source`); `rs` is the legacy
/// replica-set name of Debezium 1.x/2.x JSON events and is not part of the 3.x Avro schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Debezium version, e.g. `2.7.0.Final`.
    pub version: String,
    /// Always `mongodb` for this connector.
    pub connector: String,
    /// The connector's `topic.prefix` (logical server name).
    pub name: String,
    /// Time of the change in the database, in milliseconds (a cluster time: whole seconds).
    pub ts_ms: i64,
    /// `true`, `first`, `last`, `false`, `incremental`, ...; a JSON boolean is kept as its text.
    pub snapshot: Option<String>,
    /// Database name.
    pub db: String,
    /// Legacy replica-set name (Debezium before 3.x).
    pub rs: Option<String>,
    /// Debezium's `sequence` (unused by MongoDB, usually null).
    pub sequence: Option<String>,
    /// `ts_ms` in microseconds, when the connector writes it.
    pub ts_us: Option<i64>,
    /// `ts_ms` in nanoseconds, when the connector writes it.
    pub ts_ns: Option<i64>,
    /// Collection name.
    pub collection: String,
    /// Increment of the cluster time within its second: orders events of the same second.
    pub ord: i32,
    /// Logical session id of a transaction, as Debezium's extended JSON string.
    pub lsid: Option<String>,
    /// Transaction number within the session.
    pub txn_number: Option<i64>,
    /// The change's wall-clock time in milliseconds, when the server reports it.
    pub wall_time: Option<i64>,
}

/// A change's place in its source: `source.ts_ms` in whole seconds and `source.ord`. The
/// project's one position type, shared with the state stores and the image pipeline.
pub use state::SourcePosition;

impl SourceInfo {
    /// The position of this change, for ordering and idempotency checks.
    ///
    /// # Example
    /// ```
    /// use connectors::debezium::SourcePosition;
    /// let earlier = SourcePosition { seconds: 1_739_321_992, ord: 28 };
    /// let later = SourcePosition { seconds: 1_739_321_992, ord: 29 };
    /// assert!(earlier < later);
    /// ```
    pub fn position(&self) -> SourcePosition {
        SourcePosition::new(self.ts_ms.div_euclid(1000), self.ord)
    }

    /// True when the event was produced by an initial or incremental snapshot.
    pub fn is_snapshot(&self) -> bool {
        !matches!(self.snapshot.as_deref(), None | Some("false"))
    }
}

/// One entry of `updateDescription.truncatedArrays`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncatedArray {
    /// Dotted path of the array field.
    pub field: String,
    /// Its new length.
    pub size: i32,
}

/// `updateDescription`: what an `update` operation changed (absent for replaces).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateDescription {
    /// Dotted paths of removed fields.
    pub removed_fields: Option<Vec<String>>,
    /// Set fields and their new values, as relaxed extended JSON.
    pub updated_fields: Option<Value>,
    /// Arrays shortened by the update.
    pub truncated_arrays: Option<Vec<TruncatedArray>>,
}

/// The envelope's `transaction` block (present when `provide.transaction.metadata` is on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionBlock {
    /// Transaction id.
    pub id: String,
    /// Position of the event among all events of the transaction.
    pub total_order: i64,
    /// Position of the event among the transaction's events of this collection.
    pub data_collection_order: i64,
}

/// A Debezium MongoDB change event, normalized.
///
/// Documents are relaxed extended JSON (`{"$oid": ..}`, plain numbers, `{"$date": "<ISO>"}`),
/// whatever form the record carried. A tombstone has only `op` and `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// What happened.
    pub op: Op,
    /// Database (`source.db`); `None` for a tombstone.
    pub db: Option<String>,
    /// Collection (`source.collection`); `None` for a tombstone.
    pub collection: Option<String>,
    /// The document's `_id` as relaxed extended JSON: `{"$oid": ".."}`, a number, a string...
    pub id: Value,
    /// The document after the change (c, r, u; absent for deletes and for updates captured
    /// without a full-document lookup).
    pub after: Option<Value>,
    /// The document before the change, when pre-images are captured.
    pub before: Option<Value>,
    /// What an update changed.
    pub update_description: Option<UpdateDescription>,
    /// Where and when the change happened; `None` for a tombstone.
    pub source: Option<SourceInfo>,
    /// When Debezium processed the event (envelope `ts_ms`).
    pub ts_ms: Option<i64>,
    /// Transaction metadata, when enabled.
    pub transaction: Option<TransactionBlock>,
}

impl ChangeEvent {
    /// A tombstone for the document with this `_id`.
    pub fn tombstone(id: Value) -> Self {
        ChangeEvent {
            op: Op::Tombstone,
            db: None,
            collection: None,
            id,
            after: None,
            before: None,
            update_description: None,
            source: None,
            ts_ms: None,
            transaction: None,
        }
    }

    /// The source position of the change; `None` for a tombstone.
    pub fn position(&self) -> Option<SourcePosition> {
        self.source.as_ref().map(SourceInfo::position)
    }
}

/// A Debezium heartbeat record (topic `__debezium-heartbeat.<prefix>`): key
/// `{"serverName": ".."}`, value `{"ts_ms": ..}`. Not a change; consumers drop and count it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The connector's `topic.prefix`, from the key, when a key was given.
    pub server_name: Option<String>,
    /// When the heartbeat was emitted, in milliseconds.
    pub ts_ms: Option<i64>,
}

/// What a Debezium MongoDB Kafka record holds.
// Almost every record is a change: boxing it would cost an allocation per event to shrink the
// rare heartbeat.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A change (or a tombstone).
    Change(ChangeEvent),
    /// A heartbeat.
    Heartbeat(Heartbeat),
}

impl Record {
    /// The change event, if this is one.
    pub fn into_change(self) -> Option<ChangeEvent> {
        match self {
            Record::Change(event) => Some(event),
            Record::Heartbeat(_) => None,
        }
    }
}
