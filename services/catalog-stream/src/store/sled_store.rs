//! The sled backend of the standalone mode.
//!
//! [`SledProductStore`] writes each product and its change record (an [`Outbox`] entry) in one
//! sled transaction and flushes before it answers, so an accepted product is never lost and its
//! change is published by the outbox relay whatever the crash. [`SledViewStore`] keeps the view
//! and the status in one transaction too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    CompleteProduct, Page, ProductStatus, StoreError, StoredProduct, UpsertOutcome, ViewChange,
    next_version, now_ms,
};
use crate::product::{Product, ProductKey};

/// Header carrying the outbox sequence number on every relayed change record: the relay skips
/// what the log already holds, so each change is appended exactly once.
pub const OUTBOX_SEQUENCE_HEADER: &str = "catalog.outbox.seq";

/// Identity as a sled key: `mallId NUL productId` (ids cannot contain control characters), so
/// the natural byte order is (mallId, productId).
fn key_bytes(key: &ProductKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.mall_id.len() + key.product_id.len() + 1);
    bytes.extend_from_slice(key.mall_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.product_id.as_bytes());
    bytes
}

fn mall_prefix(mall_id: &str) -> Vec<u8> {
    let mut bytes = mall_id.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn product_id_of(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let split = key.iter().position(|byte| *byte == 0)?;
    Some((&key[..split], &key[split + 1..]))
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(what, e))
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::corrupt(what, e))
}

fn abort(error: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error)
}

fn transaction_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Sled(error),
    }
}

/// Runs a sled call on tokio's blocking pool.
///
/// sled 0.34's transactions and batches take a process-wide write lock that waits for any
/// flush in progress (an fsync), and once a transaction has run every other sled call goes
/// through that lock too: on an async worker they would stall the runtime (2 workers on 2
/// cores) for the length of an fsync.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::corrupt("sled task", error))?
}

/// A change waiting to be published: what the product became (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// The product.
    pub key: ProductKey,
    /// The product after the change; `None` for a deletion.
    pub after: Option<StoredProduct>,
    /// Whether the identity existed before (an update rather than a create).
    pub existed: bool,
    /// When the change was made, ms since the epoch.
    pub ts_ms: i64,
}

