//! The Kafka transport, through rdkafka.
//!
//! The consumer joins the group with `enable.auto.commit=false` and, by default, the
//! `cooperative-sticky` assignor when it reads one topic and the `range` assignor when it reads
//! several: range gives partition *i* of every source topic to the same member (with equal
//! partition counts and the same key partitioner upstream), so state a topology keeps per key
//! across its topics (e.g. upserts and deletes of one product) stays in one member, as Kafka
//! Streams' tasks do. `partition.assignment.strategy` set on the transport wins. Its context
//! commits, before partitions are revoked, exactly the offsets below the oldest unfinished
//! record and cancels work still running for them. The producer is idempotent
//! (`enable.idempotence=true`). In exactly-once mode the producer is transactional: outputs and
//! consumed offsets are committed together with `send_offsets_to_transaction` and the consumer
//! group metadata.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KHeader, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::kafka_config::{ClientKind, KafkaClientConfig};
use super::{
    ApplyChangelogRecord, ConnectSpec, Connection, Delivered, DeliveryFuture, GroupMember,
    OnDelivery, Queued, RebalanceListener, RecordSink, Rewind, SourceConsumer, StateLog,
    TopicPartition, Transport, TransportError,
};
use crate::{Header, Headers, RawRecord};

/// Kafka through rdkafka.
///
/// # Example
/// ```
/// use topology::transport::KafkaTransport;
/// let t = KafkaTransport::new("127.0.0.1:9092").set("auto.offset.reset", "earliest");
/// # let _ = t;
/// ```
#[derive(Debug, Clone)]
pub struct KafkaTransport {
    config: KafkaClientConfig,
}

impl KafkaTransport {
    /// A transport for the cluster at `bootstrap_servers`.
    pub fn new(bootstrap_servers: &str) -> Self {
        Self::with_config(KafkaClientConfig::new(bootstrap_servers))
    }

    /// A transport whose clients take `config` (each client only the properties of its kind),
    /// with the engine's defaults where `config` sets nothing.
    pub fn with_config(config: KafkaClientConfig) -> Self {
        let config = config.set_default("auto.offset.reset", "earliest");
        // A partition resumed after back-pressure refills within this wait instead of
        // librdkafka's 500 ms default.
        let config = config.set_default("fetch.wait.max.ms", "100");
        // Once `queued.min.messages` (100k) are fetched ahead, librdkafka stops fetching a
        // partition and looks again only after `fetch.queue.backoff.ms` (1 s by default). A
        // loop that drains the queue faster than that then sits with an empty queue, polling
        // empty timeouts, for the rest of the second. Looking again every 10 ms keeps the
        // queue topped up; the check is a few queue-length reads on the broker thread.
        let config = config.set_default("fetch.queue.backoff.ms", "10");
        // A topic created just before the subscription can show partitions without a leader
        // in the first metadata; librdkafka then fetches them only after the next refresh
        // (5 min by default), which stalled records of freshly created topics for minutes.
        let config = config.set_default("topic.metadata.refresh.interval.ms", "5000");
        KafkaTransport { config }
    }

    /// Sets a librdkafka property (e.g. security settings); each client takes it if its kind
    /// does.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.config = self.config.set(key, value);
        self
    }

    /// The client properties, as set (without the engine's per-client settings).
    pub fn client_config(&self) -> &KafkaClientConfig {
        &self.config
    }

    fn base(&self, keys: &[&str]) -> ClientConfig {
        let kind = if keys.contains(&"consumer") {
            ClientKind::Consumer
        } else if keys.contains(&"producer") {
            ClientKind::Producer
        } else {
            ClientKind::Admin
        };
        self.config.client(kind)
    }
}

/// Whether the cluster answers, for a readiness check: a metadata request for one topic on a
/// client of its own. (A runtime's consumer retries by itself while the brokers are gone, so
/// only a request of our own tells that they are.)
///
/// # Example
/// ```
/// # async fn check() -> Result<(), topology::transport::TransportError> {
/// use std::time::Duration;
/// use topology::transport::KafkaTransport;
/// let probe = KafkaTransport::new("127.0.0.1:9092").probe("catalog.catalog.products")?;
/// let up = probe.answers(Duration::from_secs(2)).await;
/// # let _ = up; Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaProbe {
    client: Arc<BaseConsumer>,
    topic: String,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaProbe {
    /// Whether a broker answered a metadata request within `timeout` (a topic not created
    /// yet still counts: the cluster answered).
    pub async fn answers(&self, timeout: Duration) -> bool {
        let (client, topic) = (self.client.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || client.fetch_metadata(Some(&topic), timeout).is_ok())
            .await
            .unwrap_or(false)
    }
}

