//! `topology`: a Kafka Streams-style engine.
//!
//! A topology is a graph of sources, stateless operators, asynchronous processors, stateful
//! operators (tables, aggregations, windows, joins: [`stateful`]) and sinks, declared in Rust
//! ([`TopologyBuilder`]) or in a configuration file ([`config`]), described in Kafka Streams'
//! text shape and as Mermaid ([`Topology::describe`]), and run by the
//! [`Runtime`] over Kafka ([`transport::KafkaTransport`]) or an embedded sled-backed log
//! ([`transport::EmbeddedTransport`]). [`TopologyTestDriver`] runs a topology in-process for
//! tests. State belongs to tasks (a sub-topology on one partition): stores declared in the
//! topology are opened per task, backed by partitioned changelog topics and restored before a
//! task runs ([`task`]). Depends on `state` within the workspace; never on `connectors` or the
//! services.

pub mod avro;
pub mod changelog;
pub mod config;
pub mod describe;
pub mod graph;
pub mod processor;
mod record;
pub mod serdes;
pub mod stateful;
mod store;

pub use graph::{
    FlatMapFn, MapFn, Node, NodeKind, Predicate, Stream, Subtopology, Topology, TopologyBuilder,
    TopologyError,
};
pub use processor::{
    AsyncOptions, Ordering, ProcessError, Processor, RetryPolicy, processor_fn,
    processor_with_context,
};
pub use store::StoreSpec;
pub mod task;
pub use record::{Header, Headers, RawRecord, Record, Value, avro_to_json};
pub use task::{ProcessorContext, ReadOnlyStore, StoreAccessError, TaskId};
pub mod metrics;
pub mod runtime;
pub mod transport;

pub use changelog::{EmbeddedChangelog, KafkaChangelog};
pub use metrics::Metrics;
pub use runtime::{RunSummary, Runtime, RuntimeConfig, RuntimeError, StoreReader};
mod driver;
pub use driver::{DriverError, RebalanceKind, TopologyTestDriver};