/// One flush at a time for many writers (group commit).
///
/// sled 0.34's `flush_async` runs on sled's own IO thread pool, which in practice stays at
/// seven threads; with seven flushes waiting there, the write of the log buffer they wait for
/// queues behind them and the process hangs (seen under a burst of concurrent POSTs). So the
/// store never has more than one flush in flight: a writer takes a ticket once its write is
/// applied, and returns when a flush started after that ticket has completed. Whoever holds the
/// lock flushes for every ticket taken so far, on a blocking thread of tokio's pool.
struct GroupCommit {
    db: sled::Db,
    /// Tickets taken (writes applied in memory).
    requested: AtomicU64,
    /// Every ticket up to this one is on disk.
    durable: AtomicU64,
    leader: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    fn new(db: sled::Db) -> Self {
        Self {
            db,
            requested: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            leader: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns once every write applied before this call is on disk.
    async fn sync(&self) -> Result<(), StoreError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        while self.durable.load(Ordering::SeqCst) < ticket {
            let _leader = self.leader.lock().await;
            if self.durable.load(Ordering::SeqCst) >= ticket {
                break;
            }
            // Every ticket up to `target` was taken after its write was applied.
            let target = self.requested.load(Ordering::SeqCst);
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(|error| StoreError::corrupt("flush task", error))??;
            self.durable.fetch_max(target, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// The change records written with the products, in order.
#[derive(Clone)]
pub struct Outbox {
    tree: sled::Tree,
    notify: Arc<tokio::sync::Notify>,
    commit: Arc<GroupCommit>,
}

impl Outbox {
    /// Up to `max` entries with a sequence number of at least `from`, in order.
    pub fn pending(&self, from: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let mut entries = Vec::new();
        for item in self.tree.range(from.to_be_bytes()..).take(max) {
            let (key, value) = item?;
            let sequence = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|e| StoreError::corrupt("outbox key", e))?;
            entries.push((sequence, decode("outbox entry", &value)?));
        }
        Ok(entries)
    }

    /// Removes every entry up to and including `sequence` (they are published).
    pub fn remove_through(&self, sequence: u64) -> Result<(), StoreError> {
        for item in self.tree.range(..=sequence.to_be_bytes()) {
            let (key, _) = item?;
            self.tree.remove(key)?;
        }
        Ok(())
    }

    /// Entries not yet published.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether everything is published.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Returns once every entry written before this call is on disk: the relay publishes only
    /// durable entries, so a crash never leaves an event for a write the store lost.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.commit.sync().await
    }

    /// Resolves when a new entry may have been written.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

/// Products and their outbox in sled.
#[derive(Clone)]
pub struct SledProductStore {
    products: sled::Tree,
    outbox: Outbox,
}

impl SledProductStore {
    /// Opens the trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            products: db.open_tree("products")?,
            outbox: Outbox {
                tree: db.open_tree("products.outbox")?,
                notify: Arc::new(tokio::sync::Notify::new()),
                commit: Arc::new(GroupCommit::new(db.clone())),
            },
        })
    }

    /// The outbox the relay publishes from.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Writes the product and its change record in one transaction; returns once both are on
    /// disk (flushes are shared between concurrent writers: group commit).
    pub async fn upsert_durable(
        &self,
        product: &Product,
    ) -> Result<(UpsertOutcome, i64), StoreError> {
        let store = self.clone();
        let product = product.clone();
        let outcome = blocking(move || store.upsert(&product)).await?;
        self.outbox.commit.sync().await?;
        self.outbox.notify.notify_waiters();
        Ok(outcome)
    }

    /// Writes the product and its change record in one transaction (not yet flushed).
    pub fn upsert(&self, product: &Product) -> Result<(UpsertOutcome, i64), StoreError> {
        let key = product.key();
        let id = key_bytes(&key);
        let result = (&self.products, &self.outbox.tree).transaction(|(products, outbox)| {
            let previous = match products.get(&id)? {
                Some(bytes) => Some(decode::<StoredProduct>("product", &bytes).map_err(abort)?),
                None => None,
            };
            let stored = StoredProduct {
                product: product.clone(),
                version: next_version(previous.as_ref().map(|p| p.version)),
                updated_at_ms: now_ms(),
            };
            products.insert(id.as_slice(), encode("product", &stored).map_err(abort)?)?;
            let entry = OutboxEntry {
                key: key.clone(),
                existed: previous.is_some(),
                ts_ms: stored.updated_at_ms,
                after: Some(stored.clone()),
            };
            let sequence = outbox.generate_id()?;
            outbox.insert(
                &sequence.to_be_bytes(),
                encode("outbox entry", &entry).map_err(abort)?,
            )?;
            let outcome = if previous.is_some() {
                UpsertOutcome::Updated
            } else {
                UpsertOutcome::Created
            };
            Ok((outcome, stored.version))
        });
        let outcome = result.map_err(transaction_error)?;
        self.outbox.notify.notify_waiters();
        Ok(outcome)
    }

    /// Deletes the product and records the deletion in the outbox; returns once on disk.
    pub async fn delete_durable(&self, key: &ProductKey) -> Result<bool, StoreError> {
        let store = self.clone();
        let key = key.clone();
        let deleted = blocking(move || store.delete(&key)).await?;
        self.outbox.commit.sync().await?;
        Ok(deleted)
    }

    /// Deletes the product and records the deletion in the outbox (not yet flushed).
    pub fn delete(&self, key: &ProductKey) -> Result<bool, StoreError> {
        let id = key_bytes(key);
        let result = (&self.products, &self.outbox.tree).transaction(|(products, outbox)| {
            if products.remove(id.as_slice())?.is_none() {
                return Ok(false);
            }
            let entry = OutboxEntry {
                key: key.clone(),
                after: None,
                existed: true,
                ts_ms: now_ms(),
            };
            let sequence = outbox.generate_id()?;
            outbox.insert(
                &sequence.to_be_bytes(),
                encode("outbox entry", &entry).map_err(abort)?,
            )?;
            Ok(true)
        });
        let deleted = result.map_err(transaction_error)?;
        self.outbox.notify.notify_waiters();
        Ok(deleted)
    }

    /// The stored product.
    pub fn get(&self, key: &ProductKey) -> Result<Option<StoredProduct>, StoreError> {
        self.products
            .get(key_bytes(key))?
            .map(|bytes| decode("product", &bytes))
            .transpose()
    }

    /// The malls with a product of this id.
    pub fn malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        malls_with(&self.products, product_id)
    }