impl KafkaTransport {
    /// A [`KafkaProbe`] with this transport's client settings, asking for `topic`.
    pub fn probe(&self, topic: &str) -> Result<KafkaProbe, TransportError> {
        let client: BaseConsumer = self
            .base(&["consumer"])
            .create()
            .map_err(kafka("create the readiness client"))?;
        Ok(KafkaProbe {
            client: Arc::new(client),
            topic: topic.to_owned(),
        })
    }
}

/// The assignor when none is configured: `range` co-partitions several source topics (see the
/// module documentation), `cooperative-sticky` rebalances one topic without stopping the world.
fn default_assignor(topics: &[String]) -> &'static str {
    if topics.len() > 1 {
        "range"
    } else {
        "cooperative-sticky"
    }
}

fn kafka(operation: impl Into<String>) -> impl FnOnce(KafkaError) -> TransportError {
    let operation = operation.into();
    move |source| TransportError::Kafka { operation, source }
}

/// Consumer errors of an unreachable or moving broker, which librdkafka retries on its own.
fn transient_consumer_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
    )
}

fn tpl_of(offsets: &[(TopicPartition, i64)]) -> Result<TopicPartitionList, TransportError> {
    let mut tpl = TopicPartitionList::new();
    for (tp, o) in offsets {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))
            .map_err(kafka(format!("offset list for {tp}")))?;
    }
    Ok(tpl)
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// The consumer context: tells the runtime's [`RebalanceListener`] of rebalances.
///
/// At-least-once: on revoke, in-flight work of the revoked partitions is cancelled and the
/// offsets below their oldest unfinished record are committed.
///
/// Exactly-once: a transaction must never span revoked partitions, or the next owner would
/// re-process records whose outputs this member later commits. So on revoke, when anything is
/// uncommitted, the open transaction is **aborted** and a new one begun: the in-flight work of
/// every partition is cancelled (the send gate keeps cancelled work out of the new
/// transaction), and the partitions this member keeps are rewound (seek) to their last
/// committed offset, to be processed again inside the next transaction.
pub struct StreamsContext {
    listener: Arc<dyn RebalanceListener>,
    exactly_once: bool,
    on_rebalance: Arc<dyn Fn() + Send + Sync>,
    /// Counts rebalance callbacks: a batch poll stops at the first record polled across one.
    rebalances: AtomicU64,
    /// Counts rewinds (exactly-once aborts): records a batch poll took before one are read
    /// again after it, so the batch drops them.
    rewinds: AtomicU64,
    producer: OnceLock<Arc<KafkaProducer>>,
    txn_error: Mutex<Option<KafkaError>>,
}

impl StreamsContext {
    fn revoke_transactional(&self, consumer: &BaseConsumer<Self>, revoked: &[TopicPartition]) {
        let dirty = self.listener.has_uncommitted();
        let retained: Vec<TopicPartition> = self
            .listener
            .assigned()
            .into_iter()
            .filter(|tp| !revoked.contains(tp))
            .collect();
        self.listener.on_revoked(revoked);
        if !dirty {
            return;
        }
        let rewinds = self.listener.reset_uncommitted(&retained);
        let Some(producer) = self.producer.get() else {
            return;
        };
        let aborted = producer
            .abort_transaction(Duration::from_secs(30))
            .and_then(|()| producer.begin_transaction());
        if let Err(e) = aborted {
            tracing::error!(error = %e, "aborting the transaction on revoke failed");
            *self
                .txn_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            return;
        }
        tracing::info!(
            revoked = revoked.len(),
            rewound = rewinds.len(),
            "rebalance: transaction aborted, kept partitions rewound"
        );
        self.rewind(consumer, rewinds);
    }

    /// Seeks each partition back to where its uncommitted records start; a failure is kept
    /// for the next commit, like every transaction error of a rebalance.
    fn rewind<C: Consumer<StreamsContext>>(&self, consumer: &C, rewinds: Vec<Rewind>) {
        self.rewinds.fetch_add(1, AtomicOrdering::Relaxed);
        for r in rewinds {
            if let Err(e) = consumer.seek(
                &r.tp.topic,
                r.tp.partition,
                Offset::Offset(r.offset),
                Duration::ZERO,
            ) {
                tracing::error!(tp = %r.tp, offset = r.offset, error = %e, "rewind failed");
                *self
                    .txn_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            }
        }
    }

