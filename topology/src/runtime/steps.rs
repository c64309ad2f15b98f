//! The topology compiled for the engine.
//!
//! [`compile`] turns every node of a [`Topology`] into a [`Step`] once, before the first
//! record: its children, its [`Action`] with what the action needs at hand (an async stage's
//! semaphore and chains, a sink's topic and latency histogram) and its metric handles. The
//! engine interprets steps, never the graph's [`NodeKind`]s, in one place: a new node kind is
//! a new `Action`, its arm in [`compile`] and its arm in the engine's interpreter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{Semaphore, oneshot};

use crate::Metrics;
use crate::graph::{FlatMapFn, MapFn, NodeKind, Predicate, Topology};
use crate::processor::{AsyncOptions, Processor};
use crate::serdes::SerdeRef;

/// One node of the topology, ready to run.
pub(super) struct Step {
    /// The steps it sends records to (indices into the compiled steps, as into
    /// [`Topology::nodes`]), in the order they were added.
    pub(super) children: Vec<usize>,
    pub(super) action: Action,
    pub(super) metrics: StepMetrics,
}

/// What a step does with a record.
pub(super) enum Action {
    /// Decodes the records of its topics: run when a record is ingested, never as a child.
    Source {
        key_serde: SerdeRef,
        value_serde: SerdeRef,
    },
    /// Passes on the records for which the predicate holds.
    Filter(Predicate),
    /// Passes on one record for each.
    Map(MapFn),
    /// Passes on zero or more records for each.
    FlatMap(FlatMapFn),
    /// Sends each record to the child of the first predicate that holds (children and
    /// predicates in the same order).
    Branch(Vec<Predicate>),
    /// Passes records on unchanged (one named branch of a `Branch`).
    Forward,
    /// Runs an async processor on a task of its own; its outputs go on from there.
    Process(Arc<AsyncStage>),
    /// Runs a stateful operator inline with its task's stores.
    Stateful(StatefulStep),
    /// Encodes and writes records to a topic.
    Sink(SinkStep),
}

/// A stateful operator and what it is handed with each record.
pub(super) struct StatefulStep {
    pub(super) operator: crate::stateful::OperatorRef,
    pub(super) node_name: Arc<str>,
    pub(super) stores: Arc<[String]>,
    /// Its sub-topology, when that owns stores.
    pub(super) stateful_subtopology: Option<usize>,
    /// Per task, the stream time of its next stream-time punctuation.
    pub(super) next_punctuation: Mutex<HashMap<crate::TaskId, i64>>,
    pub(super) late: OnceLock<IntCounter>,
}

/// A sink's serdes and what its writes' delivery callbacks record.
pub(super) struct SinkStep {
    pub(super) key_serde: SerdeRef,
    pub(super) value_serde: SerdeRef,
    pub(super) meta: NodeMeta,
}

/// An ordered chain of an async stage: its records are processed one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ChainKey {
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    /// The encoded key, for key ordering; `None` for partition ordering.
    pub(super) key: Option<Vec<u8>>,
}

/// An async processor and the state of its concurrency bound and ordered chains.
pub(super) struct AsyncStage {
    pub(super) processor: Arc<dyn Processor>,
    pub(super) options: AsyncOptions,
    /// The processor's name and declared stores, handed to it in each record's context.
    pub(super) node_name: Arc<str>,
    pub(super) stores: Arc<[String]>,
    /// Its sub-topology, when that owns stores (the record's task is looked up per record).
    pub(super) stateful_subtopology: Option<usize>,
    pub(super) semaphore: Arc<Semaphore>,
    /// Per chain, the sequence number of its last record and the signal that it finished.
    pub(super) chains: Mutex<HashMap<ChainKey, (u64, oneshot::Receiver<()>)>>,
    pub(super) seq: std::sync::atomic::AtomicU64,
}

/// What a write's delivery callback records, shared by every write of a node: one reference
/// count per record (touched by the producer's thread too) instead of one per part.
pub(super) type NodeMeta = Arc<NodeMetaInner>;

