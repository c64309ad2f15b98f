//! An in-process test driver, like Kafka Streams' `TopologyTestDriver`.
//!
//! [`TopologyTestDriver`] runs the real [`Runtime`] over a temporary [`EmbeddedLog`]: pipe
//! records into input topics (encoded with the source's serdes), wait until everything piped so
//! far is processed and committed ([`TopologyTestDriver::settle`]), then read output and
//! dead-letter topics. No broker is involved.
//!
//! **State.** The runtime keeps its task stores in a temporary state directory the driver owns
//! (removed when the driver is dropped), and with [`RuntimeConfig::changelogs`] on (the
//! default) writes their changelogs to the embedded log, exactly as it would to Kafka: the
//! tests exercise the same checkpoints, changelog partitions and restores as production.
//! Read a store's contents with [`store_entries`](TopologyTestDriver::store_entries) or
//! [`store_get`](TopologyTestDriver::store_get), through the runtime's [`StoreReader`].
//!
//! **Rebalances.** [`rebalance`](TopologyTestDriver::rebalance) stops the runtime cleanly (its
//! tasks drain, commit, flush, checkpoint and close) and starts a new one over the same log and
//! group, either as the same instance (same state directory: tasks restore at most the tail of
//! their changelogs past their checkpoints) or as a new one (an empty state directory: tasks
//! restore everything from their changelog partitions), and reports how many changelog
//! records the new runtime restored.
//!
//! Each runtime the driver starts has its own [`Metrics`] (as each instance of a service
//! would): after a rebalance, [`metrics`](TopologyTestDriver::metrics) are the new runtime's.

use std::borrow::Borrow;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::graph::{NodeKind, Topology};
use crate::runtime::{
    OffsetTracker, RunSummary, Runtime, RuntimeConfig, RuntimeError, StoreReader,
};
use crate::serdes::SerdeError;
use crate::task::TaskId;
use crate::transport::{EmbeddedLog, EmbeddedTransport, LogError};
use crate::{Headers, Metrics, RawRecord, Record, Value};

