//! Transports: where records come from and go to.
//!
//! The runtime talks to a log through two small traits: a [`SourceConsumer`] (poll, commit,
//! pause/resume, end offsets) and a [`RecordSink`] (send, acknowledged later). A [`Transport`]
//! opens both for a consumer group. Two implementations run the same topology unchanged:
//! [`EmbeddedTransport`], a durable sled-backed partitioned log in-process, and
//! [`KafkaTransport`], rdkafka with cooperative rebalancing, manual commits, an idempotent
//! producer and optional exactly-once transactions. Partition assignments reach the runtime
//! through a [`RebalanceListener`] it hands over in the [`ConnectSpec`], which the rebalance
//! callbacks call before partitions change hands. Transports sit below the runtime: they know
//! the listener trait, not the runtime's offset tracker that implements it.

mod embedded;
mod kafka;
mod kafka_config;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use embedded::{EmbeddedLog, EmbeddedTransport, LogError};
pub use kafka::{KafkaProbe, KafkaTransport};
pub use kafka_config::{ClientKind, KafkaClientConfig};

use crate::RawRecord;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic (shared with the records read from it).
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl TopicPartition {
    /// Makes one.
    pub fn new(topic: &str, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Transport failures, with the place they happened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The embedded log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Kafka failed.
    #[error("kafka {operation}: {source}")]
    Kafka {
        /// What was being done (e.g. `commit`, `send to image-events`).
        operation: String,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The producer's queue is full; try again shortly.
    #[error("producer queue full")]
    QueueFull,
    /// A record could not be delivered.
    #[error("delivery to {topic} failed: {message}")]
    Delivery {
        /// Topic.
        topic: String,
        /// Why.
        message: String,
    },
    /// A changelog or source topic is not laid out as task stores need.
    #[error("topic {topic}: {message}")]
    Layout {
        /// Topic.
        topic: String,
        /// What is wrong.
        message: String,
    },
    /// Reading a changelog back failed or took too long.
    #[error("restoring from {tp}: {message}")]
    Restore {
        /// The changelog partition.
        tp: TopicPartition,
        /// Why.
        message: String,
    },
}

/// Where a partition kept across a rebalance must be read again from after its uncommitted
/// work was thrown away (see [`RebalanceListener::reset_uncommitted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    /// The partition.
    pub tp: TopicPartition,
    /// The offset to seek to: the last committed offset, or the first offset read since the
    /// assignment when nothing was committed yet.
    pub offset: i64,
}

/// What a consumer's rebalance callbacks tell the runtime, and what they ask of it.
///
/// A transport calls it from its rebalance callbacks (Kafka: inside `poll`, before the
/// partitions change hands) or when it connects (embedded: every partition at once). The
/// runtime's offset tracker implements it; a transport needs nothing else of the runtime.
pub trait RebalanceListener: Send + Sync {
    /// These partitions were assigned to this member.
    fn on_assigned(&self, tps: &[TopicPartition]);

    /// These partitions are being revoked (or were lost): their in-flight work is cancelled.
    /// Returns the offsets that may still be committed for them (never past unfinished work),
    /// which an at-least-once consumer commits before letting them go.
    fn on_revoked(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)>;

    /// Exactly-once, when the open transaction is aborted: throws away the uncommitted work of
    /// the still-assigned partitions `tps` and returns where each must be read again from
    /// (partitions where nothing was read since the last commit are left out).
    fn reset_uncommitted(&self, tps: &[TopicPartition]) -> Vec<Rewind>;

    /// Whether anything is uncommitted: records in flight, or finished past the last commit.
    /// An exactly-once consumer aborts its transaction on revoke only then.
    fn has_uncommitted(&self) -> bool;

    /// The partitions assigned now, sorted.
    fn assigned(&self) -> Vec<TopicPartition>;
}

/// What a runtime asks a transport to open.
#[derive(Clone)]
pub struct ConnectSpec {
    /// Consumer group id (the application id).
    pub group_id: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Exactly-once: a transactional producer, offsets committed in its transactions.
    pub exactly_once: bool,
    /// Told of every assignment and revocation, before partitions change hands.
    pub listener: Arc<dyn RebalanceListener>,
    /// Called once per assignment or revocation (for metrics).
    pub on_rebalance: Arc<dyn Fn() + Send + Sync>,
    /// The `host:port` this instance answers interactive queries on, announced to the
    /// group's other members ([`Transport::group_members`]); Kafka Streams'
    /// `application.server`.
    pub application_server: Option<String>,
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSpec")
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("exactly_once", &self.exactly_once)
            .finish_non_exhaustive()
    }
}

