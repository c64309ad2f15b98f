//! The embedded transport: a durable, partitioned log on sled.
//!
//! [`EmbeddedLog`] stores each topic partition in its own sled tree keyed by big-endian offset,
//! consumer-group committed offsets in another tree, and wakes waiting consumers on append. It
//! is what the standalone mode and the test driver run on. A group has one member here: the
//! consumer is assigned every partition of its topics and starts at the committed offsets
//! (earliest when none).
//!
//! A topic keeps every record unless it is given a retention policy
//! ([`EmbeddedLog::retain_until_committed_by`]): then a record is dropped once every named
//! consumer group has committed past it, which bounds the disk and the memory of a log that runs
//! for months (changelog topics have no policy: they are read from the start on restore).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{
    ApplyChangelogRecord, ConnectSpec, Connection, Delivered, DeliveryFuture, GroupMember,
    RecordSink, SourceConsumer, StateLog, TopicPartition, Transport, TransportError,
};
use crate::{Header, Headers, RawRecord};

/// Errors of the embedded log, with the topic and partition concerned.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// sled failed.
    #[error("embedded log {place}: {source}")]
    Sled {
        /// Topic/partition or tree concerned.
        place: String,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A stored record does not decode (disk corruption or a foreign tree).
    #[error("embedded log {topic}-{partition} offset {offset}: corrupt record")]
    Corrupt {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// A partition out of range.
    #[error("topic {topic} has no partition {partition}")]
    NoPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// A topic re-created with another partition count.
    #[error("topic {topic} exists with {existing} partitions, not {requested}")]
    PartitionMismatch {
        /// Topic.
        topic: String,
        /// Existing count.
        existing: u32,
        /// Requested count.
        requested: u32,
    },
}

fn sled_err(place: impl Into<String>) -> impl FnOnce(sled::Error) -> LogError {
    let place = place.into();
    move |source| LogError::Sled { place, source }
}

/// A durable partitioned log on sled.
///
/// # Example
/// ```
/// use topology::{RawRecord, transport::EmbeddedLog};
/// let log = EmbeddedLog::temporary().unwrap();
/// log.create_topic("t", 2).unwrap();
/// let (p, o) = log.append(&RawRecord { topic: "t".into(), partition: 1,
///     value: Some("v".into()), ..Default::default() }).unwrap();
/// assert_eq!((p, o), (1, 0));
/// assert_eq!(log.end_offset("t", 1).unwrap(), 1);
/// assert_eq!(log.read("t", 1, 0, 10).unwrap()[0].value.as_deref(), Some(&b"v"[..]));
/// ```
pub struct EmbeddedLog {
    db: sled::Db,
    topics: sled::Tree,
    offsets: sled::Tree,
    notify: Notify,
    append_lock: std::sync::Mutex<()>,
    round_robin: AtomicU32,
    default_partitions: u32,
    durable: bool,
    flushes: Arc<FlushState>,
    /// Topic → the groups that must all have committed past a record before it is dropped.
    retention: std::sync::RwLock<HashMap<String, BTreeSet<String>>>,
}

/// Single-flight flushing: many concurrent `flush_async` calls exhaust sled 0.34's small IO
/// thread pool, which the flushes themselves wait on (a hang seen with a second sled database
/// in the process). One flush runs at a time, on a blocking thread, and callers whose writes
/// an earlier flush already covered return at once.
#[derive(Debug, Default)]
struct FlushState {
    lock: std::sync::Mutex<()>,
    written: std::sync::atomic::AtomicU64,
    flushed: std::sync::atomic::AtomicU64,
}

impl FlushState {
    fn wrote(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether every append counted so far is on disk already.
    fn is_flushed(&self) -> bool {
        let wanted = self.written.load(Ordering::SeqCst);
        self.flushed.load(Ordering::SeqCst) >= wanted
    }

    fn flush(&self, db: &sled::Db) -> Result<(), LogError> {
        let wanted = self.written.load(Ordering::SeqCst);
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.flushed.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        let upto = self.written.load(Ordering::SeqCst);
        db.flush().map_err(sled_err("flush"))?;
        self.flushed.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog").finish_non_exhaustive()
    }
}

impl EmbeddedLog {
    /// Opens (or creates) a durable log in `dir`: appends are acknowledged after sled flushed.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let db = state::open_sled(&sled::Config::new().path(dir))
            .map_err(sled_err(dir.display().to_string()))?;
        Self::with_db(db, true)
    }

    /// Like [`EmbeddedLog::open`] with sled's page cache limited to `cache_bytes` (sled's
    /// default is 1 GiB per database, which a long log fills).
    pub fn open_with(dir: &Path, cache_bytes: u64) -> Result<Self, LogError> {
        let db = state::open_sled(&sled::Config::new().path(dir).cache_capacity(cache_bytes))
            .map_err(sled_err(dir.display().to_string()))?;
        Self::with_db(db, true)
    }

    /// A log in a temporary directory, removed on drop, not flushed (tests).
    pub fn temporary() -> Result<Self, LogError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(sled_err("temporary"))?;
        Self::with_db(db, false)
    }

    fn with_db(db: sled::Db, durable: bool) -> Result<Self, LogError> {
        Ok(EmbeddedLog {
            topics: db.open_tree("topics").map_err(sled_err("topics"))?,
            offsets: db.open_tree("offsets").map_err(sled_err("offsets"))?,
            db,
            notify: Notify::new(),
            append_lock: std::sync::Mutex::new(()),
            round_robin: AtomicU32::new(0),
            default_partitions: 1,
            durable,
            flushes: Arc::new(FlushState::default()),
            retention: std::sync::RwLock::new(HashMap::new()),
        })
    }

    /// Creates a topic (idempotent for the same partition count).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        match self.partitions(topic)? {
            Some(existing) if existing != partitions => Err(LogError::PartitionMismatch {
                topic: topic.to_owned(),
                existing,
                requested: partitions,
            }),
            Some(_) => Ok(()),
            None => {
                self.topics
                    .insert(topic.as_bytes(), &partitions.to_be_bytes())
                    .map_err(sled_err(topic))?;
                Ok(())
            }
        }
    }

    /// The partition count of a topic, if it exists.
    pub fn partitions(&self, topic: &str) -> Result<Option<u32>, LogError> {
        let v = self.topics.get(topic.as_bytes()).map_err(sled_err(topic))?;
        Ok(v.and_then(|b| <[u8; 4]>::try_from(b.as_ref()).ok())
            .map(u32::from_be_bytes))
    }

    /// Every topic, sorted.
    pub fn topics(&self) -> Result<Vec<String>, LogError> {
        self.topics
            .iter()
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(sled_err("topics"))
            })
            .collect()
    }

    fn tree(&self, topic: &str, partition: i32) -> Result<sled::Tree, LogError> {
        let n = self.partitions(topic)?.unwrap_or(0);
        if partition < 0 || partition as u32 >= n {
            return Err(LogError::NoPartition {
                topic: topic.to_owned(),
                partition,
            });
        }
        self.db
            .open_tree(format!("log\0{topic}\0{partition}"))
            .map_err(sled_err(format!("{topic}-{partition}")))
    }

    /// Appends a record (creating the topic with one partition if needed) and returns its
    /// partition and offset. A negative `partition` picks one by key hash (round robin without
    /// a key).
    pub fn append(&self, record: &RawRecord) -> Result<(i32, i64), LogError> {
        let partitions = match self.partitions(&record.topic)? {
            Some(n) => n,
            None => {
                self.create_topic(&record.topic, self.default_partitions)?;
                self.default_partitions
            }
        };
        let partition = if record.partition >= 0 {
            record.partition
        } else {
            match &record.key {
                Some(k) => (fnv1a(k) % partitions as u64) as i32,
                None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions) as i32,
            }
        };
        let tree = self.tree(&record.topic, partition)?;
        let place = || format!("{}-{partition}", record.topic);
        let offset = {
            let _guard = self
                .append_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let next = match tree.last().map_err(sled_err(place()))? {
                Some((k, _)) => be_i64(&k) + 1,
                None => 0,
            };
            tree.insert(next.to_be_bytes(), encode(record))
                .map_err(sled_err(place()))?;
            self.flushes.wrote();
            next
        };
        self.notify.notify_waiters();
        Ok((partition, offset))
    }

    /// Reads up to `max` records from `offset` on.
    pub fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max: usize,
    ) -> Result<Vec<RawRecord>, LogError> {
        let tree = self.tree(topic, partition)?;
        let mut out = Vec::new();
        for item in tree.range(offset.max(0).to_be_bytes()..).take(max) {
            let (k, v) = item.map_err(sled_err(format!("{topic}-{partition}")))?;
            let off = be_i64(&k);
            let mut r = decode(&v).ok_or_else(|| LogError::Corrupt {
                topic: topic.to_owned(),
                partition,
                offset: off,
            })?;
            r.topic = topic.into();
            r.partition = partition;
            r.offset = off;
            out.push(r);
        }
        Ok(out)
    }

    /// Every record of a topic, partition by partition.
    pub fn read_all(&self, topic: &str) -> Result<Vec<RawRecord>, LogError> {
        let mut out = Vec::new();
        for p in 0..self.partitions(topic)?.unwrap_or(0) as i32 {
            out.extend(self.read(topic, p, 0, usize::MAX)?);
        }
        Ok(out)
    }

    /// The offset the next append to this partition gets.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError> {
        let tree = self.tree(topic, partition)?;
        Ok(
            match tree
                .last()
                .map_err(sled_err(format!("{topic}-{partition}")))?
            {
                Some((k, _)) => be_i64(&k) + 1,
                None => 0,
            },
        )
    }

    /// A group's committed offset for a partition.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, LogError> {
        let v = self
            .offsets
            .get(offset_key(group, topic, partition))
            .map_err(sled_err("offsets"))?;
        Ok(v.map(|b| be_i64(&b)))
    }

    /// Stores a group's committed offsets atomically, then drops the records that every group
    /// of the topic's retention policy has now consumed.
    pub fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<(), LogError> {
        let mut batch = sled::Batch::default();
        for (tp, o) in offsets {
            batch.insert(offset_key(group, &tp.topic, tp.partition), &o.to_be_bytes());
        }
        self.offsets
            .apply_batch(batch)
            .map_err(sled_err("offsets"))?;
        self.flushes.wrote();
        for (tp, _) in offsets {
            self.drop_consumed(&tp.topic, tp.partition)?;
        }
        Ok(())
    }

    /// Lets the log drop `topic`'s records once `group` (and every other group given for the
    /// topic) has committed past them. The policy lives in memory: give it at every open, before
    /// the groups commit. A group that has never committed holds every record back.
    pub fn retain_until_committed_by(&self, topic: &str, group: &str) {
        self.retention
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(topic.to_owned())
            .or_default()
            .insert(group.to_owned());
    }

    /// The offset of a partition's first stored record (its end offset when it holds none).
    pub fn start_offset(&self, topic: &str, partition: i32) -> Result<i64, LogError> {
        let tree = self.tree(topic, partition)?;
        match tree
            .first()
            .map_err(sled_err(format!("{topic}-{partition}")))?
        {
            Some((k, _)) => Ok(be_i64(&k)),
            None => self.end_offset(topic, partition),
        }
    }

    fn drop_consumed(&self, topic: &str, partition: i32) -> Result<(), LogError> {
        let groups = match self
            .retention
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
        {
            Some(groups) => groups.clone(),
            None => return Ok(()),
        };
        let mut consumed = i64::MAX;
        for group in &groups {
            match self.committed(group, topic, partition)? {
                Some(offset) => consumed = consumed.min(offset),
                None => return Ok(()),
            }
        }
        let tree = self.tree(topic, partition)?;
        let place = || format!("{topic}-{partition}");
        // The last record stays: the next append's offset is read from it.
        let Some((last, _)) = tree.last().map_err(sled_err(place()))? else {
            return Ok(());
        };
        let upto = consumed.min(be_i64(&last));
        let mut batch = sled::Batch::default();
        let mut dropped = 0_usize;
        for key in tree.range(..upto.max(0).to_be_bytes()).keys() {
            batch.remove(key.map_err(sled_err(place()))?);
            dropped += 1;
        }
        if dropped > 0 {
            tree.apply_batch(batch).map_err(sled_err(place()))?;
            self.flushes.wrote();
        }
        Ok(())
    }

    /// Flushes to disk, blocking the calling thread (no-op for temporary logs).
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        if self.durable {
            self.flushes.flush(&self.db)?;
        }
        Ok(())
    }

    /// Waits until something is appended or `timeout` passes.
    pub async fn wait_for_append(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    /// Flushes to disk (no-op for temporary logs).
    ///
    /// Runs sled's blocking flush on tokio's blocking pool rather than `flush_async`: sled 0.34
    /// runs `flush_async` on its own IO pool of seven threads, and with seven flushes waiting
    /// there the buffer write they wait for queues behind them; once a transaction anywhere in
    /// the process also waits for sled's global lock, every sled call hangs (seen with the
    /// standalone mode under a burst of POSTs).
    ///
    /// A caller whose appends an earlier flush already covered returns at once, without a trip
    /// to the blocking pool: a batch of deliveries awaited in order costs one flush, not one
    /// blocking task per record.
    pub async fn flush(&self) -> Result<(), LogError> {
        if !self.durable || self.flushes.is_flushed() {
            return Ok(());
        }
        let (db, flushes) = (self.db.clone(), self.flushes.clone());
        tokio::task::spawn_blocking(move || flushes.flush(&db))
            .await
            .map_err(|e| LogError::Sled {
                place: "flush".into(),
                source: sled::Error::ReportableBug(format!("flush task: {e}")),
            })?
    }
}

fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    format!("{group}\0{topic}\0{partition}").into_bytes()
}

fn be_i64(b: &[u8]) -> i64 {
    <[u8; 8]>::try_from(b).map(i64::from_be_bytes).unwrap_or(-1)
}

/// FNV-1a, the embedded log's key partitioner (stable across runs).
fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn encode(r: &RawRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + r.value.as_ref().map_or(0, |v| v.len()));
    out.extend_from_slice(&r.timestamp.unwrap_or(-1).to_be_bytes());
    put_opt(&mut out, r.key.as_deref());
    put_opt(&mut out, r.value.as_deref());
    out.extend_from_slice(&(r.headers.0.len() as u32).to_be_bytes());
    for h in r.headers.iter() {
        put_opt(&mut out, Some(h.key.as_bytes()));
        put_opt(&mut out, h.value.as_deref());
    }
    out
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    }
    fn opt(&mut self) -> Option<Option<Bytes>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        Some(Some(Bytes::copy_from_slice(self.take(n as usize)?)))
    }
}

fn decode(b: &[u8]) -> Option<RawRecord> {
    let mut c = Cursor(b);
    let ts = i64::from_be_bytes(<[u8; 8]>::try_from(c.take(8)?).ok()?);
    let key = c.opt()?;
    let value = c.opt()?;
    let n = c.u32()?;
    let mut headers = Headers::default();
    for _ in 0..n {
        let k = c.opt()??;
        let v = c.opt()?;
        headers.0.push(Header {
            key: String::from_utf8_lossy(&k).into_owned(),
            value: v,
        });
    }
    Some(RawRecord {
        topic: Arc::default(),
        partition: -1,
        offset: -1,
        key,
        value,
        headers,
        timestamp: (ts >= 0).then_some(ts),
    })
}

