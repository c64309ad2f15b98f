//! Everything about collecting a product image: fetching it from the shop's URL safely and
//! storing the bytes in object storage.
//!
//! The crate knows nothing about Kafka or the topology; the image-collector processor calls it.
//!
//! - [`ImageFetcher`] (built from a [`FetchConfig`]) fetches one image over HTTP(S) with an SSRF
//!   guard on every address actually connected to, a streamed size cap, an `image/*` content type
//!   checked against the bytes' magic numbers and a bounded, re-checked redirect chain.
//!   [`ImageFetcher::fetch_with_retry`] adds bounded exponential backoff with jitter for transient
//!   failures only.
//! - [`ObjectStore`] stores the bytes: [`S3ObjectStore`] for the distributed mode and
//!   [`LocalDirObjectStore`] for the standalone mode, under the content-addressed keys made by
//!   [`image_key`].
//! - [`install_tls_provider`] and [`s3_https_client`]: the workspace's one TLS stack (rustls on
//!   ring) for `reqwest` and the AWS SDK.
//!
//! # Example
//!
//! ```no_run
//! use images::{image_key, FetchConfig, ImageFetcher, LocalDirObjectStore, ObjectStore, RetryPolicy};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = ImageFetcher::new(FetchConfig::default())?;
//! let store = LocalDirObjectStore::new("/tmp/images", "http://127.0.0.1:8080")?;
//! let fetched = fetcher
//!     .fetch_with_retry("https://shop.example/p/1.png", &RetryPolicy::default())
//!     .await?;
//! let image = fetched.image;
//! let key = image_key("mall-1", "product-1", &image.sha256, image.extension)?;
//! let stored = store.put(&key, image.bytes.clone(), image.content_type).await?;
//! println!("{} ({} bytes)", stored.uri, stored.size);
//! # Ok(())
//! # }
//! ```

mod fetch;
mod store;
mod tls;

pub use fetch::{
    AddressGuard, FetchConfig, FetchConfigError, FetchError, FetchFailure, Fetched, FetchedImage,
    GuardedResolver, ImageFetcher, ImageFormat, RetryPolicy, sniff,
};
pub use store::{
    KeyError, LocalDirObjectStore, ObjectData, ObjectStore, S3Config, S3ObjectStore, StoreError,
    StoredObject, image_key,
};
pub use tls::{install_tls_provider, s3_https_client};
