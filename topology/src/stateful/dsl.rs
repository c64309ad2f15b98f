//! The builder DSL of the stateful operators, in Kafka Streams' shape: tables, grouping,
//! aggregation, windows, suppression and joins.
//!
//! Each method adds named nodes (and stores, and for a key change a repartition topic) to
//! the [`TopologyBuilder`] the stream came from. Store names are the names given to
//! the operators that own them, so `count("counts")` is queried as store `counts`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::graph::{NodeKind, Stream, TopologyBuilder};
use crate::serdes::{InternalSerde, SerdeRef};
use crate::{Record, StoreSpec, Value};

use super::aggregate::{
    Aggregator, Combine, GroupSelector, Initializer, Merger, Reducer, Regroup, StreamAggregate,
    Subtractor, TableAggregate, as_count,
};
use super::join::{JoinKind, Joiner, StreamStreamJoin, StreamTableJoin, TableTableJoin};
use super::table::{Materialize, debezium_row};
use super::window::{
    JoinWindows, SessionAggregate, SessionWindows, SuppressUntilClosed, TimeWindows,
    WindowAggregate,
};

fn builder_of(stream: &Stream) -> TopologyBuilder {
    TopologyBuilder::from_inner(stream.inner.clone())
}

fn internal() -> SerdeRef {
    Arc::new(InternalSerde)
}

/// Adds the operator node `name` after `stream`, with a store of its own named `name`.
fn own_store_node(stream: &Stream, name: &str, operator: super::OperatorRef) -> Table {
    builder_of(stream).store(StoreSpec::new(name));
    Table {
        stream: stream.stateful(name, operator, &[name]),
        store: Some(name.to_owned()),
    }
}

/// A table: the latest value per key, as a stream of its changes (tombstones delete).
/// Materialized tables keep their rows in a task store of their own name; joins and
/// queries need one ([`materialize`](Self::materialize)).
#[derive(Clone)]
pub struct Table {
    stream: Stream,
    store: Option<String>,
}

impl TopologyBuilder {
    /// A table of `topic` (Kafka Streams' `builder.table`): the source `{name}-source` and
    /// the materializing node `name`, whose store is also `name`.
    ///
    /// # Example
    /// ```
    /// use std::sync::Arc;
    /// use topology::{TopologyBuilder, serdes::StringSerde};
    /// let b = TopologyBuilder::new();
    /// let regions = b.table("regions", "user-regions", Arc::new(StringSerde), Arc::new(StringSerde));
    /// assert_eq!(regions.store_name(), Some("regions"));
    /// ```
    pub fn table(
        &self,
        name: &str,
        topic: &str,
        key_serde: SerdeRef,
        value_serde: SerdeRef,
    ) -> Table {
        let source = self.source(&format!("{name}-source"), topic, key_serde, value_serde);
        Table::materialized(&source, name)
    }

    /// A table of a Debezium change topic: one row per key, the event's `after` image
    /// (parsed when it is JSON text, as the MongoDB connector sends it), deleted on `d`
    /// events and on tombstones. Nodes: `{name}-source`, `{name}-rows`, `name` (and its store).
    pub fn cdc_table(
        &self,
        name: &str,
        topic: &str,
        key_serde: SerdeRef,
        value_serde: SerdeRef,
    ) -> Table {
        let rows = self
            .source(&format!("{name}-source"), topic, key_serde, value_serde)
            .map(&format!("{name}-rows"), |mut r| {
                r.value = debezium_row(r.value.as_ref());
                r
            });
        Table::materialized(&rows, name)
    }
}

impl Table {
    fn materialized(stream: &Stream, name: &str) -> Table {
        let store = name.to_owned();
        own_store_node(stream, name, Arc::new(Materialize { store }))
    }

    /// The table materialized in store `store` of the builder `b` (whose node of the same
    /// name upserts it): how the configuration file refers to a `type: table` node.
    pub fn of_store(b: &TopologyBuilder, store: &str) -> Table {
        Table {
            stream: b.stream(store),
            store: Some(store.to_owned()),
        }
    }

