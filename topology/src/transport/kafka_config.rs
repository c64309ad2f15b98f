//! Kafka client properties, set once and handed to each kind of client with only the
//! properties that kind takes.
//!
//! librdkafka logs a `CONFWARN` for every property a client of the other kind is given (a
//! producer with `session.timeout.ms`, a consumer with `linger.ms`), once per client; a service
//! that passes one property list to its consumer, producers and admin client logged one per
//! client and property. [`KafkaClientConfig`] keeps the list and filters it by kind: the
//! engine's transport, its changelog reader and the CDC source's producer all take one.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

/// The kind of client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A consumer (group member or group-less reader).
    Consumer,
    /// A producer.
    Producer,
    /// An admin client or a metadata-only client: neither kind's properties.
    Admin,
}

/// librdkafka's consumer-only properties (marked `C` in its CONFIGURATION.md).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "isolation.level",
    "consume.callback.max.messages",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
    "consume.cb",
    "rebalance_cb",
    "offset_commit_cb",
];

/// librdkafka's producer-only properties (marked `P`).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "sticky.partitioning.linger.ms",
    "dr_cb",
    "dr_msg_cb",
];

/// Which kinds of client take `key`.
fn taken_by(key: &str, kind: ClientKind) -> bool {
    let consumer_only = CONSUMER_ONLY.contains(&key);
    let producer_only = PRODUCER_ONLY.contains(&key);
    match kind {
        ClientKind::Consumer => !producer_only,
        ClientKind::Producer => !consumer_only,
        ClientKind::Admin => !consumer_only && !producer_only,
    }
}

/// One set of librdkafka properties for every client of a service, handed to each client
/// without the properties of the other kind.
///
/// # Example
/// ```
/// use topology::transport::{ClientKind, KafkaClientConfig};
/// let config = KafkaClientConfig::new("127.0.0.1:9092")
///     .set("session.timeout.ms", "6000")
///     .set("linger.ms", "5")
///     .set("security.protocol", "plaintext");
/// let producer = config.client(ClientKind::Producer);
/// assert_eq!(producer.get("linger.ms"), Some("5"));
/// assert_eq!(producer.get("session.timeout.ms"), None);
/// let consumer = config.client(ClientKind::Consumer);
/// assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
/// assert_eq!(consumer.get("linger.ms"), None);
/// assert_eq!(consumer.get("security.protocol"), Some("plaintext"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaClientConfig {
    properties: BTreeMap<String, String>,
}

impl KafkaClientConfig {
    /// Properties for the cluster at `bootstrap_servers`.
    pub fn new(bootstrap_servers: &str) -> Self {
        KafkaClientConfig::default().set("bootstrap.servers", bootstrap_servers)
    }

    /// Sets a librdkafka property; each client takes it if its kind does.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.properties.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets `key` unless it is already set (a default that an operator's setting wins over).
    pub fn set_default(mut self, key: &str, value: &str) -> Self {
        self.properties
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned());
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// The configuration of a client of `kind`: every property that kind takes.
    pub fn client(&self, kind: ClientKind) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            if taken_by(key, kind) {
                config.set(key, value);
            }
        }
        config
    }
}
