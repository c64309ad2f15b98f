//! The product as shops post it, its identity, and the validation rules of SPEC §2.
//!
//! Validation works on the raw JSON value rather than a derived `Deserialize`, so every
//! rejection names the field to blame and no rule depends on serde's error wording.

use serde::{Deserialize, Serialize};

/// Longest `mallId` / `productId`, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest `title`, in bytes.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest `content`, in bytes.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Longest `imageUrl`, in bytes.
pub const MAX_IMAGE_URL_BYTES: usize = 2048;
/// Longest `price`, in bytes.
pub const MAX_PRICE_BYTES: usize = 64;

/// The fields of a product, in the order the API documents them.
pub const FIELDS: [&str; 6] = [
    "mallId",
    "productId",
    "title",
    "content",
    "price",
    "imageUrl",
];

/// A product's identity: unique across the system.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductKey {
    /// The shop.
    pub mall_id: String,
    /// The shop's id for the product.
    pub product_id: String,
}

impl ProductKey {
    /// A key from its two parts.
    pub fn new(mall_id: impl Into<String>, product_id: impl Into<String>) -> Self {
        Self {
            mall_id: mall_id.into(),
            product_id: product_id.into(),
        }
    }
}

impl std::fmt::Display for ProductKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.mall_id, self.product_id)
    }
}

/// A validated product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// The shop.
    pub mall_id: String,
    /// The shop's id for the product.
    pub product_id: String,
    /// Title.
    pub title: String,
    /// Description.
    pub content: String,
    /// Non-negative decimal, kept as the shop wrote it.
    pub price: String,
    /// Absolute http(s) URL of the main image.
    pub image_url: String,
}

impl Product {
    /// The product's identity.
    pub fn key(&self) -> ProductKey {
        ProductKey::new(&self.mall_id, &self.product_id)
    }
}

/// Why a posted product was refused; `field` names the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// The field to blame (`None` when the body as a whole is wrong).
    pub field: Option<String>,
    /// What is wrong, for people.
    pub message: String,
}

impl ValidationError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

/// Validates a posted JSON body against every rule of SPEC §2.
///
/// # Example
/// ```
/// use catalog_stream::product::validate_product;
/// let body = serde_json::json!({"mallId": "m1", "productId": "p1", "title": "Mug",
///     "content": "A mug", "price": "12.50", "imageUrl": "https://img.example/mug.png"});
/// let product = validate_product(&body).unwrap();
/// assert_eq!(product.price, "12.50");
///
/// let bad = serde_json::json!({"mallId": "m1"});
/// assert_eq!(validate_product(&bad).unwrap_err().field.as_deref(), Some("productId"));
/// ```
pub fn validate_product(body: &serde_json::Value) -> Result<Product, ValidationError> {
    let object = body.as_object().ok_or_else(|| ValidationError {
        field: None,
        message: "the body must be a JSON object".to_owned(),
    })?;
    if let Some(unknown) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(ValidationError::field(
            unknown,
            format!(
                "unknown field `{unknown}`; expected only {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let text = |field: &str, limit: usize| -> Result<String, ValidationError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Err(ValidationError::field(
                field,
                format!("`{field}` is required"),
            )),
            Some(serde_json::Value::String(value)) if value.trim().is_empty() => Err(
                ValidationError::field(field, format!("`{field}` must not be empty")),
            ),
            Some(serde_json::Value::String(value)) if value.len() > limit => {
                Err(ValidationError::field(
                    field,
                    format!("`{field}` is {} bytes; the limit is {limit}", value.len()),
                ))
            }
            Some(serde_json::Value::String(value)) => Ok(value.clone()),
            Some(_) => Err(ValidationError::field(
                field,
                format!("`{field}` must be a string"),
            )),
        }
    };
    let product = Product {
        mall_id: text("mallId", MAX_ID_BYTES)?,
        product_id: text("productId", MAX_ID_BYTES)?,
        title: text("title", MAX_TITLE_BYTES)?,
        content: text("content", MAX_CONTENT_BYTES)?,
        price: text("price", MAX_PRICE_BYTES)?,
        image_url: text("imageUrl", MAX_IMAGE_URL_BYTES)?,
    };
    for (field, value) in [
        ("mallId", &product.mall_id),
        ("productId", &product.product_id),
    ] {
        if value.chars().any(char::is_control) {
            return Err(ValidationError::field(
                field,
                format!("`{field}` must not contain control characters"),
            ));
        }
    }
    if !is_non_negative_decimal(&product.price) {
        return Err(ValidationError::field(
            "price",
            "`price` must be a non-negative decimal such as \"12000\" or \"12.50\"",
        ));
    }
    check_image_url(&product.image_url)?;
    Ok(product)
}

