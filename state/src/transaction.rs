//! Atomic writes across stores: [`StateDir::transaction`] runs a closure over a
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
use crate::dir::StateDir;
use crate::error::{Result, StateError};
use crate::idempotency::{
    IdempotencyStore, PositionCheck, SourcePosition, check_position, now_ms, parse_position,
};
use crate::kv::KvStore;
use crate::raw::RawStore;

mod sealed {
    use std::sync::Arc;

    /// Gives the trees a store spans; not implementable outside this crate.
    pub trait Sealed {
        fn tx_raws(&self) -> Vec<Arc<crate::raw::RawStore>>;
    }
}

/// A store that can take part in a [`Transaction`]: [`KvStore`] and [`IdempotencyStore`].
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

impl<V> sealed::Sealed for IdempotencyStore<V>
where
    V: Serialize + DeserializeOwned,
{
    fn tx_raws(&self) -> Vec<Arc<RawStore>> {
        vec![self.records_raw().clone(), self.positions_raw().clone()]
    }
}
impl<V> TxStore for IdempotencyStore<V> where V: Serialize + DeserializeOwned {}

/// The view of the listed stores inside [`StateDir::transaction`]. Reads see the
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
    fn index(&self, raw: &RawStore) -> Result<usize> {
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

    fn raw_get(&mut self, idx: usize, key: &[u8]) -> Result<Option<IVec>> {
        match self.views[idx].get(key) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(idx, e)),
        }
    }

    fn raw_insert(&mut self, idx: usize, key: Vec<u8>, value: Vec<u8>) -> Result<Option<IVec>> {
        let value = IVec::from(value);
        match self.views[idx].insert(key.as_slice(), value.clone()) {
            Ok(old) => {
                self.writes.push((idx, key, Some(value)));
                Ok(old)
            }
            Err(e) => Err(self.fail(idx, e)),
        }
    }

    fn raw_remove(&mut self, idx: usize, key: Vec<u8>) -> Result<Option<IVec>> {
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
