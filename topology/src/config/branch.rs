//! `type: branch`: sends each record to the first branch whose predicate matches; records
//! matching none are dropped. Each branch is a node of its own that later nodes name in `from`.

use serde::Deserialize;

use super::context::NodeContext;
use super::spec::{FieldPredicate, OneOrMany};
use crate::graph::{NodeKind, Predicate, TopologyBuilder};

/// A branch node.
///
/// ```yaml
/// - name: split
///   type: branch
///   from: cdc
///   branches:
///     - {name: upserts, when: {field: op, in: [c, r, u]}}
///     - {name: deletes, when: {field: op, eq: d}}
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BranchNodeConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Upstream node(s).
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// The branches, tried in order.
    #[serde(default)]
    pub branches: Option<Vec<BranchConfig>>,
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

/// A checked branch node and its branches, ready to be added.
pub(super) struct Planned {
    name: String,
    from: Vec<String>,
    branches: Vec<(String, Predicate)>,
}

impl BranchNodeConfig {
    /// The names of its branches, which other nodes read from.
    pub(super) fn branch_names(&self) -> impl Iterator<Item = &str> {
        self.branches.iter().flatten().map(|b| b.name.as_str())
    }

    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let named = cx.named(&self.name);
        let from = cx.upstream("branch", self.from.as_ref());
        let mut ok = true;
        match &self.branches {
            None => {
                cx.error("branches", "a branch needs `branches`");
                ok = false;
            }
            Some(bs) if bs.is_empty() => {
                cx.error("branches", "a branch needs at least one branch");
                ok = false;
            }
            Some(bs) => {
                for (j, b) in bs.iter().enumerate() {
                    ok &= cx.named_at(&format!("branches[{j}].name"), &b.name);
                    for m in b.when.problems() {
                        cx.error(&format!("branches[{j}].when"), m);
                        ok = false;
                    }
                }
            }
        }
        (named && ok).then_some(())?;
        Some(Planned {
            name: self.name.clone(),
            from: from?,
            branches: self
                .branches
                .iter()
                .flatten()
                .map(|b| (b.name.clone(), b.when.to_predicate()))
                .collect(),
        })
    }
}

impl Planned {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let parents: Vec<&str> = self.from.iter().map(String::as_str).collect();
        let predicates = self.branches.iter().map(|(_, p)| p.clone()).collect();
        b.add_node(&self.name, NodeKind::Branch(predicates), &parents);
        for (branch, _) in &self.branches {
            b.add_node(branch, NodeKind::BranchChild, &[&self.name]);
        }
    }
}