/// Errors of the test driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No source reads this topic.
    #[error("no source reads topic {0}")]
    NotAnInput(String),
    /// No sink writes this topic.
    #[error("no sink writes topic {0}")]
    NotAnOutput(String),
    /// The topology declares no store of this name.
    #[error("the topology declares no store {0}")]
    NotAStore(String),
    /// Encoding or decoding failed.
    #[error("serde on topic {topic}: {source}")]
    Serde {
        /// Topic.
        topic: String,
        /// Cause.
        #[source]
        source: SerdeError,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A store could not be read.
    #[error("reading a store: {0}")]
    State(#[from] state::StateError),
    /// The temporary state directory could not be created.
    #[error("creating the state directory: {0}")]
    StateDir(#[source] std::io::Error),
    /// The runtime's metrics could not be created.
    #[error("creating metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The runtime stopped (with this error, or without one when it was stopped on purpose):
    /// [`close`](TopologyTestDriver::close) returns its error as the runtime returned it.
    #[error("the runtime stopped: {0}")]
    Stopped(String),
    /// Work did not settle in time.
    #[error("not settled after {0:?}")]
    Timeout(Duration),
}

/// How [`TopologyTestDriver::rebalance`] moves the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceKind {
    /// The tasks come back to the same instance: its state directory is kept, so each task
    /// reads only what its changelog holds past its checkpoint (nothing after a clean stop).
    SameInstance,
    /// The tasks move to a new instance with an empty state directory: each restores its
    /// stores from the whole of its changelog partitions.
    NewInstance,
}

/// Runs a topology in-process.
///
/// # Example
/// ```
/// # tokio_test_block(async {
/// use std::sync::Arc;
/// use topology::{TopologyBuilder, TopologyTestDriver, Value, serdes::StringSerde};
/// let b = TopologyBuilder::new();
/// b.source("in", "input", Arc::new(StringSerde), Arc::new(StringSerde))
///     .map("upper", |mut r| { r.value = r.value.and_then(|v| v.as_str().map(|s| Value::from(s.to_uppercase()))); r })
///     .to("out", "output", Arc::new(StringSerde), Arc::new(StringSerde));
/// let driver = TopologyTestDriver::new(b.build().unwrap()).unwrap();
/// driver.pipe("input", Some("k".into()), Some("hello".into())).await.unwrap();
/// driver.settle().await.unwrap();
/// let out = driver.read_output("output").await.unwrap();
/// assert_eq!(out[0].value.as_ref().and_then(|v| v.as_str()), Some("HELLO"));
/// driver.close().await.unwrap();
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f) }
/// ```
///
/// With a store, read after [`settle`](Self::settle), and across a rebalance:
/// ```
/// # tokio_test_block(async {
/// use std::sync::Arc;
/// use topology::{AsyncOptions, ProcessError, RebalanceKind, StoreSpec, TopologyBuilder,
///     TopologyTestDriver, processor_with_context, serdes::StringSerde};
/// let count = processor_with_context(|r, ctx| async move {
///     let counts = ctx.store::<String, u64>("counts").map_err(|e| ProcessError::transient(e.to_string()))?;
///     let key = r.key.as_ref().and_then(|k| k.as_str()).unwrap_or_default().to_owned();
///     counts.update(&key, |n| Some(n.copied().unwrap_or(0) + 1)).map_err(|e| ProcessError::transient(e.to_string()))?;
///     Ok(vec![])
/// });
/// let b = TopologyBuilder::new();
/// b.store(StoreSpec::new("counts"));
/// b.source("in", "words", Arc::new(StringSerde), Arc::new(StringSerde))
///     .process_async("count", count, AsyncOptions::default())
///     .with_stores(&["counts"]);
/// let mut driver = TopologyTestDriver::new(b.build().unwrap()).unwrap();
/// driver.pipe("words", Some("a".into()), None).await.unwrap();
/// driver.settle().await.unwrap();
/// assert_eq!(driver.store_get::<String, u64, _>("counts", "a").unwrap(), Some(1));
/// let restored = driver.rebalance(RebalanceKind::NewInstance).await.unwrap();
/// assert_eq!(restored, 1);
/// assert_eq!(driver.store_get::<String, u64, _>("counts", "a").unwrap(), Some(1));
/// driver.close().await.unwrap();
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f) }
/// ```
pub struct TopologyTestDriver {
    log: Arc<EmbeddedLog>,
    topology: Arc<Topology>,
    /// The configuration every runtime starts with (its `state_dir` is the driver's).
    config: RuntimeConfig,
    group: String,
    /// The running instance's state directory (the runtime's `state_dir`).
    state_dir: tempfile::TempDir,
    instance: Instance,
}

/// One runtime the driver started.
struct Instance {
    tracker: Arc<OffsetTracker>,
    stores: StoreReader,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// Behind a lock because `settle` (`&self`) notices when the runtime stopped.
    run: Mutex<RunState>,
}

enum RunState {
    Running(JoinHandle<Result<RunSummary, RuntimeError>>),
    Stopped(Result<RunSummary, RuntimeError>),
    /// Its result was handed out (only while `rebalance` or `close` waits for it).
    Taken,
}

/// The runtime task's outcome; a panic in it becomes an error.
fn joined(
    result: Result<Result<RunSummary, RuntimeError>, tokio::task::JoinError>,
) -> Result<RunSummary, RuntimeError> {
    result.unwrap_or_else(|e| {
        Err(RuntimeError::OutputFailed(vec![
            crate::transport::TopicPartition::new(&format!("runtime task: {e}"), -1),
        ]))
    })
}

