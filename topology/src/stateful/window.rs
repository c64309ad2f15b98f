//! Windows on stream time: tumbling and hopping ([`TimeWindows`]), sessions
//! ([`SessionWindows`]), join windows ([`JoinWindows`]), and the final-result suppression.
//!
//! Stream time is per task and operator: the largest timestamp the operator has seen, kept
//! in its store beside its windows (so a task moved to another instance keeps it). A window
//! closes when stream time reaches its end plus the grace period; a record for closed
//! windows only is late ([`LatePolicy`]). Windows are dropped from the store once their
//! start is `retention` behind stream time (by default size + grace).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::processor::ProcessError;
use crate::task::TaskId;
use crate::{Record, Value};

use super::aggregate::{Combine, Initializer, Merger};
use super::stored::{StoredValue, key_bytes, time_bytes, time_from_bytes};
use super::{OperatorContext, StatefulOperator, require_key, require_timestamp, state};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What happens to a record that arrives for windows that already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// To the dead-letter topic, with a message saying how late it was.
    #[default]
    DeadLetter,
    /// Dropped, and counted in `topology_late_records_total{node}`.
    Drop,
}

/// One window: `[start, end)` for time windows, `[start, end]` for sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// First millisecond in the window.
    pub start: i64,
    /// End (exclusive for time windows, the last record's timestamp for sessions).
    pub end: i64,
}

impl Window {
    /// The key a windowed aggregate forwards: `{"key": <key as JSON>, "start": ms, "end": ms}`
    /// (Kafka Streams' `Windowed<K>`); read it back with [`windowed_key`].
    pub fn key_for(&self, key: &Value) -> Value {
        Value::Json(serde_json::json!({"key": key.to_json(), "start": self.start, "end": self.end}))
    }
}

/// The original key and the window of a windowed aggregate's output key.
///
/// # Example
/// ```
/// use topology::Value;
/// use topology::stateful::{Window, windowed_key};
/// let w = Window { start: 60_000, end: 120_000 };
/// let key = w.key_for(&Value::from("sensor-1"));
/// assert_eq!(windowed_key(&key), Some((Value::Json("sensor-1".into()), w)));
/// ```
pub fn windowed_key(key: &Value) -> Option<(Value, Window)> {
    let owned;
    let json = match key {
        Value::Json(json) => json,
        other => {
            owned = other.to_json();
            &owned
        }
    };
    let start = json.get("start")?.as_i64()?;
    let end = json.get("end")?.as_i64()?;
    Some((Value::Json(json.get("key")?.clone()), Window { start, end }))
}

/// Tumbling (`advance == size`) or hopping windows, aligned to the epoch.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use topology::stateful::TimeWindows;
/// let hopping = TimeWindows::hopping(Duration::from_secs(60), Duration::from_secs(30));
/// let starts: Vec<i64> = hopping.windows_for(75_000).iter().map(|w| w.start).collect();
/// assert_eq!(starts, [30_000, 60_000]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    /// Window length.
    pub size: Duration,
    /// Distance between window starts (= size: tumbling).
    pub advance: Duration,
    /// How long after its end a window still accepts records (on stream time).
    pub grace: Duration,
    /// How long windows stay in the store, measured from their start; at least size + grace.
    pub retention: Option<Duration>,
    /// What happens to late records.
    pub late: LatePolicy,
}

impl TimeWindows {
    /// Tumbling windows of `size`, no grace.
    pub fn tumbling(size: Duration) -> Self {
        TimeWindows::hopping(size, size)
    }

    /// Hopping windows of `size` starting every `advance`, no grace.
    pub fn hopping(size: Duration, advance: Duration) -> Self {
        TimeWindows {
            size,
            advance: if advance.is_zero() { size } else { advance },
            grace: Duration::ZERO,
            retention: None,
            late: LatePolicy::DeadLetter,
        }
    }

    /// Accept records up to `grace` after a window's end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Keep windows in the store for `retention` from their start (for queries).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// What happens to late records.
    pub fn late_records(mut self, policy: LatePolicy) -> Self {
        self.late = policy;
        self
    }

    fn retention_ms(&self) -> i64 {
        let minimum = millis(self.size).saturating_add(millis(self.grace));
        self.retention.map_or(minimum, |r| millis(r).max(minimum))
    }

