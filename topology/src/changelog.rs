//! Changelog mode: state stores backed by a compacted topic, so a new pod restores its state.
//!
//! A [`state::StateConfig::changelog`] sink receives every committed write of the stores
//! opened with changelog enabled. Here are two sinks:
//!
//! - [`KafkaChangelog`]: each write is produced to the compacted topic
//!   `{application_id}-{store}-changelog` ([`changelog_topic`]), created through the
//!   AdminClient with `cleanup.policy=compact` if missing. The record key is the store's
//!   encoded key, the value its encoded value (`None`, a tombstone, for a deletion), and the
//!   header [`STORE_HEADER`] names the store. The producer is idempotent with `acks=all`.
//! - [`EmbeddedChangelog`]: the same records appended to an [`EmbeddedLog`] topic of the same
//!   name (the standalone mode).
//!
//! The runtime flushes the sink before it commits source offsets
//! ([`Runtime::with_changelog`](crate::Runtime::with_changelog)), so a crash never loses a
//! changelog record whose input offset was committed. Before processing starts, when a local
//! store is empty, `restore` reads its changelog from the beginning to the end offsets taken
//! at the start and fills the store ([`state::StateDir::restore`]); a non-empty store is left
//! alone.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use topology::changelog::KafkaChangelog;
//! let changelog = Arc::new(KafkaChangelog::new("127.0.0.1:9092", "image-collector")?);
//! let dir = state::StateConfig::new("/var/lib/app/state").changelog(changelog.clone()).open()?;
//! changelog.restore(&dir, "stored-images").await?; // before the runtime starts
//! let stored = dir.store::<String, String>("stored-images")?;
//! # let _ = stored; Ok(()) }
//! ```
//!
//! Guarantees: at least once. The changelog producer is not part of an exactly-once
//! transaction; a write replayed after a crash is the same put or delete again, which a
//! compacted topic and a restore (last write per key wins) absorb.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header as KHeader, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode as Code;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use state::{ChangelogSink, SinkError, StateDir};

use crate::RawRecord;
use crate::transport::{EmbeddedLog, LogError};

/// The header naming the store of a changelog record.
pub const STORE_HEADER: &str = "changelog.store";

/// The changelog topic of `store` in application `application_id`:
/// `{application_id}-{store}-changelog`.
///
/// # Example
/// ```
/// assert_eq!(topology::changelog::changelog_topic("app", "counts"), "app-counts-changelog");
/// ```
pub fn changelog_topic(application_id: &str, store: &str) -> String {
    format!("{application_id}-{store}-changelog")
}

/// Changelog failures, naming the topic or store concerned.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    /// A Kafka client operation failed.
    #[error("changelog: kafka {operation}: {source}")]
    Kafka {
        /// What was being done, with the topic.
        operation: String,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The changelog topic could not be created.
    #[error("changelog: creating topic {topic}: {code}")]
    CreateTopic {
        /// Topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// A changelog record was not delivered: the changelog misses a write.
    #[error("changelog: delivery to {topic} failed: {message}")]
    Delivery {
        /// Topic.
        topic: String,
        /// Why.
        message: String,
    },
    /// Records were still undelivered when the flush timed out.
    #[error("changelog: {pending} records still undelivered after {timeout:?}")]
    FlushTimeout {
        /// Records in the producer queue.
        pending: i32,
        /// The flush timeout.
        timeout: Duration,
    },
    /// Restore did not reach the end offsets in time.
    #[error(
        "changelog: restoring {store} from {topic}: partition {partition} at {position}, end {end}, after {timeout:?}"
    )]
    RestoreTimeout {
        /// Store.
        store: String,
        /// Topic.
        topic: String,
        /// The partition not caught up.
        partition: i32,
        /// Where reading stood.
        position: i64,
        /// The end offset to reach.
        end: i64,
        /// The restore timeout.
        timeout: Duration,
    },
    /// Writing the restored entries into the local store failed.
    #[error("changelog: restoring store {store} from {topic}: {source}")]
    State {
        /// Store.
        store: String,
        /// Topic.
        topic: String,
        /// The state crate's error.
        #[source]
        source: Box<state::StateError>,
    },
    /// The embedded log failed.
    #[error("changelog: {0}")]
    Log(#[from] LogError),
    /// A blocking task failed (panicked or was cancelled).
    #[error("changelog: {operation} task failed: {message}")]
    Task {
        /// What was being done.
        operation: String,
        /// The join error.
        message: String,
    },
}

