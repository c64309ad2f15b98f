//! The state directory: one sled database per process (or per task), holding one tree per
//! store. [`StateConfig`] says where and how to open it; [`StateDir`] hands out typed stores,
//! runs multi-store transactions, flushes and reports its size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::changelog::ChangelogSink;
use crate::error::{Result, StateError, storage};
use crate::idempotency::IdempotencyStore;
use crate::kv::KvStore;
use crate::raw::{RawStore, StoreOptions, StoreStats};
use crate::transaction::{Transaction, TxStore, run_transaction};

/// How to open a [`StateDir`]. Defaults suit a service with a 128 MiB memory budget.
///
/// # Example
///
/// ```
/// use state::StateConfig;
/// # fn main() -> Result<(), state::StateError> {
/// let tmp = tempfile::tempdir().expect("tempdir");
/// let dir = StateConfig::new(tmp.path())
///     .page_cache_bytes(16 * 1024 * 1024)
///     .flush_every_ms(Some(100))
///     .open()?;
/// dir.store::<String, u64>("counts")?.put("a", &1)?;
/// dir.flush()?;
/// assert!(dir.size_on_disk()? > 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StateConfig {
    path: Option<PathBuf>,
    page_cache_bytes: u64,
    flush_every_ms: Option<u64>,
    segment_size: Option<usize>,
    high_throughput: bool,
    changelog: Option<Arc<dyn ChangelogSink>>,
}

impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateConfig")
            .field("path", &self.path)
            .field("page_cache_bytes", &self.page_cache_bytes)
            .field("flush_every_ms", &self.flush_every_ms)
            .field("segment_size", &self.segment_size)
            .field("high_throughput", &self.high_throughput)
            .field("changelog", &self.changelog.is_some())
            .finish()
    }
}

impl StateConfig {
    /// Default page cache: 32 MiB (sled's own default is 1 GiB).
    pub const DEFAULT_PAGE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

    /// A database in directory `path` (created if missing).
    pub fn new(path: impl AsRef<Path>) -> Self {
        StateConfig {
            path: Some(path.as_ref().to_path_buf()),
            ..Self::temporary()
        }
    }

    /// A throw-away database removed on drop (tests, doctests, the test driver).
    pub fn temporary() -> Self {
        StateConfig {
            path: None,
            page_cache_bytes: Self::DEFAULT_PAGE_CACHE_BYTES,
            flush_every_ms: Some(500),
            segment_size: None,
            high_throughput: false,
            changelog: None,
        }
    }

    /// sled's page cache budget in bytes.
    pub fn page_cache_bytes(mut self, bytes: u64) -> Self {
        self.page_cache_bytes = bytes;
        self
    }

    /// Background flush period (`None`: only explicit [`StateDir::flush`]). Writes since the
    /// last flush can be lost by a crash, so the engine flushes before committing offsets.
    pub fn flush_every_ms(mut self, every: Option<u64>) -> Self {
        self.flush_every_ms = every;
        self
    }

    /// sled log segment size in bytes (power of two; sled's default is 512 KiB). Smaller
    /// segments are reclaimed sooner under update-heavy loads.
    pub fn segment_size(mut self, bytes: usize) -> Self {
        self.segment_size = Some(bytes);
        self
    }

    /// Favour write throughput over disk space (sled `Mode::HighThroughput`); the default is
    /// `LowSpace`, which rewrites fragmented segments more eagerly.
    pub fn high_throughput(mut self, yes: bool) -> Self {
        self.high_throughput = yes;
        self
    }

    /// Send committed writes of changelog-enabled stores to `sink`.
    pub fn changelog(mut self, sink: Arc<dyn ChangelogSink>) -> Self {
        self.changelog = Some(sink);
        self
    }

