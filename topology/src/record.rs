//! Records as they flow through a topology.
//!
//! A [`Record`] carries an optional key, an optional value (a tombstone has none), headers, a
//! timestamp and the place it was read from (topic, partition, offset). Inside the graph keys and
//! values are the dynamic [`Value`] type: bytes, a string, JSON or an Avro value, whichever the
//! source's serde produced (Avro either as `apache_avro`'s value or, with
//! [`AvroSerde::compact`](crate::serdes::AvroSerde::compact), as the allocation-light
//! [`AvroValue`]). Keeping the graph dynamically typed is a deliberate, pragmatic
//! choice (as Kafka Streams' `Object`-typed processor API does internally): nodes built from a
//! configuration file must connect without generics, and typed code converts at its edges with
//! [`Value::to_json`] / [`Value::deserialize_into`].

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::avro::AvroValue;

/// A dynamic key or value inside the graph.
///
/// # Example
/// ```
/// use topology::Value;
/// let v = Value::Json(serde_json::json!({"op": "c", "after": {"id": 1}}));
/// assert_eq!(v.field_str("op").as_deref(), Some("c"));
/// assert_eq!(v.field_str("after.id").as_deref(), Some("1"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Raw bytes (the `bytes` serde).
    Bytes(Bytes),
    /// UTF-8 text (the `string` serde).
    String(String),
    /// A JSON document (the `json` serde).
    Json(serde_json::Value),
    /// An Avro datum (the `avro` serde).
    Avro(apache_avro::types::Value),
    /// An Avro datum in compact form (the `avro` serde with
    /// [`compact`](crate::serdes::AvroSerde::compact)); the `avro` serde writes both forms.
    AvroCompact(AvroValue),
}

impl Value {
    /// The value as text when it is a string (or a JSON/Avro string).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Json(serde_json::Value::String(s)) => Some(s),
            Value::Avro(apache_avro::types::Value::String(s)) => Some(s),
            Value::AvroCompact(AvroValue::String(s)) => Some(s.as_str()),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Converts the value to JSON (Avro through its JSON mapping; bytes as a UTF-8 string when
    /// they are text, else an array of numbers).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Json(v) => v.clone(),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => serde_json::Value::String(s.to_owned()),
                Err(_) => serde_json::Value::from(b.to_vec()),
            },
            Value::Avro(a) => avro_to_json(a),
            Value::AvroCompact(a) => a.to_json(),
        }
    }

    /// Deserializes the value into a typed struct through its JSON form.
    pub fn deserialize_into<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.to_json())
    }

    /// Looks up a dotted field path (`after.mallId`) and renders the scalar found there as text.
    /// Returns `None` when a step is missing or the value is not structured.
    pub fn field_str(&self, path: &str) -> Option<String> {
        match self {
            Value::Json(j) => {
                let mut cur = j;
                for step in path.split('.') {
                    cur = cur.get(step)?;
                }
                json_scalar(cur)
            }
            Value::Avro(a) => {
                let mut cur = a;
                for step in path.split('.') {
                    cur = avro_field(cur, step)?;
                }
                avro_scalar(cur)
            }
            Value::AvroCompact(a) => {
                let mut cur = a;
                for step in path.split('.') {
                    cur = cur.get(step)?;
                }
                compact_scalar(cur)
            }
            _ => None,
        }
    }

    /// Encodes the value the way the `bytes`/`string` serdes would (JSON as text, Avro as JSON
    /// text): a stable byte form used for key ordering and hashing.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Value::Bytes(b) => b.to_vec(),
            Value::String(s) => s.as_bytes().to_vec(),
            other => other.to_json().to_string().into_bytes(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(Bytes::from(v))
    }
}
impl From<apache_avro::types::Value> for Value {
    fn from(v: apache_avro::types::Value) -> Self {
        Value::Avro(v)
    }
}
impl From<AvroValue> for Value {
    fn from(v: AvroValue) -> Self {
        Value::AvroCompact(v)
    }
}

/// A compact Avro scalar as text, the way [`avro_scalar`] renders `apache_avro`'s.
fn compact_scalar(v: &AvroValue) -> Option<String> {
    match v {
        AvroValue::Null => None,
        AvroValue::String(s) => Some(s.as_str().to_owned()),
        AvroValue::Enum(_, s) => Some(s.to_string()),
        AvroValue::Boolean(b) => Some(b.to_string()),
        AvroValue::Int(i) => Some(i.to_string()),
        AvroValue::Long(i) => Some(i.to_string()),
        AvroValue::Float(f) => Some(f.to_string()),
        AvroValue::Double(f) => Some(f.to_string()),
        other => Some(other.to_json().to_string()),
    }
}

fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn avro_field<'a>(
    v: &'a apache_avro::types::Value,
    name: &str,
) -> Option<&'a apache_avro::types::Value> {
    use apache_avro::types::Value as A;
    match v {
        A::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        A::Map(m) => m.get(name),
        A::Union(_, inner) => avro_field(inner, name),
        _ => None,
    }
}

fn avro_scalar(v: &apache_avro::types::Value) -> Option<String> {
    use apache_avro::types::Value as A;
    match v {
        A::Null => None,
        A::String(s) | A::Enum(_, s) => Some(s.clone()),
        A::Union(_, inner) => avro_scalar(inner),
        A::Boolean(b) => Some(b.to_string()),
        A::Int(i) => Some(i.to_string()),
        A::Long(i) => Some(i.to_string()),
        A::Float(f) => Some(f.to_string()),
        A::Double(f) => Some(f.to_string()),
        other => Some(avro_to_json(other).to_string()),
    }
}

/// Converts an Avro value to JSON: records and maps become objects, unions their branch.
pub fn avro_to_json(v: &apache_avro::types::Value) -> serde_json::Value {
    use apache_avro::types::Value as A;
    use serde_json::Value as J;
    match v {
        A::Null => J::Null,
        A::Boolean(b) => J::Bool(*b),
        A::Int(i) | A::Date(i) | A::TimeMillis(i) => J::from(*i),
        A::Long(i)
        | A::TimeMicros(i)
        | A::TimestampMillis(i)
        | A::TimestampMicros(i)
        | A::TimestampNanos(i)
        | A::LocalTimestampMillis(i)
        | A::LocalTimestampMicros(i)
        | A::LocalTimestampNanos(i) => J::from(*i),
        A::Float(f) => J::from(*f),
        A::Double(f) => J::from(*f),
        A::String(s) | A::Enum(_, s) => J::String(s.clone()),
        A::Bytes(b) | A::Fixed(_, b) => J::from(b.clone()),
        A::Union(_, inner) => avro_to_json(inner),
        A::Array(items) => J::Array(items.iter().map(avro_to_json).collect()),
        A::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        A::Record(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        A::Uuid(u) => J::String(u.to_string()),
        other => J::String(format!("{other:?}")),
    }
}

/// One record header: a key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value; `None` is a null header.
    pub value: Option<Bytes>,
}

/// Ordered record headers (Kafka allows repeated keys).
///
/// # Example
/// ```
/// use topology::Headers;
/// let mut h = Headers::default();
/// h.insert("dlq.attempts", "3");
/// assert_eq!(h.get_str("dlq.attempts"), Some("3"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    /// Appends a header.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
    }

    /// The last value recorded under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|h| h.key == key)
            .and_then(|h| h.value.as_deref())
    }

    /// The last value under `key`, as UTF-8 text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Iterates the headers in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }
}

/// A record: key, value, headers, timestamp and origin.
///
/// # Example
/// ```
/// use topology::{Record, Value};
/// let r = Record::new(Some(Value::from("k")), Some(Value::from("v")));
/// assert_eq!(r.value.as_ref().and_then(|v| v.as_str()), Some("v"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Record<K = Value, V = Value> {
    /// The key (`None` for keyless records).
    pub key: Option<K>,
    /// The value (`None` for tombstones).
    pub value: Option<V>,
    /// Headers.
    pub headers: Headers,
    /// Milliseconds since the epoch, when known.
    pub timestamp: Option<i64>,
    /// The topic the record was read from (empty for records made in code). Shared: a
    /// transport hands out one `Arc` per topic, not a `String` per record.
    pub topic: Arc<str>,
    /// The partition it was read from (`-1` when unknown).
    pub partition: i32,
    /// The offset it was read from (`-1` when unknown).
    pub offset: i64,
}

impl<K, V> Record<K, V> {
    /// A record made in code, with no origin.
    pub fn new(key: Option<K>, value: Option<V>) -> Self {
        Record {
            key,
            value,
            headers: Headers::default(),
            timestamp: None,
            topic: Arc::default(),
            partition: -1,
            offset: -1,
        }
    }

    /// Replaces the value, keeping key, headers, timestamp and origin.
    pub fn with_value<W>(self, value: Option<W>) -> Record<K, W> {
        Record {
            key: self.key,
            value,
            headers: self.headers,
            timestamp: self.timestamp,
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// A record in its serialized form, as transports carry it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawRecord {
    /// Topic (shared, as in [`Record`]).
    pub topic: Arc<str>,
    /// Partition (`-1` lets the producer choose).
    pub partition: i32,
    /// Offset (`-1` before it is written).
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Bytes>,
    /// Value bytes.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Headers,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
}
