//! The topology graph and its builder DSL.
//!
//! [`TopologyBuilder`] hands out [`Stream`] handles; each operator adds one named node and
//! returns the stream after it: `source → filter / map / flat_map / branch → process_async →
//! to`. [`TopologyBuilder::build`] checks names and edges and returns an immutable
//! [`Topology`], which both transports run unchanged and which [`Topology::describe`] prints in
//! Kafka Streams' shape. Sub-topologies are the connected parts of the graph; they talk to each
//! other only through topics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::processor::{AsyncOptions, Processor};
use crate::serdes::SerdeRef;
use crate::{Record, describe};

/// A record predicate.
pub type Predicate = Arc<dyn Fn(&Record) -> bool + Send + Sync>;
/// A one-to-one record mapping.
pub type MapFn = Arc<dyn Fn(Record) -> Record + Send + Sync>;
/// A one-to-many record mapping.
pub type FlatMapFn = Arc<dyn Fn(Record) -> Vec<Record> + Send + Sync>;

/// Errors found while building a topology.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    /// Two nodes share a name.
    #[error("duplicate node name `{0}`")]
    DuplicateName(String),
    /// A node name is empty.
    #[error("node names must not be empty")]
    EmptyName,
    /// A source lists no topic.
    #[error("source `{0}` has no topic")]
    NoTopic(String),
    /// Two sources read the same topic.
    #[error("topic `{topic}` is read by both `{first}` and `{second}`")]
    TopicReadTwice {
        /// Topic.
        topic: String,
        /// First source.
        first: String,
        /// Second source.
        second: String,
    },
    /// A node refers to a node that does not exist.
    #[error("node `{node}` refers to unknown node `{parent}`")]
    UnknownNode {
        /// The node.
        node: String,
        /// The missing one.
        parent: String,
    },
    /// The graph has a cycle.
    #[error("cycle through node `{0}`")]
    Cycle(String),
    /// The builder lock was poisoned by a panic elsewhere.
    #[error("builder state poisoned")]
    Poisoned,
}

/// What a node does.
#[derive(Clone)]
pub enum NodeKind {
    /// Reads topics and decodes keys and values.
    Source {
        /// Topics read.
        topics: Vec<String>,
        /// Key serde.
        key_serde: SerdeRef,
        /// Value serde.
        value_serde: SerdeRef,
        /// Dead-letter topic for records from these topics (`None`: `{topic}.dlq`).
        dead_letter_topic: Option<String>,
    },
    /// Keeps records matching the predicate.
    Filter(Predicate),
    /// Maps each record to one record.
    Map(MapFn),
    /// Maps each record to zero or more records.
    FlatMap(FlatMapFn),
    /// Sends each record to the first branch whose predicate matches (the children, in order).
    Branch(Vec<Predicate>),
    /// One named branch of a `Branch` node; passes records on unchanged.
    BranchChild,
    /// Runs an async processor.
    Async {
        /// The processor.
        processor: Arc<dyn Processor>,
        /// How it runs.
        options: AsyncOptions,
    },
    /// Encodes and writes records to a topic.
    Sink {
        /// Topic written.
        topic: String,
        /// Key serde.
        key_serde: SerdeRef,
        /// Value serde.
        value_serde: SerdeRef,
    },
}

impl std::fmt::Debug for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeKind::Source { .. } => "Source",
            NodeKind::Filter(_) => "Filter",
            NodeKind::Map(_) => "Map",
            NodeKind::FlatMap(_) => "FlatMap",
            NodeKind::Branch(_) => "Branch",
            NodeKind::BranchChild => "BranchChild",
            NodeKind::Async { .. } => "Async",
            NodeKind::Sink { .. } => "Sink",
        })
    }
}

/// A node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: NodeKind,
    /// Upstream nodes (indices into [`Topology::nodes`]).
    pub parents: Vec<usize>,
    /// Downstream nodes, in the order they were added.
    pub children: Vec<usize>,
}

#[derive(Default)]
struct Inner {
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    errors: Vec<TopologyError>,
}

