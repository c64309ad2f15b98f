//! `type: flat_map`: one record in, any number out, through a function registered in code.

use serde::Deserialize;

use super::Registry;
use super::context::NodeContext;
use super::spec::OneOrMany;
use crate::graph::{FlatMapFn, NodeKind, TopologyBuilder};

/// A flat-map node.
///
/// ```yaml
/// - name: explode
///   type: flat_map
///   from: cdc
///   function: split-images # Registry::flat_map("split-images", f)
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlatMapConfig {
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

/// A checked flat-map, ready to be added.
pub(super) struct Planned {
    name: String,
    from: Vec<String>,
    function: FlatMapFn,
}

impl FlatMapConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let named = cx.named(&self.name);
        let from = cx.upstream("flat_map", self.from.as_ref());
        let function = match &self.function {
            None => {
                cx.error("function", "a flat_map needs `function`");
                None
            }
            Some(f) => match cx.registry.flat_maps.get(f) {
                Some(function) => Some(function.clone()),
                None => {
                    let known = Registry::known(&cx.registry.flat_maps);
                    cx.error(
                        "function",
                        format!("unknown flat_map function `{f}` (registered: {known})"),
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
        b.add_node(&self.name, NodeKind::FlatMap(self.function), &parents);
    }
}
