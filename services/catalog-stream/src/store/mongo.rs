//! The MongoDB backend: the `products` collection the CDC source watches, and the
//! `complete_products` and `product_status` collections of the view.
//!
//! A product's `_id` is its identity `{mallId, productId}`, so change events (deletes too,
//! which carry only the document key) say which product they are about; a unique compound
//! index on `(mallId, productId)` enforces the identity a second time, as SPEC §2 asks.

use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{FindOptions, IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};

use super::{
    CompleteProduct, Page, ProductStatus, StoreError, StoredProduct, UpsertOutcome, ViewChange,
    next_version, now_ms,
};
use crate::product::{Product, ProductKey};

/// How often an optimistic write is retried when another writer won the race.
const MAX_WRITE_ATTEMPTS: usize = 32;

/// The `_id` of a product's documents.
pub fn identity(key: &ProductKey) -> Document {
    doc! {"mallId": &key.mall_id, "productId": &key.product_id}
}

/// The filter that finds a product's document. Lookups go through the unique compound index's
/// fields rather than `{_id: identity}`: both name the same document, but not every server plans
/// an equality on an embedded-document `_id` as an index lookup (SecantusDB scans the whole
/// collection for it, which made every write O(n)), while every server uses the compound index.
fn by_identity(key: &ProductKey) -> Document {
    identity(key)
}

/// [`by_identity`] with a condition on the document's version.
fn by_identity_and_version(key: &ProductKey, version: impl Into<Bson>) -> Document {
    let mut filter = by_identity(key);
    filter.insert("version", version.into());
    filter
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == 11000,
        ErrorKind::Command(command) => command.code == 11000,
        _ => false,
    }
}

/// The unique identity index; one on identity and version for the version-guarded writes; one
/// on `productId` alone for the lookups that omit the mall ([`distinct_malls`]).
///
/// MongoDB would serve the guarded writes from the unique index's prefix, but a server whose
/// planner only picks an index covering every filtered field (SecantusDB, the test server here)
/// scans the collection instead, which made each view write O(n): the 10k-product soak slowed from
/// 16 to 2.5 products/s. The extra index costs one more key per write on MongoDB.
async fn identity_indexes(collection: &Collection<Document>) -> Result<(), StoreError> {
    let named = |name: &str| IndexOptions::builder().name(name.to_owned()).build();
    collection
        .create_indexes([
            IndexModel::builder()
                .keys(doc! {"mallId": 1, "productId": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("mallId_productId_unique".to_owned())
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! {"mallId": 1, "productId": 1, "version": 1})
                .options(named("mallId_productId_version"))
                .build(),
            IndexModel::builder()
                .keys(doc! {"productId": 1})
                .options(named("productId"))
                .build(),
        ])
        .await?;
    Ok(())
}

async fn ping(database: &Database) -> bool {
    database.run_command(doc! {"ping": 1}).await.is_ok()
}

async fn distinct_malls(
    collection: &Collection<Document>,
    product_id: &str,
) -> Result<Vec<String>, StoreError> {
    let mut malls: Vec<String> = collection
        .find(doc! {"productId": product_id})
        .projection(doc! {"mallId": 1})
        .await?
        .try_collect::<Vec<Document>>()
        .await?
        .into_iter()
        .filter_map(|document| document.get_str("mallId").ok().map(str::to_owned))
        .collect();
    malls.sort();
    malls.dedup();
    Ok(malls)
}

/// The products collection.
#[derive(Clone)]
pub struct MongoProductStore {
    database: Database,
    products: Collection<Document>,
}

impl MongoProductStore {
    /// Opens the collection and creates the unique identity index.
    pub async fn open(database: Database, collection: &str) -> Result<Self, StoreError> {
        let products = database.collection::<Document>(collection);
        identity_indexes(&products).await?;
        Ok(Self { database, products })
    }

    /// Creates or replaces the product with a new version (optimistic: retried when a
    /// concurrent writer of the same identity won).
    pub async fn upsert(&self, product: &Product) -> Result<(UpsertOutcome, i64), StoreError> {
        let key = product.key();
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self.get(&key).await?;
            let version = next_version(current.as_ref().map(|stored| stored.version));
            let document = product_document(product, version)?;
            match current {
                None => match self.products.insert_one(document).await {
                    Ok(_) => return Ok((UpsertOutcome::Created, version)),
                    Err(error) if is_duplicate_key(&error) => continue,
                    Err(error) => return Err(error.into()),
                },
                Some(previous) => {
                    let replaced = self
                        .products
                        .find_one_and_replace(
                            by_identity_and_version(&key, previous.version),
                            document,
                        )
                        .return_document(ReturnDocument::Before)
                        .await?;
                    if replaced.is_some() {
                        return Ok((UpsertOutcome::Updated, version));
                    }
                }
            }
        }
        Err(StoreError::Corrupt {
            what: "product",
            message: format!("{key}: too many concurrent writers; retry"),
        })
    }

    /// Deletes the product.
    pub async fn delete(&self, key: &ProductKey) -> Result<bool, StoreError> {
        let result = self.products.delete_one(by_identity(key)).await?;
        Ok(result.deleted_count > 0)
    }

    /// The stored product.
    pub async fn get(&self, key: &ProductKey) -> Result<Option<StoredProduct>, StoreError> {
        self.products
            .find_one(by_identity(key))
            .await?
            .map(|document| {
                bson::from_document(document).map_err(|e| StoreError::corrupt("product", e))
            })
            .transpose()
    }

    /// The malls with a product of this id.
    pub async fn malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        distinct_malls(&self.products, product_id).await
    }

    /// Whether MongoDB answers.
    pub async fn ping(&self) -> bool {
        ping(&self.database).await
    }
}

