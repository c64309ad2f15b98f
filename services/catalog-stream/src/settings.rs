//! Service settings: a YAML file (`--config`) with environment variables on top, the way the
//! Helm chart configures the services (ConfigMap for the file, Secrets as environment).
//!
//! Environment variables override the file: `KAFKA_BOOTSTRAP`, `SCHEMA_REGISTRY_URL`,
//! `MONGODB_URI`, `MONGODB_DATABASE`, `S3_ENDPOINT`, `S3_BUCKET`, `S3_PUBLIC_BASE_URL`,
//! `AWS_REGION` (credentials come from the AWS SDK's own chain: `AWS_ACCESS_KEY_ID`, …),
//! `CATALOG_STATE_DIR`, `CATALOG_LISTEN`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file (or `environment`).
        path: String,
        /// What is wrong, with its place.
        message: String,
    },
}

/// Every service's settings; each service reads the part it needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Confluent-compatible Schema Registry URL.
    pub schema_registry_url: String,
    /// MongoDB.
    pub mongodb: MongoSettings,
    /// S3 (bucket, endpoint, credentials, public URL or presigning).
    pub s3: images::S3Config,
    /// Image fetch limits and the SSRF guard.
    pub fetch: images::FetchConfig,
    /// How transient image fetch failures are retried.
    pub fetch_retry: images::RetryPolicy,
    /// Topic names.
    pub topics: Topics,
    /// Where the image pipeline keeps its sled state.
    pub state_dir: PathBuf,
    /// The image pipeline's topology file; the built-in one when absent.
    pub topology_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            kafka: KafkaSettings::default(),
            schema_registry_url: "http://127.0.0.1:8081".into(),
            mongodb: MongoSettings::default(),
            s3: images::S3Config {
                bucket: "catalog-images".into(),
                create_bucket: true,
                ..Default::default()
            },
            fetch: images::FetchConfig::default(),
            fetch_retry: images::RetryPolicy::default(),
            topics: Topics::default(),
            state_dir: PathBuf::from("data/state"),
            topology_file: None,
        }
    }
}

/// Kafka settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Extra librdkafka properties (security and tuning), applied to every client.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Exactly-once processing through transactions.
    pub exactly_once: bool,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            properties: Default::default(),
            exactly_once: false,
        }
    }
}

/// MongoDB settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoSettings {
    /// Connection string.
    pub uri: String,
    /// Database.
    pub database: String,
    /// The products collection (watched by CDC).
    pub products_collection: String,
    /// The complete-products collection.
    pub complete_products_collection: String,
    /// The per-product status collection.
    pub status_collection: String,
}

impl Default for MongoSettings {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "catalog".into(),
            products_collection: "products".into(),
            complete_products_collection: "complete_products".into(),
            status_collection: "product_status".into(),
        }
    }
}

/// Topic names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// The CDC topic of the products collection.
    pub cdc: String,
    /// Upserts, between the diff-checker and the image collector.
    pub upserts: String,
    /// Deletes, between the diff-checker and the image remover.
    pub deletes: String,
    /// Image events, to the complete-products sink.
    pub image_events: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            cdc: "catalog.catalog.products".into(),
            upserts: "products.upserts".into(),
            deletes: "products.deletes".into(),
            image_events: "image-events".into(),
        }
    }
}

impl Settings {
    /// Reads `path` (when given), then applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let mut settings = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_yaml(&text, &path.display().to_string())?
            }
            None => Self::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok())?;
        Ok(settings)
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, SettingsError> {
        serde_norway::from_str(text).map_err(|error| SettingsError::Invalid {
            path: origin.to_owned(),
            message: error.to_string(),
        })
    }

    /// Applies environment overrides read through `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), SettingsError> {
        if let Some(value) = lookup("KAFKA_BOOTSTRAP") {
            self.kafka.bootstrap = value;
        }
        if let Some(value) = lookup("SCHEMA_REGISTRY_URL") {
            self.schema_registry_url = value;
        }
        if let Some(value) = lookup("MONGODB_URI") {
            self.mongodb.uri = value;
        }
        if let Some(value) = lookup("MONGODB_DATABASE") {
            self.mongodb.database = value;
        }
        if let Some(value) = lookup("S3_ENDPOINT") {
            self.s3.endpoint = Some(value);
        }
        if let Some(value) = lookup("S3_BUCKET") {
            self.s3.bucket = value;
        }
        if let Some(value) = lookup("S3_PUBLIC_BASE_URL") {
            self.s3.public_base_url = Some(value);
        }
        if let Some(value) = lookup("AWS_REGION") {
            self.s3.region = Some(value);
        }
        if let Some(value) = lookup("CATALOG_STATE_DIR") {
            self.state_dir = PathBuf::from(value);
        }
        if let Some(value) = lookup("CATALOG_LISTEN") {
            self.listen = value.parse().map_err(|error| SettingsError::Invalid {
                path: "environment".into(),
                message: format!("CATALOG_LISTEN=`{value}`: {error}"),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment() {
        let mut settings = Settings::from_yaml(
            "listen: 0.0.0.0:9000\nkafka: {bootstrap: 'k:9092'}\ns3: {bucket: b}\n",
            "test.yaml",
        )
        .expect("valid");
        assert_eq!(settings.kafka.bootstrap, "k:9092");
        settings
            .apply_env(|name| (name == "KAFKA_BOOTSTRAP").then(|| "env:9092".to_owned()))
            .expect("env");
        assert_eq!(settings.kafka.bootstrap, "env:9092");
        assert_eq!(settings.s3.bucket, "b");
        assert_eq!(settings.topics.cdc, "catalog.catalog.products");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let error = Settings::from_yaml("kafka: {bootstrp: x}\n", "svc.yaml").expect_err("typo");
        let text = error.to_string();
        assert!(
            text.contains("svc.yaml") && text.contains("bootstrp"),
            "{text}"
        );
    }
}