/// The embedded transport over an [`EmbeddedLog`].
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use topology::transport::{EmbeddedLog, EmbeddedTransport};
/// let t = EmbeddedTransport::new(Arc::new(EmbeddedLog::temporary().unwrap()));
/// # let _ = t;
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddedTransport {
    log: Arc<EmbeddedLog>,
}

impl EmbeddedTransport {
    /// A transport over `log`.
    pub fn new(log: Arc<EmbeddedLog>) -> Self {
        EmbeddedTransport { log }
    }

    /// The log.
    pub fn log(&self) -> &Arc<EmbeddedLog> {
        &self.log
    }
}

impl Transport for EmbeddedTransport {
    fn partition_for_key(&self, key: &[u8], partitions: i32) -> i32 {
        (fnv1a(key) % partitions.max(1) as u64) as i32
    }

    /// None to report: one process owns an embedded log, so a task that does not run in it
    /// runs nowhere.
    fn group_members(
        &self,
        _group_id: &str,
    ) -> BoxFuture<'static, Result<Vec<GroupMember>, TransportError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn state_log(&self) -> Result<Arc<dyn StateLog>, TransportError> {
        Ok(Arc::new(EmbeddedStateLog {
            log: self.log.clone(),
        }))
    }

    fn connect(&self, spec: ConnectSpec) -> BoxFuture<'_, Result<Connection, TransportError>> {
        Box::pin(async move {
            let mut assigned = Vec::new();
            let mut positions = HashMap::new();
            for t in &spec.topics {
                let n = match self.log.partitions(t)? {
                    Some(n) => n,
                    None => {
                        self.log.create_topic(t, 1)?;
                        1
                    }
                };
                for p in 0..n as i32 {
                    let tp = TopicPartition::new(t, p);
                    let start = self.log.committed(&spec.group_id, t, p)?.unwrap_or(0);
                    positions.insert(tp.clone(), start);
                    assigned.push(tp);
                }
            }
            spec.listener.on_assigned(&assigned);
            (spec.on_rebalance)();
            let consumer = EmbeddedConsumer {
                log: self.log.clone(),
                group: spec.group_id.clone(),
                assigned,
                positions,
                buffers: HashMap::new(),
                paused: HashSet::new(),
                next: 0,
            };
            Ok(Connection {
                consumer: Box::new(consumer),
                sink: Arc::new(EmbeddedSink {
                    log: self.log.clone(),
                }),
            })
        })
    }
}