    /// Opens (or creates) the database.
    pub fn open(self) -> Result<StateDir> {
        let mut cfg = sled::Config::new()
            .cache_capacity(self.page_cache_bytes)
            .flush_every_ms(self.flush_every_ms)
            .mode(if self.high_throughput {
                sled::Mode::HighThroughput
            } else {
                sled::Mode::LowSpace
            });
        if let Some(size) = self.segment_size {
            cfg = cfg.segment_size(size);
        }
        cfg = match &self.path {
            Some(p) => cfg.path(p),
            None => cfg.temporary(true),
        };
        let path = self.path.clone().unwrap_or_default();
        let db = open_sled(&cfg).map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(StateDir {
            inner: Arc::new(DirInner {
                db,
                path,
                changelog: self.changelog,
                stores: Mutex::new(HashMap::new()),
            }),
        })
    }
}

struct DirInner {
    db: sled::Db,
    path: PathBuf,
    changelog: Option<Arc<dyn ChangelogSink>>,
    stores: Mutex<HashMap<String, Arc<RawStore>>>,
}

/// An open state database. Cheap to clone; every clone shares the same stores.
///
/// A store name maps to one sled tree. Opening the same name twice returns handles sharing one
/// cache; the options given first win.
///
/// # Example
///
/// ```
/// use state::StateDir;
/// # fn main() -> Result<(), state::StateError> {
/// let tmp = tempfile::tempdir().expect("tempdir");
/// {
///     let dir = StateDir::open(tmp.path())?;
///     dir.store::<String, u64>("counts")?.put("a", &7)?;
///     dir.flush()?;
/// }
/// let dir = StateDir::open(tmp.path())?;
/// assert_eq!(dir.store::<String, u64>("counts")?.get("a")?, Some(7));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StateDir {
    inner: Arc<DirInner>,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Why `name` cannot name a store, if it cannot: store names become sled tree names and part
/// of Kafka topic names (`<application_id>-<store>-changelog`).
///
/// ```
/// assert_eq!(state::store_name_problem("product-images"), None);
/// assert_eq!(state::store_name_problem("a b"), Some("only [A-Za-z0-9_.-] allowed"));
/// ```
pub fn store_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > 200 {
        Some("longer than 200 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only [A-Za-z0-9_.-] allowed")
    } else {
        None
    }
}