    /// How many products are stored.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Whether no product is stored.
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }
}

fn malls_with(tree: &sled::Tree, product_id: &str) -> Result<Vec<String>, StoreError> {
    let mut malls = Vec::new();
    for item in tree.iter().keys() {
        let key = item?;
        if let Some((mall, product)) = product_id_of(&key)
            && product == product_id.as_bytes()
        {
            malls.push(String::from_utf8_lossy(mall).into_owned());
        }
    }
    Ok(malls)
}

/// The view and the status in sled.
#[derive(Clone)]
pub struct SledViewStore {
    complete: sled::Tree,
    status: sled::Tree,
}

impl SledViewStore {
    /// Opens the trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            complete: db.open_tree("view.complete_products")?,
            status: db.open_tree("view.product_status")?,
        })
    }

    /// Applies a change when it is newer than the status recorded; view and status change in
    /// one transaction.
    pub fn apply(&self, change: &ViewChange) -> Result<bool, StoreError> {
        let id = key_bytes(&change.key());
        let version = change.version();
        let status = change.status(now_ms());
        let result = (&self.complete, &self.status).transaction(|(complete, statuses)| {
            if let Some(bytes) = statuses.get(&id)? {
                let current: ProductStatus = decode("status", &bytes).map_err(abort)?;
                if current.version >= version {
                    return Ok(false);
                }
            }
            match change {
                ViewChange::Collected(product) => {
                    complete.insert(
                        id.as_slice(),
                        encode("complete product", product).map_err(abort)?,
                    )?;
                }
                ViewChange::Failed { .. } | ViewChange::Removed { .. } => {
                    complete.remove(id.as_slice())?;
                }
            }
            statuses.insert(id.as_slice(), encode("status", &status).map_err(abort)?)?;
            Ok(true)
        });
        result.map_err(transaction_error)
    }

    /// One complete product.
    pub fn get(&self, key: &ProductKey) -> Result<Option<CompleteProduct>, StoreError> {
        self.complete
            .get(key_bytes(key))?
            .map(|bytes| decode("complete product", &bytes))
            .transpose()
    }

    /// The malls with a complete product of this id.
    pub fn malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        malls_with(&self.complete, product_id)
    }

    /// The malls with a recorded status for a product of this id (deleted ones included).
    pub fn status_malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        malls_with(&self.status, product_id)
    }

    /// A page ordered by (mallId, productId).
    pub fn list(
        &self,
        mall_id: Option<&str>,
        after: Option<&ProductKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let prefix = mall_id.map(mall_prefix).unwrap_or_default();
        let start = match after {
            // Strictly after: the smallest key greater than `after` is `after` followed by 0.
            Some(after) => {
                let mut start = key_bytes(after);
                start.push(0);
                start.max(prefix.clone())
            }
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        for item in self.complete.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            items.push(decode::<CompleteProduct>("complete product", &value)?);
            if items.len() > limit {
                break;
            }
        }
        let next_after = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|item| item.product.key())
        } else {
            None
        };
        Ok(Page { items, next_after })
    }

    /// The status of a product.
    pub fn status(&self, key: &ProductKey) -> Result<Option<ProductStatus>, StoreError> {
        self.status
            .get(key_bytes(key))?
            .map(|bytes| decode("status", &bytes))
            .transpose()
    }

    /// How many complete products there are.
    pub fn len(&self) -> usize {
        self.complete.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.complete.is_empty()
    }
}
