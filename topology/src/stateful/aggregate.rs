//! Aggregations over grouped streams and grouped tables.

use std::sync::Arc;

use crate::processor::ProcessError;
use crate::{Record, Value};

use super::stored::{StoredValue, key_bytes};
use super::{OperatorContext, StatefulOperator, require_key};

/// The first aggregate of a key (or a window, or a session).
pub type Initializer = Arc<dyn Fn() -> Value + Send + Sync>;
/// Adds a value to an aggregate: `(key, value, aggregate) -> aggregate`.
pub type Aggregator = Arc<dyn Fn(&Value, &Value, Value) -> Value + Send + Sync>;
/// Takes a value out of an aggregate (a grouped table's old value):
/// `(key, old value, aggregate) -> aggregate`.
pub type Subtractor = Aggregator;
/// Combines two values: `(aggregate, value) -> aggregate`.
pub type Reducer = Arc<dyn Fn(Value, &Value) -> Value + Send + Sync>;
/// Picks a row's group: `(key, value) -> group key`.
pub type GroupSelector = Arc<dyn Fn(&Value, &Value) -> Value + Send + Sync>;
/// Merges two sessions' aggregates: `(key, aggregate, aggregate) -> aggregate`.
pub type Merger = Arc<dyn Fn(&Value, Value, Value) -> Value + Send + Sync>;

/// The header a grouped table's regrouping writes on the records it sends on: `subtract`
/// for a key's old value, `add` for its new one. It travels through the repartition topic.
pub(crate) const CHANGE_HEADER: &str = "topology.change";

/// How an aggregate starts and grows.
#[derive(Clone)]
pub(crate) enum Combine {
    /// `init()` then `add(key, value, aggregate)`.
    Aggregate { init: Initializer, add: Aggregator },
    /// The first value, then `reduce(aggregate, value)`.
    Reduce(Reducer),
}

impl Combine {
    pub(crate) fn count() -> Self {
        Combine::Aggregate {
            init: Arc::new(|| Value::Json(0.into())),
            add: Arc::new(|_, _, n| Value::Json((as_count(&n) + 1).into())),
        }
    }

    pub(crate) fn apply(&self, key: &Value, value: &Value, current: Option<Value>) -> Value {
        match (self, current) {
            (Combine::Aggregate { init, add }, current) => {
                add(key, value, current.unwrap_or_else(|| init()))
            }
            (Combine::Reduce(_), None) => value.clone(),
            (Combine::Reduce(reduce), Some(current)) => reduce(current, value),
        }
    }
}

/// A count kept as a JSON number.
pub(crate) fn as_count(v: &Value) -> i64 {
    v.to_json().as_i64().unwrap_or(0)
}

/// `count`, `reduce` and `aggregate` of a grouped stream: one aggregate per key in `store`,
/// each update forwarded as the key's new aggregate. Records without a value are skipped
/// (as Kafka Streams does), counted as dropped.
pub(crate) struct StreamAggregate {
    pub(crate) store: String,
    pub(crate) combine: Combine,
}

impl StatefulOperator for StreamAggregate {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = require_key(&record, "aggregate")?.clone();
        let Some(value) = &record.value else {
            return Ok(());
        };
        let store = ctx.cached::<Vec<u8>, StoredValue>(&self.store)?;
        let k = key_bytes(&key);
        let current = store.get(&k)?.map(Value::from);
        let next = self.combine.apply(&key, value, current);
        store.set(k, Some(StoredValue::from(&next)))?;
        ctx.forward(record.with_value(Some(next)));
        Ok(())
    }
}

/// What a grouped table remembers per source key: the group it last sent the key's value to,
/// and that value (to take it out again when the row changes).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Sent {
    group: StoredValue,
    value: StoredValue,
}

/// A grouped table's regrouping, before its repartition topic: for each changed row, a
/// `subtract` of the value it last sent (to its old group) and an `add` of the new value (to
/// its new group), as Kafka Streams sends old and new values through its repartition topic.
pub(crate) struct Regroup {
    /// Source key → what was last sent for it.
    pub(crate) store: String,
    /// `(key, value) -> new group key`.
    pub(crate) select: GroupSelector,
}

impl StatefulOperator for Regroup {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = require_key(&record, "group_by on a table")?.clone();
        let store = ctx.cached::<Vec<u8>, Sent>(&self.store)?;
        let k = key_bytes(&key);
        if let Some(old) = store.get(&k)? {
            let mut out = record.clone();
            out.key = Some(Value::from(old.group));
            out.value = Some(Value::from(old.value));
            out.headers.insert(CHANGE_HEADER, "subtract");
            ctx.forward(out);
        }
        match &record.value {
            Some(value) => {
                let group = (self.select)(&key, value);
                let sent = Sent {
                    group: StoredValue::from(&group),
                    value: StoredValue::from(value),
                };
                store.set(k, Some(sent))?;
                let mut out = record.clone();
                out.key = Some(group);
                out.headers.insert(CHANGE_HEADER, "add");
                ctx.forward(out);
            }
            None => store.set(k, None)?,
        }
        Ok(())
    }
}

/// `aggregate(init, add, subtract)` (and `count`, `reduce`) of a grouped table, after its
/// repartition topic: applies each `subtract` and `add` to the group's aggregate and
/// forwards the new aggregate.
pub(crate) struct TableAggregate {
    pub(crate) store: String,
    pub(crate) init: Initializer,
    pub(crate) add: Aggregator,
    pub(crate) subtract: Subtractor,
}

impl StatefulOperator for TableAggregate {
    fn process(&self, mut record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = require_key(&record, "aggregate on a table")?.clone();
        let Some(value) = &record.value else {
            return Ok(());
        };
        let subtract = record.headers.get_str(CHANGE_HEADER) == Some("subtract");
        let store = ctx.cached::<Vec<u8>, StoredValue>(&self.store)?;
        let k = key_bytes(&key);
        let current = store
            .get(&k)?
            .map(Value::from)
            .unwrap_or_else(|| (self.init)());
        let next = if subtract {
            (self.subtract)(&key, value, current)
        } else {
            (self.add)(&key, value, current)
        };
        store.set(k, Some(StoredValue::from(&next)))?;
        record.headers.0.retain(|h| h.key != CHANGE_HEADER);
        ctx.forward(record.with_value(Some(next)));
        Ok(())
    }
}
