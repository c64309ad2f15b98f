//! From MongoDB documents and change-stream events to Debezium [`ChangeEvent`]s, field by field
//! as Debezium 3.x's MongoDB connector fills them (checked against Debezium 3.6.1 running
//! against SecantusDB, `infrastructure/connect/samples/`):
//!
//! - key `id`: the `_id`; `after`/`before`: the full documents (held here as *canonical*
//!   extended JSON, so the encoder renders `Int64`/`Int32` widths exactly as Debezium does);
//! - `source.ts_ms`: the event's `wallTime` when the server reports it, else the cluster time's
//!   seconds × 1000; `ts_us`/`ts_ns` the same instant; `ord`: the cluster time's increment;
//!   `wallTime`, `lsid` (relaxed extended JSON), `txnNumber` as reported;
//! - snapshot reads: `snapshot` `first`/`true`/`last` (a lone document is `last`), `ts_ms` the
//!   read time, `ord` `-1`, no `wallTime`;
//! - `updateDescription` for `update` operations only (empty lists become null), none for
//!   `replace`.

use mongodb::bson::{Bson, DateTime, Document, Timestamp};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use serde_json::Value;

use crate::debezium::{ChangeEvent, Op, SourceInfo, TruncatedArray, UpdateDescription};

/// The `source.version` the native source writes.
pub const SOURCE_VERSION: &str = concat!("catalog-stream-", env!("CARGO_PKG_VERSION"));

/// Where change events come from: the server name (Debezium's `topic.prefix`), database and
/// collection, as their `source` block names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOrigin {
    /// `source.name`: the connector's logical server name (`topic.prefix`).
    pub server_name: String,
    /// `source.db`.
    pub db: String,
    /// `source.collection`.
    pub collection: String,
}

/// What one change-stream event becomes.
#[derive(Debug)]
pub(crate) enum Converted {
    /// Records to write (a delete is followed by its tombstone when enabled).
    Changes(Vec<ChangeEvent>),
    /// An event that ends the stream (drop, rename, dropDatabase, invalidate).
    End(String),
    /// An event type Debezium does not turn into a record.
    Skip(String),
    /// An event without what a record needs.
    Malformed(String),
}

/// The snapshot flag of the `index`-th of `total` (or more, when `more` is true) snapshot reads.
pub(crate) fn snapshot_flag(first: bool, last: bool) -> &'static str {
    match (first, last) {
        (_, true) => "last",
        (true, false) => "first",
        (false, false) => "true",
    }
}

fn canonical(doc: Document) -> Value {
    Bson::Document(doc).into_canonical_extjson()
}

fn source(origin: &ChangeOrigin, ts_ms: i64, snapshot: &str, ord: i32) -> SourceInfo {
    SourceInfo {
        version: SOURCE_VERSION.to_owned(),
        connector: "mongodb".to_owned(),
        name: origin.server_name.clone(),
        ts_ms,
        snapshot: Some(snapshot.to_owned()),
        db: origin.db.clone(),
        rs: None,
        sequence: None,
        ts_us: ts_ms.checked_mul(1_000),
        ts_ns: ts_ms.checked_mul(1_000_000),
        collection: origin.collection.clone(),
        ord,
        lsid: None,
        txn_number: None,
        wall_time: None,
    }
}

/// A snapshot read (`op` `r`) of `doc`, read at `now_ms`.
pub(crate) fn snapshot_event(
    origin: &ChangeOrigin,
    doc: Document,
    flag: &str,
    now_ms: i64,
) -> Result<ChangeEvent, String> {
    let id = doc
        .get("_id")
        .cloned()
        .ok_or("a snapshot document has no _id")?
        .into_canonical_extjson();
    Ok(ChangeEvent {
        op: Op::Read,
        db: Some(origin.db.clone()),
        collection: Some(origin.collection.clone()),
        id,
        after: Some(canonical(doc)),
        before: None,
        update_description: None,
        source: Some(source(origin, now_ms, flag, -1)),
        ts_ms: Some(now_ms),
        transaction: None,
    })
}

fn cluster_ms(ts: Timestamp) -> i64 {
    i64::from(ts.time) * 1000
}

/// One change to one document, as a change-data-capture source sees it: what becomes a
/// Debezium envelope. The change-stream reader fills it from a change event; another source of
/// changes (the standalone mode's outbox) fills it from its own records, so both emit the same
/// envelopes.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentChange {
    /// Create, update or delete (snapshot reads are built by the change-stream reader).
    pub op: Op,
    /// The document's `_id`.
    pub id: Bson,
    /// The document after the change (create, update); `None` for a delete.
    pub after: Option<Document>,
    /// The document before the change, when the source has it.
    pub before: Option<Document>,
    /// When the change was made, ms since the epoch (`source.ts_ms`; its seconds with `ord`
    /// are the change's position).
    pub ts_ms: i64,
    /// The server's wall clock at the change (`source.wallTime`), when reported.
    pub wall_time_ms: Option<i64>,
    /// Orders changes made in the same second (`source.ord`; the cluster time's increment).
    pub ord: i32,
    /// What an update changed (change streams' `updateDescription`), when known.
    pub update_description: Option<UpdateDescription>,
    /// The session of a transaction's change (relaxed extended JSON).
    pub lsid: Option<String>,
    /// The transaction number within that session.
    pub txn_number: Option<i64>,
}

