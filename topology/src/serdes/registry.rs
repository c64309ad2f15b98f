//! Schema Registry clients.
//!
//! [`SchemaRegistry`] is what the Avro serde needs: a writer schema by id, and the id of a
//! schema registered (or looked up) under a subject. [`HttpSchemaRegistry`] talks to a
//! Confluent-compatible registry through `schema_registry_converter`'s REST calls and caches both
//! directions, so a schema id is fetched once per process. [`MemorySchemaRegistry`] keeps
//! everything in memory, for tests and the test driver (Kafka Streams' `mock://` scope).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use apache_avro::Schema;
use futures::future::BoxFuture;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_referenced_schema, get_schema_by_id, post_schema,
};
use schema_registry_converter::schema_registry_common::{
    RegisteredSchema, SchemaType, SuppliedSchema,
};

/// Installs ring as rustls' process-wide crypto provider unless one is installed already.
///
/// The workspace builds reqwest with "rustls-no-provider" (one crypto library, ring, instead of
/// ring and aws-lc); a reqwest client built before a provider is installed panics, and
/// `SrSettings::new` builds one.
fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An `Err` only says another thread installed a provider in between: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Errors from a schema registry.
#[derive(Debug, thiserror::Error, Clone)]
pub enum RegistryError {
    /// The registry does not know this id.
    #[error("schema id {id} not found in the registry: {message}")]
    UnknownId {
        /// Schema id.
        id: u32,
        /// Registry's message.
        message: String,
    },
    /// Registering or looking up a subject failed.
    #[error("registering schema under subject {subject} failed: {message}")]
    Register {
        /// Subject.
        subject: String,
        /// Registry's message.
        message: String,
    },
    /// The registry did not answer, or answered 502/503: the same call may succeed later
    /// (the runtime retries it instead of dead-lettering the record).
    #[error("the schema registry is unavailable: {message}")]
    Unavailable {
        /// The client's message.
        message: String,
    },
    /// The registry returned a schema that does not parse as Avro.
    #[error("schema id {id} is not valid Avro: {message}")]
    BadSchema {
        /// Schema id.
        id: u32,
        /// Parser message.
        message: String,
    },
}

/// What the Avro serde needs from a schema registry. Implementations cache.
pub trait SchemaRegistry: Send + Sync + std::fmt::Debug {
    /// The schema registered under `id`.
    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<Arc<Schema>, RegistryError>>;
    /// Registers `schema` under `subject` (or finds it there) and returns its id.
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a Schema,
    ) -> BoxFuture<'a, Result<u32, RegistryError>>;
}

/// A subject and a schema's canonical form.
type SubjectSchema = (String, String);

/// A Confluent-compatible registry over HTTP, with an id → schema cache and a
/// (subject, schema) → id cache.
///
/// # Example
/// ```
/// use topology::serdes::HttpSchemaRegistry;
/// let registry = HttpSchemaRegistry::new("http://127.0.0.1:8081");
/// assert_eq!(registry.url(), "http://127.0.0.1:8081");
/// ```
pub struct HttpSchemaRegistry {
    url: String,
    settings: SrSettings,
    by_id: RwLock<HashMap<u32, Arc<Schema>>>,
    by_subject: RwLock<HashMap<(String, String), u32>>,
    /// One registration at a time per (subject, schema): concurrent first uses of a sink wait
    /// for it and then answer from the cache.
    registering: std::sync::Mutex<HashMap<SubjectSchema, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for HttpSchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSchemaRegistry")
            .field("url", &self.url)
            .finish()
    }
}

