//! `/images/…`: the standalone mode serves the images it collected from its data directory
//! (S3 serves them in the distributed deployment).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;

/// The route serving `images`' files.
pub fn images_route(images: Arc<images::LocalDirObjectStore>) -> Router {
    Router::new().route(
        "/images/{*key}",
        axum::routing::get(serve_image).with_state(images),
    )
}

async fn serve_image(
    State(images): State<Arc<images::LocalDirObjectStore>>,
    UrlPath(key): UrlPath<String>,
) -> Response {
    use images::ObjectStore;
    match images.get(&key).await {
        Ok(Some(object)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_str(&object.content_type)
                        .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            object.bytes,
        )
            .into_response(),
        Ok(None) => ApiError::not_found("no such image").into_response(),
        Err(images::StoreError::InvalidKey { .. }) => {
            ApiError::not_found("no such image").into_response()
        }
        Err(error) => ApiError::unavailable("the image directory", &error).into_response(),
    }
    .into_response()
}
