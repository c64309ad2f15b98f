//! Topologies from a YAML file.
//!
//! The same topology the builder makes can be written as YAML, so operators change wiring and
//! tuning without recompiling. Processors and map functions are looked up by name in a
//! [`Registry`] filled in code (a plain name → factory map). [`TopologyConfig::validate`] checks
//! everything before anything connects and reports every problem at once, each with its place
//! (`nodes[2].processor`) and, where it can be found, its line. The format:
//!
//! ```yaml
//! application_id: diff-checker
//! schema_registry_url: http://127.0.0.1:8081   # needed by `avro` serdes
//! stores:                          # state stores, one instance per task of the processors using them
//!   - name: seen                   # [A-Za-z0-9_.-], at most 200 bytes
//!     changelog: true              # default true: topic <application_id>-seen-changelog
//!     cache_entries: 1024          # default 0: no read cache
//! nodes:
//!   - name: cdc
//!     type: source                 # source | filter | map | flat_map | branch | process | sink
//!     topic: products.cdc          # or topics: [a, b]
//!     key: string                  # bytes | string | json | avro | {type: avro, schema: '...'}
//!     value: json
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
//!     value: json
//! ```
//!
//! A store is a key-value table a processor reads and writes through its context; each task
//! has its own instance, and unless `changelog: false` every write also goes to the compacted
//! topic `<application_id>-<store>-changelog`, from which another instance restores it.
//! Processors sharing a store run in one sub-topology.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::graph::{FlatMapFn, MapFn, NodeKind, Predicate, StoreSpec, Topology, TopologyBuilder};
use crate::processor::{AsyncOptions, Ordering, Processor, RetryPolicy};
use crate::serdes::{
    AvroSerde, BytesSerde, HttpSchemaRegistry, JsonSerde, SchemaRegistry, SerdeFormat, SerdeRef,
    StringSerde,
};

/// Builds a processor from a node's `config` block.
pub type ProcessorFactory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Arc<dyn Processor>, String> + Send + Sync>;

/// Names the configuration file may refer to, filled in code.
///
/// # Example
/// ```
/// use topology::{config::Registry, processor_fn, ProcessError};
/// let mut r = Registry::new();
/// r.processor("echo", |_cfg| Ok(processor_fn(|rec| async move { Ok::<_, ProcessError>(vec![rec]) })));
/// assert!(r.has_processor("echo"));
/// ```
#[derive(Default, Clone)]
pub struct Registry {
    processors: HashMap<String, ProcessorFactory>,
    maps: HashMap<String, MapFn>,
    flat_maps: HashMap<String, FlatMapFn>,
    schema_registry: Option<Arc<dyn SchemaRegistry>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a processor factory.
    pub fn processor(
        &mut self,
        name: &str,
        factory: impl Fn(&serde_json::Value) -> Result<Arc<dyn Processor>, String>
        + Send
        + Sync
        + 'static,
    ) -> &mut Self {
        self.processors.insert(name.to_owned(), Arc::new(factory));
        self
    }
    /// Registers a map function.
    pub fn map(
        &mut self,
        name: &str,
        f: impl Fn(crate::Record) -> crate::Record + Send + Sync + 'static,
    ) -> &mut Self {
        self.maps.insert(name.to_owned(), Arc::new(f));
        self
    }
    /// Registers a flat-map function.
    pub fn flat_map(
        &mut self,
        name: &str,
        f: impl Fn(crate::Record) -> Vec<crate::Record> + Send + Sync + 'static,
    ) -> &mut Self {
        self.flat_maps.insert(name.to_owned(), Arc::new(f));
        self
    }
    /// Uses this schema registry for `avro` serdes (instead of `schema_registry_url`).
    pub fn schema_registry(&mut self, registry: Arc<dyn SchemaRegistry>) -> &mut Self {
        self.schema_registry = Some(registry);
        self
    }
    /// Whether a processor of this name exists.
    pub fn has_processor(&self, name: &str) -> bool {
        self.processors.contains_key(name)
    }
    fn known(map: &HashMap<String, impl Sized>) -> String {
        let mut k: Vec<_> = map.keys().map(String::as_str).collect();
        k.sort_unstable();
        k.join(", ")
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `nodes[2].processor`.
    pub path: String,
    /// Line in the file (1-based), when found.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file, when loaded from one.
    pub file: Option<String>,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<topology>");
        writeln!(f, "{} problem(s) in {file}:", self.errors.len())?;
        for e in &self.errors {
            writeln!(f, "  {file}: {e}")?;
        }
        Ok(())
    }
}

