//! The running source: snapshot, then the change stream, with the resume token stored after
//! acknowledgement and retries from it after transient failures.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use mongodb::bson::{Document, doc};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::options::FullDocumentType;
use mongodb::{Client, Collection};
use rand::RngExt;
use state::StateDir;

use super::config::{MongoSourceConfig, redact};
use super::convert::{self, ChangeOrigin, Converted};
use super::encoder::ChangeEncoder;
use super::error::{SourceError, is_resume_lost};
use super::offsets::{Offsets, StartPoint};
use super::sink::{ChangeSink, SinkError, now_ms};

/// Counters of a running source (shared, readable while it runs).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Snapshot reads (`r`) acknowledged.
    pub snapshot_records: AtomicU64,
    /// Change records (`c`, `u`, `d`) acknowledged.
    pub change_records: AtomicU64,
    /// Tombstones acknowledged.
    pub tombstones: AtomicU64,
    /// Change-stream events that produce no record (unknown types, vanished replaces).
    pub skipped: AtomicU64,
    /// Restarts after transient failures.
    pub retries: AtomicU64,
    /// Resume tokens stored.
    pub offsets_stored: AtomicU64,
}

impl SourceStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A MongoDB collection's change stream, written to a [`ChangeSink`] as Debezium MongoDB
/// records. Built by [`MongoSourceConfig::build`].
pub struct MongoChangeSource {
    config: MongoSourceConfig,
    encoder: ChangeEncoder,
    offsets: Offsets,
    origin: ChangeOrigin,
    topic: String,
    stats: Arc<SourceStats>,
}

impl MongoSourceConfig {
    /// Validates the configuration, opens the state directory and returns the source.
    pub fn build(self, encoder: ChangeEncoder) -> Result<MongoChangeSource, SourceError> {
        self.validate()?;
        let dir = StateDir::open(&self.state_dir)?;
        self.build_with_state(encoder, dir)
    }

    /// Like [`build`](Self::build), with a state directory the caller already opened (sled
    /// allows one opener per directory).
    pub fn build_with_state(
        self,
        encoder: ChangeEncoder,
        dir: StateDir,
    ) -> Result<MongoChangeSource, SourceError> {
        self.validate()?;
        let offsets = Offsets::open(dir, self.offset_key())?;
        Ok(MongoChangeSource {
            origin: ChangeOrigin {
                server_name: self.topic_prefix.clone(),
                db: self.database.clone(),
                collection: self.collection.clone(),
            },
            topic: self.topic(),
            config: self,
            encoder,
            offsets,
            stats: Arc::new(SourceStats::default()),
        })
    }
}

type Ack = BoxFuture<'static, Result<AckedRecord, SinkError>>;

/// What an acknowledgement unlocks.
struct AckedRecord {
    /// `None` for a marker (an event without records).
    kind: Option<RecordKind>,
    /// The resume token to store once this (the last record of its event) is acknowledged.
    token: Option<ResumeToken>,
}

#[derive(Clone, Copy)]
enum RecordKind {
    Snapshot,
    Change,
    Tombstone,
}

