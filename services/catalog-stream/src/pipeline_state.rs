//! `GET /api/v1/pipeline/products/{productId}/state[?mallId=…]`: the image pipeline's state of
//! one product, read from the task store that holds it in this instance (an interactive query
//! of the engine's `product-images` store): the version applied, the image recorded, the last
//! failure. Served by the processes that run the image pipeline. Without `mallId` the local
//! tasks' stores are scanned for the product id (409 with `details.mallIds` when several malls
//! have it), as the other routes resolve an id.
//!
//! A product's state lives in the task of its partition, on one instance. When no task of
//! this instance holds it, the answer is 404 with `details.instances`: the group's members,
//! the `host:port` each announced (`advertised_address`) and the partitions each owns, so a
//! caller can ask the others; `details.localTasks` are this instance's tasks.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use topology::StoreReader;

use crate::complete_products::check_id;
use crate::http::{ApiError, json_response};
use crate::pipeline::{PRODUCT_IMAGES_STORE, ProductImageState, event_key};
use crate::product::ProductKey;

/// What the route reads: the image pipeline runtime's stores, and what this instance
/// announced.
#[derive(Clone)]
pub struct PipelineState {
    stores: StoreReader,
    advertised_address: Option<String>,
}

impl PipelineState {
    /// Reads through `stores` (the image pipeline runtime's); `advertised_address` is what
    /// this instance announced to the group, if anything.
    pub fn new(stores: StoreReader, advertised_address: Option<String>) -> Self {
        PipelineState {
            stores,
            advertised_address,
        }
    }
}

/// The route.
pub fn routes(state: PipelineState) -> Router {
    Router::new()
        .route(
            "/api/v1/pipeline/products/{product_id}/state",
            get(product_state),
        )
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateQuery {
    mall_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateBody<'a> {
    mall_id: &'a str,
    product_id: &'a str,
    /// The task holding it (`<subtopology>_<partition>`).
    task: String,
    /// This instance's announced address.
    instance: Option<&'a str>,
    state: &'a ProductImageState,
}

async fn product_state(
    State(service): State<PipelineState>,
    Path(product_id): Path<String>,
    query: Result<Query<StateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(None, rejection.body_text()))?;
    check_id("productId", &product_id)?;
    if let Some(mall_id) = &query.mall_id {
        check_id("mallId", mall_id)?;
    }
    let wanted = query
        .mall_id
        .as_ref()
        .map(|mall_id| event_key(&ProductKey::new(mall_id, &product_id)));
    let unavailable = |e: &dyn std::fmt::Display| ApiError::unavailable("the pipeline state", e);
    let mut local_tasks = Vec::new();
    // (mall, task, state) of every local entry of the product.
    let mut found: Vec<(String, String, ProductImageState)> = Vec::new();
    for task in service.stores.tasks() {
        let Some(store) = service
            .stores
            .store::<String, ProductImageState>(task, PRODUCT_IMAGES_STORE)
            .map_err(|e| unavailable(&e))?
        else {
            continue;
        };
        local_tasks.push(task.to_string());
        match (&wanted, &query.mall_id) {
            (Some(key), Some(mall_id)) => {
                if let Some(state) = store.get(key.as_str()).map_err(|e| unavailable(&e))? {
                    found.push((mall_id.clone(), task.to_string(), state));
                }
            }
            // No mall given: the product's entries in this instance's tasks (a scan).
            _ => {
                for entry in store.iter() {
                    let (key, state) = entry.map_err(|e| unavailable(&e))?;
                    if let Ok(key) = serde_json::from_str::<ProductKey>(&key)
                        && key.product_id == product_id
                    {
                        found.push((key.mall_id, task.to_string(), state));
                    }
                }
            }
        }
    }
    match found.as_slice() {
        [(mall_id, task, state)] => {
            let data = StateBody {
                mall_id,
                product_id: &product_id,
                task: task.clone(),
                instance: service.advertised_address.as_deref(),
                state,
            };
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"message": "success", "data": data}),
            ))
        }
        [] => Err(not_held(&service, &product_id, query.mall_id.as_deref(), local_tasks).await),
        several => {
            let malls: Vec<&str> = several.iter().map(|(mall, _, _)| mall.as_str()).collect();
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous_product",
                format!("product `{product_id}` exists in several malls; give `mallId`"),
            )
            .with_details(serde_json::json!({ "mallIds": malls })))
        }
    }
}

/// 404: no running task of this instance holds the product; names the group's instances.
async fn not_held(
    service: &PipelineState,
    product_id: &str,
    mall_id: Option<&str>,
    local_tasks: Vec<String>,
) -> ApiError {
    let instances: Vec<serde_json::Value> = match service.stores.instances().await {
        Ok(members) => members
            .into_iter()
            .map(|m| {
                serde_json::json!({
                    "address": m.application_server,
                    "partitions": m.partitions.iter().map(|tp| tp.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "the consumer group could not be described");
            Vec::new()
        }
    };
    let which = match mall_id {
        Some(mall_id) => format!("product `{product_id}` of mall `{mall_id}`"),
        None => format!("product `{product_id}`"),
    };
    ApiError::not_found(format!(
        "no running task of this instance holds {which}: it is unknown, or held by another instance"
    ))
    .with_details(serde_json::json!({
        "instances": instances,
        "localTasks": local_tasks,
    }))
}
