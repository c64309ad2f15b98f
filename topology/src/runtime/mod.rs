//! The runtime: runs a [`Topology`] over a [`Transport`].
//!
//! One loop polls the consumer, decodes each record with its source's serdes and pushes it
//! through the graph. Stateless nodes run inline; async processors run as tasks under their
//! concurrency bound and ordering (see [`AsyncOptions`](crate::AsyncOptions)); sinks queue in
//! order and are acknowledged later. Every source record holds an [`Ack`] until all the work it
//! caused is acknowledged; commits store the lowest unfinished offset per partition
//! ([`PartitionOffsets`]). When a partition has too much in flight it is paused, and the loop
//! keeps polling so the consumer stays in its group. Undecodable records and records whose
//! processing fails for good go to the dead-letter topic with `dlq.*` headers. On shutdown the
//! loop stops fetching, drains in-flight work (bounded by a timeout), commits and closes.

mod engine;
mod offsets;
mod run_loop;
mod steps;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use offsets::{
    Ack, AckInner, AssignmentChange, OffsetTracker, PartitionOffsets, ProcessingGuard,
};
// Re-exported for code that imports it from the runtime, where it was declared before.
pub use crate::transport::Rewind;

use crate::Metrics;
use crate::graph::Topology;
use crate::task::TaskId;
use crate::transport::{ConnectSpec, TopicPartition, Transport, TransportError};
use engine::Engine;
use run_loop::{Durable, RunLoop};
pub use tasks::StoreReader;
pub(crate) use tasks::{CURRENT_RECORD, flush_write_back};
use tasks::{TaskManager, TaskRegistry, TaskSettings};

/// Runtime settings.
///
/// # Example
/// ```
/// let c = topology::RuntimeConfig::new("diff-checker");
/// assert_eq!(c.application_id, "diff-checker");
/// ```
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Consumer group id.
    pub application_id: String,
    /// How often offsets are committed.
    pub commit_interval: Duration,
    /// Records per partition still being processed (held by async stages) before it is
    /// paused; it resumes once they drop to half of this.
    pub max_in_flight_per_partition: usize,
    /// Records per partition in flight in total, including those whose outputs only await the
    /// producer's acknowledgement, before it is paused (resumed at half). Never below
    /// `max_in_flight_per_partition`.
    pub max_unacked_per_partition: usize,
    /// The most records one poll hands the loop (Kafka's `max.poll.records`). The loop's own
    /// checks (assignment changes, commit and punctuation times, shutdown) run once per poll,
    /// so a batch spreads them over its records; back-pressure may overshoot its limits by
    /// up to one batch.
    pub max_poll_records: usize,
    /// How long one poll waits (while a partition is paused, at most
    /// [`PAUSED_POLL_TIMEOUT`], so it resumes promptly).
    pub poll_timeout: Duration,
    /// How long shutdown waits for in-flight work.
    pub drain_timeout: Duration,
    /// Exactly-once (transactional) processing, Kafka only.
    pub exactly_once: bool,
    /// Where task stores live: `state_dir/<application_id>/<task>/`. `None`: temporary
    /// databases, gone when the runtime stops (tests, topologies without stores).
    pub state_dir: Option<std::path::PathBuf>,
    /// Whether stores with a changelog write it (and restore from it). Off for a process that
    /// owns every partition for good and keeps its state on a durable disk (the standalone
    /// mode): stores are then local only.
    pub changelogs: bool,
    /// sled's page cache per task database.
    pub store_page_cache_bytes: u64,
    /// The `host:port` this instance serves interactive queries on, announced to the other
    /// instances of the application (Kafka Streams' `application.server`); see
    /// [`StoreReader::owner_of`].
    pub application_server: Option<String>,
    /// The wall clock wall-clock punctuations run on: the system's, or a manual one a test
    /// advances ([`TopologyTestDriver::advance_wall_clock`](crate::TopologyTestDriver::advance_wall_clock)).
    pub wall_clock: WallClock,
}

/// The wall clock of a runtime (milliseconds since the epoch).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use topology::runtime::WallClock;
/// let clock = WallClock::manual(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// assert!(WallClock::system().now_ms() > 1_600_000_000_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct WallClock {
    manual: Option<Arc<std::sync::atomic::AtomicI64>>,
}

impl WallClock {
    /// The system clock.
    pub fn system() -> Self {
        WallClock::default()
    }

