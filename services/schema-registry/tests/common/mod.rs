//! Helpers shared by the integration tests: a real registry server on an ephemeral port.

#![allow(dead_code)]

use std::sync::Arc;

use schema_registry::{Registry, serve};
use schema_registry_converter::async_impl::schema_registry::SrSettings;

/// Starts a registry on `127.0.0.1:0` in the current runtime and returns its base URL.
pub async fn start_server(registry: Arc<Registry>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        if let Err(e) = serve(listener, registry).await {
            panic!("registry server failed: {e}");
        }
    });
    format!("http://{addr}")
}

/// Settings for `schema_registry_converter` pointing at `url`, without any proxy.
pub fn sr_settings(url: &str) -> SrSettings {
    SrSettings::new_builder(url.to_owned())
        .no_proxy()
        .build()
        .expect("schema registry settings")
}
