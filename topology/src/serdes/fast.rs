//! A compiled Avro codec for the steady state of [`AvroSerde`](super::AvroSerde).
//!
//! `apache_avro`'s generic reader and writer walk the [`Schema`] per datum: the decoder reads
//! byte by byte through `io::Read`, zero-fills every string buffer before reading into it and
//! builds a fully-qualified name per record; the writer validates the whole value in a first
//! pass and builds a `HashMap` of field names per record in the second. Measured on the engine
//! benchmark's ~270 B envelope, that was ~20% of the engine's CPU.
//!
//! [`Codec`] is the schema compiled once into a tree of [`Node`]s (named references inlined):
//! decoding reads straight from the byte slice into the same [`Value`]s `apache_avro` produces,
//! encoding writes a value whose shape matches the schema exactly (fields in schema order, union
//! branches given) in one pass. Anything else is left to `apache_avro`: a schema with types not
//! compiled here (decimal, uuid, duration, recursive types), a datum that does not decode cleanly
//! (so errors and their messages stay `apache_avro`'s), a value that does not match the schema
//! exactly (so coercions, field lookup by name and union branch search stay `apache_avro`'s).
//! The results are byte-for-byte and value-for-value the same; the tests compare both.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{Name, NamesRef, NamespaceRef, ResolvedSchema};
use apache_avro::types::Value;
use bytes::Bytes;

use crate::avro::{AvroRecord, AvroStr, AvroValue, RecordShape};

/// A schema compiled for [`decode`](Codec::decode) and [`encode`](Codec::encode).
#[derive(Debug)]
pub(crate) struct Codec {
    root: Node,
}

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
    LocalTimestampMillis,
    LocalTimestampMicros,
    LocalTimestampNanos,
    Fixed(usize),
    Enum(Vec<Arc<str>>),
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
    /// The fields, and their names once more as the shape of compact records.
    Record(Vec<(String, Node)>, Arc<RecordShape>),
}

/// Bounds the compiled tree (named types are inlined at every use).
const MAX_NODES: usize = 10_000;

impl Codec {
    /// Compiles `schema`; `None` when it uses something only `apache_avro` handles.
    pub(crate) fn compile(schema: &Schema) -> Option<Codec> {
        let resolved = ResolvedSchema::try_from(schema).ok()?;
        let mut c = Compiler {
            names: resolved.get_names(),
            stack: Vec::new(),
            nodes: 0,
        };
        let root = c.node(schema, None)?;
        Some(Codec { root })
    }

    /// Decodes one datum from the front of `bytes` (trailing bytes are ignored, as
    /// `apache_avro`'s reader does); `None` when it does not decode cleanly.
    pub(crate) fn decode(&self, bytes: &[u8]) -> Option<Value> {
        let mut cur = Cursor { buf: bytes, pos: 0 };
        cur.value(&self.root)
    }

    /// Appends the encoding of `value` to `out`; `false` (with `out` partly written) when the
    /// value does not match the schema exactly.
    pub(crate) fn encode(&self, value: &Value, out: &mut Vec<u8>) -> bool {
        encode(&self.root, value, out)
    }

    /// Decodes one datum from the front of `bytes` into a compact value whose strings and
    /// bytes are slices of `bytes`; `None` when it does not decode cleanly.
    pub(crate) fn decode_compact(&self, bytes: &Bytes) -> Option<AvroValue> {
        let mut cur = Cursor { buf: bytes, pos: 0 };
        cur.compact(&self.root, bytes)
    }

    /// Appends the encoding of a compact `value` to `out`; `false` (with `out` partly written)
    /// when the value does not fit the schema without conversions (a field missing, an int
    /// for a long, ...).
    pub(crate) fn encode_compact(&self, value: &AvroValue, out: &mut Vec<u8>) -> bool {
        encode_compact(&self.root, value, out)
    }
}

struct Compiler<'a, 's> {
    names: &'a NamesRef<'s>,
    /// Named types being compiled (a reference to one of them is recursion: not compiled).
    stack: Vec<Name>,
    nodes: usize,
}

