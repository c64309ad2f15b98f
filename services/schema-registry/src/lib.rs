//! A small Confluent-compatible Schema Registry.
//!
//! [`Registry`] keeps subjects, versions, global schema ids and compatibility settings (in memory,
//! or persisted in sled with [`Registry::open`]); [`app`] exposes it over the REST subset that
//! Confluent clients use, and [`serve`] runs that on a TCP listener. The standalone mode uses the
//! same registry in-process. Only Avro schemas are supported.
//!
//! # Example
//!
//! ```
//! use schema_registry::{Registry, RegistryError};
//!
//! let registry = Registry::in_memory();
//! let v1 = r#"{"type":"record","name":"P","fields":[{"name":"id","type":"string"}]}"#;
//! let id = registry.register("products-value", v1).unwrap();
//! assert_eq!(registry.latest("products-value").unwrap().id, id);
//!
//! // A required field added without a default breaks BACKWARD (the default level).
//! let v2 = r#"{"type":"record","name":"P","fields":[{"name":"id","type":"string"},{"name":"n","type":"long"}]}"#;
//! let err = registry.register("products-value", v2).unwrap_err();
//! assert!(matches!(err, RegistryError::Incompatible { .. }));
//! assert_eq!(err.error_code(), 409);
//! ```

pub mod compat;
mod error;
mod http;
pub mod registry;

pub use compat::CompatibilityLevel;
pub use error::{RegistryError, Result};
pub use http::{CONTENT_TYPE, app, serve, serve_with_shutdown};
pub use registry::{Registry, SubjectVersion, SubjectVersionRef, VersionSpec};
