//! A compact Avro value: [`AvroValue`], what [`AvroSerde::compact`](crate::serdes::AvroSerde::compact)
//! decodes into.
//!
//! `apache_avro::types::Value` owns everything it holds: a `String` per record field *name*, a
//! `String` per string, a `Vec` per record and a `Box` per union branch, about 50 allocations
//! (and as many frees) for a ~270 B Debezium envelope. Measured on the engine benchmark that was
//! 40% of the runtime loop's CPU. An [`AvroValue`] shares what does not change per datum and
//! borrows what it can:
//!
//! - a record's field names live once per schema in a [`RecordShape`] (an `Arc`), the record
//!   holds its values in schema order, and a value built for the same shape encodes positionally;
//! - strings ([`AvroStr`]) and bytes are [`Bytes`] slices of one copy of the datum;
//! - a union is its branch's value itself (no `Box`, no index): Avro allows one branch per kind
//!   (and per name for named types), so the encoder finds the branch from the value;
//! - logical types are their underlying Avro type (a `timestamp-millis` is a [`Long`](AvroValue::Long),
//!   a `decimal` its [`Bytes`](AvroValue::Bytes) or [`Fixed`](AvroValue::Fixed), a `uuid` a
//!   [`String`](AvroValue::String)).
//!
//! It converts to and from `apache_avro`'s value ([`AvroValue::to_apache`],
//! [`AvroValue::from_apache`]); the serde falls back to `apache_avro` for what its compiled codec
//! does not handle, so every schema works either way.

use std::sync::Arc;

use bytes::Bytes;

/// The field names of a record schema, shared by every record of that schema.
///
/// # Example
/// ```
/// use topology::avro::RecordShape;
/// let schema = apache_avro::Schema::parse_str(
///     r#"{"type":"record","name":"P","namespace":"shop","fields":[
///         {"name":"id","type":"string"},{"name":"price","type":"long"}]}"#).unwrap();
/// let shape = RecordShape::of(&schema).unwrap();
/// assert_eq!(shape.name(), "shop.P");
/// assert_eq!(shape.index("price"), Some(1));
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct RecordShape {
    name: Arc<str>,
    fields: Box<[Arc<str>]>,
}

impl RecordShape {
    /// A shape from a full name (empty when unknown) and field names in schema order.
    pub fn new<N: Into<Arc<str>>>(
        name: impl Into<Arc<str>>,
        fields: impl IntoIterator<Item = N>,
    ) -> Arc<RecordShape> {
        Arc::new(RecordShape {
            name: name.into(),
            fields: fields.into_iter().map(Into::into).collect(),
        })
    }

    /// The shape of a record schema (`None` for any other schema), to build records that the
    /// serde writes with that schema positionally.
    pub fn of(schema: &apache_avro::Schema) -> Option<Arc<RecordShape>> {
        match schema {
            apache_avro::Schema::Record(r) => Some(RecordShape::new(
                r.name.fullname(None),
                r.fields.iter().map(|f| f.name.as_str()),
            )),
            _ => None,
        }
    }

    /// The record's full name (empty when unknown).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field names, in schema order.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = &str> {
        self.fields.iter().map(|f| &**f)
    }

    /// The position of field `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| &**f == name)
    }

    /// Whether records of `other` have the same fields in the same order.
    pub(crate) fn same_fields(&self, other: &RecordShape) -> bool {
        std::ptr::eq(self, other) || self.fields == other.fields
    }
}

/// Why a record could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {name:?} has {expected} fields, {given} values given")]
pub struct ShapeMismatch {
    /// The shape's full name.
    pub name: String,
    /// Its number of fields.
    pub expected: usize,
    /// The number of values given.
    pub given: usize,
}

/// A record: its shape and one value per field, in the shape's order.
///
/// # Example
/// ```
/// use topology::avro::{AvroRecord, AvroValue, RecordShape};
/// let shape = RecordShape::new("P", ["id", "price"]);
/// let mut r = AvroRecord::new(shape, vec![AvroValue::from("p-1"), AvroValue::Long(12)]).unwrap();
/// assert_eq!(r.get("price").and_then(AvroValue::as_long), Some(12));
/// assert_eq!(r.take("id").as_ref().and_then(AvroValue::as_str), Some("p-1"));
/// assert!(r.get("id").is_some_and(AvroValue::is_null));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AvroRecord {
    shape: Arc<RecordShape>,
    values: Vec<AvroValue>,
}

impl AvroRecord {
    /// A record of `shape` with `values` in its field order.
    pub fn new(shape: Arc<RecordShape>, values: Vec<AvroValue>) -> Result<Self, ShapeMismatch> {
        if shape.fields.len() != values.len() {
            return Err(ShapeMismatch {
                name: shape.name.to_string(),
                expected: shape.fields.len(),
                given: values.len(),
            });
        }
        Ok(AvroRecord { shape, values })
    }