/// What one restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Changelog records read.
    pub records: u64,
    /// Entries (latest per key, tombstones included) applied to the store; 0 when the store
    /// was not empty and was left alone.
    pub applied: usize,
    /// Whether the store was restored (it was empty and the changelog was not).
    pub restored: bool,
    /// Time taken.
    pub elapsed: Duration,
}

/// Delivery reports of the changelog producer: the first failure is kept (sticky), so every
/// later flush fails and the runtime never commits input offsets past a lost changelog write.
struct DeliveryContext {
    error: Mutex<Option<(String, String)>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let mut g = self
                .error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if g.is_none() {
                *g = Some((m.topic().to_owned(), e.to_string()));
            }
        }
    }
}

impl DeliveryContext {
    fn check(&self) -> Result<(), ChangelogError> {
        let g = self
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*g {
            Some((topic, message)) => Err(ChangelogError::Delivery {
                topic: topic.clone(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// A [`ChangelogSink`] producing to compacted Kafka topics; see the [module docs](self).
pub struct KafkaChangelog {
    application_id: String,
    settings: HashMap<String, String>,
    producer: ThreadedProducer<DeliveryContext>,
    admin: AdminClient<DefaultClientContext>,
    ensured: Mutex<HashSet<String>>,
    partitions: i32,
    replication: i32,
    flush_timeout: Duration,
    restore_timeout: Duration,
}

impl std::fmt::Debug for KafkaChangelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChangelog")
            .field("application_id", &self.application_id)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaChangelog {
    /// A changelog for `application_id` on the cluster at `bootstrap_servers`.
    pub fn new(bootstrap_servers: &str, application_id: &str) -> Result<Self, ChangelogError> {
        Self::with_settings(application_id, &[("bootstrap.servers", bootstrap_servers)])
    }

    /// A changelog with librdkafka `settings` (at least `bootstrap.servers`; security settings
    /// too), used by its producer, admin client and restore consumer.
    pub fn with_settings(
        application_id: &str,
        settings: &[(&str, &str)],
    ) -> Result<Self, ChangelogError> {
        let settings: HashMap<String, String> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut pc = client_config(&settings);
        pc.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        let producer = pc
            .create_with_context(DeliveryContext {
                error: Mutex::new(None),
            })
            .map_err(|source| ChangelogError::Kafka {
                operation: "create producer".into(),
                source,
            })?;
        let admin = client_config(&settings)
            .create()
            .map_err(|source| ChangelogError::Kafka {
                operation: "create admin client".into(),
                source,
            })?;
        Ok(KafkaChangelog {
            application_id: application_id.to_owned(),
            settings,
            producer,
            admin,
            ensured: Mutex::new(HashSet::new()),
            partitions: 1,
            replication: 1,
            flush_timeout: Duration::from_secs(30),
            restore_timeout: Duration::from_secs(300),
        })
    }

    /// Partitions and replication factor of the changelog topics this creates (default 1, 1).
    pub fn topic_layout(mut self, partitions: i32, replication: i32) -> Self {
        self.partitions = partitions.max(1);
        self.replication = replication.max(1);
        self
    }

    /// How long [`flush`](ChangelogSink::flush) waits (default 30 s) and how long a restore
    /// may take (default 5 min).
    pub fn timeouts(mut self, flush: Duration, restore: Duration) -> Self {
        self.flush_timeout = flush;
        self.restore_timeout = restore;
        self
    }

    /// The changelog topic of `store`.
    pub fn topic(&self, store: &str) -> String {
        changelog_topic(&self.application_id, store)
    }

    /// Creates the compacted changelog topic of `store` if missing (`cleanup.policy=compact`)
    /// and returns its name. [`append`](ChangelogSink::append) does this on a store's first
    /// write, blocking; calling it at startup for every store avoids that.
    pub async fn ensure_topic(&self, store: &str) -> Result<String, ChangelogError> {
        let topic = self.topic(store);
        if self.lock_ensured().contains(&topic) {
            return Ok(topic);
        }
        let new = NewTopic::new(
            &topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        )
        .set("cleanup.policy", "compact");
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(30)))
            .request_timeout(Some(Duration::from_secs(30)));
        let results = self
            .admin
            .create_topics(&[new], &opts)
            .await
            .map_err(|source| ChangelogError::Kafka {
                operation: format!("create topic {topic}"),
                source,
            })?;
        for r in results {
            match r {
                Ok(_) | Err((_, Code::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(ChangelogError::CreateTopic { topic: t, code }),
            }
        }
        self.lock_ensured().insert(topic.clone());
        Ok(topic)
    }

    fn lock_ensured(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ensured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn produce(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), ChangelogError> {
        self.producer.context().check()?;
        let topic = self.topic(store);
        if !self.lock_ensured().contains(&topic) {
            futures::executor::block_on(self.ensure_topic(store))?;
        }
        let headers = OwnedHeaders::new_with_capacity(1).insert(KHeader {
            key: STORE_HEADER,
            value: Some(store),
        });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&topic).key(key).headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let deadline = Instant::now() + self.flush_timeout;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(Code::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((source, _)) => {
                    return Err(ChangelogError::Kafka {
                        operation: format!("send to {topic}"),
                        source,
                    });
                }
            }
        }
    }

    fn flush_now(&self) -> Result<(), ChangelogError> {
        self.producer.context().check()?;
        if self.producer.flush(self.flush_timeout).is_err() {
            return Err(ChangelogError::FlushTimeout {
                pending: self.producer.in_flight_count(),
                timeout: self.flush_timeout,
            });
        }
        self.producer.context().check()
    }

    /// Restores `store` into `dir` from its changelog topic if the local store is empty: reads
    /// every partition from the beginning to the end offsets taken now, keeps the latest value
    /// per key (a tombstone deletes) and writes them in one pass, then flushes `dir`. A
    /// non-empty store, or a missing or empty topic, is left alone.
    pub async fn restore(
        &self,
        dir: &StateDir,
        store: &str,
    ) -> Result<RestoreStats, ChangelogError> {
        let started = Instant::now();
        let topic = self.topic(store);
        let is_empty = dir
            .is_store_empty(store)
            .map_err(|source| ChangelogError::State {
                store: store.to_owned(),
                topic: topic.clone(),
                source: Box::new(source),
            })?;
        if !is_empty {
            return Ok(RestoreStats {
                elapsed: started.elapsed(),
                ..Default::default()
            });
        }
        let mut config = client_config(&self.settings);
        config
            .set("group.id", format!("{}-restore", self.application_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "10485760");
        let dir = dir.clone();
        let store = store.to_owned();
        let timeout = self.restore_timeout;
        tokio::task::spawn_blocking(move || restore_blocking(config, &dir, &store, &topic, timeout))
            .await
            .map_err(|e| ChangelogError::Task {
                operation: "restore".into(),
                message: e.to_string(),
            })?
            .map(|mut s| {
                s.elapsed = started.elapsed();
                s
            })
    }

    /// [`restore`](Self::restore) for several stores, in order.
    pub async fn restore_all(
        &self,
        dir: &StateDir,
        stores: &[&str],
    ) -> Result<Vec<RestoreStats>, ChangelogError> {
        let mut out = Vec::with_capacity(stores.len());
        for s in stores {
            out.push(self.restore(dir, s).await?);
        }
        Ok(out)
    }
}

fn client_config(settings: &HashMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in settings {
        c.set(k, v);
    }
    c
}

fn kafka_err(operation: String) -> impl FnOnce(KafkaError) -> ChangelogError {
    move |source| ChangelogError::Kafka { operation, source }
}

fn restore_blocking(
    config: ClientConfig,
    dir: &StateDir,
    store: &str,
    topic: &str,
    timeout: Duration,
) -> Result<RestoreStats, ChangelogError> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(kafka_err(format!("create restore consumer for {topic}")))?;
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka_err(format!("metadata of {topic}")))?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    // End offsets now: what was written before the restore started.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka_err(format!("watermarks of {topic}-{p}")))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(kafka_err(format!("assignment of {topic}-{p}")))?;
        }
    }
    if ends.is_empty() {
        return Ok(RestoreStats::default());
    }
    consumer
        .assign(&tpl)
        .map_err(kafka_err(format!("assign {topic}")))?;
    let deadline = Instant::now() + timeout;
    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut records = 0u64;
    let mut positions: HashMap<i32, i64> = HashMap::new();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                if let Some(k) = m.key() {
                    latest.insert(k.to_vec(), m.payload().map(<[u8]>::to_vec));
                }
                positions.insert(m.partition(), m.offset() + 1);
                if ends
                    .get(&m.partition())
                    .is_some_and(|e| m.offset() + 1 >= *e)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(kafka_err(format!("read {topic}"))(e)),
            None => {
                // Compaction can leave gaps at the end: trust the consumer's position too.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements_for_topic(topic) {
                        if let Some(o) = e.offset().to_raw()
                            && ends.get(&e.partition()).is_some_and(|end| o >= *end)
                        {
                            ends.remove(&e.partition());
                        }
                    }
                }
            }
        }
        if !ends.is_empty() && Instant::now() >= deadline {
            let (&partition, &end) = ends.iter().next().unwrap_or((&0, &0));
            return Err(ChangelogError::RestoreTimeout {
                store: store.to_owned(),
                topic: topic.to_owned(),
                partition,
                position: positions.get(&partition).copied().unwrap_or(0),
                end,
                timeout,
            });
        }
    }
    let state_err = |source| ChangelogError::State {
        store: store.to_owned(),
        topic: topic.to_owned(),
        source: Box::new(source),
    };
    let applied = dir.restore(store, latest).map_err(state_err)?;
    dir.flush().map_err(state_err)?;
    Ok(RestoreStats {
        records,
        applied,
        restored: applied > 0,
        elapsed: Duration::ZERO,
    })
}

