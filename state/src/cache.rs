//! A bounded read cache in front of a store: an approximate LRU built from two generations
//! ("hot" and "cold" hash maps). Hits in the cold generation are promoted; when the hot
//! generation is full it becomes the cold one and the old cold one is dropped, so memory stays
//! bounded by `capacity` entries and recently used keys survive. Absent keys are cached too
//! (a miss on a new product is the common case).
//!
//! Writes invalidate the key and bump an epoch; a reader only fills the cache if no write
//! happened between its read from sled and its insert, so a cached entry is never older than
//! the committed value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sled::IVec;

/// Counters of one store's read cache, for metrics.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), state::StateError> {
/// let dir = state::StateConfig::temporary().open()?;
/// let store = dir.store_with::<String, u64>("hot", state::StoreOptions::cached(1024))?;
/// store.put("a", &1)?;
/// store.get("a")?; // miss, fills the cache
/// store.get("a")?; // hit
/// let stats = store.cache_stats().expect("cache configured");
/// assert_eq!((stats.hits, stats.misses), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to sled.
    pub misses: u64,
    /// Entries currently cached.
    pub entries: usize,
    /// Configured maximum number of entries.
    pub capacity: usize,
}

#[derive(Default)]
struct Generations {
    hot: HashMap<Vec<u8>, Option<IVec>>,
    cold: HashMap<Vec<u8>, Option<IVec>>,
    epoch: u64,
}

pub(crate) struct ReadCache {
    inner: Mutex<Generations>,
    generation_size: usize,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What a lookup found: a cached answer, or a miss with the epoch to pass back to `fill`.
pub(crate) enum Lookup {
    Hit(Option<IVec>),
    Miss(u64),
}

impl ReadCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        ReadCache {
            inner: Mutex::new(Generations::default()),
            generation_size: capacity / 2,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding the lock cannot leave the maps inconsistent (each operation is
        // a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lookup(&self, key: &[u8]) -> Lookup {
        let mut g = self.lock();
        if let Some(v) = g.hot.get(key) {
            let v = v.clone();
            drop(g);
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit(v);
        }
        if let Some(v) = g.cold.remove(key) {
            self.insert_hot(&mut g, key.to_vec(), v.clone());
            drop(g);
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit(v);
        }
        let epoch = g.epoch;
        drop(g);
        self.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss(epoch)
    }

    /// Caches `value` for `key` unless a write happened since `epoch` was read.
    pub(crate) fn fill(&self, key: &[u8], value: Option<IVec>, epoch: u64) {
        let mut g = self.lock();
        if g.epoch == epoch {
            self.insert_hot(&mut g, key.to_vec(), value);
        }
    }

    fn insert_hot(&self, g: &mut Generations, key: Vec<u8>, value: Option<IVec>) {
        if g.hot.len() >= self.generation_size && !g.hot.contains_key(&key) {
            g.cold = std::mem::take(&mut g.hot);
        }
        g.hot.insert(key, value);
    }

    pub(crate) fn invalidate(&self, key: &[u8]) {
        let mut g = self.lock();
        g.hot.remove(key);
        g.cold.remove(key);
        g.epoch = g.epoch.wrapping_add(1);
    }

    pub(crate) fn clear(&self) {
        let mut g = self.lock();
        g.hot.clear();
        g.cold.clear();
        g.epoch = g.epoch.wrapping_add(1);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let g = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: g.hot.len() + g.cold.len(),
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_recent_keys_survive() {
        let c = ReadCache::new(10);
        for i in 0u32..100 {
            let k = i.to_be_bytes();
            let Lookup::Miss(e) = c.lookup(&k) else {
                panic!("unexpected hit")
            };
            c.fill(&k, Some(IVec::from(&k[..])), e);
            // keep key 0 hot
            assert!(matches!(
                c.lookup(&0u32.to_be_bytes()),
                Lookup::Hit(Some(_))
            ));
            assert!(c.stats().entries <= 10);
        }
    }

    #[test]
    fn write_between_read_and_fill_prevents_stale_fill() {
        let c = ReadCache::new(10);
        let Lookup::Miss(e) = c.lookup(b"k") else {
            panic!("unexpected hit")
        };
        c.invalidate(b"k"); // a writer committed meanwhile
        c.fill(b"k", Some(IVec::from(&b"old"[..])), e);
        assert!(matches!(c.lookup(b"k"), Lookup::Miss(_)));
    }
}
