//! The topology graph and its builder DSL.
//!
//! [`TopologyBuilder`] hands out [`Stream`] handles; each operator adds one named node and
//! returns the stream after it: `source → filter / map / flat_map / branch → process_async →
//! to`. [`TopologyBuilder::build`] checks names and edges and returns an immutable
//! [`Topology`], which both transports run unchanged and which [`Topology::describe`] prints in
//! Kafka Streams' shape. State stores are declared once ([`TopologyBuilder::store`]) and
//! attached to the processors that use them ([`Stream::with_stores`]). Sub-topologies are the
//! parts of the graph connected by edges or by a shared store; they talk to each other only
//! through topics, and each runs as one task per source partition ([`Topology::subtopologies`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Record;
use crate::processor::{AsyncOptions, Processor};
use crate::serdes::SerdeRef;
use crate::stateful::OperatorRef;

// Declared in its own module (tasks open stores without depending on the graph); re-exported
// here, where topologies declare them.
pub use crate::store::StoreSpec;

/// One sub-topology: the nodes connected by edges or by a shared store. It runs as one task
/// per partition of its source topics (which must be co-partitioned when it has stores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtopology {
    /// Its number, from 0, in the order its first node was added.
    pub id: usize,
    /// Its nodes (indices into [`Topology::nodes`]), in the order they were added.
    pub nodes: Vec<usize>,
    /// The topics its sources read, sorted.
    pub source_topics: Vec<String>,
    /// The stores its processors use, sorted by name.
    pub stores: Vec<StoreSpec>,
}

impl Subtopology {
    /// Whether its tasks own state.
    pub fn is_stateful(&self) -> bool {
        !self.stores.is_empty()
    }
}

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
    /// A processor names a store that was not declared.
    #[error(
        "processor `{node}` uses store `{store}`, which is not declared (TopologyBuilder::store)"
    )]
    UnknownStore {
        /// The processor.
        node: String,
        /// The store.
        store: String,
    },
    /// A store is declared but no processor uses it.
    #[error("store `{0}` is declared but no processor uses it")]
    UnusedStore(String),
    /// Two stores share a name.
    #[error("store `{0}` is declared twice")]
    DuplicateStore(String),
    /// `with_stores` was called on a node that is not an async processor.
    #[error("`{0}` is not a processor: only process_async nodes can use stores")]
    StoresOnNonProcessor(String),
    /// A join or aggregation was given a table that keeps no store.
    #[error("{0}")]
    Invalid(String),
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
        /// The stores it reaches through its context, by name.
        stores: Vec<String>,
    },
    /// Runs a stateful operator inline (tables, aggregations, windows, joins; see
    /// [`stateful`](crate::stateful)).
    Stateful {
        /// The operator.
        operator: OperatorRef,
        /// The stores it reaches through its context, by name.
        stores: Vec<String>,
    },
    /// Passes the records of all its parents on unchanged (`merge`, `to_stream`).
    Forward,
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
            NodeKind::Stateful { .. } => "Stateful",
            NodeKind::Forward => "Forward",
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
pub(crate) struct Inner {
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    stores: Vec<StoreSpec>,
    /// Topics the topology writes and reads itself (repartition topics), named without the
    /// application id.
    internal_topics: Vec<String>,
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
    pub(crate) inner: Arc<Mutex<Inner>>,
    pub(crate) node: String,
}

