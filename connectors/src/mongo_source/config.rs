//! The source's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::SourceError;

fn yes() -> bool {
    true
}

fn default_max_in_flight() -> usize {
    1024
}

fn default_backoff_max_ms() -> u64 {
    30_000
}

/// Configuration of a [`MongoChangeSource`](super::MongoChangeSource), named after Debezium's
/// MongoDB connector settings where one exists.
///
/// # Example
/// ```
/// use connectors::mongo_source::MongoSourceConfig;
/// let config = MongoSourceConfig::new("mongodb://127.0.0.1:27017", "catalog", "products", "/tmp/cdc-state");
/// config.validate().expect("valid");
/// assert_eq!(config.topic(), connectors::CDC_TOPIC_DEFAULT);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    /// MongoDB connection string (`mongodb.connection.string`); must reach a replica set.
    pub uri: String,
    /// Database to capture.
    pub database: String,
    /// Collection to capture.
    pub collection: String,
    /// The logical server name (`topic.prefix`): `source.name` of every event and the first
    /// part of the default topic name. Default `catalog`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// The topic to write to; default `{topic_prefix}.{database}.{collection}`, as Debezium names
    /// it.
    #[serde(default)]
    pub topic: Option<String>,
    /// Take an initial snapshot (op `r`) when no resume token is stored (`snapshot.mode=initial`).
    #[serde(default = "yes")]
    pub snapshot: bool,
    /// Write a tombstone (the key with a null value) after every delete (`tombstones.on.delete`).
    #[serde(default = "yes")]
    pub tombstones_on_delete: bool,
    /// Directory of the sled database holding the resume token.
    pub state_dir: PathBuf,
    /// Records sent but not yet acknowledged, at most. Default 1024.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Upper bound of the retry backoff after a transient failure, in milliseconds. Default 30 s.
    #[serde(default = "default_backoff_max_ms")]
    pub retry_backoff_max_ms: u64,
}

fn default_prefix() -> String {
    "catalog".into()
}

impl MongoSourceConfig {
    /// A configuration with the defaults (prefix `catalog`, snapshot and tombstones on).
    pub fn new(
        uri: impl Into<String>,
        database: impl Into<String>,
        collection: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        MongoSourceConfig {
            uri: uri.into(),
            database: database.into(),
            collection: collection.into(),
            topic_prefix: default_prefix(),
            topic: None,
            snapshot: true,
            tombstones_on_delete: true,
            state_dir: state_dir.into(),
            max_in_flight: default_max_in_flight(),
            retry_backoff_max_ms: default_backoff_max_ms(),
        }
    }

    /// The topic records are written to.
    pub fn topic(&self) -> String {
        self.topic.clone().unwrap_or_else(|| {
            format!(
                "{}.{}.{}",
                self.topic_prefix, self.database, self.collection
            )
        })
    }

    /// `db.collection`.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.database, self.collection)
    }

    /// The key of this source's stored offset: one per server name and collection.
    pub fn offset_key(&self) -> String {
        format!("{}/{}", self.topic_prefix, self.namespace())
    }

    /// Checks every setting and reports all problems at once.
    ///
    /// # Example
    /// ```
    /// use connectors::mongo_source::MongoSourceConfig;
    /// let mut config = MongoSourceConfig::new("http://x", "", "products", "/tmp/s");
    /// config.max_in_flight = 0;
    /// let err = config.validate().expect_err("invalid").to_string();
    /// assert!(err.contains("uri") && err.contains("database") && err.contains("max_in_flight"));
    /// ```
    pub fn validate(&self) -> Result<(), SourceError> {
        let mut problems = Vec::new();
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            problems.push(format!(
                "uri must start with mongodb:// or mongodb+srv:// (got {:?})",
                redact(&self.uri)
            ));
        }
        // MongoDB database names: non-empty, < 64 bytes, none of /\. "$ and no spaces.
        if self.database.is_empty()
            || self.database.len() >= 64
            || self
                .database
                .contains(['/', '\\', '.', ' ', '"', '$', '\0'])
        {
            problems.push(format!(
                "database {:?} is not a valid MongoDB database name",
                self.database
            ));
        }
        if self.collection.is_empty()
            || self.collection.starts_with("system.")
            || self.collection.contains(['$', '\0'])
        {
            problems.push(format!(
                "collection {:?} is not a capturable MongoDB collection name",
                self.collection
            ));
        }
        if self.topic_prefix.is_empty() || !valid_topic_chars(&self.topic_prefix) {
            problems.push(format!(
                "topic_prefix {:?} must be non-empty and use only [a-zA-Z0-9._-]",
                self.topic_prefix
            ));
        }
        let topic = self.topic();
        if topic.is_empty() || topic.len() > 249 || !valid_topic_chars(&topic) {
            problems.push(format!(
                "topic {topic:?} is not a valid Kafka topic name ([a-zA-Z0-9._-], at most 249)"
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            problems.push("state_dir must be set".into());
        }
        if self.max_in_flight == 0 {
            problems.push("max_in_flight must be at least 1".into());
        }
        if self.retry_backoff_max_ms == 0 {
            problems.push("retry_backoff_max_ms must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SourceError::Config(problems))
        }
    }
}

fn valid_topic_chars(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The URI without its password, for messages.
pub(crate) fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &uri[..scheme + 3],
                    &creds[..colon],
                    &uri[at..]
                ),
                None => uri.to_owned(),
            }
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_debezium() {
        let c: MongoSourceConfig = serde_json::from_value(serde_json::json!({
            "uri": "mongodb://h:27017", "database": "catalog", "collection": "products",
            "state_dir": "/tmp/x"
        }))
        .expect("parses");
        assert!(c.snapshot && c.tombstones_on_delete);
        assert_eq!(c.topic(), "catalog.catalog.products");
        assert_eq!(c.offset_key(), "catalog/catalog.products");
        c.validate().expect("valid");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<MongoSourceConfig, _> = serde_json::from_value(serde_json::json!({
            "uri": "mongodb://h", "database": "d", "collection": "c", "state_dir": "/x",
            "snapshots": false
        }));
        assert!(r.is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mongodb://u:secret@h:1/db"),
            "mongodb://u:***@h:1/db"
        );
        assert_eq!(redact("mongodb://h:1"), "mongodb://h:1");
    }

    #[test]
    fn all_problems_are_reported() {
        let mut c = MongoSourceConfig::new("mongodb://h", "a.b", "system.x", "");
        c.topic = Some("bad topic".into());
        let SourceError::Config(problems) = c.validate().expect_err("invalid") else {
            panic!("not a config error");
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