impl ChangelogSink for KafkaChangelog {
    fn append(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), SinkError> {
        self.produce(store, key, value).map_err(SinkError::from)
    }

    fn flush(&self) -> Result<(), SinkError> {
        self.flush_now().map_err(SinkError::from)
    }
}

/// A [`ChangelogSink`] over an [`EmbeddedLog`] (the standalone mode): writes are appended to
/// the log topic [`changelog_topic`] (one partition), flushed with the log.
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use topology::{changelog::EmbeddedChangelog, transport::EmbeddedLog};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let log = Arc::new(EmbeddedLog::temporary()?);
/// let changelog = Arc::new(EmbeddedChangelog::new(log, "app"));
/// let old = state::StateConfig::temporary().changelog(changelog.clone()).open()?;
/// old.store::<String, u32>("counts")?.put("a", &1)?;
///
/// let new = state::StateConfig::temporary().open()?;
/// assert_eq!(changelog.restore(&new, "counts")?.applied, 1);
/// assert_eq!(new.store::<String, u32>("counts")?.get("a")?, Some(1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddedChangelog {
    log: Arc<EmbeddedLog>,
    application_id: String,
}

impl EmbeddedChangelog {
    /// A changelog for `application_id` in `log`.
    pub fn new(log: Arc<EmbeddedLog>, application_id: &str) -> Self {
        EmbeddedChangelog {
            log,
            application_id: application_id.to_owned(),
        }
    }

