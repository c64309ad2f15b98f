//! The router every process serves: its API routes, the ops routes, `/openapi.json`, the
//! fallbacks and the body limit.

use std::sync::Arc;

use axum::Router;

use crate::http::{ReadinessCheck, fallback, method_not_allowed, ops_routes};

/// The full router of a service: its API routes (`documented` says which part of the API they
/// are, for `/openapi.json`), the ops routes, the fallback, body limit.
pub fn service_router(
    api: Router,
    documented: crate::openapi::Api,
    registries: Vec<prometheus::Registry>,
    readiness: ReadinessCheck,
) -> Router {
    let document = Arc::new(crate::openapi::document_for(documented));
    api.merge(ops_routes(registries, readiness))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { crate::openapi::response(&document) }
            }),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::MAX_BODY_BYTES,
        ))
}
