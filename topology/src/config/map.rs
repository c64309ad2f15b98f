//! `type: map`: one record in, one record out, through a function registered in code.

use serde::Deserialize;

use super::Registry;
use super::context::NodeContext;
use super::spec::OneOrMany;
use crate::graph::{MapFn, NodeKind, TopologyBuilder};

/// A map node.
///
/// ```yaml
/// - name: enrich
///   type: map
///   from: cdc
///   function: add-mall     # Registry::map("add-mall", f)
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
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

/// A checked map, ready to be added.
pub(super) struct Planned {
    name: String,
    from: Vec<String>,
    function: MapFn,
}

impl MapConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let named = cx.named(&self.name);
        let from = cx.upstream("map", self.from.as_ref());
        let function = match &self.function {
            None => {
                cx.error("function", "a map needs `function`");
                None
            }
            Some(f) => match cx.registry.maps.get(f) {
                Some(function) => Some(function.clone()),
                None => {
                    let known = Registry::known(&cx.registry.maps);
                    cx.error(
                        "function",
                        format!("unknown map function `{f}` (registered: {known})"),
                    );
                    None
                }
            },
        };
        named.then_some(())?;
        Some(Planned {
            name: self.name.clone(),
            from: from?,
            function: function?,
        })
    }
}

impl Planned {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let parents: Vec<&str> = self.from.iter().map(String::as_str).collect();
        b.add_node(&self.name, NodeKind::Map(self.function), &parents);
    }
}
