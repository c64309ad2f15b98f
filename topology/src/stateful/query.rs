//! Interactive queries: the stateful operators' stores read from the running application
//! ([`StoreReader`], from [`Runtime::stores`](crate::Runtime::stores)), and which instance
//! owns a key ([`StoreReader::owner_of`]), so a service answers for its own keys and
//! redirects the others to the instance that announced itself for them
//! ([`RuntimeConfig::application_server`](crate::RuntimeConfig::application_server)).
//!
//! Reads cover the tasks running in this instance only; they are not snapshots.

use std::sync::Arc;

use crate::Value;
use crate::graph::{NodeKind, Topology};
use crate::runtime::StoreReader;
use crate::serdes::SerdeError;
use crate::task::TaskId;
use crate::transport::{Transport, TransportError};

use super::stored::{StoredValue, key_bytes, time_bytes, time_from_bytes};
use super::window::{Slot, Window};

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No operator of the topology keeps a store of that name.
    #[error("no store {0} in the topology")]
    UnknownStore(String),
    /// The store could not be read.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The store is read with other types than its operator writes it with.
    #[error(transparent)]
    Access(#[from] crate::task::StoreAccessError),
    /// The reader was not taken from a runtime ([`Runtime::stores`](crate::Runtime::stores)).
    #[error("this reader does not know the runtime's topology and transport")]
    Detached,
    /// The key could not be encoded with its source's key serde.
    #[error("encoding the key: {0}")]
    Serde(#[from] SerdeError),
    /// The log could not say where the key lives.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What [`StoreReader::owner_of`] needs of the runtime.
pub(crate) struct QueryContext {
    pub(crate) topology: Arc<Topology>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) application_id: String,
}

/// Where a key of a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The partition the key is written to.
    pub partition: i32,
    /// The task holding the key's state.
    pub task: TaskId,
    /// Whether that task runs in this instance.
    pub local: bool,
    /// The `host:port` the owning instance announced, when one does.
    pub application_server: Option<String>,
}

/// A key as stores keep it (its bytes) turned back into a value: text when it is UTF-8.
fn key_value(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => Value::String(text),
        Err(e) => Value::Bytes(e.into_bytes().into()),
    }
}

impl StoreReader {
    /// The running tasks that have store `store`.
    fn tasks_with(&self, store: &str) -> Vec<TaskId> {
        self.tasks()
            .into_iter()
            .filter(|t| self.store_names(*t).iter().any(|s| s == store))
            .collect()
    }

    /// The value of `key` in the table or aggregate store `store` (`table`, `count`,
    /// `reduce`, `aggregate`), from whichever running task holds it.
    ///
    /// # Example
    /// ```
    /// # async fn f(driver: &topology::TopologyTestDriver) -> Result<(), Box<dyn std::error::Error>> {
    /// use topology::Value;
    /// let count = driver.stores().table_get("word-counts", &Value::from("the"))?;
    /// # Ok(()) }
    /// ```
    pub fn table_get(&self, store: &str, key: &Value) -> Result<Option<Value>, QueryError> {
        let k = key_bytes(key);
        let encoded = postcard::to_allocvec(&k).map_err(|e| {
            QueryError::State(state::StateError::Encode {
                store: store.to_owned(),
                what: "key",
                source: e,
            })
        })?;
        for task in self.tasks_with(store) {
            // A write kept back until the next commit is the newest value.
            if let Some(kept) = self.kept_back::<Vec<u8>, StoredValue>(task, store, &encoded)? {
                match kept {
                    Some(v) => return Ok(Some(Value::from(v))),
                    None => continue,
                }
            }
            if let Some(s) = self.store::<Vec<u8>, StoredValue>(task, store)?
                && let Some(v) = s.get(&k)?
            {
                return Ok(Some(Value::from(v)));
            }
        }
        Ok(None)
    }