/// A serde as written in the file: a name, or a map with a type and an Avro schema.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SerdeSpec {
    /// `string`, `bytes`, `json` or `avro`.
    Name(String),
    /// `{type: avro, schema: '{...}'}`.
    Full {
        /// Serde name.
        #[serde(rename = "type")]
        kind: String,
        /// Avro schema (JSON text).
        #[serde(default)]
        schema: Option<String>,
    },
}

impl SerdeSpec {
    fn kind(&self) -> &str {
        match self {
            SerdeSpec::Name(n) => n,
            SerdeSpec::Full { kind, .. } => kind,
        }
    }
    fn schema(&self) -> Option<&str> {
        match self {
            SerdeSpec::Name(_) => None,
            SerdeSpec::Full { schema, .. } => schema.as_deref(),
        }
    }
    fn format(&self) -> Option<SerdeFormat> {
        match self.kind() {
            "bytes" => Some(SerdeFormat::Bytes),
            "string" => Some(SerdeFormat::String),
            "json" => Some(SerdeFormat::Json),
            "avro" => Some(SerdeFormat::Avro),
            _ => None,
        }
    }
}

/// One or several names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A predicate on a field of the record value.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldPredicate {
    /// Dotted path into the value (`op`, `after.mallId`).
    pub field: String,
    /// Equal to.
    #[serde(default)]
    pub eq: Option<String>,
    /// One of.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    /// None of.
    #[serde(default)]
    pub not_in: Option<Vec<String>>,
    /// Present (true) or absent (false).
    #[serde(default)]
    pub exists: Option<bool>,
}

impl FieldPredicate {
    fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.field.trim().is_empty() {
            v.push("`field` must not be empty".to_owned());
        }
        let n = [
            self.eq.is_some(),
            self.in_.is_some(),
            self.not_in.is_some(),
            self.exists.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            v.push("give exactly one of `eq`, `in`, `not_in`, `exists`".to_owned());
        }
        v
    }

    /// The predicate as a function.
    pub fn to_predicate(&self) -> Predicate {
        let p = self.clone();
        Arc::new(move |r| {
            let got = r.value.as_ref().and_then(|v| v.field_str(&p.field));
            if let Some(e) = &p.exists {
                return got.is_some() == *e;
            }
            match got {
                None => p.not_in.is_some(),
                Some(g) => {
                    if let Some(eq) = &p.eq {
                        &g == eq
                    } else if let Some(list) = &p.in_ {
                        list.contains(&g)
                    } else if let Some(list) = &p.not_in {
                        !list.contains(&g)
                    } else {
                        false
                    }
                }
            }
        })
    }
}

/// A branch of a `branch` node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BranchConfig {
    /// Name of the branch node.
    pub name: String,
    /// Predicate.
    pub when: FieldPredicate,
}

/// Retry settings in the file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First backoff, ms.
    #[serde(default)]
    pub initial_backoff_ms: Option<u64>,
    /// Maximum backoff, ms.
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
    /// Jitter in 0..=1.
    #[serde(default)]
    pub jitter: Option<f64>,
}

/// One node as written in the file.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// `source`, `filter`, `map`, `flat_map`, `branch`, `process` or `sink`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Upstream node(s).
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// Topic (source, sink).
    #[serde(default)]
    pub topic: Option<String>,
    /// Topics (source).
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// Key serde (default `bytes`).
    #[serde(default)]
    pub key: Option<SerdeSpec>,
    /// Value serde (default `bytes`).
    #[serde(default)]
    pub value: Option<SerdeSpec>,
    /// Dead-letter topic (source).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Predicate (filter).
    #[serde(default)]
    pub when: Option<FieldPredicate>,
    /// Branches (branch).
    #[serde(default)]
    pub branches: Option<Vec<BranchConfig>>,
    /// Function name (map, flat_map).
    #[serde(default)]
    pub function: Option<String>,
    /// Processor name (process).
    #[serde(default)]
    pub processor: Option<String>,
    /// Processor settings, handed to its factory.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Concurrency (process).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Ordering (process).
    #[serde(default)]
    pub ordering: Option<String>,
    /// Retries (process).
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Stores the processor uses, by name (process; declared under the top-level `stores`).
    #[serde(default)]
    pub stores: Option<Vec<String>>,
}

