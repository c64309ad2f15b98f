//! Joins: stream–table, table–table and stream–stream (windowed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::processor::ProcessError;
use crate::{Record, Value};

use super::stored::{StoredValue, key_bytes, time_bytes, time_from_bytes};
use super::table::lookup;
use super::window::{JoinWindows, StreamTimeSlot, advance_stream_time};
use super::{OperatorContext, StatefulOperator, require_key, require_timestamp, state};

/// Combines a left and a right value into the join's value; a side is `None` where a left or
/// outer join has nothing to pair.
pub type Joiner = Arc<dyn Fn(Option<&Value>, Option<&Value>) -> Value + Send + Sync>;

/// Which pairs a join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Only keys present on both sides.
    Inner,
    /// Every left record (table: row), with the right side when there is one.
    Left,
    /// Every row of either side (table–table and stream–stream only).
    Outer,
}

impl JoinKind {
    fn emits(self, left: bool, right: bool) -> bool {
        match self {
            JoinKind::Inner => left && right,
            JoinKind::Left => left,
            JoinKind::Outer => left || right,
        }
    }
}

/// A stream record joined to the current row of its key in a table's store. Stream records
/// without a key or a value are skipped (as in Kafka Streams); the table's later updates
/// never trigger output.
pub(crate) struct StreamTableJoin {
    pub(crate) table_store: String,
    pub(crate) kind: JoinKind,
    pub(crate) joiner: Joiner,
}

impl StatefulOperator for StreamTableJoin {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let (Some(key), Some(value)) = (&record.key, &record.value) else {
            return Ok(());
        };
        let row = lookup(ctx, &self.table_store, key)?;
        if self.kind.emits(true, row.is_some()) {
            let joined = (self.joiner)(Some(value), row.as_ref());
            ctx.forward(record.with_value(Some(joined)));
        }
        Ok(())
    }
}

/// One side of a table–table join: when a row of this side changes, looks up the other
/// side's row and forwards the joined row (or a tombstone when the join no longer holds).
/// Both sides' tables are materialized in the stores named here.
pub(crate) struct TableTableJoin {
    pub(crate) other_store: String,
    /// Whether this side is the join's left side.
    pub(crate) this_is_left: bool,
    pub(crate) kind: JoinKind,
    pub(crate) joiner: Joiner,
}

impl StatefulOperator for TableTableJoin {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = require_key(&record, "table join")?.clone();
        let other = lookup(ctx, &self.other_store, &key)?;
        let this = record.value.clone();
        let (left, right) = if self.this_is_left {
            (this.as_ref(), other.as_ref())
        } else {
            (other.as_ref(), this.as_ref())
        };
        let joined = self
            .kind
            .emits(left.is_some(), right.is_some())
            .then(|| (self.joiner)(left, right));
        ctx.forward(record.with_value(joined));
        Ok(())
    }
}

/// A buffered record of a stream–stream join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Buffered {
    key: StoredValue,
    value: StoredValue,
    /// Whether it found a partner (left and outer joins emit the unpaired ones at close).
    joined: bool,
}

/// A join buffer's key: the key's bytes, the record's timestamp, a sequence number.
type BufferKey = (Vec<u8>, [u8; 8], [u8; 8]);
fn buffer_meta() -> BufferKey {
    (Vec::new(), time_bytes(i64::MIN), [0; 8])
}

/// One side of a windowed stream–stream join: buffers its records, pairs each with the other
/// side's buffered records of the same key within the window, and (left and outer joins) emits
/// the records that found no partner once the window closed.
pub(crate) struct StreamStreamJoin {
    pub(crate) this_store: String,
    pub(crate) other_store: String,
    pub(crate) this_is_left: bool,
    pub(crate) kind: JoinKind,
    pub(crate) windows: JoinWindows,
    pub(crate) joiner: Joiner,
    /// Tells apart records of one key with the same timestamp: unique within the process,
    /// and increasing across restarts (it starts at the wall clock's nanoseconds).
    pub(crate) sequence: AtomicU64,
    /// Per task, the stream time of the last scan for closed windows.
    closed_at: Mutex<HashMap<Option<crate::TaskId>, i64>>,
}

impl StreamStreamJoin {
    pub(crate) fn new(
        this_store: String,
        other_store: String,
        this_is_left: bool,
        kind: JoinKind,
        windows: JoinWindows,
        joiner: Joiner,
    ) -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        StreamStreamJoin {
            this_store,
            other_store,
            this_is_left,
            kind,
            windows,
            joiner,
            sequence: AtomicU64::new(start),
            closed_at: Mutex::new(HashMap::new()),
        }
    }

    /// How far before and after this side's record the other side's may be.
    fn reach(&self) -> (i64, i64) {
        let (before, after) = (self.windows.before_ms(), self.windows.after_ms());
        if self.this_is_left {
            (before, after)
        } else {
            (after, before)
        }
    }

    fn pair(&self, this: &Value, other: &Value) -> Value {
        if self.this_is_left {
            (self.joiner)(Some(this), Some(other))
        } else {
            (self.joiner)(Some(other), Some(this))
        }
    }

    /// Whether this side's unpaired records are emitted at close.
    fn emits_unpaired(&self) -> bool {
        match self.kind {
            JoinKind::Inner => false,
            JoinKind::Left => self.this_is_left,
            JoinKind::Outer => true,
        }
    }
}