    /// A clock that stands at `start_ms` until [`advance`](Self::advance)d.
    pub fn manual(start_ms: i64) -> Self {
        WallClock {
            manual: Some(Arc::new(start_ms.into())),
        }
    }

    /// Moves a manual clock forward (a system clock ignores it).
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.manual {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            t.fetch_add(by, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(std::sync::atomic::Ordering::SeqCst),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or_default(),
        }
    }
}

impl RuntimeConfig {
    /// Defaults for `application_id`: commit every second, 1,000 records being processed and
    /// 20,000 in flight in total (awaiting output acks included) per partition, 30 s drain.
    pub fn new(application_id: &str) -> Self {
        RuntimeConfig {
            application_id: application_id.to_owned(),
            commit_interval: Duration::from_secs(1),
            max_in_flight_per_partition: 1000,
            max_unacked_per_partition: 20_000,
            max_poll_records: 500,
            poll_timeout: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(30),
            exactly_once: false,
            state_dir: None,
            changelogs: true,
            store_page_cache_bytes: 4 * 1024 * 1024,
            application_server: None,
            wall_clock: WallClock::system(),
        }
    }

    fn unacked_limit(&self) -> usize {
        self.max_unacked_per_partition
            .max(self.max_in_flight_per_partition)
    }

    /// Whether a partition with `in_flight` records (`processing` of them still being
    /// processed) must be paused.
    fn over_limit(&self, in_flight: usize, processing: usize) -> bool {
        processing >= self.max_in_flight_per_partition.max(1) || in_flight >= self.unacked_limit()
    }

    /// Whether a paused partition may resume (both counts at or below half their limit).
    fn below_low_water(&self, in_flight: usize, processing: usize) -> bool {
        processing <= self.max_in_flight_per_partition / 2 && in_flight <= self.unacked_limit() / 2
    }
}

/// The longest a poll waits while a partition is paused: the resume check runs between polls.
pub const PAUSED_POLL_TIMEOUT: Duration = Duration::from_millis(2);

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Outputs could not be written for these partitions; offsets were not committed past them.
    #[error("outputs failed for good in {0:?}; stopped without committing past them")]
    OutputFailed(Vec<TopicPartition>),
    /// The schema registry stayed unavailable longer than `limit` while records of these
    /// partitions needed it; offsets were not committed past them (a restart reads them again).
    #[error(
        "the schema registry was unavailable for more than {limit:?} while records of {partitions:?} \
         needed it; stopped without committing past them"
    )]
    RegistryUnavailable {
        /// The partitions whose records waited for the registry.
        partitions: Vec<TopicPartition>,
        /// How long a record waits for the registry.
        limit: Duration,
    },
    /// The state directory could not be flushed before a commit; offsets were not committed.
    #[error("flushing the state directory before committing offsets: {0}")]
    State(#[source] state::StateError),
    /// The changelog could not be flushed before a commit; offsets were not committed.
    #[error("flushing the changelog before committing offsets: {source}")]
    ChangelogFlush {
        /// What the changelog sink said.
        #[source]
        source: state::SinkError,
    },
    /// A task's stores could not be opened, restored or kept in step with their changelog.
    #[error("task {task}: {message}")]
    Restore {
        /// The task.
        task: TaskId,
        /// What went wrong.
        message: String,
    },
    /// The source topics of a sub-topology with stores have different partition counts, so
    /// one task could not own all of a key's records.
    #[error(
        "sub-topology {subtopology} shares stores across topics with different partition counts {partitions:?}: \
         its source topics must be co-partitioned (the same number of partitions, keyed alike)"
    )]
    NotCopartitioned {
        /// The sub-topology.
        subtopology: usize,
        /// Each source topic and its partition count.
        partitions: Vec<(String, i32)>,
    },
}

/// Why the runtime must stop, when a record failed for good: the registry outage when one
/// caused it (the outputs of those records were never attempted), else the failed outputs.
fn failure(tracker: &OffsetTracker) -> Option<RuntimeError> {
    let failed = tracker.failed_partitions();
    if failed.is_empty() {
        return None;
    }
    let registry = tracker.registry_unavailable_partitions();
    Some(if registry.is_empty() {
        RuntimeError::OutputFailed(failed)
    } else {
        RuntimeError::RegistryUnavailable {
            partitions: registry,
            limit: engine::REGISTRY_OUTAGE_LIMIT,
        }
    })
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records consumed.
    pub consumed: u64,
    /// Records abandoned at shutdown because the drain timed out.
    pub abandoned: usize,
}