    fn take_txn_error(&self) -> Option<KafkaError> {
        self.txn_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl ClientContext for StreamsContext {}

impl ConsumerContext for StreamsContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = ?tps_of(tpl), "rebalance: partitions revoked");
            self.rebalances.fetch_add(1, AtomicOrdering::Relaxed);
            (self.on_rebalance)();
            if self.exactly_once {
                self.revoke_transactional(consumer, &tps_of(tpl));
                return;
            }
            let safe = self.listener.on_revoked(&tps_of(tpl));
            if !safe.is_empty() {
                match tpl_of(&safe) {
                    Ok(list) => {
                        if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                            tracing::warn!(error = %e, "commit on revoke failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "commit on revoke failed"),
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = ?tps_of(tpl), "rebalance: partitions assigned");
            self.rebalances.fetch_add(1, AtomicOrdering::Relaxed);
            (self.on_rebalance)();
            self.listener.on_assigned(&tps_of(tpl));
        } else if let Rebalance::Error(error) = rebalance {
            tracing::warn!(%error, "rebalance error");
        }
    }
}

/// The Kafka [`StateLog`]: an admin client for topics, a consumer without a group (assigned
/// partitions, `read_committed`) for watermarks and restores.
struct KafkaStateLog {
    admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    reader: rdkafka::consumer::BaseConsumer,
    /// Asks for watermarks with `read_uncommitted`: librdkafka answers a watermark query in
    /// the client's isolation level, and `reader`'s (`read_committed`) gives the last stable
    /// offset, not the end. A restore read up to the last stable offset stopped short of an
    /// open transaction, e.g. one a SIGKILLed exactly-once instance left behind, and so
    /// also of everything committed after it (the next owner's transactions): a task moving
    /// again before the broker aborted the dead transaction lost that committed state (seen
    /// in tests/kafka_tasks.rs). Up to the high watermark, the `read_committed` reader waits
    /// for open transactions to end and skips aborted records.
    watermarks: rdkafka::consumer::BaseConsumer,
    /// Held while `reader` is assigned to one restore. The runtime restores the tasks of one
    /// assignment on a blocking thread each, at the same time: without it, each restore's
    /// `assign` replaced the others' and their reads never reached their partitions' ends
    /// (two tasks with non-empty changelogs hung in "restoring"; seen in
    /// tests/kafka_tasks.rs).
    reading: Mutex<()>,
    /// How long one restore may take before it fails.
    restore_timeout: Duration,
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a query of a new topic's partition waits for its leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Errors of a partition whose leader is not elected or not serving yet (a topic just created).
fn leader_not_ready(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownPartition
    )
}

impl KafkaStateLog {
    fn new(transport: &KafkaTransport) -> Result<Self, TransportError> {
        let admin = transport
            .base(&[])
            .create()
            .map_err(kafka("create admin client"))?;
        let mut reader = transport.base(&["consumer"]);
        reader
            // Never joins it (partitions are assigned), but librdkafka wants one.
            .set("group.id", "topology-state-restore")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "10485760");
        let reader = reader
            .create()
            .map_err(kafka("create the restore consumer"))?;
        let watermarks = transport
            .base(&["consumer"])
            .set("group.id", "topology-state-restore")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(kafka("create the watermark client"))?;
        Ok(KafkaStateLog {
            admin,
            reader,
            watermarks,
            reading: Mutex::new(()),
            restore_timeout: Duration::from_secs(600),
        })
    }
}

