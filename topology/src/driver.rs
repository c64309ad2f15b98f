//! An in-process test driver, like Kafka Streams' `TopologyTestDriver`.
//!
//! [`TopologyTestDriver`] runs the real [`Runtime`] over a temporary [`EmbeddedLog`]: pipe
//! records into input topics (encoded with the source's serdes), wait until everything piped so
//! far is processed and committed ([`TopologyTestDriver::settle`]), then read output and
//! dead-letter topics. No broker is involved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::graph::{NodeKind, Topology};
use crate::runtime::{OffsetTracker, RunSummary, Runtime, RuntimeConfig, RuntimeError};
use crate::serdes::SerdeError;
use crate::transport::{EmbeddedLog, EmbeddedTransport, LogError};
use crate::{Headers, Metrics, RawRecord, Record, Value};

/// Errors of the test driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No source reads this topic.
    #[error("no source reads topic {0}")]
    NotAnInput(String),
    /// No sink writes this topic.
    #[error("no sink writes topic {0}")]
    NotAnOutput(String),
    /// Encoding or decoding failed.
    #[error("serde on topic {topic}: {source}")]
    Serde {
        /// Topic.
        topic: String,
        /// Cause.
        #[source]
        source: SerdeError,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Work did not settle in time.
    #[error("not settled after {0:?}")]
    Timeout(Duration),
}

/// Runs a topology in-process.
///
/// # Example
/// ```
/// # tokio_test_block(async {
/// use std::sync::Arc;
/// use topology::{TopologyBuilder, TopologyTestDriver, Value, serdes::StringSerde};
/// let b = TopologyBuilder::new();
/// b.source("in", "input", Arc::new(StringSerde), Arc::new(StringSerde))
///     .map("upper", |mut r| { r.value = r.value.and_then(|v| v.as_str().map(|s| Value::from(s.to_uppercase()))); r })
///     .to("out", "output", Arc::new(StringSerde), Arc::new(StringSerde));
/// let driver = TopologyTestDriver::new(b.build().unwrap()).unwrap();
/// driver.pipe("input", Some("k".into()), Some("hello".into())).await.unwrap();
/// driver.settle().await.unwrap();
/// let out = driver.read_output("output").await.unwrap();
/// assert_eq!(out[0].value.as_ref().and_then(|v| v.as_str()), Some("HELLO"));
/// driver.close().await.unwrap();
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f) }
/// ```
pub struct TopologyTestDriver {
    log: Arc<EmbeddedLog>,
    topology: Arc<Topology>,
    tracker: Arc<OffsetTracker>,
    group: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<RunSummary, RuntimeError>>>,
    metrics: Metrics,
}

impl TopologyTestDriver {
    /// Starts a driver with one partition per input topic. Must be called inside a Tokio
    /// runtime.
    pub fn new(topology: Topology) -> Result<Self, DriverError> {
        Self::with_partitions(topology, 1)
    }

    /// Starts a driver with `partitions` partitions per input topic.
    pub fn with_partitions(topology: Topology, partitions: u32) -> Result<Self, DriverError> {
        let mut config = RuntimeConfig::new("test-driver");
        config.commit_interval = Duration::from_millis(5);
        config.drain_timeout = Duration::from_secs(5);
        Self::with_config(topology, partitions, config)
    }

    /// Starts a driver with a runtime configuration of your own.
    pub fn with_config(
        topology: Topology,
        partitions: u32,
        config: RuntimeConfig,
    ) -> Result<Self, DriverError> {
        let log = Arc::new(EmbeddedLog::temporary()?);
        for t in topology.source_topics() {
            log.create_topic(&t, partitions)?;
        }
        let metrics = Metrics::unregistered().map_err(|e| {
            DriverError::Log(LogError::Corrupt {
                topic: format!("metrics: {e}"),
                partition: -1,
                offset: -1,
            })
        })?;
        let group = config.application_id.clone();
        let runtime = Runtime::new(
            topology.clone(),
            Arc::new(EmbeddedTransport::new(log.clone())),
            config,
        )
        .with_metrics(metrics.clone());
        let tracker = runtime.tracker();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(runtime.run(shutdown.clone()));
        Ok(TopologyTestDriver {
            log,
            topology: Arc::new(topology),
            tracker,
            group,
            shutdown,
            handle: Some(handle),
            metrics,
        })
    }

    /// The metrics of the running topology.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The underlying log.
    pub fn log(&self) -> &Arc<EmbeddedLog> {
        &self.log
    }

