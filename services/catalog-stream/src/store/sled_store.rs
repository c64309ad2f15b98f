//! The sled backend of the standalone mode.
//!
//! [`SledProductStore`] writes each product and its change record (an [`Outbox`] entry) in one
//! sled transaction and flushes before it answers, so an accepted product is never lost and its
//! change is published by the outbox relay whatever the crash. One writer thread does this for
//! every request queued meanwhile at once (group commit: one transaction, one fsync). [`SledViewStore`] keeps the view
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

/// The most requests applied in one transaction and made durable by one flush.
const MAX_BATCH: usize = 1024;

/// A write asked of the writer thread.
enum Write {
    Upsert(Product),
    Delete(ProductKey),
}

/// What a write did.
enum Written {
    Upserted(UpsertOutcome, i64),
    Deleted(bool),
}

struct Request {
    write: Write,
    reply: tokio::sync::oneshot::Sender<Result<Written, StoreError>>,
}

/// How far the outbox is on disk: every entry with a lower sequence number is durable.
struct Durable {
    /// One past the highest durable sequence number (0: none).
    through: AtomicU64,
}

/// The one thread that writes products (group commit).
///
/// Every POST and DELETE of the standalone mode hands its write to this thread and waits for
/// the answer. The thread takes whatever requests are queued (up to [`MAX_BATCH`]), applies
/// them in arrival order in **one** sled transaction over the products and the outbox, flushes
/// the database once (one fsync), and only then answers each request: a 2xx still means
/// durable, but concurrent requests share the transaction and the fsync. One writer also keeps
/// (mallId, productId) unique and the last write of an identity the one that stays, with
/// versions and outbox sequence numbers in the order the writes arrived.
///
/// Before, each request ran its own sled transaction: sled 0.34 serializes transactions behind
/// a process-wide lock that also waits for every flush in progress in any sled database of the
/// process (the log, the state), so requests queued there one by one (948 requests/s, p99 157
/// ms with wrk).
struct Writer {
    sender: Option<std::sync::mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(
        db: sled::Db,
        products: sled::Tree,
        outbox: sled::Tree,
        durable: Arc<Durable>,
        notify: Arc<tokio::sync::Notify>,
    ) -> Result<Self, StoreError> {
        let (sender, receiver) = std::sync::mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("product-writer".into())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match receiver.try_recv() {
                            Ok(request) => batch.push(request),
                            Err(_) => break,
                        }
                    }
                    commit_batch(&db, &products, &outbox, &durable, batch);
                    notify.notify_waiters();
                }
            })
            .map_err(|error| StoreError::corrupt("product writer thread", error))?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let stopped = || StoreError::corrupt("product writer", "the writer thread has stopped");
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.sender
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { write, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    /// Stops the thread and waits for it, so the database is closed when the last handle of
    /// the store is dropped (a test may open the same directory again right after).
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Applies `batch` in one transaction, flushes, then answers every request.
fn commit_batch(
    db: &sled::Db,
    products: &sled::Tree,
    outbox: &sled::Tree,
    durable: &Durable,
    batch: Vec<Request>,
) {
    let (writes, replies): (Vec<Write>, Vec<_>) = batch
        .into_iter()
        .map(|request| (request.write, request.reply))
        .unzip();
    let applied = (products, outbox)
        .transaction(|(products, outbox)| {
            let mut results = Vec::with_capacity(writes.len());
            let mut last_sequence = None;
            for write in &writes {
                let result = match write {
                    Write::Upsert(product) => upsert_in(products, outbox, product)?,
                    Write::Delete(key) => delete_in(products, outbox, key)?,
                };
                let result = result.map(|(written, sequence)| {
                    last_sequence = sequence.or(last_sequence);
                    written
                });
                results.push(result);
            }
            Ok((results, last_sequence))
        })
        .map_err(transaction_error)
        .and_then(|applied| {
            db.flush()?;
            Ok(applied)
        });
    match applied {
        Ok((results, last_sequence)) => {
            if let Some(sequence) = last_sequence {
                durable.through.fetch_max(sequence + 1, Ordering::SeqCst);
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            let error = match error {
                StoreError::Sled(error) => StoreError::SledShared(Arc::new(error)),
                other => other,
            };
            for reply in replies {
                let shared = match &error {
                    StoreError::SledShared(error) => StoreError::SledShared(error.clone()),
                    other => StoreError::corrupt("product batch", other),
                };
                let _ = reply.send(Err(shared));
            }
        }
    }
}

type Applied = Result<(Written, Option<u64>), StoreError>;

/// One upsert inside the batch transaction. An unreadable stored product fails this request
/// only (`Ok(Err(..))`); a storage error fails the whole batch.
fn upsert_in(
    products: &sled::transaction::TransactionalTree,
    outbox: &sled::transaction::TransactionalTree,
    product: &Product,
) -> Result<Applied, ConflictableTransactionError<StoreError>> {
    let key = product.key();
    let id = key_bytes(&key);
    let previous = match products.get(&id)? {
        Some(bytes) => match decode::<StoredProduct>("product", &bytes) {
            Ok(previous) => Some(previous),
            Err(error) => return Ok(Err(error)),
        },
        None => None,
    };
    let stored = StoredProduct {
        product: product.clone(),
        version: next_version(previous.as_ref().map(|p| p.version)),
        updated_at_ms: now_ms(),
    };
    let stored_bytes = match encode("product", &stored) {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Err(error)),
    };
    let version = stored.version;
    let entry = OutboxEntry {
        key,
        existed: previous.is_some(),
        ts_ms: stored.updated_at_ms,
        after: Some(stored),
    };
    let entry_bytes = match encode("outbox entry", &entry) {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Err(error)),
    };
    products.insert(id.as_slice(), stored_bytes)?;
    let sequence = outbox.generate_id()?;
    outbox.insert(&sequence.to_be_bytes(), entry_bytes)?;
    let outcome = if previous.is_some() {
        UpsertOutcome::Updated
    } else {
        UpsertOutcome::Created
    };
    Ok(Ok((Written::Upserted(outcome, version), Some(sequence))))
}

