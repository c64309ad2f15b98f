//! Typed key-value stores: [`KvStore<K, V>`] encodes keys and values with the crate's codec
//! (postcard) over one sled tree, with an optional read cache and changelog.

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::CacheStats;
use crate::codec::{decode, encode};
use crate::error::Result;
use crate::raw::{Decision, RawStore, StoreStats};

/// A typed store over one sled tree. Cheap to clone.
///
/// Iteration order follows the encoded key bytes (see the [`codec`](crate::codec) notes), not
/// `K`'s natural order. `len`, `stats` and `retain` scan the whole tree.
///
/// # Example
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Stored { key: String, sha256: String }
///
/// # fn main() -> Result<(), state::StateError> {
/// let dir = state::StateConfig::temporary().open()?;
/// let images = dir.store::<(String, String), Stored>("images")?;
/// let id = ("mall-1".to_string(), "p-1".to_string());
/// images.put(&id, &Stored { key: "products/mall-1/p-1/ab.png".into(), sha256: "ab".into() })?;
/// assert_eq!(images.get(&id)?.map(|s| s.sha256), Some("ab".to_string()));
/// assert_eq!(images.len(), 1);
/// assert!(images.delete(&id)?);
/// assert!(images.is_empty());
/// # Ok(()) }
/// ```
pub struct KvStore<K, V> {
    raw: Arc<RawStore>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KvStore<K, V> {
    fn clone(&self) -> Self {
        KvStore {
            raw: self.raw.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for KvStore<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").field("raw", &self.raw).finish()
    }
}

impl<K, V> KvStore<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    pub(crate) fn new(raw: Arc<RawStore>) -> Self {
        KvStore {
            raw,
            _types: PhantomData,
        }
    }

    pub(crate) fn raw(&self) -> &Arc<RawStore> {
        &self.raw
    }

    /// The store's name (its sled tree and changelog name).
    pub fn name(&self) -> &str {
        &self.raw.name
    }

    /// `key` as the store encodes it (the bytes it is stored and changelogged under).
    pub fn encode_key<Q>(&self, key: &Q) -> Result<Vec<u8>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.key_bytes(key)
    }