impl StateLog for KafkaStateLog {
    fn partitions(&self, topic: &str) -> Result<Option<i32>, TransportError> {
        let meta = self
            .reader
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(kafka(format!("metadata of {topic}")))?;
        Ok(meta
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    }

    fn ensure_compacted(&self, topic: &str, partitions: i32) -> Result<(), TransportError> {
        if let Some(existing) = self.partitions(topic)? {
            if existing < partitions {
                return Err(TransportError::Layout {
                    topic: topic.to_owned(),
                    message: format!(
                        "has {existing} partitions, the tasks need {partitions} (one per source partition)"
                    ),
                });
            }
            return Ok(());
        }
        self.create_topic(topic, partitions, "compact")
    }

    fn ensure_repartition(&self, topic: &str, partitions: i32) -> Result<(), TransportError> {
        if self.partitions(topic)?.is_some() {
            return Ok(());
        }
        self.create_topic(topic, partitions, "delete")
    }

    fn bounds(&self, tp: &TopicPartition) -> Result<(i64, i64), TransportError> {
        // A changelog topic `ensure_compacted` created a moment ago shows its partitions in the
        // metadata before their leaders answer: the first watermark query then failed with
        // `NotLeaderForPartition` and stopped the runtime at the first start of an application
        // (seen in tests/kafka_tasks.rs). Errors of a partition whose leader is not ready yet
        // are retried for a while.
        let deadline = std::time::Instant::now() + LEADER_WAIT;
        loop {
            match self
                .watermarks
                .fetch_watermarks(&tp.topic, tp.partition, METADATA_TIMEOUT)
            {
                Err(e)
                    if e.rdkafka_error_code().is_some_and(leader_not_ready)
                        && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(%tp, error = %e, "changelog partition not ready; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other.map_err(kafka(format!("watermarks of {tp}"))),
            }
        }
    }

    fn read_range(
        &self,
        tp: &TopicPartition,
        from: i64,
        until: i64,
        apply: &mut ApplyChangelogRecord<'_>,
    ) -> Result<u64, TransportError> {
        if from >= until {
            return Ok(0);
        }
        let _reading = self
            .reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(from))
            .map_err(kafka(format!("assignment of {tp}")))?;
        self.reader
            .assign(&tpl)
            .map_err(kafka(format!("assign {tp}")))?;
        let result = self.read_assigned(tp, until, apply);
        // The reader serves every restore of this runtime, one at a time.
        let _ = self.reader.unassign();
        result
    }
}

impl KafkaStateLog {
    /// Whether every partition of `topic` has a leader.
    /// Creates `topic` with `partitions` partitions and `cleanup.policy` `cleanup` (one that
    /// exists already is fine), then waits until every partition has a leader: a new topic's
    /// first watermark query otherwise fails with NotLeaderForPartition.
    fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        cleanup: &str,
    ) -> Result<(), TransportError> {
        let new = rdkafka::admin::NewTopic::new(
            topic,
            partitions.max(1),
            rdkafka::admin::TopicReplication::Fixed(-1),
        )
        .set("cleanup.policy", cleanup);
        let options = rdkafka::admin::AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(30)))
            .request_timeout(Some(Duration::from_secs(30)));
        let results = futures::executor::block_on(self.admin.create_topics(&[new], &options))
            .map_err(kafka(format!("create topic {topic}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(TransportError::Layout {
                        topic,
                        message: format!("cannot be created: {code}"),
                    });
                }
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.has_leaders(topic)? && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn has_leaders(&self, topic: &str) -> Result<bool, TransportError> {
        let meta = self
            .reader
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(kafka(format!("metadata of {topic}")))?;
        Ok(meta.topics().iter().any(|t| {
            t.name() == topic
                && t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.error().is_none() && p.leader() >= 0)
        }))
    }

    fn read_assigned(
        &self,
        tp: &TopicPartition,
        until: i64,
        apply: &mut ApplyChangelogRecord<'_>,
    ) -> Result<u64, TransportError> {
        let deadline = std::time::Instant::now() + self.restore_timeout;
        let mut read = 0u64;
        loop {
            match self.reader.poll(Duration::from_millis(100)) {
                // Never another partition's record into this task's store (a record fetched
                // for the previous restore may still be queued).
                Some(Ok(m)) if m.topic() != &*tp.topic || m.partition() != tp.partition => {}
                Some(Ok(m)) => {
                    if m.offset() >= until {
                        return Ok(read);
                    }
                    read += 1;
                    if let Some(key) = m.key() {
                        apply(key, m.payload()).map_err(|message| TransportError::Restore {
                            tp: tp.clone(),
                            message,
                        })?;
                    }
                    if m.offset() + 1 >= until {
                        return Ok(read);
                    }
                }
                Some(Err(e)) => return Err(kafka(format!("read {tp}"))(e)),
                None => {
                    // Compaction and transaction markers leave offsets without a record: the
                    // position tells when the end was passed.
                    let passed = self
                        .reader
                        .position()
                        .ok()
                        .and_then(|p| {
                            p.find_partition(&tp.topic, tp.partition)
                                .and_then(|e| e.offset().to_raw())
                        })
                        .is_some_and(|position| position >= until);
                    if passed {
                        return Ok(read);
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(TransportError::Restore {
                    tp: tp.clone(),
                    message: format!(
                        "end offset {until} not reached after {:?}",
                        self.restore_timeout
                    ),
                });
            }
        }
    }
}

impl Transport for KafkaTransport {
    fn state_log(&self) -> Result<Arc<dyn StateLog>, TransportError> {
        Ok(Arc::new(KafkaStateLog::new(self)?))
    }

    /// librdkafka's default partitioner (`consistent_random`): CRC-32 of the key, modulo the
    /// partition count. (Java producers default to murmur2: for topics they write, compute
    /// the partition their way.)
    fn partition_for_key(&self, key: &[u8], partitions: i32) -> i32 {
        (crc32fast::hash(key) % partitions.max(1) as u32) as i32
    }

    /// Describes the group (`DescribeGroups`): each member's announced `host:port` is its
    /// consumer's `client.id` (set from [`ConnectSpec::application_server`]), its
    /// partitions are read from its assignment.
    fn group_members(
        &self,
        group_id: &str,
    ) -> BoxFuture<'static, Result<Vec<GroupMember>, TransportError>> {
        let config = self.base(&["consumer"]);
        let group = group_id.to_owned();
        Box::pin(async move {
            let described = group.clone();
            tokio::task::spawn_blocking(move || {
                let client: rdkafka::consumer::BaseConsumer = config
                    .create()
                    .map_err(kafka("create a client to describe the group"))?;
                let list = client
                    .fetch_group_list(Some(&described), Duration::from_secs(10))
                    .map_err(kafka(format!("describe group {described}")))?;
                let mut members = Vec::new();
                for g in list.groups().iter().filter(|g| g.name() == described) {
                    for m in g.members() {
                        let announced = m.client_id();
                        members.push(GroupMember {
                            application_server: announced
                                .contains(':')
                                .then(|| announced.to_owned()),
                            partitions: m.assignment().map(parse_assignment).unwrap_or_default(),
                        });
                    }
                }
                Ok(members)
            })
            .await
            .map_err(|e| TransportError::Layout {
                topic: group.clone(),
                message: format!("describing the group failed: {e}"),
            })?
        })
    }

    fn connect(&self, spec: ConnectSpec) -> BoxFuture<'_, Result<Connection, TransportError>> {
        Box::pin(async move {
            let context = StreamsContext {
                listener: spec.listener.clone(),
                exactly_once: spec.exactly_once,
                on_rebalance: spec.on_rebalance.clone(),
                rebalances: AtomicU64::new(0),
                rewinds: AtomicU64::new(0),
                producer: OnceLock::new(),
                txn_error: Mutex::new(None),
            };
            let mut consumer_config = self.base(&["consumer"]);
            if let Some(server) = &spec.application_server {
                // Announced to the group: other members read it in DescribeGroups.
                consumer_config.set("client.id", server);
            }
            let consumer: StreamConsumer<StreamsContext> = consumer_config
                .set("group.id", &spec.group_id)
                .set(
                    "partition.assignment.strategy",
                    self.config
                        .get("partition.assignment.strategy")
                        .unwrap_or_else(|| default_assignor(&spec.topics)),
                )
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false")
                .set(
                    "isolation.level",
                    if spec.exactly_once {
                        "read_committed"
                    } else {
                        "read_uncommitted"
                    },
                )
                .create_with_context(context)
                .map_err(kafka("create consumer"))?;
            let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&topics)
                .map_err(kafka(format!("subscribe to {topics:?}")))?;
            let mut pc = self.base(&["producer"]);
            pc.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5");
            if spec.exactly_once {
                // Unique per runtime: two runtimes of one group in one process must not fence
                // each other. Zombie fencing comes from the consumer group metadata sent with
                // the offsets (KIP-447), not from a stable transactional id.
                static INSTANCE: AtomicU64 = AtomicU64::new(0);
                pc.set(
                    "transactional.id",
                    format!(
                        "{}-{}-{}",
                        spec.group_id,
                        std::process::id(),
                        INSTANCE.fetch_add(1, AtomicOrdering::Relaxed)
                    ),
                );
            }
            let producer: KafkaProducer = pc
                .create_with_context(SinkContext)
                .map_err(kafka("create producer"))?;
            let producer = Arc::new(producer);
            if spec.exactly_once {
                let p = producer.clone();
                tokio::task::spawn_blocking(move || {
                    p.init_transactions(Duration::from_secs(30))?;
                    p.begin_transaction()
                })
                .await
                .map_err(|e| TransportError::Delivery {
                    topic: String::new(),
                    message: format!("init_transactions task: {e}"),
                })?
                .map_err(kafka("init transactions"))?;
            }
            if consumer.context().producer.set(producer.clone()).is_err() {
                tracing::debug!("producer already attached to the consumer context");
            }
            Ok(Connection {
                consumer: Box::new(KafkaConsumer {
                    consumer: Arc::new(consumer),
                    producer: producer.clone(),
                    exactly_once: spec.exactly_once,
                    topics: TopicNames::default(),
                }),
                sink: Arc::new(KafkaSink { producer }),
            })
        })
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<StreamsContext>>,
    producer: Arc<KafkaProducer>,
    exactly_once: bool,
    topics: TopicNames,
}

