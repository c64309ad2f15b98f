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
mod steps;
mod tasks;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use offsets::{
    Ack, AckInner, AssignmentChange, OffsetTracker, PartitionOffsets, ProcessingGuard,
};
// Re-exported for code that imports it from the runtime, where it was declared before.
pub use crate::transport::Rewind;

use crate::graph::Topology;
use crate::task::TaskId;
use crate::transport::{ConnectSpec, TopicPartition, Transport, TransportError};
use crate::{Metrics, RawRecord};
use engine::Engine;
pub use tasks::StoreReader;
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
            poll_timeout: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(30),
            exactly_once: false,
            state_dir: None,
            changelogs: true,
            store_page_cache_bytes: 4 * 1024 * 1024,
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
            topology: Arc::new(topology),
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

    /// The shared offset tracker (for inspection in tests).
    pub fn tracker(&self) -> Arc<OffsetTracker> {
        self.tracker.clone()
    }

    /// Read access to the stores of this runtime's running tasks (take it before
    /// [`run`](Self::run), which consumes the runtime).
    pub fn stores(&self) -> StoreReader {
        StoreReader::new(self.registry.clone())
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
        };
        let stateful = self
            .topology
            .subtopologies()
            .iter()
            .any(|s| s.is_stateful());
        let state_log = if stateful {
            let log = self.transport.state_log()?;
            check_layout(&self.topology, log.clone()).await?;
            Some(log)
        } else {
            None
        };
        let conn = self.transport.connect(spec).await?;
        let mut consumer = conn.consumer;
        let registry = self.registry.clone();
        let engine = Engine::new(
            self.topology.clone(),
            conn.sink.clone(),
            metrics.clone(),
            registry.clone(),
        );
        let mut tasks = TaskManager::new(
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
        let cfg = &self.config;
        let tracker = &self.tracker;
        let durable = Durable {
            changelog: self.changelog.clone(),
            state_dir: self.state_dir.clone(),
        };
        let mut paused: HashSet<TopicPartition> = HashSet::new();
        // Exactly-once: while in-flight work drains before a commit, records polled meanwhile
        // are held here (polling goes on: the consumer stays in its group and rebalance
        // callbacks run). Past `hold_limit` the assigned partitions are paused too; those are
        // the set in `draining`. Pausing right away would throw librdkafka's prefetched
        // records away and cost a fetch round trip after every commit.
        let mut draining: Option<(Instant, HashSet<TopicPartition>)> = None;
        let mut held: VecDeque<RawRecord> = VecDeque::new();
        let hold_limit = cfg.max_in_flight_per_partition.max(64);
        let mut resets = tracker.resets();
        let mut drain_warned = false;
        let mut summary = RunSummary::default();
        let mut last_commit = Instant::now();
        let mut lag_update: Option<tokio::task::JoinHandle<()>> = None;
        let result: Result<(), RuntimeError> = async {
            loop {
                tasks.follow_assignment(tracker, &mut *consumer).await?;
                if stateful {
                    for resumed in tasks.take_restored().await? {
                        for raw in resumed.held {
                            ingest(
                                raw,
                                tracker,
                                &engine,
                                &mut *consumer,
                                &mut paused,
                                cfg,
                                &mut tasks,
                            )
                            .await?;
                        }
                        // After the held records: one that paused its partition for
                        // back-pressure keeps it paused.
                        let assigned: HashSet<_> = tracker.assigned().into_iter().collect();
                        let live: Vec<_> = resumed
                            .partitions
                            .into_iter()
                            .filter(|tp| assigned.contains(tp) && !paused.contains(tp))
                            .collect();
                        if !live.is_empty() {
                            consumer.resume(&live)?;
                        }
                    }
                }
                // Resume before blocking in poll: a partition paused for back-pressure is
                // fetched again as soon as its in-flight work drops to the low-water mark.
                if !paused.is_empty() {
                    let assigned: HashSet<_> = tracker.assigned().into_iter().collect();
                    let ready: Vec<_> = paused
                        .iter()
                        .filter(|tp| {
                            if !assigned.contains(*tp) {
                                return true;
                            }
                            let (in_flight, processing) = tracker.in_flight_and_processing(tp);
                            cfg.below_low_water(in_flight, processing)
                                && !draining.as_ref().is_some_and(|(_, d)| d.contains(*tp))
                        })
                        .cloned()
                        .collect();
                    for tp in &ready {
                        paused.remove(tp);
                    }
                    let live: Vec<_> = ready
                        .into_iter()
                        .filter(|t| assigned.contains(t) && !tasks.is_waiting(t))
                        .collect();
                    if !live.is_empty() {
                        tracing::debug!(partitions = ?live, "resuming after back-pressure");
                        consumer.resume(&live)?;
                    }
                }
                let timeout = if paused.is_empty() {
                    cfg.poll_timeout
                } else {
                    cfg.poll_timeout.min(PAUSED_POLL_TIMEOUT)
                };
                let polled = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    r = consumer.poll(timeout) => r?,
                };
                if tracker.resets() != resets {
                    // A rebalance threw uncommitted work away and rewound the kept
                    // partitions: held records will be delivered again.
                    resets = tracker.resets();
                    held.clear();
                    tasks.restore_after_abort(&mut *consumer).await?;
                }
                if polled.is_some() {
                    // The rebalance callbacks ran inside this poll, which may return a record
                    // of a partition it just assigned: its task must be restoring before the
                    // record is ingested, or `hold` would take it for a record of a partition
                    // that is not ours and drop it (and the offsets after it would commit).
                    tasks.follow_assignment(tracker, &mut *consumer).await?;
                }
                if let Some(raw) = polled {
                    summary.consumed += 1;
                    if let Some((_, drain_paused)) = &mut draining {
                        held.push_back(raw);
                        if held.len() >= hold_limit && drain_paused.is_empty() {
                            let tps: Vec<_> = tracker
                                .assigned()
                                .into_iter()
                                .filter(|tp| !paused.contains(tp) && !tasks.is_waiting(tp))
                                .collect();
                            consumer.pause(&tps)?;
                            drain_paused.extend(tps);
                        }
                    } else {
                        ingest(
                            raw,
                            tracker,
                            &engine,
                            &mut *consumer,
                            &mut paused,
                            cfg,
                            &mut tasks,
                        )
                        .await?;
                    }
                }
                if draining.is_none() && last_commit.elapsed() >= cfg.commit_interval {
                    if let Some(error) = failure(tracker) {
                        return Err(error);
                    }
                    if cfg.exactly_once && tracker.total_in_flight() > 0 {
                        // Outputs and offsets commit together: in-flight work finishes first.
                        draining = Some((Instant::now(), HashSet::new()));
                        drain_warned = false;
                    } else {
                        commit(
                            &mut *consumer,
                            tracker,
                            &metrics,
                            &durable,
                            &mut tasks,
                            cfg.exactly_once,
                        )
                        .await?;
                        // From the end of the commit: a commit slower than the interval must
                        // still leave the loop time to poll.
                        last_commit = Instant::now();
                        spawn_lag_update(&mut lag_update, &*consumer, tracker, &metrics, cfg);
                    }
                }
                if let Some((since, tps)) = &draining {
                    if tracker.total_in_flight() == 0 {
                        if let Some(error) = failure(tracker) {
                            return Err(error);
                        }
                        commit(
                            &mut *consumer,
                            tracker,
                            &metrics,
                            &durable,
                            &mut tasks,
                            cfg.exactly_once,
                        )
                        .await?;
                        last_commit = Instant::now();
                        let assigned: HashSet<_> = tracker.assigned().into_iter().collect();
                        let resume: Vec<_> = tps
                            .iter()
                            .filter(|tp| {
                                assigned.contains(*tp)
                                    && !paused.contains(*tp)
                                    && !tasks.is_waiting(tp)
                            })
                            .cloned()
                            .collect();
                        draining = None;
                        if !resume.is_empty() {
                            consumer.resume(&resume)?;
                        }
                        if tracker.resets() != resets {
                            // The commit was aborted and the partitions rewound: the held
                            // records will be delivered again.
                            resets = tracker.resets();
                            held.clear();
                            tasks.restore_after_abort(&mut *consumer).await?;
                        }
                        while let Some(raw) = held.pop_front() {
                            ingest(
                                raw,
                                tracker,
                                &engine,
                                &mut *consumer,
                                &mut paused,
                                cfg,
                                &mut tasks,
                            )
                            .await?;
                        }
                        spawn_lag_update(&mut lag_update, &*consumer, tracker, &metrics, cfg);
                    } else if !drain_warned && since.elapsed() >= cfg.drain_timeout {
                        drain_warned = true;
                        tracing::warn!(
                            in_flight = tracker.total_in_flight(),
                            "exactly-once commit still waiting for in-flight work"
                        );
                    }
                }
            }
            Ok(())
        }
        .await;
        // Shutdown (or error): stop fetching, drain, commit what is safe, leave the group.
        summary.abandoned = wait_drained(tracker, cfg.drain_timeout).await;
        if summary.abandoned > 0 {
            tracing::warn!(
                abandoned = summary.abandoned,
                "drain timed out; abandoning work"
            );
        }
        let committed = if result.is_ok() {
            commit(
                &mut *consumer,
                tracker,
                &metrics,
                &durable,
                &mut tasks,
                cfg.exactly_once,
            )
            .await
        } else {
            Ok(())
        };
        // Checkpointed only when everything they hold is committed (with exactly-once, a
        // failed final commit leaves state of aborted work: restored from the changelog).
        tasks
            .close_all(result.is_ok() && committed.is_ok() && summary.abandoned == 0)
            .await;
        if let Some(running) = lag_update.take() {
            running.abort();
        }
        update_lag(&*consumer, tracker, &metrics, &cfg.application_id).await;
        consumer.close().await;
        result?;
        committed?;
        Ok(summary)
    }
}