impl Compiler<'_, '_> {
    fn node(&mut self, schema: &Schema, ns: NamespaceRef<'_>) -> Option<Node> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return None;
        }
        Some(match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis => Node::TimestampMillis,
            Schema::TimestampMicros => Node::TimestampMicros,
            Schema::TimestampNanos => Node::TimestampNanos,
            Schema::LocalTimestampMillis => Node::LocalTimestampMillis,
            Schema::LocalTimestampMicros => Node::LocalTimestampMicros,
            Schema::LocalTimestampNanos => Node::LocalTimestampNanos,
            Schema::Fixed(f) => Node::Fixed(f.size),
            Schema::Enum(e) => Node::Enum(e.symbols.iter().map(|s| s.as_str().into()).collect()),
            Schema::Array(a) => Node::Array(Box::new(self.node(&a.items, ns)?)),
            Schema::Map(m) => Node::Map(Box::new(self.node(&m.types, ns)?)),
            Schema::Union(u) => Node::Union(
                u.variants()
                    .iter()
                    .map(|v| self.node(v, ns))
                    .collect::<Option<_>>()?,
            ),
            Schema::Record(r) => {
                let name = r.name.fully_qualified_name(ns).into_owned();
                self.stack.push(name.clone());
                let inner = name.namespace();
                let fields = r
                    .fields
                    .iter()
                    .map(|f| Some((f.name.clone(), self.node(&f.schema, inner)?)))
                    .collect::<Option<Vec<_>>>();
                self.stack.pop();
                let shape = RecordShape::new(
                    name.fullname(None),
                    r.fields.iter().map(|f| f.name.as_str()),
                );
                Node::Record(fields?, shape)
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns).into_owned();
                if self.stack.contains(&name) {
                    return None;
                }
                let target = *self.names.get(&name)?;
                self.node(target, name.namespace())?
            }
            Schema::Decimal(_) | Schema::BigDecimal | Schema::Uuid(_) | Schema::Duration(_) => {
                return None;
            }
        })
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for j in 0..10 {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (j * 7);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn long(&mut self) -> Option<i64> {
        let u = self.varint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    /// A length that must fit in what is left of the datum.
    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.long()?).ok()?;
        (n <= self.remaining()).then_some(n)
    }

    /// The item count of the next array or map block (0 at the end). Counts larger than the
    /// bytes left go to `apache_avro` (its allocation limits and errors).
    fn block(&mut self) -> Option<usize> {
        let n = self.long()?;
        let n = if n < 0 {
            self.long()?;
            n.checked_neg()?
        } else {
            n
        };
        let n = usize::try_from(n).ok()?;
        (n <= self.remaining()).then_some(n)
    }

    fn string(&mut self) -> Option<String> {
        let n = self.len()?;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_owned())
    }

    fn value(&mut self, node: &Node) -> Option<Value> {
        Some(match node {
            Node::Null => Value::Null,
            Node::Boolean => match self.take(1)?[0] {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                _ => return None,
            },
            Node::Int => Value::Int(self.int()?),
            Node::Long => Value::Long(self.long()?),
            Node::Float => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            Node::Double => Value::Double(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            Node::Bytes => {
                let n = self.len()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            Node::String => Value::String(self.string()?),
            Node::Date => Value::Date(self.int()?),
            Node::TimeMillis => Value::TimeMillis(self.int()?),
            Node::TimeMicros => Value::TimeMicros(self.long()?),
            Node::TimestampMillis => Value::TimestampMillis(self.long()?),
            Node::TimestampMicros => Value::TimestampMicros(self.long()?),
            Node::TimestampNanos => Value::TimestampNanos(self.long()?),
            Node::LocalTimestampMillis => Value::LocalTimestampMillis(self.long()?),
            Node::LocalTimestampMicros => Value::LocalTimestampMicros(self.long()?),
            Node::LocalTimestampNanos => Value::LocalTimestampNanos(self.long()?),
            Node::Fixed(n) => Value::Fixed(*n, self.take(*n)?.to_vec()),
            Node::Enum(symbols) => {
                let i = self.int()?;
                let symbol = symbols.get(usize::try_from(i).ok()?)?;
                Value::Enum(i as u32, symbol.to_string())
            }
            Node::Array(item) => {
                let mut items = Vec::new();
                loop {
                    let n = self.block()?;
                    if n == 0 {
                        break;
                    }
                    items.reserve_exact(n);
                    for _ in 0..n {
                        items.push(self.value(item)?);
                    }
                }
                Value::Array(items)
            }
            Node::Map(item) => {
                let mut items = HashMap::new();
                loop {
                    let n = self.block()?;
                    if n == 0 {
                        break;
                    }
                    items.reserve(n);
                    for _ in 0..n {
                        let key = self.string()?;
                        let value = self.value(item)?;
                        items.insert(key, value);
                    }
                }
                Value::Map(items)
            }
            Node::Union(variants) => {
                let i = self.long()?;
                let variant = variants.get(usize::try_from(i).ok()?)?;
                Value::Union(u32::try_from(i).ok()?, Box::new(self.value(variant)?))
            }
            Node::Record(fields, _) => {
                let mut items = Vec::with_capacity(fields.len());
                for (name, node) in fields {
                    items.push((name.clone(), self.value(node)?));
                }
                Value::Record(items)
            }
        })
    }
}

impl Cursor<'_> {
    /// The next `n` bytes as a slice of `whole` (the buffer this cursor reads).
    fn slice(&mut self, n: usize, whole: &Bytes) -> Option<Bytes> {
        let start = self.pos;
        self.take(n)?;
        Some(whole.slice(start..self.pos))
    }

    fn avro_str(&mut self, whole: &Bytes) -> Option<AvroStr> {
        let n = self.len()?;
        AvroStr::from_utf8(self.slice(n, whole)?).ok()
    }

    fn compact(&mut self, node: &Node, whole: &Bytes) -> Option<AvroValue> {
        Some(match node {
            Node::Null => AvroValue::Null,
            Node::Boolean => match self.take(1)?[0] {
                0 => AvroValue::Boolean(false),
                1 => AvroValue::Boolean(true),
                _ => return None,
            },
            Node::Int | Node::Date | Node::TimeMillis => AvroValue::Int(self.int()?),
            Node::Long
            | Node::TimeMicros
            | Node::TimestampMillis
            | Node::TimestampMicros
            | Node::TimestampNanos
            | Node::LocalTimestampMillis
            | Node::LocalTimestampMicros
            | Node::LocalTimestampNanos => AvroValue::Long(self.long()?),
            Node::Float => AvroValue::Float(f32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            Node::Double => AvroValue::Double(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            Node::Bytes => {
                let n = self.len()?;
                AvroValue::Bytes(self.slice(n, whole)?)
            }
            Node::String => AvroValue::String(self.avro_str(whole)?),
            Node::Fixed(n) => AvroValue::Fixed(self.slice(*n, whole)?),
            Node::Enum(symbols) => {
                let i = self.int()?;
                let symbol = symbols.get(usize::try_from(i).ok()?)?;
                AvroValue::Enum(i as u32, symbol.clone())
            }
            Node::Array(item) => {
                let mut items = Vec::new();
                loop {
                    let n = self.block()?;
                    if n == 0 {
                        break;
                    }
                    items.reserve_exact(n);
                    for _ in 0..n {
                        items.push(self.compact(item, whole)?);
                    }
                }
                AvroValue::Array(items)
            }
            Node::Map(item) => {
                let mut items = Vec::new();
                loop {
                    let n = self.block()?;
                    if n == 0 {
                        break;
                    }
                    items.reserve(n);
                    for _ in 0..n {
                        let key = self.avro_str(whole)?;
                        // A repeated key replaces the earlier entry, as apache_avro's map does.
                        let value = self.compact(item, whole)?;
                        match items.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, v)) => *v = value,
                            None => items.push((key, value)),
                        }
                    }
                }
                AvroValue::Map(items)
            }
            Node::Union(variants) => {
                let i = self.long()?;
                let variant = variants.get(usize::try_from(i).ok()?)?;
                self.compact(variant, whole)?
            }
            Node::Record(fields, shape) => {
                let mut values = Vec::with_capacity(fields.len());
                for (_, node) in fields {
                    values.push(self.compact(node, whole)?);
                }
                AvroValue::Record(AvroRecord::new(shape.clone(), values).ok()?)
            }
        })
    }
}

