//! Service settings: a YAML file (`--config`) with environment variables on top, the way the
//! Helm chart configures the services (ConfigMap for the file, Secrets as environment).
//!
//! Environment variables override the file: `KAFKA_BOOTSTRAP`, `KAFKA_GROUP_ID`, `SCHEMA_REGISTRY_URL`,
//! `MONGODB_URI`, `MONGODB_DATABASE`, `S3_ENDPOINT`, `S3_BUCKET`, `S3_PUBLIC_BASE_URL`,
//! `AWS_REGION` (credentials come from the AWS SDK's own chain: `AWS_ACCESS_KEY_ID`, …),
//! `CATALOG_STATE_DIR`, `CATALOG_LISTEN`, `CATALOG_API_TOKEN`.
//!
//! Secrets (the API token, the MongoDB URI's password, the S3 secret key and session token,
//! Kafka properties that hold passwords) never appear in the settings' `Debug` output, so
//! logging the settings cannot leak them.

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

/// Every service's settings; each service reads the part it needs. `Debug` redacts secrets.
#[derive(Clone, Deserialize)]
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
    /// The `host:port` other instances reach this one's HTTP API on, announced to the image
    /// pipeline's consumer group so `GET /api/v1/pipeline/products/{id}/state` can name the
    /// instance holding a product (Kubernetes: the pod IP and the port).
    pub advertised_address: Option<String>,
    /// The image pipeline's topology file; the built-in one when absent.
    pub topology_file: Option<PathBuf>,
    /// Back the image pipeline's state with a compacted changelog topic, so a pod that starts
    /// with an empty state directory restores it before processing.
    pub state_changelog: bool,
    /// When set, the write endpoints (`POST /api/v1/products`,
    /// `DELETE /api/v1/complete-products/{id}`) require `Authorization: Bearer <api_token>`;
    /// reads stay open. Better given through the environment (`CATALOG_API_TOKEN`, from a
    /// Secret) than in the file.
    pub api_token: Option<String>,
}

const REDACTED: &str = "<redacted>";

/// `uri` with the password of its user info (`scheme://user:password@host…`) replaced.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, hosts)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            let password = if user_info.contains(':') {
                format!(":{REDACTED}")
            } else {
                String::new()
            };
            format!("{scheme}://{user}{password}@{hosts}{tail}")
        }
        None => uri.to_owned(),
    }
}