struct EmbeddedConsumer {
    log: Arc<EmbeddedLog>,
    group: String,
    assigned: Vec<TopicPartition>,
    positions: HashMap<TopicPartition, i64>,
    buffers: HashMap<TopicPartition, VecDeque<RawRecord>>,
    paused: HashSet<TopicPartition>,
    next: usize,
}

impl EmbeddedConsumer {
    fn try_next(&mut self) -> Result<Option<RawRecord>, TransportError> {
        let n = self.assigned.len();
        for i in 0..n {
            let idx = (self.next + i) % n;
            let tp = &self.assigned[idx];
            if self.paused.contains(tp) {
                continue;
            }
            let buf = self.buffers.entry(tp.clone()).or_default();
            if buf.is_empty() {
                let pos = self.positions.get(tp).copied().unwrap_or(0);
                buf.extend(self.log.read(&tp.topic, tp.partition, pos, 256)?);
            }
            if let Some(r) = buf.pop_front() {
                self.positions.insert(tp.clone(), r.offset + 1);
                self.next = (idx + 1) % n;
                return Ok(Some(r));
            }
        }
        Ok(None)
    }
}

impl SourceConsumer for EmbeddedConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<RawRecord>, TransportError>> {
        Box::pin(async move {
            if let Some(r) = self.try_next()? {
                return Ok(Some(r));
            }
            self.log.wait_for_append(timeout).await;
            self.try_next()
        })
    }

    fn commit(
        &mut self,
        offsets: Vec<(TopicPartition, i64)>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        // sled's batch takes its process-wide write lock, which waits for any flush in
        // progress: commit and flush on a blocking thread, never on an async worker.
        let (log, group) = (self.log.clone(), self.group.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                log.commit(&group, &offsets)?;
                log.flush_blocking()
            })
            .await
            .map_err(|e| LogError::Sled {
                place: "commit".into(),
                source: sled::Error::ReportableBug(format!("commit task: {e}")),
            })??;
            Ok(())
        })
    }

    fn pause(&mut self, tps: &[TopicPartition]) -> Result<(), TransportError> {
        self.paused.extend(tps.iter().cloned());
        Ok(())
    }

    fn resume(&mut self, tps: &[TopicPartition]) -> Result<(), TransportError> {
        for tp in tps {
            self.paused.remove(tp);
        }
        Ok(())
    }

    fn end_offsets(
        &self,
        tps: Vec<TopicPartition>,
    ) -> BoxFuture<'static, Result<Vec<(TopicPartition, i64)>, TransportError>> {
        let log = self.log.clone();
        Box::pin(async move {
            tps.into_iter()
                .map(|tp| {
                    let end = log.end_offset(&tp.topic, tp.partition)?;
                    Ok((tp, end))
                })
                .collect()
        })
    }

    fn committed_offsets(
        &self,
        tps: Vec<TopicPartition>,
    ) -> BoxFuture<'static, Result<super::CommittedOffsets, TransportError>> {
        let (log, group) = (self.log.clone(), self.group.clone());
        Box::pin(async move {
            tps.into_iter()
                .map(|tp| {
                    let c = log.committed(&group, &tp.topic, tp.partition)?;
                    Ok((tp, c))
                })
                .collect()
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

struct EmbeddedSink {
    log: Arc<EmbeddedLog>,
}

impl RecordSink for EmbeddedSink {
    fn send(&self, record: &RawRecord) -> Result<DeliveryFuture, TransportError> {
        let (partition, offset) = self.log.append(record)?;
        let log = self.log.clone();
        Ok(Box::pin(async move {
            log.flush().await?;
            Ok(Delivered { partition, offset })
        }))
    }
}

/// The embedded log's [`StateLog`]: topics are created with their partitions (the log keeps
/// every record of a topic no group consumes, so a changelog is never trimmed).
struct EmbeddedStateLog {
    log: Arc<EmbeddedLog>,
}

impl StateLog for EmbeddedStateLog {
    fn partitions(&self, topic: &str) -> Result<Option<i32>, TransportError> {
        Ok(self.log.partitions(topic)?.map(|n| n as i32))
    }

    fn ensure_compacted(&self, topic: &str, partitions: i32) -> Result<(), TransportError> {
        match self.log.partitions(topic)? {
            Some(n) if (n as i32) < partitions => Err(TransportError::Layout {
                topic: topic.to_owned(),
                message: format!("has {n} partitions, the tasks need {partitions}"),
            }),
            Some(_) => Ok(()),
            None => Ok(self
                .log
                .create_topic(topic, u32::try_from(partitions.max(1)).unwrap_or(1))?),
        }
    }

    fn ensure_repartition(&self, topic: &str, partitions: i32) -> Result<(), TransportError> {
        if self.log.partitions(topic)?.is_none() {
            self.log
                .create_topic(topic, u32::try_from(partitions.max(1)).unwrap_or(1))?;
        }
        Ok(())
    }

    fn bounds(&self, tp: &TopicPartition) -> Result<(i64, i64), TransportError> {
        Ok((
            self.log.start_offset(&tp.topic, tp.partition)?,
            self.log.end_offset(&tp.topic, tp.partition)?,
        ))
    }

    fn read_range(
        &self,
        tp: &TopicPartition,
        from: i64,
        until: i64,
        apply: &mut ApplyChangelogRecord<'_>,
    ) -> Result<u64, TransportError> {
        let mut next = from;
        let mut read = 0u64;
        while next < until {
            let batch = self.log.read(&tp.topic, tp.partition, next, 1024)?;
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            for r in batch.iter().filter(|r| r.offset < until) {
                read += 1;
                if let Some(key) = &r.key {
                    apply(key, r.value.as_deref()).map_err(|message| TransportError::Restore {
                        tp: tp.clone(),
                        message,
                    })?;
                }
            }
        }
        Ok(read)
    }
}
