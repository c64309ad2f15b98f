//! The Kafka Connect configurations in `connectors/kafka-connect/` are complete and name the
//! topics the services use.

use connectors::kafka_connect::{
    APICURIO_AVRO_CONVERTER, AVRO_CONVERTER, ConnectorConfig, DEBEZIUM_MONGODB, MONGODB_SINK,
    check, required_keys,
};
use connectors::{CDC_TOPIC_DEFAULT, IMAGE_EVENTS_TOPIC_DEFAULT};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kafka-connect");

fn load(name: &str) -> ConnectorConfig {
    let path = format!("{DIR}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not a connector config: {e}"))
}

#[test]
fn debezium_source_is_complete_and_writes_the_cdc_topic() {
    for (file, converter) in [
        ("debezium-mongodb-source.json", AVRO_CONVERTER),
        (
            "debezium-mongodb-source.apicurio.json",
            APICURIO_AVRO_CONVERTER,
        ),
    ] {
        let config = load(file);
        assert_eq!(config.class(), Some(DEBEZIUM_MONGODB), "{file}");
        assert_eq!(check(&config), Vec::<String>::new(), "{file}");
        assert_eq!(config.get("key.converter"), Some(converter), "{file}");
        assert_eq!(config.get("value.converter"), Some(converter), "{file}");
        assert_eq!(
            config.debezium_topics(),
            vec![CDC_TOPIC_DEFAULT.to_owned()],
            "{file}"
        );
        assert_eq!(
            config.get("capture.mode"),
            Some("change_streams_update_full")
        );
        assert_eq!(config.get("tombstones.on.delete"), Some("true"));
        assert!(config.get("heartbeat.interval.ms").is_some(), "{file}");
        // The database filter agrees with the collection filter.
        let db = CDC_TOPIC_DEFAULT.split('.').nth(1).expect("db part");
        assert_eq!(config.get("database.include.list"), Some(db), "{file}");
    }
}

#[test]
fn mongodb_sink_reads_image_events() {
    let config = load("mongodb-sink.json");
    assert_eq!(config.class(), Some(MONGODB_SINK));
    assert_eq!(check(&config), Vec::<String>::new());
    assert_eq!(
        config.sink_topics(),
        vec![IMAGE_EVENTS_TOPIC_DEFAULT.to_owned()]
    );
    assert_eq!(config.get("collection"), Some("complete_products"));
    assert_eq!(config.get("value.converter"), Some(AVRO_CONVERTER));
}

#[test]
fn native_source_defaults_name_the_same_topic() {
    let config = connectors::mongo_source::MongoSourceConfig::new(
        "mongodb://127.0.0.1:27017",
        "catalog",
        "products",
        "/tmp/unused",
    );
    assert_eq!(config.topic(), CDC_TOPIC_DEFAULT);
}

#[test]
fn check_reports_every_problem() {
    let mut config = load("debezium-mongodb-source.json");
    for key in required_keys(DEBEZIUM_MONGODB) {
        assert!(config.get(key).is_some(), "the shipped config sets {key}");
    }
    config.config.remove("topic.prefix");
    config.config.remove("value.converter.schema.registry.url");
    config.config.insert(
        "mongodb.connection.string".into(),
        "mongodb://user:pw@host".into(),
    );
    config
        .config
        .insert("errors.tolerance".into(), "all".into());
    let problems = check(&config);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("topic.prefix")));
    assert!(problems.iter().any(|p| p.contains("schema.registry.url")));
    assert!(problems.iter().any(|p| p.contains("placeholder")));
    assert!(problems.iter().any(|p| p.contains("errors.tolerance")));

    let unknown: ConnectorConfig =
        serde_json::from_str(r#"{"name": "x", "config": {"connector.class": "a.B"}}"#)
            .expect("JSON");
    assert!(check(&unknown)[0].contains("unknown connector class"));
}
