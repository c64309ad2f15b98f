//! Where products and the complete-products view live.
//!
//! Two backends with the same behaviour: MongoDB for the distributed services and sled for the
//! standalone mode. Each is a concrete type; [`ProductStore`] and [`ViewStore`] are enums over
//! them, so services hold one value and no trait objects.
//!
//! Versions: every write of a product gets a new `version`, strictly greater than the one it
//! replaces and than any deletion marker of the same identity (it is built from the wall clock
//! in microseconds, bumped past the previous value). The view applies an image event only when
//! its version is newer than what it holds, so replays and late events never overwrite newer
//! state and a deleted product never comes back from an old event.

mod mongo;
mod sled_store;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use mongo::{MongoProductStore, MongoViewStore, identity, stored_product_document};
pub use sled_store::{
    OUTBOX_SEQUENCE_HEADER, Outbox, OutboxEntry, SledProductStore, SledViewStore,
};

use crate::product::{Product, ProductKey};

/// Errors of either backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// MongoDB failed.
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// sled failed on a write batch shared by several requests (group commit): each of them
    /// gets the same error.
    #[error("sled: {0}")]
    SledShared(std::sync::Arc<sled::Error>),
    /// A stored document could not be read back.
    #[error("stored {what} is unreadable: {message}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
}

impl StoreError {
    fn corrupt(what: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            what,
            message: error.to_string(),
        }
    }
}

/// Whether an upsert created the product or replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// A new identity.
    Created,
    /// An existing identity, replaced.
    Updated,
}

/// A product as stored, with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredProduct {
    /// The product.
    #[serde(flatten)]
    pub product: Product,
    /// Strictly increasing per identity, across deletions.
    pub version: i64,
    /// When it was written, ms since the epoch.
    pub updated_at_ms: i64,
}

/// The collected image of a complete product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectedImage {
    /// `s3://bucket/key` (or `file://` in the standalone mode).
    pub uri: String,
    /// An HTTP URL that serves it.
    pub http_url: String,
    /// Its object key.
    pub key: String,
    /// Content type checked against the bytes.
    pub content_type: String,
    /// Size in bytes.
    pub size: i64,
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// When it was collected, ms since the epoch.
    pub collected_at_ms: i64,
}

/// A product whose image has been collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteProduct {
    /// The product as it was when its image was collected.
    #[serde(flatten)]
    pub product: Product,
    /// The product version the image belongs to.
    pub version: i64,
    /// The stored image.
    pub image: CollectedImage,
}

/// Where a product is in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Accepted, image not collected yet.
    Pending,
    /// Image collected; the product is complete.
    Collected,
    /// Collection failed for good.
    Failed,
    /// Deleted.
    Deleted,
}

/// The pipeline's last word on a product version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductStatus {
    /// The product.
    pub mall_id: String,
    /// The product.
    pub product_id: String,
    /// Its state.
    pub state: PipelineState,
    /// Why it failed (`failed` only), e.g. `not_found: HTTP 404`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The product version this status is about.
    pub version: i64,
    /// When the status was recorded, ms since the epoch.
    pub updated_at_ms: i64,
}

/// What the image pipeline tells the view about one product version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    /// The image of this version is stored.
    Collected(Box<CompleteProduct>),
    /// Collection of this version failed for good.
    Failed {
        /// The product.
        key: ProductKey,
        /// The version.
        version: i64,
        /// Why.
        reason: String,
    },
    /// The product and its images are gone.
    Removed {
        /// The product.
        key: ProductKey,
        /// The deletion's version (newer than every version of the deleted product).
        version: i64,
    },
}

impl ViewChange {
    /// The product concerned.
    pub fn key(&self) -> ProductKey {
        match self {
            ViewChange::Collected(complete) => complete.product.key(),
            ViewChange::Failed { key, .. } | ViewChange::Removed { key, .. } => key.clone(),
        }
    }

    /// The version it is about.
    pub fn version(&self) -> i64 {
        match self {
            ViewChange::Collected(complete) => complete.version,
            ViewChange::Failed { version, .. } | ViewChange::Removed { version, .. } => *version,
        }
    }

    fn status(&self, now_ms: i64) -> ProductStatus {
        let key = self.key();
        let (state, reason) = match self {
            ViewChange::Collected(_) => (PipelineState::Collected, None),
            ViewChange::Failed { reason, .. } => (PipelineState::Failed, Some(reason.clone())),
            ViewChange::Removed { .. } => (PipelineState::Deleted, None),
        };
        ProductStatus {
            mall_id: key.mall_id,
            product_id: key.product_id,
            state,
            reason,
            version: self.version(),
            updated_at_ms: now_ms,
        }
    }
}