/// A consumer of source records.
pub trait SourceConsumer: Send + Sync {
    /// The next record, or `None` when none came within `timeout`. Keeps group membership alive.
    fn poll(
        &mut self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<RawRecord>, TransportError>>;
    /// Appends up to `max` records to `out`: waits up to `timeout` for the first, then takes
    /// only what is already fetched. Stops right after a record polled across a rebalance, so
    /// the caller applies the new assignment before the records that follow it. The runtime
    /// polls this way: its per-poll work (assignment, commit and punctuation checks, the
    /// shutdown race) is paid once per batch. The default polls one record.
    fn poll_batch<'a>(
        &'a mut self,
        timeout: Duration,
        max: usize,
        out: &'a mut Vec<RawRecord>,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        let _ = max;
        Box::pin(async move {
            if let Some(raw) = self.poll(timeout).await? {
                out.push(raw);
            }
            Ok(())
        })
    }
    /// Commits the given next-offsets (in exactly-once mode, commits the open transaction with
    /// them and begins the next).
    fn commit(
        &mut self,
        offsets: Vec<(TopicPartition, i64)>,
    ) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Stops fetching from these partitions (polling goes on).
    fn pause(&mut self, tps: &[TopicPartition]) -> Result<(), TransportError>;
    /// Fetches again from these partitions.
    fn resume(&mut self, tps: &[TopicPartition]) -> Result<(), TransportError>;
    /// Log end offsets, for lag. The future does not borrow the consumer: the runtime awaits
    /// it off its poll loop, because a broker may answer it only after a pending long-poll
    /// fetch (up to `fetch.wait.max.ms` per request).
    fn end_offsets(
        &self,
        tps: Vec<TopicPartition>,
    ) -> BoxFuture<'static, Result<Vec<(TopicPartition, i64)>, TransportError>>;
    /// The group's committed offsets (`None`: nothing committed), for lag before this
    /// runtime committed anything itself. The default knows none. Like
    /// [`end_offsets`](Self::end_offsets), the future does not borrow the consumer.
    fn committed_offsets(
        &self,
        tps: Vec<TopicPartition>,
    ) -> BoxFuture<'static, Result<CommittedOffsets, TransportError>> {
        let _ = tps;
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Leaves the group.
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

/// The group's committed offset per partition (`None`: nothing committed).
pub type CommittedOffsets = Vec<(TopicPartition, Option<i64>)>;

/// Where a written record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// The acknowledgement of one sent record.
pub type DeliveryFuture = BoxFuture<'static, Result<Delivered, TransportError>>;

/// Called once with the outcome of a write queued by [`RecordSink::send_then`], on whichever
/// thread learns it (for Kafka, the producer's delivery-report thread): keep it short.
pub type OnDelivery = Box<dyn FnOnce(Result<Delivered, TransportError>) + Send + Sync>;

/// What [`RecordSink::send_then`] did with a record it queued.
pub enum Queued {
    /// The sink calls the callback itself once the write is acknowledged.
    Notifies,
    /// The caller awaits the future and calls the callback with its result (sinks without
    /// delivery callbacks).
    Await(DeliveryFuture, OnDelivery),
}

/// A producer of records.
pub trait RecordSink: Send + Sync {
    /// Queues `record` in order and returns a future that resolves when it is durably written.
    /// `Err(TransportError::QueueFull)` asks the caller to wait and retry.
    fn send(&self, record: &RawRecord) -> Result<DeliveryFuture, TransportError>;

