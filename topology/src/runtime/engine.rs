//! Pushing records through the graph.
//!
//! The engine decodes a source record, runs stateless nodes inline, hands records to async
//! stages (per-key / per-partition chains under a semaphore, retries, dead letters) and writes
//! sink records, keeping an [`Ack`] clone alive until each write is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prometheus::IntCounter;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::offsets::Ack;
use super::tasks::{CURRENT_RECORD, TaskRegistry};
use crate::graph::{NodeKind, Topology};
use crate::processor::{AsyncOptions, Ordering, ProcessError, Processor};
use crate::serdes::SerdeError;
use crate::task::{ProcessorContext, TaskId};
use crate::transport::{DeliveryFuture, OnDelivery, Queued, RecordSink, TransportError};
use crate::{Headers, Metrics, RawRecord, Record};

type ChainKey = (Arc<str>, i32, Option<Vec<u8>>);

struct AsyncStage {
    processor: Arc<dyn Processor>,
    options: AsyncOptions,
    /// The processor's name and declared stores, handed to it in each record's context.
    node_name: Arc<str>,
    stores: Arc<[String]>,
    /// Its sub-topology, when that owns stores (the record's task is looked up per record).
    stateful_subtopology: Option<usize>,
    semaphore: Arc<Semaphore>,
    chains: Mutex<HashMap<ChainKey, (u64, oneshot::Receiver<()>)>>,
    seq: std::sync::atomic::AtomicU64,
}

pub(crate) struct Engine {
    topology: Arc<Topology>,
    sink: Arc<dyn RecordSink>,
    metrics: Arc<Metrics>,
    stages: Vec<Option<Arc<AsyncStage>>>,
    /// Per node: its name and latency histogram, looked up once (used by sinks per record).
    node_meta: Vec<Option<NodeMeta>>,
    /// Queued writes awaiting acknowledgement, completed by one driver task.
    deliveries: mpsc::UnboundedSender<Pending>,
    /// Per node, its `records_total` counters by outcome, looked up on first use.
    counters: Vec<[OnceLock<IntCounter>; 3]>,
    /// The running tasks' stores.
    tasks: Arc<TaskRegistry>,
}

/// The per-record outcomes counted for every node (`records_total{node,outcome}`).
#[derive(Clone, Copy)]
enum Outcome {
    In = 0,
    Out = 1,
    Dropped = 2,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::In => "in",
            Outcome::Out => "out",
            Outcome::Dropped => "dropped",
        }
    }
}

/// What a write's delivery callback records, shared by every write of a node: one reference
/// count per record (touched by the producer's thread too) instead of one per part.
type NodeMeta = Arc<NodeMetaInner>;

struct NodeMetaInner {
    name: String,
    /// The sink's topic, shared by the records it writes.
    topic: Arc<str>,
    latency: prometheus::Histogram,
    metrics: Arc<Metrics>,
}