impl MongoChangeSource {
    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The source's counters.
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` completes (returns `Ok`) or a permanent failure (returns the error).
    ///
    /// Without a stored offset it records the change stream's current position, takes a snapshot
    /// (when enabled), stores that position, then follows the stream from it; with one, it resumes
    /// after the stored token. A token is stored only when every record up to its event is
    /// acknowledged by `sink`, so a restart may repeat the last events but never skips one.
    /// Transient failures (MongoDB unreachable, sink errors, registry down) restart from the
    /// stored offset after an exponential backoff with jitter.
    pub async fn run<S, F>(&mut self, sink: S, shutdown: F) -> Result<(), SourceError>
    where
        S: ChangeSink,
        F: Future<Output = ()> + Send,
    {
        let namespace = self.config.namespace();
        let client = Client::with_uri_str(&self.config.uri)
            .await
            .map_err(|source| SourceError::Mongo {
                operation: "connect",
                namespace: namespace.clone(),
                source,
            })?;
        let collection = client
            .database(&self.config.database)
            .collection::<Document>(&self.config.collection);
        tracing::info!(
            uri = %redact(&self.config.uri),
            namespace = %namespace,
            topic = %self.topic,
            "mongodb change-stream source starting"
        );
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        let max_backoff = Duration::from_millis(self.config.retry_backoff_max_ms);
        loop {
            let progress_before = self.progress();
            let outcome = tokio::select! {
                biased;
                () = &mut shutdown => None,
                r = self.run_once(&client, &collection, &sink) => Some(r),
            };
            let error = match outcome {
                None => {
                    tracing::info!(namespace = %namespace, "mongodb change-stream source stopping");
                    self.offsets.flush()?;
                    return Ok(());
                }
                Some(Ok(())) => continue,
                Some(Err(e)) => e,
            };
            // Whatever happened, keep what was acknowledged.
            let flushed = self.offsets.flush();
            if !error.is_transient() {
                tracing::error!(namespace = %namespace, error = %error, "mongodb change-stream source stopped");
                flushed?;
                return Err(error);
            }
            if self.progress() > progress_before {
                backoff = Duration::from_millis(100);
            }
            SourceStats::bump(&self.stats.retries);
            let jitter = rand::rng().random_range(0.5..1.0);
            let wait = backoff.mul_f64(jitter);
            tracing::warn!(
                namespace = %namespace,
                error = %error,
                retry_in_ms = wait.as_millis() as u64,
                "mongodb change-stream source failed; resuming from the stored offset"
            );
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    self.offsets.flush()?;
                    return Ok(());
                }
                () = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    fn progress(&self) -> u64 {
        SourceStats::get(&self.stats.snapshot_records)
            + SourceStats::get(&self.stats.change_records)
            + SourceStats::get(&self.stats.offsets_stored)
    }

    fn mongo_err(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(mongodb::error::Error) -> SourceError + use<> {
        let namespace = self.config.namespace();
        move |source| SourceError::Mongo {
            operation,
            namespace,
            source,
        }
    }

    /// One attempt: find or make the start point, snapshot if needed, then follow the stream.
    /// Returns only with an error.
    async fn run_once<S: ChangeSink>(
        &mut self,
        client: &Client,
        collection: &Collection<Document>,
        sink: &S,
    ) -> Result<(), SourceError> {
        let start = match self.offsets.load()? {
            Some(point) => point,
            None => {
                let point = self.current_point(client, collection).await?;
                if self.config.snapshot {
                    self.snapshot(collection, sink).await?;
                }
                self.offsets.store(point.clone())?;
                self.offsets.flush()?;
                SourceStats::bump(&self.stats.offsets_stored);
                point
            }
        };
        self.stream(collection, sink, start).await
    }

    /// The change stream's current position: the token of a freshly opened stream, or the
    /// cluster's operation time when the server gives no token.
    async fn current_point(
        &self,
        client: &Client,
        collection: &Collection<Document>,
    ) -> Result<StartPoint, SourceError> {
        let stream = collection.watch().await.map_err(self.mongo_err("watch"))?;
        if let Some(token) = stream.resume_token() {
            return Ok(StartPoint::Token(token));
        }
        drop(stream);
        let reply = client
            .database(&self.config.database)
            .run_command(doc! {"ping": 1})
            .await
            .map_err(self.mongo_err("ping"))?;
        match reply.get_timestamp("operationTime") {
            Ok(ts) => Ok(StartPoint::Time(ts)),
            Err(_) => Err(SourceError::Malformed {
                namespace: self.config.namespace(),
                reason: "the server gives neither a resume token nor an operationTime: is it a replica set?".into(),
            }),
        }
    }

    /// Emits every existing document as a snapshot read and waits for all acknowledgements.
    async fn snapshot<S: ChangeSink>(
        &self,
        collection: &Collection<Document>,
        sink: &S,
    ) -> Result<(), SourceError> {
        tracing::info!(namespace = %self.config.namespace(), "initial snapshot starting");
        let mut cursor = collection
            .find(doc! {})
            .await
            .map_err(self.mongo_err("snapshot"))?;
        let mut pipe = Pipeline::new(sink, self.config.max_in_flight, self.stats.clone());
        let mut pending: Option<Document> = None;
        let mut first = true;
        while let Some(doc) = cursor.next().await {
            let doc = doc.map_err(self.mongo_err("snapshot"))?;
            if let Some(previous) = pending.replace(doc) {
                self.emit_snapshot(previous, first, false, &mut pipe)
                    .await?;
                first = false;
            }
        }
        if let Some(last) = pending {
            self.emit_snapshot(last, first, true, &mut pipe).await?;
        }
        pipe.drain().await?;
        tracing::info!(
            namespace = %self.config.namespace(),
            records = SourceStats::get(&self.stats.snapshot_records),
            "initial snapshot done"
        );
        Ok(())
    }

    async fn emit_snapshot<S: ChangeSink>(
        &self,
        doc: Document,
        first: bool,
        last: bool,
        pipe: &mut Pipeline<'_, S>,
    ) -> Result<(), SourceError> {
        let flag = convert::snapshot_flag(first, last);
        let event =
            convert::snapshot_event(&self.origin, doc, flag, now_ms()).map_err(|reason| {
                SourceError::Malformed {
                    namespace: self.config.namespace(),
                    reason,
                }
            })?;
        let (key, value) = self.encoder.encode(&self.topic, &event).await?;
        pipe.send(key, value, Some(RecordKind::Snapshot), None)
            .await
    }

    /// Follows the change stream from `start` until an error.
    async fn stream<S: ChangeSink>(
        &mut self,
        collection: &Collection<Document>,
        sink: &S,
        start: StartPoint,
    ) -> Result<(), SourceError> {
        let namespace = self.config.namespace();
        let watch = collection
            .watch()
            .full_document(FullDocumentType::UpdateLookup);
        let watch = match &start {
            StartPoint::Token(token) => watch.resume_after(token.clone()),
            StartPoint::Time(ts) => watch.start_at_operation_time(*ts),
        };
        let mut stream = watch.await.map_err(|source| {
            if is_resume_lost(&source) {
                SourceError::ResumeLost {
                    namespace: namespace.clone(),
                    source,
                }
            } else {
                SourceError::Mongo {
                    operation: "watch",
                    namespace: namespace.clone(),
                    source,
                }
            }
        })?;
        tracing::info!(namespace = %namespace, start = ?start, "following the change stream");
        // The stream is read by its own task: the driver's cursor must not be touched while a
        // `getMore` is in flight, which a `select!` over `next()` would do.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<StreamItem>(64);
        let reader = AbortOnDrop(tokio::spawn(async move {
            loop {
                let asked = tokio::time::Instant::now();
                let item = match stream.next_if_any().await {
                    Ok(Some(event)) => StreamItem::Event(Box::new(event)),
                    Ok(None) => {
                        // A server that answers an empty getMore at once (no await) must not
                        // make this a busy loop.
                        if asked.elapsed() < Duration::from_millis(50) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        match stream.resume_token() {
                            Some(token) => StreamItem::Idle(token),
                            None => continue,
                        }
                    }
                    Err(e) => StreamItem::Failed(e),
                };
                let failed = matches!(item, StreamItem::Failed(_));
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        }));
        let mut pipe = Pipeline::new(sink, self.config.max_in_flight, self.stats.clone());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            if let Some(token) = pipe.acked_token.take() {
                self.store_token(token)?;
            }
            let can_read = pipe.acks.len() < self.config.max_in_flight;
            tokio::select! {
                Some(acked) = pipe.acks.next(), if !pipe.acks.is_empty() => pipe.record(acked?),
                item = rx.recv(), if can_read => {
                    let event = match item {
                        None => break Err(SourceError::Invalidated {
                            namespace,
                            event: "end of the change stream".into(),
                        }),
                        Some(StreamItem::Failed(source)) if is_resume_lost(&source) => {
                            break Err(SourceError::ResumeLost { namespace, source });
                        }
                        Some(StreamItem::Failed(source)) => break Err(SourceError::Mongo {
                            operation: "next change",
                            namespace,
                            source,
                        }),
                        Some(StreamItem::Idle(token)) => {
                            // No event: move the stored position along the stream's post-batch
                            // token once everything before it is acknowledged.
                            pipe.marker(token);
                            continue;
                        }
                        Some(StreamItem::Event(event)) => *event,
                    };
                    let token = event.id.clone();
                    match convert::convert(&self.origin, event, self.config.tombstones_on_delete, now_ms()) {
                        Converted::Changes(changes) => {
                            let n = changes.len();
                            for (i, change) in changes.into_iter().enumerate() {
                                let kind = if change.op == crate::debezium::Op::Tombstone {
                                    RecordKind::Tombstone
                                } else {
                                    RecordKind::Change
                                };
                                let (key, value) = self.encoder.encode(&self.topic, &change).await?;
                                let token = (i + 1 == n).then(|| token.clone());
                                pipe.send(key, value, Some(kind), token).await?;
                            }
                        }
                        Converted::Skip(what) => {
                            tracing::debug!(namespace = %namespace, event = %what, "change-stream event skipped");
                            SourceStats::bump(&self.stats.skipped);
                            pipe.marker(token);
                        }
                        Converted::Malformed(reason) => {
                            break Err(SourceError::Malformed { namespace, reason });
                        }
                        Converted::End(event) => {
                            // Keep what was acknowledged before the end.
                            pipe.drain().await?;
                            if let Some(token) = pipe.acked_token.take() {
                                self.store_token(token)?;
                            }
                            break Err(SourceError::Invalidated { namespace, event });
                        }
                    }
                }
                _ = tick.tick() => self.offsets.flush()?,
            }
        };
        drop(reader);
        result
    }

    fn store_token(&mut self, token: ResumeToken) -> Result<(), SourceError> {
        let point = StartPoint::Token(token);
        if self.offsets.last() != Some(&point) {
            self.offsets.store(point)?;
            SourceStats::bump(&self.stats.offsets_stored);
        }
        Ok(())
    }
}

/// What the stream reader task hands over.
enum StreamItem {
    Event(Box<ChangeStreamEvent<Document>>),
    /// An empty batch; the stream's post-batch resume token.
    Idle(ResumeToken),
    Failed(mongodb::error::Error),
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records sent and not yet acknowledged, in order.
struct Pipeline<'s, S> {
    sink: &'s S,
    acks: FuturesOrdered<Ack>,
    max_in_flight: usize,
    stats: Arc<SourceStats>,
    /// The token of the latest event whose records are all acknowledged.
    acked_token: Option<ResumeToken>,
}

impl<'s, S: ChangeSink> Pipeline<'s, S> {
    fn new(sink: &'s S, max_in_flight: usize, stats: Arc<SourceStats>) -> Self {
        Pipeline {
            sink,
            acks: FuturesOrdered::new(),
            max_in_flight,
            stats,
            acked_token: None,
        }
    }

    /// Sends one record, first waiting for room.
    async fn send(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        kind: Option<RecordKind>,
        token: Option<ResumeToken>,
    ) -> Result<(), SourceError> {
        while self.acks.len() >= self.max_in_flight {
            self.next_ack().await?;
        }
        let delivery = loop {
            match self.sink.send(key.clone(), value.clone()) {
                Ok(delivery) => break delivery,
                Err(SinkError::Full) => {
                    if !self.next_ack().await? {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.acks.push_back(Box::pin(async move {
            delivery.await?;
            Ok(AckedRecord { kind, token })
        }));
        Ok(())
    }

    /// A position to store once everything before it is acknowledged (an event without record).
    fn marker(&mut self, token: ResumeToken) {
        self.acks
            .push_back(Box::pin(futures::future::ready(Ok(AckedRecord {
                kind: None,
                token: Some(token),
            }))));
    }

    fn record(&mut self, acked: AckedRecord) {
        if let Some(kind) = acked.kind {
            SourceStats::bump(match kind {
                RecordKind::Snapshot => &self.stats.snapshot_records,
                RecordKind::Change => &self.stats.change_records,
                RecordKind::Tombstone => &self.stats.tombstones,
            });
        }
        if let Some(token) = acked.token {
            self.acked_token = Some(token);
        }
    }

    /// Waits for the oldest acknowledgement; `false` when nothing is in flight.
    async fn next_ack(&mut self) -> Result<bool, SourceError> {
        match self.acks.next().await {
            Some(acked) => {
                self.record(acked?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn drain(&mut self) -> Result<(), SourceError> {
        while self.next_ack().await? {}
        Ok(())
    }
}
