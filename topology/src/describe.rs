//! Describing a topology, as text and as a Mermaid graph.
//!
//! [`TopologyDescription`] is computed once from the graph: sub-topologies (parts connected by
//! edges or shared stores, numbered by the order their first node was added) and, in each, the nodes sorted by depth
//! from the sources and then by name, with sorted successors and predecessors. Its `Display` is
//! Kafka Streams' `Topology.describe()` text, so it is stable enough for golden tests;
//! [`TopologyDescription::to_mermaid`] draws the same description.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use crate::graph::{NodeKind, Topology};

/// The kind of a described node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeDescriptionKind {
    /// A source and its topics.
    Source {
        /// Topics read.
        topics: Vec<String>,
    },
    /// A processor and the stores it uses.
    Processor {
        /// Stores.
        stores: Vec<String>,
    },
    /// A sink and its topic.
    Sink {
        /// Topic written.
        topic: String,
    },
}

/// One node in a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDescription {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: NodeDescriptionKind,
    /// Downstream node names, sorted.
    pub successors: Vec<String>,
    /// Upstream node names, sorted.
    pub predecessors: Vec<String>,
}

/// One sub-topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtopologyDescription {
    /// Number, from 0.
    pub id: usize,
    /// Nodes, sorted by depth then name.
    pub nodes: Vec<NodeDescription>,
}

/// A whole topology's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyDescription {
    /// Sub-topologies in order.
    pub subtopologies: Vec<SubtopologyDescription>,
}

// Here rather than in `graph`, so that the graph does not depend on its description.
impl Topology {
    /// The topology as a [`TopologyDescription`].
    pub fn description(&self) -> TopologyDescription {
        TopologyDescription::of(self)
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

impl TopologyDescription {
    /// Describes `topology`.
    pub fn of(topology: &Topology) -> Self {
        let nodes = topology.nodes();
        let n = nodes.len();
        // Depth: shortest distance from a node without parents.
        let mut depth = vec![usize::MAX; n];
        let mut queue = VecDeque::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.parents.is_empty() {
                depth[i] = 0;
                queue.push_back(i);
            }
        }
        while let Some(i) = queue.pop_front() {
            for &c in &nodes[i].children {
                if depth[c] == usize::MAX {
                    depth[c] = depth[i] + 1;
                    queue.push_back(c);
                }
            }
        }
        let groups: Vec<(usize, Vec<usize>)> = topology
            .subtopologies()
            .iter()
            .map(|st| (st.id, st.nodes.clone()))
            .collect();
        let subtopologies = groups
            .into_iter()
            .map(|(id, mut members)| {
                members
                    .sort_by(|&a, &b| (depth[a], &nodes[a].name).cmp(&(depth[b], &nodes[b].name)));
                let nodes = members
                    .into_iter()
                    .map(|i| {
                        let node = &nodes[i];
                        let names = |idx: &[usize]| {
                            idx.iter()
                                .map(|&j| nodes[j].name.clone())
                                .collect::<BTreeSet<_>>()
                                .into_iter()
                                .collect::<Vec<_>>()
                        };
                        let kind = match &node.kind {
                            NodeKind::Source { topics, .. } => NodeDescriptionKind::Source {
                                topics: topics.clone(),
                            },
                            NodeKind::Sink { topic, .. } => NodeDescriptionKind::Sink {
                                topic: topic.clone(),
                            },
                            NodeKind::Async { stores, .. } | NodeKind::Stateful { stores, .. } => {
                                NodeDescriptionKind::Processor {
                                    stores: stores.clone(),
                                }
                            }
                            _ => NodeDescriptionKind::Processor { stores: Vec::new() },
                        };
                        NodeDescription {
                            name: node.name.clone(),
                            kind,
                            successors: names(&node.children),
                            predecessors: names(&node.parents),
                        }
                    })
                    .collect();
                SubtopologyDescription { id, nodes }
            })
            .collect();
        TopologyDescription { subtopologies }
    }

    /// A Mermaid `flowchart LR`: one subgraph per sub-topology, topics as cylinders.
    pub fn to_mermaid(&self) -> String {
        let id = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        };
        let mut out = String::from("flowchart LR\n");
        let mut topics = BTreeSet::new();
        let mut edges = Vec::new();
        // A store is drawn once, inside its sub-topology, linked to each processor using it.
        let mut task_stores = BTreeSet::new();
        for st in &self.subtopologies {
            out.push_str(&format!(
                "  subgraph sub{}[\"Sub-topology: {}\"]\n",
                st.id, st.id
            ));
            for n in &st.nodes {
                let nid = format!("n_{}", id(&n.name));
                match &n.kind {
                    NodeDescriptionKind::Source { topics: ts } => {
                        out.push_str(&format!("    {nid}[/\"{}\"/]\n", n.name));
                        for t in ts {
                            topics.insert(t.clone());
                            edges.push(format!("  t_{} --> {nid}", id(t)));
                        }
                    }
                    NodeDescriptionKind::Processor { stores } => {
                        out.push_str(&format!("    {nid}[\"{}\"]\n", n.name));
                        for store in stores {
                            if task_stores.insert((st.id, store.clone())) {
                                out.push_str(&format!(
                                    "    s{}_{}[(\"store: {store}\")]\n",
                                    st.id,
                                    id(store)
                                ));
                            }
                            edges.push(format!("  {nid} -.- s{}_{}", st.id, id(store)));
                        }
                    }
                    NodeDescriptionKind::Sink { topic } => {
                        out.push_str(&format!("    {nid}[\\\"{}\"\\]\n", n.name));
                        topics.insert(topic.clone());
                        edges.push(format!("  {nid} --> t_{}", id(topic)));
                    }
                }
                for s in &n.successors {
                    edges.push(format!("  {nid} --> n_{}", id(s)));
                }
            }
            out.push_str("  end\n");
        }
        for t in &topics {
            out.push_str(&format!("  t_{}[(\"{t}\")]\n", id(t)));
        }
        for e in edges {
            out.push_str(&e);
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for TopologyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Topologies:")?;
        for st in &self.subtopologies {
            writeln!(f, "   Sub-topology: {}", st.id)?;
            for n in &st.nodes {
                match &n.kind {
                    NodeDescriptionKind::Source { topics } => writeln!(
                        f,
                        "    Source: {} (topics: [{}])",
                        n.name,
                        topics.join(", ")
                    )?,
                    NodeDescriptionKind::Processor { stores } => writeln!(
                        f,
                        "    Processor: {} (stores: [{}])",
                        n.name,
                        stores.join(", ")
                    )?,
                    NodeDescriptionKind::Sink { topic } => {
                        writeln!(f, "    Sink: {} (topic: {})", n.name, topic)?
                    }
                }
                if !matches!(n.kind, NodeDescriptionKind::Sink { .. }) {
                    let next = if n.successors.is_empty() {
                        "none".to_owned()
                    } else {
                        n.successors.join(", ")
                    };
                    writeln!(f, "      --> {next}")?;
                }
                if !n.predecessors.is_empty() {
                    writeln!(f, "      <-- {}", n.predecessors.join(", "))?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