impl HttpSchemaRegistry {
    /// A client for the registry at `url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        install_tls_provider();
        HttpSchemaRegistry {
            settings: SrSettings::new(url.clone()),
            url,
            by_id: RwLock::new(HashMap::new()),
            by_subject: RwLock::new(HashMap::new()),
            registering: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn cached_id(&self, key: &(String, String)) -> Option<u32> {
        self.by_subject
            .read()
            .ok()
            .and_then(|m| m.get(key).copied())
    }

    fn registration_lock(&self, key: &(String, String)) -> Arc<tokio::sync::Mutex<()>> {
        self.registering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many schemas are cached by id (for tests and diagnostics).
    pub fn cached_ids(&self) -> usize {
        self.by_id.read().map(|m| m.len()).unwrap_or(0)
    }
}

impl SchemaRegistry for HttpSchemaRegistry {
    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<Arc<Schema>, RegistryError>> {
        Box::pin(async move {
            if let Some(s) = self.by_id.read().ok().and_then(|m| m.get(&id).cloned()) {
                return Ok(s);
            }
            let registered =
                get_schema_by_id(id, &self.settings)
                    .await
                    .map_err(|e| match e.retriable {
                        true => RegistryError::Unavailable {
                            message: e.to_string(),
                        },
                        false => RegistryError::UnknownId {
                            id,
                            message: e.to_string(),
                        },
                    })?;
            // A schema with Confluent schema references (Debezium registers its `Source` record
            // as one) gets them inlined, so the writer schema is self-contained.
            let text = if registered.references.is_empty() {
                registered.schema
            } else {
                resolve_references(&self.settings, registered, 0)
                    .await
                    .map_err(|message| RegistryError::UnknownId { id, message })?
            };
            let schema = Schema::parse_str(&text).map_err(|e| RegistryError::BadSchema {
                id,
                message: e.to_string(),
            })?;
            let schema = Arc::new(schema);
            if let Ok(mut m) = self.by_id.write() {
                m.insert(id, schema.clone());
            }
            Ok(schema)
        })
    }

    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a Schema,
    ) -> BoxFuture<'a, Result<u32, RegistryError>> {
        Box::pin(async move {
            let canonical = schema.canonical_form();
            let cache_key = (subject.to_owned(), canonical);
            if let Some(id) = self.cached_id(&cache_key) {
                return Ok(id);
            }
            let lock = self.registration_lock(&cache_key);
            let _registering = lock.lock().await;
            if let Some(id) = self.cached_id(&cache_key) {
                return Ok(id);
            }
            // Registering an identical schema again answers its id; a second attempt covers a
            // concurrent first registration by another process, which Apicurio's Confluent API
            // answers with 409 "artifact already exists" (a real conflict fails twice).
            let mut attempt = 0;
            let registered = loop {
                attempt += 1;
                let supplied = SuppliedSchema::new(None, SchemaType::Avro, cache_key.1.clone());
                match post_schema(&self.settings, subject.to_owned(), supplied).await {
                    Ok(registered) => break registered,
                    Err(e) if e.retriable => {
                        return Err(RegistryError::Unavailable {
                            message: e.to_string(),
                        });
                    }
                    Err(_) if attempt < 2 => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        return Err(RegistryError::Register {
                            subject: subject.to_owned(),
                            message: e.to_string(),
                        });
                    }
                }
            };
            if let Ok(mut m) = self.by_subject.write() {
                m.insert(cache_key, registered.id);
            }
            if let Ok(mut m) = self.by_id.write() {
                m.insert(registered.id, Arc::new(schema.clone()));
            }
            Ok(registered.id)
        })
    }
}

/// How deep references may nest (a reference of a reference of …) before giving up.
const MAX_REFERENCE_DEPTH: usize = 16;

/// Fetches the schemas `registered` references (recursively) and returns its text with each
/// one inlined at its first use.
fn resolve_references(
    settings: &SrSettings,
    registered: RegisteredSchema,
    depth: usize,
) -> BoxFuture<'_, Result<String, String>> {
    Box::pin(async move {
        if depth > MAX_REFERENCE_DEPTH {
            return Err(format!(
                "schema references nest deeper than {MAX_REFERENCE_DEPTH}"
            ));
        }
        let mut references = Vec::with_capacity(registered.references.len());
        for reference in &registered.references {
            let referenced = get_referenced_schema(settings, reference)
                .await
                .map_err(|e| {
                    format!(
                        "reference {} (subject {} version {}): {e}",
                        reference.name, reference.subject, reference.version
                    )
                })?;
            let text = if referenced.references.is_empty() {
                referenced.schema
            } else {
                resolve_references(settings, referenced, depth + 1).await?
            };
            references.push((reference.name.clone(), text));
        }
        inline_references(&registered.schema, &references)
    })
}

/// Inlines Confluent schema references into an Avro schema: the first use of each referenced
/// name (a full name, or a short name in the enclosing namespace) is replaced by the referenced
/// schema's definition; later uses stay names, which the definition now declares. Unused
/// references are ignored.
///
/// # Example
/// ```
/// use topology::serdes::inline_references;
/// let source = r#"{"type":"record","name":"Source","namespace":"io.debezium","fields":[{"name":"db","type":"string"}]}"#;
/// let envelope = r#"{"type":"record","name":"Envelope","namespace":"t","fields":[
///     {"name":"source","type":"io.debezium.Source"},
///     {"name":"previous","type":["null","io.debezium.Source"]}]}"#;
/// let text = inline_references(envelope, &[("io.debezium.Source".into(), source.into())]).unwrap();
/// assert!(apache_avro::Schema::parse_str(&text).is_ok());
/// ```
pub fn inline_references(schema: &str, references: &[(String, String)]) -> Result<String, String> {
    let mut root: serde_json::Value =
        serde_json::from_str(schema).map_err(|e| format!("schema is not JSON: {e}"))?;
    let mut pending = Vec::with_capacity(references.len());
    for (name, text) in references {
        let definition: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("referenced schema {name} is not JSON: {e}"))?;
        pending.push((name.clone(), definition));
    }
    inline_in(&mut root, None, &mut pending);
    serde_json::to_string(&root).map_err(|e| e.to_string())
}