fn blocking_err(op: &str, e: tokio::task::JoinError) -> TransportError {
    TransportError::Delivery {
        topic: String::new(),
        message: format!("{op} task failed: {e}"),
    }
}

impl KafkaConsumer {
    /// Exactly-once: aborts the open transaction, begins a new one and rewinds every assigned
    /// partition to its last committed offset (its in-flight work is cancelled). Failures are
    /// kept for the next commit, like those of a rebalance.
    async fn abort_and_rewind(&self) {
        let context = self.consumer.context();
        let producer = self.producer.clone();
        let aborted = tokio::task::spawn_blocking(move || {
            producer
                .abort_transaction(Duration::from_secs(30))
                .and_then(|()| producer.begin_transaction())
        })
        .await;
        let aborted = match aborted {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "abort task failed");
                return;
            }
        };
        if let Err(e) = aborted {
            tracing::error!(error = %e, "aborting the transaction after a failed commit failed");
            *context
                .txn_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            return;
        }
        let assigned = context.listener.assigned();
        let rewinds = context.listener.reset_uncommitted(&assigned);
        tracing::warn!(
            rewound = rewinds.len(),
            "transaction commit failed and was aborted; uncommitted records will be read again"
        );
        context.rewind(&*self.consumer, rewinds);
    }
}

