//! Store declarations.
//!
//! A [`StoreSpec`] names a state store and how it is kept (changelog, read cache). The graph
//! records which processors use it; the runtime opens one instance per task. It lives apart
//! from both so that tasks, which open stores, need not know the graph, whose processors are
//! handed tasks' contexts.

/// A state store declared in a topology: one instance per task of the sub-topology whose
/// processors use it, under `state_dir/<application_id>/<task>/`, optionally backed by the
/// compacted changelog topic `<application_id>-<name>-changelog` (one partition per source
/// partition).
///
/// Keys and values are typed where a processor opens the store
/// ([`ProcessorContext::store`](crate::ProcessorContext::store)): they are encoded with the
/// `state` crate's codec (postcard), and the changelog carries those same bytes.
///
/// # Example
/// ```
/// use topology::StoreSpec;
/// let spec = StoreSpec::new("counts").cache_entries(1024);
/// assert!(spec.changelog);
/// assert!(!StoreSpec::new("scratch").without_changelog().changelog);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// The store's name: its sled tree, and part of its changelog topic's name.
    pub name: String,
    /// Whether writes go to the changelog topic (restore on another instance needs it).
    pub changelog: bool,
    /// Entries kept in a read cache in front of sled (0: none).
    pub cache_entries: usize,
}

impl StoreSpec {
    /// A store named `name`, with a changelog and no read cache.
    pub fn new(name: &str) -> Self {
        StoreSpec {
            name: name.to_owned(),
            changelog: true,
            cache_entries: 0,
        }
    }

    /// Local only: nothing is written to a changelog, so a task moved to another instance
    /// starts with an empty store.
    pub fn without_changelog(mut self) -> Self {
        self.changelog = false;
        self
    }

    /// A read cache of `entries` entries.
    pub fn cache_entries(mut self, entries: usize) -> Self {
        self.cache_entries = entries;
        self
    }
}
