//! How the stateful operators keep [`Value`]s in stores and on their internal topics.
//!
//! Stores are typed ([`state::KvStore`], postcard-encoded) while the graph carries the dynamic
//! [`Value`]: [`StoredValue`] is the bridge. Bytes, strings and JSON round-trip exactly; Avro
//! values are kept as their JSON mapping (a store has no schema to write them with), so an
//! aggregate or a table over Avro records hands JSON values on.
//!
//! Window keys put a timestamp where byte order must follow time: [`time_bytes`] encodes an
//! `i64` so that its bytes sort as the numbers do (postcard writes a `[u8; 8]` as is).

use serde::{Deserialize, Serialize};

use crate::Value;

/// A [`Value`] as a store or an internal topic keeps it.
///
/// # Example
/// ```
/// use topology::Value;
/// use topology::stateful::StoredValue;
/// let v = Value::Json(serde_json::json!({"n": 1}));
/// let stored = StoredValue::from(&v);
/// let back = StoredValue::from_bytes(&stored.to_bytes().unwrap()).unwrap();
/// assert_eq!(Value::from(back), v);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredValue {
    /// [`Value::Bytes`].
    Bytes(Vec<u8>),
    /// [`Value::String`].
    String(String),
    /// [`Value::Json`] (and Avro values), as JSON text: postcard cannot describe a
    /// `serde_json::Value` itself.
    Json(String),
}

impl StoredValue {
    /// The encoded form (postcard).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(self).map_err(|e| format!("encoding a stored value: {e}"))
    }

    /// Decodes [`to_bytes`](Self::to_bytes)'s output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("not an internal value: {e}"))
    }
}

impl From<&Value> for StoredValue {
    fn from(value: &Value) -> Self {
        match value {
            Value::Bytes(b) => StoredValue::Bytes(b.to_vec()),
            Value::String(s) => StoredValue::String(s.clone()),
            other => StoredValue::Json(other.to_json().to_string()),
        }
    }
}

impl From<StoredValue> for Value {
    fn from(stored: StoredValue) -> Self {
        match stored {
            StoredValue::Bytes(b) => Value::Bytes(b.into()),
            StoredValue::String(s) => Value::String(s),
            StoredValue::Json(text) => match serde_json::from_str(&text) {
                Ok(json) => Value::Json(json),
                // Written by `From<&Value>`, so always JSON; keep the text rather than fail.
                Err(_) => Value::String(text),
            },
        }
    }
}

/// `t` as 8 bytes that sort as the numbers do (big-endian with the sign bit flipped).
///
/// # Example
/// ```
/// use topology::stateful::{time_bytes, time_from_bytes};
/// assert!(time_bytes(-5) < time_bytes(3));
/// assert_eq!(time_from_bytes(time_bytes(-5)), -5);
/// ```
pub fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`time_bytes`].
pub fn time_from_bytes(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// The bytes a key is grouped by in stores: [`Value::to_bytes`], so `"k"` as a string and as
/// bytes are the same key, as they are on the wire.
pub(crate) fn key_bytes(key: &Value) -> Vec<u8> {
    key.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_value_comes_back_and_avro_comes_back_as_json() {
        for v in [
            Value::Bytes(vec![0, 255].into()),
            Value::String("é".into()),
            Value::Json(serde_json::json!([1, {"a": null}])),
        ] {
            let bytes = StoredValue::from(&v).to_bytes().expect("encode");
            assert_eq!(
                Value::from(StoredValue::from_bytes(&bytes).expect("decode")),
                v
            );
        }
        let avro = Value::Avro(apache_avro::types::Value::Record(vec![(
            "id".into(),
            apache_avro::types::Value::Long(7),
        )]));
        assert_eq!(
            Value::from(StoredValue::from(&avro)),
            Value::Json(serde_json::json!({"id": 7}))
        );
        assert!(StoredValue::from_bytes(&[9, 9]).is_err());
    }

    #[test]
    fn time_bytes_sort_like_times() {
        let times = [i64::MIN, -60_000, -1, 0, 1, 59_999, i64::MAX];
        for w in times.windows(2) {
            assert!(time_bytes(w[0]) < time_bytes(w[1]), "{w:?}");
            assert_eq!(time_from_bytes(time_bytes(w[0])), w[0]);
        }
    }
}