pub(crate) fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A poisoned builder can only come from a panic in user code while building; keep going
    // with what was recorded.
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn add(inner: &Mutex<Inner>, name: &str, kind: NodeKind, parents: &[&str]) {
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
    /// The builder a stream handle came from.
    pub(crate) fn from_inner(inner: Arc<Mutex<Inner>>) -> Self {
        TopologyBuilder { inner }
    }

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

    /// Declares a state store; processors name it in [`Stream::with_stores`].
    ///
    /// # Example
    /// ```
    /// use std::sync::Arc;
    /// use topology::{AsyncOptions, StoreSpec, TopologyBuilder, processor_fn, serdes::StringSerde};
    /// let b = TopologyBuilder::new();
    /// b.store(StoreSpec::new("seen"));
    /// b.source("in", "input", Arc::new(StringSerde), Arc::new(StringSerde))
    ///     .process_async("dedupe", processor_fn(|r| async move { Ok(vec![r]) }), AsyncOptions::default())
    ///     .with_stores(&["seen"]);
    /// let t = b.build().unwrap();
    /// assert!(t.describe().contains("Processor: dedupe (stores: [seen])"));
    /// ```
    pub fn store(&self, spec: StoreSpec) -> &Self {
        let mut g = lock(&self.inner);
        if g.stores.iter().any(|s| s.name == spec.name) {
            g.errors.push(TopologyError::DuplicateStore(spec.name));
        } else {
            g.stores.push(spec);
        }
        self
    }

    /// Declares `topic` as one of the topology's own topics (a repartition topic): the
    /// runtime names it `<application_id>-<topic>` and creates it before it starts.
    pub fn internal_topic(&self, topic: &str) -> &Self {
        let mut g = lock(&self.inner);
        if !g.internal_topics.iter().any(|t| t == topic) {
            g.internal_topics.push(topic.to_owned());
        }
        self
    }

    /// Records an error found while building (reported by [`build`](Self::build)).
    pub(crate) fn invalid(&self, message: String) {
        lock(&self.inner)
            .errors
            .push(TopologyError::Invalid(message));
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
        let mut used: BTreeMap<&str, ()> = BTreeMap::new();
        for n in &g.nodes {
            if let NodeKind::Async { stores, .. } | NodeKind::Stateful { stores, .. } = &n.kind {
                for store in stores {
                    used.insert(store, ());
                    if !g.stores.iter().any(|s| &s.name == store) {
                        errors.push(TopologyError::UnknownStore {
                            node: n.name.clone(),
                            store: store.clone(),
                        });
                    }
                }
            }
        }
        for s in &g.stores {
            if !used.contains_key(s.name.as_str()) {
                errors.push(TopologyError::UnusedStore(s.name.clone()));
            }
        }
        if errors.is_empty() {
            Ok(Topology::new(
                g.nodes.clone(),
                g.stores.clone(),
                g.internal_topics.clone(),
            ))
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

    pub(crate) fn then(&self, name: &str, kind: NodeKind) -> Stream {
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
        self.then(
            name,
            NodeKind::Async {
                processor,
                options,
                stores: Vec::new(),
            },
        )
    }

    /// Gives the processor this stream comes out of its task's instances of `stores`
    /// (declared with [`TopologyBuilder::store`]). Processors sharing a store run in one
    /// sub-topology, whose source topics must then be co-partitioned.
    pub fn with_stores(&self, stores: &[&str]) -> Stream {
        let mut g = lock(&self.inner);
        let node = g.by_name.get(&self.node).copied();
        match node.map(|i| &mut g.nodes[i].kind) {
            Some(NodeKind::Async { stores: own, .. } | NodeKind::Stateful { stores: own, .. }) => {
                for s in stores {
                    if !own.iter().any(|o| o == s) {
                        own.push((*s).to_owned());
                    }
                }
            }
            Some(_) => g
                .errors
                .push(TopologyError::StoresOnNonProcessor(self.node.clone())),
            // The node itself failed to be added; that error is recorded already.
            None => {}
        }
        drop(g);
        self.clone()
    }

    /// Runs a [`StatefulOperator`](crate::stateful::StatefulOperator) inline on each record,
    /// with its task's instances of `stores` (declared with [`TopologyBuilder::store`]).
    pub fn stateful(&self, name: &str, operator: OperatorRef, stores: &[&str]) -> Stream {
        self.then(
            name,
            NodeKind::Stateful {
                operator,
                stores: stores.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
    }

    /// The records of this stream and of `others`, as one stream (Kafka Streams' `merge`).
    pub fn merge(&self, name: &str, others: &[&Stream]) -> Stream {
        let mut parents = vec![self.node.as_str()];
        parents.extend(others.iter().map(|s| s.node.as_str()));
        add(&self.inner, name, NodeKind::Forward, &parents);
        Stream {
            inner: self.inner.clone(),
            node: name.to_owned(),
        }
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
    stores: Vec<StoreSpec>,
    internal_topics: Vec<String>,
    subtopologies: Vec<Subtopology>,
    /// Per node, the sub-topology it belongs to.
    subtopology_of: Vec<usize>,
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (a, b) = (find(parent, a), find(parent, b));
    if a != b {
        parent[a.max(b)] = a.min(b);
    }
}

/// Groups nodes connected by an edge or by a store both use, numbered in the order of their
/// first node.
fn group_subtopologies(nodes: &[Node], stores: &[StoreSpec]) -> (Vec<Subtopology>, Vec<usize>) {
    let n = nodes.len();
    let mut uf: Vec<usize> = (0..n).collect();
    let mut first_user: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for &c in &node.children {
            union(&mut uf, i, c);
        }
        if let NodeKind::Async { stores, .. } | NodeKind::Stateful { stores, .. } = &node.kind {
            for s in stores {
                match first_user.get(s.as_str()) {
                    Some(&j) => union(&mut uf, i, j),
                    None => {
                        first_user.insert(s, i);
                    }
                }
            }
        }
    }
    let mut subtopologies: Vec<Subtopology> = Vec::new();
    let mut id_of_root: HashMap<usize, usize> = HashMap::new();
    let mut subtopology_of = vec![0; n];
    for (i, node) in nodes.iter().enumerate() {
        let root = find(&mut uf, i);
        let id = *id_of_root.entry(root).or_insert_with(|| {
            subtopologies.push(Subtopology {
                id: subtopologies.len(),
                nodes: Vec::new(),
                source_topics: Vec::new(),
                stores: Vec::new(),
            });
            subtopologies.len() - 1
        });
        subtopology_of[i] = id;
        let st = &mut subtopologies[id];
        st.nodes.push(i);
        match &node.kind {
            NodeKind::Source { topics, .. } => st.source_topics.extend(topics.iter().cloned()),
            NodeKind::Async { stores: used, .. } | NodeKind::Stateful { stores: used, .. } => {
                for name in used {
                    if !st.stores.iter().any(|s| &s.name == name)
                        && let Some(spec) = stores.iter().find(|s| &s.name == name)
                    {
                        st.stores.push(spec.clone());
                    }
                }
            }
            _ => {}
        }
    }
    for st in &mut subtopologies {
        st.source_topics.sort();
        st.source_topics.dedup();
        st.stores.sort_by(|a, b| a.name.cmp(&b.name));
    }
    (subtopologies, subtopology_of)
}

impl Topology {
    fn new(nodes: Vec<Node>, stores: Vec<StoreSpec>, internal_topics: Vec<String>) -> Self {
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
        let (subtopologies, subtopology_of) = group_subtopologies(&nodes, &stores);
        Topology {
            nodes,
            by_name,
            source_by_topic,
            stores,
            internal_topics,
            subtopologies,
            subtopology_of,
        }
    }

    /// The topics the topology writes and reads itself (repartition topics). Named
    /// `<application_id>-<name>` once [`for_application`](Self::for_application) ran (the
    /// runtime does that), by their bare names before.
    pub fn internal_topics(&self) -> &[String] {
        &self.internal_topics
    }

    /// This topology with its internal topics named for `application_id`
    /// (`<application_id>-<name>`), as Kafka Streams names them. Idempotent.
    pub fn for_application(&self, application_id: &str) -> Topology {
        let prefix = format!("{application_id}-");
        let rename = |topic: &str| -> String {
            if self.internal_topics.iter().any(|t| t == topic) && !topic.starts_with(&prefix) {
                format!("{prefix}{topic}")
            } else {
                topic.to_owned()
            }
        };
        let mut nodes = self.nodes.clone();
        for node in &mut nodes {
            match &mut node.kind {
                NodeKind::Source {
                    topics,
                    dead_letter_topic,
                    ..
                } => {
                    for t in topics.iter_mut() {
                        *t = rename(t);
                    }
                    if let Some(d) = dead_letter_topic {
                        *d = rename(d);
                    }
                }
                NodeKind::Sink { topic, .. } => *topic = rename(topic),
                _ => {}
            }
        }
        let internal = self.internal_topics.iter().map(|t| rename(t)).collect();
        Topology::new(nodes, self.stores.clone(), internal)
    }

    /// The declared state stores.
    pub fn stores(&self) -> &[StoreSpec] {
        &self.stores
    }

    /// The sub-topologies, numbered from 0.
    pub fn subtopologies(&self) -> &[Subtopology] {
        &self.subtopologies
    }

    /// The sub-topology reading `topic`.
    pub fn subtopology_for_topic(&self, topic: &str) -> Option<&Subtopology> {
        self.source_for_topic(topic)
            .and_then(|i| self.subtopology_of.get(i))
            .and_then(|&id| self.subtopologies.get(id))
    }

    /// The sub-topology of node `index`.
    pub fn subtopology_of_node(&self, index: usize) -> Option<&Subtopology> {
        self.subtopology_of
            .get(index)
            .and_then(|&id| self.subtopologies.get(id))
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
}
