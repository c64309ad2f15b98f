//! `product-collector`: `POST /api/v1/products` (SPEC §2). Validates, then creates or replaces
//! the product in the product store; the change reaches the pipeline through CDC.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prometheus::{IntCounterVec, Opts};

use crate::http::{ApiError, ApiToken, JsonBody, require_token, success};
use crate::product::validate_product;
use crate::store::{ProductStore, UpsertOutcome};

/// What the handler needs.
#[derive(Clone)]
pub struct ProductCollector {
    store: ProductStore,
    requests: IntCounterVec,
    api_token: Option<ApiToken>,
}

impl ProductCollector {
    /// A collector over `store`, registering its counters in `registry`.
    pub fn new(store: ProductStore, registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "catalog_products_posted_total",
                "POST /api/v1/products by outcome (created, updated, rejected, failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self {
            store,
            requests,
            api_token: None,
        })
    }

    /// Requires `Authorization: Bearer <token>` on `POST /api/v1/products` when `token` is
    /// given.
    pub fn with_api_token(mut self, token: Option<ApiToken>) -> Self {
        self.api_token = token;
        self
    }

    /// The store it writes to.
    pub fn store(&self) -> &ProductStore {
        &self.store
    }
}

/// The product routes.
pub fn routes(collector: ProductCollector) -> Router {
    let token = collector.api_token.clone();
    let router = Router::new()
        .route("/api/v1/products", post(post_product))
        .with_state(collector);
    require_token(router, token)
}

async fn post_product(
    State(collector): State<ProductCollector>,
    body: Result<JsonBody, ApiError>,
) -> Response {
    let outcome = async {
        let JsonBody(body) = body?;
        let product = validate_product(&body)
            .map_err(|error| ApiError::invalid(error.field, error.message))?;
        let (outcome, version) = collector
            .store
            .upsert(&product)
            .await
            .map_err(|error| ApiError::unavailable("the product store", &error))?;
        Ok::<_, ApiError>((outcome, product, version))
    }
    .await;
    match outcome {
        Ok((outcome, product, version)) => {
            let (status, label) = match outcome {
                UpsertOutcome::Created => (StatusCode::CREATED, "created"),
                UpsertOutcome::Updated => (StatusCode::OK, "updated"),
            };
            collector.requests.with_label_values(&[label]).inc();
            let mut data = serde_json::to_value(&product).unwrap_or_default();
            if let Some(object) = data.as_object_mut() {
                object.insert("version".into(), version.into());
            }
            success(status, data)
        }
        Err(error) => {
            let label = if error.status.is_server_error() {
                "failed"
            } else {
                "rejected"
            };
            collector.requests.with_label_values(&[label]).inc();
            error.into_response()
        }
    }
}
