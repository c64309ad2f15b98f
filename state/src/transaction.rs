//! Atomic writes across stores: [`StateDir::transaction`](crate::StateDir::transaction) runs a closure over a
//! [`Transaction`] spanning several stores' sled trees. Either every write in it commits, or
//! (on an error returned by the closure, or a crash) none does. Typical use: the effect record,
//! the idempotency mark and the position bump of one input record.
//!
//! sled may run the closure more than once when it conflicts with a concurrent transaction, so
//! it must have no side effects outside the [`Transaction`]. The read cache is bypassed inside
//! and invalidated after commit; the changelog sees the writes after commit, in order.

use std::borrow::Borrow;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::IVec;
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use crate::blocks;
use crate::codec::{decode, encode};
use crate::error::{Result, StateError};
use crate::kv::KvStore;
use crate::raw::RawStore;

pub(crate) mod sealed {
    use std::sync::Arc;

    /// Gives the trees a store spans; not implementable outside this crate.
    pub trait Sealed {
        fn tx_raws(&self) -> Vec<Arc<crate::raw::RawStore>>;
    }
}

/// A store that can take part in a [`Transaction`]: [`KvStore`] and
/// [`IdempotencyStore`](crate::IdempotencyStore).
pub trait TxStore: sealed::Sealed {}

impl<K, V> sealed::Sealed for KvStore<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    fn tx_raws(&self) -> Vec<Arc<RawStore>> {
        vec![self.raw().clone()]
    }
}
impl<K, V> TxStore for KvStore<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
}

/// The view of the listed stores inside [`StateDir::transaction`](crate::StateDir::transaction). Reads see the
/// transaction's own writes.
pub struct Transaction<'a> {
    stores: &'a [Arc<RawStore>],
    views: &'a [TransactionalTree],
    writes: Vec<(usize, Vec<u8>, Option<IVec>)>,
    failure: Option<UnabortableTransactionError>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field(
                "stores",
                &self.stores.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("writes", &self.writes.len())
            .finish()
    }
}

impl Transaction<'_> {
    pub(crate) fn index(&self, raw: &RawStore) -> Result<usize> {
        self.stores
            .iter()
            .position(|s| std::ptr::eq(Arc::as_ptr(s), raw))
            .ok_or_else(|| StateError::NotInTransaction {
                store: raw.name.clone(),
                listed: self.stores.iter().map(|s| s.name.clone()).collect(),
            })
    }

    fn fail(&mut self, idx: usize, e: UnabortableTransactionError) -> StateError {
        let store = self.stores[idx].name.clone();
        let err = match &e {
            UnabortableTransactionError::Conflict => StateError::Conflict { store },
            UnabortableTransactionError::Storage(source) => StateError::Storage {
                store,
                op: "transaction",
                source: source.clone(),
            },
        };
        self.failure.get_or_insert(e);
        err
    }

    pub(crate) fn raw_get(&mut self, idx: usize, key: &[u8]) -> Result<Option<IVec>> {
        match self.views[idx].get(key) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(idx, e)),
        }
    }

    pub(crate) fn raw_insert(
        &mut self,
        idx: usize,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<Option<IVec>> {
        let value = IVec::from(value);
        match self.views[idx].insert(key.as_slice(), value.clone()) {
            Ok(old) => {
                self.writes.push((idx, key, Some(value)));
                Ok(old)
            }
            Err(e) => Err(self.fail(idx, e)),
        }
    }

    pub(crate) fn raw_remove(&mut self, idx: usize, key: Vec<u8>) -> Result<Option<IVec>> {
        match self.views[idx].remove(key.as_slice()) {
            Ok(old) => {
                if old.is_some() {
                    self.writes.push((idx, key, None));
                }
                Ok(old)
            }
            Err(e) => Err(self.fail(idx, e)),
        }
    }

    /// Reads `key` from `store`.
    pub fn get<K, V, Q>(&mut self, store: &KvStore<K, V>, key: &Q) -> Result<Option<V>>
    where
        K: Serialize + DeserializeOwned + Borrow<Q>,
        V: Serialize + DeserializeOwned,
        Q: Serialize + ?Sized,
    {
        let idx = self.index(store.raw())?;
        let k = store.key_bytes(key)?;
        match self.raw_get(idx, &k)? {
            Some(v) => decode(store.name(), "value", &k, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `value` at `key` in `store`; returns whether a value was replaced.
    pub fn put<K, V, Q>(&mut self, store: &KvStore<K, V>, key: &Q, value: &V) -> Result<bool>
    where
        K: Serialize + DeserializeOwned + Borrow<Q>,
        V: Serialize + DeserializeOwned,
        Q: Serialize + ?Sized,
    {
        let idx = self.index(store.raw())?;
        let k = store.key_bytes(key)?;
        let v = encode(store.name(), "value", value)?;
        Ok(self.raw_insert(idx, k, v)?.is_some())
    }

    /// Deletes `key` from `store`; returns whether it held a value.
    pub fn delete<K, V, Q>(&mut self, store: &KvStore<K, V>, key: &Q) -> Result<bool>
    where
        K: Serialize + DeserializeOwned + Borrow<Q>,
        V: Serialize + DeserializeOwned,
        Q: Serialize + ?Sized,
    {
        let idx = self.index(store.raw())?;
        let k = store.key_bytes(key)?;
        Ok(self.raw_remove(idx, k)?.is_some())
    }

    /// Records `value` for `id` in its block of the records tree `idx`, if absent.
    pub(crate) fn record_if_absent(&mut self, idx: usize, id: &[u8], value: &[u8]) -> Result<bool> {
        let (key, slot) = blocks::locate(id);
        let current = self.raw_get(idx, &key)?;
        let name = &self.stores[idx].name;
        let block = current.as_deref();
        if blocks::find(name, &key, block.unwrap_or_default(), slot)?.is_some() {
            return Ok(false);
        }
        let new = blocks::with_entry(name, &key, block, slot, value)?;
        self.raw_insert(idx, key, new)?;
        Ok(true)
    }
}

/// Runs `f` in one sled transaction over `raws`, then feeds caches and changelog.
pub(crate) fn run_transaction<A, E, F>(raws: &[Arc<RawStore>], f: F) -> Result<A, E>
where
    F: Fn(&mut Transaction<'_>) -> Result<A, E>,
    E: From<StateError>,
{
    let trees: Vec<sled::Tree> = raws.iter().map(|r| r.tree.clone()).collect();
    let outcome = trees
        .as_slice()
        .transaction(|views: &Vec<TransactionalTree>| {
            let mut tx = Transaction {
                stores: raws,
                views,
                writes: Vec::new(),
                failure: None,
            };
            let out = f(&mut tx);
            if let Some(failure) = tx.failure.take() {
                return Err(ConflictableTransactionError::from(failure));
            }
            match out {
                Ok(a) => Ok((a, tx.writes)),
                Err(e) => Err(ConflictableTransactionError::Abort(e)),
            }
        });
    match outcome {
        Ok((a, writes)) => {
            let mut first_err = None;
            for (idx, key, value) in writes {
                if let Err(e) = raws[idx].after_commit(&key, value.as_deref()) {
                    first_err.get_or_insert(e);
                }
            }
            match first_err {
                Some(e) => Err(E::from(e)),
                None => Ok(a),
            }
        }
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(source)) => Err(E::from(StateError::Storage {
            store: raws
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            op: "transaction",
            source,
        })),
    }
}