/// Builds a [`Topology`] through [`Stream`] handles.
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use topology::{TopologyBuilder, serdes::StringSerde};
/// let b = TopologyBuilder::new();
/// b.source("in", "input", Arc::new(StringSerde), Arc::new(StringSerde))
///     .filter("non-empty", |r| r.value.is_some())
///     .to("out", "output", Arc::new(StringSerde), Arc::new(StringSerde));
/// let t = b.build().unwrap();
/// assert!(t.describe().contains("Source: in (topics: [input])"));
/// ```
#[derive(Clone, Default)]
pub struct TopologyBuilder {
    inner: Arc<Mutex<Inner>>,
}

/// A handle on the output of one node; operators add a node after it.
#[derive(Clone)]
pub struct Stream {
    inner: Arc<Mutex<Inner>>,
    node: String,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A poisoned builder can only come from a panic in user code while building; keep going
    // with what was recorded.
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn add(inner: &Mutex<Inner>, name: &str, kind: NodeKind, parents: &[&str]) {
    let mut g = lock(inner);
    if name.is_empty() {
        g.errors.push(TopologyError::EmptyName);
        return;
    }
    if g.by_name.contains_key(name) {
        g.errors.push(TopologyError::DuplicateName(name.to_owned()));
        return;
    }
    let idx = g.nodes.len();
    let mut parent_idx = Vec::new();
    for p in parents {
        match g.by_name.get(*p) {
            Some(&i) => parent_idx.push(i),
            None => g.errors.push(TopologyError::UnknownNode {
                node: name.to_owned(),
                parent: (*p).to_owned(),
            }),
        }
    }
    for &p in &parent_idx {
        g.nodes[p].children.push(idx);
    }
    g.nodes.push(Node {
        name: name.to_owned(),
        kind,
        parents: parent_idx,
        children: Vec::new(),
    });
    g.by_name.insert(name.to_owned(), idx);
}

impl TopologyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source reading `topic` with the given serdes.
    pub fn source(
        &self,
        name: &str,
        topic: &str,
        key_serde: SerdeRef,
        value_serde: SerdeRef,
    ) -> Stream {
        self.source_with(name, &[topic], key_serde, value_serde, None)
    }

    /// Adds a source reading several topics, with an explicit dead-letter topic.
    pub fn source_with(
        &self,
        name: &str,
        topics: &[&str],
        key_serde: SerdeRef,
        value_serde: SerdeRef,
        dead_letter_topic: Option<&str>,
    ) -> Stream {
        let kind = NodeKind::Source {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            key_serde,
            value_serde,
            dead_letter_topic: dead_letter_topic.map(str::to_owned),
        };
        add(&self.inner, name, kind, &[]);
        self.stream(name)
    }

    /// Adds a node of any kind after the named parents (used by the configuration loader).
    pub fn add_node(&self, name: &str, kind: NodeKind, parents: &[&str]) -> Stream {
        add(&self.inner, name, kind, parents);
        self.stream(name)
    }

    /// A handle on an existing node (for wiring several children to it).
    pub fn stream(&self, name: &str) -> Stream {
        Stream {
            inner: self.inner.clone(),
            node: name.to_owned(),
        }
    }

