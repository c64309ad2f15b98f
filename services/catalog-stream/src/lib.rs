//! The catalog-stream services and what they share.
//!
//! - [`product_collector`]: `POST /api/v1/products`, writing to the product store.
//! - [`complete_products`]: the read side: list, get, delete, status.
//! - [`store`]: MongoDB and sled backends of the product store and the view.
//! - [`pipeline`]: the image pipeline topologies and processors.
//! - [`system`]: the system assembled once from its backends (stores, object store,
//!   transport, schema registry, CDC source); [`app`] opens them from settings for each
//!   distributed service, [`standalone`] from a data directory.
//! - [`product`] and [`http`]: the product model with its validation, and what every HTTP
//!   service shares (envelopes, errors, health, metrics).
//!
//! - [`allocator`]: the binary's mimalloc settings.
//!
//! Depends on `topology`, `state`, `connectors` and the `images` crate; nothing depends on it.

pub mod allocator;
pub mod app;
pub mod complete_products;
pub mod http;
pub mod openapi;
pub mod pipeline;
pub mod pipeline_state;
pub mod product;
pub mod product_collector;
pub mod settings;
pub mod standalone;
pub mod store;
pub mod system;
