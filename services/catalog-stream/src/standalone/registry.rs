//! The in-process Schema Registry (the project's own, in sled under the data directory) as the
//! engine's [`SchemaRegistry`].

use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use futures::future::BoxFuture;
use topology::serdes::{RegistryError, SchemaRegistry};

/// The in-process Schema Registry as the engine's [`SchemaRegistry`].
#[derive(Debug)]
pub struct InProcessRegistry {
    registry: Arc<schema_registry::Registry>,
    parsed: Mutex<std::collections::HashMap<u32, Arc<Schema>>>,
}

impl InProcessRegistry {
    /// Wraps `registry`.
    pub fn new(registry: Arc<schema_registry::Registry>) -> Self {
        Self {
            registry,
            parsed: Mutex::new(Default::default()),
        }
    }
}

impl SchemaRegistry for InProcessRegistry {
    fn schema_by_id(&self, id: u32) -> BoxFuture<'_, Result<Arc<Schema>, RegistryError>> {
        Box::pin(async move {
            if let Some(schema) = self
                .parsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
            {
                return Ok(schema.clone());
            }
            let text =
                self.registry
                    .schema_by_id(id)
                    .map_err(|error| RegistryError::UnknownId {
                        id,
                        message: error.to_string(),
                    })?;
            let schema =
                Arc::new(
                    Schema::parse_str(&text).map_err(|error| RegistryError::BadSchema {
                        id,
                        message: error.to_string(),
                    })?,
                );
            self.parsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, schema.clone());
            Ok(schema)
        })
    }

    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a Schema,
    ) -> BoxFuture<'a, Result<u32, RegistryError>> {
        Box::pin(async move {
            let register_error = |message: String| RegistryError::Register {
                subject: subject.to_owned(),
                message,
            };
            let text = serde_json::to_string(schema).map_err(|e| register_error(e.to_string()))?;
            self.registry
                .register(subject, &text)
                .map_err(|e| register_error(e.to_string()))
        })
    }
}
