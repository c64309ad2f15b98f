//! The one TLS stack of the workspace: rustls with the ring crypto provider.
//!
//! `reqwest` is built with `rustls-no-provider` and the AWS SDK with `rustls-ring`, so that no
//! second crypto library (aws-lc) is compiled. `reqwest` then takes rustls' process-wide default
//! provider, which [`install_tls_provider`] sets; [`s3_https_client`] is the SDK's HTTPS client
//! on the same provider.

use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Installs ring as rustls' process-wide crypto provider unless one is installed already.
///
/// Idempotent and cheap; call it before building a `reqwest` client (a client built without a
/// provider panics). [`crate::ImageFetcher::new`] calls it, and so does the binary first thing.
pub fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An `Err` only says another thread installed a provider in between: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The AWS SDK's hyper 1 HTTPS client on rustls with ring (the SDK's own default would be
/// aws-lc), with the platform's root certificates.
pub fn s3_https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}