    /// The windows containing `timestamp`, earliest first (none start before 0).
    pub fn windows_for(&self, timestamp: i64) -> Vec<Window> {
        let (size, advance) = (millis(self.size).max(1), millis(self.advance).max(1));
        let last_start = timestamp - timestamp.rem_euclid(advance);
        let mut start = (last_start - size + advance).max(0);
        // Align the first start to the advance grid.
        start += (advance - start.rem_euclid(advance)) % advance;
        let mut windows = Vec::new();
        while start <= last_start {
            windows.push(Window {
                start,
                end: start + size,
            });
            start += advance;
        }
        windows
    }
}

/// Session windows: records of a key less than `gap` apart belong to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    /// Inactivity gap.
    pub gap: Duration,
    /// How long after its end a session still accepts records.
    pub grace: Duration,
    /// What happens to late records.
    pub late: LatePolicy,
}

impl SessionWindows {
    /// Sessions closed by `gap` of inactivity, no grace.
    pub fn with_inactivity_gap(gap: Duration) -> Self {
        SessionWindows {
            gap,
            grace: Duration::ZERO,
            late: LatePolicy::DeadLetter,
        }
    }

    /// Accept records up to `grace` after a session's end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// What happens to late records.
    pub fn late_records(mut self, policy: LatePolicy) -> Self {
        self.late = policy;
        self
    }
}

/// The window of a stream–stream join: a record joins the other side's records of the same
/// key whose timestamps are at most `before` earlier and `after` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindows {
    /// How much earlier the other record may be.
    pub before: Duration,
    /// How much later the other record may be.
    pub after: Duration,
    /// How long after the window a record is still buffered (late records are not joined).
    pub grace: Duration,
}

impl JoinWindows {
    /// Records at most `difference` apart, either way, no grace.
    pub fn of_time_difference(difference: Duration) -> Self {
        JoinWindows {
            before: difference,
            after: difference,
            grace: Duration::ZERO,
        }
    }

    /// Accept records up to `grace` after the window.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub(crate) fn before_ms(&self) -> i64 {
        millis(self.before)
    }

    pub(crate) fn after_ms(&self) -> i64 {
        millis(self.after)
    }

    pub(crate) fn grace_ms(&self) -> i64 {
        millis(self.grace)
    }
}

/// What window stores hold: the operator's stream time under one reserved key, windows
/// under the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Slot {
    StreamTime(i64),
    Entry {
        key: StoredValue,
        value: StoredValue,
        end: i64,
        timestamp: i64,
    },
}

/// A time-window store's key: window start first, so expiry is a scan from the beginning.
type TimeKey = ([u8; 8], Vec<u8>);
/// The stream-time slot of a time-window store: a start no window has.
fn time_meta() -> TimeKey {
    (time_bytes(i64::MIN), Vec::new())
}

/// How far a task's stream time may run ahead of the copy in its store. Kafka Streams keeps
/// stream time in the committed offsets' metadata, as of the last commit; here it is written
/// to the operator's store (and so its changelog) at most once per second of stream time, so
/// a task restored elsewhere starts at most that far behind instead of paying a write per
/// record.
const PERSIST_STREAM_TIME_EVERY_MS: i64 = 1_000;

/// A store slot that can hold an operator's stream time.
pub(crate) trait StreamTimeSlot: Serialize + serde::de::DeserializeOwned {
    fn stream_time(&self) -> Option<i64>;
    fn of_stream_time(time: i64) -> Self;
}

impl StreamTimeSlot for Slot {
    fn stream_time(&self) -> Option<i64> {
        match self {
            Slot::StreamTime(t) => Some(*t),
            Slot::Entry { .. } => None,
        }
    }
    fn of_stream_time(time: i64) -> Self {
        Slot::StreamTime(time)
    }
}

