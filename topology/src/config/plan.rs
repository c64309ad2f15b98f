//! [`TopologyPlan`]: a checked topology file, which `build` turns into a topology.

use std::fmt;

use super::node::PlannedNode;
use super::{ConfigError, ConfigErrors};
use crate::graph::{StoreSpec, Topology, TopologyBuilder};

/// A checked topology file, ready to build: what [`TopologyConfig::validate`](super::TopologyConfig::validate) returns and
/// [`TopologyPlan::build`] consumes, so nothing is checked twice.
pub struct TopologyPlan {
    pub(super) application_id: Option<String>,
    pub(super) stores: Vec<StoreSpec>,
    /// In dependency order: each node after its upstream ones.
    pub(super) nodes: Vec<PlannedNode>,
    pub(super) file: Option<String>,
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
