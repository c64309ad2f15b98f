//! Changelog mode: every committed write to a store is handed to a [`ChangelogSink`], so a
//! copy of the store can live elsewhere (the `topology` crate sends it to a compacted Kafka
//! topic), and a fresh local store is filled back from it with `restore_from` before
//! processing starts.
//!
//! The sink is called **after** the local sled commit, in commit order per store, once per
//! written key (a deletion is `value: None`, the tombstone of a compacted topic). A failing sink
//! surfaces as [`StateError::Changelog`](crate::StateError::Changelog) while the local write
//! stays committed: the caller should not acknowledge its input (commit the offset) until the
//! sink has flushed. Restoring never calls the sink.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::SinkError;

/// Receives every committed write of the stores opened with changelog enabled.
///
/// Implementations must be cheap and non-blocking (buffer and send in the background); the
/// store calls [`append`](Self::append) on the writing thread.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use state::{ChangelogSink, MemoryChangelog, StateConfig};
///
/// # fn main() -> Result<(), state::StateError> {
/// let log = Arc::new(MemoryChangelog::default());
/// let dir = StateConfig::temporary().changelog(log.clone()).open()?;
/// let store = dir.store::<String, u32>("counts")?;
/// store.put("a", &1)?;
/// store.delete("a")?;
/// assert_eq!(log.len(), 2);
/// assert_eq!(log.records()[1].value, None); // tombstone
/// # Ok(()) }
/// ```
pub trait ChangelogSink: Send + Sync + 'static {
    /// Appends one committed write: `store` is the sled tree name, `key`/`value` the encoded
    /// bytes as stored locally, `None` for a deletion.
    fn append(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), SinkError>;

    /// Waits until every appended record is durable at the destination.
    fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// One record as a [`MemoryChangelog`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// The sled tree name.
    pub store: String,
    /// The encoded key.
    pub key: Vec<u8>,
    /// The encoded value, `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// An in-memory [`ChangelogSink`] for tests and the in-process test driver: it keeps every
/// record in order and can produce the compacted view a Kafka compacted topic converges to.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use state::{MemoryChangelog, StateConfig};
///
/// # fn main() -> Result<(), state::StateError> {
/// let log = Arc::new(MemoryChangelog::default());
/// let old = StateConfig::temporary().changelog(log.clone()).open()?;
/// let s = old.store::<String, String>("products")?;
/// s.put("p1", &"v1".to_string())?;
/// s.put("p1", &"v2".to_string())?;
///
/// // A new pod: empty local state, filled from the changelog before processing.
/// let new = StateConfig::temporary().open()?;
/// let restored = new.store::<String, String>("products")?;
/// restored.restore_from(log.compacted("products"))?;
/// assert_eq!(restored.get("p1")?, Some("v2".to_string()));
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct MemoryChangelog {
    records: Mutex<Vec<ChangelogRecord>>,
}

impl MemoryChangelog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ChangelogRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record appended so far, in order.
    pub fn records(&self) -> Vec<ChangelogRecord> {
        self.lock().clone()
    }

    /// Number of records appended so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The latest record per key of `store`, in key order, tombstones included (as a compacted
    /// topic keeps them for a while): the input `restore_from` expects.
    pub fn compacted(&self, store: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for r in self.lock().iter().filter(|r| r.store == store) {
            latest.insert(r.key.clone(), r.value.clone());
        }
        latest.into_iter().collect()
    }
}

impl ChangelogSink for MemoryChangelog {
    fn append(&self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), SinkError> {
        self.lock().push(ChangelogRecord {
            store: store.to_owned(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        });
        Ok(())
    }
}