    /// Checks the graph and freezes it.
    pub fn build(&self) -> Result<Topology, Vec<TopologyError>> {
        let g = lock(&self.inner);
        let mut errors = g.errors.clone();
        let mut readers: BTreeMap<&str, &str> = BTreeMap::new();
        for n in &g.nodes {
            if let NodeKind::Source { topics, .. } = &n.kind {
                if topics.is_empty() {
                    errors.push(TopologyError::NoTopic(n.name.clone()));
                }
                for t in topics {
                    if let Some(first) = readers.insert(t, &n.name) {
                        errors.push(TopologyError::TopicReadTwice {
                            topic: t.clone(),
                            first: first.to_owned(),
                            second: n.name.clone(),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(Topology::new(g.nodes.clone()))
        } else {
            Err(errors)
        }
    }
}

impl Stream {
    /// The name of the node this stream comes out of.
    pub fn name(&self) -> &str {
        &self.node
    }

    fn then(&self, name: &str, kind: NodeKind) -> Stream {
        add(&self.inner, name, kind, &[&self.node]);
        Stream {
            inner: self.inner.clone(),
            node: name.to_owned(),
        }
    }

    /// Keeps the records for which `pred` is true.
    pub fn filter(
        &self,
        name: &str,
        pred: impl Fn(&Record) -> bool + Send + Sync + 'static,
    ) -> Stream {
        self.then(name, NodeKind::Filter(Arc::new(pred)))
    }

    /// Maps each record to one record.
    pub fn map(&self, name: &str, f: impl Fn(Record) -> Record + Send + Sync + 'static) -> Stream {
        self.then(name, NodeKind::Map(Arc::new(f)))
    }

    /// Maps each record to zero or more records.
    pub fn flat_map(
        &self,
        name: &str,
        f: impl Fn(Record) -> Vec<Record> + Send + Sync + 'static,
    ) -> Stream {
        self.then(name, NodeKind::FlatMap(Arc::new(f)))
    }

    /// Splits the stream: each record goes to the first branch whose predicate holds; records
    /// matching none are dropped (and counted). Returns one stream per branch, in order.
    ///
    /// # Example
    /// ```
    /// use std::sync::Arc;
    /// use topology::{TopologyBuilder, Predicate, serdes::JsonSerde};
    /// let b = TopologyBuilder::new();
    /// let is = |op: &'static str| -> Predicate {
    ///     Arc::new(move |r| r.value.as_ref().and_then(|v| v.field_str("op")).as_deref() == Some(op))
    /// };
    /// let s = b.source("cdc", "products", Arc::new(JsonSerde), Arc::new(JsonSerde));
    /// let branches = s.branch("split", vec![("upserts", is("c")), ("deletes", is("d"))]);
    /// assert_eq!(branches[1].name(), "deletes");
    /// ```
    pub fn branch(&self, name: &str, branches: Vec<(&str, Predicate)>) -> Vec<Stream> {
        let preds = branches.iter().map(|(_, p)| p.clone()).collect();
        let split = self.then(name, NodeKind::Branch(preds));
        branches
            .iter()
            .map(|(child, _)| split.then(child, NodeKind::BranchChild))
            .collect()
    }

    /// Runs an async processor on each record.
    pub fn process_async(
        &self,
        name: &str,
        processor: Arc<dyn Processor>,
        options: AsyncOptions,
    ) -> Stream {
        self.then(name, NodeKind::Async { processor, options })
    }

    /// Writes the records to `topic`.
    pub fn to(&self, name: &str, topic: &str, key_serde: SerdeRef, value_serde: SerdeRef) {
        self.then(
            name,
            NodeKind::Sink {
                topic: topic.to_owned(),
                key_serde,
                value_serde,
            },
        );
    }
}

/// A checked, immutable topology.
#[derive(Debug, Clone)]
pub struct Topology {
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    source_by_topic: HashMap<String, usize>,
}

impl Topology {
    fn new(nodes: Vec<Node>) -> Self {
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut source_by_topic = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if let NodeKind::Source { topics, .. } = &n.kind {
                for t in topics {
                    source_by_topic.insert(t.clone(), i);
                }
            }
        }
        Topology {
            nodes,
            by_name,
            source_by_topic,
        }
    }

    /// All nodes, in the order they were added.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    /// The index of the source reading `topic`.
    pub fn source_for_topic(&self, topic: &str) -> Option<usize> {
        self.source_by_topic.get(topic).copied()
    }

    /// Every topic read by a source, sorted.
    pub fn source_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.source_by_topic.keys().cloned().collect();
        t.sort();
        t
    }

    /// Every topic written by a sink, sorted and deduplicated.
    pub fn sink_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Sink { topic, .. } => Some(topic.clone()),
                _ => None,
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// The dead-letter topic for records read from `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        match self.source_for_topic(topic).map(|i| &self.nodes[i].kind) {
            Some(NodeKind::Source {
                dead_letter_topic: Some(d),
                ..
            }) => d.clone(),
            _ => format!("{topic}.dlq"),
        }
    }

    /// The topology as a [`describe::TopologyDescription`].
    pub fn description(&self) -> describe::TopologyDescription {
        describe::TopologyDescription::of(self)
    }

    /// The topology as text, in Kafka Streams' `Topology.describe()` shape.
    pub fn describe(&self) -> String {
        self.description().to_string()
    }

    /// The topology as a Mermaid flowchart, drawn from the same description.
    pub fn describe_mermaid(&self) -> String {
        self.description().to_mermaid()
    }
}