/// Runs a topology.
///
/// # Example
/// ```no_run
/// # async fn run(t: topology::Topology) -> Result<(), topology::RuntimeError> {
/// use std::sync::Arc;
/// use topology::{Runtime, RuntimeConfig, transport::KafkaTransport};
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// Runtime::new(t, Arc::new(KafkaTransport::new("127.0.0.1:9092")), RuntimeConfig::new("app"))
///     .run(shutdown)
///     .await?;
/// # Ok(()) }
/// ```
pub struct Runtime {
    topology: Arc<Topology>,
    transport: Arc<dyn Transport>,
    config: RuntimeConfig,
    metrics: Arc<Metrics>,
    tracker: Arc<OffsetTracker>,
    changelog: Option<Arc<dyn state::ChangelogSink>>,
    state_dir: Option<state::StateDir>,
    /// The running tasks' stores: created here, not in `run`, so a [`StoreReader`] taken
    /// before `run` sees them.
    registry: Arc<TaskRegistry>,
}

impl Runtime {
    /// A runtime for `topology` over `transport`, with unregistered metrics.
    pub fn new(topology: Topology, transport: Arc<dyn Transport>, config: RuntimeConfig) -> Self {
        let metrics = Metrics::unregistered().map(Arc::new);
        Runtime {
            // Internal topics (repartition topics) are named for the application here, as
            // Kafka Streams names them when the application starts.
            topology: Arc::new(topology.for_application(&config.application_id)),
            transport,
            config,
            // Creating metrics without registering them cannot fail for our fixed names.
            metrics: metrics.unwrap_or_else(|_| unreachable_metrics()),
            tracker: Arc::new(OffsetTracker::default()),
            changelog: None,
            state_dir: None,
            registry: Arc::new(TaskRegistry::default()),
        }
    }

    /// Flushes `sink` (e.g. a [`KafkaChangelog`](crate::changelog::KafkaChangelog)) before
    /// every offset commit, so a committed input offset never runs ahead of the changelog
    /// records its processing wrote.
    pub fn with_changelog(mut self, sink: Arc<dyn state::ChangelogSink>) -> Self {
        self.changelog = Some(sink);
        self
    }

    /// Flushes `dir` to disk before every offset commit (processors writing to stores in it).
    pub fn with_state_dir(mut self, dir: state::StateDir) -> Self {
        self.state_dir = Some(dir);
        self
    }

    /// Uses `metrics` (registered where you want them).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Arc::new(metrics);
        self
    }

    /// The topology it runs (its internal topics named for the application).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The shared offset tracker (for inspection in tests).
    pub fn tracker(&self) -> Arc<OffsetTracker> {
        self.tracker.clone()
    }

    /// Read access to the stores of this runtime's running tasks (take it before
    /// [`run`](Self::run), which consumes the runtime).
    pub fn stores(&self) -> StoreReader {
        StoreReader::new(self.registry.clone()).with_context(crate::stateful::QueryContext {
            topology: self.topology.clone(),
            transport: self.transport.clone(),
            application_id: self.config.application_id.clone(),
        })
    }

    /// Runs until `shutdown` is cancelled or a fatal error happens.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary, RuntimeError> {
        let metrics = self.metrics.clone();
        let rebalances = metrics.rebalances_total.clone();
        let spec = ConnectSpec {
            group_id: self.config.application_id.clone(),
            topics: self.topology.source_topics(),
            exactly_once: self.config.exactly_once,
            listener: self.tracker.clone(),
            on_rebalance: Arc::new(move || rebalances.inc()),
            application_server: self.config.application_server.clone(),
        };
        let stateful = self
            .topology
            .subtopologies()
            .iter()
            .any(|s| s.is_stateful());
        if !self.topology.internal_topics().is_empty() {
            create_internal_topics(&self.topology, self.transport.state_log()?).await?;
        }
        let state_log = if stateful {
            let log = self.transport.state_log()?;
            check_layout(&self.topology, log.clone()).await?;
            Some(log)
        } else {
            None
        };
        let conn = self.transport.connect(spec).await?;
        let registry = self.registry.clone();
        let engine = Engine::new(
            self.topology.clone(),
            conn.sink.clone(),
            metrics.clone(),
            registry.clone(),
        );
        let tasks = TaskManager::new(
            TaskSettings {
                application_id: self.config.application_id.clone(),
                root: self
                    .config
                    .state_dir
                    .as_ref()
                    .map(|d| d.join(&self.config.application_id)),
                exactly_once: self.config.exactly_once,
                changelogs: self.config.changelogs,
                page_cache_bytes: self.config.store_page_cache_bytes,
            },
            self.topology.clone(),
            registry,
            conn.sink,
            state_log,
            metrics.clone(),
        );
        let durable = Durable {
            changelog: self.changelog,
            state_dir: self.state_dir,
        };
        let mut run = RunLoop::new(
            self.config,
            self.tracker,
            metrics,
            engine,
            conn.consumer,
            tasks,
            durable,
        );
        let result = run.run(&shutdown).await;
        run.shutdown(result).await
    }
}