impl Instance {
    /// Starts a runtime of `topology` over `log`.
    fn start(
        topology: &Topology,
        log: &Arc<EmbeddedLog>,
        config: RuntimeConfig,
    ) -> Result<Self, DriverError> {
        let metrics = Metrics::unregistered()?;
        let runtime = Runtime::new(
            topology.clone(),
            Arc::new(EmbeddedTransport::new(log.clone())),
            config,
        )
        .with_metrics(metrics.clone());
        let tracker = runtime.tracker();
        let stores = runtime.stores();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(runtime.run(shutdown.clone()));
        Ok(Instance {
            tracker,
            stores,
            metrics,
            shutdown,
            run: Mutex::new(RunState::Running(handle)),
        })
    }

    /// Fails with [`DriverError::Stopped`] once the runtime has stopped.
    fn check_running(&self) -> Result<(), DriverError> {
        let mut run = self.run.lock().unwrap_or_else(PoisonError::into_inner);
        if let RunState::Running(handle) = &mut *run {
            if !handle.is_finished() {
                return Ok(());
            }
            // Finished: its output is ready (if the poll still says pending, look again later).
            match handle.now_or_never() {
                Some(result) => *run = RunState::Stopped(joined(result)),
                None => return Ok(()),
            }
        }
        Err(DriverError::Stopped(match &*run {
            RunState::Stopped(Err(e)) => e.to_string(),
            _ => "stopped without an error".to_owned(),
        }))
    }

    /// Stops the runtime (drain, commit, close the tasks) and returns its result.
    async fn stop(&self) -> Result<RunSummary, RuntimeError> {
        self.shutdown.cancel();
        let state = std::mem::replace(
            &mut *self.run.lock().unwrap_or_else(PoisonError::into_inner),
            RunState::Taken,
        );
        match state {
            RunState::Running(handle) => joined(handle.await),
            RunState::Stopped(result) => result,
            RunState::Taken => Ok(RunSummary::default()),
        }
    }
}

impl TopologyTestDriver {
    /// Starts a driver with one partition per input topic. Must be called inside a Tokio
    /// runtime.
    pub fn new(topology: Topology) -> Result<Self, DriverError> {
        Self::with_partitions(topology, 1)
    }

    /// Starts a driver with `partitions` partitions per input topic.
    pub fn with_partitions(topology: Topology, partitions: u32) -> Result<Self, DriverError> {
        let mut config = RuntimeConfig::new("test-driver");
        config.commit_interval = Duration::from_millis(5);
        config.drain_timeout = Duration::from_secs(5);
        Self::with_config(topology, partitions, config)
    }

    /// Starts a driver with a runtime configuration of your own. Its `state_dir` is replaced
    /// by the driver's temporary directory ([`state_dir`](Self::state_dir)).
    pub fn with_config(
        topology: Topology,
        partitions: u32,
        config: RuntimeConfig,
    ) -> Result<Self, DriverError> {
        Self::with_log(
            topology,
            Arc::new(EmbeddedLog::temporary()?),
            partitions,
            config,
        )
    }

    /// Starts a driver over a log of your own: topics already in it keep their partition
    /// counts (so a test can lay out topics that are not co-partitioned, or prefill one);
    /// source topics it lacks are created with `partitions` partitions. The runtime's
    /// `state_dir` is the driver's temporary directory.
    pub fn with_log(
        topology: Topology,
        log: Arc<EmbeddedLog>,
        partitions: u32,
        config: RuntimeConfig,
    ) -> Result<Self, DriverError> {
        let topology = topology.for_application(&config.application_id);
        for t in topology.source_topics() {
            if log.partitions(&t)?.is_none() {
                log.create_topic(&t, partitions)?;
            }
        }
        let state_dir = tempfile::tempdir().map_err(DriverError::StateDir)?;
        let config = RuntimeConfig {
            state_dir: Some(state_dir.path().to_owned()),
            wall_clock: crate::runtime::WallClock::manual(
                crate::runtime::WallClock::system().now_ms(),
            ),
            ..config
        };
        let instance = Instance::start(&topology, &log, config.clone())?;
        Ok(TopologyTestDriver {
            log,
            group: config.application_id.clone(),
            topology: Arc::new(topology),
            config,
            state_dir,
            instance,
        })
    }

