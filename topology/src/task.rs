//! Tasks and their state stores.
//!
//! As in Kafka Streams, a **task** is one sub-topology working on one partition of its source
//! topics ([`TaskId`], written `<subtopology>_<partition>`). A sub-topology whose processors
//! use stores ([`StoreSpec`]) owns one instance of each store per task, in
//! its own sled database under `state_dir/<application_id>/<task>/`. The runtime opens a
//! task's stores when the task's partitions are assigned to this instance, restores them from
//! their changelog partitions *before* the task processes a record, and flushes, checkpoints
//! and closes them when the partitions are revoked or the runtime stops. A processor reaches
//! its task's stores through the [`ProcessorContext`] it is handed with each record; there is
//! no other way to them.
//!
//! **Changelogs.** Every write to a store with a changelog is also produced, through the
//! runtime's own producer, to partition *p* of the compacted topic
//! `<application_id>-<store>-changelog` for task `…_p`. The write is tied to the source record
//! being processed: its offset is not committed before the changelog record is acknowledged
//! (and with exactly-once, the changelog record is in the same transaction as the outputs and
//! the offsets).
//!
//! **Checkpoints.** `<task>/.checkpoint` holds, per store, the changelog offset up to which
//! the local store is known to hold everything (written after the store is flushed, at every
//! commit with at-least-once, and only at a clean shutdown with exactly-once). On assignment a
//! task reads its changelog from the checkpoint to the partition's end; without a checkpoint,
//! or with one past the end (the topic was recreated), the local store is wiped and restored
//! from the beginning.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use state::{KvStore, StateDir, StateError, StoreOptions};

use crate::store::StoreSpec;

/// A task: one sub-topology on one partition of its source topics.
///
/// # Example
/// ```
/// let task = topology::TaskId { subtopology: 1, partition: 4 };
/// assert_eq!(task.to_string(), "1_4");
/// assert_eq!("1_4".parse::<topology::TaskId>(), Ok(task));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// The sub-topology ([`crate::Subtopology::id`]).
    pub subtopology: usize,
    /// The partition of its source topics.
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}

impl std::str::FromStr for TaskId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sub, partition) = s
            .split_once('_')
            .ok_or_else(|| format!("`{s}` is not a task id (<subtopology>_<partition>)"))?;
        Ok(TaskId {
            subtopology: sub.parse().map_err(|e| format!("`{s}`: {e}"))?,
            partition: partition.parse().map_err(|e| format!("`{s}`: {e}"))?,
        })
    }
}

/// Why a processor could not open a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreAccessError {
    /// The processor did not declare the store (`with_stores`, or `stores:` in the file).
    #[error("processor `{node}` did not declare store `{store}`")]
    NotDeclared {
        /// The processor.
        node: String,
        /// The store.
        store: String,
    },
    /// The record is not processed inside a task with stores (a processor called directly,
    /// or its task was revoked meanwhile).
    #[error("store `{0}` is not available: no task owns this record")]
    NoTask(String),
    /// The store could not be opened.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Two operators of a task write one store with different key or value types.
    #[error("store `{0}` is written with two different key or value types")]
    Mistyped(String),
}

/// One task's open stores.
pub(crate) struct TaskStores {
    pub(crate) id: TaskId,
    pub(crate) dir: StateDir,
    pub(crate) specs: Vec<StoreSpec>,
    /// Whether stores with a changelog write it here.
    pub(crate) changelogs: bool,
    /// The windowed operators' stream times in this task, by store: kept here so that a
    /// record does not read and write its store's stream-time slot each time (see
    /// [`crate::stateful`]); gone with the task, so a task opened again reads its store.
    pub(crate) clocks: std::sync::Mutex<std::collections::HashMap<String, StreamClock>>,
    /// Store writes the stateful operators keep back until the next commit (or until there
    /// are [`WRITE_BACK_LIMIT`] of them), with the records they hold back.
    pub(crate) write_back: std::sync::Mutex<WriteBack>,
}

/// How many kept-back writes a task holds before it writes them out.
pub(crate) const WRITE_BACK_LIMIT: usize = 20_000;

/// A task's kept-back store writes: the latest value per key of each store, and per source
/// partition the earliest record whose write is kept back. That record's ack holds the
/// partition's offset, so nothing past it is committed before the writes reach the store
/// and its changelog (see [`flush_write_back`](crate::runtime::flush_write_back)).
#[derive(Default)]
pub(crate) struct WriteBack {
    stores: std::collections::HashMap<String, Box<dyn DirtyStore>>,
    entries: usize,
    holds: Vec<crate::runtime::Ack>,
}