/// The shared name of each topic read so far, so a record carries an `Arc` clone instead of
/// a `String` copied per message (which the delivery thread then freed into the loop thread's
/// malloc arena). A consumer reads a handful of topics: a short list beats a map.
#[derive(Default)]
struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.0.iter().find(|t| ***t == *topic) {
            return t.clone();
        }
        let t: Arc<str> = topic.into();
        self.0.push(t.clone());
        t
    }
}

/// A consumed message as a [`RawRecord`] (key and value copied out of librdkafka's buffer,
/// see [`key_and_value`]).
fn raw_record(
    got: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    topics: &mut TopicNames,
) -> Result<Option<RawRecord>, TransportError> {
    match got {
        // librdkafka reports lost broker connections through the consumer and keeps
        // reconnecting by itself: an outage pauses the stream, it does not end it.
        Err(KafkaError::MessageConsumption(code)) if transient_consumer_error(code) => {
            tracing::warn!(error = %code, "kafka consumer: broker unavailable, retrying");
            Ok(None)
        }
        Err(e) => Err(kafka("poll")(e)),
        Ok(m) => {
            let mut headers = Headers::default();
            if let Some(h) = m.headers() {
                headers.0.reserve_exact(h.count());
                for hd in h.iter() {
                    headers.0.push(Header {
                        key: hd.key.to_owned(),
                        value: hd.value.map(bytes::Bytes::copy_from_slice),
                    });
                }
            }
            let (key, value) = key_and_value(m.key(), m.payload());
            Ok(Some(RawRecord {
                topic: topics.get(m.topic()),
                partition: m.partition(),
                offset: m.offset(),
                key,
                value,
                headers,
                timestamp: m.timestamp().to_millis(),
            }))
        }
    }
}