/// Whether compact `value` can be written as `node` (to pick a union's branch: Avro allows
/// one branch per kind, and per name among records, so the first that fits is the one).
fn fits(node: &Node, value: &AvroValue) -> bool {
    match (node, value) {
        (Node::Null, AvroValue::Null)
        | (Node::Boolean, AvroValue::Boolean(_))
        | (Node::Int | Node::Date | Node::TimeMillis, AvroValue::Int(_))
        | (
            Node::Long
            | Node::TimeMicros
            | Node::TimestampMillis
            | Node::TimestampMicros
            | Node::TimestampNanos
            | Node::LocalTimestampMillis
            | Node::LocalTimestampMicros
            | Node::LocalTimestampNanos,
            AvroValue::Long(_),
        )
        | (Node::Float, AvroValue::Float(_))
        | (Node::Double, AvroValue::Double(_))
        | (Node::Bytes, AvroValue::Bytes(_))
        | (Node::String, AvroValue::String(_))
        | (Node::Array(_), AvroValue::Array(_))
        | (Node::Map(_), AvroValue::Map(_)) => true,
        (Node::Fixed(n), AvroValue::Fixed(b)) => b.len() == *n,
        (Node::Enum(symbols), AvroValue::Enum(i, s)) => {
            symbols.get(*i as usize).is_some_and(|x| x == s)
        }
        // Same shape (the usual case: built from this schema), else the same full name, else
        // (records made without a name, e.g. from apache_avro values) the same fields.
        (Node::Record(_, shape), AvroValue::Record(r)) => {
            Arc::ptr_eq(shape, r.shape())
                || (r.shape().name().is_empty() && shape.same_fields(r.shape()))
                || (!r.shape().name().is_empty() && r.shape().name() == shape.name())
        }
        _ => false,
    }
}

