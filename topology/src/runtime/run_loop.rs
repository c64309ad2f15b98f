//! The runtime's poll loop.
//!
//! [`RunLoop`] owns what one run needs (the consumer, the engine, the task manager) and the
//! loop's state (partitions paused for back-pressure, the exactly-once drain before a commit
//! and the records held meanwhile). Each turn of [`RunLoop::run`] applies assignment changes,
//! resumes partitions whose in-flight work dropped, polls, hands the record to the engine,
//! and commits when the interval is up; [`RunLoop::shutdown`] drains, commits and leaves the
//! group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use super::offsets::OffsetTracker;
use super::tasks::TaskManager;
use super::{PAUSED_POLL_TIMEOUT, RunSummary, RuntimeConfig, RuntimeError, failure};
use crate::transport::{CommittedOffsets, SourceConsumer, TopicPartition, TransportError};
use crate::{Metrics, RawRecord};

/// How often the loop looks again while it waits for the producer to acknowledge outputs.
const ACK_WAIT_STEP: Duration = Duration::from_millis(1);

/// How often the loop looks for due wall-clock punctuations: their resolution.
const WALL_CLOCK_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// One run of a runtime: its connections and the loop's state.
pub(super) struct RunLoop {
    cfg: RuntimeConfig,
    tracker: Arc<OffsetTracker>,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    consumer: Box<dyn SourceConsumer>,
    tasks: TaskManager,
    durable: Durable,
    /// Partitions paused for back-pressure.
    paused: HashSet<TopicPartition>,
    /// Exactly-once: the in-flight work being let finish before a commit.
    draining: Option<Drain>,
    /// Exactly-once: records polled while draining, ingested once the commit is made.
    held: VecDeque<RawRecord>,
    /// The records of the last poll (kept to reuse its allocation).
    batch: Vec<RawRecord>,
    /// Records a batch brought for partitions paused for back-pressure meanwhile: ingested
    /// when their partition resumes, before it fetches again (the consumer's position is
    /// already past them), unless the assignment they were polled under ended (the token
    /// beside each is cancelled): then the log gives them again to whoever owns them.
    backlog: VecDeque<(RawRecord, CancellationToken)>,
    /// The tracker's reset count when the loop last looked: a change means the partitions
    /// were rewound (an aborted transaction).
    resets: u64,
    last_commit: Instant,
    /// Whether an operator punctuates on the wall clock, and when the loop last looked.
    wall_clock_punctuation: bool,
    last_punctuation: Instant,
    lag_update: Option<tokio::task::JoinHandle<()>>,
    summary: RunSummary,
}

/// An exactly-once commit waiting for in-flight work to finish.
///
/// Polling goes on meanwhile (the consumer stays in its group and rebalance callbacks run)
/// and polled records are held. Only past [`RunLoop::hold_limit`] held records are the
/// assigned partitions paused: pausing right away would throw librdkafka's prefetched records
/// away and cost a fetch round trip after every commit.
struct Drain {
    since: Instant,
    /// The partitions paused because too many records were held.
    paused: HashSet<TopicPartition>,
    /// Whether the drain's slowness was logged.
    warned: bool,
}

/// What one poll brought.
enum Polled {
    /// Shutdown was requested.
    Shutdown,
    /// Records (none when nothing came within the poll timeout), in `RunLoop::batch`.
    Batch,
}

impl RunLoop {
    /// A loop over an open connection (`consumer`, and the sink `engine` and `tasks` write
    /// to), nothing paused or held yet.
    pub(super) fn new(
        cfg: RuntimeConfig,
        tracker: Arc<OffsetTracker>,
        metrics: Arc<Metrics>,
        engine: Arc<Engine>,
        consumer: Box<dyn SourceConsumer>,
        tasks: TaskManager,
        durable: Durable,
    ) -> Self {
        RunLoop {
            wall_clock_punctuation: engine.punctuates_on_wall_clock(),
            last_punctuation: Instant::now(),
            resets: tracker.resets(),
            cfg,
            tracker,
            metrics,
            engine,
            consumer,
            tasks,
            durable,
            paused: HashSet::new(),
            draining: None,
            held: VecDeque::new(),
            batch: Vec::new(),
            backlog: VecDeque::new(),
            last_commit: Instant::now(),
            lag_update: None,
            summary: RunSummary::default(),
        }
    }