    /// The metrics of the running runtime (after a [`rebalance`](Self::rebalance), the new
    /// one's: each runtime has its own).
    pub fn metrics(&self) -> &Metrics {
        &self.instance.metrics
    }

    /// The underlying log.
    pub fn log(&self) -> &Arc<EmbeddedLog> {
        &self.log
    }

    /// The running runtime's state directory (tasks live in `<application_id>/<task>/`).
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// Read access to the running runtime's task stores (a new handle is needed after a
    /// [`rebalance`](Self::rebalance)).
    pub fn stores(&self) -> StoreReader {
        self.instance.stores.clone()
    }

    /// Encodes a record with the serdes of the source reading `topic` and appends it, with
    /// the current time as its timestamp.
    pub async fn pipe(
        &self,
        topic: &str,
        key: Option<Value>,
        value: Option<Value>,
    ) -> Result<(), DriverError> {
        // As a Kafka producer does, a record without a timestamp of its own gets the time
        // it is sent at.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        self.pipe_record(topic, key, value, Some(now)).await
    }

    /// Like [`pipe`](Self::pipe), with the record's timestamp (milliseconds since the epoch):
    /// windows and joins place records by it, and stream time advances with it, so piping a
    /// later record is how a test advances stream time.
    pub async fn pipe_at(
        &self,
        topic: &str,
        key: Option<Value>,
        value: Option<Value>,
        timestamp: i64,
    ) -> Result<(), DriverError> {
        self.pipe_record(topic, key, value, Some(timestamp)).await
    }

    async fn pipe_record(
        &self,
        topic: &str,
        key: Option<Value>,
        value: Option<Value>,
        timestamp: Option<i64>,
    ) -> Result<(), DriverError> {
        let src = self
            .topology
            .source_for_topic(topic)
            .ok_or_else(|| DriverError::NotAnInput(topic.to_owned()))?;
        let NodeKind::Source {
            key_serde,
            value_serde,
            ..
        } = &self.topology.nodes()[src].kind
        else {
            return Err(DriverError::NotAnInput(topic.to_owned()));
        };
        let serde_err = |source| DriverError::Serde {
            topic: topic.to_owned(),
            source,
        };
        let key = match key {
            Some(k) => Some(
                key_serde
                    .serialize(topic, true, &k)
                    .await
                    .map_err(serde_err)?,
            ),
            None => None,
        };
        let value = match value {
            Some(v) => Some(
                value_serde
                    .serialize(topic, false, &v)
                    .await
                    .map_err(serde_err)?,
            ),
            None => None,
        };
        self.log.append(&RawRecord {
            topic: topic.into(),
            partition: -1,
            offset: -1,
            key: key.map(Into::into),
            value: value.map(Into::into),
            headers: Headers::default(),
            timestamp,
        })?;
        Ok(())
    }

    /// Appends raw bytes (e.g. a poison pill) to `topic`.
    pub fn pipe_raw(
        &self,
        topic: &str,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Headers,
    ) -> Result<(), DriverError> {
        self.log.append(&RawRecord {
            topic: topic.into(),
            partition: -1,
            offset: -1,
            key: key.map(Into::into),
            value: value.map(Into::into),
            headers,
            timestamp: None,
        })?;
        Ok(())
    }

    /// Moves the runtime's wall clock forward by `by` (the driver's runtimes run on a manual
    /// clock, starting at the real time the driver started) and waits until the
    /// wall-clock punctuations that came due ran and their outputs settled.
    pub async fn advance_wall_clock(&self, by: Duration) -> Result<(), DriverError> {
        self.config.wall_clock.advance(by);
        // The loop looks for due punctuations every 100 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
        self.settle().await
    }

