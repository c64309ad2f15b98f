//! `state`: sled-backed stores used by the topology engine.
//!
//! This crate sits at the bottom of the dependency graph: it depends on nothing else in the
//! workspace, and `topology`, `connectors` and the services depend on it.
//!
//! - [`StateConfig`] / [`StateDir`]: one sled database, one tree per store.
//! - [`KvStore`]: typed key-value store (postcard encoding), optional bounded read cache.
//! - [`IdempotencyStore`]: record id → outcome with an atomic `check_and_record`, and a
//!   per-key [`SourcePosition`] guard that rejects stale (older or equal) updates.
//! - [`StateDir::transaction`] / [`Transaction`]: atomic writes across stores.
//! - [`ChangelogSink`]: every committed write, for a compacted changelog topic; `restore_from`
//!   fills an empty store back from it, [`StateDir::apply_changelog`] applies a changelog's tail
//!   over a store restored from a checkpoint.
//!
//! The engine (`topology`) opens one [`StateDir`] per task and gives it a sink that produces to
//! the task's changelog partition. The image pipeline needs only [`KvStore::update`] (one
//! compare-and-swap per change, its source position in the value); [`IdempotencyStore`] and
//! [`Transaction`] stay for pipelines that key idempotency by record id or write several stores
//! per record atomically.
//!
//! # Example
//!
//! ```
//! use state::{SourcePosition, StateConfig, StateError};
//! # fn main() -> Result<(), StateError> {
//! let dir = StateConfig::temporary().open()?;
//! let stored = dir.store::<String, String>("stored-images")?;
//! let idem = dir.idempotency::<String>("image-collector")?;
//! let done = dir.transaction(&[&stored, &idem], |tx| {
//!     if !tx.advance_position(&idem, "m1/p1", SourcePosition::new(10, 1))?.is_accepted() {
//!         return Ok(false);
//!     }
//!     tx.put(&stored, "m1/p1", &"s3://bucket/products/m1/p1/ab.png".to_string())?;
//!     Ok::<_, StateError>(true)
//! })?;
//! assert!(done);
//! # Ok(()) }
//! ```

mod blocks;
mod cache;
mod changelog;
pub mod codec;
mod dir;
mod error;
mod idempotency;
mod kv;
mod position;
mod raw;
mod transaction;

pub use cache::CacheStats;
pub use changelog::{ChangelogRecord, ChangelogSink, MemoryChangelog};
pub use dir::{StateConfig, StateDir, open_sled, store_name_problem};
pub use error::{Result, SinkError, StateError};
pub use idempotency::{IdempotencyStore, PositionCheck, Recorded, record_id};
pub use kv::KvStore;
pub use position::SourcePosition;
pub use raw::{StoreOptions, StoreStats};
pub use transaction::{Transaction, TxStore};
