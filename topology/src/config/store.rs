//! The top-level `stores`: state stores declared once, used by process nodes by name.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::NodeConfig;
use crate::graph::StoreSpec;

/// A state store as written in the top-level `stores` list.
///
/// ```yaml
/// stores:
///   - name: seen            # [A-Za-z0-9_.-], at most 200 bytes
///     changelog: true       # default true: topic <application_id>-seen-changelog
///     cache_entries: 1024   # default 0: no read cache
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Unique name: the store's sled tree and part of its changelog topic's name.
    // Defaulted so a missing name is reported by `validate` with its place, like a node's.
    #[serde(default)]
    pub name: String,
    /// Whether writes go to `<application_id>-<name>-changelog` (default true: without it a
    /// task moved to another instance starts with an empty store).
    #[serde(default = "changelog_default")]
    pub changelog: bool,
    /// Entries kept in a read cache in front of sled (default 0: none).
    #[serde(default)]
    pub cache_entries: usize,
}

fn changelog_default() -> bool {
    true
}

impl StoreConfig {
    /// The store as the builder takes it.
    pub fn to_spec(&self) -> StoreSpec {
        let spec = StoreSpec::new(&self.name).cache_entries(self.cache_entries);
        if self.changelog {
            spec
        } else {
            spec.without_changelog()
        }
    }
}

/// Why `name` cannot name a store, if it cannot: the `state` crate's rule, checked here so a
/// bad name is reported with its line before any task opens a store.
fn store_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a store name is required")
    } else {
        state::store_name_problem(name)
    }
}

/// Stores: each declared once, under a name the `state` crate accepts; every store a process
/// node lists declared; every declared store used. The builder rejects unknown, unused and
/// duplicate stores too, but without a place in the file; here each gets its path and line.
pub(super) fn validate(
    stores: &[StoreConfig],
    nodes: &[NodeConfig],
    mut push: impl FnMut(String, String),
) {
    let mut declared: HashMap<&str, usize> = HashMap::new();
    for (k, s) in stores.iter().enumerate() {
        let path = format!("stores[{k}].name");
        if let Some(reason) = store_name_problem(&s.name) {
            let message = if s.name.is_empty() {
                reason.to_owned()
            } else {
                format!(
                    "invalid store name `{}`: {reason} (a store's name is its sled tree's \
                     and part of its topic `<application_id>-<store>-changelog`)",
                    s.name
                )
            };
            push(path.clone(), message);
        }
        if s.name.is_empty() {
            continue;
        }
        // An invalid name still counts as declared, so the nodes using it are not also
        // told it is unknown.
        match declared.get(s.name.as_str()) {
            Some(first) => push(
                path,
                format!(
                    "duplicate store `{}` (first declared by stores[{first}])",
                    s.name
                ),
            ),
            None => {
                declared.insert(&s.name, k);
            }
        }
    }
    let known = {
        let mut k: Vec<&str> = declared.keys().copied().collect();
        k.sort_unstable();
        k.join(", ")
    };
    let mut used: HashSet<&str> = HashSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let NodeConfig::Process(p) = n else { continue };
        let names = p.store_names();
        for (j, name) in names.iter().enumerate() {
            let message = if !declared.contains_key(name.as_str()) {
                if known.is_empty() {
                    format!("unknown store `{name}` (no stores are declared under `stores`)")
                } else {
                    format!("unknown store `{name}` (declared: {known})")
                }
            } else if names[..j].contains(name) {
                format!("store `{name}` is listed twice")
            } else {
                used.insert(name);
                continue;
            };
            push(format!("nodes[{i}].stores[{j}]"), message);
        }
    }
    for (k, s) in stores.iter().enumerate() {
        if declared.get(s.name.as_str()) == Some(&k) && !used.contains(s.name.as_str()) {
            push(
                format!("stores[{k}]"),
                format!("store `{}` is not used by any processor", s.name),
            );
        }
    }
}