/// One page of the complete-products list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The items, ordered by (mallId, productId).
    pub items: Vec<CompleteProduct>,
    /// The key after which the next page starts, while more remain.
    pub next_after: Option<ProductKey>,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The version for a new write: the wall clock in µs, but always past `previous`.
pub fn next_version(previous: Option<i64>) -> i64 {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    match previous {
        Some(previous) if previous >= now_us => previous + 1,
        _ => now_us,
    }
}

/// The products a shop pushed (the CDC source's collection).
#[derive(Clone)]
pub enum ProductStore {
    /// MongoDB, watched by Debezium or `cdc-source`.
    Mongo(MongoProductStore),
    /// sled with an outbox, for the standalone mode.
    Sled(SledProductStore),
}

impl ProductStore {
    /// Creates or replaces the product.
    pub async fn upsert(&self, product: &Product) -> Result<(UpsertOutcome, i64), StoreError> {
        match self {
            ProductStore::Mongo(store) => store.upsert(product).await,
            ProductStore::Sled(store) => store.upsert_durable(product).await,
        }
    }

    /// Deletes the product; `false` when it did not exist.
    pub async fn delete(&self, key: &ProductKey) -> Result<bool, StoreError> {
        match self {
            ProductStore::Mongo(store) => store.delete(key).await,
            ProductStore::Sled(store) => store.delete_durable(key).await,
        }
    }

    /// The stored product.
    pub async fn get(&self, key: &ProductKey) -> Result<Option<StoredProduct>, StoreError> {
        match self {
            ProductStore::Mongo(store) => store.get(key).await,
            ProductStore::Sled(store) => store.get(key),
        }
    }

    /// The malls that have a product with this id.
    pub async fn malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        match self {
            ProductStore::Mongo(store) => store.malls_with(product_id).await,
            ProductStore::Sled(store) => store.malls_with(product_id),
        }
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> bool {
        match self {
            ProductStore::Mongo(store) => store.ping().await,
            ProductStore::Sled(_) => true,
        }
    }
}

/// The complete-products view and the per-product pipeline status.
#[derive(Clone)]
pub enum ViewStore {
    /// MongoDB.
    Mongo(MongoViewStore),
    /// sled.
    Sled(SledViewStore),
}

impl ViewStore {
    /// Applies a change if it is newer than what the view holds; `false` when it was stale.
    pub async fn apply(&self, change: &ViewChange) -> Result<bool, StoreError> {
        match self {
            ViewStore::Mongo(store) => store.apply(change).await,
            ViewStore::Sled(store) => {
                let (store, change) = (store.clone(), change.clone());
                sled_store::blocking(move || store.apply(&change)).await
            }
        }
    }

    /// One complete product.
    pub async fn get(&self, key: &ProductKey) -> Result<Option<CompleteProduct>, StoreError> {
        match self {
            ViewStore::Mongo(store) => store.get(key).await,
            ViewStore::Sled(store) => store.get(key),
        }
    }

    /// The malls that have a complete product with this id.
    pub async fn malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        match self {
            ViewStore::Mongo(store) => store.malls_with(product_id).await,
            ViewStore::Sled(store) => store.malls_with(product_id),
        }
    }

    /// The malls with a recorded status for a product of this id (deleted ones included).
    pub async fn status_malls_with(&self, product_id: &str) -> Result<Vec<String>, StoreError> {
        match self {
            ViewStore::Mongo(store) => store.status_malls_with(product_id).await,
            ViewStore::Sled(store) => store.status_malls_with(product_id),
        }
    }

    /// A page of complete products, optionally of one mall, after `after`.
    pub async fn list(
        &self,
        mall_id: Option<&str>,
        after: Option<&ProductKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        match self {
            ViewStore::Mongo(store) => store.list(mall_id, after, limit).await,
            ViewStore::Sled(store) => store.list(mall_id, after, limit),
        }
    }

    /// The pipeline status of a product.
    pub async fn status(&self, key: &ProductKey) -> Result<Option<ProductStatus>, StoreError> {
        match self {
            ViewStore::Mongo(store) => store.status(key).await,
            ViewStore::Sled(store) => store.status(key),
        }
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> bool {
        match self {
            ViewStore::Mongo(store) => store.ping().await,
            ViewStore::Sled(_) => true,
        }
    }
}
