//! Idempotent effects under at-least-once delivery.
//!
//! An [`IdempotencyStore`] keeps two sled trees:
//! - `{name}.record-blocks`: record id → the outcome recorded when it was first processed (with
//!   the time it was recorded), up to 16 ids per sled entry (ids differing only in the low 4
//!   bits of their last byte, e.g. 16 consecutive offsets of a [`record_id`]): sled's cost is
//!   per entry, so this doubles check-and-record throughput (layout in `blocks.rs`).
//!   [`check_and_record`](IdempotencyStore::check_and_record) is an atomic compare-and-swap of
//!   the block: the first caller wins, every redelivery sees `false` and can re-emit the
//!   recorded outcome instead of repeating the effect. (The tree was `{name}.records`, one
//!   entry per id, before; such a tree is not read.)
//! - `{name}.positions`: entity key → the newest [`SourcePosition`] applied.
//!   [`advance_position`](IdempotencyStore::advance_position) accepts only a strictly newer
//!   position, so a replayed or redelivered CDC event never overwrites a newer change.
//!
//! Both are also available inside a [`Transaction`](crate::Transaction), so an effect, its
//! idempotency mark and its position bump commit together.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::blocks;
use crate::codec::{decode, encode};
use crate::error::{Result, StateError, show_key};
use crate::position::SourcePosition;
use crate::raw::{Decision, RawStore, StoreStats};
use crate::transaction::{Transaction, TxStore, run_transaction, sealed};

/// The answer of a position guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionCheck {
    /// The position was newer and is now recorded.
    Accepted {
        /// What was recorded before, if anything.
        previous: Option<SourcePosition>,
    },
    /// The position was older than or equal to the recorded one: nothing changed, the event
    /// must not be applied.
    Stale {
        /// The recorded, newer-or-equal position.
        current: SourcePosition,
    },
}

impl PositionCheck {
    /// Whether the update may be applied.
    pub fn is_accepted(&self) -> bool {
        matches!(self, PositionCheck::Accepted { .. })
    }
}

/// An outcome recorded by [`IdempotencyStore::check_and_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<V> {
    /// Wall-clock milliseconds since the Unix epoch when it was recorded.
    pub recorded_at_ms: u64,
    /// The outcome.
    pub outcome: V,
}

/// A compact, order-preserving idempotency id for a Kafka record: the topic, a zero byte, the
/// partition and the offset big-endian. Ids of one partition sort by offset, so sled appends
/// them at the end of the tree instead of scattering them (measurably faster than
/// `format!("{topic}:{partition}:{offset}")`).
///
/// # Example
///
/// ```
/// let a = state::record_id("cdc.products", 0, 9);
/// let b = state::record_id("cdc.products", 0, 10);
/// assert!(a < b);
/// assert_eq!(a.len(), "cdc.products".len() + 1 + 4 + 8);
/// ```
pub fn record_id(topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut id = Vec::with_capacity(topic.len() + 13);
    id.extend_from_slice(topic.as_bytes());
    id.push(0);
    // Flip the sign bit so negative values (never produced by Kafka) still sort first.
    id.extend_from_slice(&((partition as u32) ^ (1 << 31)).to_be_bytes());
    id.extend_from_slice(&((offset as u64) ^ (1 << 63)).to_be_bytes());
    id
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Record ids → recorded outcomes, and entity keys → latest source position.
///
/// # Example
///
/// ```
/// use state::{PositionCheck, SourcePosition};
/// # fn main() -> Result<(), state::StateError> {
/// let dir = state::StateConfig::temporary().open()?;
/// let idem = dir.idempotency::<String>("image-collector")?;
///
/// assert!(idem.check_and_record("cdc:0:17", &"collected".to_string())?);
/// assert!(!idem.check_and_record("cdc:0:17", &"again".to_string())?); // redelivery
/// assert_eq!(idem.recorded("cdc:0:17")?.map(|r| r.outcome), Some("collected".to_string()));
///
/// let key = "mall-1/p-1";
/// assert!(idem.advance_position(key, SourcePosition::new(100, 2))?.is_accepted());
/// assert_eq!(
///     idem.advance_position(key, SourcePosition::new(100, 1))?,
///     PositionCheck::Stale { current: SourcePosition::new(100, 2) },
/// );
/// # Ok(()) }
/// ```
pub struct IdempotencyStore<V> {
    records: Arc<RawStore>,
    positions: Arc<RawStore>,
    _outcome: PhantomData<fn(V) -> V>,
}

impl<V> Clone for IdempotencyStore<V> {
    fn clone(&self) -> Self {
        IdempotencyStore {
            records: self.records.clone(),
            positions: self.positions.clone(),
            _outcome: PhantomData,
        }
    }
}

impl<V> std::fmt::Debug for IdempotencyStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore")
            .field("records", &self.records.name)
            .field("positions", &self.positions.name)
            .finish()
    }
}

