//! The write-back view of a task store that the point-keyed operators (tables, aggregates,
//! time windows) write through: a write is kept back in the task ([`crate::task`]'s
//! `WriteBack`) and reaches the store and its changelog at the next commit (or once the task
//! holds many), so a key updated many times between commits is written once, as Kafka
//! Streams' record cache does. Reads see kept-back writes first.
//!
//! The record that first kept a write back for a partition holds that partition's offset
//! until the write is flushed and its changelog record acknowledged: a commit never runs ahead
//! of the state it covers, and a revoked partition's kept-back writes are dropped with the
//! records that made them (the new owner processes those again).

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use state::KvStore;

use crate::processor::ProcessError;
use crate::runtime::{CURRENT_RECORD, flush_write_back};
use crate::task::{StoreAccessError, TaskStores};

use super::{OperatorContext, state};

/// A task store written back at commits.
pub(crate) struct Cached<K, V> {
    task: Option<Arc<TaskStores>>,
    store: KvStore<K, V>,
}

impl OperatorContext {
    /// The task's store `name`, written back at commits.
    pub(crate) fn cached<K, V>(&self, name: &str) -> Result<Cached<K, V>, StoreAccessError>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        Ok(Cached {
            task: self.task().cloned(),
            store: self.store(name)?,
        })
    }
}

impl<K, V> Cached<K, V>
where
    K: Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// The value at `key`: kept back, or stored.
    pub(crate) fn get(&self, key: &K) -> Result<Option<V>, ProcessError> {
        if let Some(task) = &self.task {
            let bytes = state(self.store.encode_key(key))?;
            if let Some(kept) = task.kept_back::<K, V>(self.store.name(), &bytes)? {
                return Ok(kept);
            }
        }
        state(self.store.get(key))
    }

    /// Writes `value` (`None`: deletes) at `key`: kept back when the write is a record's in a
    /// running task, straight to the store otherwise (an operator called directly).
    pub(crate) fn set(&self, key: K, value: Option<V>) -> Result<(), ProcessError> {
        let hold = CURRENT_RECORD.try_with(Clone::clone).ok();
        match (&self.task, hold) {
            (Some(task), Some(hold)) => {
                let bytes = state(self.store.encode_key(&key))?;
                if task.keep_back(self.store.clone(), bytes, key, value, Some(hold))? {
                    state(flush_write_back(task))?;
                }
                Ok(())
            }
            _ => {
                match value {
                    Some(v) => state(self.store.put(&key, &v))?,
                    None => state(self.store.delete(&key))?,
                };
                Ok(())
            }
        }
    }

    /// The store under the write-back view (for scans, which see only written values).
    pub(crate) fn store(&self) -> &KvStore<K, V> {
        &self.store
    }
}