    pub(crate) fn key_bytes<Q>(&self, key: &Q) -> Result<Vec<u8>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        encode(&self.raw.name, "key", key)
    }

    /// The value stored at `key`, through the read cache if configured.
    ///
    /// `key` may be any borrowed form of `K` that serializes the same way (`&str` for `String`).
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.key_bytes(key)?;
        match self.raw.get(&k)? {
            Some(v) => decode(&self.raw.name, "value", &k, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `key` holds a value.
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.key_bytes(key)?;
        Ok(self.raw.get(&k)?.is_some())
    }

    /// Stores `value` at `key`; returns whether a previous value was replaced.
    pub fn put<Q>(&self, key: &Q, value: &V) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.key_bytes(key)?;
        let v = encode(&self.raw.name, "value", value)?;
        Ok(self.raw.insert(&k, v)?.is_some())
    }

    /// Atomically replaces the value at `key` by what `decide` returns for the current one
    /// (`None`: leave it as it is); returns the value that holds afterwards and whether
    /// `decide`'s value was written.
    ///
    /// A compare-and-swap loop on this store's tree: `decide` runs again if another writer got
    /// in between, so it must not have side effects. For one store this is much cheaper than
    /// [`StateDir::transaction`](crate::StateDir::transaction): sled writes every transaction
    /// into a log buffer of its own, which costs a buffer write and a thread wake-up each time.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), state::StateError> {
    /// let dir = state::StateConfig::temporary().open()?;
    /// let newest = dir.store::<String, u64>("newest-version")?;
    /// let keep_newest = |v: u64| move |current: Option<&u64>| match current {
    ///     Some(&stored) if stored >= v => None,
    ///     _ => Some(v),
    /// };
    /// assert_eq!(newest.update("p-1", keep_newest(3))?, (Some(3), true));
    /// assert_eq!(newest.update("p-1", keep_newest(2))?, (Some(3), false)); // older: kept 3
    /// # Ok(()) }
    /// ```
    pub fn update<Q>(
        &self,
        key: &Q,
        mut decide: impl FnMut(Option<&V>) -> Option<V>,
    ) -> Result<(Option<V>, bool)>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.key_bytes(key)?;
        let name = &self.raw.name;
        self.raw.update(&k, |stored| {
            let current: Option<V> = match stored {
                Some(bytes) => Some(decode(name, "value", &k, bytes)?),
                None => None,
            };
            Ok(match decide(current.as_ref()) {
                None => Decision::Keep((current, false)),
                Some(next) => {
                    Decision::Write(Some(encode(name, "value", &next)?), (Some(next), true))
                }
            })
        })
    }

    /// Removes `key`; returns whether it held a value.
    pub fn delete<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.key_bytes(key)?;
        Ok(self.raw.remove(&k)?.is_some())
    }

    /// Every entry, decoded, in encoded-key order. A snapshot is not guaranteed: concurrent
    /// writes may or may not be seen.
    pub fn iter(&self) -> impl Iterator<Item = Result<(K, V)>> + use<K, V> {
        let raw = self.raw.clone();
        self.raw.iter().map(move |kv| {
            let (k, v) = kv?;
            let key = decode(&raw.name, "key", &k, &k)?;
            let value = decode(&raw.name, "value", &k, &v)?;
            Ok((key, value))
        })
    }

    /// The entries from `start` on (encoded keys `>=` `start`'s), decoded, in encoded-key
    /// order: a range scan when the key's encoding sorts the way the caller needs (postcard
    /// writes fixed-size arrays and `u8`s as is, so a key that begins with a `[u8; 8]`
    /// big-endian timestamp sorts by time). The caller stops iterating where its range ends.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), state::StateError> {
    /// let dir = state::StateConfig::temporary().open()?;
    /// let by_time = dir.store::<([u8; 8], String), u32>("by-time")?;
    /// for (t, k) in [(30u64, "c"), (10, "a"), (20, "b")] {
    ///     by_time.put(&(t.to_be_bytes(), k.to_string()), &1)?;
    /// }
    /// let from_20: Vec<String> = by_time
    ///     .iter_from(&(20u64.to_be_bytes(), String::new()))?
    ///     .map(|e| e.map(|((_, k), _)| k))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(from_20, ["b", "c"]);
    /// # Ok(()) }
    /// ```
    pub fn iter_from<Q>(
        &self,
        start: &Q,
    ) -> Result<impl Iterator<Item = Result<(K, V)>> + use<K, V, Q>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let start = self.key_bytes(start)?;
        let raw = self.raw.clone();
        Ok(self.raw.iter_from(&start).map(move |kv| {
            let (k, v) = kv?;
            let key = decode(&raw.name, "key", &k, &k)?;
            let value = decode(&raw.name, "value", &k, &v)?;
            Ok((key, value))
        }))
    }

    /// Number of entries (scans the tree).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.tree.is_empty()
    }

    /// Keys and live bytes (encoded keys plus values), for gauges. Scans the tree.
    pub fn stats(&self) -> Result<StoreStats> {
        self.raw.stats()
    }

    /// Approximate size of the live data in bytes (encoded keys plus values).
    pub fn approximate_size_bytes(&self) -> Result<u64> {
        Ok(self.raw.stats()?.bytes)
    }

    /// The read cache's counters, if the store was opened with one.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.raw.cache_stats()
    }

    /// Removes the entries for which `keep` returns false (through the changelog, so the
    /// compacted topic drops them too); returns how many were removed. An entry rewritten
    /// concurrently after it was read is kept.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), state::StateError> {
    /// let dir = state::StateConfig::temporary().open()?;
    /// let seen = dir.store::<u64, u64>("last-seen-ms")?;
    /// for k in 0..10 { seen.put(&k, &(k * 1000))?; }
    /// let removed = seen.retain(|_, at| *at >= 5000)?; // expire by age
    /// assert_eq!((removed, seen.len()), (5, 5));
    /// # Ok(()) }
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) -> Result<usize> {
        let name = self.raw.name.clone();
        self.raw.retain_raw(|k, v| {
            let key: K = decode(&name, "key", k, k)?;
            let value: V = decode(&name, "value", k, v)?;
            Ok(keep(&key, &value))
        })
    }

    /// Removes every entry (through the changelog); returns how many.
    pub fn clear(&self) -> Result<usize> {
        self.raw.clear()
    }

    /// Fills this **empty** store from changelog entries `(key, Some(value))` / `(key, None)`
    /// (a tombstone), as read back from a compacted changelog topic, before processing starts.
    /// The changelog sink is not called. Fails with
    /// [`StateError::RestoreNotEmpty`](crate::StateError::RestoreNotEmpty) if the store holds
    /// data. Returns the number of entries applied.
    pub fn restore_from<I, KB, VB>(&self, entries: I) -> Result<usize>
    where
        I: IntoIterator<Item = (KB, Option<VB>)>,
        KB: AsRef<[u8]>,
        VB: AsRef<[u8]>,
    {
        self.raw.restore(entries)
    }
}