/// A state store as written in the top-level `stores` list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Unique name: the store's sled tree and part of its changelog topic's name.
    // Defaulted so a missing name is reported by `validate` with its place, like a node's.
    #[serde(default)]
    pub name: String,
    /// Whether writes go to `<application_id>-<name>-changelog` (default true: without it a
    /// task moved to another instance starts with an empty store).
    #[serde(default = "changelog_default")]
    pub changelog: bool,
    /// Entries kept in a read cache in front of sled (default 0: none).
    #[serde(default)]
    pub cache_entries: usize,
}

fn changelog_default() -> bool {
    true
}

impl StoreConfig {
    /// The store as the builder takes it.
    pub fn to_spec(&self) -> StoreSpec {
        let spec = StoreSpec::new(&self.name).cache_entries(self.cache_entries);
        if self.changelog {
            spec
        } else {
            spec.without_changelog()
        }
    }
}

/// Why `name` cannot name a store, if it cannot: the `state` crate's rule (its store names
/// become sled tree names and part of a Kafka topic name), checked here so a bad name is
/// reported with its line before any task opens a store.
fn store_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a store name is required")
    } else if name.len() > 200 {
        Some("longer than 200 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only [A-Za-z0-9_.-] allowed")
    } else {
        None
    }
}

/// A topology file.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Consumer group id.
    #[serde(default)]
    pub application_id: Option<String>,
    /// Schema registry for `avro` serdes.
    #[serde(default)]
    pub schema_registry_url: Option<String>,
    /// State stores, used by process nodes through their `stores`.
    #[serde(default)]
    pub stores: Vec<StoreConfig>,
    /// The nodes.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    #[serde(skip)]
    source_text: Option<String>,
    #[serde(skip)]
    file: Option<String>,
}

const KINDS: [&str; 7] = [
    "source", "filter", "map", "flat_map", "branch", "process", "sink",
];

impl TopologyConfig {
    /// Parses YAML text.
    ///
    /// # Example
    /// ```
    /// use topology::config::{Registry, TopologyConfig};
    /// let yaml = "nodes:\n  - {name: in, type: source, topic: a, value: json}\n  - {name: out, type: sink, from: in, topic: b, value: json}\n";
    /// let cfg = TopologyConfig::from_yaml(yaml).unwrap();
    /// let topology = cfg.build(&Registry::new()).unwrap();
    /// assert!(topology.describe().contains("Sink: out (topic: b)"));
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let mut cfg: TopologyConfig = serde_norway::from_str(text).map_err(|e| ConfigErrors {
            file: None,
            errors: vec![ConfigError {
                path: "<document>".into(),
                line: e.location().map(|l| l.line()),
                message: e.to_string(),
            }],
        })?;
        cfg.source_text = Some(text.to_owned());
        Ok(cfg)
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

    fn line_of(&self, node: usize, key: Option<&str>) -> Option<usize> {
        self.line_in("nodes", node, key)
    }

    /// The line (1-based) of item `index` of the top-level list `section`, or of its `key`
    /// (the item's first line when the key is not written out).
    fn line_in(&self, section: &str, index: usize, key: Option<&str>) -> Option<usize> {
        let text = self.source_text.as_deref()?;
        let lines: Vec<&str> = text.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        // Only the top-level key: a process node's own `stores:` must not be taken for the
        // top-level list, whichever comes first.
        let top = lines
            .iter()
            .find(|l| {
                let t = l.trim_start();
                !(t.is_empty() || t.starts_with('#') || t.starts_with("---"))
            })
            .map(|l| indent(l))?;
        let header = format!("{section}:");
        let start = lines
            .iter()
            .position(|l| indent(l) == top && l.trim_start().starts_with(&header))?;
        let mut items = Vec::new();
        let mut indent = None;
        for (i, l) in lines.iter().enumerate().skip(start + 1) {
            let t = l.trim_start();
            let ind = l.len() - t.len();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if indent.is_none() && t.starts_with("- ") {
                indent = Some(ind);
            }
            match indent {
                Some(n) if ind == n && t.starts_with("- ") => items.push(i),
                Some(n) if ind < n => break,
                None if ind == 0 => break,
                _ => {}
            }
        }
        let first = *items.get(index)?;
        let end = items.get(index + 1).copied().unwrap_or(lines.len());
        let Some(key) = key else {
            return Some(first + 1);
        };
        let needle = format!("{key}:");
        (first..end)
            .find(|&i| {
                let t = lines[i].trim_start().trim_start_matches("- ");
                t.starts_with(&needle)
                    || lines[i].contains(&format!("{{{needle}"))
                    || lines[i].contains(&format!(" {needle}"))
            })
            .or(Some(first))
            .map(|i| i + 1)
    }