pub(super) struct NodeMetaInner {
    pub(super) name: String,
    /// The sink's topic, shared by the records it writes.
    pub(super) topic: Arc<str>,
    pub(super) latency: Histogram,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) fn node_meta(metrics: &Arc<Metrics>, name: String, topic: &str) -> NodeMeta {
    Arc::new(NodeMetaInner {
        latency: metrics.node_latency.with_label_values(&[&name]),
        name,
        topic: topic.into(),
        metrics: metrics.clone(),
    })
}

/// The per-record outcomes counted for every node (`records_total{node,outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
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

/// A step's metric series. Each is looked up once, on first use, so a node's series appear
/// when it has something to report, and no record pays for a label lookup.
pub(super) struct StepMetrics {
    name: Arc<str>,
    metrics: Arc<Metrics>,
    outcomes: [OnceLock<IntCounter>; 3],
    latency: OnceLock<Histogram>,
    in_flight: OnceLock<IntGauge>,
    retries: OnceLock<IntCounter>,
}

impl StepMetrics {
    fn new(name: Arc<str>, metrics: &Arc<Metrics>) -> Self {
        StepMetrics {
            name,
            metrics: metrics.clone(),
            outcomes: Default::default(),
            latency: OnceLock::new(),
            in_flight: OnceLock::new(),
            retries: OnceLock::new(),
        }
    }

    /// The node's name (its metrics' `node` label).
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Counts one record with `outcome` (the series [`Metrics::record`] counts too).
    pub(super) fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize]
            .get_or_init(|| {
                self.metrics
                    .records_total
                    .with_label_values(&[&self.name, outcome.label()])
            })
            .inc();
    }

    /// Counts one record that failed for good. Rare: looked up every time.
    pub(super) fn failed(&self) {
        self.metrics.record(&self.name, "failed");
    }

    /// The processing latency of an async stage.
    pub(super) fn latency(&self) -> &Histogram {
        self.latency
            .get_or_init(|| self.metrics.node_latency.with_label_values(&[&self.name]))
    }

    /// The records an async stage is processing now.
    pub(super) fn in_flight(&self) -> &IntGauge {
        self.in_flight
            .get_or_init(|| self.metrics.in_flight.with_label_values(&[&self.name]))
    }

    /// The retries of an async stage.
    pub(super) fn retries(&self) -> &IntCounter {
        self.retries
            .get_or_init(|| self.metrics.retries_total.with_label_values(&[&self.name]))
    }
}

