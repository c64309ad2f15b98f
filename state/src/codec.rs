//! Key and value encoding: [postcard](https://docs.rs/postcard), a compact serde format
//! (varint integers, length-prefixed strings, no field names), so a typical record is a
//! fraction of its JSON size and encodes without allocation beyond the output buffer.
//!
//! The encoding is deterministic, so equal keys always map to equal bytes; it is **not**
//! order-preserving for strings (a varint length comes first), so iteration follows the
//! encoded bytes, not the natural order of `K`. Changing a field of a stored type is a schema
//! change: add fields at the end with `#[serde(default)]` only after a migration, or use a new
//! store name.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{StateError, show_key};

pub(crate) fn encode<T: Serialize + ?Sized>(
    store: &str,
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(value).map_err(|source| StateError::Encode {
        store: store.to_owned(),
        what,
        source,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    store: &str,
    what: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|source| StateError::Decode {
        store: store.to_owned(),
        what,
        key: show_key(key),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_compactness() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Rec {
            id: u64,
            name: String,
        }
        let r = Rec {
            id: 300,
            name: "abc".into(),
        };
        let b = encode("t", "value", &r).expect("encode");
        assert_eq!(b.len(), 2 + 1 + 3);
        let back: Rec = decode("t", "value", b"k", &b).expect("decode");
        assert_eq!(back, r);
        let err = decode::<Rec>("t", "value", b"k", &[0xff]).expect_err("garbage");
        assert!(err.to_string().contains("state store `t`"));
    }
}