fn product_document(product: &Product, version: i64) -> Result<Document, StoreError> {
    stored_product_document(&StoredProduct {
        product: product.clone(),
        version,
        updated_at_ms: now_ms(),
    })
}

/// A stored product as its document in the products collection (`_id` its identity): what the
/// change-data-capture source reads, whichever store it watches.
pub fn stored_product_document(stored: &StoredProduct) -> Result<Document, StoreError> {
    let mut document = bson::to_document(stored).map_err(|e| StoreError::corrupt("product", e))?;
    document.insert("_id", identity(&stored.product.key()));
    Ok(document)
}

/// The complete-products view and the status of every product.
#[derive(Clone)]
pub struct MongoViewStore {
    database: Database,
    complete: Collection<Document>,
    status: Collection<Document>,
}

impl MongoViewStore {
    /// Opens the two collections and their indexes.
    pub async fn open(
        database: Database,
        complete_collection: &str,
        status_collection: &str,
    ) -> Result<Self, StoreError> {
        let complete = database.collection::<Document>(complete_collection);
        let status = database.collection::<Document>(status_collection);
        identity_indexes(&complete).await?;
        identity_indexes(&status).await?;
        Ok(Self {
            database,
            complete,
            status,
        })
    }

    /// Applies a change when it is newer than the view's; the view is written before the status,
    /// so a crash between the two is repaired by the redelivered event.
    ///
    /// The status is the guard: a `Collected` older than the recorded status (a late event of a
    /// deleted or failed product, whose complete document is gone so the guarded upsert would
    /// insert it again) is taken back out, and a removal deletes the complete document again
    /// after recording its status, so a `Collected` racing with it cannot survive either.
    pub async fn apply(&self, change: &ViewChange) -> Result<bool, StoreError> {
        let key = change.key();
        let version = change.version();
        let older = by_identity_and_version(&key, doc! {"$lt": version});
        match change {
            ViewChange::Collected(complete) => {
                let mut document = bson::to_document(complete)
                    .map_err(|e| StoreError::corrupt("complete product", e))?;
                document.insert("_id", identity(&key));
                guarded_replace(&self.complete, &key, version, document).await?;
            }
            ViewChange::Failed { .. } | ViewChange::Removed { .. } => {
                self.complete.delete_one(older.clone()).await?;
            }
        }
        let status = change.status(now_ms());
        let mut document =
            bson::to_document(&status).map_err(|e| StoreError::corrupt("status", e))?;
        document.insert("_id", identity(&key));
        let applied = guarded_replace(&self.status, &key, version, document).await?;
        match change {
            ViewChange::Collected(_) if !applied => {
                let newer = self
                    .status(&key)
                    .await?
                    .is_some_and(|recorded| recorded.version > version);
                if newer {
                    self.complete
                        .delete_one(by_identity_and_version(&key, version))
                        .await?;
                }
            }
            ViewChange::Failed { .. } | ViewChange::Removed { .. } => {
                self.complete.delete_one(older).await?;
            }
            ViewChange::Collected(_) => {}
        }
        Ok(applied)
    }