/// One store's kept-back writes, behind a type-erased face so one task keeps them for stores
/// of different key and value types.
pub(crate) trait DirtyStore: Send {
    /// Writes every kept-back entry to the store.
    fn flush(&mut self) -> Result<(), StateError>;
    /// For the typed views.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// The kept-back writes of a store with keys `K` and values `V`, by encoded key.
pub(crate) struct DirtyMap<K, V> {
    store: KvStore<K, V>,
    entries: std::collections::HashMap<Vec<u8>, (K, Option<V>)>,
}

impl<K, V> DirtyStore for DirtyMap<K, V>
where
    K: Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    fn flush(&mut self) -> Result<(), StateError> {
        for (_, (key, value)) in self.entries.drain() {
            match value {
                Some(value) => {
                    self.store.put(&key, &value)?;
                }
                None => {
                    self.store.delete(&key)?;
                }
            }
        }
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl TaskStores {
    /// Writes the kept-back writes out with `write`, which is handed them and the records they
    /// hold. The task's write-back stays locked meanwhile: an operator running on another
    /// thread (after an async stage) neither reads a value that left the write-back but has
    /// not reached the store yet, nor keeps a write back that this flush would miss.
    pub(crate) fn flush_write_back_with(
        &self,
        write: impl FnOnce(
            &mut std::collections::HashMap<String, Box<dyn DirtyStore>>,
            &[crate::runtime::Ack],
        ) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut wb = self
            .write_back
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        wb.entries = 0;
        let mut stores = std::mem::take(&mut wb.stores);
        let holds = std::mem::take(&mut wb.holds);
        write(&mut stores, &holds)
    }

    /// The kept-back value of `key` in store `store` (`Some(None)`: kept-back deletion;
    /// `None`: nothing kept back).
    pub(crate) fn kept_back<K, V>(
        &self,
        store: &str,
        key: &[u8],
    ) -> Result<Option<Option<V>>, StoreAccessError>
    where
        K: 'static,
        V: Clone + 'static,
    {
        let mut wb = self
            .write_back
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(dirty) = wb.stores.get_mut(store) else {
            return Ok(None);
        };
        let map = dirty
            .as_any()
            .downcast_mut::<DirtyMap<K, V>>()
            .ok_or_else(|| mistyped(store))?;
        Ok(map.entries.get(key).map(|(_, v)| v.clone()))
    }

    /// Keeps back a write of `value` (`None`: a deletion) at `key` of `store`, held by the
    /// record being processed (`hold`); returns whether the task holds so many writes now
    /// that it should write them out.
    pub(crate) fn keep_back<K, V>(
        &self,
        store: KvStore<K, V>,
        key_bytes: Vec<u8>,
        key: K,
        value: Option<V>,
        hold: Option<crate::runtime::Ack>,
    ) -> Result<bool, StoreAccessError>
    where
        K: Serialize + DeserializeOwned + Send + 'static,
        V: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut wb = self
            .write_back
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ack) = hold
            && !wb.holds.iter().any(|h| {
                h.origin.partition == ack.origin.partition && h.origin.topic == ack.origin.topic
            })
        {
            wb.holds.push(ack);
        }
        let name = store.name().to_owned();
        let dirty = wb.stores.entry(name.clone()).or_insert_with(|| {
            Box::new(DirtyMap {
                store,
                entries: std::collections::HashMap::new(),
            })
        });
        let map = dirty
            .as_any()
            .downcast_mut::<DirtyMap<K, V>>()
            .ok_or_else(|| mistyped(&name))?;
        let added = map.entries.insert(key_bytes, (key, value)).is_none();
        if added {
            wb.entries += 1;
        }
        Ok(wb.entries >= WRITE_BACK_LIMIT)
    }
}

fn mistyped(store: &str) -> StoreAccessError {
    StoreAccessError::Mistyped(store.to_owned())
}

/// One windowed operator's stream time in one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamClock {
    /// The largest timestamp seen.
    pub(crate) time: i64,
    /// The stream time last written to the store.
    pub(crate) persisted: i64,
    /// The expiry horizon of the last scan for expired windows.
    pub(crate) expired_to: i64,
}

impl TaskStores {
    fn options(spec: &StoreSpec, changelogs: bool) -> StoreOptions {
        let options = StoreOptions::cached(spec.cache_entries);
        if spec.changelog && changelogs {
            options
        } else {
            options.without_changelog()
        }
    }

