//! The stateful half of Kafka Streams: tables, grouping and aggregation, windows, joins,
//! suppression and punctuation.
//!
//! Every operator here is a [`StatefulOperator`]: a synchronous step that runs inline in the
//! engine's interpreter (no task, no future per record) with its task's stores, in the order
//! the records of its partition arrive. Its store writes go to the stores' changelogs tied to
//! the source record, exactly as an async processor's do, so a task that moves to another
//! instance restores its tables, aggregates and windows before it processes a record.
//!
//! The builder DSL ([`Table`], [`GroupedStream`], [`GroupedTable`], [`WindowedStream`],
//! [`SessionWindowedStream`], [`WindowedTable`], and the methods on
//! [`Stream`](crate::Stream) and [`TopologyBuilder`](crate::TopologyBuilder) this module adds)
//! creates the nodes and their stores; the operators can also be added by hand with
//! [`Stream::stateful`](crate::Stream::stateful) and a user's own [`StatefulOperator`] (with
//! [`Punctuation`] on stream time or wall-clock time).
//!
//! **Time.** Windows run on stream time: per task and operator, the largest record timestamp
//! seen so far, kept in the operator's store so it survives a move. A record whose window
//! closed (window end + grace ≤ stream time) is late: by default it goes to the dead-letter
//! topic with `dlq.error.class: Late` ([`LatePolicy`]).
//!
//! **Values.** Aggregates, tables and join buffers keep [`Value`]s as
//! [`StoredValue`]s: Avro values come back as their JSON mapping.
//!
//! Depends on the graph, the records and the task stores; the runtime knows operators only
//! through [`StatefulOperator`].

mod aggregate;
mod cache;
mod dsl;
mod join;
mod query;
mod stored;
mod table;
mod window;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use state::KvStore;

use crate::processor::ProcessError;
use crate::task::{ProcessorContext, StoreAccessError, TaskId};
use crate::{Record, Value};

pub use aggregate::{Aggregator, GroupSelector, Initializer, Merger, Reducer, Subtractor};
pub use dsl::{
    GroupedStream, GroupedTable, SessionWindowedStream, Table, WindowedStream, WindowedTable,
};
pub use join::{JoinKind, Joiner};
pub(crate) use query::QueryContext;
pub use query::{KeyOwner, QueryError};
pub use stored::{StoredValue, time_bytes, time_from_bytes};
pub use window::{JoinWindows, LatePolicy, SessionWindows, TimeWindows, Window, windowed_key};

/// When a [`StatefulOperator`] wants [`punctuate`](StatefulOperator::punctuate) called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunctuationType {
    /// When the task's stream time (the largest record timestamp the operator saw) has
    /// advanced by the interval: deterministic, driven by the data.
    StreamTime,
    /// Every interval of the wall clock, whether records arrive or not.
    WallClockTime,
}

/// A punctuation schedule: every `interval` of `kind` time, per task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Punctuation {
    /// How often.
    pub interval: Duration,
    /// On which clock.
    pub kind: PunctuationType,
}

/// A stateful step: processes one record at a time with its task's stores, forwarding its
/// outputs through the context.
///
/// Errors: [`ProcessError::Permanent`] sends the source record to the dead-letter topic (bad
/// input: no key, no timestamp, a late record); [`ProcessError::Transient`] (a store that
/// cannot be read or written) stops the runtime without committing past the record, so a
/// restart processes it again. There is no retry in place: the step runs inline.
///
/// # Example
/// ```
/// use topology::stateful::{OperatorContext, StatefulOperator};
/// use topology::{ProcessError, Record, Value};
///
/// /// Forwards a record only the first time its key is seen.
/// struct FirstPerKey;
/// impl StatefulOperator for FirstPerKey {
///     fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
///         let seen = ctx.store::<Vec<u8>, ()>("seen")?;
///         let key = record.key.as_ref().map(Value::to_bytes).unwrap_or_default();
///         if !seen.contains_key(&key).map_err(ProcessError::from_state)? {
///             seen.put(&key, &()).map_err(ProcessError::from_state)?;
///             ctx.forward(record);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait StatefulOperator: Send + Sync + 'static {
    /// Processes one record.
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError>;

    /// The punctuation this operator wants, if any.
    fn punctuation(&self) -> Option<Punctuation> {
        None
    }

    /// Called per task when its punctuation is due, with the time it is due at (stream time
    /// or wall-clock milliseconds). Outputs and store writes are tied to the record being
    /// processed when it is due on stream time.
    fn punctuate(&self, timestamp: i64, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let _ = (timestamp, ctx);
        Ok(())
    }
}