/// One deletion inside the batch transaction.
fn delete_in(
    products: &sled::transaction::TransactionalTree,
    outbox: &sled::transaction::TransactionalTree,
    key: &ProductKey,
) -> Result<Applied, ConflictableTransactionError<StoreError>> {
    let id = key_bytes(key);
    if products.get(id.as_slice())?.is_none() {
        return Ok(Ok((Written::Deleted(false), None)));
    }
    let entry = OutboxEntry {
        key: key.clone(),
        after: None,
        existed: true,
        ts_ms: now_ms(),
    };
    let entry_bytes = match encode("outbox entry", &entry) {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Err(error)),
    };
    products.remove(id.as_slice())?;
    let sequence = outbox.generate_id()?;
    outbox.insert(&sequence.to_be_bytes(), entry_bytes)?;
    Ok(Ok((Written::Deleted(true), Some(sequence))))
}

/// The change records written with the products, in order.
#[derive(Clone)]
pub struct Outbox {
    tree: sled::Tree,
    notify: Arc<tokio::sync::Notify>,
    durable: Arc<Durable>,
}

impl Outbox {
    /// Up to `max` entries with a sequence number of at least `from`, in order; only entries
    /// already on disk: the relay publishes only durable entries, so a crash never leaves an
    /// event for a write the store lost.
    pub fn pending(&self, from: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let through = self.durable.through.load(Ordering::SeqCst);
        let mut entries = Vec::new();
        if from >= through {
            return Ok(entries);
        }
        for item in self
            .tree
            .range(from.to_be_bytes()..through.to_be_bytes())
            .take(max)
        {
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

    /// Resolves when a new entry may have become durable.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

/// Products and their outbox in sled.
#[derive(Clone)]
pub struct SledProductStore {
    products: sled::Tree,
    outbox: Outbox,
    writer: Arc<Writer>,
}

impl SledProductStore {
    /// Opens the trees in `db` and starts the writer thread (it stops when the last clone of
    /// the store is dropped).
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let products = db.open_tree("products")?;
        let tree = db.open_tree("products.outbox")?;
        // What was recovered from disk is durable.
        let through = match tree.last()? {
            Some((key, _)) => <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|e| StoreError::corrupt("outbox key", e))?
                .saturating_add(1),
            None => 0,
        };
        let durable = Arc::new(Durable {
            through: AtomicU64::new(through),
        });
        let notify = Arc::new(tokio::sync::Notify::new());
        let writer = Writer::start(
            db.clone(),
            products.clone(),
            tree.clone(),
            durable.clone(),
            notify.clone(),
        )?;
        Ok(Self {
            products,
            outbox: Outbox {
                tree,
                notify,
                durable,
            },
            writer: Arc::new(writer),
        })
    }

    /// The outbox the relay publishes from.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Writes the product and its change record in one transaction; returns once both are on
    /// disk (the transaction and the flush are shared with concurrent writers: group commit).
    pub async fn upsert_durable(
        &self,
        product: &Product,
    ) -> Result<(UpsertOutcome, i64), StoreError> {
        match self.writer.write(Write::Upsert(product.clone())).await? {
            Written::Upserted(outcome, version) => Ok((outcome, version)),
            Written::Deleted(_) => Err(StoreError::corrupt("product writer", "wrong answer")),
        }
    }

    /// Deletes the product and records the deletion in the outbox; returns once on disk.
    pub async fn delete_durable(&self, key: &ProductKey) -> Result<bool, StoreError> {
        match self.writer.write(Write::Delete(key.clone())).await? {
            Written::Deleted(deleted) => Ok(deleted),
            Written::Upserted(..) => Err(StoreError::corrupt("product writer", "wrong answer")),
        }
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
