//! The untyped layer shared by every store: one sled tree, an optional read cache and an
//! optional changelog sink. Every write goes through here so the cache is invalidated and the
//! changelog sees it, whatever typed wrapper (key-value, idempotency, transaction) made it.

use std::sync::Arc;

use sled::IVec;

use crate::cache::{CacheStats, Lookup, ReadCache};
use crate::changelog::ChangelogSink;
use crate::error::{Result, StateError, show_key, storage};

/// Options for one store, given when it is first opened in a [`StateDir`](crate::StateDir).
///
/// # Example
///
/// ```
/// use state::StoreOptions;
/// let hot = StoreOptions::cached(10_000);
/// let local_only = StoreOptions::default().without_changelog();
/// assert_eq!(hot.cache_capacity, 10_000);
/// assert!(!local_only.changelog);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Entries kept in the read cache; `0` disables it.
    pub cache_capacity: usize,
    /// Send committed writes to the directory's changelog sink (if one is configured).
    pub changelog: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity: 0,
            changelog: true,
        }
    }
}

impl StoreOptions {
    /// Default options with a read cache of `entries` entries.
    pub fn cached(entries: usize) -> Self {
        StoreOptions {
            cache_capacity: entries,
            ..Self::default()
        }
    }

    /// These options without changelog (a purely local store, rebuilt another way).
    pub fn without_changelog(self) -> Self {
        StoreOptions {
            changelog: false,
            ..self
        }
    }
}

/// Number of keys and bytes of one store, for the engine's state-size gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Number of entries.
    pub keys: u64,
    /// Sum of encoded key and value lengths: the live data, without sled's overhead.
    pub bytes: u64,
}

/// What a [`RawStore::update`] step decided for the value it was shown.
pub(crate) enum Decision<T> {
    /// Leave the stored value; the update answers `T`.
    Keep(T),
    /// Replace it (`None` removes it); the update answers `T` once the swap succeeded.
    Write(Option<Vec<u8>>, T),
}

/// One sled tree with its cache and changelog. Not nameable outside the crate.
pub struct RawStore {
    pub(crate) name: String,
    pub(crate) tree: sled::Tree,
    cache: Option<ReadCache>,
    sink: Option<Arc<dyn ChangelogSink>>,
}

impl std::fmt::Debug for RawStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawStore")
            .field("name", &self.name)
            .field("cached", &self.cache.is_some())
            .field("changelog", &self.sink.is_some())
            .finish()
    }
}