/// Compiles every node of `topology` into its step, in the order of [`Topology::nodes`].
pub(super) fn compile(topology: &Topology, metrics: &Arc<Metrics>) -> Vec<Step> {
    topology
        .nodes()
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let name: Arc<str> = node.name.as_str().into();
            // The sub-topology whose task stores a node using `stores` reaches, if any.
            let store_owner = |stores: &[String]| {
                topology
                    .subtopology_of_node(index)
                    .filter(|s| s.is_stateful() && !stores.is_empty())
                    .map(|s| s.id)
            };
            let action = match &node.kind {
                NodeKind::Source {
                    key_serde,
                    value_serde,
                    ..
                } => Action::Source {
                    key_serde: key_serde.clone(),
                    value_serde: value_serde.clone(),
                },
                NodeKind::Filter(pred) => Action::Filter(pred.clone()),
                NodeKind::Map(f) => Action::Map(f.clone()),
                NodeKind::FlatMap(f) => Action::FlatMap(f.clone()),
                NodeKind::Branch(preds) => Action::Branch(preds.clone()),
                NodeKind::BranchChild | NodeKind::Forward => Action::Forward,
                NodeKind::Stateful { operator, stores } => Action::Stateful(StatefulStep {
                    operator: operator.clone(),
                    node_name: name.clone(),
                    stores: stores.clone().into(),
                    stateful_subtopology: store_owner(stores),
                    next_punctuation: Mutex::new(HashMap::new()),
                    late: OnceLock::new(),
                }),
                NodeKind::Async {
                    processor,
                    options,
                    stores,
                } => Action::Process(Arc::new(AsyncStage {
                    processor: processor.clone(),
                    options: options.clone(),
                    node_name: name.clone(),
                    stores: stores.clone().into(),
                    stateful_subtopology: store_owner(stores),
                    semaphore: Arc::new(Semaphore::new(options.concurrency.max(1))),
                    chains: Mutex::new(HashMap::new()),
                    seq: Default::default(),
                })),
                NodeKind::Sink {
                    topic,
                    key_serde,
                    value_serde,
                } => Action::Sink(SinkStep {
                    key_serde: key_serde.clone(),
                    value_serde: value_serde.clone(),
                    meta: node_meta(metrics, node.name.clone(), topic),
                }),
            };
            Step {
                children: node.children.clone(),
                action,
                metrics: StepMetrics::new(name, metrics),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus::core::Collector;

    use super::*;
    use crate::serdes::StringSerde;
    use crate::{StoreSpec, TopologyBuilder, processor_fn};

    fn kind(step: &Step) -> &'static str {
        match &step.action {
            Action::Source { .. } => "source",
            Action::Filter(_) => "filter",
            Action::Map(_) => "map",
            Action::FlatMap(_) => "flat_map",
            Action::Branch(_) => "branch",
            Action::Forward => "forward",
            Action::Process(_) => "process",
            Action::Stateful(_) => "stateful",
            Action::Sink(_) => "sink",
        }
    }

    fn topology() -> Topology {
        let b = TopologyBuilder::new();
        b.store(StoreSpec::new("seen"));
        let split = b
            .source("in", "input", Arc::new(StringSerde), Arc::new(StringSerde))
            .filter("keep", |_| true)
            .branch(
                "split",
                vec![("left", Arc::new(|_| true)), ("right", Arc::new(|_| true))],
            );
        split[0]
            .map("upper", |r| r)
            .flat_map("twice", |r| vec![r.clone(), r])
            .to(
                "out",
                "output",
                Arc::new(StringSerde),
                Arc::new(StringSerde),
            );
        split[1]
            .process_async(
                "work",
                processor_fn(|r| async move { Ok(vec![r]) }),
                crate::AsyncOptions::default(),
            )
            .with_stores(&["seen"])
            .to(
                "dlq-ish",
                "other",
                Arc::new(StringSerde),
                Arc::new(StringSerde),
            );
        b.build().expect("valid topology")
    }

    #[test]
    fn every_node_compiles_to_its_step_with_the_same_children() {
        let topology = topology();
        let metrics = Arc::new(Metrics::unregistered().expect("metrics"));
        let steps = compile(&topology, &metrics);
        let kinds: Vec<_> = steps.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                "source", "filter", "branch", "forward", "forward", "map", "flat_map", "sink",
                "process", "sink"
            ]
        );
        for (step, node) in steps.iter().zip(topology.nodes()) {
            assert_eq!(step.children, node.children, "{}", node.name);
            assert_eq!(step.metrics.name(), node.name);
        }
        let Action::Sink(sink) = &steps[7].action else {
            panic!("`out` is a sink");
        };
        assert_eq!(
            (&*sink.meta.topic, sink.meta.name.as_str()),
            ("output", "out")
        );
        let Action::Process(stage) = &steps[8].action else {
            panic!("`work` is a process step");
        };
        assert_eq!(&*stage.node_name, "work");
        assert_eq!(&*stage.stores, ["seen".to_owned()]);
        assert_eq!(
            stage.stateful_subtopology,
            topology.subtopology_of_node(8).map(|s| s.id)
        );
    }

    #[test]
    fn a_steps_series_exist_only_once_it_counted_something() {
        let topology = topology();
        let metrics = Arc::new(Metrics::unregistered().expect("metrics"));
        let steps = compile(&topology, &metrics);
        let series = |m: &Metrics| {
            m.records_total
                .collect()
                .iter()
                .map(|f| f.get_metric().len())
                .sum::<usize>()
        };
        assert_eq!(series(&metrics), 0);
        steps[1].metrics.count(Outcome::In);
        steps[1].metrics.count(Outcome::In);
        steps[1].metrics.count(Outcome::Dropped);
        assert_eq!(series(&metrics), 2);
        assert_eq!(
            metrics
                .records_total
                .with_label_values(&["keep", "in"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .records_total
                .with_label_values(&["keep", "dropped"])
                .get(),
            1
        );
    }
}