    /// The line of entry `j` of the list under `key` in node `node`: the entry's own line when
    /// the list is written as a block (`- a` lines), else the key's line.
    fn line_of_entry(&self, node: usize, key: &str, j: usize) -> Option<usize> {
        let line = self.line_of(node, Some(key))?;
        let text = self.source_text.as_deref()?;
        let lines: Vec<&str> = text.lines().collect();
        let needle = format!("{key}:");
        let key_line = lines.get(line - 1)?;
        let Some(col) = key_line.find(&needle) else {
            return Some(line);
        };
        let rest = key_line[col + needle.len()..].trim();
        if !(rest.is_empty() || rest.starts_with('#')) {
            return Some(line); // a flow list (`[a, b]`) on the key's line
        }
        let mut seen = 0;
        for (i, l) in lines.iter().enumerate().skip(line) {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let ind = l.len() - t.len();
            let entry = t.starts_with("- ") || t == "-";
            if ind < col || (ind == col && !entry) {
                break;
            }
            if entry {
                if seen == j {
                    return Some(i + 1);
                }
                seen += 1;
            }
        }
        Some(line)
    }

    fn err(&self, errors: &mut Vec<ConfigError>, node: usize, field: Option<&str>, msg: String) {
        let path = match field {
            Some(f) => format!("nodes[{node}].{f}"),
            None => format!("nodes[{node}]"),
        };
        let key = field.map(|f| {
            let last = f.rsplit('.').next().unwrap_or(f);
            last.split('[').next().unwrap_or(last)
        });
        errors.push(ConfigError {
            path,
            line: self.line_of(node, key),
            message: msg,
        });
    }