    /// The store holding its rows, when materialized.
    pub fn store_name(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// The node its changes come out of.
    pub fn name(&self) -> &str {
        self.stream.name()
    }

    /// Keeps its rows in the store `name` (a node of that name upserts them).
    pub fn materialize(&self, name: &str) -> Table {
        Table::materialized(&self.stream, name)
    }

    /// Its changes as a stream: one record per update, a tombstone per delete.
    pub fn to_stream(&self, name: &str) -> Stream {
        self.stream.then(name, NodeKind::Forward)
    }

    /// The rows for which `pred` holds; a row that stops matching is deleted (a tombstone).
    pub fn filter(
        &self,
        name: &str,
        pred: impl Fn(&Value, &Value) -> bool + Send + Sync + 'static,
    ) -> Table {
        let stream = self.stream.map(name, move |mut r: Record| {
            let keep = match (&r.key, &r.value) {
                (Some(k), Some(v)) => pred(k, v),
                _ => false,
            };
            if !keep {
                r.value = None;
            }
            r
        });
        Table {
            stream,
            store: None,
        }
    }

    /// Each row's value mapped by `f` (tombstones stay tombstones).
    pub fn map_values(
        &self,
        name: &str,
        f: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Table {
        let stream = self.stream.map(name, move |mut r: Record| {
            r.value = r.value.as_ref().map(&f);
            r
        });
        Table {
            stream,
            store: None,
        }
    }

    /// This table, materialized in `{name}-{side}` if it is not already.
    fn ensure_store(&self, name: &str, side: &str) -> (Table, String) {
        match &self.store {
            Some(store) => (self.clone(), store.clone()),
            None => {
                let store = format!("{name}-{side}");
                (self.materialize(&store), store)
            }
        }
    }

    /// Joins this table to `other` on the key: a row of the result for every key with rows
    /// on both sides (`Inner`), on this side (`Left`) or on either (`Outer`), recomputed when
    /// either side changes; a key that no longer qualifies is deleted. Both sides must be
    /// co-partitioned (checked when the runtime starts). Unmaterialized sides are
    /// materialized in `{name}-left` / `{name}-right`.
    pub fn join(
        &self,
        name: &str,
        other: &Table,
        kind: JoinKind,
        joiner: impl Fn(Option<&Value>, Option<&Value>) -> Value + Send + Sync + 'static,
    ) -> Table {
        let joiner: Joiner = Arc::new(joiner);
        let (left, left_store) = self.ensure_store(name, "left");
        let (right, right_store) = other.ensure_store(name, "right");
        let stores = [left_store.as_str(), right_store.as_str()];
        let from_left = left.stream.stateful(
            &format!("{name}-left-side"),
            Arc::new(TableTableJoin {
                other_store: right_store.clone(),
                this_is_left: true,
                kind,
                joiner: joiner.clone(),
            }),
            &stores,
        );
        let from_right = right.stream.stateful(
            &format!("{name}-right-side"),
            Arc::new(TableTableJoin {
                other_store: left_store.clone(),
                this_is_left: false,
                kind,
                joiner,
            }),
            &stores,
        );
        Table {
            stream: from_left.merge(name, &[&from_right]),
            store: None,
        }
    }

    /// Groups the rows by a new key (`select(key, value)`), through the repartition topic
    /// `<application_id>-{name}-repartition`; aggregate the groups with
    /// [`GroupedTable::aggregate`] (an adder and a subtractor: a row that changes leaves its
    /// old group).
    pub fn group_by(
        &self,
        name: &str,
        select: impl Fn(&Value, &Value) -> Value + Send + Sync + 'static,
    ) -> GroupedTable {
        GroupedTable {
            upstream: self.stream.clone(),
            name: name.to_owned(),
            select: Arc::new(select),
        }
    }
}

impl Stream {
    /// Groups by the current key, for an aggregation (no repartition: the records are
    /// already partitioned by it; after a key change use [`group_by`](Self::group_by)).
    pub fn group_by_key(&self) -> GroupedStream {
        GroupedStream {
            stream: self.clone(),
        }
    }

    /// Groups by a new key (`select(record)`; `None` drops the record), through the
    /// repartition topic `<application_id>-{name}-repartition` so that each key's records
    /// meet in one task. Nodes: `name` (sets the key), `{name}-repartition-sink`,
    /// `{name}-repartition-source`.
    pub fn group_by(
        &self,
        name: &str,
        select: impl Fn(&Record) -> Option<Value> + Send + Sync + 'static,
    ) -> GroupedStream {
        let rekeyed = self.flat_map(name, move |mut r: Record| match select(&r) {
            Some(key) => {
                r.key = Some(key);
                vec![r]
            }
            None => Vec::new(),
        });
        GroupedStream {
            stream: repartition(&rekeyed, name),
        }
    }

    /// This stream as a table (the latest value per key), materialized in store `name`.
    pub fn to_table(&self, name: &str) -> Table {
        Table::materialized(self, name)
    }

    /// Joins each record to the current row of its key in `table` (`Inner`: only when there
    /// is one; `Left`: always, the right side `None` when missing). Updates of the table do
    /// not trigger output. The stream and the table must be co-partitioned (checked when the
    /// runtime starts). An unmaterialized table is materialized in `{name}-table`.
    pub fn join_table(
        &self,
        name: &str,
        table: &Table,
        kind: JoinKind,
        joiner: impl Fn(Option<&Value>, Option<&Value>) -> Value + Send + Sync + 'static,
    ) -> Stream {
        let (_, store) = table.ensure_store(name, "table");
        if kind == JoinKind::Outer {
            builder_of(self).invalid(format!(
                "`{name}`: a stream–table join is inner or left, not outer"
            ));
        }
        self.stateful(
            name,
            Arc::new(StreamTableJoin {
                table_store: store.clone(),
                kind,
                joiner: Arc::new(joiner),
            }),
            &[&store],
        )
    }

    /// Joins the records of this stream and `other` with the same key whose timestamps are
    /// within `windows`. Inner: each pair once; left / outer: also each record that found no
    /// partner once its window closed (with `None` for the other side), as Kafka Streams
    /// does since 3.1. Buffers: stores `{name}-left-buffer` and `{name}-right-buffer`.
    pub fn join_stream(
        &self,
        name: &str,
        other: &Stream,
        windows: JoinWindows,
        kind: JoinKind,
        joiner: impl Fn(Option<&Value>, Option<&Value>) -> Value + Send + Sync + 'static,
    ) -> Stream {
        let joiner: Joiner = Arc::new(joiner);
        let (left_store, right_store) = (
            format!("{name}-left-buffer"),
            format!("{name}-right-buffer"),
        );
        let b = builder_of(self);
        b.store(StoreSpec::new(&left_store));
        b.store(StoreSpec::new(&right_store));
        let stores = [left_store.as_str(), right_store.as_str()];
        let left = self.stateful(
            &format!("{name}-left-side"),
            Arc::new(StreamStreamJoin::new(
                left_store.clone(),
                right_store.clone(),
                true,
                kind,
                windows,
                joiner.clone(),
            )),
            &stores,
        );
        let right = other.stateful(
            &format!("{name}-right-side"),
            Arc::new(StreamStreamJoin::new(
                right_store.clone(),
                left_store.clone(),
                false,
                kind,
                windows,
                joiner,
            )),
            &stores,
        );
        left.merge(name, &[&right])
    }
}

/// Sends `stream` through the repartition topic `{name}-repartition` and returns the stream
/// read back from it.
fn repartition(stream: &Stream, name: &str) -> Stream {
    let b = builder_of(stream);
    let topic = format!("{name}-repartition");
    b.internal_topic(&topic);
    stream.to(
        &format!("{name}-repartition-sink"),
        &topic,
        internal(),
        internal(),
    );
    b.source(
        &format!("{name}-repartition-source"),
        &topic,
        internal(),
        internal(),
    )
}

/// A stream grouped by key, ready to aggregate.
#[derive(Clone)]
pub struct GroupedStream {
    stream: Stream,
}

impl GroupedStream {
    fn aggregated(&self, name: &str, combine: Combine) -> Table {
        let store = name.to_owned();
        own_store_node(
            &self.stream,
            name,
            Arc::new(StreamAggregate { store, combine }),
        )
    }

    /// Records per key (a JSON number), in store `name`.
    pub fn count(&self, name: &str) -> Table {
        self.aggregated(name, Combine::count())
    }

    /// Combines each key's values with `reduce(aggregate, value)`, in store `name`.
    pub fn reduce(
        &self,
        name: &str,
        reduce: impl Fn(Value, &Value) -> Value + Send + Sync + 'static,
    ) -> Table {
        let reduce: Reducer = Arc::new(reduce);
        self.aggregated(name, Combine::Reduce(reduce))
    }

    /// `init()`, then `add(key, value, aggregate)` per record, in store `name`.
    pub fn aggregate(
        &self,
        name: &str,
        init: impl Fn() -> Value + Send + Sync + 'static,
        add: impl Fn(&Value, &Value, Value) -> Value + Send + Sync + 'static,
    ) -> Table {
        let (init, add): (Initializer, Aggregator) = (Arc::new(init), Arc::new(add));
        self.aggregated(name, Combine::Aggregate { init, add })
    }

    /// Aggregates per key and time window.
    pub fn windowed_by(&self, windows: TimeWindows) -> WindowedStream {
        WindowedStream {
            stream: self.stream.clone(),
            windows,
        }
    }

    /// Aggregates per key and session.
    pub fn session_windowed_by(&self, windows: SessionWindows) -> SessionWindowedStream {
        SessionWindowedStream {
            stream: self.stream.clone(),
            windows,
        }
    }
}

/// A table of windowed aggregates: keys are [`Window::key_for`](super::Window::key_for)
/// keys (read back with [`windowed_key`](super::windowed_key)).
#[derive(Clone)]
pub struct WindowedTable {
    table: Table,
    grace: Duration,
}

impl WindowedTable {
    /// The store of its windows (`None` after suppression: the buffer is not queryable).
    pub fn store_name(&self) -> Option<&str> {
        self.table.store_name()
    }

    /// Its updates as a stream.
    pub fn to_stream(&self, name: &str) -> Stream {
        self.table.to_stream(name)
    }

    /// One final result per window: each window's latest aggregate is held (in store
    /// `name`) and forwarded once stream time passes the window's end plus the grace period
    /// (Kafka Streams' `suppress(untilWindowCloses(unbounded()))`).
    pub fn suppress_until_window_closes(&self, name: &str) -> WindowedTable {
        let operator = SuppressUntilClosed {
            store: name.to_owned(),
            grace: self.grace,
        };
        let buffer = own_store_node(&self.table.stream, name, Arc::new(operator));
        WindowedTable {
            // The buffer holds windows not closed yet: not the table's rows.
            table: Table {
                stream: buffer.stream,
                store: None,
            },
            grace: self.grace,
        }
    }
}

/// A grouped stream with time windows.
#[derive(Clone)]
pub struct WindowedStream {
    stream: Stream,
    windows: TimeWindows,
}

impl WindowedStream {
    fn aggregated(&self, name: &str, combine: Combine) -> WindowedTable {
        let operator = WindowAggregate {
            store: name.to_owned(),
            windows: self.windows,
            combine,
        };
        WindowedTable {
            table: own_store_node(&self.stream, name, Arc::new(operator)),
            grace: self.windows.grace,
        }
    }

    /// Records per key and window.
    pub fn count(&self, name: &str) -> WindowedTable {
        self.aggregated(name, Combine::count())
    }

    /// Combines each key's values per window.
    pub fn reduce(
        &self,
        name: &str,
        reduce: impl Fn(Value, &Value) -> Value + Send + Sync + 'static,
    ) -> WindowedTable {
        self.aggregated(name, Combine::Reduce(Arc::new(reduce)))
    }

    /// `init()`, then `add(key, value, aggregate)` per record, per key and window.
    pub fn aggregate(
        &self,
        name: &str,
        init: impl Fn() -> Value + Send + Sync + 'static,
        add: impl Fn(&Value, &Value, Value) -> Value + Send + Sync + 'static,
    ) -> WindowedTable {
        self.aggregated(
            name,
            Combine::Aggregate {
                init: Arc::new(init),
                add: Arc::new(add),
            },
        )
    }
}

/// A grouped stream with session windows.
#[derive(Clone)]
pub struct SessionWindowedStream {
    stream: Stream,
    windows: SessionWindows,
}

impl SessionWindowedStream {
    /// Records per key and session.
    pub fn count(&self, name: &str) -> WindowedTable {
        self.aggregate(
            name,
            || Value::Json(0.into()),
            |_, _, n| Value::Json((as_count(&n) + 1).into()),
            |_, a, b| Value::Json((as_count(&a) + as_count(&b)).into()),
        )
    }

    /// `init()`, `add(key, value, aggregate)` per record, and `merge(key, a, b)` when a
    /// record joins two sessions, per key and session.
    pub fn aggregate(
        &self,
        name: &str,
        init: impl Fn() -> Value + Send + Sync + 'static,
        add: impl Fn(&Value, &Value, Value) -> Value + Send + Sync + 'static,
        merge: impl Fn(&Value, Value, Value) -> Value + Send + Sync + 'static,
    ) -> WindowedTable {
        let merge: Merger = Arc::new(merge);
        let operator = SessionAggregate {
            store: name.to_owned(),
            windows: self.windows,
            init: Arc::new(init),
            add: Arc::new(add),
            merge,
            expired_at: Mutex::default(),
        };
        WindowedTable {
            table: own_store_node(&self.stream, name, Arc::new(operator)),
            grace: self.windows.grace,
        }
    }
}

/// A table grouped by a new key, ready to aggregate with an adder and a subtractor.
#[derive(Clone)]
pub struct GroupedTable {
    upstream: Stream,
    name: String,
    select: GroupSelector,
}

impl GroupedTable {
    /// Rows per group (a JSON number), in store `name`.
    pub fn count(&self, name: &str) -> Table {
        self.aggregate(
            name,
            || Value::Json(0.into()),
            |_, _, n| Value::Json((as_count(&n) + 1).into()),
            |_, _, n| Value::Json((as_count(&n) - 1).into()),
        )
    }

    /// `init()`, then `add(group, value, aggregate)` for a row that enters the group and
    /// `subtract(group, old value, aggregate)` for one that leaves it, in store `name`.
    /// Nodes: `{group}` (regroups, remembering each row's last group in store
    /// `{group}-prior`), the repartition topic, and `name`.
    pub fn aggregate(
        &self,
        name: &str,
        init: impl Fn() -> Value + Send + Sync + 'static,
        add: impl Fn(&Value, &Value, Value) -> Value + Send + Sync + 'static,
        subtract: impl Fn(&Value, &Value, Value) -> Value + Send + Sync + 'static,
    ) -> Table {
        let b = builder_of(&self.upstream);
        let prior = format!("{}-prior", self.name);
        b.store(StoreSpec::new(&prior));
        let regrouped = self.upstream.stateful(
            &self.name,
            Arc::new(Regroup {
                store: prior.clone(),
                select: self.select.clone(),
            }),
            &[&prior],
        );
        let grouped = repartition(&regrouped, &self.name);
        let (add, subtract): (Aggregator, Subtractor) = (Arc::new(add), Arc::new(subtract));
        let operator = TableAggregate {
            store: name.to_owned(),
            init: Arc::new(init),
            add,
            subtract,
        };
        own_store_node(&grouped, name, Arc::new(operator))
    }
}
