//! The standalone mode's change-data-capture source: the sled product store's outbox, relayed
//! to the CDC topic of the embedded log.
//!
//! The product store writes each product and its outbox entry in one sled transaction and
//! flushes before answering. The relay turns entries into the same Debezium envelopes as the
//! MongoDB change-stream source (`connectors`' [`DocumentChange`] → [`ChangeEncoder`] →
//! [`ChangeSink`]), each stamped with its outbox sequence number, and skips what the log
//! already holds after a crash: every accepted change is published exactly once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use connectors::debezium::Op;
use connectors::mongo_source::{
    ChangeEncoder, ChangeOrigin, ChangeRecord, ChangeSink, DocumentChange, EmbeddedLogSink,
};
use tokio_util::sync::CancellationToken;
use topology::Headers;
use topology::transport::EmbeddedLog;

use crate::store::{
    OUTBOX_SEQUENCE_HEADER, Outbox, OutboxEntry, identity, now_ms, stored_product_document,
};

/// Entries read from the outbox and published per round.
const BATCH: usize = 256;

/// Publishes outbox entries to the CDC topic of the embedded log, exactly once.
pub struct OutboxRelay {
    outbox: Outbox,
    log: Arc<EmbeddedLog>,
    sink: Arc<EmbeddedLogSink>,
    encoder: ChangeEncoder,
    origin: ChangeOrigin,
    topic: String,
}

impl OutboxRelay {
    /// A relay from `outbox` to `topic` of `log`, whose envelopes name `origin` as their source.
    pub fn new(
        outbox: Outbox,
        log: Arc<EmbeddedLog>,
        encoder: ChangeEncoder,
        origin: ChangeOrigin,
        topic: String,
    ) -> anyhow::Result<Self> {
        let sink = EmbeddedLogSink::new(log.clone(), topic.clone())
            .with_context(|| format!("cannot write to {topic}"))?;
        Ok(Self {
            outbox,
            log,
            sink: Arc::new(sink),
            encoder,
            origin,
            topic,
        })
    }

    /// The highest outbox sequence already in the log (scanning each partition's tail).
    fn published_through(&self) -> anyhow::Result<Option<u64>> {
        let mut highest = None;
        let partitions = self.log.partitions(&self.topic)?.unwrap_or(0);
        for partition in 0..i32::try_from(partitions).unwrap_or(0) {
            let end = self.log.end_offset(&self.topic, partition)?;
            // Tombstones carry the sequence too, so the last record of a partition has the
            // highest sequence written there.
            let tail = self.log.read(&self.topic, partition, (end - 1).max(0), 1)?;
            for record in tail {
                if let Some(sequence) = record
                    .headers
                    .get_str(OUTBOX_SEQUENCE_HEADER)
                    .and_then(|text| text.parse::<u64>().ok())
                {
                    highest = highest.max(Some(sequence));
                }
            }
        }
        Ok(highest)
    }

    /// Runs until `shutdown`, publishing entries as they are written.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut next = match self.published_through()? {
            Some(sequence) => {
                self.outbox.remove_through(sequence)?;
                sequence + 1
            }
            None => 0,
        };
        loop {
            let outbox = self.outbox.clone();
            // Only what is on disk: a change the store could still lose in a crash must not
            // reach the pipeline.
            let pending = blocking(move || Ok(outbox.pending(next, BATCH)?)).await?;
            let Some(&(last, _)) = pending.last() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.outbox.changed() => {}
                    // The notification can race the write it announces; look again anyway.
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            };
            let mut records = Vec::with_capacity(pending.len());
            for (sequence, entry) in pending {
                self.encode(sequence, entry, &mut records).await?;
            }
            // sled calls on a blocking thread: they can wait for a flush in progress.
            let sink = self.sink.clone();
            let deliveries = blocking(move || {
                records
                    .into_iter()
                    .map(|record| sink.send_record(record).map_err(anyhow::Error::from))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .await?;
            // One flush of the log makes every record of the round durable; the deliveries
            // after the first find nothing left to flush.
            for delivery in deliveries {
                delivery.await.context("the CDC topic")?;
            }
            let outbox = self.outbox.clone();
            blocking(move || Ok(outbox.remove_through(last)?)).await?;
            next = last + 1;
        }
    }

    /// The records of one outbox entry (a delete is followed by its tombstone), added to
    /// `records`.
    async fn encode(
        &self,
        sequence: u64,
        entry: OutboxEntry,
        records: &mut Vec<ChangeRecord>,
    ) -> anyhow::Result<()> {
        let (op, after) = match &entry.after {
            Some(stored) => (
                if entry.existed {
                    Op::Update
                } else {
                    Op::Create
                },
                Some(stored_product_document(stored)?),
            ),
            None => (Op::Delete, None),
        };
        let change = DocumentChange {
            op,
            id: identity(&entry.key).into(),
            after,
            before: None,
            ts_ms: entry.ts_ms,
            wall_time_ms: Some(entry.ts_ms),
            // The outbox sequence orders changes as a cluster time's increment would.
            ord: i32::try_from(sequence % (i32::MAX as u64)).unwrap_or(0),
            update_description: None,
            lsid: None,
            txn_number: None,
        };
        for event in change.into_events(&self.origin, true, now_ms()) {
            let (key, value) = self.encoder.encode(&self.topic, &event).await?;
            let mut headers = Headers::default();
            headers.insert(OUTBOX_SEQUENCE_HEADER, sequence.to_string().into_bytes());
            records.push(ChangeRecord {
                key,
                value,
                headers,
            });
        }
        Ok(())
    }
}

/// Runs sled calls on tokio's blocking pool: sled 0.34's calls can wait for a flush in progress
/// (its process-wide lock), which must not stall an async worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("sled task")?
}