    /// The entries of table or aggregate store `store` whose keys' bytes lie in
    /// `from..=to` (open where `None`), sorted by key bytes; keys come back as text (bytes
    /// when not UTF-8). `table_range(store, None, None)` scans the whole store.
    pub fn table_range(
        &self,
        store: &str,
        from: Option<&Value>,
        to: Option<&Value>,
    ) -> Result<Vec<(Value, Value)>, QueryError> {
        let (from, to) = (from.map(key_bytes), to.map(key_bytes));
        let mut rows = Vec::new();
        for task in self.tasks_with(store) {
            let Some(s) = self.store::<Vec<u8>, StoredValue>(task, store)? else {
                continue;
            };
            for entry in s.iter() {
                let (k, v) = entry?;
                if from.as_ref().is_some_and(|f| &k < f) || to.as_ref().is_some_and(|t| &k > t) {
                    continue;
                }
                rows.push((k, v));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows
            .into_iter()
            .map(|(k, v)| (key_value(k), Value::from(v)))
            .collect())
    }

    /// The windows of `key` in the time-window store `store` (a `windowed_by(..)`
    /// aggregate) that start within `from..=to` (ms), earliest first.
    pub fn window_fetch(
        &self,
        store: &str,
        key: &Value,
        from: i64,
        to: i64,
    ) -> Result<Vec<(Window, Value)>, QueryError> {
        let k = key_bytes(key);
        let mut found = Vec::new();
        for task in self.tasks_with(store) {
            let Some(s) = self.store::<([u8; 8], Vec<u8>), Slot>(task, store)? else {
                continue;
            };
            for entry in s.iter_from(&(time_bytes(from), Vec::new()))? {
                let ((start, entry_key), slot) = entry?;
                let start = time_from_bytes(start);
                if start > to {
                    break;
                }
                if let (true, Slot::Entry { value, end, .. }) = (entry_key == k, slot) {
                    found.push((Window { start, end }, Value::from(value)));
                }
            }
        }
        found.sort_by_key(|(w, _)| *w);
        Ok(found)
    }

    /// The members of the application's consumer group: the `host:port` each announced
    /// and the partitions each owns (empty on the embedded transport: one process owns it).
    pub async fn instances(&self) -> Result<Vec<crate::transport::GroupMember>, QueryError> {
        let context = self.context().ok_or(QueryError::Detached)?;
        Ok(context
            .transport
            .group_members(&context.application_id)
            .await?)
    }

    /// Which partition, task and instance hold `key` of store `store`: the key is encoded
    /// with the key serde of the source feeding the store's sub-topology and placed with
    /// the transport's partitioner (as a record with that key is written), and the owner is
    /// the group member assigned that partition, with the `host:port` it announced.
    pub async fn owner_of(&self, store: &str, key: &Value) -> Result<KeyOwner, QueryError> {
        let context = self.context().ok_or(QueryError::Detached)?;
        let topology = &context.topology;
        let sub = topology
            .subtopologies()
            .iter()
            .find(|s| s.stores.iter().any(|spec| spec.name == store))
            .ok_or_else(|| QueryError::UnknownStore(store.to_owned()))?;
        let (topic, key_serde) = sub
            .nodes
            .iter()
            .find_map(|&i| match &topology.nodes()[i].kind {
                NodeKind::Source {
                    topics, key_serde, ..
                } => topics.first().map(|t| (t.clone(), key_serde.clone())),
                _ => None,
            })
            .ok_or_else(|| QueryError::UnknownStore(store.to_owned()))?;
        let bytes = key_serde.serialize(&topic, true, key).await?;
        let log = context.transport.state_log()?;
        let lookup = topic.clone();
        let partitions = tokio::task::spawn_blocking(move || log.partitions(&lookup))
            .await
            .map_err(|e| TransportError::Layout {
                topic: topic.clone(),
                message: format!("partition lookup: {e}"),
            })??
            .unwrap_or(1);
        let partition = context.transport.partition_for_key(&bytes, partitions);
        let task = TaskId {
            subtopology: sub.id,
            partition,
        };
        let members = context
            .transport
            .group_members(&context.application_id)
            .await?;
        let application_server = members
            .into_iter()
            .find(|m| {
                m.partitions
                    .iter()
                    .any(|tp| *tp.topic == *topic && tp.partition == partition)
            })
            .and_then(|m| m.application_server);
        Ok(KeyOwner {
            partition,
            task,
            local: self.tasks().contains(&task),
            application_server,
        })
    }
}
