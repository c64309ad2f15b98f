//! Pushing records through the graph.
//!
//! The engine runs the topology compiled into [`Step`]s ([`steps`](super::steps)) with one
//! interpreter, [`Engine::run`]: it decodes a source record, runs stateless steps inline,
//! dispatches records to async stages (per-key / per-partition chains under a semaphore,
//! retries, dead letters) and queues sink writes, keeping an [`Ack`] clone alive until each
//! write is acknowledged. Whatever must wait (a sink whose serde needs the schema registry, a
//! full producer queue) is deferred and awaited after the inline part, in order. A source
//! record and the outputs of an async stage go through the same interpreter.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::offsets::Ack;
use super::steps::{
    self, Action, AsyncStage, ChainKey, NodeMeta, Outcome, SinkStep, StatefulStep, Step,
};
use super::tasks::{CURRENT_RECORD, TaskRegistry};
use crate::graph::Topology;
use crate::processor::{Ordering, ProcessError};
use crate::serdes::SerdeError;
use crate::stateful::{OperatorContext, PunctuationType};
use crate::task::{ProcessorContext, TaskId};
use crate::transport::{DeliveryFuture, OnDelivery, Queued, RecordSink, TransportError};
use crate::{Headers, Metrics, RawRecord, Record};

pub(crate) struct Engine {
    topology: Arc<Topology>,
    /// One per node of the topology, at the node's index.
    steps: Vec<Step>,
    sink: Arc<dyn RecordSink>,
    metrics: Arc<Metrics>,
    /// Queued writes awaiting acknowledgement, completed by one driver task.
    deliveries: mpsc::UnboundedSender<Pending>,
    /// The running tasks' stores.
    tasks: Arc<TaskRegistry>,
}

/// One queued write whose sink returned a future: completed by the delivery driver.
struct Pending {
    delivery: DeliveryFuture,
    done: OnDelivery,
}

impl Pending {
    async fn complete(self) {
        (self.done)(self.delivery.await);
    }
}

/// Records the outcome of one write; `ack` (one clone of it) is released when this returns,
/// i.e. once the write is acknowledged.
fn delivered(
    outcome: Result<crate::transport::Delivered, TransportError>,
    ack: Ack,
    node: &NodeMeta,
    started: Instant,
) {
    match outcome {
        Ok(_) => node.latency.observe(started.elapsed().as_secs_f64()),
        Err(e) => {
            let name = &*node.name;
            tracing::error!(node = name, error = %e, "write failed for good");
            node.metrics.record(name, "failed");
            ack.fail();
        }
    }
}

/// How often the delivery driver picks up newly queued writes while others are outstanding.
const DELIVERY_PICKUP: std::time::Duration = std::time::Duration::from_millis(1);

