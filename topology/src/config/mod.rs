//! Topologies from a YAML file.
//!
//! The same topology the builder makes can be written as YAML, so operators change wiring and
//! tuning without recompiling. Processors, map functions, topics and Avro schemas are looked up
//! by name in a [`Registry`] filled in code (a plain name → value map).
//!
//! Each node kind is its own type ([`SourceConfig`], [`FilterConfig`], [`MapConfig`],
//! [`FlatMapConfig`], [`BranchNodeConfig`], [`ProcessConfig`], [`SinkConfig`]) in its own
//! module, with the fields that kind takes (any other field is an error, with its line), its
//! own checks and its own way of adding itself to a [`TopologyBuilder`]; [`NodeConfig`] is
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
mod context;
mod error;
mod filter;
mod flat_map;
mod map;
mod process;
mod registry;
mod sink;
mod source;
mod spec;
mod store;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use marked_yaml::Node;
use serde::Deserialize;

pub use branch::{BranchConfig, BranchNodeConfig};
pub use error::{ConfigError, ConfigErrors};
pub use filter::FilterConfig;
pub use flat_map::FlatMapConfig;
pub use map::MapConfig;
pub use process::{ProcessConfig, RetryConfig};
pub use registry::{ProcessorFactory, Registry};
pub use sink::SinkConfig;
pub use source::SourceConfig;
pub use spec::{FieldPredicate, NameRef, OneOrMany, SchemaSpec, SerdeSpec, TopicSpec};
pub use store::StoreConfig;

use crate::graph::{StoreSpec, Topology, TopologyBuilder};
use crate::serdes::{HttpSchemaRegistry, SchemaRegistry, SerdeFormat};
use context::{NodeContext, TopicUse};

/// One node as written in the file, by its `type`.
///
/// The YAML loader dispatches on `type` itself (see [`NodeConfig::KINDS`]) so that every field
/// keeps its place in the file; the serde derive serves other formats (JSON, for instance).
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
    // The stateful kinds (table, group_by, aggregate, window, join) join here, each with its
    // module, its arm in `KINDS`, `from_yaml_node`, the accessors, `validate` and `PlannedNode`.
}

/// A node that passed validation, ready to add itself to the builder.
enum PlannedNode {
    Source(source::Planned),
    Filter(filter::Planned),
    Map(map::Planned),
    FlatMap(flat_map::Planned),
    Branch(branch::Planned),
    Process(process::Planned),
    Sink(sink::Planned),
}

impl PlannedNode {
    fn build(self, b: &TopologyBuilder) {
        match self {
            PlannedNode::Source(p) => p.build(b),
            PlannedNode::Filter(p) => p.build(b),
            PlannedNode::Map(p) => p.build(b),
            PlannedNode::FlatMap(p) => p.build(b),
            PlannedNode::Branch(p) => p.build(b),
            PlannedNode::Process(p) => p.build(b),
            PlannedNode::Sink(p) => p.build(b),
        }
    }
}

impl NodeConfig {
    /// The values of `type`, in the order the docs list them.
    pub const KINDS: [&'static str; 7] = [
        "source", "filter", "map", "flat_map", "branch", "process", "sink",
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
        }
    }

    /// The upstream node names (none for a source).
    pub fn from(&self) -> Vec<String> {
        let from = match self {
            NodeConfig::Source(_) => None,
            NodeConfig::Filter(n) => n.from.as_ref(),
            NodeConfig::Map(n) => n.from.as_ref(),
            NodeConfig::FlatMap(n) => n.from.as_ref(),
            NodeConfig::Branch(n) => n.from.as_ref(),
            NodeConfig::Process(n) => n.from.as_ref(),
            NodeConfig::Sink(n) => n.from.as_ref(),
        };
        from.map(OneOrMany::to_vec).unwrap_or_default()
    }

    /// Reads node `index` from its YAML mapping, by its `type`.
    fn from_yaml_node(node: &Node, index: usize) -> Result<Self, ConfigError> {
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
        // `config` is free-form JSON for the processor factory: converted apart, so plain
        // numbers and booleans keep their types.
        let config = mapping.get_node("config").map(yaml::to_json);
        let rest = yaml::without(mapping, &["type", "config"]);
        let with_config = yaml::without(mapping, &["type"]);
        let parsed = match kind.as_str() {
            "source" => yaml::deserialize(&with_config, &prefix).map(NodeConfig::Source),
            "filter" => yaml::deserialize(&with_config, &prefix).map(NodeConfig::Filter),
            "map" => yaml::deserialize(&with_config, &prefix).map(NodeConfig::Map),
            "flat_map" => yaml::deserialize(&with_config, &prefix).map(NodeConfig::FlatMap),
            "branch" => yaml::deserialize(&with_config, &prefix).map(NodeConfig::Branch),
            "process" => yaml::deserialize(&rest, &prefix)
                .map(|p: ProcessConfig| NodeConfig::Process(ProcessConfig { config, ..p })),
            "sink" => yaml::deserialize(&with_config, &prefix).map(NodeConfig::Sink),
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
                e.message = "a source has no upstream".into();
            }
            e
        })
    }

    fn validate(&self, cx: &mut NodeContext<'_>) -> Option<PlannedNode> {
        match self {
            NodeConfig::Source(n) => n.validate(cx).map(PlannedNode::Source),
            NodeConfig::Filter(n) => n.validate(cx).map(PlannedNode::Filter),
            NodeConfig::Map(n) => n.validate(cx).map(PlannedNode::Map),
            NodeConfig::FlatMap(n) => n.validate(cx).map(PlannedNode::FlatMap),
            NodeConfig::Branch(n) => n.validate(cx).map(PlannedNode::Branch),
            NodeConfig::Process(n) => n.validate(cx).map(PlannedNode::Process),
            NodeConfig::Sink(n) => n.validate(cx).map(PlannedNode::Sink),
        }
    }
}

