//! [`NodeConfig`]: the `type`-tagged union of the node kinds, read from YAML by its `type`,
//! and [`PlannedNode`], the union of what each kind's `validate` returns.

use marked_yaml::Node;
use serde::Deserialize;

use super::context::NodeContext;
use super::stateful::{CountConfig, JoinConfig, TableConfig};
use super::{
    BranchNodeConfig, ConfigError, FilterConfig, FlatMapConfig, MapConfig, OneOrMany,
    ProcessConfig, SinkConfig, SourceConfig,
};
use super::{branch, filter, map, process, sink, source, stateful, yaml};
use crate::graph::TopologyBuilder;

/// One node as written in the file, by its `type`.
///
/// The YAML loader reads `type` first and then the kind's own struct from the same mapping, so
/// every field keeps its place in the file: serde's internally tagged enums buffer the fields
/// first, which loses the YAML marks (and types plain scalars as text). The derive serves
/// self-describing formats such as JSON.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeConfig {
    /// Reads topics.
    Source(SourceConfig),
    /// Keeps records matching a predicate.
    Filter(FilterConfig),
    /// One record to one record.
    Map(MapConfig),
    /// One record to any number.
    FlatMap(FlatMapConfig),
    /// Splits a stream by predicates.
    Branch(BranchNodeConfig),
    /// Runs an async processor.
    Process(ProcessConfig),
    /// Writes a topic.
    Sink(SinkConfig),
    /// A table of a topic (or of a Debezium topic).
    Table(TableConfig),
    /// Counts per key, or per key and window.
    Count(CountConfig),
    /// Joins a stream to a table.
    Join(JoinConfig),
}

/// A node that passed validation, ready to add itself to the builder.
pub(super) enum PlannedNode {
    Source(source::Planned),
    Filter(filter::Planned),
    Map(map::Planned),
    FlatMap(map::Planned),
    Branch(branch::Planned),
    Process(process::Planned),
    Sink(sink::Planned),
    Table(stateful::PlannedTable),
    Count(stateful::PlannedCount),
    Join(stateful::PlannedJoin),
}

impl PlannedNode {
    pub(super) fn build(self, b: &TopologyBuilder) {
        match self {
            PlannedNode::Source(p) => p.build(b),
            PlannedNode::Filter(p) => p.build(b),
            PlannedNode::Map(p) => p.build(b),
            PlannedNode::FlatMap(p) => p.build(b),
            PlannedNode::Branch(p) => p.build(b),
            PlannedNode::Process(p) => p.build(b),
            PlannedNode::Sink(p) => p.build(b),
            PlannedNode::Table(p) => p.build(b),
            PlannedNode::Count(p) => p.build(b),
            PlannedNode::Join(p) => p.build(b),
        }
    }
}

impl NodeConfig {
    /// The values of `type`, in the order the docs list them.
    pub const KINDS: [&'static str; 10] = [
        "source", "filter", "map", "flat_map", "branch", "process", "sink", "table", "count",
        "join",
    ];

