//! Gap-aware offset tracking.
//!
//! Records of a partition finish out of order when processed concurrently. [`PartitionOffsets`]
//! keeps the offsets still in flight; the offset that may be committed is the lowest unfinished
//! one, or one past the highest seen when none is unfinished, so a commit never skips work.
//! [`OffsetTracker`] holds that state for every assigned partition, shared between the runtime
//! and the transport's rebalance callbacks; an [`Ack`] marks one source record finished when its
//! last clone is dropped (after every output it caused was acknowledged).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use tokio_util::sync::CancellationToken;

use crate::RawRecord;
use crate::transport::{RebalanceListener, Rewind, TopicPartition};

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
    /// Offsets begun, ascending, each with whether it finished; finished ones leave from the
    /// front. A partition's records begin in offset order, so `begin` appends and the queue
    /// reuses its buffer. (A `BTreeSet` allocated and freed tree nodes per record under the
    /// partition's lock, which the delivery thread takes for every record: the loop thread's
    /// `begin` then waited on that lock, and the lock holder on the allocator's.)
    begun: VecDeque<(i64, bool)>,
    /// Entries of `begun` not finished.
    running: usize,
    next: Option<i64>,
    failed: BTreeSet<i64>,
}

impl PartitionOffsets {
    /// Records that `offset` started.
    pub fn begin(&mut self, offset: i64) {
        match self.begun.back() {
            Some(&(last, _)) if last >= offset => {
                // Out of order (not seen from a consumer, kept for any caller): a sorted
                // insert, and an offset already running stays counted once.
                match self.begun.binary_search_by_key(&offset, |e| e.0) {
                    Ok(i) => {
                        if self.begun[i].1 {
                            self.begun[i].1 = false;
                            self.running += 1;
                        }
                    }
                    Err(i) => {
                        self.begun.insert(i, (offset, false));
                        self.running += 1;
                    }
                }
            }
            _ => {
                self.begun.push_back((offset, false));
                self.running += 1;
            }
        }
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// Records that `offset` finished.
    pub fn complete(&mut self, offset: i64) {
        if let Ok(i) = self.begun.binary_search_by_key(&offset, |e| e.0)
            && !self.begun[i].1
        {
            self.begun[i].1 = true;
            self.running -= 1;
        }
        while self.begun.front().is_some_and(|e| e.1) {
            self.begun.pop_front();
        }
    }

    /// Records that `offset` failed in a way that must stop commits (an output could not be
    /// written): it stays unfinished.
    pub fn fail(&mut self, offset: i64) {
        self.failed.insert(offset);
    }

    /// The offset a commit may store: the lowest unfinished offset, or one past the highest
    /// seen. `None` before any record was seen.
    pub fn commit_offset(&self) -> Option<i64> {
        // Finished entries never stay at the front: the front is the lowest unfinished.
        let lowest = self.begun.front().map(|e| e.0);
        let failed = self.failed.iter().next().copied();
        match (lowest, failed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Some(a),
            (None, None) => self.next,
        }
    }

    /// Offsets in flight.
    pub fn in_flight(&self) -> usize {
        self.running
    }

    /// Whether an output failed for good.
    pub fn has_failed(&self) -> bool {
        !self.failed.is_empty()
    }
}

/// The live state of one assigned partition, shared by the tracker and the acks of its
/// records. A reset or revocation replaces (or drops) it in the tracker, so acks of older work
/// update an orphaned copy and no longer count, without an epoch check or a map lookup.
#[derive(Debug)]
struct Partition {
    offsets: Mutex<PartitionOffsets>,
    /// Records begun and not finished (mirrors `offsets`, read without its lock).
    in_flight: AtomicUsize,
    /// Records still being processed (held by an async stage), not only awaiting output acks.
    processing: AtomicUsize,
    cancel: CancellationToken,
    /// A record of it failed because the schema registry stayed unavailable (not its outputs).
    registry_unavailable: AtomicBool,
}

impl Partition {
    fn new() -> Arc<Self> {
        Arc::new(Partition {
            offsets: Mutex::new(PartitionOffsets::default()),
            in_flight: AtomicUsize::new(0),
            processing: AtomicUsize::new(0),
            cancel: CancellationToken::new(),
            registry_unavailable: AtomicBool::new(false),
        })
    }