/// Whether a Kafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.jaas.config`, …).
fn secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "credentials"]
        .iter()
        .any(|word| name.contains(word))
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |value: &Option<String>| value.as_ref().map(|_| REDACTED);
        let kafka_properties: std::collections::BTreeMap<&str, &str> = self
            .kafka
            .properties
            .iter()
            .map(|(name, value)| {
                let shown = if secret_property(name) {
                    REDACTED
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        formatter
            .debug_struct("Settings")
            .field("listen", &self.listen)
            .field(
                "kafka",
                &format_args!(
                    "KafkaSettings {{ bootstrap: {:?}, properties: {:?}, exactly_once: {} }}",
                    self.kafka.bootstrap, kafka_properties, self.kafka.exactly_once
                ),
            )
            .field(
                "schema_registry_url",
                &redact_uri(&self.schema_registry_url),
            )
            .field(
                "mongodb",
                &format_args!(
                    "MongoSettings {{ uri: {:?}, database: {:?}, products_collection: {:?}, \
                     complete_products_collection: {:?}, status_collection: {:?} }}",
                    redact_uri(&self.mongodb.uri),
                    self.mongodb.database,
                    self.mongodb.products_collection,
                    self.mongodb.complete_products_collection,
                    self.mongodb.status_collection
                ),
            )
            .field(
                "s3",
                &images::S3Config {
                    secret_access_key: redact(&self.s3.secret_access_key).map(str::to_owned),
                    session_token: redact(&self.s3.session_token).map(str::to_owned),
                    ..self.s3.clone()
                },
            )
            .field("fetch", &self.fetch)
            .field("fetch_retry", &self.fetch_retry)
            .field("topics", &self.topics)
            .field("state_dir", &self.state_dir)
            .field("advertised_address", &self.advertised_address)
            .field("topology_file", &self.topology_file)
            .field("api_token", &redact(&self.api_token))
            .finish()
    }
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
            advertised_address: None,
            topology_file: None,
            state_changelog: true,
            api_token: None,
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
    /// The consumer group (the topology's application id); the topology file's
    /// `application_id` when absent. Give each deployment its own: members of one group that
    /// read different topics still rebalance together.
    pub group_id: Option<String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            properties: Default::default(),
            exactly_once: false,
            group_id: None,
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

    /// The API token of the write endpoints, when one is configured (and not blank).
    pub fn api_token(&self) -> Option<crate::http::ApiToken> {
        self.api_token
            .as_deref()
            .and_then(crate::http::ApiToken::new)
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
        if let Some(value) = lookup("KAFKA_GROUP_ID") {
            self.kafka.group_id = Some(value);
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
        if let Some(value) = lookup("CATALOG_ADVERTISED_ADDRESS") {
            self.advertised_address = Some(value);
        }
        if let Some(value) = lookup("CATALOG_API_TOKEN") {
            self.api_token = Some(value);
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

    /// The README's settings example parses and is what the defaults say, so it stays true.
    #[test]
    fn the_readme_example_is_valid_and_shows_the_defaults() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```yaml\nlisten:")
            .expect("the README has a settings example");
        let body = &readme[start + "```yaml\n".len()..];
        let example = &body[..body.find("```").expect("closed block")];
        let parsed = Settings::from_yaml(example, "README.md").expect("the example parses");
        let defaults = Settings::default();
        assert_eq!(parsed.topics.cdc, defaults.topics.cdc);
        assert_eq!(parsed.mongodb.database, defaults.mongodb.database);
        assert_eq!(parsed.s3.bucket, defaults.s3.bucket);
        assert_eq!(parsed.fetch, defaults.fetch);
        assert_eq!(parsed.fetch_retry, defaults.fetch_retry);
        assert_eq!(parsed.state_changelog, defaults.state_changelog);
        assert_eq!(parsed.listen, defaults.listen);
    }

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
    fn debug_redacts_every_secret() {
        let mut settings = Settings::from_yaml(
            "mongodb: {uri: 'mongodb://app:hunter2-mongo@db1:27017,db2/?replicaSet=rs'}\n\
             s3: {bucket: b, access_key_id: AKIA1, secret_access_key: hunter2-s3, session_token: hunter2-session}\n\
             kafka: {properties: {sasl.password: hunter2-kafka, sasl.jaas.config: 'x password=hunter2-jaas', client.id: c1}}\n\
             api_token: hunter2-file-token\n",
            "test.yaml",
        )
        .expect("valid");
        let text = format!("{settings:?} {settings:#?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("mongodb://app:<redacted>@db1:27017,db2/?replicaSet=rs"),
            "{text}"
        );
        assert!(text.contains("AKIA1") && text.contains("c1"), "{text}");
        settings
            .apply_env(|name| (name == "CATALOG_API_TOKEN").then(|| "hunter2-env".to_owned()))
            .expect("env");
        assert_eq!(settings.api_token.as_deref(), Some("hunter2-env"));
        let token = settings.api_token().expect("a token");
        assert!(token.matches("hunter2-env") && !token.matches("hunter2-env2"));
        assert!(!format!("{settings:?} {token:?}").contains("hunter2"));
    }

    #[test]
    fn redacts_uris() {
        assert_eq!(redact_uri("mongodb://h:1/db"), "mongodb://h:1/db");
        assert_eq!(redact_uri("mongodb://u@h"), "mongodb://u@h");
        assert_eq!(
            redact_uri("mongodb://u:p%40w@h/x?a=b"),
            "mongodb://u:<redacted>@h/x?a=b"
        );
        assert_eq!(redact_uri("not a uri"), "not a uri");
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