    /// A record from name/value pairs (a new shape per call: for records built once, not per
    /// datum; use [`AvroRecord::new`] with a shared [`RecordShape`] on hot paths).
    pub fn from_fields<N: Into<Arc<str>>>(
        name: &str,
        fields: impl IntoIterator<Item = (N, AvroValue)>,
    ) -> Self {
        let (names, values): (Vec<Arc<str>>, Vec<AvroValue>) =
            fields.into_iter().map(|(n, v)| (n.into(), v)).unzip();
        AvroRecord {
            shape: RecordShape::new(name, names),
            values,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &Arc<RecordShape> {
        &self.shape
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&AvroValue> {
        self.values.get(self.shape.index(name)?)
    }

    /// Moves the value of field `name` out, leaving [`AvroValue::Null`] in its place.
    pub fn take(&mut self, name: &str) -> Option<AvroValue> {
        let i = self.shape.index(name)?;
        self.values.get_mut(i).map(std::mem::take)
    }

    /// The values, in the shape's field order.
    pub fn values(&self) -> &[AvroValue] {
        &self.values
    }

    /// Name/value pairs in field order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AvroValue)> {
        self.shape.fields().zip(&self.values)
    }

    /// The values, in the shape's field order.
    pub fn into_values(self) -> Vec<AvroValue> {
        self.values
    }
}

/// UTF-8 text held in [`Bytes`] (a slice of the decoded datum, or its own buffer).
///
/// # Example
/// ```
/// use topology::avro::AvroStr;
/// let s = AvroStr::from("EUR");
/// assert_eq!(s.as_str(), "EUR");
/// assert!(AvroStr::from_utf8(bytes::Bytes::from_static(b"\xff")).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct AvroStr(Bytes);

impl AvroStr {
    /// Text from bytes, if they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(AvroStr(bytes))
    }

    /// The text. (Checked again on every call: the crate forbids `unsafe`, so there is no
    /// unchecked conversion; the bytes were checked when made, so this never comes out empty
    /// for text that is not.)
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl std::fmt::Debug for AvroStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for AvroStr {
    fn from(s: &str) -> Self {
        AvroStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for AvroStr {
    fn from(s: String) -> Self {
        AvroStr(Bytes::from(s))
    }
}

/// A compact Avro datum (see the [module documentation](self)).
///
/// # Example
/// ```
/// use topology::avro::{AvroRecord, AvroValue};
/// let v = AvroValue::Record(AvroRecord::from_fields("E", [
///     ("op", AvroValue::from("c")),
///     ("after", AvroValue::Record(AvroRecord::from_fields("D", [("n", AvroValue::Int(3))]))),
/// ]));
/// assert_eq!(v.get("op").and_then(AvroValue::as_str), Some("c"));
/// assert_eq!(v.get("after").and_then(|a| a.get("n")).and_then(AvroValue::as_long), Some(3));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub enum AvroValue {
    /// `null` (also a union's null branch).
    #[default]
    Null,
    /// `boolean`.
    Boolean(bool),
    /// `int` (and `date`, `time-millis`).
    Int(i32),
    /// `long` (and the `time-micros` and timestamp logical types).
    Long(i64),
    /// `float`.
    Float(f32),
    /// `double`.
    Double(f64),
    /// `bytes` (and a bytes `decimal`).
    Bytes(Bytes),
    /// `string` (and `uuid`).
    String(AvroStr),
    /// `fixed` (and a fixed `decimal`, `duration`).
    Fixed(Bytes),
    /// `enum`: the symbol's index and the symbol.
    Enum(u32, Arc<str>),
    /// `array`.
    Array(Vec<AvroValue>),
    /// `map`, in the order the entries were written.
    Map(Vec<(AvroStr, AvroValue)>),
    /// `record`.
    Record(AvroRecord),
}

impl From<&str> for AvroValue {
    fn from(s: &str) -> Self {
        AvroValue::String(s.into())
    }
}

impl From<String> for AvroValue {
    fn from(s: String) -> Self {
        AvroValue::String(s.into())
    }
}

impl AvroValue {
    /// A record's field or a map's entry.
    pub fn get(&self, name: &str) -> Option<&AvroValue> {
        match self {
            AvroValue::Record(r) => r.get(name),
            AvroValue::Map(m) => m.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string or an enum symbol.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AvroValue::String(s) => Some(s.as_str()),
            AvroValue::Enum(_, s) => Some(s),
            _ => None,
        }
    }

    /// An int or long as `i64`.
    pub fn as_long(&self) -> Option<i64> {
        match self {
            AvroValue::Int(i) => Some(i64::from(*i)),
            AvroValue::Long(i) => Some(*i),
            _ => None,
        }
    }

    /// The record, if this is one.
    pub fn as_record(&self) -> Option<&AvroRecord> {
        match self {
            AvroValue::Record(r) => Some(r),
            _ => None,
        }
    }

    /// The record, if this is one.
    pub fn into_record(self) -> Option<AvroRecord> {
        match self {
            AvroValue::Record(r) => Some(r),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, AvroValue::Null)
    }

    /// The JSON form, as [`avro_to_json`](crate::avro_to_json) renders `apache_avro` values:
    /// records and maps become objects, bytes arrays of numbers.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            AvroValue::Null => J::Null,
            AvroValue::Boolean(b) => J::Bool(*b),
            AvroValue::Int(i) => J::from(*i),
            AvroValue::Long(i) => J::from(*i),
            AvroValue::Float(f) => J::from(*f),
            AvroValue::Double(f) => J::from(*f),
            AvroValue::Bytes(b) | AvroValue::Fixed(b) => J::from(b.to_vec()),
            AvroValue::String(s) => J::String(s.as_str().to_owned()),
            AvroValue::Enum(_, s) => J::String(s.to_string()),
            AvroValue::Array(items) => J::Array(items.iter().map(AvroValue::to_json).collect()),
            AvroValue::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_json()))
                    .collect(),
            ),
            AvroValue::Record(r) => {
                J::Object(r.iter().map(|(k, v)| (k.to_owned(), v.to_json())).collect())
            }
        }
    }

    /// The same datum as an `apache_avro` value. Unions have no branch here, so the result is
    /// the branch's value: resolve it against the schema (`Value::resolve`) before writing it
    /// with `apache_avro` (the serde does).
    pub fn to_apache(&self) -> apache_avro::types::Value {
        use apache_avro::types::Value as A;
        match self {
            AvroValue::Null => A::Null,
            AvroValue::Boolean(b) => A::Boolean(*b),
            AvroValue::Int(i) => A::Int(*i),
            AvroValue::Long(i) => A::Long(*i),
            AvroValue::Float(f) => A::Float(*f),
            AvroValue::Double(f) => A::Double(*f),
            AvroValue::Bytes(b) => A::Bytes(b.to_vec()),
            AvroValue::Fixed(b) => A::Fixed(b.len(), b.to_vec()),
            AvroValue::String(s) => A::String(s.as_str().to_owned()),
            AvroValue::Enum(i, s) => A::Enum(*i, s.to_string()),
            AvroValue::Array(items) => A::Array(items.iter().map(AvroValue::to_apache).collect()),
            AvroValue::Map(m) => A::Map(
                m.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_apache()))
                    .collect(),
            ),
            AvroValue::Record(r) => A::Record(
                r.iter()
                    .map(|(k, v)| (k.to_owned(), v.to_apache()))
                    .collect(),
            ),
        }
    }

    /// An `apache_avro` value as a compact one: unions become their branch, logical types
    /// their underlying type, and each record gets a shape of its own (with no name: apache's
    /// values carry none).
    pub fn from_apache(v: &apache_avro::types::Value) -> AvroValue {
        use apache_avro::types::Value as A;
        match v {
            A::Null => AvroValue::Null,
            A::Boolean(b) => AvroValue::Boolean(*b),
            A::Int(i) | A::Date(i) | A::TimeMillis(i) => AvroValue::Int(*i),
            A::Long(i)
            | A::TimeMicros(i)
            | A::TimestampMillis(i)
            | A::TimestampMicros(i)
            | A::TimestampNanos(i)
            | A::LocalTimestampMillis(i)
            | A::LocalTimestampMicros(i)
            | A::LocalTimestampNanos(i) => AvroValue::Long(*i),
            A::Float(f) => AvroValue::Float(*f),
            A::Double(f) => AvroValue::Double(*f),
            A::Bytes(b) => AvroValue::Bytes(Bytes::copy_from_slice(b)),
            A::Fixed(_, b) => AvroValue::Fixed(Bytes::copy_from_slice(b)),
            A::String(s) => AvroValue::from(s.as_str()),
            A::Enum(i, s) => AvroValue::Enum(*i, s.as_str().into()),
            A::Union(_, inner) => AvroValue::from_apache(inner),
            A::Array(items) => AvroValue::Array(items.iter().map(AvroValue::from_apache).collect()),
            A::Map(m) => AvroValue::Map(
                m.iter()
                    .map(|(k, v)| (AvroStr::from(k.as_str()), AvroValue::from_apache(v)))
                    .collect(),
            ),
            A::Record(fields) => AvroValue::Record(AvroRecord::from_fields(
                "",
                fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), AvroValue::from_apache(v))),
            )),
            A::Uuid(u) => AvroValue::from(u.to_string()),
            A::Decimal(d) => match Vec::<u8>::try_from(d.clone()) {
                Ok(b) => AvroValue::Bytes(Bytes::from(b)),
                Err(_) => AvroValue::Null,
            },
            A::BigDecimal(d) => AvroValue::from(d.to_string()),
            A::Duration(d) => {
                let b: [u8; 12] = d.into();
                AvroValue::Fixed(Bytes::copy_from_slice(&b))
            }
        }
    }
}
