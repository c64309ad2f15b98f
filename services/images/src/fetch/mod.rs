//! Fetching one image from a URL: configuration, the SSRF guard, content sniffing, the fetcher
//! itself and its retry helper.

mod config;
mod error;
mod fetcher;
mod guard;
mod retry;
mod sniff;

pub use config::{FetchConfig, FetchConfigError};
pub use error::FetchError;
pub use fetcher::{FetchedImage, ImageFetcher};
pub use guard::{AddressGuard, GuardedResolver};
pub use retry::{FetchFailure, Fetched, RetryPolicy};
pub use sniff::{ImageFormat, sniff};