    fn offsets(&self) -> MutexGuard<'_, PartitionOffsets> {
        self.offsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.in_flight.load(AtomicOrdering::Acquire),
            self.processing.load(AtomicOrdering::Acquire),
        )
    }
}

#[derive(Debug)]
struct Assigned {
    live: Arc<Partition>,
    committed: Option<i64>,
    /// The first offset begun since assignment (or since the last reset).
    start: Option<i64>,
}

/// Offsets of every assigned partition, shared by the runtime and the transport.
///
/// Besides the offsets it holds a *send gate*: output writes take it shared (after checking
/// that their record's work was not cancelled), and revocation takes it exclusively while it
/// cancels work, so once [`revoke`](Self::revoke) or [`reset`](Self::reset) returns no output
/// of cancelled work can still be queued (what keeps a transaction free of revoked work).
///
/// Per record the runtime takes the tracker's lock once (to begin it); finishing a record
/// locks only its own partition's offsets (from the producer's delivery thread), and the
/// counts back-pressure reads are atomics.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    inner: Mutex<TrackerInner>,
    gate: RwLock<()>,
    resets: AtomicU64,
    /// Assignment changes not yet taken by the runtime, in the order they happened.
    changes: Mutex<Vec<AssignmentChange>>,
    /// Bumped with every change: the runtime's per-loop check is one atomic load.
    generation: AtomicU64,
}

/// A change of this member's assignment, as the rebalance callbacks saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentChange {
    /// These partitions were assigned.
    Assigned(Vec<TopicPartition>),
    /// These partitions were revoked (or lost).
    Revoked(Vec<TopicPartition>),
}

#[derive(Debug, Default)]
struct TrackerInner {
    partitions: HashMap<TopicPartition, Assigned>,
}

