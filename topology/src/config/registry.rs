//! The names a topology file may refer to, filled in code: processors, map functions, topics
//! and Avro schemas (a plain name → value map, no macro registry).

use std::collections::HashMap;
use std::sync::Arc;

use crate::graph::{FlatMapFn, MapFn};
use crate::processor::Processor;
use crate::serdes::SchemaRegistry;

/// Builds a processor from a node's `config` block.
pub type ProcessorFactory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Arc<dyn Processor>, String> + Send + Sync>;

/// Names the configuration file may refer to, filled in code.
///
/// Topics and Avro schemas registered here are referred to from the file as `{ref: name}`, so
/// the program that embeds a topology decides the real topic names and the schemas (often
/// built in code) while the file keeps the wiring.
///
/// # Example
/// ```
/// use topology::{config::Registry, processor_fn, ProcessError};
/// let mut r = Registry::new();
/// r.processor("echo", |_cfg| Ok(processor_fn(|rec| async move { Ok::<_, ProcessError>(vec![rec]) })));
/// r.topic("cdc", "catalog.catalog.products");
/// r.avro_schema("id", apache_avro::Schema::parse_str(r#""string""#).unwrap());
/// assert!(r.has_processor("echo"));
/// assert_eq!(r.topic_name("cdc"), Some("catalog.catalog.products"));
/// ```
#[derive(Default, Clone)]
pub struct Registry {
    pub(super) processors: HashMap<String, ProcessorFactory>,
    /// The stores each processor reaches through its context, by processor name.
    pub(super) processor_stores: HashMap<String, Vec<String>>,
    pub(super) maps: HashMap<String, MapFn>,
    pub(super) flat_maps: HashMap<String, FlatMapFn>,
    pub(super) topics: HashMap<String, String>,
    pub(super) schemas: HashMap<String, apache_avro::Schema>,
    pub(super) schema_registry: Option<Arc<dyn SchemaRegistry>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a processor factory.
    pub fn processor(
        &mut self,
        name: &str,
        factory: impl Fn(&serde_json::Value) -> Result<Arc<dyn Processor>, String>
        + Send
        + Sync
        + 'static,
    ) -> &mut Self {
        self.processors.insert(name.to_owned(), Arc::new(factory));
        self
    }
    /// Says that processor `name` reaches `stores` through its context: a process node of
    /// that processor must name them in its `stores`, or validation fails (instead of every
    /// record failing at run time).
    pub fn processor_uses_stores(&mut self, name: &str, stores: &[&str]) -> &mut Self {
        self.processor_stores.insert(
            name.to_owned(),
            stores.iter().map(|store| (*store).to_owned()).collect(),
        );
        self
    }
    /// Registers a map function.
    pub fn map(
        &mut self,
        name: &str,
        f: impl Fn(crate::Record) -> crate::Record + Send + Sync + 'static,
    ) -> &mut Self {
        self.maps.insert(name.to_owned(), Arc::new(f));
        self
    }
    /// Registers a flat-map function.
    pub fn flat_map(
        &mut self,
        name: &str,
        f: impl Fn(crate::Record) -> Vec<crate::Record> + Send + Sync + 'static,
    ) -> &mut Self {
        self.flat_maps.insert(name.to_owned(), Arc::new(f));
        self
    }
    /// Names a topic: the file's `topic: {ref: name}` reads or writes `topic`.
    pub fn topic(&mut self, name: &str, topic: &str) -> &mut Self {
        self.topics.insert(name.to_owned(), topic.to_owned());
        self
    }
    /// Names an Avro schema: the file's `{type: avro, schema: {ref: name}}` writes with it.
    pub fn avro_schema(&mut self, name: &str, schema: apache_avro::Schema) -> &mut Self {
        self.schemas.insert(name.to_owned(), schema);
        self
    }
    /// Uses this schema registry for `avro` serdes (instead of `schema_registry_url`).
    ///
    /// Nothing else stands in for a missing registry: a file with `avro` serdes and neither
    /// this nor `schema_registry_url` fails validation. Tools that only check a file may pass
    /// a [`MemorySchemaRegistry`](crate::serdes::MemorySchemaRegistry) here.
    pub fn schema_registry(&mut self, registry: Arc<dyn SchemaRegistry>) -> &mut Self {
        self.schema_registry = Some(registry);
        self
    }
    /// Whether a processor of this name exists.
    pub fn has_processor(&self, name: &str) -> bool {
        self.processors.contains_key(name)
    }
    /// The topic registered under `name`.
    pub fn topic_name(&self, name: &str) -> Option<&str> {
        self.topics.get(name).map(String::as_str)
    }
    /// The names registered in `map`, sorted, for error messages.
    pub(super) fn known(map: &HashMap<String, impl Sized>) -> String {
        let mut k: Vec<_> = map.keys().map(String::as_str).collect();
        k.sort_unstable();
        k.join(", ")
    }
}
