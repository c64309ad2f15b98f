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
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

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
        HttpSchemaRegistry {
            settings: SrSettings::new(url.clone()),
            url,
            by_id: RwLock::new(HashMap::new()),
            by_subject: RwLock::new(HashMap::new()),
        }
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
            let registered = get_schema_by_id(id, &self.settings).await.map_err(|e| {
                RegistryError::UnknownId {
                    id,
                    message: e.to_string(),
                }
            })?;
            let schema =
                Schema::parse_str(&registered.schema).map_err(|e| RegistryError::BadSchema {
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
            if let Some(id) = self
                .by_subject
                .read()
                .ok()
                .and_then(|m| m.get(&cache_key).copied())
            {
                return Ok(id);
            }
            let supplied = SuppliedSchema::new(None, SchemaType::Avro, cache_key.1.clone());
            let registered = post_schema(&self.settings, subject.to_owned(), supplied)
                .await
                .map_err(|e| RegistryError::Register {
                    subject: subject.to_owned(),
                    message: e.to_string(),
                })?;
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