/// The top-level fields other than `nodes`, read apart so each node is read by its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    #[serde(default)]
    application_id: Option<String>,
    #[serde(default)]
    schema_registry_url: Option<String>,
    #[serde(default)]
    stores: Vec<StoreConfig>,
}

/// A topology file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Consumer group id.
    #[serde(default)]
    pub application_id: Option<String>,
    /// Schema registry for `avro` serdes, unless the registry in code names one.
    #[serde(default)]
    pub schema_registry_url: Option<String>,
    /// State stores, used by process nodes through their `stores`.
    #[serde(default)]
    pub stores: Vec<StoreConfig>,
    /// The nodes.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// The parsed file, for the line of any path.
    #[serde(skip)]
    tree: Option<Arc<Node>>,
    #[serde(skip)]
    file: Option<String>,
}

impl TopologyConfig {
    /// Parses YAML text: every node by its kind, every problem reported at once.
    ///
    /// # Example
    /// ```
    /// use topology::config::{Registry, TopologyConfig};
    /// let yaml = "nodes:\n  - {name: in, type: source, topic: {ref: input}, value: json}\n  - {name: out, type: sink, from: in, topic: b, value: json}\n";
    /// let cfg = TopologyConfig::from_yaml(yaml).unwrap();
    /// let mut registry = Registry::new();
    /// registry.topic("input", "a");
    /// let topology = cfg.validate(&registry).unwrap().build().unwrap();
    /// assert!(topology.describe().contains("Source: in (topics: [a])"));
    /// assert!(topology.describe().contains("Sink: out (topic: b)"));
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let failed = |errors| ConfigErrors { file: None, errors };
        let tree = yaml::parse(text).map_err(|e| failed(vec![e]))?;
        let Some(root) = tree.as_mapping() else {
            // The loader is told the top level is a mapping; this is only for the type.
            return Err(failed(vec![ConfigError {
                path: "<document>".into(),
                line: None,
                message: "the top level must be a mapping".into(),
            }]));
        };
        let mut errors = Vec::new();
        let header = yaml::deserialize::<Header>(&yaml::without(root, &["nodes"]), "")
            .map_err(|mut e| {
                if e.path.is_empty() {
                    e.path = "<document>".into();
                }
                errors.push(e);
            })
            .ok();
        let mut nodes = Vec::new();
        match root.get_node("nodes") {
            None => {}
            Some(Node::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match NodeConfig::from_yaml_node(item, i) {
                        Ok(n) => nodes.push(n),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Some(Node::Scalar(s)) if s.is_empty() => {}
            Some(other) => errors.push(ConfigError {
                path: "nodes".into(),
                line: yaml::line_of(other.span()),
                message: "`nodes` must be a list".into(),
            }),
        }
        ConfigErrors::check(None, errors)?;
        let header = header.unwrap_or(Header {
            application_id: None,
            schema_registry_url: None,
            stores: Vec::new(),
        });
        Ok(TopologyConfig {
            application_id: header.application_id,
            schema_registry_url: header.schema_registry_url,
            stores: header.stores,
            nodes,
            tree: Some(Arc::new(tree)),
            file: None,
        })
    }

    /// Reads and parses a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: Some(file.clone()),
            errors: vec![ConfigError {
                path: "<file>".into(),
                line: None,
                message: e.to_string(),
            }],
        })?;
        let mut cfg = Self::from_yaml(&text).map_err(|mut e| {
            e.file = Some(file.clone());
            e
        })?;
        cfg.file = Some(file);
        Ok(cfg)
    }

    /// A problem at `path`, with its line when the config came from a file.
    fn error_at(&self, path: String, message: impl Into<String>) -> ConfigError {
        ConfigError {
            line: self.tree.as_deref().and_then(|t| yaml::line_at(t, &path)),
            path,
            message: message.into(),
        }
    }

    /// Checks the whole file against `registry` and returns every problem found, or the plan
    /// [`TopologyPlan::build`] turns into a topology: processors built by their factories
    /// (once), topics and schemas resolved, the schema registry chosen.
    ///
    /// The schema registry is the one set on `registry`, else an HTTP client for
    /// `schema_registry_url`; a file with `avro` serdes and neither is an error.
    pub fn validate(&self, registry: &Registry) -> Result<TopologyPlan, ConfigErrors> {
        let mut errors = Vec::new();
        if self.nodes.is_empty() {
            errors.push(self.error_at("nodes".into(), "a topology needs at least one node"));
        }
        let names = self.names(&mut errors);
        let schema_registry: Option<Arc<dyn SchemaRegistry>> =
            registry.schema_registry.clone().or_else(|| {
                self.schema_registry_url.as_ref().map(|url| {
                    Arc::new(HttpSchemaRegistry::new(url.clone())) as Arc<dyn SchemaRegistry>
                })
            });
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        let mut planned: Vec<Option<PlannedNode>> = Vec::with_capacity(self.nodes.len());
        for (index, node) in self.nodes.iter().enumerate() {
            let mut cx = NodeContext {
                index,
                registry,
                names: &names,
                schema_registry: schema_registry.as_ref(),
                tree: self.tree.as_deref(),
                errors: &mut errors,
                reads: &mut reads,
                writes: &mut writes,
            };
            planned.push(node.validate(&mut cx));
        }
        self.check_topics(&reads, &writes, &mut errors);
        self.check_predicates(&names, &mut errors);
        store::validate(&self.stores, &self.nodes, |path, message| {
            errors.push(self.error_at(path, message));
        });
        let order = match self.dependency_order(&names) {
            Ok(order) => order,
            Err(i) => {
                errors.push(self.error_at(
                    format!("nodes[{i}].from"),
                    format!("cycle through node `{}`", self.nodes[i].name()),
                ));
                Vec::new()
            }
        };
        ConfigErrors::check(self.file.clone(), errors)?;
        let mut nodes = Vec::with_capacity(order.len());
        for i in order {
            // Every node planned: a node that did not plan reported an error above.
            if let Some(node) = planned[i].take() {
                nodes.push(node);
            }
        }
        Ok(TopologyPlan {
            application_id: self.application_id.clone(),
            stores: self.stores.iter().map(StoreConfig::to_spec).collect(),
            nodes,
            file: self.file.clone(),
        })
    }

    /// Validates and builds the topology (see [`TopologyConfig::validate`]).
    pub fn build(&self, registry: &Registry) -> Result<Topology, ConfigErrors> {
        self.validate(registry)?.build()
    }

    /// Node and branch names, each with the index of the node defining it; duplicates are
    /// reported (empty names are left to each kind's check).
    fn names(&self, errors: &mut Vec<ConfigError>) -> HashMap<String, usize> {
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let mut own = vec![(n.name().to_owned(), "name".to_owned())];
            if let NodeConfig::Branch(b) = n {
                for (j, name) in b.branch_names().enumerate() {
                    own.push((name.to_owned(), format!("branches[{j}].name")));
                }
            }
            for (name, field) in own {
                if name.trim().is_empty() {
                    continue;
                }
                if let Some(&first) = names.get(&name) {
                    errors.push(self.error_at(
                        format!("nodes[{i}].{field}"),
                        format!("duplicate name `{name}` (first used by nodes[{first}])"),
                    ));
                } else {
                    names.insert(name, i);
                }
            }
        }
        names
    }

    /// Each topic read by one source; a sink writes a topic with the value format its reader
    /// reads.
    fn check_topics(&self, reads: &[TopicUse], writes: &[TopicUse], errors: &mut Vec<ConfigError>) {
        let mut readers: BTreeMap<&str, &TopicUse> = BTreeMap::new();
        for r in reads {
            if let Some(first) = readers.insert(&r.topic, r) {
                errors.push(self.error_at(
                    format!("nodes[{}].topic", r.node),
                    format!(
                        "topic `{}` is already read by nodes[{}]",
                        r.topic, first.node
                    ),
                ));
            }
        }
        for w in writes {
            if let Some(r) = readers.get(w.topic.as_str())
                && r.format != w.format
            {
                errors.push(self.error_at(
                    format!("nodes[{}].value", w.node),
                    format!(
                        "serde mismatch: writes `{}` as {} but nodes[{}] reads it as {}",
                        w.topic, w.format, r.node, r.format
                    ),
                ));
            }
        }
    }

    /// Field predicates need structured values from the source upstream.
    fn check_predicates(&self, names: &HashMap<String, usize>, errors: &mut Vec<ConfigError>) {
        for (i, n) in self.nodes.iter().enumerate() {
            if !matches!(n, NodeConfig::Filter(_) | NodeConfig::Branch(_)) {
                continue;
            }
            if let Some((src, f)) = self.upstream_source_format(i, names)
                && !f.is_structured()
            {
                errors.push(self.error_at(
                    format!("nodes[{i}].when"),
                    format!(
                        "serde mismatch: field predicates need json or avro values, but source \
                         nodes[{src}] reads {f}"
                    ),
                ));
            }
        }
    }

    /// The source a node's first upstream path leads to, and the value format it reads.
    fn upstream_source_format(
        &self,
        start: usize,
        names: &HashMap<String, usize>,
    ) -> Option<(usize, SerdeFormat)> {
        let mut seen = vec![false; self.nodes.len()];
        let mut cur = start;
        loop {
            if std::mem::replace(&mut seen[cur], true) {
                return None;
            }
            if let NodeConfig::Source(s) = &self.nodes[cur] {
                return SerdeSpec::format_or_bytes(s.value.as_ref()).map(|f| (cur, f));
            }
            cur = *names.get(self.nodes[cur].from().first()?)?;
        }
    }

    /// The nodes, each after its upstream ones; `Err(i)` when node `i` is on a cycle.
    fn dependency_order(&self, names: &HashMap<String, usize>) -> Result<Vec<usize>, usize> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Unseen,
            OnStack,
            Done,
        }
        fn visit(
            cfg: &TopologyConfig,
            names: &HashMap<String, usize>,
            i: usize,
            marks: &mut [Mark],
            order: &mut Vec<usize>,
        ) -> Result<(), usize> {
            match marks[i] {
                Mark::OnStack => return Err(i),
                Mark::Done => return Ok(()),
                Mark::Unseen => {}
            }
            marks[i] = Mark::OnStack;
            for f in cfg.nodes[i].from() {
                // A branch's branches are its own nodes: the branch node is their upstream.
                if let Some(&p) = names.get(&f)
                    && p != i
                {
                    visit(cfg, names, p, marks, order)?;
                }
            }
            marks[i] = Mark::Done;
            order.push(i);
            Ok(())
        }
        let mut marks = vec![Mark::Unseen; self.nodes.len()];
        let mut order = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            visit(self, names, i, &mut marks, &mut order)?;
        }
        Ok(order)
    }
}