    /// Encodes a record with the serdes of the source reading `topic` and appends it.
    pub async fn pipe(
        &self,
        topic: &str,
        key: Option<Value>,
        value: Option<Value>,
    ) -> Result<(), DriverError> {
        let src = self
            .topology
            .source_for_topic(topic)
            .ok_or_else(|| DriverError::NotAnInput(topic.to_owned()))?;
        let NodeKind::Source {
            key_serde,
            value_serde,
            ..
        } = &self.topology.nodes()[src].kind
        else {
            return Err(DriverError::NotAnInput(topic.to_owned()));
        };
        let serde_err = |source| DriverError::Serde {
            topic: topic.to_owned(),
            source,
        };
        let key = match key {
            Some(k) => Some(
                key_serde
                    .serialize(topic, true, &k)
                    .await
                    .map_err(serde_err)?,
            ),
            None => None,
        };
        let value = match value {
            Some(v) => Some(
                value_serde
                    .serialize(topic, false, &v)
                    .await
                    .map_err(serde_err)?,
            ),
            None => None,
        };
        self.pipe_raw(topic, key, value, Headers::default())
    }

    /// Appends raw bytes (e.g. a poison pill) to `topic`.
    pub fn pipe_raw(
        &self,
        topic: &str,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Headers,
    ) -> Result<(), DriverError> {
        self.log.append(&RawRecord {
            topic: topic.into(),
            partition: -1,
            offset: -1,
            key: key.map(Into::into),
            value: value.map(Into::into),
            headers,
            timestamp: None,
        })?;
        Ok(())
    }

    /// Waits (up to 10 s) until every input record piped so far is processed and committed.
    pub async fn settle(&self) -> Result<(), DriverError> {
        self.settle_within(Duration::from_secs(10)).await
    }

    /// Like [`settle`](Self::settle) with a timeout of your choice.
    pub async fn settle_within(&self, timeout: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_settled()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn is_settled(&self) -> Result<bool, DriverError> {
        for t in self.topology.source_topics() {
            for p in 0..self.log.partitions(&t)?.unwrap_or(0) as i32 {
                let end = self.log.end_offset(&t, p)?;
                if end > 0 && self.log.committed(&self.group, &t, p)? != Some(end) {
                    return Ok(false);
                }
            }
        }
        Ok(self.tracker.total_in_flight() == 0)
    }

    /// The committed offset of the driver's group for an input partition.
    pub fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>, DriverError> {
        Ok(self.log.committed(&self.group, topic, partition)?)
    }

    /// Every record written to `topic`, as stored.
    pub fn read_raw(&self, topic: &str) -> Result<Vec<RawRecord>, DriverError> {
        if self.log.partitions(topic)?.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.log.read_all(topic)?)
    }

    /// Every record written to `topic`, decoded with the serdes of the sink writing it.
    pub async fn read_output(&self, topic: &str) -> Result<Vec<Record>, DriverError> {
        let (key_serde, value_serde) = self
            .topology
            .nodes()
            .iter()
            .find_map(|n| match &n.kind {
                NodeKind::Sink {
                    topic: t,
                    key_serde,
                    value_serde,
                } if t == topic => Some((key_serde.clone(), value_serde.clone())),
                _ => None,
            })
            .ok_or_else(|| DriverError::NotAnOutput(topic.to_owned()))?;
        let serde_err = |source| DriverError::Serde {
            topic: topic.to_owned(),
            source,
        };
        let mut out = Vec::new();
        for raw in self.read_raw(topic)? {
            let key = match &raw.key {
                Some(k) => Some(
                    key_serde
                        .deserialize(topic, true, k)
                        .await
                        .map_err(serde_err)?,
                ),
                None => None,
            };
            let value = match &raw.value {
                Some(v) => Some(
                    value_serde
                        .deserialize(topic, false, v)
                        .await
                        .map_err(serde_err)?,
                ),
                None => None,
            };
            out.push(Record {
                key,
                value,
                headers: raw.headers,
                timestamp: raw.timestamp,
                topic: raw.topic,
                partition: raw.partition,
                offset: raw.offset,
            });
        }
        Ok(out)
    }

    /// Stops the runtime (drain, commit) and returns its summary.
    pub async fn close(mut self) -> Result<RunSummary, RuntimeError> {
        self.shutdown.cancel();
        match self.handle.take() {
            Some(h) => h.await.unwrap_or_else(|e| {
                Err(RuntimeError::OutputFailed(vec![
                    crate::transport::TopicPartition::new(&format!("runtime task: {e}"), -1),
                ]))
            }),
            None => Ok(RunSummary::default()),
        }
    }
}

impl Drop for TopologyTestDriver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
