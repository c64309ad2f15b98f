//! The tasks of one runtime and their stores: opened and restored when their partitions are
//! assigned, checkpointed at commits, flushed, checkpointed and closed when revoked. See the
//! [`task`](crate::task) module for the model.
//!
//! Everything here runs on the runtime's loop, between polls: assignment changes arrive as
//! [`AssignmentChange`]s taken from the offset tracker (the rebalance callbacks only record
//! them), restores run on blocking threads, and records of a task still restoring are held
//! (its partitions paused) and processed once it runs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use state::{ChangelogSink, SinkError, StateConfig, StateDir, StateError};

use super::RuntimeError;
use super::offsets::{Ack, AssignmentChange, OffsetTracker};
use crate::changelog::{STORE_HEADER, changelog_topic};
use crate::graph::Topology;
use crate::store::StoreSpec;
use crate::task::{Checkpoint, ReadOnlyStore, TaskId, TaskStores, task_dir};
use crate::transport::{
    OnDelivery, Queued, RecordSink, SourceConsumer, StateLog, TopicPartition, TransportError,
};
use crate::{Headers, Metrics, RawRecord};

tokio::task_local! {
    /// The source record whose processing is running: store writes made in its future tie
    /// their changelog records to its offset.
    pub(crate) static CURRENT_RECORD: Ack;
    /// More records a store write's changelog record must hold until it is acknowledged: a
    /// write-back flush writes for every partition whose records it holds back.
    pub(crate) static ALSO_HOLD: Arc<[Ack]>;
}

/// Writes the entries a task's stateful operators kept back ([`crate::task::WriteBack`]) to
/// their stores, and so to their changelogs, tied to the records held back with them: each
/// partition's earliest record whose write was kept back, which held its offset until now.
/// Held records of a revoked (cancelled) partition mean the task is gone: nothing is written.
/// A store that fails marks the held records failed, so nothing past them is committed.
pub(crate) fn flush_write_back(stores: &crate::task::TaskStores) -> Result<(), StateError> {
    stores.flush_write_back_with(|dirty, holds| {
        if dirty.is_empty() || holds.iter().any(|ack| ack.cancel.is_cancelled()) {
            return Ok(());
        }
        let mut write = || -> Result<(), StateError> {
            for store in dirty.values_mut() {
                store.flush()?;
            }
            Ok(())
        };
        let result = match holds.first() {
            Some(first) => {
                let also: Arc<[Ack]> = holds[1..].to_vec().into();
                CURRENT_RECORD.sync_scope(first.clone(), || ALSO_HOLD.sync_scope(also, write))
            }
            None => write(),
        };
        if result.is_err() {
            for ack in holds {
                ack.fail();
            }
        }
        result
    })
}

/// The running tasks' stores, shared with the engine (which hands them to processors).
#[derive(Default)]
pub(crate) struct TaskRegistry {
    running: RwLock<HashMap<TaskId, Arc<TaskStores>>>,
}

impl TaskRegistry {
    pub(crate) fn get(&self, task: TaskId) -> Option<Arc<TaskStores>> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&task)
            .cloned()
    }

    fn insert(&self, stores: Arc<TaskStores>) {
        self.running
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(stores.id, stores);
    }

    fn remove(&self, task: TaskId) {
        self.running
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&task);
    }

    pub(crate) fn running_tasks(&self) -> Vec<TaskId> {
        self.tasks()
    }

    fn tasks(&self) -> Vec<TaskId> {
        let mut tasks: Vec<TaskId> = self
            .running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        tasks.sort();
        tasks
    }
}

/// Read access to the stores of a runtime's running tasks, from outside its processors: for
/// tests ([`TopologyTestDriver`](crate::TopologyTestDriver) reads stores through it) and, later,
/// interactive queries.
///
/// Take it from [`Runtime::stores`](super::Runtime::stores) before
/// [`run`](super::Runtime::run); it is cheap to clone and follows the runtime's tasks as they
/// are assigned and revoked. Only *running* tasks are listed: a task still restoring its stores
/// is not readable yet, and a revoked or closed one no longer is. Reads are not a snapshot:
/// they may or may not see the writes of records being processed meanwhile.
///
/// # Example
/// ```
/// # fn f(topology: topology::Topology, transport: std::sync::Arc<dyn topology::transport::Transport>) {
/// use topology::{Runtime, RuntimeConfig};
/// let runtime = Runtime::new(topology, transport, RuntimeConfig::new("counter"));
/// let stores = runtime.stores();
/// // … runtime.run(shutdown) on a task; then, while it runs:
/// for task in stores.tasks() {
///     if let Ok(Some(counts)) = stores.store::<String, u64>(task, "counts") {
///         println!("{task}: {:?}", counts.get("k"));
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct StoreReader {
    registry: Arc<TaskRegistry>,
    /// The runtime's topology and transport, for [`owner_of`](Self::owner_of).
    context: Option<Arc<crate::stateful::QueryContext>>,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader")
            .field("tasks", &self.tasks())
            .finish()
    }
}