/// Creates the topology's internal (repartition) topics that do not exist, with as many
/// partitions as the largest of its other source topics (as Kafka Streams does), before the
/// consumer subscribes to them.
async fn create_internal_topics(
    topology: &Topology,
    log: Arc<dyn crate::transport::StateLog>,
) -> Result<(), RuntimeError> {
    let internal = topology.internal_topics().to_vec();
    let external: Vec<String> = topology
        .source_topics()
        .into_iter()
        .filter(|t| !internal.contains(t))
        .collect();
    on_blocking_thread("creating internal topics", move || {
        let mut partitions = 1;
        for topic in &external {
            partitions = partitions.max(log.partitions(topic)?.unwrap_or(1));
        }
        for topic in &internal {
            log.ensure_repartition(topic, partitions)?;
        }
        Ok(())
    })
    .await
}

/// Runs `work` (blocking calls to the log) on a blocking thread; a thread that panicked is
/// reported as `what` failing.
async fn on_blocking_thread(
    what: &str,
    work: impl FnOnce() -> Result<(), RuntimeError> + Send + 'static,
) -> Result<(), RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::Restore {
            task: TaskId {
                subtopology: 0,
                partition: -1,
            },
            message: format!("{what}: {e}"),
        })?
}

/// Checks, before joining the group, that every sub-topology with stores reads co-partitioned
/// topics (those that exist: a missing one is checked again when its tasks are assigned).
async fn check_layout(
    topology: &Topology,
    log: Arc<dyn crate::transport::StateLog>,
) -> Result<(), RuntimeError> {
    let subtopologies: Vec<(usize, Vec<String>)> = topology
        .subtopologies()
        .iter()
        .filter(|s| s.is_stateful() && s.source_topics.len() > 1)
        .map(|s| (s.id, s.source_topics.clone()))
        .collect();
    if subtopologies.is_empty() {
        return Ok(());
    }
    on_blocking_thread("layout check task", move || {
        for (id, topics) in subtopologies {
            let mut counts = Vec::new();
            for topic in topics {
                if let Some(n) = log.partitions(&topic)? {
                    counts.push((topic, n));
                }
            }
            tasks::check_copartitioned(id, &counts)?;
        }
        Ok(())
    })
    .await
}

fn unreachable_metrics() -> Arc<Metrics> {
    // Metrics::unregistered only fails on invalid metric names, which are fixed literals.
    Arc::new(Metrics::unregistered().unwrap_or_else(|e| panic!("invalid metric definition: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, offset: i64) -> crate::RawRecord {
        crate::RawRecord {
            topic: topic.into(),
            partition: 0,
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn a_registry_outage_is_named_as_such_not_as_failed_outputs() {
        let tracker = Arc::new(OffsetTracker::default());
        let (outputs, registry) = (
            TopicPartition::new("outputs", 0),
            TopicPartition::new("registry", 0),
        );
        tracker.assign(&[outputs.clone(), registry.clone()]);
        assert!(failure(&tracker).is_none());

        let ack = tracker.begin(record("outputs", 5)).expect("assigned");
        ack.fail();
        drop(ack);
        let error = failure(&tracker).expect("a failure");
        assert!(
            matches!(&error, RuntimeError::OutputFailed(tps) if tps == std::slice::from_ref(&outputs))
        );

        let ack = tracker.begin(record("registry", 7)).expect("assigned");
        ack.fail_registry_unavailable();
        // The outputs it then could not write do not hide the cause.
        ack.fail();
        drop(ack);
        let error = failure(&tracker).expect("a failure");
        let message = error.to_string();
        assert!(
            matches!(&error, RuntimeError::RegistryUnavailable { partitions, .. } if partitions == std::slice::from_ref(&registry)),
            "{error:?}"
        );
        assert!(
            message.contains("schema registry") && !message.contains("outputs failed"),
            "{message}"
        );
    }
}