    /// Polls and processes until `shutdown` is cancelled or a fatal error happens.
    pub(super) async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), RuntimeError> {
        loop {
            self.apply_assignment().await?;
            self.resume_below_low_water().await?;
            if let Polled::Shutdown = self.poll(shutdown).await? {
                return Ok(());
            }
            let mut batch = std::mem::take(&mut self.batch);
            let mut ingested = Ok(());
            for raw in batch.drain(..) {
                self.summary.consumed += 1;
                // Ingested from here, not through an async helper that also holds: the
                // engine's future is large and nests in every async layer around it.
                ingested = if self.draining.is_some() {
                    self.hold(raw)
                } else if !self.paused.is_empty()
                    && let tp = partition_of(&raw)
                    && self.paused.contains(&tp)
                {
                    if let Some(token) = self.tracker.assignment_token(&tp) {
                        self.backlog.push_back((raw, token));
                    }
                    Ok(())
                } else {
                    self.ingest(raw).await
                };
                if ingested.is_err() {
                    break;
                }
            }
            self.batch = batch;
            ingested?;
            self.punctuate_when_due().await;
            self.commit_when_due().await?;
            self.finish_drain().await?;
        }
    }

    /// Runs the wall-clock punctuations that are due (checked at most every
    /// [`WALL_CLOCK_TICK`]; the loop comes round at least every poll timeout).
    async fn punctuate_when_due(&mut self) {
        if !self.wall_clock_punctuation || self.last_punctuation.elapsed() < WALL_CLOCK_TICK {
            return;
        }
        self.last_punctuation = Instant::now();
        let now_ms = self.cfg.wall_clock.now_ms();
        self.engine
            .punctuate_wall_clock(&self.tracker, now_ms)
            .await;
    }

    /// Applies the assignment changes the rebalance callbacks recorded, and resumes the tasks
    /// whose stores finished restoring: the records held for them first, then their
    /// partitions.
    async fn apply_assignment(&mut self) -> Result<(), RuntimeError> {
        self.tasks
            .follow_assignment(&self.tracker, &mut *self.consumer)
            .await?;
        if !self.tasks.is_stateful() {
            return Ok(());
        }
        for resumed in self.tasks.take_restored().await? {
            for raw in resumed.held {
                self.ingest(raw).await?;
            }
            // After the held records: one that paused its partition for back-pressure keeps
            // it paused.
            let assigned: HashSet<_> = self.tracker.assigned().into_iter().collect();
            let live: Vec<_> = resumed
                .partitions
                .into_iter()
                .filter(|tp| assigned.contains(tp) && !self.paused.contains(tp))
                .collect();
            if !live.is_empty() {
                self.consumer.resume(&live)?;
            }
        }
        Ok(())
    }

    /// Resumes the partitions paused for back-pressure whose in-flight work dropped to the
    /// low-water mark: first their backlog, then their fetching (unless the backlog paused
    /// them again). Runs before blocking in poll, so they are fetched again at once.
    async fn resume_below_low_water(&mut self) -> Result<(), RuntimeError> {
        if self.paused.is_empty() {
            return Ok(());
        }
        let assigned: HashSet<_> = self.tracker.assigned().into_iter().collect();
        let ready: Vec<_> = self
            .paused
            .iter()
            .filter(|tp| {
                if !assigned.contains(*tp) {
                    return true;
                }
                let (in_flight, processing) = self.tracker.in_flight_and_processing(tp);
                self.cfg.below_low_water(in_flight, processing)
                    && !self
                        .draining
                        .as_ref()
                        .is_some_and(|d| d.paused.contains(*tp))
            })
            .cloned()
            .collect();
        for tp in &ready {
            self.paused.remove(tp);
        }
        if !self.backlog.is_empty() {
            let backlog = std::mem::take(&mut self.backlog);
            for (raw, token) in backlog {
                let tp = partition_of(&raw);
                if token.is_cancelled() || !assigned.contains(&tp) {
                    // Revoked or rewound meanwhile: read again by its (next) owner.
                    continue;
                }
                if self.paused.contains(&tp) || self.draining.is_some() {
                    // Stays paused until its backlog is in: fetching first would reorder it.
                    self.paused.insert(tp);
                    self.backlog.push_back((raw, token));
                } else {
                    self.ingest(raw).await?;
                }
            }
        }
        let live: Vec<_> = ready
            .into_iter()
            .filter(|tp| {
                assigned.contains(tp) && !self.paused.contains(tp) && !self.tasks.is_waiting(tp)
            })
            .collect();
        if !live.is_empty() {
            tracing::debug!(partitions = ?live, "resuming after back-pressure");
            self.consumer.resume(&live)?;
        }
        Ok(())
    }

    /// Polls a batch of records into `self.batch` (none within the timeout, or the
    /// shutdown), then catches up with what the rebalance callbacks did inside the poll. A
    /// batch ends at the first record polled across a rebalance, so what follows is applied
    /// here before any of it is ingested.
    async fn poll(&mut self, shutdown: &CancellationToken) -> Result<Polled, RuntimeError> {
        let timeout = if self.paused.is_empty() {
            self.cfg.poll_timeout
        } else {
            self.cfg.poll_timeout.min(PAUSED_POLL_TIMEOUT)
        };
        let max = self.cfg.max_poll_records.max(1);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(Polled::Shutdown),
            r = self.consumer.poll_batch(timeout, max, &mut self.batch) => r?,
        };
        // A rebalance threw uncommitted work away and rewound the kept partitions: held
        // records will be delivered again.
        self.follow_rewind().await?;
        if self.batch.is_empty() {
            return Ok(Polled::Batch);
        }
        // The records may be of a partition this very poll assigned: its task must be
        // restoring before they are ingested, or `hold` would take them for records of a
        // partition that is not ours and drop them (and the offsets after them would commit).
        self.tasks
            .follow_assignment(&self.tracker, &mut *self.consumer)
            .await?;
        Ok(Polled::Batch)
    }

    /// After the tracker was reset (an aborted transaction rewound the partitions), drops the
    /// held records, which will be polled again, and restores every task's stores.
    async fn follow_rewind(&mut self) -> Result<(), RuntimeError> {
        if self.tracker.resets() == self.resets {
            return Ok(());
        }
        self.resets = self.tracker.resets();
        self.held.clear();
        self.backlog.clear();
        self.tasks.restore_after_abort(&mut *self.consumer).await
    }

    /// Holds a record polled while an exactly-once commit drains, pausing the assigned
    /// partitions once too many are held.
    fn hold(&mut self, raw: RawRecord) -> Result<(), RuntimeError> {
        let hold_limit = self.hold_limit();
        let Some(drain) = &mut self.draining else {
            return Ok(());
        };
        self.held.push_back(raw);
        if self.held.len() >= hold_limit && drain.paused.is_empty() {
            let tps: Vec<_> = self
                .tracker
                .assigned()
                .into_iter()
                .filter(|tp| !self.paused.contains(tp) && !self.tasks.is_waiting(tp))
                .collect();
            self.consumer.pause(&tps)?;
            drain.paused.extend(tps);
        }
        Ok(())
    }

    /// Records held while draining before the assigned partitions are paused.
    fn hold_limit(&self) -> usize {
        self.cfg.max_in_flight_per_partition.max(64)
    }

    /// Starts tracking one record, pushes it through the graph and pauses its partition when
    /// too much of it is in flight. A record of a task whose stores are restoring is held by
    /// the task manager instead.
    async fn ingest(&mut self, raw: RawRecord) -> Result<(), RuntimeError> {
        let (partition, offset) = (raw.partition, raw.offset);
        if self.tasks.is_stateful()
            && let Some(task) = self.tasks.task_of(&raw.topic, partition)
            && !self.tasks.is_running(task)
        {
            // Its stores are being restored: nothing of it runs before they are.
            return self.tasks.hold(task, raw, &mut *self.consumer);
        }
        let Some(ack) = self.tracker.begin(raw) else {
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
        self.engine.ingest(ack).await;
        let (mut in_flight, mut processing) = probe.partition_in_flight_and_processing();
        if self.cfg.over_limit(in_flight, processing)
            && processing < self.cfg.max_in_flight_per_partition.max(1)
        {
            // Only outputs awaiting the producer's acknowledgement: they come without the
            // loop's help, so wait for them (as a Kafka producer blocks a full `send`) rather
            // than pause, which would throw the partition's fetched records away and cost a
            // fetch round trip. A producer that stays stuck gets the pause after all.
            let started = Instant::now();
            while self.cfg.over_limit(in_flight, processing)
                && started.elapsed() < self.cfg.poll_timeout
            {
                tokio::time::sleep(ACK_WAIT_STEP).await;
                (in_flight, processing) = probe.partition_in_flight_and_processing();
            }
        }
        if self.cfg.over_limit(in_flight, processing) {
            let tp = TopicPartition::new(&probe.origin.topic, partition);
            if self.paused.insert(tp.clone()) {
                tracing::debug!(%tp, in_flight, processing, "pausing for back-pressure");
                self.consumer.pause(std::slice::from_ref(&tp))?;
            }
        }
        Ok(())
    }

    /// Commits when the interval is up; with exactly-once and work in flight, starts draining
    /// it instead (outputs and offsets commit together).
    async fn commit_when_due(&mut self) -> Result<(), RuntimeError> {
        if self.draining.is_some() || self.last_commit.elapsed() < self.cfg.commit_interval {
            return Ok(());
        }
        // Kept-back store writes go out now: their changelog records are acknowledged (and,
        // exactly-once, in this transaction) before the offsets they hold are committed.
        self.engine.flush_write_backs();
        if let Some(error) = failure(&self.tracker) {
            return Err(error);
        }
        if self.cfg.exactly_once && self.tracker.total_in_flight() > 0 {
            self.draining = Some(Drain {
                since: Instant::now(),
                paused: HashSet::new(),
                warned: false,
            });
            return Ok(());
        }
        self.commit().await?;
        // From the end of the commit: a commit slower than the interval must still leave the
        // loop time to poll.
        self.last_commit = Instant::now();
        self.spawn_lag_update();
        Ok(())
    }

    /// Exactly-once: once the drained work finished, commits, resumes the partitions the
    /// drain paused and ingests the records held meanwhile.
    async fn finish_drain(&mut self) -> Result<(), RuntimeError> {
        let Some(drain) = &mut self.draining else {
            return Ok(());
        };
        if self.tracker.total_in_flight() > 0 {
            if !drain.warned && drain.since.elapsed() >= self.cfg.drain_timeout {
                drain.warned = true;
                tracing::warn!(
                    in_flight = self.tracker.total_in_flight(),
                    "exactly-once commit still waiting for in-flight work"
                );
            }
            return Ok(());
        }
        if let Some(error) = failure(&self.tracker) {
            return Err(error);
        }
        self.commit().await?;
        self.last_commit = Instant::now();
        let Some(drain) = self.draining.take() else {
            return Ok(());
        };
        let assigned: HashSet<_> = self.tracker.assigned().into_iter().collect();
        let resume: Vec<_> = drain
            .paused
            .into_iter()
            .filter(|tp| {
                assigned.contains(tp) && !self.paused.contains(tp) && !self.tasks.is_waiting(tp)
            })
            .collect();
        if !resume.is_empty() {
            self.consumer.resume(&resume)?;
        }
        // An aborted commit rewound the partitions: the held records will be polled again.
        self.follow_rewind().await?;
        while let Some(raw) = self.held.pop_front() {
            self.ingest(raw).await?;
        }
        self.spawn_lag_update();
        Ok(())
    }

    /// Commits the offsets below each partition's oldest unfinished record, after the state
    /// and changelogs they depend on are durable.
    async fn commit(&mut self) -> Result<(), RuntimeError> {
        let pending = self.tracker.pending_commits();
        if pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        // State and changelog first: an input offset is never committed ahead of them. (Task
        // stores' changelog records hold their source record's offset back by themselves.)
        self.durable.flush().await?;
        self.tasks.checkpoint().await?;
        let resets = self.tracker.resets();
        match self.consumer.commit(pending.clone()).await {
            Ok(()) => {}
            // Exactly-once: the transport aborted the transaction (a commit that raced a group
            // rebalance) and rewound the partitions to their last commit: nothing was
            // committed and the records are read again; go on.
            Err(error) if self.cfg.exactly_once && self.tracker.resets() != resets => {
                tracing::warn!(%error, "transaction aborted at commit; uncommitted records are read again");
                return Ok(());
            }
            // At-least-once: a commit refused while the group rebalances (or after this
            // member was fenced out by a missed session) loses nothing; the offsets are
            // offered again at the next interval, or the partitions' next owner resumes from
            // the last commit.
            Err(error) if !self.cfg.exactly_once => {
                tracing::warn!(%error, "offset commit failed; retrying at the next interval");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        }
        self.metrics
            .commit_latency
            .observe(started.elapsed().as_secs_f64());
        self.tracker.committed(&pending);
        Ok(())
    }

    /// Stops after `result`: drains in-flight work (bounded by the drain timeout), commits
    /// what is safe, closes the tasks and leaves the group.
    pub(super) async fn shutdown(
        mut self,
        result: Result<(), RuntimeError>,
    ) -> Result<RunSummary, RuntimeError> {
        if result.is_ok() {
            self.engine.flush_write_backs();
        }
        self.summary.abandoned = wait_drained(&self.tracker, self.cfg.drain_timeout).await;
        if self.summary.abandoned > 0 {
            tracing::warn!(
                abandoned = self.summary.abandoned,
                "drain timed out; abandoning work"
            );
        }
        let committed = if result.is_ok() {
            self.commit().await
        } else {
            Ok(())
        };
        // Checkpointed only when everything they hold is committed (with exactly-once, a
        // failed final commit leaves state of aborted work: restored from the changelog).
        self.tasks
            .close_all(result.is_ok() && committed.is_ok() && self.summary.abandoned == 0)
            .await;
        if let Some(running) = self.lag_update.take() {
            running.abort();
        }
        update_lag(
            &*self.consumer,
            &self.tracker,
            &self.metrics,
            &self.cfg.application_id,
        )
        .await;
        self.consumer.close().await;
        result?;
        committed?;
        Ok(self.summary)
    }

    /// Starts a lag update in the background unless the previous one is still running.
    ///
    /// Off the poll loop because the broker may answer offset queries only after a pending
    /// long-poll fetch on the same connection: awaited inline, a slow answer after every
    /// commit left the loop one record per commit interval (seen after a broker outage: ~1
    /// record/1.2 s on an otherwise idle consumer).
    fn spawn_lag_update(&mut self) {
        if self
            .lag_update
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let assigned = self.tracker.assigned();
        if assigned.is_empty() {
            return;
        }
        let queries = LagQueries::start(&*self.consumer, &self.tracker, assigned);
        let (tracker, metrics, group) = (
            self.tracker.clone(),
            self.metrics.clone(),
            self.cfg.application_id.clone(),
        );
        self.lag_update = Some(tokio::spawn(async move {
            queries.apply(&tracker, &metrics, &group).await;
        }));
    }
}

/// The partition `raw` was read from, sharing its topic name (no copy of it).
fn partition_of(raw: &RawRecord) -> TopicPartition {
    TopicPartition {
        topic: raw.topic.clone(),
        partition: raw.partition,
    }
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
pub(super) struct Durable {
    pub(super) changelog: Option<Arc<dyn state::ChangelogSink>>,
    pub(super) state_dir: Option<state::StateDir>,
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

/// The offset queries of one lag update, started while the consumer is at hand.
struct LagQueries {
    ends: futures::future::BoxFuture<'static, Result<Vec<(TopicPartition, i64)>, TransportError>>,
    group_committed:
        Option<futures::future::BoxFuture<'static, Result<CommittedOffsets, TransportError>>>,
}

impl LagQueries {
    fn start(
        consumer: &dyn SourceConsumer,
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
        let mut group_committed = HashMap::new();
        if let Some(query) = self.group_committed {
            match query.await {
                Ok(v) => group_committed.extend(v),
                Err(e) => tracing::debug!(error = %e, "committed offsets unavailable"),
            }
        }
        match self.ends.await {
            Ok(ends) => {
                let assigned: HashSet<_> = tracker.assigned().into_iter().collect();
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
    consumer: &dyn SourceConsumer,
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