impl<V> IdempotencyStore<V>
where
    V: Serialize + DeserializeOwned,
{
    pub(crate) fn new(records: Arc<RawStore>, positions: Arc<RawStore>) -> Self {
        IdempotencyStore {
            records,
            positions,
            _outcome: PhantomData,
        }
    }

    pub(crate) fn records_raw(&self) -> &Arc<RawStore> {
        &self.records
    }

    pub(crate) fn positions_raw(&self) -> &Arc<RawStore> {
        &self.positions
    }

    /// The sled tree (and changelog) name of the records: `{name}.record-blocks`. Its keys
    /// are ids with the low 4 bits of the last byte cleared, its values blocks of up to 16
    /// records, so its changelog records are blocks too (restore with
    /// [`StateDir::restore`](crate::StateDir::restore) as any tree).
    pub fn records_tree(&self) -> &str {
        &self.records.name
    }

    /// The sled tree (and changelog) name of the positions.
    pub fn positions_tree(&self) -> &str {
        &self.positions.name
    }

    pub(crate) fn encode_record(&self, outcome: &V, at_ms: u64) -> Result<Vec<u8>> {
        let body = encode(&self.records.name, "value", outcome)?;
        let mut v = Vec::with_capacity(8 + body.len());
        v.extend_from_slice(&at_ms.to_be_bytes());
        v.extend_from_slice(&body);
        Ok(v)
    }

    fn decode_record(&self, id: &[u8], bytes: &[u8]) -> Result<Recorded<V>> {
        let at = record_time(&self.records.name, id, bytes)?;
        Ok(Recorded {
            recorded_at_ms: at,
            outcome: decode(&self.records.name, "value", id, &bytes[8..])?,
        })
    }

    /// Records `outcome` for `id` if nothing is recorded yet. `true`: first time, apply the
    /// effect; `false`: a duplicate, nothing changed. Atomic against concurrent callers (a
    /// compare-and-swap of the id's block, see [`records_tree`](Self::records_tree)).
    pub fn check_and_record(&self, id: impl AsRef<[u8]>, outcome: &V) -> Result<bool> {
        let v = self.encode_record(outcome, now_ms())?;
        let name = &self.records.name;
        let (key, slot) = blocks::locate(id.as_ref());
        self.records.update(&key, |block| {
            if blocks::find(name, &key, block.unwrap_or_default(), slot)?.is_some() {
                return Ok(Decision::Keep(false));
            }
            let new = blocks::with_entry(name, &key, block, slot, &v)?;
            Ok(Decision::Write(Some(new), true))
        })
    }

    /// [`check_and_record`](Self::check_and_record) for many ids in one sled transaction:
    /// one commit for the whole batch (all recorded or none on error), the answers in input
    /// order. An id repeated within the batch is `true` only the first time.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), state::StateError> {
    /// let dir = state::StateConfig::temporary().open()?;
    /// let idem = dir.idempotency::<u8>("idem")?;
    /// idem.check_and_record("b", &0)?;
    /// let fresh = idem.check_and_record_batch([("a", &1), ("b", &1), ("a", &1)])?;
    /// assert_eq!(fresh, vec![true, false, false]);
    /// # Ok(()) }
    /// ```
    pub fn check_and_record_batch<'v, I, Id>(&self, items: I) -> Result<Vec<bool>>
    where
        I: IntoIterator<Item = (Id, &'v V)>,
        Id: AsRef<[u8]>,
        V: 'v,
    {
        let at = now_ms();
        let encoded: Vec<(Id, Vec<u8>)> = items
            .into_iter()
            .map(|(id, outcome)| Ok((id, self.encode_record(outcome, at)?)))
            .collect::<Result<_>>()?;
        let raws = [self.records.clone()];
        run_transaction(&raws, |tx| {
            encoded
                .iter()
                .map(|(id, v)| tx.record_if_absent(0, id.as_ref(), v))
                .collect::<Result<Vec<bool>>>()
        })
    }

    /// Whether `id` was recorded, without recording it.
    pub fn is_recorded(&self, id: impl AsRef<[u8]>) -> Result<bool> {
        let (key, slot) = blocks::locate(id.as_ref());
        match self.records.get(&key)? {
            Some(b) => Ok(blocks::find(&self.records.name, &key, &b, slot)?.is_some()),
            None => Ok(false),
        }
    }

    /// The outcome recorded for `id`.
    pub fn recorded(&self, id: impl AsRef<[u8]>) -> Result<Option<Recorded<V>>> {
        let id = id.as_ref();
        let (key, slot) = blocks::locate(id);
        let Some(b) = self.records.get(&key)? else {
            return Ok(None);
        };
        match blocks::find(&self.records.name, &key, &b, slot)? {
            Some(record) => self.decode_record(id, record).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the record of `id` (so it would be processed again); returns whether it existed.
    pub fn forget(&self, id: impl AsRef<[u8]>) -> Result<bool> {
        let name = &self.records.name;
        let (key, slot) = blocks::locate(id.as_ref());
        self.records.update(&key, |block| {
            let Some(block) = block else {
                return Ok(Decision::Keep(false));
            };
            let (rest, removed) = blocks::retain(name, &key, block, |s, _| Ok(s != slot))?;
            Ok(if removed == 0 {
                Decision::Keep(false)
            } else {
                Decision::Write(rest, true)
            })
        })
    }

    /// The newest position applied for `key`.
    pub fn position(&self, key: impl AsRef<[u8]>) -> Result<Option<SourcePosition>> {
        let key = key.as_ref();
        match self.positions.get(key)? {
            Some(b) => parse_position(&self.positions.name, key, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Records `position` for `key` if it is strictly newer than the recorded one; an older or
    /// equal one is [`PositionCheck::Stale`] and changes nothing. Atomic (compare-and-swap loop).
    pub fn advance_position(
        &self,
        key: impl AsRef<[u8]>,
        position: SourcePosition,
    ) -> Result<PositionCheck> {
        let key = key.as_ref();
        let new = position.to_bytes();
        self.positions.update(key, |current| {
            let check = check_position(&self.positions.name, key, current, position)?;
            Ok(if check.is_accepted() {
                Decision::Write(Some(new.to_vec()), check)
            } else {
                Decision::Keep(check)
            })
        })
    }

    /// Removes the position of `key` (e.g. long after the entity was deleted).
    pub fn forget_position(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.positions.remove(key.as_ref())?.is_some())
    }

    /// Expires records recorded before `cutoff_ms` (Unix milliseconds): once no redelivery can
    /// reach that far back (past the topic's retention), they are obsolete. Returns how many.
    /// A block changed concurrently since it was read is left alone until the next call.
    pub fn expire_records_before(&self, cutoff_ms: u64) -> Result<usize> {
        let name = &self.records.name;
        let mut expired = 0;
        for kv in self.records.iter() {
            let (key, block) = kv?;
            let (rest, removed) = blocks::retain(name, &key, &block, |slot, record| {
                Ok(record_time(name, &blocks::id_of(&key, slot), record)? >= cutoff_ms)
            })?;
            if removed > 0
                && self
                    .records
                    .compare_and_swap(&key, Some(&block), rest)?
                    .is_ok()
            {
                expired += removed;
            }
        }
        Ok(expired)
    }

    /// Removes the positions for which `keep` returns false; returns how many.
    pub fn retain_positions(
        &self,
        mut keep: impl FnMut(&[u8], SourcePosition) -> bool,
    ) -> Result<usize> {
        let name = self.positions.name.clone();
        self.positions
            .retain_raw(|k, v| Ok(keep(k, parse_position(&name, k, v)?)))
    }

    /// Number of recorded ids (scans; a block that fails to parse counts its readable ids).
    pub fn records_len(&self) -> usize {
        let name = &self.records.name;
        self.records
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(key, block)| {
                blocks::entries(name, &key, &block)
                    .take_while(|e| e.is_ok())
                    .count()
            })
            .sum()
    }

    /// Number of keys with a position (scans).
    pub fn positions_len(&self) -> usize {
        self.positions.len()
    }

    /// Recorded ids plus positions, and the bytes both trees hold (keys and values as
    /// stored), for gauges (scans).
    pub fn stats(&self) -> Result<StoreStats> {
        let a = self.records.stats()?;
        let b = self.positions.stats()?;
        Ok(StoreStats {
            keys: self.records_len() as u64 + b.keys,
            bytes: a.bytes + b.bytes,
        })
    }
}

fn record_time(store: &str, id: &[u8], bytes: &[u8]) -> Result<u64> {
    let at: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StateError::Corrupt {
            store: store.to_owned(),
            key: show_key(id),
            detail: format!("record of {} bytes, expected at least 8", bytes.len()),
        })?;
    Ok(u64::from_be_bytes(at))
}

pub(crate) fn parse_position(store: &str, key: &[u8], bytes: &[u8]) -> Result<SourcePosition> {
    SourcePosition::from_bytes(bytes).ok_or_else(|| StateError::Corrupt {
        store: store.to_owned(),
        key: show_key(key),
        detail: format!("position of {} bytes, expected 16", bytes.len()),
    })
}

pub(crate) fn check_position(
    store: &str,
    key: &[u8],
    current: Option<&[u8]>,
    new: SourcePosition,
) -> Result<PositionCheck> {
    match current {
        None => Ok(PositionCheck::Accepted { previous: None }),
        Some(b) => {
            let cur = parse_position(store, key, b)?;
            Ok(if new > cur {
                PositionCheck::Accepted {
                    previous: Some(cur),
                }
            } else {
                PositionCheck::Stale { current: cur }
            })
        }
    }
}

impl<V> sealed::Sealed for IdempotencyStore<V>
where
    V: Serialize + DeserializeOwned,
{
    fn tx_raws(&self) -> Vec<Arc<RawStore>> {
        vec![self.records_raw().clone(), self.positions_raw().clone()]
    }
}
impl<V> TxStore for IdempotencyStore<V> where V: Serialize + DeserializeOwned {}

/// The idempotency store's operations inside a [`StateDir::transaction`](crate::StateDir::transaction).
impl Transaction<'_> {
    /// [`IdempotencyStore::check_and_record`] inside the transaction.
    pub fn check_and_record<V>(
        &mut self,
        store: &IdempotencyStore<V>,
        id: impl AsRef<[u8]>,
        outcome: &V,
    ) -> Result<bool>
    where
        V: Serialize + DeserializeOwned,
    {
        let idx = self.index(store.records_raw())?;
        let v = store.encode_record(outcome, now_ms())?;
        self.record_if_absent(idx, id.as_ref(), &v)
    }

    /// [`IdempotencyStore::position`] inside the transaction.
    pub fn position<V>(
        &mut self,
        store: &IdempotencyStore<V>,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<SourcePosition>>
    where
        V: Serialize + DeserializeOwned,
    {
        let idx = self.index(store.positions_raw())?;
        let key = key.as_ref();
        match self.raw_get(idx, key)? {
            Some(b) => parse_position(store.positions_tree(), key, &b).map(Some),
            None => Ok(None),
        }
    }

    /// [`IdempotencyStore::advance_position`] inside the transaction.
    pub fn advance_position<V>(
        &mut self,
        store: &IdempotencyStore<V>,
        key: impl AsRef<[u8]>,
        position: SourcePosition,
    ) -> Result<PositionCheck>
    where
        V: Serialize + DeserializeOwned,
    {
        let idx = self.index(store.positions_raw())?;
        let key = key.as_ref();
        let current = self.raw_get(idx, key)?;
        let check = check_position(store.positions_tree(), key, current.as_deref(), position)?;
        if check.is_accepted() {
            self.raw_insert(idx, key.to_vec(), position.to_bytes().to_vec())?;
        }
        Ok(check)
    }
}