impl DocumentChange {
    /// The change's records: its envelope, followed by a tombstone after a delete when
    /// `tombstones` is set. `now_ms` is the envelope's `ts_ms` (when the source processed it).
    pub fn into_events(
        self,
        origin: &ChangeOrigin,
        tombstones: bool,
        now_ms: i64,
    ) -> Vec<ChangeEvent> {
        let id = self.id.into_canonical_extjson();
        let mut info = source(origin, self.ts_ms, "false", self.ord);
        info.wall_time = self.wall_time_ms;
        info.lsid = self.lsid;
        info.txn_number = self.txn_number;
        let op = self.op;
        let change = ChangeEvent {
            op,
            db: Some(origin.db.clone()),
            collection: Some(origin.collection.clone()),
            id: id.clone(),
            after: self.after.map(canonical),
            before: self.before.map(canonical),
            update_description: self.update_description,
            source: Some(info),
            ts_ms: Some(now_ms),
            transaction: None,
        };
        let mut out = vec![change];
        if op == Op::Delete && tombstones {
            out.push(ChangeEvent::tombstone(id));
        }
        out
    }
}

/// Converts one change-stream event (with `fullDocument: updateLookup`).
pub(crate) fn convert(
    origin: &ChangeOrigin,
    event: ChangeStreamEvent<Document>,
    tombstones: bool,
    now_ms: i64,
) -> Converted {
    let op = match &event.operation_type {
        OperationType::Insert => Op::Create,
        OperationType::Update | OperationType::Replace => Op::Update,
        OperationType::Delete => Op::Delete,
        OperationType::Drop => return Converted::End("drop".into()),
        OperationType::Rename => return Converted::End("rename".into()),
        OperationType::DropDatabase => return Converted::End("dropDatabase".into()),
        OperationType::Invalidate => return Converted::End("invalidate".into()),
        OperationType::Other(name) => return Converted::Skip(name.clone()),
        other => return Converted::Skip(format!("{other:?}")),
    };
    let Some(id) = event.document_key.as_ref().and_then(|k| k.get("_id")) else {
        return Converted::Malformed(format!("{} event without documentKey._id", op.code()));
    };
    let id = id.clone();
    let Some(cluster_time) = event.cluster_time else {
        return Converted::Malformed(format!("{} event without clusterTime", op.code()));
    };
    let update_description = match (&event.operation_type, event.update_description) {
        (OperationType::Update, Some(ud)) => Some(UpdateDescription {
            removed_fields: Some(ud.removed_fields).filter(|f| !f.is_empty()),
            updated_fields: Some(canonical(ud.updated_fields)),
            truncated_arrays: ud.truncated_arrays.filter(|a| !a.is_empty()).map(|arrays| {
                arrays
                    .into_iter()
                    .map(|a| TruncatedArray {
                        field: a.field,
                        size: a.new_size,
                    })
                    .collect()
            }),
        }),
        _ => None,
    };
    let after = match op {
        Op::Delete => None,
        _ => event.full_document,
    };
    if after.is_none() && op == Op::Create {
        return Converted::Malformed("insert event without fullDocument".into());
    }
    if after.is_none() && update_description.is_none() && op == Op::Update {
        // A replace of a document deleted before the lookup: nothing to say about it that the
        // following delete will not say.
        return Converted::Skip("replace whose document is already gone".into());
    }
    let change = DocumentChange {
        op,
        id,
        after,
        before: event.full_document_before_change,
        ts_ms: event
            .wall_time
            .map(DateTime::timestamp_millis)
            .unwrap_or_else(|| cluster_ms(cluster_time)),
        wall_time_ms: event.wall_time.map(DateTime::timestamp_millis),
        ord: i32::try_from(cluster_time.increment).unwrap_or(i32::MAX),
        update_description,
        lsid: event
            .lsid
            .map(|l| Bson::Document(l).into_relaxed_extjson().to_string()),
        txn_number: event.txn_number,
    };
    Converted::Changes(change.into_events(origin, tombstones, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn origin() -> ChangeOrigin {
        ChangeOrigin {
            server_name: "catalog".into(),
            db: "catalog".into(),
            collection: "products".into(),
        }
    }

    #[test]
    fn snapshot_flags() {
        assert_eq!(snapshot_flag(true, true), "last");
        assert_eq!(snapshot_flag(true, false), "first");
        assert_eq!(snapshot_flag(false, false), "true");
        assert_eq!(snapshot_flag(false, true), "last");
    }

    #[test]
    fn snapshot_event_keeps_integer_widths() {
        let e = snapshot_event(
            &origin(),
            doc! {"_id": 5_i64, "n": 5_i32, "big": 7_i64},
            "last",
            1_000,
        )
        .expect("converts");
        let (key, value) =
            crate::debezium::encode_json(&e, false, "catalog.catalog.products").expect("encodes");
        assert_eq!(key, serde_json::json!({"id": "5"}));
        let value = value.expect("a value");
        assert_eq!(
            value["after"],
            r#"{"_id": {"$numberLong": "5"},"n": 5,"big": {"$numberLong": "7"}}"#
        );
        assert_eq!(value["source"]["ord"], -1);
        assert_eq!(value["source"]["snapshot"], "last");
        assert_eq!(value["op"], "r");
    }
}
