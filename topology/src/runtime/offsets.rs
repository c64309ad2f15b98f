//! Gap-aware offset tracking.
//!
//! Records of a partition finish out of order when processed concurrently. [`PartitionOffsets`]
//! keeps the offsets still in flight; the offset that may be committed is the lowest unfinished
//! one, or one past the highest seen when none is unfinished, so a commit never skips work.
//! [`OffsetTracker`] holds that state for every assigned partition, shared between the runtime
//! and the transport's rebalance callbacks; an [`Ack`] marks one source record finished when its
//! last clone is dropped (after every output it caused was acknowledged).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::RawRecord;
use crate::transport::TopicPartition;

/// In-flight offsets of one partition.
///
/// # Example
/// ```
/// use topology::runtime::PartitionOffsets;
/// let mut p = PartitionOffsets::default();
/// for o in 10..13 { p.begin(o); }
/// p.complete(11);
/// p.complete(12);
/// assert_eq!(p.commit_offset(), Some(10)); // 10 is still running
/// p.complete(10);
/// assert_eq!(p.commit_offset(), Some(13));
/// ```
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    next: Option<i64>,
    failed: BTreeSet<i64>,
}

impl PartitionOffsets {
    /// Records that `offset` started.
    pub fn begin(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Records that `offset` finished.
    pub fn complete(&mut self, offset: i64) {
        self.in_flight.remove(&offset);
    }

    /// Records that `offset` failed in a way that must stop commits (an output could not be
    /// written): it stays unfinished.
    pub fn fail(&mut self, offset: i64) {
        self.failed.insert(offset);
    }

    /// The offset a commit may store: the lowest unfinished offset, or one past the highest
    /// seen. `None` before any record was seen.
    pub fn commit_offset(&self) -> Option<i64> {
        let lowest = self.in_flight.iter().next().copied();
        let failed = self.failed.iter().next().copied();
        match (lowest, failed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Some(a),
            (None, None) => self.next,
        }
    }

    /// Offsets in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether an output failed for good.
    pub fn has_failed(&self) -> bool {
        !self.failed.is_empty()
    }
}

#[derive(Debug)]
struct Assigned {
    offsets: PartitionOffsets,
    epoch: u64,
    committed: Option<i64>,
    cancel: CancellationToken,
}

/// Offsets of every assigned partition, shared by the runtime and the transport.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    partitions: HashMap<TopicPartition, Assigned>,
    epoch: u64,
}

impl OffsetTracker {
    fn lock(&self) -> MutexGuard<'_, TrackerInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Partitions were assigned.
    pub fn assign(&self, tps: &[TopicPartition]) {
        let mut g = self.lock();
        for tp in tps {
            g.epoch += 1;
            let epoch = g.epoch;
            g.partitions.entry(tp.clone()).or_insert_with(|| Assigned {
                offsets: PartitionOffsets::default(),
                epoch,
                committed: None,
                cancel: CancellationToken::new(),
            });
        }
    }

    /// Partitions are being revoked: cancels their in-flight work, forgets them and returns the
    /// offsets that may still be committed for them (never past unfinished work).
    pub fn revoke(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let mut g = self.lock();
        let mut out = Vec::new();
        for tp in tps {
            if let Some(a) = g.partitions.remove(tp) {
                a.cancel.cancel();
                if let Some(o) = a.offsets.commit_offset()
                    && Some(o) != a.committed
                {
                    out.push((tp.clone(), o));
                }
            }
        }
        out
    }

    /// Starts tracking a source record; `None` when its partition is not assigned (any more).
    pub fn begin(self: &Arc<Self>, origin: RawRecord) -> Option<Ack> {
        let tp = TopicPartition::new(&origin.topic, origin.partition);
        let mut g = self.lock();
        let a = g.partitions.get_mut(&tp)?;
        a.offsets.begin(origin.offset);
        Some(Arc::new(AckInner {
            tracker: self.clone(),
            epoch: a.epoch,
            cancel: a.cancel.child_token(),
            tp,
            origin,
            failed: AtomicBool::new(false),
        }))
    }

    fn finish(&self, tp: &TopicPartition, offset: i64, epoch: u64, failed: bool) {
        let mut g = self.lock();
        if let Some(a) = g.partitions.get_mut(tp)
            && a.epoch == epoch
        {
            if failed {
                a.offsets.fail(offset);
            }
            a.offsets.complete(offset);
        }
    }

    /// Offsets to commit now: partitions whose commit offset moved since the last commit.
    pub fn pending_commits(&self) -> Vec<(TopicPartition, i64)> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .partitions
            .iter()
            .filter_map(|(tp, a)| {
                let o = a.offsets.commit_offset()?;
                (Some(o) != a.committed).then(|| (tp.clone(), o))
            })
            .collect();
        v.sort();
        v
    }

    /// Records a successful commit.
    pub fn committed(&self, offsets: &[(TopicPartition, i64)]) {
        let mut g = self.lock();
        for (tp, o) in offsets {
            if let Some(a) = g.partitions.get_mut(tp) {
                a.committed = Some(*o);
            }
        }
    }

    /// The last committed offset of a partition.
    pub fn committed_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.lock().partitions.get(tp).and_then(|a| a.committed)
    }

    /// Records in flight in one partition.
    pub fn in_flight(&self, tp: &TopicPartition) -> usize {
        self.lock()
            .partitions
            .get(tp)
            .map_or(0, |a| a.offsets.in_flight())
    }

    /// Records in flight in all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.lock()
            .partitions
            .values()
            .map(|a| a.offsets.in_flight())
            .sum()
    }

    /// Assigned partitions, sorted.
    pub fn assigned(&self) -> Vec<TopicPartition> {
        let mut v: Vec<_> = self.lock().partitions.keys().cloned().collect();
        v.sort();
        v
    }

    /// Partitions where an output failed for good (the runtime stops on these).
    pub fn failed_partitions(&self) -> Vec<TopicPartition> {
        self.lock()
            .partitions
            .iter()
            .filter(|(_, a)| a.offsets.has_failed())
            .map(|(tp, _)| tp.clone())
            .collect()
    }
}

/// Completion handle of one source record; see [`OffsetTracker::begin`].
pub type Ack = Arc<AckInner>;

/// The shared part of an [`Ack`].
#[derive(Debug)]
pub struct AckInner {
    tracker: Arc<OffsetTracker>,
    tp: TopicPartition,
    epoch: u64,
    failed: AtomicBool,
    /// Cancelled when the partition is revoked or the runtime abandons work.
    pub cancel: CancellationToken,
    /// The source record as read, for dead-letter records.
    pub origin: RawRecord,
}

impl AckInner {
    /// Marks the record as failed for good: its offset will not be committed.
    pub fn fail(&self) {
        self.failed.store(true, AtomicOrdering::SeqCst);
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        self.tracker.finish(
            &self.tp,
            self.origin.offset,
            self.epoch,
            self.failed.load(AtomicOrdering::SeqCst),
        );
    }
}