fn node_meta(metrics: &Arc<Metrics>, name: String, topic: &str) -> NodeMeta {
    Arc::new(NodeMetaInner {
        latency: metrics.node_latency.with_label_values(&[&name]),
        name,
        topic: topic.into(),
        metrics: metrics.clone(),
    })
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
/// Queueing a write must not wake this task: at 100k+ records/s a cross-thread wake-up per
/// record (a futex call and a context switch on each side) cost more than the rest of the
/// write path. So while writes are outstanding the driver does not wait on the channel; it
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

impl Engine {
    pub(crate) fn new(
        topology: Arc<Topology>,
        sink: Arc<dyn RecordSink>,
        metrics: Arc<Metrics>,
        tasks: Arc<TaskRegistry>,
    ) -> Arc<Self> {
        let stages = topology
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.kind {
                NodeKind::Async {
                    processor,
                    options,
                    stores,
                } => Some(Arc::new(AsyncStage {
                    processor: processor.clone(),
                    options: options.clone(),
                    node_name: n.name.as_str().into(),
                    stores: stores.clone().into(),
                    stateful_subtopology: topology
                        .subtopology_of_node(i)
                        .filter(|s| s.is_stateful() && !stores.is_empty())
                        .map(|s| s.id),
                    semaphore: Arc::new(Semaphore::new(options.concurrency.max(1))),
                    chains: Mutex::new(HashMap::new()),
                    seq: Default::default(),
                })),
                _ => None,
            })
            .collect();
        let node_meta = topology
            .nodes()
            .iter()
            .map(|n| match &n.kind {
                NodeKind::Sink { topic, .. } => Some(node_meta(&metrics, n.name.clone(), topic)),
                _ => None,
            })
            .collect();
        let counters = topology
            .nodes()
            .iter()
            .map(|_| Default::default())
            .collect();
        let (deliveries, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive_deliveries(rx));
        Arc::new(Engine {
            topology,
            sink,
            metrics,
            stages,
            node_meta,
            deliveries,
            counters,
            tasks,
        })
    }

    /// Counts one record at node `node` with `outcome` (the same series as
    /// [`Metrics::record`], without a label lookup per record).
    fn count(&self, node: usize, outcome: Outcome) {
        let (Some(slots), Some(n)) = (self.counters.get(node), self.topology.nodes().get(node))
        else {
            return;
        };
        slots[outcome as usize]
            .get_or_init(|| {
                self.metrics
                    .records_total
                    .with_label_values(&[&n.name, outcome.label()])
            })
            .inc();
    }

    /// Decodes a source record and pushes it through the graph.
    pub(crate) async fn ingest(self: &Arc<Self>, ack: Ack) {
        let raw = &ack.origin;
        let Some(src) = self.topology.source_for_topic(&raw.topic) else {
            return;
        };
        let node = &self.topology.nodes()[src];
        let NodeKind::Source {
            key_serde,
            value_serde,
            ..
        } = &node.kind
        else {
            return;
        };
        self.count(src, Outcome::In);
        let key = match &raw.key {
            None => None,
            Some(k) => match decode(&ack, &**key_serde, &raw.topic, true, k).await {
                Ok(v) => Some(v),
                Err(e) if e.is_transient() => return stop_on_registry_outage(&ack, &e),
                Err(e) => {
                    self.metrics.record(&node.name, "failed");
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
                    self.metrics.record(&node.name, "failed");
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
        // The stateless part of the graph runs inline, without a future per node; what must
        // wait (a sink whose schema id is not cached yet or whose producer queue is full)
        // runs after it, in order.
        let mut later = Vec::new();
        self.emit_now(src, record, &ack, &mut later);
        for deferred in later {
            match deferred {
                Deferred::Run(node, record) => self.run(node, record, &ack).await,
                Deferred::Retry(raw, done) => {
                    let queued = self.send_when_queue_frees(&raw, &ack, done).await;
                    self.queued(queued);
                }
            }
        }
    }

    /// [`emit`](Self::emit) without awaiting: stateless nodes run here, async stages are
    /// dispatched (as `run` does), sinks write if they can without waiting; anything else is
    /// pushed to `later`, and once something is, every later sink write too (outputs of one
    /// record stay in order).
    fn emit_now(
        self: &Arc<Self>,
        node: usize,
        record: Record,
        ack: &Ack,
        later: &mut Vec<Deferred>,
    ) {
        self.count(node, Outcome::Out);
        let children = &self.topology.nodes()[node].children;
        if let Some((last, rest)) = children.split_last() {
            for &c in rest {
                self.run_now(c, record.clone(), ack, later);
            }
            self.run_now(*last, record, ack, later);
        }
    }

    /// [`run`](Self::run) without awaiting; see [`emit_now`](Self::emit_now).
    fn run_now(
        self: &Arc<Self>,
        node: usize,
        record: Record,
        ack: &Ack,
        later: &mut Vec<Deferred>,
    ) {
        let n = &self.topology.nodes()[node];
        if let NodeKind::Sink { .. } = &n.kind {
            if later.is_empty() {
                self.sink_now(node, record, ack, later);
            } else {
                later.push(Deferred::Run(node, record));
            }
            return;
        }
        self.count(node, Outcome::In);
        match &n.kind {
            NodeKind::Source { .. } | NodeKind::Sink { .. } => {}
            NodeKind::Filter(pred) => {
                if pred(&record) {
                    self.emit_now(node, record, ack, later);
                } else {
                    self.count(node, Outcome::Dropped);
                }
            }
            NodeKind::Map(f) => {
                let out = f(record);
                self.emit_now(node, out, ack, later);
            }
            NodeKind::FlatMap(f) => {
                let outs = f(record);
                if outs.is_empty() {
                    self.count(node, Outcome::Dropped);
                }
                for out in outs {
                    self.emit_now(node, out, ack, later);
                }
            }
            NodeKind::Branch(preds) => match preds.iter().position(|p| p(&record)) {
                Some(i) => {
                    self.count(node, Outcome::Out);
                    if let Some(&child) = n.children.get(i) {
                        self.run_now(child, record, ack, later);
                    }
                }
                None => self.count(node, Outcome::Dropped),
            },
            NodeKind::BranchChild => self.emit_now(node, record, ack, later),
            NodeKind::Async { .. } => self.dispatch(node, record, ack.clone()),
        }
    }

    /// Encodes and queues `record` at sink `node` if that needs no waiting. Otherwise it goes
    /// to `later`: to be queued again when the producer's queue is full, or to go the awaited
    /// way (`run`) when a serde needs the registry or fails (`run` dead-letters the record).
    fn sink_now(&self, node: usize, record: Record, ack: &Ack, later: &mut Vec<Deferred>) {
        let NodeKind::Sink {
            topic,
            key_serde,
            value_serde,
        } = &self.topology.nodes()[node].kind
        else {
            return;
        };
        let key = match &record.key {
            None => None,
            Some(k) => match key_serde.serialize_now(topic, true, k) {
                Some(Ok(b)) => Some(bytes::Bytes::from(b)),
                _ => return later.push(Deferred::Run(node, record)),
            },
        };
        let value = match &record.value {
            None => None,
            Some(v) => match value_serde.serialize_now(topic, false, v) {
                Some(Ok(b)) => Some(bytes::Bytes::from(b)),
                _ => return later.push(Deferred::Run(node, record)),
            },
        };
        let Some(meta) = self.node_meta[node].clone() else {
            return later.push(Deferred::Run(node, record));
        };
        // `run` counts the records it runs; this one is handled here.
        self.count(node, Outcome::In);
        let raw = outgoing(
            meta.topic.clone(),
            key,
            value,
            record.headers,
            record.timestamp,
        );
        if let Some((raw, done)) = self.queue(meta, raw, ack) {
            later.push(Deferred::Retry(raw, done));
        }
    }

    /// Sends `record` to every child of `node`.
    fn emit<'a>(
        self: &'a Arc<Self>,
        node: usize,
        record: Record,
        ack: &'a Ack,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let n = &self.topology.nodes()[node];
            self.count(node, Outcome::Out);
            let children = &n.children;
            if let Some((last, rest)) = children.split_last() {
                for &c in rest {
                    self.run(c, record.clone(), ack).await;
                }
                self.run(*last, record, ack).await;
            }
        })
    }

    fn run<'a>(
        self: &'a Arc<Self>,
        node: usize,
        record: Record,
        ack: &'a Ack,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let n = &self.topology.nodes()[node];
            self.count(node, Outcome::In);
            match &n.kind {
                NodeKind::Source { .. } => {}
                NodeKind::Filter(pred) => {
                    if pred(&record) {
                        self.emit(node, record, ack).await;
                    } else {
                        self.count(node, Outcome::Dropped);
                    }
                }
                NodeKind::Map(f) => {
                    let out = f(record);
                    self.emit(node, out, ack).await;
                }
                NodeKind::FlatMap(f) => {
                    let outs = f(record);
                    if outs.is_empty() {
                        self.count(node, Outcome::Dropped);
                    }
                    for out in outs {
                        self.emit(node, out, ack).await;
                    }
                }
                NodeKind::Branch(preds) => match preds.iter().position(|p| p(&record)) {
                    Some(i) => {
                        self.count(node, Outcome::Out);
                        if let Some(&child) = n.children.get(i) {
                            self.run(child, record, ack).await;
                        }
                    }
                    None => self.count(node, Outcome::Dropped),
                },
                NodeKind::BranchChild => self.emit(node, record, ack).await,
                NodeKind::Async { .. } => self.dispatch(node, record, ack.clone()),
                NodeKind::Sink {
                    topic,
                    key_serde,
                    value_serde,
                } => {
                    let key = match &record.key {
                        None => None,
                        Some(k) => {
                            match registry_retry(ack, || key_serde.serialize(topic, true, k)).await
                            {
                                Ok(b) => Some(bytes::Bytes::from(b)),
                                Err(e) if e.is_transient() => {
                                    return stop_on_registry_outage(ack, &e);
                                }
                                Err(e) => {
                                    self.metrics.record(&n.name, "failed");
                                    let msg =
                                        format!("encoding key for {topic} at sink {}: {e}", n.name);
                                    self.dead_letter(ack, e.class(), &msg, 1).await;
                                    return;
                                }
                            }
                        }
                    };
                    let value = match &record.value {
                        None => None,
                        Some(v) => {
                            match registry_retry(ack, || value_serde.serialize(topic, false, v))
                                .await
                            {
                                Ok(b) => Some(bytes::Bytes::from(b)),
                                Err(e) if e.is_transient() => {
                                    return stop_on_registry_outage(ack, &e);
                                }
                                Err(e) => {
                                    self.metrics.record(&n.name, "failed");
                                    let msg = format!(
                                        "encoding value for {topic} at sink {}: {e}",
                                        n.name
                                    );
                                    self.dead_letter(ack, e.class(), &msg, 1).await;
                                    return;
                                }
                            }
                        }
                    };
                    let meta = self.node_meta[node]
                        .clone()
                        .unwrap_or_else(|| node_meta(&self.metrics, n.name.clone(), topic));
                    let raw = outgoing(
                        meta.topic.clone(),
                        key,
                        value,
                        record.headers,
                        record.timestamp,
                    );
                    self.send(meta, raw, ack.clone()).await;
                }
            }
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
        let meta = node_meta(&self.metrics, format!("dlq:{topic}"), &topic);
        self.send(meta, raw, ack.clone()).await;
    }

    /// Starts async processing of `record` at `node`, in order with its chain.
    fn dispatch(self: &Arc<Self>, node: usize, record: Record, ack: Ack) {
        let Some(stage) = self.stages[node].clone() else {
            return;
        };
        let chain_key: Option<ChainKey> = match stage.options.ordering {
            Ordering::Unordered => None,
            Ordering::Partition => Some((record.topic.clone(), record.partition, None)),
            Ordering::Key => Some((
                record.topic.clone(),
                record.partition,
                Some(
                    record
                        .key
                        .as_ref()
                        .map(|k| k.to_bytes())
                        .unwrap_or_default(),
                ),
            )),
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

    async fn process(self: &Arc<Self>, node: usize, stage: &AsyncStage, record: Record, ack: &Ack) {
        let name = &self.topology.nodes()[node].name;
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
            let gauge = self.metrics.in_flight.with_label_values(&[name]);
            gauge.inc();
            let started = Instant::now();
            let ctx = self.context(stage, ack);
            let work = stage.processor.process(record.clone(), ctx);
            let result = tokio::select! {
                _ = ack.cancel.cancelled() => { gauge.dec(); return; }
                r = CURRENT_RECORD.scope(ack.clone(), work) => r,
            };
            self.metrics
                .node_latency
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            gauge.dec();
            drop(permit);
            match result {
                Ok(outs) => break Ok(outs),
                Err(e @ ProcessError::Transient(_)) if attempts < retry.max_attempts.max(1) => {
                    self.metrics.retries_total.with_label_values(&[name]).inc();
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
                    self.count(node, Outcome::Dropped);
                }
                for out in outs {
                    self.emit(node, out, ack).await;
                }
            }
            Err(e) => {
                self.metrics.record(name, "failed");
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

/// Work of one record that must be awaited after its inline part; see [`Engine::emit_now`].
enum Deferred {
    /// Run this node (a sink) the awaited way.
    Run(usize, Record),
    /// Queue this write again once the producer's queue frees.
    Retry(RawRecord, OnDelivery),
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
