//! The OpenAPI 3 document of the HTTP API (`GET /openapi.json`). Each service serves the part
//! it implements ([`Api`]): a client or fuzzer reading a service's document must not find
//! routes there that this service answers with 404. Tests check that every documented route
//! answers as documented.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::complete_products::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::http::json_response;
use crate::product::{
    MAX_CONTENT_BYTES, MAX_ID_BYTES, MAX_IMAGE_URL_BYTES, MAX_PRICE_BYTES, MAX_TITLE_BYTES,
};

/// Which part of the HTTP API a service implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The standalone process: every route.
    All,
    /// `product-collector`: `POST /api/v1/products`.
    ProductCollector,
    /// `complete-products`: the reads, the status and the delete.
    CompleteProducts,
    /// `image-pipeline`: the operational routes and the pipeline's per-product state.
    ImagePipeline,
    /// `cdc-source`: the operational routes only.
    OpsOnly,
}

impl Api {
    fn serves(self, path: &str) -> bool {
        let products = path == "/api/v1/products";
        let complete = path.starts_with("/api/v1/complete-products")
            || path == "/api/v1/products/{productId}/status";
        let pipeline = path.starts_with("/api/v1/pipeline/");
        match self {
            Self::All => true,
            Self::ProductCollector => !complete && !pipeline,
            Self::CompleteProducts => !products && !pipeline,
            Self::ImagePipeline => !products && !complete,
            Self::OpsOnly => !products && !complete && !pipeline,
        }
    }
}

/// `GET /openapi.json` for `api`.
pub fn response(document: &Value) -> Response {
    json_response(StatusCode::OK, document)
}

/// The document of `api`: [`document`] without the paths `api` does not serve, and without
/// the schemas only those paths used.
pub fn document_for(api: Api) -> Value {
    let mut document = document();
    if let Some(paths) = document["paths"].as_object_mut() {
        paths.retain(|path, _| api.serves(path));
    }
    let used = |document: &Value, name: &str| {
        document
            .to_string()
            .contains(&format!("\"#/components/schemas/{name}\""))
    };
    // Schemas refer to each other: drop unreferenced ones until none is left to drop.
    loop {
        let names: Vec<String> = document["components"]["schemas"]
            .as_object()
            .map(|schemas| schemas.keys().cloned().collect())
            .unwrap_or_default();
        let unused: Vec<String> = names
            .into_iter()
            .filter(|name| !used(&document, name))
            .collect();
        if unused.is_empty() {
            break;
        }
        if let Some(schemas) = document["components"]["schemas"].as_object_mut() {
            for name in &unused {
                schemas.remove(name);
            }
        }
    }
    let writes = document["paths"].as_object().is_some_and(|paths| {
        paths
            .values()
            .any(|item| item.to_string().contains("bearerAuth"))
    });
    if !writes && let Some(components) = document["components"].as_object_mut() {
        components.remove("securitySchemes");
    }
    document
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn success_response(description: &str, data: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {
        "type": "object", "required": ["message", "data"],
        "properties": {"message": {"type": "string", "enum": ["success"]}, "data": data}
    }}}})
}

/// An id: no control characters (Unicode `Cc`, what `char::is_control` refuses), at most
/// `MAX_ID_BYTES` bytes of UTF-8 (`maxLength` counts characters, so it is only an upper bound
/// there). Without the pattern fuzzers mostly generate ids the API refuses with 400.
fn id_schema() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": MAX_ID_BYTES,
           "pattern": ID_PATTERN,
           "description": format!("At most {MAX_ID_BYTES} bytes of UTF-8, no control characters")})
}

const ID_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$";

fn mall_parameter() -> Value {
    json!({"name": "mallId", "in": "query", "required": false,
           "description": "The mall, needed when the product id exists in several malls",
           "schema": id_schema()})
}

fn product_id_parameter() -> Value {
    json!({"name": "productId", "in": "path", "required": true,
           "schema": id_schema()})
}

/// The write operations: a bearer token when one is configured, nothing otherwise (`{}`).
fn write_security() -> Value {
    json!([{"bearerAuth": []}, {}])
}

fn unauthorized_response() -> Value {
    let mut response = error_response(
        "An API token is configured and the request has no `Authorization: Bearer` header, or a wrong token",
    );
    response["headers"] = json!({"WWW-Authenticate": {"description": "`Bearer realm=\"catalog-stream\"`", "schema": {"type": "string"}}});
    response
}

