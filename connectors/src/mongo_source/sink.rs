//! Where the source's records go: a [`ChangeSink`] takes serialized key/value pairs in order and
//! acknowledges each once it is durably written.
//!
//! Four sinks come with the crate: [`TransportSink`] (any of the engine's
//! [`RecordSink`](topology::transport::RecordSink)s: Kafka or the embedded log), [`EmbeddedLogSink`]
//! (straight into an [`EmbeddedLog`](topology::transport::EmbeddedLog)), [`KafkaChangeSink`] (an
//! idempotent rdkafka producer of its own) and [`CallbackSink`] (a closure, for tests and
//! in-process consumers).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use topology::transport::{ClientKind, EmbeddedLog, KafkaClientConfig, RecordSink, TransportError};
use topology::{Headers, RawRecord};

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's queue is full: wait for earlier acknowledgements, then send again.
    #[error("sink queue full")]
    Full,
    /// The record was not written (the source resends it from its last stored position).
    #[error("delivery to {topic} failed: {message}")]
    Delivery {
        /// Topic (or sink name).
        topic: String,
        /// Why.
        message: String,
    },
    /// The sink cannot be created (bad producer configuration).
    #[error("sink configuration: {0}")]
    Config(String),
}

/// The acknowledgement of one sent record: resolves when the record is durably written.
pub type Delivery = BoxFuture<'static, Result<(), SinkError>>;

/// A destination for change records, written in the order they are sent.
///
/// `send` queues a record and returns its [`Delivery`]; the source keeps several in flight and
/// stores its resume token only after every record up to that event has been acknowledged.
/// (A plain `async fn send` that waits for each acknowledgement would be simpler, but would
/// cost a broker round trip per record.)
///
/// # Example
/// ```
/// # tokio::runtime::Runtime::new().expect("runtime").block_on(async {
/// use connectors::mongo_source::{CallbackSink, ChangeSink};
/// let sink = CallbackSink::new(|key: Vec<u8>, value: Option<Vec<u8>>| {
///     assert_eq!(key, b"k");
///     assert!(value.is_none());
///     Ok(())
/// });
/// sink.send(b"k".to_vec(), None).expect("queued").await.expect("acknowledged");
/// # });
/// ```
pub trait ChangeSink: Send + Sync {
    /// Queues one record. `Err(SinkError::Full)` asks the caller to wait for earlier
    /// deliveries and try again.
    fn send_record(&self, record: ChangeRecord) -> Result<Delivery, SinkError>;

    /// Queues one record without headers (`value` `None` is a tombstone).
    fn send(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<Delivery, SinkError> {
        self.send_record(ChangeRecord {
            key,
            value,
            headers: Headers::default(),
        })
    }
}

/// One serialized change record.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// The serialized key.
    pub key: Vec<u8>,
    /// The serialized value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers the source adds (the standalone outbox relay stamps its sequence number).
    pub headers: Headers,
}

impl ChangeRecord {
    fn into_raw(self, topic: &Arc<str>) -> RawRecord {
        RawRecord {
            topic: topic.clone(),
            partition: -1,
            offset: -1,
            key: Some(Bytes::from(self.key)),
            value: self.value.map(Bytes::from),
            headers: self.headers,
            // A producer's create time, as Kafka's client would stamp it.
            timestamp: Some(now_ms()),
        }
    }
}

impl<S: ChangeSink + ?Sized> ChangeSink for Arc<S> {
    fn send_record(&self, record: ChangeRecord) -> Result<Delivery, SinkError> {
        (**self).send_record(record)
    }
}

/// A sink that hands every record to a closure and acknowledges it when the closure returns.
pub struct CallbackSink<F> {
    callback: F,
}

impl<F> CallbackSink<F>
where
    F: Fn(Vec<u8>, Option<Vec<u8>>) -> Result<(), String> + Send + Sync,
{
    /// Wraps `callback`; an `Err(reason)` is a failed delivery.
    pub fn new(callback: F) -> Self {
        CallbackSink { callback }
    }
}

impl<F> ChangeSink for CallbackSink<F>
where
    F: Fn(Vec<u8>, Option<Vec<u8>>) -> Result<(), String> + Send + Sync,
{
    fn send_record(&self, record: ChangeRecord) -> Result<Delivery, SinkError> {
        let result =
            (self.callback)(record.key, record.value).map_err(|message| SinkError::Delivery {
                topic: "callback".into(),
                message,
            });
        Ok(Box::pin(futures::future::ready(result)))
    }
}

/// The engine's transport sink (Kafka or embedded), writing to one topic.
pub struct TransportSink {
    sink: Arc<dyn RecordSink>,
    /// Shared by the records written (no `String` per record).
    topic: Arc<str>,
}

impl TransportSink {
    /// Writes to `topic` through `sink` (e.g. the `sink` of a transport
    /// [`Connection`](topology::transport::Connection)).
    pub fn new(sink: Arc<dyn RecordSink>, topic: impl Into<String>) -> Self {
        TransportSink {
            sink,
            topic: Arc::from(topic.into()),
        }
    }
}

fn transport_error(topic: &str, e: TransportError) -> SinkError {
    match e {
        TransportError::QueueFull => SinkError::Full,
        other => SinkError::Delivery {
            topic: topic.to_owned(),
            message: other.to_string(),
        },
    }
}