/// Advances the stream time of the operator owning `store` (named `name`, its slot at
/// `meta`) to `timestamp` when later, and returns it: from the task's clock, read from the
/// store the first time the task sees it.
pub(crate) fn advance_stream_time<K, S>(
    ctx: &OperatorContext,
    name: &str,
    store: &state::KvStore<K, S>,
    meta: &K,
    timestamp: i64,
) -> Result<i64, ProcessError>
where
    K: Serialize + serde::de::DeserializeOwned,
    S: StreamTimeSlot,
{
    let stored = || -> Result<i64, ProcessError> {
        Ok(state(store.get(meta))?
            .and_then(|s| s.stream_time())
            .unwrap_or(i64::MIN))
    };
    let Some(clocks) = ctx.clocks() else {
        // No task (an operator called directly): the store is the clock.
        let current = stored()?;
        if timestamp > current {
            state(store.put(meta, &S::of_stream_time(timestamp)))?;
        }
        return Ok(current.max(timestamp));
    };
    let mut clocks = clocks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let clock = match clocks.get_mut(name) {
        Some(clock) => clock,
        None => {
            let time = stored()?;
            clocks
                .entry(name.to_owned())
                .or_insert(crate::task::StreamClock {
                    time,
                    persisted: time,
                    expired_to: i64::MIN,
                })
        }
    };
    clock.time = clock.time.max(timestamp);
    if clock.time.saturating_sub(clock.persisted) >= PERSIST_STREAM_TIME_EVERY_MS
        || (clock.persisted == i64::MIN && clock.time > i64::MIN)
    {
        state(store.put(meta, &S::of_stream_time(clock.time)))?;
        clock.persisted = clock.time;
    }
    Ok(clock.time)
}

/// Whether the expiry horizon moved past `horizon` since the last scan of `name`'s store
/// (and records that it did): windows start on a grid, so a scan is due once per step of it.
fn expiry_due(ctx: &OperatorContext, name: &str, horizon: i64) -> bool {
    let Some(clocks) = ctx.clocks() else {
        return true;
    };
    let mut clocks = clocks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match clocks.get_mut(name) {
        Some(clock) if clock.expired_to >= horizon => false,
        Some(clock) => {
            clock.expired_to = horizon;
            true
        }
        None => true,
    }
}

/// A late record: dead-lettered or dropped and counted.
fn late(
    policy: LatePolicy,
    ctx: &mut OperatorContext,
    record: &Record,
    timestamp: i64,
    stream_time: i64,
) -> Result<(), ProcessError> {
    match policy {
        LatePolicy::Drop => {
            ctx.count_late();
            Ok(())
        }
        LatePolicy::DeadLetter => Err(ProcessError::permanent(format!(
            "late record: timestamp {timestamp} is for windows closed at stream time {stream_time} ({}-{}@{})",
            record.topic, record.partition, record.offset
        ))),
    }
}

/// `count`/`reduce`/`aggregate` over tumbling or hopping windows.
pub(crate) struct WindowAggregate {
    pub(crate) store: String,
    pub(crate) windows: TimeWindows,
    pub(crate) combine: Combine,
}

impl StatefulOperator for WindowAggregate {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = require_key(&record, "windowed aggregate")?.clone();
        let Some(value) = record.value.clone() else {
            return Ok(());
        };
        let ts = require_timestamp(&record, "windowed aggregate")?;
        let windows = ctx.cached::<TimeKey, Slot>(&self.store)?;
        let store = windows.store();
        let stream_time = advance_stream_time(ctx, &self.store, store, &time_meta(), ts)?;
        let close = stream_time.saturating_sub(millis(self.windows.grace));
        let kb = key_bytes(&key);
        let open: Vec<Window> = self
            .windows
            .windows_for(ts)
            .into_iter()
            .filter(|w| w.end > close)
            .collect();
        if open.is_empty() {
            return late(self.windows.late, ctx, &record, ts, stream_time);
        }
        let last = open.len() - 1;
        let mut record = Some(record);
        for (i, window) in open.into_iter().enumerate() {
            let slot_key = (time_bytes(window.start), kb.clone());
            let current = match windows.get(&slot_key)? {
                Some(Slot::Entry { value, .. }) => Some(Value::from(value)),
                _ => None,
            };
            let next = self.combine.apply(&key, &value, current);
            windows.set(
                slot_key,
                Some(Slot::Entry {
                    key: StoredValue::from(&key),
                    value: StoredValue::from(&next),
                    end: window.end,
                    timestamp: ts,
                }),
            )?;
            // The record itself goes out for its last window, a copy for the others.
            let mut out = if i == last {
                record.take()
            } else {
                record.clone()
            }
            .ok_or_else(|| ProcessError::permanent("windowed aggregate: no record"))?;
            out.key = Some(window.key_for(&key));
            out.value = Some(next);
            ctx.forward(out);
        }
        // Expire windows whose start is `retention` behind stream time: once per step of the
        // windows' grid (their starts are multiples of the advance).
        let horizon = stream_time.saturating_sub(self.windows.retention_ms());
        let advance = millis(self.windows.advance).max(1);
        if !expiry_due(ctx, &self.store, horizon - horizon.rem_euclid(advance)) {
            return Ok(());
        }
        let mut expired = Vec::new();
        for entry in state(store.iter_from(&time_meta()))? {
            let (slot_key, slot) = state(entry)?;
            if matches!(slot, Slot::StreamTime(_)) {
                continue;
            }
            if time_from_bytes(slot_key.0) > horizon {
                break;
            }
            expired.push(slot_key);
        }
        for slot_key in expired {
            windows.set(slot_key, None)?;
        }
        Ok(())
    }
}