/// Starts tracking one polled record, pushes it through the graph and pauses its partition
/// when too much of it is in flight.
async fn ingest(
    raw: RawRecord,
    tracker: &Arc<OffsetTracker>,
    engine: &Arc<Engine>,
    consumer: &mut dyn crate::transport::SourceConsumer,
    paused: &mut HashSet<TopicPartition>,
    cfg: &RuntimeConfig,
    tasks: &mut TaskManager,
) -> Result<(), RuntimeError> {
    let (partition, offset) = (raw.partition, raw.offset);
    if tasks.is_stateful()
        && let Some(task) = tasks.task_of(&raw.topic, partition)
        && !tasks.is_running(task)
    {
        // Its stores are being restored: nothing of it runs before they are.
        return tasks.hold(task, raw, consumer);
    }
    let Some(ack) = tracker.begin(raw) else {
        // A record of a partition the tracker does not hold (revoked between fetch and
        // delivery): the next owner reads it again.
        tracing::debug!(
            partition,
            offset,
            "record of an unassigned partition skipped"
        );
        return Ok(());
    };
    // Read the partition's counts through the record's own ack, after the graph ran: no
    // lookup (or allocation) per record unless the partition must pause.
    let probe = ack.clone();
    engine.ingest(ack).await;
    let (in_flight, processing) = probe.partition_in_flight_and_processing();
    if cfg.over_limit(in_flight, processing) {
        let tp = TopicPartition::new(&probe.origin.topic, partition);
        if paused.insert(tp.clone()) {
            tracing::debug!(%tp, in_flight, processing, "pausing for back-pressure");
            consumer.pause(std::slice::from_ref(&tp))?;
        }
    }
    Ok(())
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
    tokio::task::spawn_blocking(move || {
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
    .map_err(|e| RuntimeError::Restore {
        task: TaskId {
            subtopology: 0,
            partition: -1,
        },
        message: format!("layout check task: {e}"),
    })?
}

fn unreachable_metrics() -> Arc<Metrics> {
    // Metrics::unregistered only fails on invalid metric names, which are fixed literals.
    Arc::new(Metrics::unregistered().unwrap_or_else(|e| panic!("invalid metric definition: {e}")))
}

async fn wait_drained(tracker: &OffsetTracker, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = tracker.total_in_flight();
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What must be durable before input offsets are committed.
struct Durable {
    changelog: Option<Arc<dyn state::ChangelogSink>>,
    state_dir: Option<state::StateDir>,
}

impl Durable {
    async fn flush(&self) -> Result<(), RuntimeError> {
        if self.changelog.is_none() && self.state_dir.is_none() {
            return Ok(());
        }
        let changelog = self.changelog.clone();
        let dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = dir {
                dir.flush().map_err(RuntimeError::State)?;
            }
            if let Some(sink) = changelog {
                sink.flush()
                    .map_err(|source| RuntimeError::ChangelogFlush { source })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| RuntimeError::ChangelogFlush {
            source: format!("flush task: {e}").into(),
        })?
    }
}

async fn commit(
    consumer: &mut dyn crate::transport::SourceConsumer,
    tracker: &OffsetTracker,
    metrics: &Metrics,
    durable: &Durable,
    tasks: &mut TaskManager,
    exactly_once: bool,
) -> Result<(), RuntimeError> {
    let pending = tracker.pending_commits();
    if pending.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    // State and changelog first: an input offset is never committed ahead of them. (Task
    // stores' changelog records hold their source record's offset back by themselves.)
    durable.flush().await?;
    tasks.checkpoint().await?;
    let resets = tracker.resets();
    match consumer.commit(pending.clone()).await {
        Ok(()) => {}
        // Exactly-once: the transport aborted the transaction (a commit that raced a group
        // rebalance) and rewound the partitions to their last commit: nothing was committed
        // and the records are read again; go on.
        Err(error) if exactly_once && tracker.resets() != resets => {
            tracing::warn!(%error, "transaction aborted at commit; uncommitted records are read again");
            return Ok(());
        }
        // At-least-once: a commit refused while the group rebalances (or after this member
        // was fenced out by a missed session) loses nothing; the offsets are offered again at
        // the next interval, or the partitions' next owner resumes from the last commit.
        Err(error) if !exactly_once => {
            tracing::warn!(%error, "offset commit failed; retrying at the next interval");
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    }
    metrics
        .commit_latency
        .observe(started.elapsed().as_secs_f64());
    tracker.committed(&pending);
    Ok(())
}

/// Starts a lag update in the background unless the previous one is still running.
///
/// Off the poll loop because the broker may answer offset queries only after a pending
/// long-poll fetch on the same connection: awaited inline, a slow answer after every commit
/// left the loop one record per commit interval (seen after a broker outage: ~1 record/1.2 s
/// on an otherwise idle consumer).
fn spawn_lag_update(
    running: &mut Option<tokio::task::JoinHandle<()>>,
    consumer: &dyn crate::transport::SourceConsumer,
    tracker: &Arc<OffsetTracker>,
    metrics: &Arc<Metrics>,
    cfg: &RuntimeConfig,
) {
    if running.as_ref().is_some_and(|task| !task.is_finished()) {
        return;
    }
    let assigned = tracker.assigned();
    if assigned.is_empty() {
        return;
    }
    let queries = LagQueries::start(consumer, tracker, assigned);
    let (tracker, metrics, group) = (tracker.clone(), metrics.clone(), cfg.application_id.clone());
    *running = Some(tokio::spawn(async move {
        queries.apply(&tracker, &metrics, &group).await;
    }));
}

/// The offset queries of one lag update, started while the consumer is at hand.
struct LagQueries {
    ends: futures::future::BoxFuture<'static, Result<Vec<(TopicPartition, i64)>, TransportError>>,
    group_committed: Option<
        futures::future::BoxFuture<
            'static,
            Result<crate::transport::CommittedOffsets, TransportError>,
        >,
    >,
}

impl LagQueries {
    fn start(
        consumer: &dyn crate::transport::SourceConsumer,
        tracker: &OffsetTracker,
        assigned: Vec<TopicPartition>,
    ) -> Self {
        // Partitions this runtime has not committed yet: the group's committed offset.
        let unknown: Vec<_> = assigned
            .iter()
            .filter(|tp| tracker.committed_offset(tp).is_none())
            .cloned()
            .collect();
        LagQueries {
            group_committed: (!unknown.is_empty()).then(|| consumer.committed_offsets(unknown)),
            ends: consumer.end_offsets(assigned),
        }
    }

    async fn apply(self, tracker: &OffsetTracker, metrics: &Metrics, group: &str) {
        let mut group_committed = std::collections::HashMap::new();
        if let Some(query) = self.group_committed {
            match query.await {
                Ok(v) => group_committed.extend(v),
                Err(e) => tracing::debug!(error = %e, "committed offsets unavailable"),
            }
        }
        match self.ends.await {
            Ok(ends) => {
                let assigned: std::collections::HashSet<_> =
                    tracker.assigned().into_iter().collect();
                for (tp, end) in ends {
                    // Revoked while the query ran: its lag is the next owner's to report.
                    if !assigned.contains(&tp) {
                        continue;
                    }
                    let committed = tracker
                        .committed_offset(&tp)
                        .or_else(|| group_committed.get(&tp).copied().flatten())
                        .unwrap_or(0);
                    metrics
                        .consumer_lag
                        .with_label_values(&[group, &tp.topic, &tp.partition.to_string()])
                        .set((end - committed).max(0));
                }
            }
            Err(e) => tracing::debug!(error = %e, "end offsets unavailable"),
        }
    }
}

/// Updates the lag gauges and waits for the answer (at shutdown).
async fn update_lag(
    consumer: &dyn crate::transport::SourceConsumer,
    tracker: &OffsetTracker,
    metrics: &Metrics,
    group: &str,
) {
    let assigned = tracker.assigned();
    if assigned.is_empty() {
        return;
    }
    LagQueries::start(consumer, tracker, assigned)
        .apply(tracker, metrics, group)
        .await;
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
