//! `complete-products`: the read side (SPEC §2). Lists and serves complete products, answers a
//! product's pipeline status, and deletes products (the deletion then flows through CDC to the
//! image remover, which removes the stored images).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::http::{ApiError, ApiToken, Success, json_response, require_token, success};
use crate::product::{MAX_ID_BYTES, ProductKey};
use crate::store::{
    CompleteProduct, PipelineState, ProductStore, StoreError, ViewChange, ViewStore, next_version,
    now_ms,
};

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest `limit` accepted.
pub const MAX_PAGE_SIZE: usize = 500;

/// What the handlers need.
#[derive(Clone)]
pub struct CompleteProducts {
    products: ProductStore,
    view: ViewStore,
    api_token: Option<ApiToken>,
    image_links: Option<std::sync::Arc<dyn images::ObjectStore>>,
}

impl CompleteProducts {
    /// The read side over the product store (for deletes and status) and the view.
    pub fn new(products: ProductStore, view: ViewStore) -> Self {
        Self {
            products,
            view,
            api_token: None,
            image_links: None,
        }
    }

    /// Renders each image's HTTP URL when it is served (a fresh presigned URL, or the public
    /// base URL of `store`), instead of the URL recorded at collection time, which may have
    /// expired.
    pub fn with_image_links(mut self, store: std::sync::Arc<dyn images::ObjectStore>) -> Self {
        self.image_links = Some(store);
        self
    }

    async fn refresh_links(&self, items: &mut [CompleteProduct]) {
        let Some(store) = &self.image_links else {
            return;
        };
        for item in items {
            match store.http_url(&item.image.key).await {
                Ok(Some(url)) => item.image.http_url = url,
                Ok(None) => {}
                // The recorded URL still names the object; a failed signing must not fail
                // the read.
                Err(error) => {
                    tracing::warn!(%error, key = %item.image.key, "image URL not renewed")
                }
            }
        }
    }

    /// Requires `Authorization: Bearer <token>` on `DELETE /api/v1/complete-products/{id}`
    /// when `token` is given; the reads stay open.
    pub fn with_api_token(mut self, token: Option<ApiToken>) -> Self {
        self.api_token = token;
        self
    }
}

/// The complete-products and status routes.
pub fn routes(service: CompleteProducts) -> Router {
    let token = service.api_token.clone();
    let router = Router::new()
        .route("/api/v1/complete-products", get(list))
        .route(
            "/api/v1/complete-products/{product_id}",
            get(get_one).delete(delete_one),
        )
        .route("/api/v1/products/{product_id}/status", get(status))
        .with_state(service);
    require_token(router, token)
}

fn store_error(error: StoreError) -> ApiError {
    ApiError::unavailable("the product view", &error)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    mall_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A complete product as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CompleteProductBody<'a> {
    mall_id: &'a str,
    product_id: &'a str,
    title: &'a str,
    content: &'a str,
    price: &'a str,
    image_url: &'a str,
    image: ImageBody<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageBody<'a> {
    uri: &'a str,
    url: &'a str,
    content_type: &'a str,
    size: i64,
    sha256: &'a str,
    collected_at: String,
}

