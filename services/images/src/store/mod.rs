//! Object storage for collected images: the [`ObjectStore`] trait, its S3 and local-directory
//! implementations, and the content-addressed key scheme.

mod key;
mod local;
mod s3;

use std::fmt;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use key::{KeyError, image_key};
pub(crate) use key::{content_type_for_key, validate_key};
pub use local::LocalDirObjectStore;
pub use s3::{S3Config, S3ObjectStore};

/// Where an object was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// A URI naming the object in its store: `s3://bucket/key`, or `file:///…` for a local
    /// directory.
    pub uri: String,
    /// The key it was stored under.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// The entity tag the store reported, when it reports one.
    pub etag: Option<String>,
    /// The content type it was stored with.
    pub content_type: String,
    /// An HTTP URL serving it, when the store is configured with one (see
    /// [`ObjectStore::http_url`]).
    pub url: Option<String>,
}

/// An object read back from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectData {
    /// Its bytes.
    pub bytes: Bytes,
    /// Its content type.
    pub content_type: String,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key is not a safe object key (see [`image_key`]).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file-system operation of the local store failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request failed.
    #[error("S3 {op} s3://{bucket}/{key}: {detail}")]
    S3 {
        /// The operation (`PutObject`, …).
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The key or prefix.
        key: String,
        /// The SDK's error with its context.
        detail: String,
    },
    /// The store's configuration is invalid.
    #[error("object store config: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying may succeed (I/O and S3 request failures).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::S3 { .. })
    }
}

/// Stores objects under keys. Object-safe: use it as `Arc<dyn ObjectStore>`.
///
/// # Example
///
/// ```
/// use images::{LocalDirObjectStore, ObjectStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store: Box<dyn ObjectStore> =
///     Box::new(LocalDirObjectStore::new(dir.path(), "http://127.0.0.1:8080")?);
/// let stored = store.put("products/m/p/ab.png", "png bytes".into(), "image/png").await?;
/// assert_eq!(stored.url.as_deref(), Some("http://127.0.0.1:8080/images/products/m/p/ab.png"));
/// assert!(store.exists("products/m/p/ab.png").await?);
/// assert_eq!(store.list("products/m/").await?, vec!["products/m/p/ab.png"]);
/// store.delete("products/m/p/ab.png").await?;
/// assert!(!store.exists("products/m/p/ab.png").await?);
/// # Ok(())
/// # }
/// ```
pub trait ObjectStore: fmt::Debug + Send + Sync {
    /// Stores `bytes` under `key`, replacing any object there.
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>>;

    /// Reads the object under `key`; `None` when there is none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectData>, StoreError>>;

    /// Deletes the object under `key`; deleting a missing object succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether an object exists under `key`.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The keys starting with `prefix`, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// The URI naming `key` in this store (`s3://bucket/key`, `file:///…`).
    fn uri(&self, key: &str) -> String;

    /// An HTTP URL serving `key`: a public base URL, a presigned URL, or the service's own image
    /// route; `None` when the store has none configured.
    fn http_url<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
}