/// Key and value copied out of librdkafka's buffer into one buffer they share: one
/// allocation for the copy and one for the shared count (two copies cost two, plus a third
/// when a compact Avro value slices the value), all freed together when the record's last
/// user lets go.
fn key_and_value(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> (Option<bytes::Bytes>, Option<bytes::Bytes>) {
    let (Some(k), Some(v)) = (key, value) else {
        return (
            key.map(bytes::Bytes::copy_from_slice),
            value.map(bytes::Bytes::copy_from_slice),
        );
    };
    let mut buf = Vec::with_capacity(k.len() + v.len());
    buf.extend_from_slice(k);
    buf.extend_from_slice(v);
    let buf = bytes::Bytes::from(buf);
    (Some(buf.slice(..k.len())), Some(buf.slice(k.len()..)))
}

impl SourceConsumer for KafkaConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<RawRecord>, TransportError>> {
        Box::pin(async move {
            // A record already fetched is taken without arming a timer; only an empty queue
            // waits, up to `timeout`.
            if let Some(got) = futures::FutureExt::now_or_never(self.consumer.recv()) {
                return raw_record(got, &mut self.topics);
            }
            match tokio::time::timeout(timeout, self.consumer.recv()).await {
                Err(_) => Ok(None),
                Ok(got) => raw_record(got, &mut self.topics),
            }
        })
    }

    fn poll_batch<'a>(
        &'a mut self,
        timeout: Duration,
        max: usize,
        out: &'a mut Vec<RawRecord>,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            let start = out.len();
            let mut waited = false;
            while out.len() - start < max {
                let context = self.consumer.context();
                let (rebalances, rewinds) = (
                    context.rebalances.load(AtomicOrdering::Relaxed),
                    context.rewinds.load(AtomicOrdering::Relaxed),
                );
                // A record already fetched is taken without arming a timer; only the first
                // poll of an empty queue waits, up to `timeout`.
                let got = match futures::FutureExt::now_or_never(self.consumer.recv()) {
                    Some(got) => got,
                    None if waited || out.len() > start => break,
                    None => {
                        waited = true;
                        match tokio::time::timeout(timeout, self.consumer.recv()).await {
                            Err(_) => break,
                            Ok(got) => got,
                        }
                    }
                };
                let context = self.consumer.context();
                if context.rewinds.load(AtomicOrdering::Relaxed) != rewinds {
                    // The partitions were sought back to their last commit inside this poll:
                    // what the batch took before is read again.
                    out.truncate(start);
                }
                out.extend(raw_record(got, &mut self.topics)?);
                if context.rebalances.load(AtomicOrdering::Relaxed) != rebalances {
                    break;
                }
            }
            Ok(())
        })
    }

    fn commit(
        &mut self,
        offsets: Vec<(TopicPartition, i64)>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let tpl = tpl_of(&offsets)?;
            let consumer = self.consumer.clone();
            if self.exactly_once {
                if let Some(e) = consumer.context().take_txn_error() {
                    return Err(kafka("transaction after a rebalance")(e));
                }
                let producer = self.producer.clone();
                let committed = tokio::task::spawn_blocking(move || {
                    let cgm = consumer
                        .group_metadata()
                        .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
                    producer.send_offsets_to_transaction(&tpl, &cgm, Duration::from_secs(30))?;
                    producer.commit_transaction(Duration::from_secs(30))?;
                    producer.begin_transaction()
                })
                .await
                .map_err(|e| blocking_err("commit transaction", e))?;
                match committed {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // A commit that raced a group rebalance (e.g. an outdated generation)
                        // only requires an abort: throw the open transaction away and read the
                        // uncommitted records again, as on a revoke (the runtime sees the
                        // listener's reset and goes on).
                        if matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort()) {
                            self.abort_and_rewind().await;
                        }
                        Err(kafka("commit transaction")(e))
                    }
                }
            } else {
                tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                    .await
                    .map_err(|e| blocking_err("commit", e))?
                    .map_err(kafka("commit"))
            }
        })
    }

    fn pause(&mut self, tps: &[TopicPartition]) -> Result<(), TransportError> {
        let list = tpl_of(&tps.iter().map(|t| (t.clone(), 0)).collect::<Vec<_>>())?;
        self.consumer.pause(&list).map_err(kafka("pause"))
    }

    fn resume(&mut self, tps: &[TopicPartition]) -> Result<(), TransportError> {
        let list = tpl_of(&tps.iter().map(|t| (t.clone(), 0)).collect::<Vec<_>>())?;
        self.consumer.resume(&list).map_err(kafka("resume"))
    }

    fn end_offsets(
        &self,
        tps: Vec<TopicPartition>,
    ) -> BoxFuture<'static, Result<Vec<(TopicPartition, i64)>, TransportError>> {
        let consumer = self.consumer.clone();
        Box::pin(async move {
            // One ListOffsets request per leader for every partition (`Offset::End` is the
            // "latest" timestamp, -1), instead of one watermark query per partition: each query can wait behind a
            // long-poll fetch on the same connection.
            let mut list = TopicPartitionList::new();
            for tp in &tps {
                list.add_partition_offset(&tp.topic, tp.partition, Offset::End)
                    .map_err(kafka(format!("offset list for {tp}")))?;
            }
            let got = tokio::task::spawn_blocking(move || {
                consumer.offsets_for_times(list, Duration::from_secs(5))
            })
            .await
            .map_err(|e| blocking_err("end offsets", e))?
            .map_err(kafka("end offsets"))?;
            Ok(got
                .elements()
                .iter()
                .filter_map(|e| {
                    let end = e.offset().to_raw().filter(|o| *o >= 0)?;
                    Some((TopicPartition::new(e.topic(), e.partition()), end))
                })
                .collect())
        })
    }

    fn committed_offsets(
        &self,
        tps: Vec<TopicPartition>,
    ) -> BoxFuture<'static, Result<super::CommittedOffsets, TransportError>> {
        let consumer = self.consumer.clone();
        Box::pin(async move {
            let list = tpl_of(&tps.iter().map(|t| (t.clone(), 0)).collect::<Vec<_>>())?;
            let got = tokio::task::spawn_blocking(move || {
                consumer.committed_offsets(list, Duration::from_secs(5))
            })
            .await
            .map_err(|e| blocking_err("committed offsets", e))?
            .map_err(kafka("committed offsets"))?;
            Ok(got
                .elements()
                .iter()
                .map(|e| {
                    (
                        TopicPartition::new(e.topic(), e.partition()),
                        e.offset().to_raw().filter(|o| *o >= 0),
                    )
                })
                .collect())
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        let consumer = self.consumer.clone();
        let producer = self.producer.clone();
        let eos = self.exactly_once;
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                if eos {
                    // Nothing is in flight here: the runtime committed before closing.
                    let _ = producer.abort_transaction(Duration::from_secs(10));
                } else {
                    let _ = producer.flush(Duration::from_secs(10));
                }
                consumer.unsubscribe();
            })
            .await;
        })
    }
}