impl ChangeSink for TransportSink {
    fn send_record(&self, record: ChangeRecord) -> Result<Delivery, SinkError> {
        let record = record.into_raw(&self.topic);
        let delivery = self
            .sink
            .send(&record)
            .map_err(|e| transport_error(&self.topic, e))?;
        let topic = self.topic.clone();
        Ok(Box::pin(async move {
            delivery
                .await
                .map(|_| ())
                .map_err(|e| transport_error(&topic, e))
        }))
    }
}

/// Appends straight to an embedded log topic (created with one partition if missing), for the
/// standalone mode; each record is acknowledged once the log is flushed.
pub struct EmbeddedLogSink {
    log: Arc<EmbeddedLog>,
    /// Shared by the records written (no `String` per record).
    topic: Arc<str>,
}

impl EmbeddedLogSink {
    /// Writes to `topic` in `log`, creating the topic with one partition if it does not exist.
    pub fn new(log: Arc<EmbeddedLog>, topic: impl Into<String>) -> Result<Self, SinkError> {
        let topic = topic.into();
        let missing = log
            .partitions(&topic)
            .map_err(|e| SinkError::Config(format!("embedded log topic {topic}: {e}")))?
            .is_none();
        if missing {
            log.create_topic(&topic, 1)
                .map_err(|e| SinkError::Config(format!("embedded log topic {topic}: {e}")))?;
        }
        Ok(EmbeddedLogSink {
            log,
            topic: Arc::from(topic),
        })
    }
}

impl ChangeSink for EmbeddedLogSink {
    fn send_record(&self, record: ChangeRecord) -> Result<Delivery, SinkError> {
        let record = record.into_raw(&self.topic);
        let failed = |topic: &str, e: topology::transport::LogError| SinkError::Delivery {
            topic: topic.to_owned(),
            message: e.to_string(),
        };
        self.log
            .append(&record)
            .map_err(|e| failed(&self.topic, e))?;
        let log = self.log.clone();
        let topic = self.topic.clone();
        Ok(Box::pin(async move {
            log.flush().await.map_err(|e| failed(&topic, e))
        }))
    }
}

/// An idempotent rdkafka producer (`enable.idempotence=true`, `acks=all`) writing to one topic.
///
/// Idempotence keeps the producer's own retries from duplicating or reordering records; a
/// restart of the source may still resend its last unstored events (at-least-once).
pub struct KafkaChangeSink {
    producer: FutureProducer,
    topic: String,
}

impl KafkaChangeSink {
    /// A producer with `config`'s producer properties writing to `topic`, idempotent with
    /// `acks=all` whatever `config` says, and `linger.ms` 5 and `delivery.timeout.ms` 120 s
    /// unless `config` sets them.
    ///
    /// # Example
    /// ```
    /// use connectors::mongo_source::KafkaChangeSink;
    /// use topology::transport::KafkaClientConfig;
    /// let config = KafkaClientConfig::new("127.0.0.1:9092").set("linger.ms", "5");
    /// let sink = KafkaChangeSink::new(&config, "catalog.catalog.products")
    ///     .expect("valid configuration");
    /// assert_eq!(sink.topic(), "catalog.catalog.products");
    /// ```
    pub fn new(config: &KafkaClientConfig, topic: impl Into<String>) -> Result<Self, SinkError> {
        let producer: FutureProducer = config
            .clone()
            .set_default("linger.ms", "5")
            .set_default("delivery.timeout.ms", "120000")
            // Without them the producer's own retries could duplicate or reorder records.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .client(ClientKind::Producer)
            .create()
            .map_err(|e| SinkError::Config(e.to_string()))?;
        Ok(KafkaChangeSink {
            producer,
            topic: topic.into(),
        })
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer
            .flush(timeout)
            .map_err(|e| SinkError::Delivery {
                topic: self.topic.clone(),
                message: format!("flush: {e}"),
            })
    }
}

impl ChangeSink for KafkaChangeSink {
    fn send_record(&self, change: ChangeRecord) -> Result<Delivery, SinkError> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).key(&change.key);
        if let Some(v) = &change.value {
            record = record.payload(v);
        }
        let headers = kafka_headers(&change.headers);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let topic = self.topic.clone();
                Ok(Box::pin(async move {
                    match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(SinkError::Delivery {
                            topic,
                            message: e.to_string(),
                        }),
                        Err(_) => Err(SinkError::Delivery {
                            topic,
                            message: "producer dropped the delivery".into(),
                        }),
                    }
                }))
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SinkError::Full)
            }
            Err((e, _)) => Err(SinkError::Delivery {
                topic: self.topic.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// `headers` as rdkafka's, `None` when there are none.
fn kafka_headers(headers: &Headers) -> Option<OwnedHeaders> {
    let mut iter = headers.iter().peekable();
    iter.peek()?;
    Some(iter.fold(OwnedHeaders::new(), |owned, header| {
        owned.insert(Header {
            key: header.key.as_str(),
            value: header.value.as_deref(),
        })
    }))
}

/// Milliseconds since the epoch (0 before it, which a clock set right never reports).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