/// Stream time for a join side lives in its own buffer's reserved slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum JoinSlot {
    StreamTime(i64),
    Record(Buffered),
}

impl StatefulOperator for StreamStreamJoin {
    fn process(&self, record: Record, ctx: &mut OperatorContext) -> Result<(), ProcessError> {
        let key = require_key(&record, "stream join")?.clone();
        let Some(value) = record.value.clone() else {
            return Ok(());
        };
        let ts = require_timestamp(&record, "stream join")?;
        let this = ctx.store::<BufferKey, JoinSlot>(&self.this_store)?;
        let other = ctx.store::<BufferKey, JoinSlot>(&self.other_store)?;
        let stream_time = advance_stream_time(ctx, &self.this_store, &this, &buffer_meta(), ts)?;
        let (before, after) = self.reach();
        let grace = self.windows.grace_ms();
        // Too late to pair with anything the other side still buffers.
        if ts.saturating_add(before.max(after)).saturating_add(grace) < stream_time {
            ctx.count_late();
            return Ok(());
        }
        let kb = key_bytes(&key);
        let mut paired = false;
        let from = (kb.clone(), time_bytes(ts.saturating_sub(before)), [0; 8]);
        let mut partners = Vec::new();
        for entry in state(other.iter_from(&from))? {
            let (slot_key, slot) = state(entry)?;
            if slot_key.0 != kb || time_from_bytes(slot_key.1) > ts.saturating_add(after) {
                break;
            }
            if let JoinSlot::Record(buffered) = slot {
                partners.push((slot_key, buffered));
            }
        }
        for (slot_key, mut buffered) in partners {
            paired = true;
            let other_ts = time_from_bytes(slot_key.1);
            let mut out = record.clone();
            out.value = Some(self.pair(&value, &Value::from(buffered.value.clone())));
            out.timestamp = Some(ts.max(other_ts));
            ctx.forward(out);
            if !buffered.joined {
                buffered.joined = true;
                state(other.put(&slot_key, &JoinSlot::Record(buffered)))?;
            }
        }
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        state(this.put(
            &(kb, time_bytes(ts), seq.to_be_bytes()),
            &JoinSlot::Record(Buffered {
                key: StoredValue::from(&key),
                value: StoredValue::from(&value),
                joined: paired,
            }),
        ))?;
        self.close_windows(ctx, &this, &record, stream_time)
    }
}

impl StreamTimeSlot for JoinSlot {
    fn stream_time(&self) -> Option<i64> {
        match self {
            JoinSlot::StreamTime(t) => Some(*t),
            JoinSlot::Record(_) => None,
        }
    }
    fn of_stream_time(time: i64) -> Self {
        JoinSlot::StreamTime(time)
    }
}

impl StreamStreamJoin {
    /// Drops this side's records whose window closed (emitting the unpaired ones for left
    /// and outer joins). A scan of this side's buffer, made when stream time moved.
    fn close_windows(
        &self,
        ctx: &mut OperatorContext,
        this: &state::KvStore<BufferKey, JoinSlot>,
        record: &Record,
        stream_time: i64,
    ) -> Result<(), ProcessError> {
        let (before, after) = self.reach();
        {
            // A scan of the whole buffer: at most once per half window of stream time.
            let mut last = self
                .closed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = last.entry(ctx.task_id()).or_insert(stream_time);
            if stream_time.saturating_sub(*at) < ((before + after) / 2).max(1) {
                return Ok(());
            }
            *at = stream_time;
        }
        let horizon = stream_time
            .saturating_sub(after)
            .saturating_sub(self.windows.grace_ms());
        let mut closed = Vec::new();
        for entry in this.iter() {
            let (slot_key, slot) = state(entry)?;
            if let JoinSlot::Record(buffered) = slot
                && time_from_bytes(slot_key.1) < horizon
            {
                closed.push((slot_key, buffered));
            }
        }
        for (slot_key, buffered) in closed {
            state(this.delete(&slot_key))?;
            if self.emits_unpaired() && !buffered.joined {
                let value = Value::from(buffered.value);
                let joined = if self.this_is_left {
                    (self.joiner)(Some(&value), None)
                } else {
                    (self.joiner)(None, Some(&value))
                };
                let mut out = record.clone();
                out.key = Some(Value::from(buffered.key));
                out.value = Some(joined);
                out.timestamp = Some(time_from_bytes(slot_key.1));
                ctx.forward(out);
            }
        }
        Ok(())
    }
}