/// A session store's key: the key's bytes, then the session's end and start, so a key's
/// sessions are contiguous and ordered by time.
type SessionKey = (Vec<u8>, [u8; 8], [u8; 8]);
fn session_meta() -> SessionKey {
    (Vec::new(), time_bytes(i64::MIN), time_bytes(i64::MIN))
}

/// `count`/`aggregate` over session windows: a record starts a session or extends (and
/// merges) the sessions it falls within `gap` of; merged-away sessions are forwarded as
/// tombstones, the new session as its aggregate.
pub(crate) struct SessionAggregate {
    pub(crate) store: String,
    pub(crate) windows: SessionWindows,
    pub(crate) init: Initializer,
    pub(crate) add: super::Aggregator,
    pub(crate) merge: Merger,
    /// Per task, the stream time of the last expiry scan.
    pub(crate) expired_at: Mutex<HashMap<Option<TaskId>, i64>>,
}

impl StatefulOperator for SessionAggregate {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = require_key(&record, "session aggregate")?.clone();
        let Some(value) = record.value.clone() else {
            return Ok(());
        };
        let ts = require_timestamp(&record, "session aggregate")?;
        let store = ctx.store::<SessionKey, Slot>(&self.store)?;
        let stream_time = advance_stream_time(ctx, &self.store, &store, &session_meta(), ts)?;
        let (gap, grace) = (millis(self.windows.gap), millis(self.windows.grace));
        let close = stream_time.saturating_sub(grace);
        let kb = key_bytes(&key);
        let mut merged = Window { start: ts, end: ts };
        let mut aggregate = (self.add)(&key, &value, (self.init)());
        let mut absorbed = Vec::new();
        let from = (
            kb.clone(),
            time_bytes(ts.saturating_sub(gap)),
            time_bytes(i64::MIN),
        );
        for entry in state(store.iter_from(&from))? {
            let (slot_key, slot) = state(entry)?;
            if slot_key.0 != kb {
                break;
            }
            let start = time_from_bytes(slot_key.2);
            if start > ts.saturating_add(gap) {
                break;
            }
            if let Slot::Entry {
                value: agg, end, ..
            } = slot
            {
                merged.start = merged.start.min(start);
                merged.end = merged.end.max(end);
                aggregate = (self.merge)(&key, Value::from(agg), aggregate);
                absorbed.push((slot_key, Window { start, end }));
            }
        }
        if merged.end < close {
            return late(self.windows.late, ctx, &record, ts, stream_time);
        }
        for (slot_key, window) in absorbed {
            state(store.delete(&slot_key))?;
            let mut gone = record.clone();
            gone.key = Some(window.key_for(&key));
            gone.value = None;
            ctx.forward(gone);
        }
        state(store.put(
            &(kb, time_bytes(merged.end), time_bytes(merged.start)),
            &Slot::Entry {
                key: StoredValue::from(&key),
                value: StoredValue::from(&aggregate),
                end: merged.end,
                timestamp: ts,
            },
        ))?;
        let mut out = record;
        out.key = Some(merged.key_for(&key));
        out.value = Some(aggregate);
        ctx.forward(out);
        self.expire(ctx, &store, stream_time, gap.saturating_add(grace))
    }
}