    /// One complete product.
    pub async fn get(&self, key: &ProductKey) -> Result<Option<CompleteProduct>, StoreError> {
        self.complete
            .find_one(by_identity(key))
            .await?
            .map(|document| {
                bson::from_document(document)
                    .map_err(|e| StoreError::corrupt("complete product", e))
            })
            .transpose()
    }

    /// The malls with a complete product of this id.
    pub async fn malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        distinct_malls(&self.complete, product_id).await
    }

    /// The malls with a recorded status for a product of this id (deleted ones included).
    pub async fn status_malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        distinct_malls(&self.status, product_id).await
    }

    /// A page ordered by (mallId, productId).
    pub async fn list(
        &self,
        mall_id: Option<&str>,
        after: Option<&ProductKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut filter = Document::new();
        let mut clauses: Vec<Bson> = Vec::new();
        if let Some(mall_id) = mall_id {
            clauses.push(Bson::Document(doc! {"mallId": mall_id}));
        }
        if let Some(after) = after {
            clauses.push(Bson::Document(doc! {"$or": [
                {"mallId": {"$gt": &after.mall_id}},
                {"mallId": &after.mall_id, "productId": {"$gt": &after.product_id}},
            ]}));
        }
        if !clauses.is_empty() {
            filter.insert("$and", clauses);
        }
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let documents: Vec<Document> = self
            .complete
            .find(filter)
            .with_options(
                FindOptions::builder()
                    .sort(doc! {"mallId": 1, "productId": 1})
                    .limit(fetch)
                    .build(),
            )
            .await?
            .try_collect()
            .await?;
        let mut items = documents
            .into_iter()
            .map(|document| {
                bson::from_document::<CompleteProduct>(document)
                    .map_err(|e| StoreError::corrupt("complete product", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|item| item.product.key())
        } else {
            None
        };
        Ok(Page { items, next_after })
    }

    /// The status of a product.
    pub async fn status(&self, key: &ProductKey) -> Result<Option<ProductStatus>, StoreError> {
        self.status
            .find_one(by_identity(key))
            .await?
            .map(|document| {
                bson::from_document(document).map_err(|e| StoreError::corrupt("status", e))
            })
            .transpose()
    }

    /// Whether MongoDB answers.
    pub async fn ping(&self) -> bool {
        ping(&self.database).await
    }
}

/// Replaces the document of `key` only when the stored one is older than `version` (or absent);
/// `false` when the stored one is as new or newer.
async fn guarded_replace(
    collection: &Collection<Document>,
    key: &ProductKey,
    version: i64,
    document: Document,
) -> Result<bool, StoreError> {
    let result = collection
        .replace_one(
            by_identity_and_version(key, doc! {"$lt": version}),
            document,
        )
        .upsert(true)
        .await;
    match result {
        Ok(_) => Ok(true),
        // The upsert tried to insert beside a newer document with the same _id.
        Err(error) if is_duplicate_key(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}