    /// The changelog topic of `store`.
    pub fn topic(&self, store: &str) -> String {
        changelog_topic(&self.application_id, store)
    }

    /// Restores `store` into `dir` from its changelog if the local store is empty (latest
    /// value per key; tombstones delete), then flushes `dir`.
    pub fn restore(&self, dir: &StateDir, store: &str) -> Result<RestoreStats, ChangelogError> {
        let started = Instant::now();
        let topic = self.topic(store);
        let state_err = |source| ChangelogError::State {
            store: store.to_owned(),
            topic: topic.clone(),
            source: Box::new(source),
        };
        if !dir.is_store_empty(store).map_err(state_err)? {
            return Ok(RestoreStats {
                elapsed: started.elapsed(),
                ..Default::default()
            });
        }
        let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut records = 0;
        if self.log.partitions(&topic)?.is_some() {
            for r in self.log.read_all(&topic)? {
                records += 1;
                if let Some(k) = r.key {
                    latest.insert(k.to_vec(), r.value.map(|v| v.to_vec()));
                }
            }
        }
        let applied = dir.restore(store, latest).map_err(state_err)?;
        dir.flush().map_err(state_err)?;
        Ok(RestoreStats {
            records,
            applied,
            restored: applied > 0,
            elapsed: started.elapsed(),
        })
    }
}

impl ChangelogSink for EmbeddedChangelog {
    fn append(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), SinkError> {
        let mut headers = crate::Headers::default();
        headers.insert(STORE_HEADER, store.to_owned());
        let record = RawRecord {
            topic: self.topic(store).into(),
            partition: 0,
            offset: -1,
            key: Some(bytes::Bytes::copy_from_slice(key)),
            value: value.map(bytes::Bytes::copy_from_slice),
            headers,
            timestamp: None,
        };
        self.log.append(&record)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), SinkError> {
        self.log.flush_blocking()?;
        Ok(())
    }
}