    /// Queues `record` in order like [`send`](Self::send) and reports the outcome to `done`.
    /// A sink with delivery callbacks (Kafka) calls `done` itself, which spares the caller a
    /// future (and its allocations and wake-ups) per record; the default hands `send`'s
    /// future back to be awaited. On error `done` is handed back unused (e.g. to retry after
    /// `QueueFull`).
    fn send_then(
        &self,
        record: &RawRecord,
        done: OnDelivery,
    ) -> Result<Queued, (TransportError, OnDelivery)> {
        match self.send(record) {
            Ok(delivery) => Ok(Queued::Await(delivery, done)),
            Err(e) => Err((e, done)),
        }
    }
}

/// An open consumer and producer pair.
pub struct Connection {
    /// The consumer.
    pub consumer: Box<dyn SourceConsumer>,
    /// The producer.
    pub sink: Arc<dyn RecordSink>,
}

/// Opens connections for a runtime.
pub trait Transport: Send + Sync {
    /// Opens a consumer (subscribed to `spec.topics` in `spec.group_id`) and a producer.
    fn connect(&self, spec: ConnectSpec) -> BoxFuture<'_, Result<Connection, TransportError>>;

    /// What task stores need of the log: topic layout, and reading a changelog partition
    /// back. Blocking calls: the runtime makes them on blocking threads.
    fn state_log(&self) -> Result<Arc<dyn StateLog>, TransportError>;

    /// The partition this transport's producer writes a record with key bytes `key` to,
    /// among `partitions` (for "which instance owns this key").
    fn partition_for_key(&self, key: &[u8], partitions: i32) -> i32;

    /// The members of consumer group `group_id` now: what each announced
    /// ([`ConnectSpec::application_server`]) and the partitions assigned to it.
    fn group_members(
        &self,
        group_id: &str,
    ) -> BoxFuture<'static, Result<Vec<GroupMember>, TransportError>>;
}

/// A member of a consumer group, as [`Transport::group_members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The `host:port` it announced, if any.
    pub application_server: Option<String>,
    /// The partitions assigned to it.
    pub partitions: Vec<TopicPartition>,
}

/// What [`StateLog::read_range`] hands each changelog record to: its key and value (`None`: a
/// tombstone); an error stops the read.
pub type ApplyChangelogRecord<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<(), String> + 'a;

/// What task stores need of the log beside the consumer and producer: the runtime checks
/// co-partitioning, creates compacted changelog topics and restores tasks through it. Every
/// call blocks (network or disk); the runtime makes them on blocking threads.
pub trait StateLog: Send + Sync {
    /// The number of partitions of `topic`, `None` when it does not exist.
    fn partitions(&self, topic: &str) -> Result<Option<i32>, TransportError>;

    /// Creates the compacted topic `topic` with `partitions` partitions unless it exists; an
    /// existing one with fewer partitions is an error (a task could not write its own).
    fn ensure_compacted(&self, topic: &str, partitions: i32) -> Result<(), TransportError>;

    /// Creates `topic` (a repartition topic: deleted, not compacted) with `partitions`
    /// partitions unless it exists; an existing one keeps its partitions.
    fn ensure_repartition(&self, topic: &str, partitions: i32) -> Result<(), TransportError>;

    /// The first and the next offset of a partition (its log start and end).
    fn bounds(&self, tp: &TopicPartition) -> Result<(i64, i64), TransportError>;

    /// Reads `tp` from `from` until `until` (exclusive), handing each record's key and value
    /// (`None`: a tombstone) to `apply` in order, and returns how many records it read.
    /// Records without a key are skipped (a changelog never writes one). Committed records
    /// only: an aborted transaction's writes are never restored.
    fn read_range(
        &self,
        tp: &TopicPartition,
        from: i64,
        until: i64,
        apply: &mut ApplyChangelogRecord<'_>,
    ) -> Result<u64, TransportError>;
}