fn inline_in(
    value: &mut serde_json::Value,
    namespace: Option<&str>,
    pending: &mut Vec<(String, serde_json::Value)>,
) {
    use serde_json::Value as Json;
    match value {
        Json::String(name) => {
            let full = match namespace {
                Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
                _ => name.clone(),
            };
            if let Some(at) = pending
                .iter()
                .position(|(wanted, _)| *wanted == full || wanted == name)
            {
                *value = pending.remove(at).1;
            }
        }
        Json::Array(items) => {
            for item in items {
                inline_in(item, namespace, pending);
            }
        }
        Json::Object(object) => {
            // A named type sets the namespace of what it contains.
            let own = match object.get("name").and_then(Json::as_str) {
                Some(name) if name.contains('.') => {
                    name.rsplit_once('.').map(|(ns, _)| ns.to_owned())
                }
                Some(_) => object
                    .get("namespace")
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                None => None,
            };
            let inner = own.as_deref().or(namespace);
            if let Some(kind) = object.get_mut("type") {
                inline_in(kind, inner, pending);
            }
            if let Some(Json::Array(fields)) = object.get_mut("fields") {
                for field in fields {
                    if let Some(kind) = field.get_mut("type") {
                        inline_in(kind, inner, pending);
                    }
                }
            }
            for key in ["items", "values"] {
                if let Some(child) = object.get_mut(key) {
                    inline_in(child, inner, pending);
                }
            }
        }
        _ => {}
    }
}

/// An in-memory registry: ids count up from 1; the same canonical schema under the same subject
/// keeps its id.
///
/// # Example
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use topology::serdes::{MemorySchemaRegistry, SchemaRegistry};
/// let r = MemorySchemaRegistry::default();
/// let s = apache_avro::Schema::parse_str(r#""string""#).unwrap();
/// let id = r.register("t-value", &s).await.unwrap();
/// assert_eq!(r.register("t-value", &s).await.unwrap(), id);
/// assert!(r.schema_by_id(id).await.is_ok());
/// # });
/// ```
#[derive(Debug, Default)]
pub struct MemorySchemaRegistry {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    schemas: Vec<Arc<Schema>>,
    subjects: HashMap<(String, String), u32>,
}

impl SchemaRegistry for MemorySchemaRegistry {
    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<Arc<Schema>, RegistryError>> {
        let found = self.inner.lock().ok().and_then(|inner| {
            (id as usize)
                .checked_sub(1)
                .and_then(|i| inner.schemas.get(i).cloned())
        });
        Box::pin(async move {
            found.ok_or(RegistryError::UnknownId {
                id,
                message: "not registered".into(),
            })
        })
    }

    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a Schema,
    ) -> BoxFuture<'a, Result<u32, RegistryError>> {
        let result = match self.inner.lock() {
            Ok(mut inner) => {
                let key = (subject.to_owned(), schema.canonical_form());
                // The same schema under another subject keeps the id, as in Confluent's registry.
                let existing = inner
                    .schemas
                    .iter()
                    .position(|s| s.canonical_form() == key.1)
                    .map(|i| i as u32 + 1);
                let id = match inner.subjects.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = match existing {
                            Some(id) => id,
                            None => {
                                inner.schemas.push(Arc::new(schema.clone()));
                                inner.schemas.len() as u32
                            }
                        };
                        inner.subjects.insert(key, id);
                        id
                    }
                };
                Ok(id)
            }
            Err(_) => Err(RegistryError::Register {
                subject: subject.to_owned(),
                message: "registry lock poisoned".into(),
            }),
        };
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infrastructure/connect/samples"
    );

    fn sample(name: &str) -> String {
        std::fs::read_to_string(format!("{SAMPLES}/{name}")).expect("sample schema")
    }

    /// The envelope Debezium 3.6.1 registered through Apicurio's converter, whose `source`
    /// field is a reference to `io.debezium.connector.mongo.Source`.
    #[test]
    fn debezium_envelope_with_its_source_reference_parses() {
        let envelope = sample("apicurio-avro-value-schema.json");
        assert!(
            Schema::parse_str(&envelope).is_err(),
            "unresolved without the reference"
        );
        let source = sample("apicurio-avro-source-schema.json");
        let text = inline_references(
            &envelope,
            &[("io.debezium.connector.mongo.Source".into(), source)],
        )
        .expect("inlined");
        let schema = Schema::parse_str(&text).expect("self-contained schema");
        let Schema::Record(record) = &schema else {
            panic!("a record: {schema:?}")
        };
        let field = record
            .fields
            .iter()
            .find(|field| field.name == "source")
            .expect("source field");
        assert!(
            matches!(&field.schema, Schema::Record(source) if source.name.fullname(None) == "io.debezium.connector.mongo.Source"),
            "{:?}",
            field.schema
        );
    }

    #[test]
    fn short_names_resolve_in_the_enclosing_namespace_and_later_uses_stay_names() {
        let inner = r#"{"type":"record","name":"Inner","namespace":"a.b","fields":[{"name":"x","type":"int"}]}"#;
        let outer = r#"{"type":"record","name":"Outer","namespace":"a.b","fields":[
            {"name":"first","type":{"type":"array","items":"Inner"}},
            {"name":"second","type":["null","a.b.Inner"]}]}"#;
        let text = inline_references(outer, &[("a.b.Inner".into(), inner.into())]).expect("ok");
        assert_eq!(text.matches("\"fields\"").count(), 2, "{text}");
        Schema::parse_str(&text).expect("valid");
        assert!(inline_references("not json", &[]).is_err());
    }
}