    /// Store `name` of this task (`None`: the task has no such store), opened with the
    /// options of its spec. Everything that opens a task's store goes through here: the
    /// options of a store's first opening in a database are the ones it keeps, so a store
    /// first opened by a reader (the stats, a query) with other options would, for
    /// example, stop writing its changelog.
    pub(crate) fn store<K, V>(&self, name: &str) -> Option<Result<KvStore<K, V>, StateError>>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let spec = self.specs.iter().find(|s| s.name == name)?;
        Some(
            self.dir
                .store_with(name, Self::options(spec, self.changelogs)),
        )
    }
}

/// A task's store opened for reading, from outside its processors (tests, queries): see
/// [`StoreReader`](crate::runtime::StoreReader).
///
/// It keeps the task's database open while it lives: drop it before the task moves (a new
/// owner in this process waits for the database to be closed), and do not expect it to
/// follow the task once it was revoked.
pub struct ReadOnlyStore<K, V> {
    inner: KvStore<K, V>,
}

impl<K, V> fmt::Debug for ReadOnlyStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadOnlyStore")
            .field("store", &self.inner)
            .finish()
    }
}

impl<K, V> ReadOnlyStore<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    pub(crate) fn new(inner: KvStore<K, V>) -> Self {
        ReadOnlyStore { inner }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The value at `key` (`&str` for `String` keys).
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, StateError>
    where
        K: std::borrow::Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.inner.get(key)
    }

    /// Whether `key` holds a value.
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool, StateError>
    where
        K: std::borrow::Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.inner.contains_key(key)
    }

    /// Every entry, in encoded-key order; writes of the running task may or may not be seen.
    pub fn iter(&self) -> impl Iterator<Item = Result<(K, V), StateError>> + use<K, V> {
        self.inner.iter()
    }

    /// The entries from `start` on, in encoded-key order (see
    /// [`KvStore::iter_from`](state::KvStore::iter_from)).
    pub fn iter_from<Q>(
        &self,
        start: &Q,
    ) -> Result<impl Iterator<Item = Result<(K, V), StateError>> + use<K, V, Q>, StateError>
    where
        K: std::borrow::Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.inner.iter_from(start)
    }

    /// Number of entries (scans the store).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// What a processor is handed with each record: the task it runs in and that task's stores.
///
/// # Example
/// ```
/// use futures::future::BoxFuture;
/// use topology::{ProcessError, Processor, ProcessorContext, Record};
///
/// /// Counts records per key in the task's `counts` store.
/// struct Count;
/// impl Processor for Count {
///     fn process(&self, record: Record, ctx: ProcessorContext)
///         -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
///         Box::pin(async move {
///             let counts = ctx.store::<String, u64>("counts")
///                 .map_err(|e| ProcessError::transient(e.to_string()))?;
///             let key = record.key.as_ref().and_then(|k| k.as_str()).unwrap_or_default().to_owned();
///             counts.update(&key, |n| Some(n.copied().unwrap_or(0) + 1))
///                 .map_err(|e| ProcessError::transient(e.to_string()))?;
///             Ok(vec![record])
///         })
///     }
/// }
/// ```
#[derive(Clone)]
pub struct ProcessorContext {
    node: Arc<str>,
    declared: Arc<[String]>,
    task: Option<Arc<TaskStores>>,
}

impl fmt::Debug for ProcessorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorContext")
            .field("node", &self.node)
            .field("task", &self.task_id())
            .finish()
    }
}

impl ProcessorContext {
    pub(crate) fn new(
        node: Arc<str>,
        declared: Arc<[String]>,
        task: Option<Arc<TaskStores>>,
    ) -> Self {
        ProcessorContext {
            node,
            declared,
            task,
        }
    }

    /// A context without a task: for calling a processor outside a runtime (benchmarks,
    /// unit tests of stateless processors). Every [`store`](Self::store) call fails.
    pub fn detached(node: &str) -> Self {
        ProcessorContext::new(node.into(), Arc::from(Vec::new()), None)
    }

    /// A context over stores in `dir`, for calling a processor outside a runtime (unit tests
    /// of stateful processors). Writes are local only (no changelog).
    pub fn with_local_stores(
        node: &str,
        task: TaskId,
        dir: StateDir,
        stores: &[StoreSpec],
    ) -> Self {
        let declared: Vec<String> = stores.iter().map(|s| s.name.clone()).collect();
        ProcessorContext::new(
            node.into(),
            Arc::from(declared),
            Some(Arc::new(TaskStores {
                id: task,
                dir,
                specs: stores.to_vec(),
                changelogs: false,
                clocks: Default::default(),
                write_back: Default::default(),
            })),
        )
    }