fn encode_compact(node: &Node, value: &AvroValue, out: &mut Vec<u8>) -> bool {
    match (node, value) {
        (Node::Union(variants), v) => {
            let Some(i) = variants.iter().position(|n| fits(n, v)) else {
                return false;
            };
            put_long(i as i64, out);
            return encode_compact(&variants[i], v, out);
        }
        (Node::Boolean, AvroValue::Boolean(b)) => out.push(u8::from(*b)),
        (Node::Bytes, AvroValue::Bytes(b)) => put_bytes(b, out),
        (Node::String, AvroValue::String(s)) => put_bytes(s.as_bytes(), out),
        (Node::Float, AvroValue::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (Node::Double, AvroValue::Double(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (Node::Fixed(n), AvroValue::Fixed(b)) if b.len() == *n => out.extend_from_slice(b),
        (_, AvroValue::Int(i)) if fits(node, value) => put_long(i64::from(*i), out),
        (_, AvroValue::Long(i)) if fits(node, value) => put_long(*i, out),
        (Node::Null, AvroValue::Null) => {}
        (Node::Enum(_), AvroValue::Enum(i, _)) if fits(node, value) => put_long(i64::from(*i), out),
        (Node::Array(item), AvroValue::Array(items)) => {
            if !items.is_empty() {
                put_long(items.len() as i64, out);
                for v in items {
                    if !encode_compact(item, v, out) {
                        return false;
                    }
                }
            }
            out.push(0);
        }
        (Node::Map(item), AvroValue::Map(items)) => {
            if !items.is_empty() {
                put_long(items.len() as i64, out);
                for (k, v) in items {
                    put_bytes(k.as_bytes(), out);
                    if !encode_compact(item, v, out) {
                        return false;
                    }
                }
            }
            out.push(0);
        }
        (Node::Record(fields, shape), AvroValue::Record(r)) => {
            if shape.same_fields(r.shape()) {
                for ((_, node), v) in fields.iter().zip(r.values()) {
                    if !encode_compact(node, v, out) {
                        return false;
                    }
                }
            } else {
                // Built with other fields or another order: by name; a field missing (which
                // a default may fill) is left to apache_avro's resolution.
                for (name, node) in fields {
                    match r.get(name) {
                        Some(v) if encode_compact(node, v, out) => {}
                        _ => return false,
                    }
                }
            }
        }
        _ => return false,
    }
    true
}

fn put_long(v: i64, out: &mut Vec<u8>) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    put_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

fn encode(node: &Node, value: &Value, out: &mut Vec<u8>) -> bool {
    match (node, value) {
        (Node::Null, Value::Null) => {}
        (Node::Boolean, Value::Boolean(b)) => out.push(u8::from(*b)),
        (Node::Int, Value::Int(i))
        | (Node::Date, Value::Date(i))
        | (Node::TimeMillis, Value::TimeMillis(i)) => put_long(i64::from(*i), out),
        (Node::Long, Value::Long(i))
        | (Node::TimeMicros, Value::TimeMicros(i))
        | (Node::TimestampMillis, Value::TimestampMillis(i))
        | (Node::TimestampMicros, Value::TimestampMicros(i))
        | (Node::TimestampNanos, Value::TimestampNanos(i))
        | (Node::LocalTimestampMillis, Value::LocalTimestampMillis(i))
        | (Node::LocalTimestampMicros, Value::LocalTimestampMicros(i))
        | (Node::LocalTimestampNanos, Value::LocalTimestampNanos(i)) => put_long(*i, out),
        (Node::Float, Value::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (Node::Double, Value::Double(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (Node::Bytes, Value::Bytes(b)) => put_bytes(b, out),
        (Node::String, Value::String(s)) => put_bytes(s.as_bytes(), out),
        (Node::Fixed(n), Value::Fixed(m, b)) if n == m && b.len() == *n => out.extend_from_slice(b),
        (Node::Enum(symbols), Value::Enum(i, s))
            if symbols.get(*i as usize).is_some_and(|x| **x == **s) =>
        {
            put_long(i64::from(*i), out)
        }
        (Node::Array(item), Value::Array(items)) => {
            if !items.is_empty() {
                put_long(items.len() as i64, out);
                for v in items {
                    if !encode(item, v, out) {
                        return false;
                    }
                }
            }
            out.push(0);
        }
        (Node::Map(item), Value::Map(items)) => {
            if !items.is_empty() {
                put_long(items.len() as i64, out);
                for (k, v) in items {
                    put_bytes(k.as_bytes(), out);
                    if !encode(item, v, out) {
                        return false;
                    }
                }
            }
            out.push(0);
        }
        (Node::Union(variants), Value::Union(i, inner)) => {
            let Some(variant) = variants.get(*i as usize) else {
                return false;
            };
            put_long(i64::from(*i), out);
            return encode(variant, inner, out);
        }
        (Node::Record(fields, _), Value::Record(values)) => {
            if fields.len() != values.len() {
                return false;
            }
            for ((name, node), (vname, v)) in fields.iter().zip(values) {
                if name != vname || !encode(node, v, out) {
                    return false;
                }
            }
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    const SCHEMA: &str = r#"{"type": "record", "name": "Env", "namespace": "t", "fields": [
        {"name": "before", "type": ["null", {"type": "record", "name": "Doc", "fields": [
            {"name": "id", "type": "string"},
            {"name": "n", "type": "int"},
            {"name": "price", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "ok", "type": "boolean"},
            {"name": "raw", "type": "bytes"},
            {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "attrs", "type": {"type": "map", "values": ["null", "long"]}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}
        ]}], "default": null},
        {"name": "after", "type": ["null", "Doc"], "default": null},
        {"name": "op", "type": "string"},
        {"name": "nested", "type": {"type": "record", "name": "Nested", "namespace": "other",
            "fields": [{"name": "k", "type": "t.Kind"}]}}
    ]}"#;

    fn doc(i: i64) -> Value {
        Value::Record(vec![
            ("id".into(), Value::String(format!("p-{i}"))),
            ("n".into(), Value::Int(-(i as i32))),
            ("price".into(), Value::Long(i * 1_000_003)),
            ("f".into(), Value::Float(1.5)),
            ("d".into(), Value::Double(-2.25)),
            ("ok".into(), Value::Boolean(i % 2 == 0)),
            ("raw".into(), Value::Bytes(vec![0, 1, 2, 255])),
            ("fx".into(), Value::Fixed(4, vec![9, 8, 7, 6])),
            ("kind".into(), Value::Enum(2, "C".into())),
            (
                "tags".into(),
                Value::Array((0..i).map(|t| Value::String(format!("t{t}"))).collect()),
            ),
            (
                "attrs".into(),
                Value::Map(HashMap::from([
                    ("a".to_owned(), Value::Union(1, Box::new(Value::Long(i)))),
                    ("b".to_owned(), Value::Union(0, Box::new(Value::Null))),
                ])),
            ),
            ("day".into(), Value::Date(20_000)),
            ("at".into(), Value::TimestampMillis(1_760_000_000_000 + i)),
        ])
    }

    fn envelope(i: i64) -> Value {
        Value::Record(vec![
            ("before".into(), Value::Union(0, Box::new(Value::Null))),
            ("after".into(), Value::Union(1, Box::new(doc(i)))),
            ("op".into(), Value::String("u".into())),
            (
                "nested".into(),
                Value::Record(vec![("k".into(), Value::Enum(0, "A".into()))]),
            ),
        ])
    }

    #[test]
    fn decodes_and_encodes_exactly_like_apache_avro() {
        let schema = Schema::parse_str(SCHEMA).expect("schema");
        let codec = Codec::compile(&schema).expect("compiles");
        let writer = GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer");
        let reader = GenericDatumReader::builder(&schema)
            .build()
            .expect("reader");
        for i in [0, 1, 3, 70, -5] {
            let v = envelope(i);
            let theirs = writer.write_value_to_vec(v.clone()).expect("encode");
            let mut ours = Vec::new();
            assert!(codec.encode(&v, &mut ours), "fast encode of {i}");
            assert_eq!(ours, theirs);
            let back = reader.read_value(&mut &theirs[..]).expect("decode");
            assert_eq!(codec.decode(&theirs), Some(back.clone()));
            assert_eq!(back, v);
            // The compact form: the same datum, written back to the same bytes.
            let compact = codec
                .decode_compact(&Bytes::from(theirs.clone()))
                .expect("compact decode");
            assert_eq!(compact.to_json(), crate::avro_to_json(&back));
            let mut again = Vec::new();
            assert!(
                codec.encode_compact(&compact, &mut again),
                "compact encode of {i}"
            );
            assert_eq!(again, theirs);
            let mut again = Vec::new();
            let converted = AvroValue::from_apache(&back);
            assert!(codec.encode_compact(&converted, &mut again), "by name, {i}");
            // (Map entries come in the hash map's order here: compare the data read back.)
            let reread = reader.read_value(&mut &again[..]).expect("decode");
            assert_eq!(reread, back);
        }
    }

    #[test]
    fn leaves_everything_else_to_apache_avro() {
        let schema = Schema::parse_str(SCHEMA).expect("schema");
        let codec = Codec::compile(&schema).expect("compiles");
        let writer = GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer");
        let bytes = writer.write_value_to_vec(envelope(3)).expect("encode");
        // Truncated and corrupt data: not decoded here.
        for cut in 0..bytes.len() {
            assert_eq!(codec.decode(&bytes[..cut]), None, "cut at {cut}");
            let cut = Bytes::copy_from_slice(&bytes[..cut]);
            assert_eq!(codec.decode_compact(&cut), None);
        }
        let mut bad = bytes.clone();
        bad[0] = 9; // union branch out of range
        assert_eq!(codec.decode(&bad), None);
        // Values that need apache_avro's field lookup, coercion or branch search.
        let Value::Record(mut fields) = envelope(1) else {
            unreachable!()
        };
        fields.swap(0, 1);
        assert!(!codec.encode(&Value::Record(fields.clone()), &mut Vec::new()));
        fields.swap(0, 1);
        fields[2].1 = Value::Enum(0, "u".into());
        assert!(!codec.encode(&Value::Record(fields.clone()), &mut Vec::new()));
        fields[2].1 = Value::String("u".into());
        fields[0].1 = Value::Null; // a union value without its branch
        assert!(!codec.encode(&Value::Record(fields), &mut Vec::new()));
        // Schemas it does not compile.
        let recursive = Schema::parse_str(
            r#"{"type": "record", "name": "L", "fields": [
                {"name": "next", "type": ["null", "L"]}]}"#,
        )
        .expect("schema");
        assert!(Codec::compile(&recursive).is_none());
        let uuid =
            Schema::parse_str(r#"{"type": "string", "logicalType": "uuid"}"#).expect("schema");
        assert!(Codec::compile(&uuid).is_none());
    }
}
