//! What the image pipeline remembers per product: the source position of the last change
//! applied, the product version, and the image stored for it. It lives in the task store
//! [`PRODUCT_IMAGES_STORE`], which the collector and the remover share (so upserts and deletes
//! of one product are one task's, on co-partitioned topics): a deletion processed while a
//! collection is in flight wins, and the late collection removes what it uploaded. The store
//! moves with its partitions when instances scale (restored from its changelog partition).

use serde::{Deserialize, Serialize};
use state::{KvStore, SourcePosition, StateError};
use topology::{ProcessError, ProcessorContext};

use crate::store::CollectedImage;

/// The task store's name (declared in the topology file; its changelog topic is
/// `{application_id}-product-images-changelog`).
pub const PRODUCT_IMAGES_STORE: &str = "product-images";

/// The stored form of a position: a `[seconds, ord]` pair, as the store held it before the
/// position had a type of its own (entries already in stores and changelogs stay readable).
mod position_as_pair {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use state::SourcePosition;

    pub fn serialize<S: Serializer>(
        position: &SourcePosition,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        (position.seconds, position.ord).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SourcePosition, D::Error> {
        let (seconds, ord) = <(i64, i32)>::deserialize(deserializer)?;
        Ok(SourcePosition::new(seconds, ord))
    }
}

/// Why the last collection failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionFailure {
    /// The reason code (`not_found`, `not_an_image`, `timeout`, …).
    pub code: String,
    /// The reason, for people.
    pub reason: String,
    /// Fetch attempts made.
    pub attempts: i64,
}

/// Per-product state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProductImageState {
    /// Source position of the last change applied.
    #[serde(with = "position_as_pair")]
    pub position: SourcePosition,
    /// The product version of the last change applied.
    pub version: i64,
    /// The image stored for `version`, if collected.
    pub image: Option<CollectedImage>,
    /// Why the last collection failed, if it did.
    pub failure: Option<CollectionFailure>,
    /// Whether the last change was a deletion.
    pub deleted: bool,
    /// Object keys the last change deletes: recorded before they are deleted, so a replay
    /// after a crash between the two deletes them again.
    pub removed_keys: Vec<String>,
}

/// One task's instance of the per-product state.
#[derive(Clone)]
pub struct ProductImages {
    products: KvStore<String, ProductImageState>,
}

fn unavailable(error: impl std::fmt::Display) -> ProcessError {
    ProcessError::transient(format!("image state: {error}"))
}

impl ProductImages {
    /// The store of the record's task.
    pub fn of(ctx: &ProcessorContext) -> Result<Self, ProcessError> {
        let products = ctx.store(PRODUCT_IMAGES_STORE).map_err(unavailable)?;
        Ok(ProductImages { products })
    }

    /// The state of one product.
    pub fn get(&self, key: &str) -> Result<Option<ProductImageState>, ProcessError> {
        self.products.get(key).map_err(unavailable)
    }

    /// Writes `next` unless the stored position is already past `next.position`; returns
    /// whether `next` was written.
    pub fn advance(&self, key: &str, next: &ProductImageState) -> Result<bool, ProcessError> {
        let (_, written) = self
            .products
            .update(key, |current| match current {
                Some(current) if current.position > next.position => None,
                _ => Some(next.clone()),
            })
            .map_err(|e: StateError| unavailable(e))?;
        Ok(written)
    }
}