/// A checked topology file, ready to build: what [`TopologyConfig::validate`] returns and
/// [`TopologyPlan::build`] consumes, so nothing is checked twice.
pub struct TopologyPlan {
    application_id: Option<String>,
    stores: Vec<StoreSpec>,
    /// In dependency order: each node after its upstream ones.
    nodes: Vec<PlannedNode>,
    file: Option<String>,
}

impl fmt::Debug for TopologyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopologyPlan")
            .field("application_id", &self.application_id)
            .field("stores", &self.stores)
            .field("nodes", &self.nodes.len())
            .field("file", &self.file)
            .finish()
    }
}

impl TopologyPlan {
    /// The file's `application_id`, if it names one.
    pub fn application_id(&self) -> Option<&str> {
        self.application_id.as_deref()
    }

    /// Adds every store and node to a builder and builds the topology.
    ///
    /// The builder's own checks cannot fail on a plan; should one, its errors come back
    /// without a line.
    pub fn build(self) -> Result<Topology, ConfigErrors> {
        let b = TopologyBuilder::new();
        for s in self.stores {
            b.store(s);
        }
        for node in self.nodes {
            node.build(&b);
        }
        b.build().map_err(|es| ConfigErrors {
            file: self.file,
            errors: es
                .into_iter()
                .map(|e| ConfigError {
                    path: "nodes".into(),
                    line: None,
                    message: e.to_string(),
                })
                .collect(),
        })
    }
}

/// Loads, validates and builds a topology file: the `validate` entry point for tools.
pub fn validate_file(path: &Path, registry: &Registry) -> Result<Topology, ConfigErrors> {
    TopologyConfig::from_file(path)?.validate(registry)?.build()
}

#[cfg(test)]
mod tests;