/// The producer: librdkafka's delivery reports are served by rdkafka's polling thread, which
/// calls each record's [`OnDelivery`] directly (no future, channel or task per record).
type KafkaProducer = ThreadedProducer<SinkContext>;

/// Completes each record's [`OnDelivery`] from its delivery report.
struct SinkContext;

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    // Boxed twice: rdkafka passes the opaque as a thin pointer.
    type DeliveryOpaque = Box<OnDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, done: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, m)) => Err(TransportError::Delivery {
                topic: m.topic().to_owned(),
                message: e.to_string(),
            }),
        };
        (*done)(outcome);
    }
}

struct KafkaSink {
    producer: Arc<KafkaProducer>,
}

impl RecordSink for KafkaSink {
    fn send(&self, record: &RawRecord) -> Result<DeliveryFuture, TransportError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: OnDelivery = Box::new(move |outcome| {
            // The receiver gone means nobody waits for the outcome any more.
            let _ = tx.send(outcome);
        });
        match self.send_then(record, done) {
            Ok(_) => {
                let topic = record.topic.to_string();
                Ok(Box::pin(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(TransportError::Delivery {
                            topic,
                            message: "producer dropped the delivery".into(),
                        })
                    })
                }))
            }
            Err((e, _)) => Err(e),
        }
    }

    fn send_then(
        &self,
        record: &RawRecord,
        done: OnDelivery,
    ) -> Result<Queued, (TransportError, OnDelivery)> {
        let mut br: BaseRecord<'_, [u8], [u8], Box<OnDelivery>> =
            BaseRecord::with_opaque_to(&record.topic, Box::new(done));
        if let Some(k) = &record.key {
            br = br.key(k.as_ref());
        }
        if let Some(v) = &record.value {
            br = br.payload(v.as_ref());
        }
        if record.partition >= 0 {
            br = br.partition(record.partition);
        }
        if let Some(ts) = record.timestamp {
            br = br.timestamp(ts);
        }
        if !record.headers.0.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(record.headers.0.len());
            for hd in record.headers.iter() {
                h = h.insert(KHeader {
                    key: &hd.key,
                    value: hd.value.as_deref(),
                });
            }
            br = br.headers(h);
        }
        match self.producer.send(br) {
            Ok(()) => Ok(Queued::Notifies),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), br)) => {
                Err((TransportError::QueueFull, *br.delivery_opaque))
            }
            Err((e, br)) => Err((
                kafka(format!("send to {}", record.topic))(e),
                *br.delivery_opaque,
            )),
        }
    }
}

/// The partitions of a consumer-protocol assignment (`version: i16`, then per topic a
/// `string` (i16 length) and an `[i32]` (i32 count) of partitions, then user data); what
/// cannot be read ends the list.
fn parse_assignment(bytes: &[u8]) -> Vec<TopicPartition> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn int16(bytes: &mut &[u8]) -> Option<i16> {
        take(bytes, 2)
            .and_then(|b| b.try_into().ok())
            .map(i16::from_be_bytes)
    }
    fn int32(bytes: &mut &[u8]) -> Option<i32> {
        take(bytes, 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
    }
    let mut out = Vec::new();
    let mut cursor = bytes;
    let parse = |cursor: &mut &[u8], out: &mut Vec<TopicPartition>| -> Option<()> {
        let _version = int16(cursor)?;
        let topics = int32(cursor)?;
        for _ in 0..topics.max(0) {
            let len = int16(cursor)?;
            let topic = std::str::from_utf8(take(cursor, usize::try_from(len).ok()?)?).ok()?;
            let partitions = int32(cursor)?;
            for _ in 0..partitions.max(0) {
                out.push(TopicPartition::new(topic, int32(cursor)?));
            }
        }
        Some(())
    };
    let _ = parse(&mut cursor, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::key_and_value;

    #[test]
    fn key_and_value_share_one_buffer_and_keep_their_bytes() {
        let (k, v) = key_and_value(Some(b"p-1"), Some(b"\0\0\0\0\x01datum"));
        assert_eq!(k.as_deref(), Some(&b"p-1"[..]));
        assert_eq!(v.as_deref(), Some(&b"\0\0\0\0\x01datum"[..]));
        assert_eq!(key_and_value(None, Some(b"v")), (None, Some("v".into())));
        assert_eq!(key_and_value(Some(b"k"), None), (Some("k".into()), None));
        assert_eq!(
            key_and_value(Some(b""), Some(b"")),
            (Some("".into()), Some("".into()))
        );
        assert_eq!(key_and_value(None, None), (None, None));
    }
}