/// Completes queued writes: one task polling every delivery instead of a task per record.
///
/// Queueing a write must not wake this task: at high rates a cross-thread wake-up per record
/// (a futex call and a context switch on each side) costs more than the rest of the write
/// path. So while writes are outstanding the driver does not wait on the channel; it
/// picks new ones up whenever a delivery completes (the producer acknowledges in batches) or
/// every [`DELIVERY_PICKUP`]. Only when nothing is outstanding does it wait on the channel,
/// so the first write of a burst wakes it and an idle runtime does not tick.
async fn drive_deliveries(mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut pending = FuturesUnordered::new();
    let mut tick = tokio::time::interval(DELIVERY_PICKUP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        while open {
            match rx.try_recv() {
                Ok(p) => pending.push(p.complete()),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if pending.is_empty() {
            if !open {
                break;
            }
            // Idle: wait for the next write (its send wakes this task).
            match rx.recv().await {
                Some(p) => pending.push(p.complete()),
                None => open = false,
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(()) = pending.next() => {}
            _ = tick.tick(), if open => {}
            else => {}
        }
    }
}

/// The work of one record that must be awaited after its inline part (see [`Engine::run`]),
/// in the order it was deferred.
enum Deferred {
    /// Write `record` at sink step `node` the awaited way.
    Sink { node: usize, record: Record },
    /// Queue this write again once the producer's queue frees.
    Retry(RawRecord, OnDelivery),
    /// Send the source record to its dead-letter topic (a stateful operator refused it).
    DeadLetter {
        class: &'static str,
        message: String,
    },
}

impl Engine {
    pub(crate) fn new(
        topology: Arc<Topology>,
        sink: Arc<dyn RecordSink>,
        metrics: Arc<Metrics>,
        tasks: Arc<TaskRegistry>,
    ) -> Arc<Self> {
        let steps = steps::compile(&topology, &metrics);
        let (deliveries, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive_deliveries(rx));
        Arc::new(Engine {
            topology,
            steps,
            sink,
            metrics,
            deliveries,
            tasks,
        })
    }

    /// Decodes a source record and pushes it through the graph.
    pub(crate) async fn ingest(self: &Arc<Self>, ack: Ack) {
        let raw = &ack.origin;
        let Some(src) = self.topology.source_for_topic(&raw.topic) else {
            return;
        };
        let step = &self.steps[src];
        let Action::Source {
            key_serde,
            value_serde,
        } = &step.action
        else {
            return;
        };
        step.metrics.count(Outcome::In);
        let key = match &raw.key {
            None => None,
            Some(k) => match decode(&ack, &**key_serde, &raw.topic, true, k).await {
                Ok(v) => Some(v),
                Err(e) if e.is_transient() => return stop_on_registry_outage(&ack, &e),
                Err(e) => {
                    step.metrics.failed();
                    let msg = format!("key of {}-{}@{}: {e}", raw.topic, raw.partition, raw.offset);
                    self.dead_letter(&ack, e.class(), &msg, 1).await;
                    return;
                }
            },
        };
        let value = match &raw.value {
            None => None,
            Some(v) => match decode(&ack, &**value_serde, &raw.topic, false, v).await {
                Ok(v) => Some(v),
                Err(e) if e.is_transient() => return stop_on_registry_outage(&ack, &e),
                Err(e) => {
                    step.metrics.failed();
                    let msg = format!(
                        "value of {}-{}@{}: {e}",
                        raw.topic, raw.partition, raw.offset
                    );
                    self.dead_letter(&ack, e.class(), &msg, 1).await;
                    return;
                }
            },
        };
        let record = Record {
            key,
            value,
            headers: raw.headers.clone(),
            timestamp: raw.timestamp,
            topic: raw.topic.clone(),
            partition: raw.partition,
            offset: raw.offset,
        };
        let mut later = Vec::new();
        self.emit(src, record, &ack, &mut later);
        self.run_deferred(later, &ack).await;
    }

    /// Sends `record` on from step `node` to each of its children (counted as out of it).
    fn emit(self: &Arc<Self>, node: usize, record: Record, ack: &Ack, later: &mut Vec<Deferred>) {
        let step = &self.steps[node];
        step.metrics.count(Outcome::Out);
        if let Some((last, rest)) = step.children.split_last() {
            for &c in rest {
                self.run(c, record.clone(), ack, later);
            }
            self.run(*last, record, ack, later);
        }
    }

    /// Runs step `node` on `record`: the one interpreter of the steps.
    ///
    /// Nothing here awaits, so the stateless part of the graph runs without a future per
    /// node: async stages are dispatched to tasks of their own, sinks queue their write if
    /// they can without waiting; what must wait is pushed to `later`, and once something is,
    /// every later sink write too (the outputs of one record stay in order). The caller
    /// awaits `later` ([`run_deferred`](Self::run_deferred)).
    fn run(self: &Arc<Self>, node: usize, record: Record, ack: &Ack, later: &mut Vec<Deferred>) {
        let step = &self.steps[node];
        if let Action::Sink(sink) = &step.action {
            // Counted where the write is made: here, or when the deferred write runs.
            if later.is_empty() {
                self.sink_now(node, sink, record, ack, later);
            } else {
                later.push(Deferred::Sink { node, record });
            }
            return;
        }
        step.metrics.count(Outcome::In);
        match &step.action {
            // A source is never a child; a sink was written above.
            Action::Source { .. } | Action::Sink(_) => {}
            Action::Filter(pred) => {
                if pred(&record) {
                    self.emit(node, record, ack, later);
                } else {
                    step.metrics.count(Outcome::Dropped);
                }
            }
            Action::Map(f) => {
                let out = f(record);
                self.emit(node, out, ack, later);
            }
            Action::FlatMap(f) => {
                let outs = f(record);
                if outs.is_empty() {
                    step.metrics.count(Outcome::Dropped);
                }
                for out in outs {
                    self.emit(node, out, ack, later);
                }
            }
            Action::Branch(preds) => match preds.iter().position(|p| p(&record)) {
                Some(i) => {
                    step.metrics.count(Outcome::Out);
                    if let Some(&child) = step.children.get(i) {
                        self.run(child, record, ack, later);
                    }
                }
                None => step.metrics.count(Outcome::Dropped),
            },
            Action::Forward => self.emit(node, record, ack, later),
            Action::Process(stage) => self.dispatch(node, stage, record, ack.clone()),
            Action::Stateful(op) => self.run_stateful(node, op, record, ack, later),
        }
    }

    /// Runs a stateful operator on `record` inline, in its task (store writes tied to
    /// `ack`'s record), then its outputs on; a stream-time punctuation that came due runs
    /// right after, in the same record's scope. A permanent error dead-letters the source
    /// record; a transient one (a store failing) fails it, so the runtime stops without
    /// committing past it.
    fn run_stateful(
        self: &Arc<Self>,
        node: usize,
        op: &StatefulStep,
        record: Record,
        ack: &Ack,
        later: &mut Vec<Deferred>,
    ) {
        if ack.cancel.is_cancelled() {
            return;
        }
        let metrics = &self.steps[node].metrics;
        let task = op.stateful_subtopology.and_then(|subtopology| {
            self.tasks.get(TaskId {
                subtopology,
                partition: ack.origin.partition,
            })
        });
        let task_id = task.as_ref().map(|t| t.id);
        let timestamp = record.timestamp;
        let mut ctx = OperatorContext::new(
            ProcessorContext::new(op.node_name.clone(), op.stores.clone(), task),
            timestamp,
        );
        let result = CURRENT_RECORD.sync_scope(ack.clone(), || {
            op.operator.process(record, &mut ctx)?;
            match (op.operator.punctuation(), timestamp, task_id) {
                (Some(p), Some(ts), Some(task)) if p.kind == PunctuationType::StreamTime => {
                    let interval = i64::try_from(p.interval.as_millis()).unwrap_or(i64::MAX);
                    let due = {
                        let mut next = op
                            .next_punctuation
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let at = next.entry(task).or_insert(ts.saturating_add(interval));
                        if ts >= *at {
                            *at = ts.saturating_add(interval);
                            true
                        } else {
                            false
                        }
                    };
                    if due {
                        op.operator.punctuate(ts, &mut ctx)?;
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        });
        let late = ctx.take_late();
        if late > 0 {
            op.late
                .get_or_init(|| {
                    self.metrics
                        .late_records_total
                        .with_label_values(&[metrics.name()])
                })
                .inc_by(late);
        }
        match result {
            Ok(()) => {
                let outs = ctx.take_outputs();
                if outs.is_empty() {
                    metrics.count(Outcome::Dropped);
                }
                for out in outs {
                    self.emit(node, out, ack, later);
                }
            }
            Err(e @ ProcessError::Permanent(_)) => {
                metrics.failed();
                let message = format!(
                    "node {} on {}-{}@{}: {}",
                    metrics.name(),
                    ack.origin.topic,
                    ack.origin.partition,
                    ack.origin.offset,
                    e.message()
                );
                later.push(Deferred::DeadLetter {
                    class: e.class(),
                    message,
                });
            }
            Err(e) => {
                metrics.failed();
                tracing::error!(
                    node = metrics.name(),
                    error = %e,
                    topic = %ack.origin.topic,
                    partition = ack.origin.partition,
                    offset = ack.origin.offset,
                    "stateful operator failed; stopping without committing past this record"
                );
                ack.fail();
            }
        }
    }

    /// Writes every running task's kept-back store writes out (before a commit; see
    /// [`crate::stateful`]'s write-back view). A store that fails marks the records it held
    /// failed: the runtime then stops without committing past them.
    pub(crate) fn flush_write_backs(&self) {
        for task in self.tasks.running_tasks() {
            if let Some(stores) = self.tasks.get(task)
                && let Err(error) = super::flush_write_back(&stores)
            {
                tracing::error!(%task, %error, "writing kept-back store writes failed");
            }
        }
    }

    /// Whether any operator punctuates on the wall clock.
    pub(crate) fn punctuates_on_wall_clock(&self) -> bool {
        self.steps.iter().any(|step| {
            matches!(&step.action, Action::Stateful(op)
                if op.operator.punctuation().is_some_and(|p| p.kind == PunctuationType::WallClockTime))
        })
    }

    /// Runs the wall-clock punctuations that are due, per running task: each in the scope
    /// of an ack that holds the task's partition (so its store writes reach the changelog and
    /// its outputs are acknowledged before the offset moves on).
    pub(crate) async fn punctuate_wall_clock(
        self: &Arc<Self>,
        tracker: &Arc<super::offsets::OffsetTracker>,
        now_ms: i64,
    ) {
        for (node, step) in self.steps.iter().enumerate() {
            let Action::Stateful(op) = &step.action else {
                continue;
            };
            let Some(p) = op.operator.punctuation() else {
                continue;
            };
            let Some(subtopology) = op.stateful_subtopology else {
                continue;
            };
            if p.kind != PunctuationType::WallClockTime {
                continue;
            }
            let interval = i64::try_from(p.interval.as_millis()).unwrap_or(i64::MAX);
            let topics = self
                .topology
                .subtopologies()
                .get(subtopology)
                .map(|s| s.source_topics.clone())
                .unwrap_or_default();
            for task in self.tasks.running_tasks() {
                if task.subtopology != subtopology {
                    continue;
                }
                let due = {
                    let mut next = op
                        .next_punctuation
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let at = next.entry(task).or_insert(now_ms.saturating_add(interval));
                    if now_ms >= *at {
                        *at = now_ms.saturating_add(interval);
                        true
                    } else {
                        false
                    }
                };
                if !due {
                    continue;
                }
                let Some(ack) = topics.iter().find_map(|t| {
                    tracker.begin_punctuation(&crate::transport::TopicPartition::new(
                        t,
                        task.partition,
                    ))
                }) else {
                    continue;
                };
                let stores = self.tasks.get(task);
                let mut ctx = OperatorContext::new(
                    ProcessorContext::new(op.node_name.clone(), op.stores.clone(), stores),
                    Some(now_ms),
                );
                let result = CURRENT_RECORD
                    .sync_scope(ack.clone(), || op.operator.punctuate(now_ms, &mut ctx));
                match result {
                    Ok(()) => {
                        let mut later = Vec::new();
                        for out in ctx.take_outputs() {
                            self.emit(node, out, &ack, &mut later);
                        }
                        self.run_deferred(later, &ack).await;
                    }
                    Err(e) => {
                        step.metrics.failed();
                        tracing::error!(node = step.metrics.name(), %task, error = %e, "wall-clock punctuation failed");
                        if e.is_transient() {
                            ack.fail();
                        }
                    }
                }
            }
        }
    }

    /// Awaits the work [`run`](Self::run) deferred, in order.
    async fn run_deferred(&self, later: Vec<Deferred>, ack: &Ack) {
        for deferred in later {
            match deferred {
                Deferred::Sink { node, record } => self.sink(node, record, ack).await,
                Deferred::Retry(raw, done) => {
                    let queued = self.send_when_queue_frees(&raw, ack, done).await;
                    self.queued(queued);
                }
                Deferred::DeadLetter { class, message } => {
                    self.dead_letter(ack, class, &message, 1).await;
                }
            }
        }
    }

    /// Encodes and queues `record` at `sink` if that needs no waiting. Otherwise it goes to
    /// `later`: to be queued again when the producer's queue is full, or to go the awaited
    /// way ([`sink`](Self::sink)) when a serde needs the registry or fails (`sink`
    /// dead-letters the record).
    fn sink_now(
        &self,
        node: usize,
        sink: &SinkStep,
        record: Record,
        ack: &Ack,
        later: &mut Vec<Deferred>,
    ) {
        let topic = &*sink.meta.topic;
        let key = match &record.key {
            None => None,
            Some(k) => match sink.key_serde.serialize_now(topic, true, k) {
                Some(Ok(b)) => Some(bytes::Bytes::from(b)),
                _ => return later.push(Deferred::Sink { node, record }),
            },
        };
        let value = match &record.value {
            None => None,
            Some(v) => match sink.value_serde.serialize_now(topic, false, v) {
                Some(Ok(b)) => Some(bytes::Bytes::from(b)),
                _ => return later.push(Deferred::Sink { node, record }),
            },
        };
        self.steps[node].metrics.count(Outcome::In);
        let raw = outgoing(
            sink.meta.topic.clone(),
            key,
            value,
            record.headers,
            record.timestamp,
        );
        if let Some((raw, done)) = self.queue(sink.meta.clone(), raw, ack) {
            later.push(Deferred::Retry(raw, done));
        }
    }

    /// Encodes (waiting for the registry if need be) and writes `record` at sink step `node`,
    /// waiting while the producer's queue is full. Boxed: a cold path (a schema not cached
    /// yet, a record that cannot be encoded) that would otherwise enlarge every caller's
    /// future.
    fn sink<'a>(&'a self, node: usize, record: Record, ack: &'a Ack) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let step = &self.steps[node];
            let Action::Sink(sink) = &step.action else {
                return;
            };
            step.metrics.count(Outcome::In);
            let (topic, name) = (&*sink.meta.topic, step.metrics.name());
            let key = match &record.key {
                None => None,
                Some(k) => {
                    match registry_retry(ack, || sink.key_serde.serialize(topic, true, k)).await {
                        Ok(b) => Some(bytes::Bytes::from(b)),
                        Err(e) if e.is_transient() => return stop_on_registry_outage(ack, &e),
                        Err(e) => {
                            step.metrics.failed();
                            let msg = format!("encoding key for {topic} at sink {name}: {e}");
                            self.dead_letter(ack, e.class(), &msg, 1).await;
                            return;
                        }
                    }
                }
            };
            let value = match &record.value {
                None => None,
                Some(v) => {
                    match registry_retry(ack, || sink.value_serde.serialize(topic, false, v)).await
                    {
                        Ok(b) => Some(bytes::Bytes::from(b)),
                        Err(e) if e.is_transient() => return stop_on_registry_outage(ack, &e),
                        Err(e) => {
                            step.metrics.failed();
                            let msg = format!("encoding value for {topic} at sink {name}: {e}");
                            self.dead_letter(ack, e.class(), &msg, 1).await;
                            return;
                        }
                    }
                }
            };
            let raw = outgoing(
                sink.meta.topic.clone(),
                key,
                value,
                record.headers,
                record.timestamp,
            );
            self.send(sink.meta.clone(), raw, ack.clone()).await;
        })
    }

    /// Hands `raw` to the producer under the send gate; `Ok(None)` when the record's work
    /// was cancelled (the output is dropped).
    fn try_send(
        &self,
        raw: &RawRecord,
        ack: &Ack,
        done: OnDelivery,
    ) -> Result<Option<Queued>, (TransportError, OnDelivery)> {
        // Under the send gate: work cancelled by a revocation never reaches the producer
        // (in exactly-once mode it would land in the next transaction).
        let Some(_gate) = ack.live_send_gate() else {
            return Ok(None);
        };
        self.sink.send_then(raw, done).map(Some)
    }

    /// Retries a send while the producer's queue is full. Boxed (and out of line) so the
    /// common path's futures stay small: they are moved and allocated once per record.
    fn send_when_queue_frees<'a>(
        &'a self,
        raw: &'a RawRecord,
        ack: &'a Ack,
        mut done: OnDelivery,
    ) -> BoxFuture<'a, Result<Option<Queued>, (TransportError, OnDelivery)>> {
        Box::pin(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                match self.try_send(raw, ack, done) {
                    Err((TransportError::QueueFull, d)) => done = d,
                    other => return other,
                }
            }
        })
    }

    /// Queues `raw`; a clone of `ack` is held until the write is acknowledged. Returns the
    /// record and its callback when the producer's queue is full (to retry).
    fn queue(&self, node: NodeMeta, raw: RawRecord, ack: &Ack) -> Option<(RawRecord, OnDelivery)> {
        let started = Instant::now();
        let held = ack.clone();
        let done: OnDelivery = Box::new(move |outcome| {
            delivered(outcome, held, &node, started);
        });
        match self.try_send(&raw, ack, done) {
            Err((TransportError::QueueFull, done)) => Some((raw, done)),
            other => {
                self.queued(other);
                None
            }
        }
    }

    /// Follows a write up after the sink took it (or refused it for good).
    fn queued(&self, result: Result<Option<Queued>, (TransportError, OnDelivery)>) {
        match result {
            // Cancelled: dropping the callback releases its ack clone.
            Ok(None) | Ok(Some(Queued::Notifies)) => {}
            Ok(Some(Queued::Await(delivery, done))) => {
                // The driver lives as long as the engine; should it be gone, complete here.
                if let Err(mpsc::error::SendError(p)) =
                    self.deliveries.send(Pending { delivery, done })
                {
                    tokio::spawn(p.complete());
                }
            }
            Err((e, done)) => done(Err(e)),
        }
    }

    /// Queues `raw`, waiting while the producer's queue is full.
    async fn send(&self, node: NodeMeta, raw: RawRecord, ack: Ack) {
        if let Some((raw, done)) = self.queue(node, raw, &ack) {
            let queued = self.send_when_queue_frees(&raw, &ack, done).await;
            self.queued(queued);
        }
    }

    /// Writes the source record of `ack`, unchanged, to its dead-letter topic. Boxed: a cold
    /// path that would otherwise enlarge every caller's future.
    fn dead_letter<'a>(
        &'a self,
        ack: &'a Ack,
        class: &'a str,
        message: &'a str,
        attempts: u32,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.dead_letter_inner(ack, class, message, attempts))
    }

    async fn dead_letter_inner(&self, ack: &Ack, class: &str, message: &str, attempts: u32) {
        let origin = &ack.origin;
        let topic = self.topology.dead_letter_topic(&origin.topic);
        let mut headers: Headers = origin.headers.clone();
        headers.insert("dlq.source.topic", origin.topic.to_string());
        headers.insert("dlq.source.partition", origin.partition.to_string());
        headers.insert("dlq.source.offset", origin.offset.to_string());
        headers.insert("dlq.error.class", class.to_owned());
        headers.insert("dlq.error.message", message.to_owned());
        headers.insert("dlq.attempts", attempts.to_string());
        let raw = outgoing(
            topic.as_str().into(),
            origin.key.clone(),
            origin.value.clone(),
            headers,
            origin.timestamp,
        );
        self.metrics
            .dead_letter_total
            .with_label_values(&[&topic])
            .inc();
        let meta = steps::node_meta(&self.metrics, format!("dlq:{topic}"), &topic);
        self.send(meta, raw, ack.clone()).await;
    }

    /// Starts async processing of `record` at `node`, in order with its chain.
    fn dispatch(self: &Arc<Self>, node: usize, stage: &Arc<AsyncStage>, record: Record, ack: Ack) {
        let stage = stage.clone();
        let chain_key: Option<ChainKey> = match stage.options.ordering {
            Ordering::Unordered => None,
            Ordering::Partition => Some(ChainKey {
                topic: record.topic.clone(),
                partition: record.partition,
                key: None,
            }),
            Ordering::Key => Some(ChainKey {
                topic: record.topic.clone(),
                partition: record.partition,
                key: Some(
                    record
                        .key
                        .as_ref()
                        .map(|k| k.to_bytes())
                        .unwrap_or_default(),
                ),
            }),
        };
        // Register in the chain now, in dispatch order, so order is kept per chain.
        let (done_tx, prev, my_seq) = match &chain_key {
            None => (None, None, 0),
            Some(key) => {
                let (tx, rx) = oneshot::channel();
                let seq = stage.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut chains = stage
                    .chains
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let prev = chains.insert(key.clone(), (seq, rx)).map(|(_, rx)| rx);
                (Some(tx), prev, seq)
            }
        };
        let engine = self.clone();
        // Counted as being processed (for back-pressure) until the stage is done with it.
        let working = ack.processing();
        tokio::spawn(async move {
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            engine.process(node, &stage, record, &ack).await;
            drop(working);
            if let Some(tx) = done_tx {
                let _ = tx.send(());
            }
            if let Some(key) = chain_key {
                let mut chains = stage
                    .chains
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if chains.get(&key).is_some_and(|(s, _)| *s == my_seq) {
                    chains.remove(&key);
                }
            }
        });
    }

    /// The context of `ack`'s record at `stage`: its task's stores, when the stage has any.
    fn context(&self, stage: &AsyncStage, ack: &Ack) -> ProcessorContext {
        let task = stage.stateful_subtopology.and_then(|subtopology| {
            self.tasks.get(TaskId {
                subtopology,
                partition: ack.origin.partition,
            })
        });
        ProcessorContext::new(stage.node_name.clone(), stage.stores.clone(), task)
    }

    /// Runs `stage`'s processor on `record` (retrying transient errors), then its outputs
    /// through the steps after it, or the source record to its dead-letter topic.
    async fn process(self: &Arc<Self>, node: usize, stage: &AsyncStage, record: Record, ack: &Ack) {
        let metrics = &self.steps[node].metrics;
        let name = metrics.name();
        let retry = stage.options.retry;
        let mut attempts = 0u32;
        let outcome = loop {
            if ack.cancel.is_cancelled() {
                return;
            }
            let permit = tokio::select! {
                _ = ack.cancel.cancelled() => return,
                p = stage.semaphore.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            attempts += 1;
            let gauge = metrics.in_flight();
            gauge.inc();
            let started = Instant::now();
            let ctx = self.context(stage, ack);
            let work = stage.processor.process(record.clone(), ctx);
            let result = tokio::select! {
                _ = ack.cancel.cancelled() => { gauge.dec(); return; }
                r = CURRENT_RECORD.scope(ack.clone(), work) => r,
            };
            metrics.latency().observe(started.elapsed().as_secs_f64());
            gauge.dec();
            drop(permit);
            match result {
                Ok(outs) => break Ok(outs),
                Err(e @ ProcessError::Transient(_)) if attempts < retry.max_attempts.max(1) => {
                    metrics.retries().inc();
                    let delay = retry.backoff_with_jitter(attempts);
                    tokio::select! {
                        _ = ack.cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    tracing::debug!(node = %name, error = %e, attempts, "retrying");
                }
                Err(e) => break Err(e),
            }
        };
        if ack.cancel.is_cancelled() {
            return;
        }
        match outcome {
            Ok(outs) => {
                if outs.is_empty() {
                    metrics.count(Outcome::Dropped);
                }
                let mut later = Vec::new();
                for out in outs {
                    self.emit(node, out, ack, &mut later);
                }
                self.run_deferred(later, ack).await;
            }
            Err(e) => {
                metrics.failed();
                let msg = format!(
                    "node {name} on {}-{}@{}: {}",
                    ack.origin.topic,
                    ack.origin.partition,
                    ack.origin.offset,
                    e.message()
                );
                self.dead_letter(ack, e.class(), &msg, attempts).await;
            }
        }
    }
}

/// Decodes with `serde`, without a future when the serde can (see
/// [`Serde::deserialize_now`](crate::serdes::Serde::deserialize_now)).
async fn decode(
    ack: &Ack,
    serde: &dyn crate::serdes::Serde,
    topic: &str,
    is_key: bool,
    bytes: &bytes::Bytes,
) -> Result<crate::Value, SerdeError> {
    match serde.deserialize_shared_now(topic, is_key, bytes) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) if !e.is_transient() => Err(e),
        _ => registry_retry(ack, || serde.deserialize(topic, is_key, bytes)).await,
    }
}

