//! Topologies from a YAML file.
//!
//! The same topology the builder makes can be written as YAML, so operators change wiring and
//! tuning without recompiling. Processors, map functions, topics and Avro schemas are looked up
//! by name in a [`Registry`] filled in code (a plain name → value map).
//!
//! Each node kind is its own type ([`SourceConfig`], [`FilterConfig`], [`MapConfig`],
//! [`FlatMapConfig`], [`BranchNodeConfig`], [`ProcessConfig`], [`SinkConfig`]) in its own
//! module, with the fields that kind takes (any other field is an error, with its line), its
//! own checks and its own way of adding itself to a [`TopologyBuilder`](crate::TopologyBuilder); [`NodeConfig`] is
//! the `type`-tagged union of them.
//!
//! Loading is three steps, each reporting every problem at once with its place
//! (`nodes[2].processor`) and line, taken from the YAML parser's marks:
//! [`TopologyConfig::from_yaml`] reads the file, [`TopologyConfig::validate`] checks it against
//! a registry and returns a [`TopologyPlan`] (processors built, topics and schemas resolved,
//! nodes in dependency order), and [`TopologyPlan::build`] adds the plan to a builder without
//! checking anything again. [`TopologyConfig::build`] and [`validate_file`] do both.
//!
//! ```yaml
//! application_id: diff-checker
//! schema_registry_url: http://127.0.0.1:8081   # needed by `avro` serdes (or a registry set in code)
//! stores:                          # state stores, one instance per task of the processors using them
//!   - name: seen                   # [A-Za-z0-9_.-], at most 200 bytes
//!     changelog: true              # default true: topic <application_id>-seen-changelog
//!     cache_entries: 1024          # default 0: no read cache
//! nodes:
//!   - name: cdc
//!     type: source                 # source | filter | map | flat_map | branch | process | sink
//!     topic: {ref: cdc}            # a topic registered in code; or a name: products.cdc;
//!                                  # or topics: [a, {ref: b}]
//!     key: string                  # bytes | string | json | avro
//!     value: avro
//!     dead_letter_topic: products.cdc.dlq   # default {topic}.dlq
//!   - name: split
//!     type: branch
//!     from: cdc
//!     branches:
//!       - name: upserts
//!         when: {field: op, in: [c, r, u]}  # or eq: / not_in: / exists: true
//!       - name: deletes
//!         when: {field: op, eq: d}
//!   - name: collect
//!     type: process
//!     from: upserts
//!     processor: image-collector   # looked up in the Registry
//!     config: {bucket: images}     # handed to the processor factory
//!     concurrency: 64
//!     ordering: key                # key | partition | unordered
//!     retry: {max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 10000, jitter: 0.2}
//!     stores: [seen]               # declared above; only process nodes use stores
//!   - name: events
//!     type: sink
//!     from: collect
//!     topic: image-events
//!     key: string
//!     value: {type: avro, schema: {ref: image-event}}  # or schema: '<Avro JSON>'
//! ```
//!
//! `{ref: name}` names a topic registered with [`Registry::topic`] (where a topic is expected)
//! or an Avro schema registered with [`Registry::avro_schema`] (as a serde's `schema`); an
//! unregistered name is a validation error at its line. A store is a key-value table a
//! processor reads and writes through its context; each task has its own instance, and unless
//! `changelog: false` every write also goes to the compacted topic
//! `<application_id>-<store>-changelog`, from which another instance restores it. Processors
//! sharing a store run in one sub-topology.

mod branch;
mod checks;
mod context;
mod error;
mod file;
mod filter;
mod map;
mod node;
mod plan;
mod process;
mod registry;
mod sink;
mod source;
mod spec;
mod stateful;
mod store;
mod yaml;

pub use branch::{BranchConfig, BranchNodeConfig};
pub use error::{ConfigError, ConfigErrors};
pub use file::{TopologyConfig, validate_file};
pub use filter::FilterConfig;
pub use map::{FlatMapConfig, FunctionConfig, MapConfig};
pub use node::NodeConfig;
pub use plan::TopologyPlan;
pub use process::{ProcessConfig, RetryConfig};
pub use registry::{ProcessorFactory, Registry};
pub use sink::SinkConfig;
pub use source::SourceConfig;
pub use spec::{FieldPredicate, NameRef, OneOrMany, SchemaSpec, SerdeSpec, TopicSpec};
pub use stateful::{CountConfig, GroupByConfig, JoinConfig, TableConfig, WindowConfig};
pub use store::StoreConfig;

#[cfg(test)]
mod tests;
