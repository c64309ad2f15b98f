//! [`TopologyConfig`]: a topology file read from YAML, checked against a registry into a
//! [`TopologyPlan`].

use std::path::Path;
use std::sync::Arc;

use marked_yaml::Node;
use serde::Deserialize;

use super::context::NodeContext;
use super::node::{NodeConfig, PlannedNode};
use super::{ConfigError, ConfigErrors, Registry, StoreConfig, TopologyPlan, store, yaml};
use crate::graph::Topology;
use crate::serdes::{HttpSchemaRegistry, SchemaRegistry};

/// The top-level fields other than `nodes`, read apart so each node is read by its kind.
#[derive(Deserialize, Default)]
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
    pub(super) tree: Option<Arc<Node>>,
    #[serde(skip)]
    pub(super) file: Option<String>,
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
        // Read: a header that failed to read was reported above.
        let header = header.unwrap_or_default();
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
    pub(super) fn error_at(&self, path: String, message: impl Into<String>) -> ConfigError {
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
        ConfigErrors::check(self.file.clone(), std::mem::take(&mut errors))?;
        let mut nodes = Vec::with_capacity(order.len());
        for i in order {
            match planned[i].take() {
                Some(node) => nodes.push(node),
                // A kind's `validate` returns no plan only after reporting why; should one
                // not, the node is not left out quietly.
                None => errors.push(self.error_at(
                    format!("nodes[{i}]"),
                    "the node could not be planned (and no reason was given)",
                )),
            }
        }
        ConfigErrors::check(self.file.clone(), errors)?;
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
}

/// Loads, validates and builds a topology file: the `validate` entry point for tools.
pub fn validate_file(path: &Path, registry: &Registry) -> Result<Topology, ConfigErrors> {
    TopologyConfig::from_file(path)?.validate(registry)?.build()
}
