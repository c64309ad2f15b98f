//! Object keys: the content-addressed [`image_key`] scheme and the safety rules every key obeys.
//!
//! Keys use only `A-Z a-z 0-9 - _ . ~ /`, so they need no escaping in S3, in URLs or as relative
//! file paths. Ids are escaped into that alphabet: every byte outside `A-Z a-z 0-9 - _` becomes
//! `~` followed by two upper-case hex digits (`.` → `~2E`, `/` → `~2F`, `~` → `~7E`), which keeps
//! distinct ids distinct and leaves no `..` or `/` from an id in a key.

use crate::fetch::ImageFormat;

/// Why [`image_key`] refused its inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An id is empty.
    #[error("{field} is empty")]
    EmptyId {
        /// `mall_id` or `product_id`.
        field: &'static str,
    },
    /// The digest is not 64 hex digits.
    #[error("sha256 must be 64 hex digits, got {0:?}")]
    BadSha256(String),
    /// The extension is not 1 to 8 ASCII letters or digits.
    #[error("extension must be 1 to 8 ASCII letters or digits, got {0:?}")]
    BadExtension(String),
}

/// The content-addressed key of a product image:
/// `products/{mallId}/{productId}/{sha256}.{ext}`, ids escaped as the module describes.
///
/// # Example
///
/// ```
/// use images::image_key;
///
/// let sha = "a".repeat(64);
/// assert_eq!(
///     image_key("mall-1", "p_42", &sha, "png").unwrap(),
///     format!("products/mall-1/p_42/{sha}.png"),
/// );
/// assert_eq!(
///     image_key("../etc", "a/b", &sha, "jpg").unwrap(),
///     format!("products/~2E~2E~2Fetc/a~2Fb/{sha}.jpg"),
/// );
/// ```
pub fn image_key(
    mall_id: &str,
    product_id: &str,
    sha256: &str,
    extension: &str,
) -> Result<String, KeyError> {
    if mall_id.is_empty() {
        return Err(KeyError::EmptyId { field: "mall_id" });
    }
    if product_id.is_empty() {
        return Err(KeyError::EmptyId {
            field: "product_id",
        });
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::BadSha256(sha256.to_owned()));
    }
    if extension.is_empty()
        || extension.len() > 8
        || !extension.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(KeyError::BadExtension(extension.to_owned()));
    }
    Ok(format!(
        "products/{}/{}/{}.{}",
        escape_id(mall_id),
        escape_id(product_id),
        sha256.to_ascii_lowercase(),
        extension.to_ascii_lowercase()
    ))
}

fn escape_id(id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// Checks that `key` is safe as an S3 key, a URL path and a relative file path.
pub(crate) fn validate_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty");
    }
    if key.len() > 1024 {
        return Err("longer than 1024 bytes");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/'))
    {
        return Err("only A-Z a-z 0-9 - _ . ~ / are allowed");
    }
    if key
        .split('/')
        .any(|segment| segment.is_empty() || segment.starts_with('.'))
    {
        return Err("a path segment is empty or starts with '.'");
    }
    Ok(())
}

/// The content type implied by a key's extension (`application/octet-stream` when unknown).
pub(crate) fn content_type_for_key(key: &str) -> &'static str {
    key.rsplit_once('.')
        .and_then(|(_, ext)| ImageFormat::from_extension(ext))
        .map_or("application/octet-stream", ImageFormat::mime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ids_are_escaped_without_collisions() {
        let keys: Vec<String> = ["a.b", "a~2Eb", "a/b", "a%2Fb", "..", "ü", "a b"]
            .iter()
            .map(|id| image_key("m", id, SHA, "png").expect("key"))
            .collect();
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        for key in &keys {
            validate_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(key.matches('/').count(), 3, "{key}");
            assert!(!key.contains(".."), "{key}");
        }
        assert_eq!(keys[5], format!("products/m/~C3~BC/{SHA}.png"));
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(
            image_key("", "p", SHA, "png"),
            Err(KeyError::EmptyId { field: "mall_id" })
        );
        assert!(matches!(
            image_key("m", "p", "abc", "png"),
            Err(KeyError::BadSha256(_))
        ));
        assert!(matches!(
            image_key("m", "p", SHA, "p/ng"),
            Err(KeyError::BadExtension(_))
        ));
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "a/.hidden",
            "a\\b",
            "a b",
            "a/b/",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(content_type_for_key("x/y.JPG"), "image/jpeg");
        assert_eq!(content_type_for_key("x/y"), "application/octet-stream");
    }
}