fn validate_name(name: &str) -> Result<()> {
    match store_name_problem(name) {
        Some(reason) => Err(StateError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl StateDir {
    /// Opens (or creates) a database at `path` with default [`StateConfig`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        StateConfig::new(path).open()
    }

    /// The directory given at open (empty for a temporary database).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A typed key-value store named `name` with default [`StoreOptions`].
    pub fn store<K, V>(&self, name: &str) -> Result<KvStore<K, V>>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        self.store_with(name, StoreOptions::default())
    }

    /// A typed key-value store named `name` with `options` (if first opened here).
    pub fn store_with<K, V>(&self, name: &str, options: StoreOptions) -> Result<KvStore<K, V>>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        validate_name(name)?;
        Ok(KvStore::new(self.raw(name, options)?))
    }

    /// An idempotency store named `name`: trees `{name}.record-blocks` (record ids grouped by
    /// 16, see [`IdempotencyStore::records_tree`]) and `{name}.positions`.
    pub fn idempotency<V>(&self, name: &str) -> Result<IdempotencyStore<V>>
    where
        V: Serialize + DeserializeOwned,
    {
        validate_name(name)?;
        let opts = StoreOptions::default();
        Ok(IdempotencyStore::new(
            self.raw(&format!("{name}.record-blocks"), opts)?,
            self.raw(&format!("{name}.positions"), opts)?,
        ))
    }

    pub(crate) fn raw(&self, tree_name: &str, options: StoreOptions) -> Result<Arc<RawStore>> {
        let mut stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(tree_name) {
            return Ok(s.clone());
        }
        let tree = self
            .inner
            .db
            .open_tree(tree_name)
            .map_err(storage(tree_name, "open_tree"))?;
        let raw = Arc::new(RawStore::new(
            tree_name.to_owned(),
            tree,
            options,
            self.inner.changelog.clone(),
        ));
        stores.insert(tree_name.to_owned(), raw.clone());
        Ok(raw)
    }

    /// Fills the empty tree `tree_name` from changelog entries (`None` deletes). This is how a
    /// new pod restores any store, including an idempotency store's two trees, before it starts
    /// processing. The sink is not called.
    ///
    /// A store not opened yet stays unopened: its options (cache, changelog) are still those of
    /// the first `store_with` call after the restore.
    pub fn restore<I, KB, VB>(&self, tree_name: &str, entries: I) -> Result<usize>
    where
        I: IntoIterator<Item = (KB, Option<VB>)>,
        KB: AsRef<[u8]>,
        VB: AsRef<[u8]>,
    {
        self.opened_or_unregistered(tree_name)?.restore(entries)
    }

    /// Applies changelog entries (`None` deletes) over what the tree `tree_name` holds: how a
    /// task whose local store is behind its changelog reads only the tail. The sink is not
    /// called; a read cache of the store is cleared.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), state::StateError> {
    /// use std::sync::Arc;
    /// use state::{MemoryChangelog, StateConfig};
    /// let log = Arc::new(MemoryChangelog::default());
    /// let elsewhere = StateConfig::temporary().changelog(log.clone()).open()?;
    /// elsewhere.store::<String, u64>("counts")?.put("a", &2)?;
    ///
    /// let here = StateConfig::temporary().open()?;
    /// let counts = here.store::<String, u64>("counts")?;
    /// counts.put("a", &1)?;
    /// counts.put("b", &5)?;
    /// here.apply_changelog("counts", log.compacted("counts"))?;
    /// assert_eq!((counts.get("a")?, counts.get("b")?), (Some(2), Some(5)));
    /// # Ok(()) }
    /// ```
    pub fn apply_changelog<I, KB, VB>(&self, tree_name: &str, entries: I) -> Result<usize>
    where
        I: IntoIterator<Item = (KB, Option<VB>)>,
        KB: AsRef<[u8]>,
        VB: AsRef<[u8]>,
    {
        self.opened_or_unregistered(tree_name)?
            .apply_changelog(entries)
    }

    /// The store `tree_name` if it was opened here, else a handle on its tree that is not
    /// registered (without cache or changelog), so that a restore leaves the options of the
    /// first `store_with` call to come in force.
    fn opened_or_unregistered(&self, tree_name: &str) -> Result<Arc<RawStore>> {
        let opened = self
            .inner
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tree_name)
            .cloned();
        if let Some(raw) = opened {
            return Ok(raw);
        }
        validate_name(tree_name)?;
        let tree = self
            .inner
            .db
            .open_tree(tree_name)
            .map_err(storage(tree_name, "open_tree"))?;
        Ok(Arc::new(RawStore::new(
            tree_name.to_owned(),
            tree,
            StoreOptions::default(),
            None,
        )))
    }

    /// Whether the tree `tree_name` holds no entry (a store to restore before processing).
    /// Does not open the store.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), state::StateError> {
    /// let dir = state::StateConfig::temporary().open()?;
    /// assert!(dir.is_store_empty("counts")?);
    /// dir.store::<String, u64>("counts")?.put("a", &1)?;
    /// assert!(!dir.is_store_empty("counts")?);
    /// # Ok(()) }
    /// ```
    pub fn is_store_empty(&self, tree_name: &str) -> Result<bool> {
        validate_name(tree_name)?;
        let tree = self
            .inner
            .db
            .open_tree(tree_name)
            .map_err(storage(tree_name, "open_tree"))?;
        Ok(tree.is_empty())
    }

    /// Names of the trees that hold data or were opened (sled's internal default tree omitted).
    pub fn tree_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .db
            .tree_names()
            .into_iter()
            .filter(|n| !n.starts_with(b"__sled"))
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect();
        names.sort();
        names
    }

    /// Keys and live bytes of every tree, for the state-size gauges. O(total entries).
    pub fn stats(&self) -> Result<Vec<(String, StoreStats)>> {
        self.tree_names()
            .into_iter()
            .map(|name| {
                let raw = self.raw(&name, StoreOptions::default())?;
                Ok((name, raw.stats()?))
            })
            .collect()
    }

    /// Makes every write so far durable; returns the bytes sled wrote.
    pub fn flush(&self) -> Result<usize> {
        self.inner.db.flush().map_err(storage("*", "flush"))
    }

    /// Bytes the database files take on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.inner
            .db
            .size_on_disk()
            .map_err(storage("*", "size_on_disk"))
    }

    /// Copies every tree into a fresh database at `dest` (which must not hold one) and returns
    /// it opened with `config`'s settings. This is the offline compaction: sled's log keeps old
    /// versions around, a copy holds only live data. Swap directories while nothing writes.
    pub fn compact_into(&self, config: StateConfig) -> Result<StateDir> {
        let dest = config.open()?;
        for name in self.tree_names() {
            let src = self.raw(&name, StoreOptions::default())?;
            // Written straight to the tree: a copy is not a change, the changelog must not see it.
            let dst = dest
                .inner
                .db
                .open_tree(&name)
                .map_err(storage(&name, "open_tree"))?;
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for kv in src.tree.iter() {
                let (k, v) = kv.map_err(storage(&name, "iter"))?;
                batch.insert(k, v);
                n += 1;
                if n % 10_000 == 0 {
                    dst.apply_batch(std::mem::take(&mut batch))
                        .map_err(storage(&name, "compact"))?;
                }
            }
            dst.apply_batch(batch).map_err(storage(&name, "compact"))?;
        }
        dest.flush()?;
        Ok(dest)
    }
}