impl SessionAggregate {
    /// Drops sessions that ended `retention` before stream time: a whole-store scan, so
    /// at most once per `retention` of stream time per task.
    fn expire(
        &self,
        ctx: &OperatorContext,
        store: &state::KvStore<SessionKey, Slot>,
        stream_time: i64,
        retention: i64,
    ) -> Result<(), ProcessError> {
        let task = ctx.task_id();
        {
            let mut last = self
                .expired_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = last.entry(task).or_insert(stream_time);
            if stream_time.saturating_sub(*at) < retention.max(1) {
                return Ok(());
            }
            *at = stream_time;
        }
        let horizon = stream_time.saturating_sub(retention);
        state(store.retain(|_, slot| match slot {
            Slot::StreamTime(_) => true,
            Slot::Entry { end, .. } => *end >= horizon,
        }))?;
        Ok(())
    }
}

/// A suppression buffer's key: window end first (the order windows close in), then the key
/// and the start.
type BufferKey = ([u8; 8], Vec<u8>, [u8; 8]);
fn buffer_meta() -> BufferKey {
    (time_bytes(i64::MIN), Vec::new(), time_bytes(i64::MIN))
}

/// `suppress(until_window_closes)`: holds each window's latest result and forwards it once,
/// when stream time passes the window's end plus the grace period.
pub(crate) struct SuppressUntilClosed {
    pub(crate) store: String,
    pub(crate) grace: Duration,
}

impl StatefulOperator for SuppressUntilClosed {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let windowed = require_key(&record, "suppress")?.clone();
        let (key, window) = windowed_key(&windowed).ok_or_else(|| {
            ProcessError::permanent(format!(
                "suppress: the key is not a windowed key ({}-{}@{})",
                record.topic, record.partition, record.offset
            ))
        })?;
        let ts = require_timestamp(&record, "suppress")?;
        let store = ctx.store::<BufferKey, Slot>(&self.store)?;
        let stream_time = advance_stream_time(ctx, &self.store, &store, &buffer_meta(), ts)?;
        let slot_key = (
            time_bytes(window.end),
            key_bytes(&key),
            time_bytes(window.start),
        );
        match &record.value {
            Some(value) => {
                state(store.put(
                    &slot_key,
                    &Slot::Entry {
                        key: StoredValue::from(&windowed),
                        value: StoredValue::from(value),
                        end: window.end,
                        timestamp: ts,
                    },
                ))?;
            }
            // A session merged away: nothing to emit for it.
            None => {
                state(store.delete(&slot_key))?;
            }
        }
        let close = stream_time.saturating_sub(millis(self.grace));
        let mut closed = Vec::new();
        for entry in state(store.iter_from(&buffer_meta()))? {
            let (slot_key, slot) = state(entry)?;
            match slot {
                Slot::StreamTime(_) => continue,
                Slot::Entry {
                    key,
                    value,
                    end,
                    timestamp,
                } => {
                    // Time windows end exclusively, sessions inclusively; both close once
                    // stream time minus grace reaches the end.
                    if end > close {
                        break;
                    }
                    closed.push((slot_key, key, value, timestamp));
                }
            }
        }
        for (slot_key, key, value, timestamp) in closed {
            state(store.delete(&slot_key))?;
            let mut out = record.clone();
            out.key = Some(Value::from(key));
            out.value = Some(Value::from(value));
            out.timestamp = Some(timestamp);
            ctx.forward(out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_hold_each_timestamp_once_and_hopping_ones_several_times() {
        let tumbling = TimeWindows::tumbling(Duration::from_secs(60));
        assert_eq!(
            tumbling.windows_for(59_999),
            [Window {
                start: 0,
                end: 60_000
            }]
        );
        assert_eq!(tumbling.windows_for(60_000)[0].start, 60_000);
        let hopping = TimeWindows::hopping(Duration::from_secs(60), Duration::from_secs(20));
        let starts: Vec<i64> = hopping
            .windows_for(65_000)
            .iter()
            .map(|w| w.start)
            .collect();
        assert_eq!(starts, [20_000, 40_000, 60_000]);
        let early: Vec<i64> = hopping.windows_for(5_000).iter().map(|w| w.start).collect();
        assert_eq!(early, [0]);
    }
}