    /// The record's task (`None` when detached).
    pub(crate) fn task(&self) -> Option<&Arc<TaskStores>> {
        self.task.as_ref()
    }

    /// The task's stream clocks (`None` when detached).
    pub(crate) fn clocks(
        &self,
    ) -> Option<&std::sync::Mutex<std::collections::HashMap<String, StreamClock>>> {
        self.task.as_ref().map(|t| &t.clocks)
    }

    /// The task this record is processed in (`None` when detached).
    pub fn task_id(&self) -> Option<TaskId> {
        self.task.as_ref().map(|t| t.id)
    }

    /// The processor's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This task's instance of store `name`, with keys `K` and values `V` (encoded with the
    /// `state` crate's codec). The processor must have declared it.
    pub fn store<K, V>(&self, name: &str) -> Result<KvStore<K, V>, StoreAccessError>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        if !self.declared.iter().any(|s| s == name) {
            return Err(StoreAccessError::NotDeclared {
                node: self.node.to_string(),
                store: name.to_owned(),
            });
        }
        let task = self
            .task
            .as_ref()
            .ok_or_else(|| StoreAccessError::NoTask(name.to_owned()))?;
        Ok(task
            .store(name)
            .ok_or_else(|| StoreAccessError::NoTask(name.to_owned()))??)
    }
}

/// A task's directory: `root/<task>`.
pub(crate) fn task_dir(root: &Path, task: TaskId) -> PathBuf {
    root.join(task.to_string())
}

const CHECKPOINT_FILE: &str = ".checkpoint";
const CHECKPOINT_VERSION: u32 = 1;

/// A task's checkpoint: per store, the changelog offset the local store holds everything
/// below.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    version: u32,
    /// Store name → next changelog offset.
    pub offsets: BTreeMap<String, i64>,
}

impl Checkpoint {
    /// A checkpoint of `offsets`.
    pub fn new(offsets: BTreeMap<String, i64>) -> Self {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            offsets,
        }
    }

    /// Reads the checkpoint in `dir`; `None` when there is none or it cannot be read (a torn
    /// or foreign file means the same as none: restore from the beginning).
    pub fn read(dir: &Path) -> Option<Checkpoint> {
        let path = dir.join(CHECKPOINT_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<Checkpoint>(&text) {
            Ok(c) if c.version == CHECKPOINT_VERSION => Some(c),
            Ok(c) => {
                tracing::warn!(path = %path.display(), version = c.version, "checkpoint of another version ignored");
                None
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unreadable checkpoint ignored");
                None
            }
        }
    }

    /// Writes it to `dir` atomically (a temporary file renamed over the old one).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        let tmp = dir.join(".checkpoint.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, dir.join(CHECKPOINT_FILE))
    }

    /// Removes the checkpoint in `dir`, if any.
    pub fn remove(dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(dir.join(CHECKPOINT_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_survives_a_write_and_a_torn_one_reads_as_none() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(Checkpoint::read(tmp.path()), None);
        let c = Checkpoint::new(BTreeMap::from([("counts".to_owned(), 42)]));
        c.write(tmp.path()).expect("write");
        assert_eq!(Checkpoint::read(tmp.path()), Some(c));
        std::fs::write(tmp.path().join(CHECKPOINT_FILE), "{\"version\":1,\"offs").expect("write");
        assert_eq!(Checkpoint::read(tmp.path()), None);
        Checkpoint::remove(tmp.path()).expect("remove");
        Checkpoint::remove(tmp.path()).expect("remove twice");
    }

    #[test]
    fn task_ids_parse_back_and_bad_ones_say_why() {
        assert!("x_1".parse::<TaskId>().is_err());
        assert!(
            "12".parse::<TaskId>()
                .expect_err("no underscore")
                .contains("not a task id")
        );
    }

    #[test]
    fn a_processor_reaches_only_the_stores_it_declared() {
        let dir = state::StateConfig::temporary().open().expect("dir");
        let task = TaskId {
            subtopology: 0,
            partition: 0,
        };
        let ctx = ProcessorContext::with_local_stores("p", task, dir, &[StoreSpec::new("a")]);
        ctx.store::<String, u64>("a")
            .expect("declared")
            .put("k", &1)
            .expect("put");
        assert!(matches!(
            ctx.store::<String, u64>("b"),
            Err(StoreAccessError::NotDeclared { .. })
        ));
        assert!(matches!(
            ProcessorContext::detached("p").store::<String, u64>("a"),
            Err(StoreAccessError::NotDeclared { .. })
        ));
    }
}