    /// The node's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeConfig::Source(_) => "source",
            NodeConfig::Filter(_) => "filter",
            NodeConfig::Map(_) => "map",
            NodeConfig::FlatMap(_) => "flat_map",
            NodeConfig::Branch(_) => "branch",
            NodeConfig::Process(_) => "process",
            NodeConfig::Sink(_) => "sink",
            NodeConfig::Table(_) => "table",
            NodeConfig::Count(_) => "count",
            NodeConfig::Join(_) => "join",
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        match self {
            NodeConfig::Source(n) => &n.name,
            NodeConfig::Filter(n) => &n.name,
            NodeConfig::Map(n) => &n.name,
            NodeConfig::FlatMap(n) => &n.name,
            NodeConfig::Branch(n) => &n.name,
            NodeConfig::Process(n) => &n.name,
            NodeConfig::Sink(n) => &n.name,
            NodeConfig::Table(n) => &n.name,
            NodeConfig::Count(n) => &n.name,
            NodeConfig::Join(n) => &n.name,
        }
    }

    /// The upstream node names (none for a source).
    pub fn from(&self) -> Vec<String> {
        let from = match self {
            NodeConfig::Source(_) | NodeConfig::Table(_) => None,
            NodeConfig::Filter(n) => n.from.as_ref(),
            NodeConfig::Map(n) => n.from.as_ref(),
            NodeConfig::FlatMap(n) => n.from.as_ref(),
            NodeConfig::Branch(n) => n.from.as_ref(),
            NodeConfig::Process(n) => n.from.as_ref(),
            NodeConfig::Sink(n) => n.from.as_ref(),
            NodeConfig::Count(n) => n.from.as_ref(),
            NodeConfig::Join(n) => n.from.as_ref(),
        };
        from.map(OneOrMany::to_vec).unwrap_or_default()
    }

    /// Reads node `index` from its YAML mapping, by its `type`.
    pub(super) fn from_yaml_node(node: &Node, index: usize) -> Result<Self, ConfigError> {
        let prefix = format!("nodes[{index}]");
        let here = |field: &str, message: String| ConfigError {
            path: format!("{prefix}{field}"),
            line: yaml::line_of(node.span()),
            message,
        };
        let Some(mapping) = node.as_mapping() else {
            return Err(here("", "a node is a mapping of its fields".into()));
        };
        let Some(kind) = mapping.get_scalar("type") else {
            return Err(here(
                ".type",
                format!("a node needs `type` (one of {})", Self::KINDS.join(", ")),
            ));
        };
        let fields = yaml::without(mapping, &["type"]);
        let parsed = match kind.as_str() {
            "source" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Source),
            "filter" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Filter),
            "map" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Map),
            "flat_map" => yaml::deserialize(&fields, &prefix).map(NodeConfig::FlatMap),
            "branch" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Branch),
            "process" => {
                // `config` is free-form JSON for the processor factory: converted apart, so
                // plain numbers and booleans keep their types.
                let config = mapping.get_node("config").map(yaml::to_json);
                let fields = yaml::without(mapping, &["type", "config"]);
                yaml::deserialize(&fields, &prefix)
                    .map(|p: ProcessConfig| NodeConfig::Process(ProcessConfig { config, ..p }))
            }
            "sink" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Sink),
            "table" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Table),
            "count" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Count),
            "join" => yaml::deserialize(&fields, &prefix).map(NodeConfig::Join),
            other => {
                return Err(ConfigError {
                    path: format!("{prefix}.type"),
                    line: yaml::line_of(kind.span()),
                    message: format!(
                        "unknown node type `{other}` (expected one of {})",
                        Self::KINDS.join(", ")
                    ),
                });
            }
        };
        parsed.map_err(|mut e| {
            // Fields some kinds take and others do not: say which kinds.
            let unknown = |field: &str| {
                e.path == format!("{prefix}.{field}") && e.message.starts_with("Unknown field")
            };
            if unknown("stores") {
                e.message = format!(
                    "only process nodes use stores (this is a {} node)",
                    kind.as_str()
                );
            } else if unknown("from") {
                e.message = format!("a {} node has no upstream", kind.as_str());
            }
            e
        })
    }

    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<PlannedNode> {
        match self {
            NodeConfig::Source(n) => n.validate(cx).map(PlannedNode::Source),
            NodeConfig::Filter(n) => n.validate(cx).map(PlannedNode::Filter),
            NodeConfig::Map(n) => n.validate_map(cx).map(PlannedNode::Map),
            NodeConfig::FlatMap(n) => n.validate_flat_map(cx).map(PlannedNode::FlatMap),
            NodeConfig::Branch(n) => n.validate(cx).map(PlannedNode::Branch),
            NodeConfig::Process(n) => n.validate(cx).map(PlannedNode::Process),
            NodeConfig::Sink(n) => n.validate(cx).map(PlannedNode::Sink),
            NodeConfig::Table(n) => n.validate(cx).map(PlannedNode::Table),
            NodeConfig::Count(n) => n.validate(cx).map(PlannedNode::Count),
            NodeConfig::Join(n) => n.validate(cx).map(PlannedNode::Join),
        }
    }
}