    /// Checks the whole file against `registry` and returns every problem found.
    pub fn validate(&self, registry: &Registry) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        if self.nodes.is_empty() {
            errors.push(ConfigError {
                path: "nodes".into(),
                line: None,
                message: "a topology needs at least one node".into(),
            });
        }
        // Names: node names plus branch names.
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let mut own = vec![(n.name.clone(), "name".to_owned())];
            for (j, b) in n.branches.iter().flatten().enumerate() {
                own.push((b.name.clone(), format!("branches[{j}].name")));
            }
            for (name, field) in own {
                if name.trim().is_empty() {
                    self.err(&mut errors, i, Some(&field), "a name is required".into());
                } else if let Some(&first) = names.get(&name) {
                    self.err(
                        &mut errors,
                        i,
                        Some(&field),
                        format!("duplicate name `{name}` (first used by nodes[{first}])"),
                    );
                } else {
                    names.insert(name, i);
                }
            }
        }
        let avro_available =
            registry.schema_registry.is_some() || self.schema_registry_url.is_some();
        let mut readers: BTreeMap<String, (usize, SerdeFormat)> = BTreeMap::new();
        let mut writers: Vec<(usize, String, SerdeFormat)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !KINDS.contains(&n.kind.as_str()) {
                self.err(
                    &mut errors,
                    i,
                    Some("type"),
                    format!(
                        "unknown node type `{}` (expected one of {})",
                        n.kind,
                        KINDS.join(", ")
                    ),
                );
                continue;
            }
            let is_source = n.kind == "source";
            match (&n.from, is_source) {
                (Some(_), true) => self.err(
                    &mut errors,
                    i,
                    Some("from"),
                    "a source has no upstream".into(),
                ),
                (None, false) => self.err(
                    &mut errors,
                    i,
                    Some("from"),
                    format!("a {} node needs `from`", n.kind),
                ),
                (Some(from), false) => {
                    for f in from.to_vec() {
                        if !names.contains_key(&f) {
                            self.err(
                                &mut errors,
                                i,
                                Some("from"),
                                format!("unknown upstream node `{f}`"),
                            );
                        }
                    }
                }
                (None, true) => {}
            }
            for (field, spec) in [("key", &n.key), ("value", &n.value)] {
                if let Some(spec) = spec {
                    match spec.format() {
                        None => self.err(
                            &mut errors,
                            i,
                            Some(field),
                            format!(
                                "unknown serde `{}` (expected bytes, string, json or avro)",
                                spec.kind()
                            ),
                        ),
                        Some(SerdeFormat::Avro) => {
                            if !avro_available {
                                self.err(
                                    &mut errors,
                                    i,
                                    Some(field),
                                    "avro needs `schema_registry_url` (or a registry set in code)"
                                        .into(),
                                );
                            }
                            if let Some(s) = spec.schema()
                                && let Err(e) = apache_avro::Schema::parse_str(s)
                            {
                                self.err(
                                    &mut errors,
                                    i,
                                    Some(&format!("{field}.schema")),
                                    format!("invalid Avro schema: {e}"),
                                );
                            }
                            if n.kind == "sink" && spec.schema().is_none() {
                                self.err(
                                    &mut errors,
                                    i,
                                    Some(field),
                                    "an avro sink needs a `schema` to write with".into(),
                                );
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            let value_format = n
                .value
                .as_ref()
                .map_or(Some(SerdeFormat::Bytes), SerdeSpec::format);
            match n.kind.as_str() {
                "source" | "sink" => {
                    let topics: Vec<String> = match (&n.topic, &n.topics) {
                        (Some(t), None) => vec![t.clone()],
                        (None, Some(ts)) if is_source => ts.clone(),
                        (Some(_), Some(_)) => {
                            self.err(
                                &mut errors,
                                i,
                                Some("topics"),
                                "give `topic` or `topics`, not both".into(),
                            );
                            vec![]
                        }
                        _ => {
                            self.err(
                                &mut errors,
                                i,
                                Some("topic"),
                                format!("a {} needs a topic", n.kind),
                            );
                            vec![]
                        }
                    };
                    for t in topics {
                        if t.trim().is_empty() {
                            self.err(&mut errors, i, Some("topic"), "empty topic name".into());
                            continue;
                        }
                        let Some(f) = value_format else { continue };
                        if is_source {
                            if let Some((first, _)) = readers.insert(t.clone(), (i, f)) {
                                self.err(
                                    &mut errors,
                                    i,
                                    Some("topic"),
                                    format!("topic `{t}` is already read by nodes[{first}]"),
                                );
                            }
                        } else {
                            writers.push((i, t, f));
                        }
                    }
                }
                "filter" => match &n.when {
                    None => self.err(&mut errors, i, Some("when"), "a filter needs `when`".into()),
                    Some(p) => {
                        for m in p.problems() {
                            self.err(&mut errors, i, Some("when"), m);
                        }
                    }
                },
                "branch" => match &n.branches {
                    None => self.err(
                        &mut errors,
                        i,
                        Some("branches"),
                        "a branch needs `branches`".into(),
                    ),
                    Some(bs) if bs.is_empty() => self.err(
                        &mut errors,
                        i,
                        Some("branches"),
                        "a branch needs at least one branch".into(),
                    ),
                    Some(bs) => {
                        for (j, b) in bs.iter().enumerate() {
                            for m in b.when.problems() {
                                self.err(&mut errors, i, Some(&format!("branches[{j}].when")), m);
                            }
                        }
                    }
                },
                "map" | "flat_map" => {
                    let known = if n.kind == "map" {
                        n.function.as_ref().map(|f| {
                            (
                                registry.maps.contains_key(f),
                                Registry::known(&registry.maps),
                            )
                        })
                    } else {
                        n.function.as_ref().map(|f| {
                            (
                                registry.flat_maps.contains_key(f),
                                Registry::known(&registry.flat_maps),
                            )
                        })
                    };
                    match (known, &n.function) {
                        (Some((false, known)), Some(f)) => self.err(
                            &mut errors,
                            i,
                            Some("function"),
                            format!("unknown {} function `{f}` (registered: {known})", n.kind),
                        ),
                        (None, _) => self.err(
                            &mut errors,
                            i,
                            Some("function"),
                            format!("a {} needs `function`", n.kind),
                        ),
                        _ => {}
                    }
                }
                "process" => {
                    match &n.processor {
                        None => self.err(
                            &mut errors,
                            i,
                            Some("processor"),
                            "a process node needs `processor`".into(),
                        ),
                        Some(p) => match registry.processors.get(p) {
                            None => self.err(
                                &mut errors,
                                i,
                                Some("processor"),
                                format!(
                                    "unknown processor `{p}` (registered: {})",
                                    Registry::known(&registry.processors)
                                ),
                            ),
                            Some(factory) => {
                                if let Err(e) =
                                    factory(n.config.as_ref().unwrap_or(&serde_json::Value::Null))
                                {
                                    self.err(
                                        &mut errors,
                                        i,
                                        Some("config"),
                                        format!("processor `{p}` rejects its config: {e}"),
                                    );
                                }
                            }
                        },
                    }
                    if n.concurrency == Some(0) {
                        self.err(
                            &mut errors,
                            i,
                            Some("concurrency"),
                            "concurrency must be at least 1".into(),
                        );
                    }
                    if let Some(o) = &n.ordering
                        && parse_ordering(o).is_none()
                    {
                        self.err(
                            &mut errors,
                            i,
                            Some("ordering"),
                            format!(
                                "unknown ordering `{o}` (expected key, partition or unordered)"
                            ),
                        );
                    }
                    if let Some(r) = &n.retry {
                        if r.max_attempts == Some(0) {
                            self.err(
                                &mut errors,
                                i,
                                Some("retry.max_attempts"),
                                "max_attempts must be at least 1".into(),
                            );
                        }
                        if let Some(j) = r.jitter
                            && !(0.0..=1.0).contains(&j)
                        {
                            self.err(
                                &mut errors,
                                i,
                                Some("retry.jitter"),
                                format!("jitter {j} is outside 0..=1"),
                            );
                        }
                        if let (Some(a), Some(b)) = (r.initial_backoff_ms, r.max_backoff_ms)
                            && a > b
                        {
                            self.err(
                                &mut errors,
                                i,
                                Some("retry.initial_backoff_ms"),
                                format!("initial backoff {a} ms exceeds max backoff {b} ms"),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        self.validate_stores(&mut errors);
        // Serde mismatches between a sink and the source reading the same topic.
        for (i, t, f) in &writers {
            if let Some((r, rf)) = readers.get(t)
                && rf != f
            {
                self.err(
                    &mut errors,
                    *i,
                    Some("value"),
                    format!("serde mismatch: writes `{t}` as {f} but nodes[{r}] reads it as {rf}"),
                );
            }
        }
        // Field predicates need structured values upstream.
        for (i, n) in self.nodes.iter().enumerate() {
            let has_pred = n.when.is_some() || n.branches.is_some();
            if has_pred
                && let Some((src, f)) = self.upstream_source_format(i, &names)
                && !f.is_structured()
            {
                self.err(&mut errors, i, Some("when"), format!("serde mismatch: field predicates need json or avro values, but source nodes[{src}] reads {f}"));
            }
        }
        // Cycles through `from`.
        if let Some(i) = self.find_cycle(&names) {
            self.err(
                &mut errors,
                i,
                Some("from"),
                format!("cycle through node `{}`", self.nodes[i].name),
            );
        }
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors {
                file: self.file.clone(),
                errors,
            })
        }
    }

    /// Stores: each declared once, under a name the `state` crate accepts; every store a process
    /// node lists declared; every declared store used. The builder rejects unknown, unused and
    /// duplicate stores too, but without a place in the file; here each gets its path and line.
    fn validate_stores(&self, errors: &mut Vec<ConfigError>) {
        let mut declared: HashMap<&str, usize> = HashMap::new();
        for (k, s) in self.stores.iter().enumerate() {
            let line = self.line_in("stores", k, Some("name"));
            let path = format!("stores[{k}].name");
            if let Some(reason) = store_name_problem(&s.name) {
                let message = if s.name.is_empty() {
                    reason.to_owned()
                } else {
                    format!(
                        "invalid store name `{}`: {reason} (a store's name is its sled tree's \
                         and part of its topic `<application_id>-<store>-changelog`)",
                        s.name
                    )
                };
                errors.push(ConfigError {
                    path: path.clone(),
                    line,
                    message,
                });
            }
            if s.name.is_empty() {
                continue;
            }
            // An invalid name still counts as declared, so the nodes using it are not also
            // told it is unknown.
            match declared.get(s.name.as_str()) {
                Some(first) => errors.push(ConfigError {
                    path,
                    line,
                    message: format!(
                        "duplicate store `{}` (first declared by stores[{first}])",
                        s.name
                    ),
                }),
                None => {
                    declared.insert(&s.name, k);
                }
            }
        }
        let known = {
            let mut k: Vec<&str> = declared.keys().copied().collect();
            k.sort_unstable();
            k.join(", ")
        };
        let mut used: HashSet<&str> = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(stores) = &n.stores else { continue };
            if n.kind != "process" {
                // An unknown type is reported already; its stores say nothing more.
                if KINDS.contains(&n.kind.as_str()) {
                    self.err(
                        errors,
                        i,
                        Some("stores"),
                        format!("only process nodes use stores (this is a {} node)", n.kind),
                    );
                }
                continue;
            }
            for (j, name) in stores.iter().enumerate() {
                let message = if !declared.contains_key(name.as_str()) {
                    if known.is_empty() {
                        format!("unknown store `{name}` (no stores are declared under `stores`)")
                    } else {
                        format!("unknown store `{name}` (declared: {known})")
                    }
                } else if stores[..j].contains(name) {
                    format!("store `{name}` is listed twice")
                } else {
                    used.insert(name);
                    continue;
                };
                errors.push(ConfigError {
                    path: format!("nodes[{i}].stores[{j}]"),
                    line: self.line_of_entry(i, "stores", j),
                    message,
                });
            }
        }
        for (k, s) in self.stores.iter().enumerate() {
            if declared.get(s.name.as_str()) == Some(&k) && !used.contains(s.name.as_str()) {
                errors.push(ConfigError {
                    path: format!("stores[{k}]"),
                    line: self.line_in("stores", k, None),
                    message: format!("store `{}` is not used by any processor", s.name),
                });
            }
        }
    }

    fn upstream_source_format(
        &self,
        start: usize,
        names: &HashMap<String, usize>,
    ) -> Option<(usize, SerdeFormat)> {
        let mut seen = HashSet::new();
        let mut cur = start;
        loop {
            if !seen.insert(cur) {
                return None;
            }
            let n = &self.nodes[cur];
            if n.kind == "source" {
                return n
                    .value
                    .as_ref()
                    .map_or(Some(SerdeFormat::Bytes), SerdeSpec::format)
                    .map(|f| (cur, f));
            }
            let first = n.from.as_ref()?.to_vec().into_iter().next()?;
            cur = *names.get(&first)?;
        }
    }

    fn find_cycle(&self, names: &HashMap<String, usize>) -> Option<usize> {
        // 0 = unseen, 1 = on stack, 2 = done.
        let mut state = vec![0u8; self.nodes.len()];
        fn visit(
            cfg: &TopologyConfig,
            names: &HashMap<String, usize>,
            i: usize,
            state: &mut [u8],
        ) -> Option<usize> {
            match state[i] {
                1 => return Some(i),
                2 => return None,
                _ => {}
            }
            state[i] = 1;
            for f in cfg.nodes[i].from.iter().flat_map(OneOrMany::to_vec) {
                if let Some(&p) = names.get(&f)
                    && let Some(c) = visit(cfg, names, p, state)
                {
                    return Some(c);
                }
            }
            state[i] = 2;
            None
        }
        (0..self.nodes.len()).find_map(|i| visit(self, names, i, &mut state))
    }

    /// Validates and builds the topology.
    pub fn build(&self, registry: &Registry) -> Result<Topology, ConfigErrors> {
        self.validate(registry)?;
        let sr: Option<Arc<dyn SchemaRegistry>> = registry.schema_registry.clone().or_else(|| {
            self.schema_registry_url
                .as_ref()
                .map(|u| Arc::new(HttpSchemaRegistry::new(u.clone())) as Arc<dyn SchemaRegistry>)
        });
        let serde = |spec: &Option<SerdeSpec>| -> SerdeRef {
            match spec.as_ref().and_then(|s| s.format().map(|f| (s, f))) {
                None | Some((_, SerdeFormat::Bytes)) => Arc::new(BytesSerde),
                Some((_, SerdeFormat::String)) => Arc::new(StringSerde),
                Some((_, SerdeFormat::Json)) => Arc::new(JsonSerde),
                Some((s, SerdeFormat::Avro)) => {
                    let reg = sr.clone().unwrap_or_else(|| {
                        Arc::new(crate::serdes::MemorySchemaRegistry::default())
                    });
                    let mut a = AvroSerde::new(reg);
                    if let Some(schema) = s
                        .schema()
                        .and_then(|t| apache_avro::Schema::parse_str(t).ok())
                    {
                        a = a.with_schema(schema);
                    }
                    Arc::new(a)
                }
            }
        };
        let b = TopologyBuilder::new();
        for s in &self.stores {
            b.store(s.to_spec());
        }
        let mut added: HashSet<String> = HashSet::new();
        let mut errors = Vec::new();
        // Add nodes once their upstream exists (the file may list them in any order).
        let mut remaining: Vec<usize> = (0..self.nodes.len()).collect();
        while !remaining.is_empty() {
            let before = remaining.len();
            remaining.retain(|&i| {
                let n = &self.nodes[i];
                let from = n.from.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
                if !from.iter().all(|f| added.contains(f)) {
                    return true;
                }
                let parents: Vec<&str> = from.iter().map(String::as_str).collect();
                let kind = match n.kind.as_str() {
                    "source" => NodeKind::Source {
                        topics: n
                            .topic
                            .clone()
                            .map(|t| vec![t])
                            .or_else(|| n.topics.clone())
                            .unwrap_or_default(),
                        key_serde: serde(&n.key),
                        value_serde: serde(&n.value),
                        dead_letter_topic: n.dead_letter_topic.clone(),
                    },
                    "filter" => NodeKind::Filter(n.when.as_ref().map_or_else(
                        || Arc::new(|_: &crate::Record| true) as Predicate,
                        FieldPredicate::to_predicate,
                    )),
                    "map" => match n.function.as_ref().and_then(|f| registry.maps.get(f)) {
                        Some(f) => NodeKind::Map(f.clone()),
                        None => return false,
                    },
                    "flat_map" => match n.function.as_ref().and_then(|f| registry.flat_maps.get(f))
                    {
                        Some(f) => NodeKind::FlatMap(f.clone()),
                        None => return false,
                    },
                    "branch" => {
                        let bs = n.branches.clone().unwrap_or_default();
                        b.add_node(
                            &n.name,
                            NodeKind::Branch(bs.iter().map(|x| x.when.to_predicate()).collect()),
                            &parents,
                        );
                        for x in &bs {
                            b.add_node(&x.name, NodeKind::BranchChild, &[&n.name]);
                            added.insert(x.name.clone());
                        }
                        added.insert(n.name.clone());
                        return false;
                    }
                    "process" => {
                        let factory = n
                            .processor
                            .as_ref()
                            .and_then(|p| registry.processors.get(p));
                        let Some(Ok(processor)) = factory
                            .map(|f| f(n.config.as_ref().unwrap_or(&serde_json::Value::Null)))
                        else {
                            errors.push(ConfigError {
                                path: format!("nodes[{i}].processor"),
                                line: self.line_of(i, Some("processor")),
                                message: "processor could not be built".into(),
                            });
                            return false;
                        };
                        let d = RetryPolicy::default();
                        let r = n.retry.clone();
                        let retry = RetryPolicy {
                            max_attempts: r
                                .as_ref()
                                .and_then(|r| r.max_attempts)
                                .unwrap_or(d.max_attempts),
                            initial_backoff: r
                                .as_ref()
                                .and_then(|r| r.initial_backoff_ms)
                                .map_or(d.initial_backoff, Duration::from_millis),
                            max_backoff: r
                                .as_ref()
                                .and_then(|r| r.max_backoff_ms)
                                .map_or(d.max_backoff, Duration::from_millis),
                            jitter: r.as_ref().and_then(|r| r.jitter).unwrap_or(d.jitter),
                        };
                        NodeKind::Async {
                            processor,
                            options: AsyncOptions {
                                ordering: n
                                    .ordering
                                    .as_deref()
                                    .and_then(parse_ordering)
                                    .unwrap_or_default(),
                                concurrency: n
                                    .concurrency
                                    .unwrap_or(AsyncOptions::default().concurrency),
                                retry,
                            },
                            stores: n.stores.clone().unwrap_or_default(),
                        }
                    }
                    _ => NodeKind::Sink {
                        topic: n.topic.clone().unwrap_or_default(),
                        key_serde: serde(&n.key),
                        value_serde: serde(&n.value),
                    },
                };
                b.add_node(&n.name, kind, &parents);
                added.insert(n.name.clone());
                false
            });
            if remaining.len() == before {
                break;
            }
        }
        let topology = b.build().map_err(|es| ConfigErrors {
            file: self.file.clone(),
            errors: es
                .into_iter()
                .map(|e| ConfigError {
                    path: "nodes".into(),
                    line: None,
                    message: e.to_string(),
                })
                .collect(),
        })?;
        if errors.is_empty() {
            Ok(topology)
        } else {
            Err(ConfigErrors {
                file: self.file.clone(),
                errors,
            })
        }
    }
}

fn parse_ordering(s: &str) -> Option<Ordering> {
    match s {
        "key" => Some(Ordering::Key),
        "partition" => Some(Ordering::Partition),
        "unordered" => Some(Ordering::Unordered),
        _ => None,
    }
}

/// Loads, validates and builds a topology file: the `validate` entry point for tools.
pub fn validate_file(path: &Path, registry: &Registry) -> Result<Topology, ConfigErrors> {
    TopologyConfig::from_file(path)?.build(registry)
}