/// Opens sled, waiting up to 2 s for its file lock: sled releases the lock from a background
/// thread a moment after the last handle of an earlier open in this process is dropped (a
/// restart in place, a test reopening). A lock another process holds still fails, after the
/// wait.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    const ATTEMPTS: u32 = 40;
    let mut attempt = 0;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if attempt < ATTEMPTS && e.to_string().contains("could not acquire lock") =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl StateDir {
    /// Runs `f` atomically over `stores` (all opened from this directory). If `f` returns
    /// `Err`, nothing it wrote is kept and the error is returned; if it returns `Ok`, all its
    /// writes commit together, then the caches are invalidated and the changelog is fed.
    ///
    /// `f` may run several times on conflicts: keep side effects out of it. Its error type
    /// only needs `From<StateError>`.
    ///
    /// # Example
    ///
    /// ```
    /// use state::{PositionCheck, SourcePosition, StateError};
    /// # fn main() -> Result<(), StateError> {
    /// let dir = state::StateConfig::temporary().open()?;
    /// let products = dir.store::<String, String>("products")?;
    /// let idem = dir.idempotency::<()>("pipeline")?;
    ///
    /// let applied = dir.transaction(&[&products, &idem], |tx| {
    ///     if !tx.check_and_record(&idem, "topic:0:41", &())? {
    ///         return Ok(false); // duplicate delivery
    ///     }
    ///     if let PositionCheck::Stale { .. } =
    ///         tx.advance_position(&idem, "p-1", SourcePosition::new(7, 0))?
    ///     {
    ///         return Ok(false); // an older change than the one applied: keep the newer
    ///     }
    ///     tx.put(&products, "p-1", &"title v7".to_string())?;
    ///     Ok::<_, StateError>(true)
    /// })?;
    /// assert!(applied);
    /// assert_eq!(products.get("p-1")?, Some("title v7".to_string()));
    /// # Ok(()) }
    /// ```
    pub fn transaction<A, E, F>(&self, stores: &[&dyn TxStore], f: F) -> Result<A, E>
    where
        F: Fn(&mut Transaction<'_>) -> Result<A, E>,
        E: From<StateError>,
    {
        let mut raws: Vec<Arc<RawStore>> = Vec::new();
        for store in stores {
            for raw in store.tx_raws() {
                if !raws.iter().any(|r| Arc::ptr_eq(r, &raw)) {
                    raws.push(raw);
                }
            }
        }
        run_transaction(&raws, f)
    }
}
