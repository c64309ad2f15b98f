//! What the image pipeline remembers per product, in sled: the source position of the last
//! change applied, the product version, and the image stored for it. The collector and the
//! remover share it, so a deletion processed while a collection is in flight wins and the
//! late collection removes what it uploaded: never an orphan.

use std::path::Path;

use serde::{Deserialize, Serialize};
use state::{KvStore, StateDir, StateError};

use crate::store::CollectedImage;

/// The store's name (its sled tree, and its changelog topic `{group}-{store}-changelog`).
pub const PRODUCTS_STORE: &str = "image-pipeline.products";

/// Per-product state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProductImageState {
    /// Source position of the last change applied (seconds, ordinal).
    pub position: (i64, i32),
    /// The product version of the last change applied.
    pub version: i64,
    /// The image stored for `version`, if collected.
    pub image: Option<CollectedImage>,
    /// Why the last collection failed, if it did: (code, reason, attempts).
    pub failure: Option<(String, String, i64)>,
    /// Whether the last change was a deletion.
    pub deleted: bool,
    /// Object keys deleted by the last change.
    pub removed_keys: Vec<String>,
}

/// The pipeline's state stores.
#[derive(Clone)]
pub struct PipelineState {
    dir: StateDir,
    products: KvStore<String, ProductImageState>,
}

impl PipelineState {
    /// Opens (or creates) the state under `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let dir = StateDir::open(path)?;
        Self::with_dir(dir)
    }

    /// Uses an open state directory.
    pub fn with_dir(dir: StateDir) -> Result<Self, StateError> {
        let products = dir.store(PRODUCTS_STORE)?;
        Ok(Self { dir, products })
    }

    /// The state of one product.
    pub fn get(&self, key: &str) -> Result<Option<ProductImageState>, StateError> {
        self.products.get(key)
    }

    /// Writes `next` unless the stored position is already past `next.position`; returns the
    /// state that holds afterwards and whether `next` was written.
    pub fn advance(
        &self,
        key: &str,
        next: &ProductImageState,
    ) -> Result<(ProductImageState, bool), StateError> {
        let (current, written) = self.products.update(key, |current| match current {
            Some(current) if current.position > next.position => None,
            _ => Some(next.clone()),
        })?;
        Ok((current.unwrap_or_else(|| next.clone()), written))
    }

    /// The state directory, for the runtime to flush before it commits offsets past the work
    /// recorded here.
    pub fn dir(&self) -> StateDir {
        self.dir.clone()
    }

    /// Products tracked.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
