//! The change-data-capture source of a system: whatever feeds the CDC topic with Debezium
//! envelopes of the product store's changes.

use anyhow::Context;
use connectors::mongo_source::{KafkaChangeSink, MongoChangeSource};
use tokio_util::sync::CancellationToken;

use super::OutboxRelay;

/// Feeds the CDC topic. Both kinds build their envelopes the same way (`connectors`'
/// document change → `ChangeEncoder` → `ChangeSink`); they differ in where changes come from.
pub enum CdcSource {
    /// A MongoDB change stream, written to Kafka (the `cdc-source` service; Debezium's
    /// connector in Kafka Connect does the same job where it runs).
    MongoChangeStream {
        /// The change-stream reader.
        source: Box<MongoChangeSource>,
        /// Its idempotent producer.
        sink: KafkaChangeSink,
    },
    /// The sled product store's outbox, written to the embedded log (the standalone mode).
    Outbox(OutboxRelay),
}

impl CdcSource {
    /// Runs until `shutdown` or a permanent failure.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        match self {
            CdcSource::MongoChangeStream { mut source, sink } => source
                .run(sink, async move { shutdown.cancelled().await })
                .await
                .context("the change-stream source stopped"),
            CdcSource::Outbox(relay) => relay.run(shutdown).await,
        }
    }
}