fn body(complete: &CompleteProduct) -> CompleteProductBody<'_> {
    let product = &complete.product;
    let image = &complete.image;
    CompleteProductBody {
        mall_id: &product.mall_id,
        product_id: &product.product_id,
        title: &product.title,
        content: &product.content,
        price: &product.price,
        image_url: &product.image_url,
        image: ImageBody {
            uri: &image.uri,
            url: &image.http_url,
            content_type: &image.content_type,
            size: image.size,
            sha256: &image.sha256,
            collected_at: rfc3339_ms(image.collected_at_ms),
        },
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from ms since the epoch (civil-from-days, proleptic Gregorian).
fn rfc3339_ms(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

fn encode_cursor(key: &ProductKey) -> String {
    hex::encode(serde_json::json!([key.mall_id, key.product_id]).to_string())
}

fn decode_cursor(cursor: &str) -> Result<ProductKey, ApiError> {
    let invalid = || {
        ApiError::invalid(
            Some("cursor".into()),
            "`cursor` is not a cursor this API returned",
        )
    };
    let bytes = hex::decode(cursor).map_err(|_| invalid())?;
    let (mall_id, product_id): (String, String) =
        serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    Ok(ProductKey::new(mall_id, product_id))
}

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(raw) => match raw.parse::<usize>() {
            Ok(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => Ok(limit),
            _ => Err(ApiError::invalid(
                Some("limit".into()),
                format!("`limit` must be an integer from 1 to {MAX_PAGE_SIZE}"),
            )),
        },
    }
}

pub(crate) fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            Some(field.into()),
            format!("`{field}` must be 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

async fn list(
    State(service): State<CompleteProducts>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(None, rejection.body_text()))?;
    let limit = parse_limit(query.limit.as_deref())?;
    if let Some(mall_id) = &query.mall_id {
        check_id("mallId", mall_id)?;
    }
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut page = service
        .view
        .list(query.mall_id.as_deref(), after.as_ref(), limit)
        .await
        .map_err(store_error)?;
    service.refresh_links(&mut page.items).await;
    let data: Vec<_> = page.items.iter().map(body).collect();
    Ok(json_response(
        StatusCode::OK,
        &Success {
            message: "success",
            data,
            next_cursor: page.next_after.as_ref().map(encode_cursor),
        },
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MallQuery {
    mall_id: Option<String>,
}

/// Resolves `{productId}` + optional `mallId` to one identity among `candidates` (the malls that
/// have the product): 404 when none, 409 with the candidates when several and no mallId.
fn resolve(
    product_id: &str,
    mall_id: Option<String>,
    candidates: Vec<String>,
) -> Result<ProductKey, ApiError> {
    match mall_id {
        Some(mall_id) => Ok(ProductKey::new(mall_id, product_id)),
        None => match candidates.as_slice() {
            [] => Err(ApiError::not_found(format!("no product `{product_id}`"))),
            [only] => Ok(ProductKey::new(only.clone(), product_id)),
            several => Err(ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous_product",
                format!("product `{product_id}` exists in several malls; give `mallId`"),
            )
            .with_details(serde_json::json!({ "mallIds": several }))),
        },
    }
}

fn mall_query(
    query: Result<Query<MallQuery>, axum::extract::rejection::QueryRejection>,
    product_id: &str,
) -> Result<Option<String>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(None, rejection.body_text()))?;
    check_id("productId", product_id)?;
    if let Some(mall_id) = &query.mall_id {
        check_id("mallId", mall_id)?;
    }
    Ok(query.mall_id)
}

async fn get_one(
    State(service): State<CompleteProducts>,
    Path(product_id): Path<String>,
    query: Result<Query<MallQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let mall_id = mall_query(query, &product_id)?;
    let candidates = match mall_id {
        Some(_) => Vec::new(),
        None => service
            .view
            .malls_with(&product_id)
            .await
            .map_err(store_error)?,
    };
    let key = resolve(&product_id, mall_id, candidates)?;
    match service.view.get(&key).await.map_err(store_error)? {
        Some(mut complete) => {
            service
                .refresh_links(std::slice::from_mut(&mut complete))
                .await;
            Ok(success(StatusCode::OK, body(&complete)))
        }
        None => Err(ApiError::not_found(format!(
            "no complete product `{product_id}` in mall `{}`",
            key.mall_id
        ))),
    }
}

async fn delete_one(
    State(service): State<CompleteProducts>,
    Path(product_id): Path<String>,
    query: Result<Query<MallQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let mall_id = mall_query(query, &product_id)?;
    let candidates = match mall_id {
        Some(_) => Vec::new(),
        None => service
            .products
            .malls_with(&product_id)
            .await
            .map_err(store_error)?,
    };
    let key = resolve(&product_id, mall_id, candidates)?;
    let Some(stored) = service.products.get(&key).await.map_err(store_error)? else {
        return Err(ApiError::not_found(format!(
            "no product `{product_id}` in mall `{}`",
            key.mall_id
        )));
    };
    // Hide it from the view first, so a GET after this DELETE answers 404 even before the
    // deletion has travelled through CDC; the removal's version is past the product's, so no
    // late event of the deleted product can bring it back.
    service
        .view
        .apply(&ViewChange::Removed {
            key: key.clone(),
            version: next_version(Some(stored.version)),
        })
        .await
        .map_err(store_error)?;
    service.products.delete(&key).await.map_err(store_error)?;
    Ok(success(
        StatusCode::OK,
        serde_json::json!({"mallId": key.mall_id, "productId": key.product_id, "deleted": true}),
    ))
}

async fn status(
    State(service): State<CompleteProducts>,
    Path(product_id): Path<String>,
    query: Result<Query<MallQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let mall_id = mall_query(query, &product_id)?;
    let candidates = match mall_id {
        Some(_) => Vec::new(),
        None => {
            let mut malls = service
                .products
                .malls_with(&product_id)
                .await
                .map_err(store_error)?;
            malls.extend(
                service
                    .view
                    .status_malls_with(&product_id)
                    .await
                    .map_err(store_error)?,
            );
            malls.sort();
            malls.dedup();
            malls
        }
    };
    let key = resolve(&product_id, mall_id, candidates)?;
    let product = service.products.get(&key).await.map_err(store_error)?;
    let recorded = service.view.status(&key).await.map_err(store_error)?;
    let (state, reason, version) = match (&product, &recorded) {
        (Some(product), Some(status)) if status.version >= product.version => {
            (status.state, status.reason.clone(), product.version)
        }
        (Some(product), _) => (PipelineState::Pending, None, product.version),
        (None, Some(status)) => (PipelineState::Deleted, None, status.version),
        (None, None) => {
            return Err(ApiError::not_found(format!(
                "no product `{product_id}` in mall `{}`",
                key.mall_id
            )));
        }
    };
    Ok(success(
        StatusCode::OK,
        serde_json::json!({
            "mallId": key.mall_id,
            "productId": key.product_id,
            "state": state,
            "reason": reason,
            "version": version,
            "checkedAt": rfc3339_ms(now_ms()),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_678_399_123), "2026-11-26T07:33:19.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let key = ProductKey::new("m/1", "p\"2");
        assert_eq!(decode_cursor(&encode_cursor(&key)).expect("cursor"), key);
        assert_eq!(
            decode_cursor("zz").expect_err("garbage").field.as_deref(),
            Some("cursor")
        );
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(parse_limit(None).expect("default"), DEFAULT_PAGE_SIZE);
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("501")).is_err());
        assert!(parse_limit(Some("-1")).is_err());
        assert_eq!(parse_limit(Some("500")).expect("max"), 500);
    }
}