impl ProcessError {
    /// A store error, as an operator returns it: transient (the runtime stops without
    /// committing past the record).
    pub fn from_state(error: impl std::fmt::Display) -> Self {
        ProcessError::transient(format!("state store: {error}"))
    }
}

impl From<StoreAccessError> for ProcessError {
    fn from(error: StoreAccessError) -> Self {
        ProcessError::from_state(error)
    }
}

/// What a [`StatefulOperator`] is handed: its task's stores and where its outputs go.
pub struct OperatorContext {
    inner: ProcessorContext,
    outputs: Vec<Record>,
    timestamp: Option<i64>,
    late: u64,
}

impl std::fmt::Debug for OperatorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorContext")
            .field("node", &self.inner.node())
            .field("task", &self.inner.task_id())
            .field("outputs", &self.outputs.len())
            .finish()
    }
}

impl OperatorContext {
    pub(crate) fn new(inner: ProcessorContext, timestamp: Option<i64>) -> Self {
        OperatorContext {
            inner,
            outputs: Vec::new(),
            timestamp,
            late: 0,
        }
    }

    /// A context over local stores, for calling an operator outside a runtime (unit tests).
    pub fn with_local_stores(
        node: &str,
        task: TaskId,
        dir: state::StateDir,
        stores: &[crate::StoreSpec],
    ) -> Self {
        OperatorContext::new(
            ProcessorContext::with_local_stores(node, task, dir, stores),
            None,
        )
    }

    /// This task's instance of store `name` (declared on the node).
    pub fn store<K, V>(&self, name: &str) -> Result<KvStore<K, V>, StoreAccessError>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        self.inner.store(name)
    }

    /// Sends `record` to the node's children (after this call returns).
    pub fn forward(&mut self, record: Record) {
        self.outputs.push(record);
    }

    /// The task (`None` outside a runtime).
    pub fn task_id(&self) -> Option<TaskId> {
        self.inner.task_id()
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        self.inner.node()
    }

    /// The timestamp of the record being processed (of the record that made a stream-time
    /// punctuation due), when it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// Counts a late record that was dropped (`topology_late_records_total{node}`).
    pub fn count_late(&mut self) {
        self.late += 1;
    }

    /// The late records counted so far, taken out.
    pub(crate) fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    /// The record's task (`None` without one).
    pub(crate) fn task(&self) -> Option<&std::sync::Arc<crate::task::TaskStores>> {
        self.inner.task()
    }

    /// The task's windowed operators' stream clocks (`None` without a task).
    pub(crate) fn clocks(
        &self,
    ) -> Option<&std::sync::Mutex<std::collections::HashMap<String, crate::task::StreamClock>>>
    {
        self.inner.clocks()
    }

    /// The records forwarded so far, taken out.
    pub fn take_outputs(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.outputs)
    }
}

/// A shared operator, as graph nodes hold it.
pub type OperatorRef = Arc<dyn StatefulOperator>;

/// The record's key, or a permanent error naming the operator (stateful operators group by
/// key: a keyless record cannot be placed).
pub(crate) fn require_key<'r>(record: &'r Record, what: &str) -> Result<&'r Value, ProcessError> {
    record.key.as_ref().ok_or_else(|| {
        ProcessError::permanent(format!(
            "{what}: the record has no key ({}-{}@{})",
            record.topic, record.partition, record.offset
        ))
    })
}

/// The record's timestamp, or a permanent error (windows place records by it).
pub(crate) fn require_timestamp(record: &Record, what: &str) -> Result<i64, ProcessError> {
    match record.timestamp {
        Some(t) if t >= 0 => Ok(t),
        other => Err(ProcessError::permanent(format!(
            "{what}: the record has no valid timestamp ({other:?}) ({}-{}@{})",
            record.topic, record.partition, record.offset
        ))),
    }
}

/// Turns a state error into the operator error.
pub(crate) fn state<T>(result: Result<T, state::StateError>) -> Result<T, ProcessError> {
    result.map_err(ProcessError::from_state)
}