/// `digits[.digits]`: no sign, no exponent, no spaces.
fn is_non_negative_decimal(price: &str) -> bool {
    let (whole, fraction) = match price.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (price, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

fn check_image_url(raw: &str) -> Result<(), ValidationError> {
    let invalid = |why: &str| {
        ValidationError::field(
            "imageUrl",
            format!("`imageUrl` must be an absolute http or https URL: {why}"),
        )
    };
    let url = url::Url::parse(raw).map_err(|error| invalid(&error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "scheme `{}` is not allowed",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the URL are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> serde_json::Value {
        json!({"mallId": "m1", "productId": "p1", "title": "Mug", "content": "A mug",
               "price": "12000", "imageUrl": "http://127.0.0.1:9/mug.png"})
    }

    fn field_of(body: serde_json::Value) -> Option<String> {
        validate_product(&body).expect_err("rejected").field
    }

    #[test]
    fn accepts_a_valid_product() {
        let product = validate_product(&valid()).expect("valid");
        assert_eq!(product.key(), ProductKey::new("m1", "p1"));
    }

    #[test]
    fn names_the_missing_empty_or_non_string_field() {
        for field in FIELDS {
            let mut body = valid();
            body.as_object_mut().expect("object").remove(field);
            assert_eq!(field_of(body), Some(field.to_owned()), "missing {field}");

            let mut body = valid();
            body[field] = json!("  ");
            assert_eq!(field_of(body), Some(field.to_owned()), "empty {field}");

            let mut body = valid();
            body[field] = json!(12);
            assert_eq!(field_of(body), Some(field.to_owned()), "number {field}");
        }
    }

    #[test]
    fn enforces_field_limits() {
        for (field, limit) in [
            ("mallId", MAX_ID_BYTES),
            ("productId", MAX_ID_BYTES),
            ("title", MAX_TITLE_BYTES),
            ("content", MAX_CONTENT_BYTES),
        ] {
            let mut body = valid();
            body[field] = json!("x".repeat(limit));
            assert!(validate_product(&body).is_ok(), "{field} at its limit");
            body[field] = json!("x".repeat(limit + 1));
            assert_eq!(field_of(body), Some(field.to_owned()));
        }
        let mut body = valid();
        body["imageUrl"] = json!(format!("https://h/{}", "x".repeat(MAX_IMAGE_URL_BYTES)));
        assert_eq!(field_of(body), Some("imageUrl".to_owned()));
    }

    #[test]
    fn price_must_be_a_non_negative_decimal() {
        for good in ["0", "12000", "12.50", "0.01"] {
            let mut body = valid();
            body["price"] = json!(good);
            assert!(validate_product(&body).is_ok(), "{good}");
        }
        for bad in [
            "-1", "1e3", "12.", ".5", "12,50", "abc", "1 000", "+3", "NaN",
        ] {
            let mut body = valid();
            body["price"] = json!(bad);
            assert_eq!(field_of(body), Some("price".to_owned()), "{bad}");
        }
    }

    #[test]
    fn image_url_must_be_absolute_http() {
        for bad in [
            "file:///etc/passwd",
            "ftp://h/x.png",
            "/relative.png",
            "http://",
            "javascript:alert(1)",
            "http://user:pw@h/x.png",
        ] {
            let mut body = valid();
            body["imageUrl"] = json!(bad);
            assert_eq!(field_of(body), Some("imageUrl".to_owned()), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_and_non_objects_are_refused() {
        let mut body = valid();
        body["colour"] = json!("red");
        assert_eq!(field_of(body), Some("colour".to_owned()));
        assert_eq!(field_of(json!(["m1"])), None);
    }
}
