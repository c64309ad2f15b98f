//! `type: map` (one record in, one record out) and `type: flat_map` (one record in, any number
//! out): both pass records through a function registered in code under `function`, and differ
//! only in which of the registry's functions they name and the node they become.

use std::collections::HashMap;

use serde::Deserialize;

use super::Registry;
use super::context::NodeContext;
use super::spec::OneOrMany;
use crate::graph::{NodeKind, TopologyBuilder};

/// A map or flat-map node.
///
/// ```yaml
/// - name: enrich
///   type: map
///   from: cdc
///   function: add-mall     # Registry::map("add-mall", f)
/// - name: explode
///   type: flat_map
///   from: enrich
///   function: split-images # Registry::flat_map("split-images", f)
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Upstream node(s).
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// The registered function.
    #[serde(default)]
    pub function: Option<String>,
}

/// A `type: map` node.
pub type MapConfig = FunctionConfig;
/// A `type: flat_map` node.
pub type FlatMapConfig = FunctionConfig;

/// A checked map or flat-map, ready to be added.
pub(super) struct Planned {
    name: String,
    from: Vec<String>,
    kind: NodeKind,
}

impl FunctionConfig {
    /// Checks a `type: map` node.
    pub(super) fn validate_map(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let registry = cx.registry;
        self.validate(cx, "map", &registry.maps, NodeKind::Map)
    }

    /// Checks a `type: flat_map` node.
    pub(super) fn validate_flat_map(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let registry = cx.registry;
        self.validate(cx, "flat_map", &registry.flat_maps, NodeKind::FlatMap)
    }

    fn validate<F: Clone>(
        &self,
        cx: &mut NodeContext<'_>,
        kind: &str,
        registered: &HashMap<String, F>,
        node: fn(F) -> NodeKind,
    ) -> Option<Planned> {
        let named = cx.named(&self.name);
        let from = cx.upstream(kind, self.from.as_ref());
        let function = match &self.function {
            None => {
                cx.error("function", format!("a {kind} needs `function`"));
                None
            }
            Some(f) => match registered.get(f) {
                Some(function) => Some(function.clone()),
                None => {
                    let known = Registry::known(registered);
                    cx.error(
                        "function",
                        format!("unknown {kind} function `{f}` (registered: {known})"),
                    );
                    None
                }
            },
        };
        named.then_some(())?;
        Some(Planned {
            name: self.name.clone(),
            from: from?,
            kind: node(function?),
        })
    }
}

impl Planned {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let parents: Vec<&str> = self.from.iter().map(String::as_str).collect();
        b.add_node(&self.name, self.kind, &parents);
    }
}