impl StoreReader {
    pub(crate) fn new(registry: Arc<TaskRegistry>) -> Self {
        StoreReader {
            registry,
            context: None,
        }
    }

    pub(crate) fn with_context(mut self, context: crate::stateful::QueryContext) -> Self {
        self.context = Some(Arc::new(context));
        self
    }

    pub(crate) fn context(&self) -> Option<&crate::stateful::QueryContext> {
        self.context.as_deref()
    }

    /// The tasks with stores running in this runtime now, sorted.
    pub fn tasks(&self) -> Vec<TaskId> {
        self.registry.tasks()
    }

    /// The names of `task`'s stores (empty when it is not running here).
    pub fn store_names(&self, task: TaskId) -> Vec<String> {
        self.registry
            .get(task)
            .map(|t| t.specs.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The write of `key` (encoded) in `task`'s store `store` kept back until the next commit,
    /// if any (`Some(None)`: a deletion).
    pub(crate) fn kept_back<K, V>(
        &self,
        task: TaskId,
        store: &str,
        key: &[u8],
    ) -> Result<Option<Option<V>>, crate::task::StoreAccessError>
    where
        K: 'static,
        V: Clone + 'static,
    {
        match self.registry.get(task) {
            Some(stores) => stores.kept_back::<K, V>(store, key),
            None => Ok(None),
        }
    }

    /// `task`'s store `name`, read-only, with keys `K` and values `V` (as its processors
    /// type it). `None` when the task is not running here or has no such store.
    ///
    /// The handle keeps the task's database open: drop it soon (see [`ReadOnlyStore`]).
    pub fn store<K, V>(
        &self,
        task: TaskId,
        name: &str,
    ) -> Result<Option<ReadOnlyStore<K, V>>, StateError>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let Some(stores) = self.registry.get(task) else {
            return Ok(None);
        };
        stores
            .store(name)
            .transpose()
            .map(|s| s.map(ReadOnlyStore::new))
    }
}

/// The changelog of one task: every committed write of its changelogged stores, produced to
/// the task's partition of `<application_id>-<store>-changelog` through the runtime's
/// producer, tied to the record being processed.
struct TaskChangelog {
    partition: i32,
    topics: HashMap<String, Arc<str>>,
    sink: Arc<dyn RecordSink>,
    /// Per store, the highest offset acknowledged so far.
    delivered: Arc<Mutex<HashMap<String, i64>>>,
    /// Writes since the last checkpoint.
    written: AtomicU64,
    /// The first write that failed for good: the task's state is no longer in its changelog.
    failure: Arc<Mutex<Option<String>>>,
}

impl TaskChangelog {
    fn delivered(&self) -> HashMap<String, i64> {
        self.delivered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How long a store write waits for room in the producer's queue before it fails (and the
/// processor's record is retried).
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(30);

impl ChangelogSink for TaskChangelog {
    fn append(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), SinkError> {
        let Some(topic) = self.topics.get(store) else {
            return Ok(());
        };
        let mut headers = Headers::default();
        headers.insert(STORE_HEADER, store.to_owned());
        let raw = RawRecord {
            topic: topic.clone(),
            partition: self.partition,
            offset: -1,
            key: Some(bytes::Bytes::copy_from_slice(key)),
            value: value.map(bytes::Bytes::copy_from_slice),
            headers,
            timestamp: None,
        };
        let record = CURRENT_RECORD.try_with(Ack::clone).ok();
        let also = ALSO_HOLD.try_with(Arc::clone).ok();
        let (delivered, failure, name) = (
            self.delivered.clone(),
            self.failure.clone(),
            store.to_owned(),
        );
        let held = record.clone();
        let mut done: OnDelivery = Box::new(move |outcome| match outcome {
            Ok(d) => {
                let mut g = delivered
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let max = g.entry(name).or_insert(d.offset);
                *max = (*max).max(d.offset);
                drop(held);
                drop(also);
            }
            Err(e) => {
                tracing::error!(error = %e, "changelog write failed for good");
                failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert_with(|| e.to_string());
                // The record's offset must not be committed: its state change is not in
                // the changelog.
                if let Some(ack) = held {
                    ack.fail();
                }
                for ack in also.iter().flat_map(|a| a.iter()) {
                    ack.fail();
                }
            }
        });
        let deadline = Instant::now() + QUEUE_FULL_WAIT;
        loop {
            // Like outputs: the write of work cancelled by a revocation (or an aborted
            // transaction) never reaches the producer.
            let gate = match &record {
                Some(ack) => match ack.live_send_gate() {
                    Some(gate) => Some(gate),
                    None => return Ok(()),
                },
                None => None,
            };
            match self.sink.send_then(&raw, done) {
                Ok(Queued::Notifies) => break,
                Ok(Queued::Await(delivery, then)) => {
                    drop(gate);
                    match tokio::runtime::Handle::try_current() {
                        Ok(handle) => {
                            handle.spawn(async move { then(delivery.await) });
                        }
                        Err(_) => then(futures::executor::block_on(delivery)),
                    }
                    break;
                }
                Err((TransportError::QueueFull, back)) if Instant::now() < deadline => {
                    drop(gate);
                    done = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(format!("changelog {topic}: {e}").into()),
            }
        }
        self.written.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(())
    }
}

/// A task whose stores are open and which processes records.
struct RunningTask {
    stores: Arc<TaskStores>,
    changelog: Option<Arc<TaskChangelog>>,
    /// Its directory (`None`: a temporary database).
    path: Option<PathBuf>,
    /// Per store, the changelog offset the local store held everything below when it was
    /// restored (a store never written since keeps it as its checkpoint).
    restored: BTreeMap<String, i64>,
    /// The source partitions it reads.
    partitions: Vec<TopicPartition>,
}

struct Restoring {
    handle: tokio::task::JoinHandle<Result<RunningTask, RuntimeError>>,
    cancel: Arc<AtomicBool>,
    partitions: Vec<TopicPartition>,
}

/// What a restored task hands back to the loop.
pub(crate) struct Resumed {
    /// Its partitions, to resume.
    pub(crate) partitions: Vec<TopicPartition>,
    /// Records polled while it restored, to process now, in order.
    pub(crate) held: VecDeque<RawRecord>,
}

/// The runtime's settings for task stores.
#[derive(Clone)]
pub(crate) struct TaskSettings {
    pub(crate) application_id: String,
    /// `state_dir/<application_id>`; `None`: temporary databases.
    pub(crate) root: Option<PathBuf>,
    pub(crate) exactly_once: bool,
    pub(crate) changelogs: bool,
    pub(crate) page_cache_bytes: u64,
}

pub(crate) struct TaskManager {
    settings: TaskSettings,
    topology: Arc<Topology>,
    /// Whether any sub-topology has stores: asked for every record, answered once.
    stateful: bool,
    registry: Arc<TaskRegistry>,
    sink: Arc<dyn RecordSink>,
    state_log: Option<Arc<dyn StateLog>>,
    metrics: Arc<Metrics>,
    running: HashMap<TaskId, RunningTask>,
    restoring: HashMap<TaskId, Restoring>,
    held: HashMap<TaskId, VecDeque<RawRecord>>,
    /// Partitions paused until their task runs.
    waiting: HashSet<TopicPartition>,
    rebalance_started: Option<Instant>,
    generation: u64,
    last_stats: Instant,
    /// Set by `close_all`: the final commit is behind every task.
    shutting_down: bool,
    /// Restores cancelled by a revocation and maybe still running: a new restore of the same
    /// task waits for its predecessor, which may still have the task's directory open (and
    /// would otherwise see it wiped under it).
    abandoned: HashMap<TaskId, tokio::task::JoinHandle<Result<RunningTask, RuntimeError>>>,
}

impl TaskManager {
    pub(crate) fn new(
        settings: TaskSettings,
        topology: Arc<Topology>,
        registry: Arc<TaskRegistry>,
        sink: Arc<dyn RecordSink>,
        state_log: Option<Arc<dyn StateLog>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        TaskManager {
            settings,
            stateful: topology.subtopologies().iter().any(|s| s.is_stateful()),
            topology,
            registry,
            sink,
            state_log,
            metrics,
            running: HashMap::new(),
            restoring: HashMap::new(),
            held: HashMap::new(),
            waiting: HashSet::new(),
            rebalance_started: None,
            generation: 0,
            last_stats: Instant::now(),
            shutting_down: false,
            abandoned: HashMap::new(),
        }
    }

    /// Whether the topology has any task stores at all.
    pub(crate) fn is_stateful(&self) -> bool {
        self.stateful
    }

    /// The stateful task that reads `topic`'s `partition`.
    pub(crate) fn task_of(&self, topic: &str, partition: i32) -> Option<TaskId> {
        self.topology
            .subtopology_for_topic(topic)
            .filter(|s| s.is_stateful())
            .map(|s| TaskId {
                subtopology: s.id,
                partition,
            })
    }

    /// Whether records of `task` may be processed now.
    pub(crate) fn is_running(&self, task: TaskId) -> bool {
        self.running.contains_key(&task)
    }

    /// Whether `tp` stays paused until its task is restored (back-pressure must not resume it).
    pub(crate) fn is_waiting(&self, tp: &TopicPartition) -> bool {
        self.waiting.contains(tp)
    }

    /// Keeps a record of a task that is not running yet; pauses its partition.
    pub(crate) fn hold(
        &mut self,
        task: TaskId,
        raw: RawRecord,
        consumer: &mut dyn SourceConsumer,
    ) -> Result<(), RuntimeError> {
        let tp = TopicPartition {
            topic: raw.topic.clone(),
            partition: raw.partition,
        };
        if !self.restoring.contains_key(&task) {
            // Neither restoring nor running: its partition is not (or no longer) ours.
            tracing::debug!(%task, %tp, offset = raw.offset, "record of a task not assigned here dropped");
            return Ok(());
        }
        self.held.entry(task).or_default().push_back(raw);
        if self.waiting.insert(tp.clone()) {
            consumer.pause(std::slice::from_ref(&tp))?;
        }
        Ok(())
    }

    /// Applies the assignment changes the rebalance callbacks recorded in `tracker` since the
    /// last call, if any: revoked tasks are flushed, checkpointed and closed; assigned ones
    /// start restoring with their partitions paused. One atomic load when nothing changed.
    pub(crate) async fn follow_assignment(
        &mut self,
        tracker: &OffsetTracker,
        consumer: &mut dyn SourceConsumer,
    ) -> Result<(), RuntimeError> {
        let generation = tracker.generation();
        if generation == self.generation {
            return Ok(());
        }
        self.generation = generation;
        let changes = tracker.take_changes();
        // A finished abandoned restore holds its task's open database until dropped.
        self.abandoned.retain(|_, restore| !restore.is_finished());
        for change in changes {
            match change {
                AssignmentChange::Revoked(tps) => {
                    self.metrics
                        .forget_partitions(&self.settings.application_id, &tps);
                    self.rebalance_started.get_or_insert_with(Instant::now);
                    for task in self.tasks_of(&tps) {
                        self.close(task, true).await;
                    }
                    for tp in &tps {
                        self.waiting.remove(tp);
                    }
                }
                AssignmentChange::Assigned(tps) => {
                    self.rebalance_started.get_or_insert_with(Instant::now);
                    for task in self.tasks_of(&tps) {
                        if self.running.contains_key(&task) || self.restoring.contains_key(&task) {
                            continue;
                        }
                        let partitions: Vec<TopicPartition> = tps
                            .iter()
                            .filter(|tp| self.task_of(&tp.topic, tp.partition) == Some(task))
                            .cloned()
                            .collect();
                        consumer.pause(&partitions)?;
                        self.waiting.extend(partitions.iter().cloned());
                        self.start_restore(task, partitions);
                    }
                }
            }
        }
        self.update_task_gauges();
        self.note_rebalance_done();
        Ok(())
    }

    /// Exactly-once: the open transaction was aborted, so every running task's stores may
    /// hold writes of aborted work. Each is closed without a checkpoint and restored again
    /// from its changelog (committed records only), its partitions paused meanwhile.
    pub(crate) async fn restore_after_abort(
        &mut self,
        consumer: &mut dyn SourceConsumer,
    ) -> Result<(), RuntimeError> {
        let tasks: Vec<TaskId> = self.running.keys().copied().collect();
        for task in tasks {
            let partitions = self
                .running
                .get(&task)
                .map(|t| t.partitions.clone())
                .unwrap_or_default();
            self.close(task, false).await;
            consumer.pause(&partitions)?;
            self.waiting.extend(partitions.iter().cloned());
            self.start_restore(task, partitions);
        }
        for held in self.held.values_mut() {
            // Rewound: they will be polled again.
            held.clear();
        }
        self.update_task_gauges();
        Ok(())
    }

    fn tasks_of(&self, tps: &[TopicPartition]) -> Vec<TaskId> {
        let mut tasks: Vec<TaskId> = tps
            .iter()
            .filter_map(|tp| self.task_of(&tp.topic, tp.partition))
            .collect();
        tasks.sort();
        tasks.dedup();
        tasks
    }

    fn start_restore(&mut self, task: TaskId, partitions: Vec<TopicPartition>) {
        let Some(sub) = self.topology.subtopologies().get(task.subtopology).cloned() else {
            return;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let previous = self.abandoned.remove(&task);
        let plan = RestorePlan {
            previous,
            task,
            settings: self.settings.clone(),
            source_topics: sub.source_topics.clone(),
            stores: sub.stores.clone(),
            state_log: self.state_log.clone(),
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
            cancel: cancel.clone(),
            partitions: partitions.clone(),
        };
        tracing::info!(%task, "task assigned: restoring its stores");
        let handle = tokio::task::spawn_blocking(move || plan.run());
        self.restoring.insert(
            task,
            Restoring {
                handle,
                cancel,
                partitions,
            },
        );
    }

    /// Tasks whose restore finished since the last call, now running: their partitions to
    /// resume and the records held meanwhile. A failed restore stops the runtime.
    pub(crate) async fn take_restored(&mut self) -> Result<Vec<Resumed>, RuntimeError> {
        let finished: Vec<TaskId> = self
            .restoring
            .iter()
            .filter(|(_, r)| r.handle.is_finished())
            .map(|(t, _)| *t)
            .collect();
        let mut out = Vec::new();
        for task in finished {
            let Some(restoring) = self.restoring.remove(&task) else {
                continue;
            };
            let running = match restoring.handle.await {
                Ok(Ok(running)) => running,
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(RuntimeError::Restore {
                        task,
                        message: format!("restore task failed: {e}"),
                    });
                }
            };
            tracing::info!(%task, "task restored: running");
            self.registry.insert(running.stores.clone());
            for tp in &restoring.partitions {
                self.waiting.remove(tp);
            }
            self.running.insert(task, running);
            out.push(Resumed {
                partitions: restoring.partitions,
                held: self.held.remove(&task).unwrap_or_default(),
            });
        }
        if !out.is_empty() {
            self.update_task_gauges();
            self.note_rebalance_done();
        }
        Ok(out)
    }

    fn note_rebalance_done(&mut self) {
        if self.restoring.is_empty()
            && let Some(started) = self.rebalance_started.take()
        {
            self.metrics
                .rebalance_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    fn update_task_gauges(&self) {
        self.metrics
            .tasks
            .with_label_values(&["running"])
            .set(self.running.len() as i64);
        self.metrics
            .tasks
            .with_label_values(&["restoring"])
            .set(self.restoring.len() as i64);
    }

    /// Flushes, checkpoints (when `clean`) and closes one task; a restoring one is abandoned.
    async fn close(&mut self, task: TaskId, clean: bool) {
        if let Some(restoring) = self.restoring.remove(&task) {
            restoring.cancel.store(true, AtomicOrdering::Release);
            // It stops at its next record; a new restore of the task waits for it first.
            self.abandoned.insert(task, restoring.handle);
            self.held.remove(&task);
            tracing::info!(%task, "task revoked while restoring");
            return;
        }
        self.held.remove(&task);
        let Some(running) = self.running.remove(&task) else {
            return;
        };
        self.registry.remove(task);
        let names: Vec<String> = running
            .stores
            .specs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        self.metrics.forget_task(&task.to_string(), &names);
        // Exactly-once: a task closed on a revocation may hold writes of a transaction that is
        // aborted afterwards, so only the shutdown close (after the final commit succeeded)
        // checkpoints.
        let checkpoint = clean && (!self.settings.exactly_once || self.shutting_down);
        let closed = tokio::task::spawn_blocking(move || running.close(checkpoint)).await;
        match closed {
            Ok(Ok(())) => tracing::info!(%task, "task closed"),
            Ok(Err(e)) => {
                tracing::warn!(%task, error = %e, "closing the task failed; it restores from its changelog next time")
            }
            Err(e) => tracing::warn!(%task, error = %e, "closing the task failed"),
        }
    }

    /// Before offsets are committed: a changelog write that failed for good stops the
    /// runtime; every task's stores are flushed (a store without a changelog has no other
    /// copy: its writes must be on disk before the offsets of their records are committed),
    /// and with at-least-once the tasks written since their last checkpoint are checkpointed.
    /// A failed flush stops the runtime without committing.
    pub(crate) async fn checkpoint(&mut self) -> Result<(), RuntimeError> {
        for (task, running) in &self.running {
            if let Some(failure) = running.changelog.as_ref().and_then(|c| c.failure()) {
                return Err(RuntimeError::Restore {
                    task: *task,
                    message: format!("a changelog write failed: {failure}"),
                });
            }
        }
        let stats_due = self.last_stats.elapsed() >= STATS_EVERY;
        if stats_due {
            self.last_stats = Instant::now();
        }
        let mut work = Vec::new();
        for running in self.running.values() {
            let written = running
                .changelog
                .as_ref()
                .map_or(0, |c| c.written.swap(0, AtomicOrdering::AcqRel));
            work.push(running.snapshot(written > 0 && !self.settings.exactly_once));
        }
        if work.is_empty() {
            return Ok(());
        }
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            for snapshot in work {
                snapshot.flush_and_checkpoint()?;
                if stats_due {
                    snapshot.report(&metrics);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| RuntimeError::Restore {
            task: TaskId {
                subtopology: 0,
                partition: -1,
            },
            message: format!("checkpoint task: {e}"),
        })?
    }

    /// At shutdown: closes every task (checkpointing them when the final commit succeeded).
    pub(crate) async fn close_all(&mut self, clean: bool) {
        self.shutting_down = true;
        let tasks: Vec<TaskId> = self
            .running
            .keys()
            .chain(self.restoring.keys())
            .copied()
            .collect();
        for task in tasks {
            self.close(task, clean).await;
        }
        self.update_task_gauges();
    }
}

/// How often store sizes are measured (a scan of every store).
const STATS_EVERY: Duration = Duration::from_secs(15);

/// What a checkpoint needs, taken on the loop and written on a blocking thread.
struct Snapshot {
    stores: Arc<TaskStores>,
    path: Option<PathBuf>,
    /// `None`: flush only, no checkpoint.
    offsets: Option<BTreeMap<String, i64>>,
}

impl RunningTask {
    fn checkpoint_offsets(&self) -> BTreeMap<String, i64> {
        let mut offsets = self.restored.clone();
        if let Some(changelog) = &self.changelog {
            // Taken before the flush: every acknowledged changelog record was written to the
            // store before it was sent, so the flush makes it durable locally too.
            for (store, offset) in changelog.delivered() {
                offsets.insert(store, offset + 1);
            }
        }
        offsets
    }

    fn snapshot(&self, checkpoint: bool) -> Snapshot {
        Snapshot {
            stores: self.stores.clone(),
            path: self.path.clone(),
            offsets: (checkpoint && self.changelog.is_some()).then(|| self.checkpoint_offsets()),
        }
    }

    fn close(self, checkpoint: bool) -> Result<(), String> {
        let offsets = self.checkpoint_offsets();
        self.stores.dir.flush().map_err(|e| format!("flush: {e}"))?;
        if let Some(path) = &self.path {
            if checkpoint && self.changelog.is_some() {
                Checkpoint::new(offsets)
                    .write(path)
                    .map_err(|e| format!("checkpoint: {e}"))?;
            } else if self.changelog.is_some() {
                Checkpoint::remove(path).map_err(|e| format!("checkpoint: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Snapshot {
    fn flush_and_checkpoint(&self) -> Result<(), RuntimeError> {
        self.stores.dir.flush().map_err(|e| RuntimeError::Restore {
            task: self.stores.id,
            message: format!("flushing its stores before a commit: {e}"),
        })?;
        if let (Some(path), Some(offsets)) = (&self.path, &self.offsets)
            && let Err(e) = Checkpoint::new(offsets.clone()).write(path)
        {
            // Only a later restore reads more than it needs: not a reason to stop.
            tracing::warn!(task = %self.stores.id, error = %e, "writing the checkpoint failed");
        }
        Ok(())
    }

    fn report(&self, metrics: &Metrics) {
        let task = self.stores.id.to_string();
        for spec in &self.stores.specs {
            // Opened like the processors open it: were this the store's first opening, the
            // options used here would be the ones it keeps (stats once opened it without
            // its changelog, and the processors' later writes were not changelogged).
            let stats = self
                .stores
                .store::<serde_json::Value, serde_json::Value>(&spec.name)
                .map(|s| s.and_then(|s| s.stats()));
            if let Some(Ok(stats)) = stats {
                metrics
                    .store_keys
                    .with_label_values(&[&spec.name, &task])
                    .set(i64::try_from(stats.keys).unwrap_or(i64::MAX));
                metrics
                    .store_bytes
                    .with_label_values(&[&spec.name, &task])
                    .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Everything one restore needs, moved to a blocking thread.
struct RestorePlan {
    /// The task's previous restore, cancelled by a revocation, to wait for.
    previous: Option<tokio::task::JoinHandle<Result<RunningTask, RuntimeError>>>,
    task: TaskId,
    settings: TaskSettings,
    source_topics: Vec<String>,
    stores: Vec<StoreSpec>,
    state_log: Option<Arc<dyn StateLog>>,
    sink: Arc<dyn RecordSink>,
    metrics: Arc<Metrics>,
    cancel: Arc<AtomicBool>,
    partitions: Vec<TopicPartition>,
}

/// How long opening a task's database waits for an earlier handle of the same directory
/// (work of the task's previous assignment still winding down) to let go of sled's lock.
const OPEN_WAIT: Duration = Duration::from_secs(30);

impl RestorePlan {
    fn error(&self, message: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Restore {
            task: self.task,
            message: message.to_string(),
        }
    }

    fn changelogged(&self) -> Vec<&StoreSpec> {
        if !self.settings.changelogs {
            return Vec::new();
        }
        self.stores.iter().filter(|s| s.changelog).collect()
    }

    fn run(mut self) -> Result<RunningTask, RuntimeError> {
        if let Some(previous) = self.previous.take() {
            // Its result is moot (cancelled); what matters is that it let go of the directory.
            let _ = futures::executor::block_on(previous);
        }
        let task = self.task;
        let changelogged = self.changelogged();
        let log = match (&self.state_log, changelogged.is_empty()) {
            (_, true) => None,
            (Some(log), false) => Some(log.clone()),
            (None, false) => return Err(self.error("the transport keeps no changelogs")),
        };
        let topics: HashMap<String, Arc<str>> = changelogged
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Arc::from(changelog_topic(&self.settings.application_id, &s.name)),
                )
            })
            .collect();
        if let Some(log) = &log {
            let partitions = self.source_partitions(log.as_ref())?;
            for topic in topics.values() {
                log.ensure_compacted(topic, partitions)
                    .map_err(|e| self.error(e))?;
            }
        }
        let path = self.settings.root.as_ref().map(|root| task_dir(root, task));
        let checkpoint = path.as_deref().and_then(Checkpoint::read);
        let mut restored: BTreeMap<String, i64> = BTreeMap::new();
        let mut from: BTreeMap<String, i64> = BTreeMap::new();
        let mut ends: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut wipe = false;
        if let Some(log) = &log {
            for spec in &changelogged {
                let tp = TopicPartition::new(&topics[&spec.name], task.partition);
                let (low, high) = log.bounds(&tp).map_err(|e| self.error(e))?;
                ends.insert(spec.name.clone(), (low, high));
                match checkpoint.as_ref().and_then(|c| c.offsets.get(&spec.name)) {
                    Some(&at) if at >= low && at <= high => {
                        from.insert(spec.name.clone(), at);
                    }
                    Some(&at) => {
                        tracing::warn!(%task, store = %spec.name, checkpoint = at, low, high, "checkpoint outside the changelog; restoring from the beginning");
                        wipe = true;
                    }
                    None => wipe = true,
                }
            }
        }
        if let Some(path) = &path {
            if wipe {
                // No checkpoint (or a wrong one): what the directory holds cannot be trusted
                // to match the changelog, so it is rebuilt from it.
                let sled_dir = path.join("sled");
                if sled_dir.exists() {
                    tracing::info!(%task, "no usable checkpoint: local state wiped, restoring from the changelog");
                    std::fs::remove_dir_all(&sled_dir)
                        .map_err(|e| self.error(format!("wiping {}: {e}", sled_dir.display())))?;
                }
                from.clear();
            }
            std::fs::create_dir_all(path)
                .map_err(|e| self.error(format!("creating {}: {e}", path.display())))?;
        }
        let changelog = (!topics.is_empty()).then(|| {
            Arc::new(TaskChangelog {
                partition: task.partition,
                topics: topics.clone(),
                sink: self.sink.clone(),
                delivered: Arc::new(Mutex::new(HashMap::new())),
                written: AtomicU64::new(0),
                failure: Arc::new(Mutex::new(None)),
            })
        });
        let dir = self.open(path.as_ref(), changelog.clone())?;
        if let Some(log) = &log {
            for spec in &changelogged {
                let started = Instant::now();
                let (low, high) = ends[&spec.name];
                let start = from.get(&spec.name).copied().unwrap_or(low);
                let tp = TopicPartition::new(&topics[&spec.name], task.partition);
                let task_label = task.to_string();
                let remaining = self
                    .metrics
                    .restore_remaining
                    .with_label_values(&[&spec.name, &task_label]);
                let counted = self
                    .metrics
                    .restore_records
                    .with_label_values(&[&spec.name, &task_label]);
                remaining.set(high - start);
                let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                let cancel = self.cancel.clone();
                let read = log
                    .read_range(&tp, start, high, &mut |key, value| {
                        if cancel.load(AtomicOrdering::Acquire) {
                            return Err("revoked while restoring".into());
                        }
                        batch.push((key.to_vec(), value.map(<[u8]>::to_vec)));
                        if batch.len() >= 10_000 {
                            dir.apply_changelog(&spec.name, batch.drain(..))
                                .map_err(|e| e.to_string())?;
                            counted.inc_by(10_000);
                            remaining.sub(10_000);
                        }
                        Ok(())
                    })
                    .map_err(|e| self.error(e))?;
                let rest = batch.len() as u64;
                dir.apply_changelog(&spec.name, batch)
                    .map_err(|e| self.error(e))?;
                counted.inc_by(rest);
                remaining.set(0);
                self.metrics
                    .restore_seconds
                    .with_label_values(&[&spec.name])
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(%task, store = %spec.name, from = start, to = high, records = read, seconds = started.elapsed().as_secs_f64(), "store restored");
                restored.insert(spec.name.clone(), high);
            }
        }
        dir.flush().map_err(|e| self.error(e))?;
        if let Some(path) = &path
            && changelog.is_some()
        {
            if self.settings.exactly_once {
                // The store will hold writes of open transactions: without a checkpoint, a
                // crash restores it from the changelog's committed records.
                Checkpoint::remove(path)
            } else {
                Checkpoint::new(restored.clone()).write(path)
            }
            .map_err(|e| self.error(format!("checkpoint: {e}")))?;
        }
        Ok(RunningTask {
            stores: Arc::new(TaskStores {
                id: task,
                dir,
                specs: self.stores.clone(),
                changelogs: self.settings.changelogs,
                clocks: Default::default(),
                write_back: Default::default(),
            }),
            changelog,
            path,
            restored,
            partitions: self.partitions.clone(),
        })
    }

    /// The partition count of the sub-topology's sources, which must all have the same
    /// (co-partitioned); sources that do not exist yet are not counted.
    fn source_partitions(&self, log: &dyn StateLog) -> Result<i32, RuntimeError> {
        let mut counts = Vec::new();
        for topic in &self.source_topics {
            if let Some(n) = log.partitions(topic).map_err(|e| self.error(e))? {
                counts.push((topic.clone(), n));
            }
        }
        check_copartitioned(self.task.subtopology, &counts)?;
        Ok(counts
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(self.task.partition + 1))
    }

    fn open(
        &self,
        path: Option<&PathBuf>,
        changelog: Option<Arc<TaskChangelog>>,
    ) -> Result<StateDir, RuntimeError> {
        let mut config = match path {
            Some(path) => StateConfig::new(path.join("sled")),
            None => StateConfig::temporary(),
        }
        .page_cache_bytes(self.settings.page_cache_bytes)
        // Flushed before every commit (`checkpoint`): no background flusher thread per task.
        .flush_every_ms(None);
        if let Some(changelog) = changelog {
            config = config.changelog(changelog);
        }
        let deadline = Instant::now() + OPEN_WAIT;
        loop {
            match config.clone().open() {
                Ok(dir) => return Ok(dir),
                Err(e) if Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }
}

/// Fails unless every topic in `counts` has the same number of partitions.
pub(crate) fn check_copartitioned(
    subtopology: usize,
    counts: &[(String, i32)],
) -> Result<(), RuntimeError> {
    let distinct: HashSet<i32> = counts.iter().map(|(_, n)| *n).collect();
    if distinct.len() > 1 {
        return Err(RuntimeError::NotCopartitioned {
            subtopology,
            partitions: counts.to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store-size stats may be the first to open a store (a task that has not processed
    /// a record yet): they must open it as the processors do, or its writes would never reach
    /// the changelog.
    #[test]
    fn stats_opening_a_store_first_keep_its_changelog() {
        let log = Arc::new(state::MemoryChangelog::default());
        let dir = StateConfig::temporary()
            .changelog(log.clone())
            .open()
            .expect("dir");
        let task = TaskId {
            subtopology: 0,
            partition: 0,
        };
        let stores = Arc::new(TaskStores {
            id: task,
            dir,
            specs: vec![StoreSpec::new("counts")],
            changelogs: true,
            clocks: Default::default(),
            write_back: Default::default(),
        });
        let snapshot = Snapshot {
            stores: stores.clone(),
            path: None,
            offsets: None,
        };
        snapshot.report(&Metrics::unregistered().expect("metrics"));
        let registry = Arc::new(TaskRegistry::default());
        registry.insert(stores.clone());
        let ctx = crate::ProcessorContext::new(
            "count".into(),
            Arc::from(["counts".to_owned()]),
            stores.into(),
        );
        ctx.store::<String, u64>("counts")
            .expect("store")
            .put("a", &1)
            .expect("put");
        assert_eq!(log.len(), 1, "the write reached the changelog");

        let reader = StoreReader::new(registry);
        assert_eq!(reader.tasks(), [task]);
        assert_eq!(reader.store_names(task), ["counts"]);
        let counts = reader
            .store::<String, u64>(task, "counts")
            .expect("open")
            .expect("a store of the task");
        assert_eq!(counts.get("a").expect("get"), Some(1));
        assert!(
            reader
                .store::<String, u64>(task, "other")
                .expect("open")
                .is_none()
        );
    }
}