    /// Waits (up to 10 s) until every input record piped so far is processed and committed
    /// and every task with stores is running (restored). Fails with
    /// [`DriverError::Stopped`] if the runtime stopped (e.g. it could not start): `close`
    /// returns why.
    pub async fn settle(&self) -> Result<(), DriverError> {
        self.settle_within(Duration::from_secs(10)).await
    }

    /// Like [`settle`](Self::settle) with a timeout of your choice.
    pub async fn settle_within(&self, timeout: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.instance.check_running()?;
            if self.is_settled()? && self.tasks_running()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn is_settled(&self) -> Result<bool, DriverError> {
        for t in self.topology.source_topics() {
            for p in 0..self.log.partitions(&t)?.unwrap_or(0) as i32 {
                let end = self.log.end_offset(&t, p)?;
                if end > 0 && self.log.committed(&self.group, &t, p)? != Some(end) {
                    return Ok(false);
                }
            }
        }
        Ok(self.instance.tracker.total_in_flight() == 0)
    }

    /// The tasks with stores the runtime must run: one per partition of each stateful
    /// sub-topology's sources (all assigned to the one embedded consumer).
    fn expected_tasks(&self) -> Result<Vec<TaskId>, DriverError> {
        let mut tasks = Vec::new();
        for sub in self.topology.subtopologies() {
            if !sub.is_stateful() {
                continue;
            }
            let mut partitions = 0;
            for t in &sub.source_topics {
                partitions = partitions.max(self.log.partitions(t)?.unwrap_or(0));
            }
            tasks.extend((0..partitions as i32).map(|partition| TaskId {
                subtopology: sub.id,
                partition,
            }));
        }
        Ok(tasks)
    }

    /// Whether every task with stores is restored and running.
    fn tasks_running(&self) -> Result<bool, DriverError> {
        let running = self.instance.stores.tasks();
        Ok(self
            .expected_tasks()?
            .iter()
            .all(|t| running.binary_search(t).is_ok()))
    }

    /// Simulates a rebalance: stops the runtime cleanly (in-flight work drains, offsets are
    /// committed, every task flushes, checkpoints and closes its stores), then starts a new
    /// runtime over the same log and group, and waits (up to 10 s) until all its tasks are
    /// restored and running. Returns how many changelog records the new runtime restored
    /// (also [`restored_records`](Self::restored_records)).
    ///
    /// Stores read through a [`StoreReader`] or [`ReadOnlyStore`](crate::ReadOnlyStore) of the
    /// old runtime must be dropped first: they keep its databases open, and with
    /// [`RebalanceKind::SameInstance`] the new runtime waits for them to close.
    pub async fn rebalance(&mut self, kind: RebalanceKind) -> Result<u64, DriverError> {
        let stopped = self.instance.stop().await;
        if let Err(e) = &stopped {
            let message = e.to_string();
            // Kept for `close`, which returns it as the runtime did.
            *self
                .instance
                .run
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = RunState::Stopped(stopped);
            return Err(DriverError::Stopped(message));
        }
        if kind == RebalanceKind::NewInstance {
            // The old directory is removed when its `TempDir` drops here: the old runtime,
            // its only user, has stopped.
            self.state_dir = tempfile::tempdir().map_err(DriverError::StateDir)?;
            self.config.state_dir = Some(self.state_dir.path().to_owned());
        }
        self.instance = Instance::start(&self.topology, &self.log, self.config.clone())?;
        let timeout = Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        while !self.tasks_running()? {
            self.instance.check_running()?;
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(self.restored_records())
    }

    /// Changelog records the running runtime read while restoring its tasks' stores (after a
    /// [`rebalance`](Self::rebalance): what that rebalance restored). Complete once its tasks
    /// run ([`settle`](Self::settle) or `rebalance` returned).
    pub fn restored_records(&self) -> u64 {
        let mut total = 0;
        for sub in self.topology.subtopologies() {
            for task in self.instance.stores.tasks() {
                if task.subtopology != sub.id {
                    continue;
                }
                let task = task.to_string();
                for store in &sub.stores {
                    total += self
                        .instance
                        .metrics
                        .restore_records
                        .with_label_values(&[store.name.as_str(), task.as_str()])
                        .get();
                }
            }
        }
        total
    }

    /// Every entry of store `store` in every running task, by task then in the store's order
    /// (encoded keys). Read after [`settle`](Self::settle): before, records may still be in
    /// flight.
    pub fn store_entries<K, V>(&self, store: &str) -> Result<Vec<(TaskId, K, V)>, DriverError>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        self.check_store(store)?;
        let mut out = Vec::new();
        for task in self.instance.stores.tasks() {
            if let Some(s) = self.instance.stores.store::<K, V>(task, store)? {
                for entry in s.iter() {
                    let (k, v) = entry?;
                    out.push((task, k, v));
                }
            }
        }
        Ok(out)
    }

    /// The value at `key` in store `store`, from whichever running task holds it (the task of
    /// the key's partition). Read after [`settle`](Self::settle).
    pub fn store_get<K, V, Q>(&self, store: &str, key: &Q) -> Result<Option<V>, DriverError>
    where
        K: Serialize + DeserializeOwned + Borrow<Q>,
        V: Serialize + DeserializeOwned,
        Q: Serialize + ?Sized,
    {
        self.check_store(store)?;
        for task in self.instance.stores.tasks() {
            if let Some(s) = self.instance.stores.store::<K, V>(task, store)?
                && let Some(v) = s.get(key)?
            {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn check_store(&self, store: &str) -> Result<(), DriverError> {
        if self.topology.stores().iter().any(|s| s.name == store) {
            Ok(())
        } else {
            Err(DriverError::NotAStore(store.to_owned()))
        }
    }

    /// The committed offset of the driver's group for an input partition.
    pub fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>, DriverError> {
        Ok(self.log.committed(&self.group, topic, partition)?)
    }

    /// Every record written to `topic`, as stored.
    pub fn read_raw(&self, topic: &str) -> Result<Vec<RawRecord>, DriverError> {
        if self.log.partitions(topic)?.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.log.read_all(topic)?)
    }

    /// Every record written to `topic`, decoded with the serdes of the sink writing it.
    pub async fn read_output(&self, topic: &str) -> Result<Vec<Record>, DriverError> {
        let (key_serde, value_serde) = self
            .topology
            .nodes()
            .iter()
            .find_map(|n| match &n.kind {
                NodeKind::Sink {
                    topic: t,
                    key_serde,
                    value_serde,
                } if t == topic => Some((key_serde.clone(), value_serde.clone())),
                _ => None,
            })
            .ok_or_else(|| DriverError::NotAnOutput(topic.to_owned()))?;
        let serde_err = |source| DriverError::Serde {
            topic: topic.to_owned(),
            source,
        };
        let mut out = Vec::new();
        for raw in self.read_raw(topic)? {
            let key = match &raw.key {
                Some(k) => Some(
                    key_serde
                        .deserialize(topic, true, k)
                        .await
                        .map_err(serde_err)?,
                ),
                None => None,
            };
            let value = match &raw.value {
                Some(v) => Some(
                    value_serde
                        .deserialize(topic, false, v)
                        .await
                        .map_err(serde_err)?,
                ),
                None => None,
            };
            out.push(Record {
                key,
                value,
                headers: raw.headers,
                timestamp: raw.timestamp,
                topic: raw.topic,
                partition: raw.partition,
                offset: raw.offset,
            });
        }
        Ok(out)
    }

    /// Stops the runtime (drain, commit, close the tasks) and returns its summary, or the
    /// error it stopped with.
    pub async fn close(self) -> Result<RunSummary, RuntimeError> {
        self.instance.stop().await
    }
}

impl Drop for TopologyTestDriver {
    fn drop(&mut self) {
        self.instance.shutdown.cancel();
    }
}
