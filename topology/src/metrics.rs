//! Prometheus metrics of a running topology.
//!
//! [`Metrics::new`] registers the engine's metrics in a `prometheus::Registry` you own (so a
//! service exposes them with its other metrics on `/metrics`):
//! `topology_consumer_lag{group,topic,partition}`, `topology_records_total{node,outcome}` with
//! outcome `in|out|dropped|failed`, `topology_node_latency_seconds{node}`,
//! `topology_in_flight{node}`, `topology_retries_total{node}`,
//! `topology_dead_letter_total{topic}`, `topology_rebalances_total` and
//! `topology_commit_latency_seconds`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// The engine's metrics.
///
/// # Example
/// ```
/// let registry = prometheus::Registry::new();
/// let m = topology::Metrics::new(&registry).unwrap();
/// m.records_total.with_label_values(&["filter", "in"]).inc();
/// assert!(registry.gather().iter().any(|f| f.name() == "topology_records_total"));
/// ```
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Log end offset minus committed offset, per group, topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// Records per node and outcome (`in`, `out`, `dropped`, `failed`).
    pub records_total: IntCounterVec,
    /// Processing latency per node (async processors and sinks).
    pub node_latency: HistogramVec,
    /// Records being processed now, per async node.
    pub in_flight: IntGaugeVec,
    /// Retries of transient failures, per node.
    pub retries_total: IntCounterVec,
    /// Records written to a dead-letter topic, per dead-letter topic.
    pub dead_letter_total: IntCounterVec,
    /// Partition assignments and revocations seen.
    pub rebalances_total: IntCounter,
    /// Time to commit offsets (or a transaction).
    pub commit_latency: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        registry.register(Box::new(m.records_total.clone()))?;
        registry.register(Box::new(m.node_latency.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.retries_total.clone()))?;
        registry.register(Box::new(m.dead_letter_total.clone()))?;
        registry.register(Box::new(m.rebalances_total.clone()))?;
        registry.register(Box::new(m.commit_latency.clone()))?;
        Ok(m)
    }

    /// Creates the metrics without registering them anywhere.
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Ok(Metrics {
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "topology_consumer_lag",
                    "Log end offset minus committed offset",
                ),
                &["group", "topic", "partition"],
            )?,
            records_total: IntCounterVec::new(
                Opts::new("topology_records_total", "Records per node and outcome"),
                &["node", "outcome"],
            )?,
            node_latency: HistogramVec::new(
                HistogramOpts::new(
                    "topology_node_latency_seconds",
                    "Processing latency per node",
                )
                .buckets(buckets.clone()),
                &["node"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new("topology_in_flight", "Records being processed per node"),
                &["node"],
            )?,
            retries_total: IntCounterVec::new(
                Opts::new("topology_retries_total", "Retries of transient failures"),
                &["node"],
            )?,
            dead_letter_total: IntCounterVec::new(
                Opts::new("topology_dead_letter_total", "Records dead-lettered"),
                &["topic"],
            )?,
            rebalances_total: IntCounter::new(
                "topology_rebalances_total",
                "Partition assignments and revocations",
            )?,
            commit_latency: Histogram::with_opts(
                HistogramOpts::new("topology_commit_latency_seconds", "Offset commit latency")
                    .buckets(buckets),
            )?,
        })
    }

    /// Counts one record at `node` with `outcome`.
    pub fn record(&self, node: &str, outcome: &str) {
        self.records_total.with_label_values(&[node, outcome]).inc();
    }
}
