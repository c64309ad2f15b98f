//! Checks of the Kafka Connect connector configurations shipped in `connectors/kafka-connect/`.
//!
//! A configuration file is a KafkaConnector-style JSON object `{"name": .., "config": {..}}`
//! (what `POST /connectors` takes). [`check`] reports every problem at once: keys each
//! connector class requires, converter classes, the topics it reads or writes.
//!
//! # Example
//! ```
//! use connectors::kafka_connect::{ConnectorConfig, check};
//! let config: ConnectorConfig = serde_json::from_str(r#"{"name": "s", "config": {
//!     "connector.class": "io.debezium.connector.mongodb.MongoDbConnector",
//!     "mongodb.connection.string": "${env:MONGODB_URI}", "topic.prefix": "catalog",
//!     "collection.include.list": "catalog.products"}}"#).expect("JSON");
//! assert_eq!(config.debezium_topics(), vec!["catalog.catalog.products".to_owned()]);
//! assert!(!check(&config).is_empty()); // converters, tombstones... missing
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// Debezium's MongoDB source connector class.
pub const DEBEZIUM_MONGODB: &str = "io.debezium.connector.mongodb.MongoDbConnector";
/// MongoDB's Kafka sink connector class.
pub const MONGODB_SINK: &str = "com.mongodb.kafka.connect.MongoSinkConnector";
/// Confluent's Avro converter.
pub const AVRO_CONVERTER: &str = "io.confluent.connect.avro.AvroConverter";
/// Apicurio's Avro converter (the alternative when only Apicurio Registry is available).
pub const APICURIO_AVRO_CONVERTER: &str = "io.apicurio.registry.utils.converter.AvroConverter";

/// A connector as `POST /connectors` takes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorConfig {
    /// Connector name.
    pub name: String,
    /// Its properties (all strings, as Connect wants them).
    pub config: BTreeMap<String, String>,
}

impl ConnectorConfig {
    /// A property.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }

    /// The connector class.
    pub fn class(&self) -> Option<&str> {
        self.get("connector.class")
    }

    /// The topics a Debezium MongoDB source writes: `{topic.prefix}.{db}.{collection}` for each
    /// entry `db.collection` of `collection.include.list` (entries are regular expressions;
    /// only literal ones name a topic).
    pub fn debezium_topics(&self) -> Vec<String> {
        let prefix = self.get("topic.prefix").unwrap_or_default();
        self.get("collection.include.list")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                // `catalog\.products` and `catalog.products` both name catalog.products.
                let literal = entry.replace("\\.", ".");
                format!("{prefix}.{literal}")
            })
            .collect()
    }

    /// The topics a sink connector reads (`topics`, comma-separated).
    pub fn sink_topics(&self) -> Vec<String> {
        self.get("topics")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Keys every connector of `class` must set.
pub fn required_keys(class: &str) -> &'static [&'static str] {
    match class {
        DEBEZIUM_MONGODB => &[
            "mongodb.connection.string",
            "topic.prefix",
            "collection.include.list",
            "capture.mode",
            "tombstones.on.delete",
            "key.converter",
            "value.converter",
            "errors.tolerance",
        ],
        MONGODB_SINK => &[
            "connection.uri",
            "database",
            "collection",
            "topics",
            "key.converter",
            "value.converter",
            "document.id.strategy",
            "writemodel.strategy",
        ],
        _ => &[],
    }
}

/// Every problem of `config`, empty when none.
pub fn check(config: &ConnectorConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(class) = config.class() else {
        return vec![format!("{}: connector.class is missing", config.name)];
    };
    if required_keys(class).is_empty() {
        problems.push(format!("{}: unknown connector class {class}", config.name));
    }
    for key in required_keys(class) {
        if config.get(key).is_none_or(|v| v.trim().is_empty()) {
            problems.push(format!("{}: {key} is required for {class}", config.name));
        }
    }
    for side in ["key", "value"] {
        let key = format!("{side}.converter");
        let Some(converter) = config.get(&key) else {
            continue;
        };
        if converter == AVRO_CONVERTER || converter == APICURIO_AVRO_CONVERTER {
            let url = format!("{key}.schema.registry.url");
            let apicurio = format!("{key}.apicurio.registry.url");
            if config.get(&url).is_none() && config.get(&apicurio).is_none() {
                problems.push(format!(
                    "{}: {key} is {converter} but neither {url} nor {apicurio} is set",
                    config.name
                ));
            }
        } else if converter != "org.apache.kafka.connect.json.JsonConverter" {
            problems.push(format!("{}: unexpected {key} {converter}", config.name));
        }
    }
    // Secrets come from a config provider, never inline.
    for key in ["mongodb.connection.string", "connection.uri"] {
        if let Some(uri) = config.get(key)
            && !(uri.starts_with("${file:") || uri.starts_with("${env:"))
        {
            problems.push(format!(
                "{}: {key} must be a ${{file:..}} or ${{env:..}} placeholder, not inline",
                config.name
            ));
        }
    }
    if class == DEBEZIUM_MONGODB {
        if config.get("capture.mode") != Some("change_streams_update_full") {
            problems.push(format!(
                "{}: capture.mode must be change_streams_update_full (updates carry `after`)",
                config.name
            ));
        }
        if config.get("tombstones.on.delete") != Some("true") {
            problems.push(format!(
                "{}: tombstones.on.delete must be true",
                config.name
            ));
        }
        if config.get("errors.tolerance") != Some("none") {
            problems.push(format!("{}: errors.tolerance must be none", config.name));
        }
    }
    problems
}