/// How long a serde call is retried while the schema registry is unavailable before the
/// record's partition stops committing (and the runtime stops, to be restarted).
pub(crate) const REGISTRY_OUTAGE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a serde call again, with backoff (100 ms doubling to 5 s), while it fails because the
/// schema registry is unavailable: a registry outage pauses the record instead of sending it
/// to the dead-letter topic as if its bytes were bad.
async fn registry_retry<T, F, Fut>(ack: &Ack, mut call: F) -> Result<T, SerdeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SerdeError>>,
{
    let started = Instant::now();
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match call().await {
            Err(e)
                if e.is_transient()
                    && started.elapsed() < REGISTRY_OUTAGE_LIMIT
                    && !ack.cancel.is_cancelled() =>
            {
                tracing::warn!(
                    error = %e,
                    topic = %ack.origin.topic,
                    partition = ack.origin.partition,
                    offset = ack.origin.offset,
                    "schema registry unavailable; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// The registry stayed unavailable past [`REGISTRY_OUTAGE_LIMIT`]: the record is neither
/// processed nor dead-lettered; its partition stops committing and the runtime stops with an
/// error, so a restart reads it again.
/// A record to write to `topic`; the transport picks its partition (by key) and offset.
fn outgoing(
    topic: Arc<str>,
    key: Option<bytes::Bytes>,
    value: Option<bytes::Bytes>,
    headers: Headers,
    timestamp: Option<i64>,
) -> RawRecord {
    RawRecord {
        topic,
        partition: -1,
        offset: -1,
        key,
        value,
        headers,
        timestamp,
    }
}

fn stop_on_registry_outage(ack: &Ack, error: &SerdeError) {
    tracing::error!(
        %error,
        topic = %ack.origin.topic,
        partition = ack.origin.partition,
        offset = ack.origin.offset,
        "schema registry unavailable for {REGISTRY_OUTAGE_LIMIT:?}; stopping without committing past this record"
    );
    ack.fail_registry_unavailable();
}