impl RawStore {
    pub(crate) fn new(
        name: String,
        tree: sled::Tree,
        options: StoreOptions,
        sink: Option<Arc<dyn ChangelogSink>>,
    ) -> Self {
        RawStore {
            name,
            tree,
            cache: (options.cache_capacity > 0).then(|| ReadCache::new(options.cache_capacity)),
            sink: if options.changelog { sink } else { None },
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        let Some(cache) = &self.cache else {
            return self.tree.get(key).map_err(storage(&self.name, "get"));
        };
        match cache.lookup(key) {
            Lookup::Hit(v) => Ok(v),
            Lookup::Miss(epoch) => {
                let v = self.tree.get(key).map_err(storage(&self.name, "get"))?;
                cache.fill(key, v.clone(), epoch);
                Ok(v)
            }
        }
    }

    pub(crate) fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<Option<IVec>> {
        let value = IVec::from(value);
        let old = self
            .tree
            .insert(key, value.clone())
            .map_err(storage(&self.name, "insert"))?;
        self.after_commit(key, Some(&value))?;
        Ok(old)
    }

    pub(crate) fn remove(&self, key: &[u8]) -> Result<Option<IVec>> {
        let old = self
            .tree
            .remove(key)
            .map_err(storage(&self.name, "remove"))?;
        if old.is_some() {
            self.after_commit(key, None)?;
        }
        Ok(old)
    }

    /// Atomically replaces `old` by `new`; `Ok(Err(current))` when the stored value differs.
    pub(crate) fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<std::result::Result<(), Option<IVec>>> {
        let new = new.map(IVec::from);
        match self
            .tree
            .compare_and_swap(key, old, new.clone())
            .map_err(storage(&self.name, "compare_and_swap"))?
        {
            Ok(()) => {
                self.after_commit(key, new.as_deref())?;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(e.current)),
        }
    }

    /// A compare-and-swap loop: shows `decide` the value stored at `key` (through the cache),
    /// writes what it decides if that value is still the stored one, and otherwise shows it
    /// the newer value. `decide` may run more than once, so it must not have side effects.
    pub(crate) fn update<T>(
        &self,
        key: &[u8],
        mut decide: impl FnMut(Option<&[u8]>) -> Result<Decision<T>>,
    ) -> Result<T> {
        let mut current = self.get(key)?;
        loop {
            match decide(current.as_deref())? {
                Decision::Keep(answer) => return Ok(answer),
                Decision::Write(new, answer) => {
                    match self.compare_and_swap(key, current.as_deref(), new)? {
                        Ok(()) => return Ok(answer),
                        Err(now) => current = now,
                    }
                }
            }
        }
    }

    /// Called after every committed write of `key`: cache invalidation, then changelog.
    pub(crate) fn after_commit(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        if let Some(cache) = &self.cache {
            cache.invalidate(key);
        }
        if let Some(sink) = &self.sink {
            sink.append(&self.name, key, value)
                .map_err(|source| StateError::Changelog {
                    store: self.name.clone(),
                    key: show_key(key),
                    source,
                })?;
        }
        Ok(())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Result<(IVec, IVec)>> + use<> {
        let name = self.name.clone();
        self.tree
            .iter()
            .map(move |r| r.map_err(storage(&name, "iter")))
    }

    pub(crate) fn iter_from(
        &self,
        start: &[u8],
    ) -> impl Iterator<Item = Result<(IVec, IVec)>> + use<> {
        let name = self.name.clone();
        self.tree
            .range(start.to_vec()..)
            .map(move |r| r.map_err(storage(&name, "range")))
    }

    pub(crate) fn len(&self) -> usize {
        self.tree.len()
    }

    pub(crate) fn stats(&self) -> Result<StoreStats> {
        let mut stats = StoreStats::default();
        for kv in self.tree.iter() {
            let (k, v) = kv.map_err(storage(&self.name, "iter"))?;
            stats.keys += 1;
            stats.bytes += (k.len() + v.len()) as u64;
        }
        Ok(stats)
    }

    pub(crate) fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(ReadCache::stats)
    }

    /// Removes every entry for which `keep` is false, through the changelog. Returns how many
    /// were removed. Entries changed concurrently since they were read are left alone.
    pub(crate) fn retain_raw(
        &self,
        mut keep: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<usize> {
        let mut removed = 0;
        for kv in self.tree.iter() {
            let (k, v) = kv.map_err(storage(&self.name, "iter"))?;
            if !keep(&k, &v)? && self.compare_and_swap(&k, Some(&v), None)?.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Fills an empty store from changelog entries (`None` deletes), without calling the sink.
    pub(crate) fn restore<I, KB, VB>(&self, entries: I) -> Result<usize>
    where
        I: IntoIterator<Item = (KB, Option<VB>)>,
        KB: AsRef<[u8]>,
        VB: AsRef<[u8]>,
    {
        let len = self.tree.len();
        if len != 0 {
            return Err(StateError::RestoreNotEmpty {
                store: self.name.clone(),
                len,
            });
        }
        self.apply_changelog(entries)
    }

    /// Applies changelog entries over what the tree holds (a restore from a checkpoint reads
    /// only the changelog's tail). The sink is not called.
    pub(crate) fn apply_changelog<I, KB, VB>(&self, entries: I) -> Result<usize>
    where
        I: IntoIterator<Item = (KB, Option<VB>)>,
        KB: AsRef<[u8]>,
        VB: AsRef<[u8]>,
    {
        const CHUNK: usize = 10_000;
        let mut applied = 0;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for (k, v) in entries {
            match v {
                Some(v) => batch.insert(k.as_ref(), v.as_ref()),
                None => batch.remove(k.as_ref()),
            }
            in_batch += 1;
            applied += 1;
            if in_batch == CHUNK {
                self.tree
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(storage(&self.name, "restore"))?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.tree
                .apply_batch(batch)
                .map_err(storage(&self.name, "restore"))?;
        }
        if let Some(cache) = &self.cache {
            cache.clear();
        }
        Ok(applied)
    }

    pub(crate) fn clear(&self) -> Result<usize> {
        self.retain_raw(|_, _| Ok(false))
    }
}
