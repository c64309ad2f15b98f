//! Prometheus metrics of a running topology.
//!
//! [`Metrics::new`] registers the engine's metrics in a `prometheus::Registry` you own (so a
//! service exposes them with its other metrics on `/metrics`):
//! `topology_consumer_lag{group,topic,partition}`, `topology_records_total{node,outcome}` with
//! outcome `in|out|dropped|failed`, `topology_node_latency_seconds{node}`,
//! `topology_in_flight{node}`, `topology_retries_total{node}`,
//! `topology_dead_letter_total{topic}`, `topology_late_records_total{node}` (late records a
//! window dropped), `topology_rebalances_total`,
//! `topology_commit_latency_seconds`, and for task stores (see [`crate::task`]):
//! `topology_state_store_keys{store,task}`, `topology_state_store_bytes{store,task}`,
//! `topology_restore_records_total{store,task}`, `topology_restore_remaining_records{store,task}`,
//! `topology_restore_seconds{store}`, `topology_tasks{state}` (`running` / `restoring`) and
//! `topology_rebalance_seconds` (from a rebalance to every assigned task running).
//!
//! Series of partitions and tasks this instance no longer owns are removed when they are
//! revoked, so a sum over instances is the group's figure at every scrape.

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
    /// Late records dropped by a windowed operator, per node.
    pub late_records_total: IntCounterVec,
    /// Partition assignments and revocations seen.
    pub rebalances_total: IntCounter,
    /// Time to commit offsets (or a transaction).
    pub commit_latency: Histogram,
    /// Entries per task store (refreshed at most every few seconds: it scans the store).
    pub store_keys: IntGaugeVec,
    /// Live bytes (encoded keys and values) per task store.
    pub store_bytes: IntGaugeVec,
    /// Changelog records read while restoring, per store and task.
    pub restore_records: IntCounterVec,
    /// Changelog records still to read before a restoring task runs, per store and task.
    pub restore_remaining: IntGaugeVec,
    /// Time one store of one task took to restore.
    pub restore_seconds: HistogramVec,
    /// Tasks of this instance by state (`running`, `restoring`).
    pub tasks: IntGaugeVec,
    /// From a rebalance reaching this instance to every task it was assigned running again.
    pub rebalance_seconds: Histogram,
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
        registry.register(Box::new(m.late_records_total.clone()))?;
        registry.register(Box::new(m.rebalances_total.clone()))?;
        registry.register(Box::new(m.commit_latency.clone()))?;
        registry.register(Box::new(m.store_keys.clone()))?;
        registry.register(Box::new(m.store_bytes.clone()))?;
        registry.register(Box::new(m.restore_records.clone()))?;
        registry.register(Box::new(m.restore_remaining.clone()))?;
        registry.register(Box::new(m.restore_seconds.clone()))?;
        registry.register(Box::new(m.tasks.clone()))?;
        registry.register(Box::new(m.rebalance_seconds.clone()))?;
        Ok(m)
    }

    /// Creates the metrics without registering them anywhere.
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let restore_buckets = vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
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
            late_records_total: IntCounterVec::new(
                Opts::new(
                    "topology_late_records_total",
                    "Late records dropped by windowed operators",
                ),
                &["node"],
            )?,
            rebalances_total: IntCounter::new(
                "topology_rebalances_total",
                "Partition assignments and revocations",
            )?,
            commit_latency: Histogram::with_opts(
                HistogramOpts::new("topology_commit_latency_seconds", "Offset commit latency")
                    .buckets(buckets),
            )?,
            store_keys: IntGaugeVec::new(
                Opts::new("topology_state_store_keys", "Entries per task store"),
                &["store", "task"],
            )?,
            store_bytes: IntGaugeVec::new(
                Opts::new(
                    "topology_state_store_bytes",
                    "Live bytes (encoded keys and values) per task store",
                ),
                &["store", "task"],
            )?,
            restore_records: IntCounterVec::new(
                Opts::new(
                    "topology_restore_records_total",
                    "Changelog records read while restoring",
                ),
                &["store", "task"],
            )?,
            restore_remaining: IntGaugeVec::new(
                Opts::new(
                    "topology_restore_remaining_records",
                    "Changelog records still to read before the task runs",
                ),
                &["store", "task"],
            )?,
            restore_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "topology_restore_seconds",
                    "Restore time per store and task",
                )
                .buckets(restore_buckets.clone()),
                &["store"],
            )?,
            tasks: IntGaugeVec::new(
                Opts::new("topology_tasks", "Tasks of this instance by state"),
                &["state"],
            )?,
            rebalance_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "topology_rebalance_seconds",
                    "From a rebalance to every assigned task running",
                )
                .buckets(restore_buckets),
            )?,
        })
    }

    /// Removes the series of partitions this instance no longer owns.
    pub fn forget_partitions(&self, group: &str, tps: &[crate::transport::TopicPartition]) {
        for tp in tps {
            let partition = tp.partition.to_string();
            // Absent series are fine: the partition may never have had its lag measured.
            let _ = self
                .consumer_lag
                .remove_label_values(&[group, &tp.topic, &partition]);
        }
    }

    /// Removes the series of a task this instance no longer owns.
    pub fn forget_task(&self, task: &str, stores: &[String]) {
        for store in stores {
            let _ = self.store_keys.remove_label_values(&[store, task]);
            let _ = self.store_bytes.remove_label_values(&[store, task]);
            let _ = self.restore_remaining.remove_label_values(&[store, task]);
        }
    }

    /// Counts one record at `node` with `outcome`.
    pub fn record(&self, node: &str, outcome: &str) {
        self.records_total.with_label_values(&[node, outcome]).inc();
    }
}