/// The whole document (every route, as the standalone process serves them).
pub fn document() -> Value {
    let text = |max: usize| json!({"type": "string", "minLength": 1, "maxLength": max});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "catalog-stream",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Products pushed by shops; their main images collected into object storage; complete products served."
        },
        "paths": {
            "/api/v1/products": {"post": {
                "operationId": "postProduct",
                "summary": "Create or replace a product (identity: mallId + productId)",
                "security": write_security(),
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProductInput"}}}},
                "responses": {
                    "401": unauthorized_response(),
                    "201": success_response("Created", json!({"$ref": "#/components/schemas/AcceptedProduct"})),
                    "200": success_response("Replaced (the image is collected again)", json!({"$ref": "#/components/schemas/AcceptedProduct"})),
                    "400": error_response("A field is missing, empty, too long or malformed; `field` names it"),
                    "413": error_response("The body is larger than 1 MiB"),
                    "415": error_response("The body is not JSON"),
                    "503": error_response("The product store does not answer")
                }
            }},
            "/api/v1/complete-products": {"get": {
                "operationId": "listCompleteProducts",
                "summary": "Products whose image has been collected, ordered by (mallId, productId)",
                "parameters": [
                    mall_parameter(),
                    {"name": "limit", "in": "query", "required": false,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE}},
                    {"name": "cursor", "in": "query", "required": false,
                     "description": "The `nextCursor` of the previous page", "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "A page", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["message", "data"],
                        "properties": {
                            "message": {"type": "string", "enum": ["success"]},
                            "data": {"type": "array", "items": {"$ref": "#/components/schemas/CompleteProduct"}},
                            "nextCursor": {"type": "string", "description": "Present while more remain"}
                        }
                    }}}},
                    "400": error_response("A bad limit, mallId or cursor"),
                    "503": error_response("The view does not answer")
                }
            }},
            "/api/v1/complete-products/{productId}": {
                "get": {
                    "operationId": "getCompleteProduct",
                    "parameters": [product_id_parameter(), mall_parameter()],
                    "responses": {
                        "200": success_response("The complete product", json!({"$ref": "#/components/schemas/CompleteProduct"})),
                        "400": error_response("A bad productId or mallId"),
                        "404": error_response("No such product, or its image is not collected"),
                        "409": error_response("The product id exists in several malls: `details.mallIds`"),
                        "503": error_response("The view does not answer")
                    }
                },
                "delete": {
                    "operationId": "deleteCompleteProduct",
                    "summary": "Delete the product; its stored image is removed through the pipeline",
                    "security": write_security(),
                    "parameters": [product_id_parameter(), mall_parameter()],
                    "responses": {
                        "401": unauthorized_response(),
                        "200": success_response("Deleted", json!({"type": "object", "required": ["mallId", "productId", "deleted"], "properties": {
                            "mallId": {"type": "string"}, "productId": {"type": "string"}, "deleted": {"type": "boolean"}}})),
                        "400": error_response("A bad productId or mallId"),
                        "404": error_response("No such product"),
                        "409": error_response("The product id exists in several malls: `details.mallIds`"),
                        "503": error_response("A store does not answer")
                    }
                }
            },
            "/api/v1/products/{productId}/status": {"get": {
                "operationId": "getProductStatus",
                "parameters": [product_id_parameter(), mall_parameter()],
                "responses": {
                    "200": success_response("Where the product is in the pipeline", json!({"$ref": "#/components/schemas/ProductStatus"})),
                    "400": error_response("A bad productId or mallId"),
                    "404": error_response("No such product"),
                    "409": error_response("The product id exists in several malls: `details.mallIds`"),
                    "503": error_response("A store does not answer")
                }
            }},
            "/api/v1/pipeline/products/{productId}/state": {"get": {
                "operationId": "getPipelineProductState",
                "description": "The image pipeline's state of one product, read from the task store holding it in this instance (an interactive query). 404 when no task of this instance holds it: `details.instances` lists the group's members, their announced addresses and partitions.",
                "parameters": [product_id_parameter(), mall_parameter()],
                "responses": {
                    "200": success_response("The product's pipeline state", json!({"type": "object", "required": ["mallId", "productId", "task", "state"], "properties": {
                        "mallId": {"type": "string"}, "productId": {"type": "string"},
                        "task": {"type": "string"}, "instance": {"type": ["string", "null"]},
                        "state": {"type": "object"}}})),
                    "400": error_response("A bad productId or mallId"),
                    "404": error_response("No task of this instance holds the product: `details.instances`, `details.localTasks`"),
                    "409": error_response("The product id exists in several malls: `details.mallIds`"),
                    "503": error_response("The store does not answer")
                }
            }},
            "/healthz": {"get": {"operationId": "healthz", "responses": {
                "200": success_response("The process answers", json!({"type": "string"}))}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": success_response("Every dependency answers", json!({"type": "object", "additionalProperties": {"type": "boolean"}})),
                "503": error_response("A dependency does not answer: `details` says which")}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "responses": {
                "200": {"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
        },
        "components": {"securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                "description": "The API token configured with `api_token` / `CATALOG_API_TOKEN` (standalone: `--api-token`). Only the write operations use it, and only when one is configured."}
        }, "schemas": {
            "ProductInput": {
                "type": "object", "additionalProperties": false,
                "required": ["mallId", "productId", "title", "content", "price", "imageUrl"],
                "properties": {
                    "mallId": id_schema(),
                    "productId": id_schema(),
                    "title": text(MAX_TITLE_BYTES),
                    "content": text(MAX_CONTENT_BYTES),
                    "price": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$", "maxLength": MAX_PRICE_BYTES},
                    "imageUrl": {"type": "string", "format": "uri", "pattern": "^https?://", "maxLength": MAX_IMAGE_URL_BYTES}
                }
            },
            "AcceptedProduct": {
                "type": "object",
                "required": ["mallId", "productId", "title", "content", "price", "imageUrl", "version"],
                "properties": {
                    "mallId": {"type": "string"}, "productId": {"type": "string"},
                    "title": {"type": "string"}, "content": {"type": "string"},
                    "price": {"type": "string"}, "imageUrl": {"type": "string"},
                    "version": {"type": "integer", "description": "Increases with every write of the product"}
                }
            },
            "CompleteProduct": {
                "type": "object",
                "required": ["mallId", "productId", "title", "content", "price", "imageUrl", "image"],
                "properties": {
                    "mallId": {"type": "string"}, "productId": {"type": "string"},
                    "title": {"type": "string"}, "content": {"type": "string"},
                    "price": {"type": "string"}, "imageUrl": {"type": "string"},
                    "image": {"type": "object", "required": ["uri", "url", "contentType", "size", "sha256", "collectedAt"], "properties": {
                        "uri": {"type": "string", "description": "s3://bucket/key (file:// in the standalone mode)"},
                        "url": {"type": "string", "description": "An HTTP URL serving the stored copy"},
                        "contentType": {"type": "string"},
                        "size": {"type": "integer"},
                        "sha256": {"type": "string"},
                        "collectedAt": {"type": "string", "format": "date-time"}
                    }}
                }
            },
            "ProductStatus": {
                "type": "object", "required": ["mallId", "productId", "state", "version", "checkedAt"],
                "properties": {
                    "mallId": {"type": "string"}, "productId": {"type": "string"},
                    "state": {"type": "string", "enum": ["pending", "collected", "failed", "deleted"]},
                    "reason": {"type": "string", "nullable": true, "description": "Why it failed: not_found, not_an_image, too_large, blocked_address, timeout after N attempts…"},
                    "version": {"type": "integer"},
                    "checkedAt": {"type": "string", "format": "date-time"}
                }
            },
            "Error": {
                "type": "object", "required": ["message", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "code": {"type": "string"},
                    "field": {"type": "string", "description": "The request field to blame"},
                    "details": {"type": "object"}
                }
            }
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(api: Api) -> Vec<String> {
        let mut paths: Vec<String> = document_for(api)["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        paths.sort();
        paths
    }

    const OPS: [&str; 4] = ["/healthz", "/metrics", "/openapi.json", "/readyz"];

    #[test]
    fn each_service_documents_its_own_routes() {
        assert_eq!(document_for(Api::All), document());
        let mut expected: Vec<String> = OPS.iter().map(|path| path.to_string()).collect();
        assert_eq!(paths(Api::OpsOnly), expected);
        expected.push("/api/v1/products".into());
        expected.sort();
        assert_eq!(paths(Api::ProductCollector), expected);
        let mut expected: Vec<String> = OPS
            .iter()
            .chain(&[
                "/api/v1/complete-products",
                "/api/v1/complete-products/{productId}",
                "/api/v1/products/{productId}/status",
            ])
            .map(|path| path.to_string())
            .collect();
        expected.sort();
        assert_eq!(paths(Api::CompleteProducts), expected);
        let mut expected: Vec<String> = OPS
            .iter()
            .chain(&["/api/v1/pipeline/products/{productId}/state"])
            .map(|path| path.to_string())
            .collect();
        expected.sort();
        assert_eq!(paths(Api::ImagePipeline), expected);
    }

    #[test]
    fn every_remaining_reference_resolves() {
        for api in [
            Api::ProductCollector,
            Api::CompleteProducts,
            Api::ImagePipeline,
            Api::OpsOnly,
        ] {
            let document = document_for(api);
            let text = document.to_string();
            for (index, _) in text.match_indices("#/components/schemas/") {
                let rest = &text[index + "#/components/schemas/".len()..];
                let name = &rest[..rest.find('"').expect("end of the reference")];
                assert!(
                    document["components"]["schemas"].get(name).is_some(),
                    "{api:?}: {name} is referenced but gone"
                );
            }
            let schemas = document["components"]["schemas"]
                .as_object()
                .expect("schemas");
            assert!(schemas.contains_key("Error"), "{api:?}");
            if api == Api::OpsOnly {
                assert!(!schemas.contains_key("ProductInput"), "{api:?}");
                assert!(document["components"].get("securitySchemes").is_none());
            }
        }
    }
}
