//! `image-events`: what the image pipeline tells the complete-products sink, as Avro through
//! the Schema Registry. Keyed by the product identity (JSON text of [`ProductKey`]), so every
//! event of one product lands in one partition, in order.

use serde::{Deserialize, Serialize};

use crate::product::{Product, ProductKey};
use crate::store::{CollectedImage, CompleteProduct, ViewChange};

/// The Avro schema of an image event (registered under `{topic}-value`).
pub const IMAGE_EVENT_SCHEMA: &str = r#"{"type":"record","name":"ImageEvent","namespace":"catalog.images","fields":[
{"name":"kind","type":{"type":"enum","name":"ImageEventKind","symbols":["COLLECTED","FAILED","REMOVED"]}},
{"name":"mallId","type":"string"},
{"name":"productId","type":"string"},
{"name":"version","type":"long"},
{"name":"product","type":["null",{"type":"record","name":"ProductFields","fields":[
 {"name":"title","type":"string"},{"name":"content","type":"string"},
 {"name":"price","type":"string"},{"name":"imageUrl","type":"string"}]}],"default":null},
{"name":"image","type":["null",{"type":"record","name":"StoredImage","fields":[
 {"name":"uri","type":"string"},{"name":"httpUrl","type":"string"},{"name":"key","type":"string"},
 {"name":"contentType","type":"string"},{"name":"size","type":"long"},{"name":"sha256","type":"string"},
 {"name":"collectedAtMs","type":"long"}]}],"default":null},
{"name":"reasonCode","type":["null","string"],"default":null},
{"name":"reason","type":["null","string"],"default":null},
{"name":"attempts","type":"long","default":0},
{"name":"removedKeys","type":{"type":"array","items":"string"},"default":[]},
{"name":"occurredAtMs","type":"long"}]}"#;

/// Kind of image event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImageEventKind {
    /// The image of this version is stored.
    Collected,
    /// Collection failed for good.
    Failed,
    /// The product was deleted; its images are gone.
    Removed,
}

/// Product fields carried by a `COLLECTED` event, so the view needs nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductFields {
    /// Title.
    pub title: String,
    /// Content.
    pub content: String,
    /// Price.
    pub price: String,
    /// Original image URL.
    pub image_url: String,
}

/// One image event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEvent {
    /// What happened.
    pub kind: ImageEventKind,
    /// The product.
    pub mall_id: String,
    /// The product.
    pub product_id: String,
    /// The product version it is about.
    pub version: i64,
    /// Product fields (`COLLECTED`).
    #[serde(default)]
    pub product: Option<ProductFields>,
    /// The stored image (`COLLECTED`).
    #[serde(default)]
    pub image: Option<CollectedImage>,
    /// Machine reason (`FAILED`), e.g. `not_found`.
    #[serde(default)]
    pub reason_code: Option<String>,
    /// Human reason (`FAILED`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Fetch attempts made.
    #[serde(default)]
    pub attempts: i64,
    /// Object keys deleted (`REMOVED`, or the previous image replaced by a `COLLECTED`).
    #[serde(default)]
    pub removed_keys: Vec<String>,
    /// When it happened, ms since the epoch.
    pub occurred_at_ms: i64,
}

impl ImageEvent {
    /// The product identity.
    pub fn key(&self) -> ProductKey {
        ProductKey::new(&self.mall_id, &self.product_id)
    }

    /// The view change this event asks for.
    pub fn view_change(&self) -> Result<ViewChange, String> {
        let key = self.key();
        match self.kind {
            ImageEventKind::Collected => {
                let (Some(product), Some(image)) = (&self.product, &self.image) else {
                    return Err("a COLLECTED event needs `product` and `image`".into());
                };
                Ok(ViewChange::Collected(Box::new(CompleteProduct {
                    product: Product {
                        mall_id: self.mall_id.clone(),
                        product_id: self.product_id.clone(),
                        title: product.title.clone(),
                        content: product.content.clone(),
                        price: product.price.clone(),
                        image_url: product.image_url.clone(),
                    },
                    version: self.version,
                    image: image.clone(),
                })))
            }
            ImageEventKind::Failed => Ok(ViewChange::Failed {
                key,
                version: self.version,
                reason: match (&self.reason_code, &self.reason) {
                    (Some(code), Some(reason)) => format!("{code}: {reason}"),
                    (None, Some(reason)) => reason.clone(),
                    (Some(code), None) => code.clone(),
                    (None, None) => "unknown".into(),
                },
            }),
            ImageEventKind::Removed => Ok(ViewChange::Removed {
                key,
                version: self.version,
            }),
        }
    }
}

/// The record key of a product's events: the JSON text of its identity.
pub fn event_key(key: &ProductKey) -> String {
    serde_json::to_string(key).unwrap_or_else(|_| format!("{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parses_and_an_event_resolves_against_it() {
        let schema = apache_avro::Schema::parse_str(IMAGE_EVENT_SCHEMA).expect("schema");
        let event = ImageEvent {
            kind: ImageEventKind::Failed,
            mall_id: "m".into(),
            product_id: "p".into(),
            version: 7,
            product: None,
            image: None,
            reason_code: Some("not_found".into()),
            reason: Some("HTTP 404".into()),
            attempts: 1,
            removed_keys: vec![],
            occurred_at_ms: 1,
        };
        let json = serde_json::to_value(&event).expect("json");
        let avro = apache_avro::types::Value::try_from(json).expect("avro");
        let resolved = avro.resolve(&schema).expect("resolves");
        let back: ImageEvent =
            serde_json::from_value(topology::avro_to_json(&resolved)).expect("back");
        assert_eq!(back, event);
    }
}
