//! `type: filter`: keeps the records whose value matches a field predicate.

use serde::Deserialize;

use super::context::NodeContext;
use super::spec::{FieldPredicate, OneOrMany};
use crate::graph::{NodeKind, Predicate, TopologyBuilder};

/// A filter node.
///
/// ```yaml
/// - name: collected
///   type: filter
///   from: events
///   when: {field: op, exists: true}   # or eq: / in: / not_in:
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Upstream node(s).
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// The records kept.
    #[serde(default)]
    pub when: Option<FieldPredicate>,
}

/// A checked filter, ready to be added.
pub(super) struct Planned {
    name: String,
    from: Vec<String>,
    predicate: Predicate,
}

impl FilterConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let named = cx.named(&self.name);
        let from = cx.upstream("filter", self.from.as_ref());
        let predicate = match &self.when {
            None => {
                cx.error("when", "a filter needs `when`");
                None
            }
            Some(p) => {
                let problems = p.problems();
                let ok = problems.is_empty();
                for m in problems {
                    cx.error("when", m);
                }
                ok.then(|| p.to_predicate())
            }
        };
        named.then_some(())?;
        Some(Planned {
            name: self.name.clone(),
            from: from?,
            predicate: predicate?,
        })
    }
}

impl Planned {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let parents: Vec<&str> = self.from.iter().map(String::as_str).collect();
        b.add_node(&self.name, NodeKind::Filter(self.predicate), &parents);
    }
}