impl OffsetTracker {
    fn lock(&self) -> MutexGuard<'_, TrackerInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(&self, change: AssignmentChange) {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(change);
        self.generation.fetch_add(1, AtomicOrdering::AcqRel);
    }

    /// How many assignment changes happened so far (see [`take_changes`](Self::take_changes)).
    pub fn generation(&self) -> u64 {
        self.generation.load(AtomicOrdering::Acquire)
    }

    /// The assignment changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(
            &mut *self
                .changes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Partitions were assigned.
    pub fn assign(&self, tps: &[TopicPartition]) {
        self.changed(AssignmentChange::Assigned(tps.to_vec()));
        let mut g = self.lock();
        for tp in tps {
            g.partitions.entry(tp.clone()).or_insert_with(|| Assigned {
                live: Partition::new(),
                committed: None,
                start: None,
            });
        }
    }

    fn write_gate(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the send gate shared; see the type docs. Hold it only around a non-blocking send.
    pub fn send_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many times [`reset`](Self::reset) ran: records polled before a reset and not yet
    /// begun must be dropped (their partitions were rewound).
    pub fn resets(&self) -> u64 {
        self.resets.load(AtomicOrdering::Acquire)
    }

    /// Throws away the uncommitted work of the still-assigned partitions `tps` (exactly-once
    /// mode, when the open transaction is aborted on a rebalance): cancels their in-flight
    /// work, forgets their in-flight offsets (acks of the old work no longer count) and returns
    /// where each must be read again from. Partitions where nothing was read since the last
    /// commit are not returned.
    pub fn reset(&self, tps: &[TopicPartition]) -> Vec<Rewind> {
        let _gate = self.write_gate();
        let mut g = self.lock();
        self.resets.fetch_add(1, AtomicOrdering::AcqRel);
        let mut out = Vec::new();
        for tp in tps {
            let Some(a) = g.partitions.get_mut(tp) else {
                continue;
            };
            a.live.cancel.cancel();
            let position = a.committed.or(a.start);
            let read_since = a.live.offsets().next.is_some_and(|n| Some(n) != position);
            if read_since && let Some(offset) = position {
                out.push(Rewind {
                    tp: tp.clone(),
                    offset,
                });
            }
            a.live = Partition::new();
            a.start = position;
        }
        out
    }

    /// Partitions are being revoked: cancels their in-flight work, forgets them and returns the
    /// offsets that may still be committed for them (never past unfinished work).
    pub fn revoke(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        self.changed(AssignmentChange::Revoked(tps.to_vec()));
        let _gate = self.write_gate();
        let mut g = self.lock();
        let mut out = Vec::new();
        for tp in tps {
            if let Some(a) = g.partitions.remove(tp) {
                // The offset before the cancel: cancelled work drops its acks at once, on
                // other threads, and a dropped ack finishes its offset in `a.live` (the very
                // partition state the acks share), so an offset taken after the cancel could
                // pass records that were never processed, and commit them as done (seen as
                // image-pipeline updates never collected after a rebalance).
                let commit = a.live.offsets().commit_offset();
                a.live.cancel.cancel();
                if let Some(o) = commit
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
        // The lookup key shares the record's topic (no allocation per record).
        let key = TopicPartition {
            topic: origin.topic.clone(),
            partition: origin.partition,
        };
        let live = {
            let mut g = self.lock();
            // Under the tracker's lock, so a concurrent revoke or reset sees it begun or not
            // at all.
            g.partitions.get_mut(&key).map(|a| {
                a.start.get_or_insert(origin.offset);
                a.live.offsets().begin(origin.offset);
                a.live.in_flight.fetch_add(1, AtomicOrdering::AcqRel);
                a.live.clone()
            })
        };
        let live = live?;
        Some(Arc::new(AckInner {
            tracker: self.clone(),
            // The partition's token itself (a clone, no allocation): nothing cancels one
            // record's work alone, and a child token per record cost an allocation and two
            // locks of the partition's token tree per record.
            cancel: live.cancel.clone(),
            live,
            origin,
            failure: AtomicU8::new(NOT_FAILED),
        }))
    }

    /// An ack for work that is not a record's: a wall-clock punctuation of the task reading
    /// `tp`. It holds the partition's last record read (begun again), so the offset is not
    /// committed past it before the punctuation's outputs are acknowledged. `None` when the
    /// partition is not assigned or nothing was read from it yet (there is no offset to
    /// hold without rewinding the group).
    pub fn begin_punctuation(self: &Arc<Self>, tp: &TopicPartition) -> Option<Ack> {
        let last = {
            let g = self.lock();
            let a = g.partitions.get(tp)?;
            a.live.offsets().next? - 1
        };
        self.begin(RawRecord {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: last,
            ..Default::default()
        })
    }

    /// Offsets to commit now: partitions whose commit offset moved since the last commit.
    pub fn pending_commits(&self) -> Vec<(TopicPartition, i64)> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .partitions
            .iter()
            .filter_map(|(tp, a)| {
                let o = a.live.offsets().commit_offset()?;
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
        self.in_flight_and_processing(tp).0
    }

    /// Records of one partition still being processed (inside an async stage), as opposed to
    /// records whose outputs only await the producer's acknowledgement.
    pub fn processing(&self, tp: &TopicPartition) -> usize {
        self.in_flight_and_processing(tp).1
    }

    /// Records in flight and still being processed in one partition.
    pub fn in_flight_and_processing(&self, tp: &TopicPartition) -> (usize, usize) {
        self.lock()
            .partitions
            .get(tp)
            .map_or((0, 0), |a| a.live.counts())
    }

    /// Records in flight in all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.lock()
            .partitions
            .values()
            .map(|a| a.live.counts().0)
            .sum()
    }

    /// The token cancelled when `tp`'s current assignment ends (revoked, lost or reset);
    /// `None` when it is not assigned. Records kept for later compare against it: work of an
    /// earlier assignment is read again from the log, not carried over.
    pub fn assignment_token(&self, tp: &TopicPartition) -> Option<CancellationToken> {
        self.lock()
            .partitions
            .get(tp)
            .map(|a| a.live.cancel.clone())
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
            .filter(|(_, a)| a.live.offsets().has_failed())
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// Of [`failed_partitions`](Self::failed_partitions), those where a record failed because
    /// the schema registry stayed unavailable.
    pub fn registry_unavailable_partitions(&self) -> Vec<TopicPartition> {
        self.lock()
            .partitions
            .iter()
            .filter(|(_, a)| {
                a.live.registry_unavailable.load(AtomicOrdering::Acquire)
                    && a.live.offsets().has_failed()
            })
            .map(|(tp, _)| tp.clone())
            .collect()
    }
}

impl RebalanceListener for OffsetTracker {
    fn on_assigned(&self, tps: &[TopicPartition]) {
        self.assign(tps);
    }

    fn on_revoked(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        self.revoke(tps)
    }

    fn reset_uncommitted(&self, tps: &[TopicPartition]) -> Vec<Rewind> {
        self.reset(tps)
    }

    fn has_uncommitted(&self) -> bool {
        self.total_in_flight() > 0 || !self.pending_commits().is_empty()
    }

    fn assigned(&self) -> Vec<TopicPartition> {
        OffsetTracker::assigned(self)
    }
}

const NOT_FAILED: u8 = 0;
const OUTPUT_FAILED: u8 = 1;
const REGISTRY_UNAVAILABLE: u8 = 2;

/// Completion handle of one source record; see [`OffsetTracker::begin`].
pub type Ack = Arc<AckInner>;

/// The shared part of an [`Ack`].
#[derive(Debug)]
pub struct AckInner {
    tracker: Arc<OffsetTracker>,
    live: Arc<Partition>,
    /// [`NOT_FAILED`], [`OUTPUT_FAILED`] or [`REGISTRY_UNAVAILABLE`].
    failure: AtomicU8,
    /// Cancelled when the partition is revoked or reset. It is the partition's token (shared
    /// by all its records' acks), so cancelling it cancels all of the partition's work.
    pub cancel: CancellationToken,
    /// The source record as read, for dead-letter records.
    pub origin: RawRecord,
}

impl AckInner {
    /// Takes the tracker's send gate shared if this record's work is still live (not
    /// cancelled); `None` means: drop the output. See [`OffsetTracker`].
    pub fn live_send_gate(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let guard = self.tracker.send_gate();
        (!self.cancel.is_cancelled()).then_some(guard)
    }

    /// Marks the record as failed for good: its offset will not be committed.
    pub fn fail(&self) {
        // A registry outage already recorded stays the reason: it is why outputs failed.
        let _ = self.failure.compare_exchange(
            NOT_FAILED,
            OUTPUT_FAILED,
            AtomicOrdering::SeqCst,
            AtomicOrdering::SeqCst,
        );
    }

    /// Marks the record as failed for good because the schema registry stayed unavailable:
    /// its offset will not be committed, and the runtime's error names the registry.
    pub fn fail_registry_unavailable(&self) {
        self.failure
            .store(REGISTRY_UNAVAILABLE, AtomicOrdering::SeqCst);
    }

    /// Records in flight and still being processed in this record's partition (what
    /// back-pressure looks at), without the tracker's lock.
    pub fn partition_in_flight_and_processing(&self) -> (usize, usize) {
        self.live.counts()
    }

    /// Counts this record as still being processed (see [`OffsetTracker::processing`]) until
    /// the returned guard is dropped.
    pub fn processing(self: &Arc<Self>) -> ProcessingGuard {
        self.live.processing.fetch_add(1, AtomicOrdering::AcqRel);
        ProcessingGuard { ack: self.clone() }
    }
}

/// Keeps a record counted as being processed; see [`AckInner::processing`].
#[derive(Debug)]
pub struct ProcessingGuard {
    ack: Ack,
}

impl Drop for ProcessingGuard {
    fn drop(&mut self) {
        self.ack
            .live
            .processing
            .fetch_sub(1, AtomicOrdering::AcqRel);
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let failure = self.failure.load(AtomicOrdering::SeqCst);
        if failure == REGISTRY_UNAVAILABLE {
            self.live
                .registry_unavailable
                .store(true, AtomicOrdering::Release);
        }
        let mut offsets = self.live.offsets();
        if failure != NOT_FAILED {
            offsets.fail(self.origin.offset);
        }
        offsets.complete(self.origin.offset);
        drop(offsets);
        self.live.in_flight.fetch_sub(1, AtomicOrdering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue answers like the ordered set it replaced, for in-order and out-of-order
    /// begins, repeated begins and completes, and failures.
    #[test]
    fn partition_offsets_answer_like_an_ordered_set() {
        #[derive(Default)]
        struct Model {
            in_flight: BTreeSet<i64>,
            next: Option<i64>,
            failed: BTreeSet<i64>,
        }
        impl Model {
            fn commit_offset(&self) -> Option<i64> {
                match (self.in_flight.first(), self.failed.first()) {
                    (Some(a), Some(b)) => Some(*a.min(b)),
                    (Some(a), None) | (None, Some(a)) => Some(*a),
                    (None, None) => self.next,
                }
            }
        }
        // A fixed pseudo-random walk (xorshift), mostly in order like a consumer.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut ours, mut model) = (PartitionOffsets::default(), Model::default());
        let mut next_offset = 100i64;
        for step in 0..20_000 {
            match rand(10) {
                0..=3 => {
                    next_offset += 1 + rand(3) as i64; // gaps, as compaction leaves
                    ours.begin(next_offset);
                    model.in_flight.insert(next_offset);
                    model.next = Some(
                        model
                            .next
                            .map_or(next_offset + 1, |n| n.max(next_offset + 1)),
                    );
                }
                4 => {
                    let o = next_offset - rand(50) as i64; // a rewind or a repeat
                    ours.begin(o);
                    model.in_flight.insert(o);
                    model.next = Some(model.next.map_or(o + 1, |n| n.max(o + 1)));
                }
                5..=8 => {
                    let o = next_offset - rand(60) as i64;
                    ours.complete(o);
                    model.in_flight.remove(&o);
                }
                _ => {
                    if rand(50) == 0 {
                        let o = next_offset - rand(20) as i64;
                        ours.fail(o);
                        model.failed.insert(o);
                    }
                }
            }
            assert_eq!(ours.commit_offset(), model.commit_offset(), "step {step}");
            assert_eq!(ours.in_flight(), model.in_flight.len(), "step {step}");
            assert_eq!(ours.has_failed(), !model.failed.is_empty());
        }
    }

    fn raw(offset: i64) -> RawRecord {
        RawRecord {
            topic: "in".into(),
            partition: 0,
            offset,
            key: None,
            value: None,
            headers: Default::default(),
            timestamp: None,
        }
    }

    #[test]
    fn acks_count_against_their_partition_until_a_reset() {
        let tracker = Arc::new(OffsetTracker::default());
        let tp = TopicPartition::new("in", 0);
        assert!(tracker.begin(raw(0)).is_none(), "not assigned yet");
        tracker.assign(std::slice::from_ref(&tp));
        let acks: Vec<_> = (10..13).filter_map(|o| tracker.begin(raw(o))).collect();
        assert_eq!(acks.len(), 3);
        assert_eq!(&*acks[0].origin.topic, "in", "the record keeps its topic");
        let working = acks[1].processing();
        assert_eq!(tracker.in_flight_and_processing(&tp), (3, 1));
        assert_eq!(acks[2].partition_in_flight_and_processing(), (3, 1));
        drop(working);
        let mut acks = acks.into_iter();
        drop(acks.next());
        assert_eq!(tracker.in_flight(&tp), 2);
        assert_eq!(tracker.pending_commits(), vec![(tp.clone(), 11)]);
        // A reset forgets the old work: its acks no longer count when they finish.
        let rewinds = tracker.reset(std::slice::from_ref(&tp));
        assert_eq!(
            rewinds,
            vec![Rewind {
                tp: tp.clone(),
                offset: 10
            }]
        );
        assert_eq!(tracker.total_in_flight(), 0);
        let again = tracker.begin(raw(10)).expect("assigned");
        drop(acks);
        assert_eq!(tracker.in_flight(&tp), 1);
        assert_eq!(tracker.pending_commits(), vec![(tp.clone(), 10)]);
        again.fail();
        drop(again);
        assert_eq!(tracker.failed_partitions(), vec![tp.clone()]);
        assert_eq!(tracker.total_in_flight(), 0);
    }
    /// Work cancelled by a revocation lets go of its acks (which finish their offsets in the
    /// partition's count) on other threads while `revoke` works out what may still be
    /// committed: that offset must never pass the cancelled work, or nobody processes it again
    /// (seen as image-pipeline products whose update was never collected after a rebalance).
    #[test]
    fn revoke_never_commits_past_the_work_it_cancels() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        let tp = TopicPartition::new("in", 0);
        for round in 0..200 {
            let tracker = Arc::new(OffsetTracker::default());
            tracker.assign(std::slice::from_ref(&tp));
            let work: Vec<_> = (0..64)
                .map(|o| {
                    let ack = tracker.begin(raw(o)).expect("assigned");
                    // As the engine's work does: give up (and drop the ack) once cancelled.
                    runtime.spawn(async move {
                        ack.cancel.cancelled().await;
                        drop(ack);
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(2));
            let safe = tracker.revoke(std::slice::from_ref(&tp));
            assert_eq!(safe, vec![(tp.clone(), 0)], "round {round}");
            for handle in work {
                runtime.block_on(handle).expect("work");
            }
        }
    }
}
