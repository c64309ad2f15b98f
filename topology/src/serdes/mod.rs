//! Serdes: how keys and values become bytes and back.
//!
//! A [`Serde`] turns bytes into a [`Value`] and back for a given topic and side (key or value).
//! Four come with the crate: [`BytesSerde`], [`StringSerde`], [`JsonSerde`] and [`AvroSerde`],
//! the last in Confluent's wire format (magic byte `0`, a 4-byte big-endian schema id, then the
//! Avro datum) through a [`SchemaRegistry`]. Serdes are async because Avro may call the registry
//! once per schema id; afterwards everything is served from cache. Failures are typed
//! [`SerdeError`] values, never panics: the runtime sends undecodable records to the dead-letter
//! topic.

mod fast;
mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use futures::future::{BoxFuture, ready};

pub use registry::{
    HttpSchemaRegistry, MemorySchemaRegistry, RegistryError, SchemaRegistry, inline_references,
};

use crate::Value;
use crate::avro::AvroValue;

/// Why a key or value could not be (de)serialized.
#[derive(Debug, thiserror::Error, Clone)]
pub enum SerdeError {
    /// The first byte is not the Confluent magic byte `0`.
    #[error("wrong magic byte {found:#04x} (expected 0x00 for the Confluent wire format)")]
    WrongMagicByte {
        /// The byte found.
        found: u8,
    },
    /// Shorter than the 5-byte wire-format header.
    #[error("payload of {len} bytes is too short for the 5-byte wire-format header")]
    TooShort {
        /// Payload length.
        len: usize,
    },
    /// The registry failed (unknown id, registry down, bad schema).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The Avro datum did not match its schema (truncated, wrong types).
    #[error("avro (schema id {schema_id:?}): {message}")]
    Avro {
        /// The writer schema id, when known.
        schema_id: Option<u32>,
        /// The decoder's message.
        message: String,
    },
    /// Invalid JSON.
    #[error("json: {0}")]
    Json(String),
    /// Invalid UTF-8 for the string serde.
    #[error("utf-8: {0}")]
    Utf8(String),
    /// The value kind cannot be written by this serde.
    #[error("the {serde} serde cannot write {what}")]
    Unsupported {
        /// Serde name.
        serde: &'static str,
        /// What was given.
        what: String,
    },
}

impl SerdeError {
    /// Whether the same call may succeed later (the registry is unavailable), rather than the
    /// bytes being bad for good.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SerdeError::Registry(RegistryError::Unavailable { .. })
        )
    }

    /// A short class name for dead-letter headers and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            SerdeError::WrongMagicByte { .. } => "WrongMagicByte",
            SerdeError::TooShort { .. } => "TooShort",
            SerdeError::Registry(RegistryError::UnknownId { .. }) => "UnknownSchemaId",
            SerdeError::Registry(RegistryError::Unavailable { .. }) => "RegistryUnavailable",
            SerdeError::Registry(_) => "Registry",
            SerdeError::Avro { .. } => "AvroDecode",
            SerdeError::Json(_) => "JsonDecode",
            SerdeError::Utf8(_) => "Utf8",
            SerdeError::Unsupported { .. } => "Unsupported",
        }
    }
}

/// The kind of a serde, for descriptions and configuration checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerdeFormat {
    /// Raw bytes.
    Bytes,
    /// UTF-8 text.
    String,
    /// JSON.
    Json,
    /// Avro through a Schema Registry.
    Avro,
    /// A 64-bit signed integer, 8 bytes big-endian (Kafka's `LongSerde`).
    Long,
    /// The engine's own self-describing encoding of any [`Value`], for its internal topics.
    Internal,
}

impl SerdeFormat {
    /// Whether values of this format have fields a predicate can look at.
    pub fn is_structured(self) -> bool {
        matches!(self, SerdeFormat::Json | SerdeFormat::Avro)
    }
}

impl std::fmt::Display for SerdeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SerdeFormat::Bytes => "bytes",
            SerdeFormat::String => "string",
            SerdeFormat::Json => "json",
            SerdeFormat::Avro => "avro",
            SerdeFormat::Long => "long",
            SerdeFormat::Internal => "internal",
        })
    }
}

/// Converts between bytes and [`Value`]s for one topic side.
///
/// # Example
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use topology::serdes::{JsonSerde, Serde};
/// let v = JsonSerde.deserialize("t", false, br#"{"op":"c"}"#).await.unwrap();
/// assert_eq!(v.field_str("op").as_deref(), Some("c"));
/// let bytes = JsonSerde.serialize("t", false, &v).await.unwrap();
/// assert_eq!(bytes, br#"{"op":"c"}"#);
/// # });
/// ```
pub trait Serde: Send + Sync + std::fmt::Debug {
    /// The format, for descriptions and checks.
    fn format(&self) -> SerdeFormat;
    /// Decodes `bytes` read from `topic` (`is_key` selects the key side).
    fn deserialize<'a>(
        &'a self,
        topic: &'a str,
        is_key: bool,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<Value, SerdeError>>;
    /// Encodes `value` for `topic`.
    fn serialize<'a>(
        &'a self,
        topic: &'a str,
        is_key: bool,
        value: &'a Value,
    ) -> BoxFuture<'a, Result<Vec<u8>, SerdeError>>;
    /// [`deserialize`](Self::deserialize) without a future, when nothing needs awaiting (no
    /// registry call: a serde that does no I/O, or an Avro schema already cached); `None`
    /// asks for `deserialize`. The runtime tries this first on every record: a boxed future
    /// per call was a measurable share of the per-record cost.
    fn deserialize_now(
        &self,
        topic: &str,
        is_key: bool,
        bytes: &[u8],
    ) -> Option<Result<Value, SerdeError>> {
        let _ = (topic, is_key, bytes);
        None
    }
    /// [`deserialize_now`](Self::deserialize_now) of bytes the caller holds as
    /// [`Bytes`](bytes::Bytes), so a serde whose values can share the buffer (compact Avro)
    /// slices it instead of copying the datum. The default copies, as `deserialize_now` does.
    fn deserialize_shared_now(
        &self,
        topic: &str,
        is_key: bool,
        bytes: &bytes::Bytes,
    ) -> Option<Result<Value, SerdeError>> {
        self.deserialize_now(topic, is_key, bytes)
    }
    /// [`serialize`](Self::serialize) without a future; see
    /// [`deserialize_now`](Self::deserialize_now).
    fn serialize_now(
        &self,
        topic: &str,
        is_key: bool,
        value: &Value,
    ) -> Option<Result<Vec<u8>, SerdeError>> {
        let _ = (topic, is_key, value);
        None
    }
}

/// A shared serde.
pub type SerdeRef = Arc<dyn Serde>;

/// A serde that never waits (no registry, no I/O): implementing it gives a [`Serde`] whose
/// `*_now` paths always answer, which the runtime then takes on every record.
pub trait SyncSerde: Send + Sync + std::fmt::Debug {
    /// The format, for descriptions and checks.
    fn format(&self) -> SerdeFormat;
    /// Decodes `bytes` read from `topic` (`is_key` selects the key side).
    fn decode(&self, topic: &str, is_key: bool, bytes: &[u8]) -> Result<Value, SerdeError>;
    /// Encodes `value` for `topic`.
    fn encode(&self, topic: &str, is_key: bool, value: &Value) -> Result<Vec<u8>, SerdeError>;
}

impl<T: SyncSerde> Serde for T {
    fn format(&self) -> SerdeFormat {
        SyncSerde::format(self)
    }
    fn deserialize<'a>(
        &'a self,
        topic: &'a str,
        is_key: bool,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<Value, SerdeError>> {
        Box::pin(ready(self.decode(topic, is_key, bytes)))
    }
    fn serialize<'a>(
        &'a self,
        topic: &'a str,
        is_key: bool,
        value: &'a Value,
    ) -> BoxFuture<'a, Result<Vec<u8>, SerdeError>> {
        Box::pin(ready(self.encode(topic, is_key, value)))
    }
    fn deserialize_now(
        &self,
        topic: &str,
        is_key: bool,
        bytes: &[u8],
    ) -> Option<Result<Value, SerdeError>> {
        Some(self.decode(topic, is_key, bytes))
    }
    fn serialize_now(
        &self,
        topic: &str,
        is_key: bool,
        value: &Value,
    ) -> Option<Result<Vec<u8>, SerdeError>> {
        Some(self.encode(topic, is_key, value))
    }
}

/// Raw bytes, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSerde;

impl SyncSerde for BytesSerde {
    fn format(&self) -> SerdeFormat {
        SerdeFormat::Bytes
    }
    fn decode(&self, _: &str, _: bool, bytes: &[u8]) -> Result<Value, SerdeError> {
        Ok(Value::Bytes(bytes::Bytes::copy_from_slice(bytes)))
    }
    fn encode(&self, _: &str, _: bool, value: &Value) -> Result<Vec<u8>, SerdeError> {
        Ok(value.to_bytes())
    }
}

/// UTF-8 strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringSerde;

impl SyncSerde for StringSerde {
    fn format(&self) -> SerdeFormat {
        SerdeFormat::String
    }
    fn decode(&self, _: &str, _: bool, bytes: &[u8]) -> Result<Value, SerdeError> {
        std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|e| SerdeError::Utf8(e.to_string()))
    }
    fn encode(&self, _: &str, _: bool, value: &Value) -> Result<Vec<u8>, SerdeError> {
        Ok(match value {
            Value::Json(serde_json::Value::String(s)) => s.clone().into_bytes(),
            other => other.to_bytes(),
        })
    }
}

/// 64-bit signed integers as 8 bytes big-endian, Kafka's `Serdes.Long()`: what Kafka
/// Streams' `count()` writes. Decodes to a JSON number; encodes a JSON number, a string of
/// digits, or 8 raw bytes.
///
/// # Example
/// ```
/// use topology::serdes::{LongSerde, SyncSerde};
/// use topology::Value;
/// let bytes = LongSerde.encode("t", false, &Value::Json(serde_json::json!(258))).unwrap();
/// assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 1, 2]);
/// assert_eq!(LongSerde.decode("t", false, &bytes).unwrap(), Value::Json(serde_json::json!(258)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LongSerde;

impl SyncSerde for LongSerde {
    fn format(&self) -> SerdeFormat {
        SerdeFormat::Long
    }
    fn decode(&self, _: &str, _: bool, bytes: &[u8]) -> Result<Value, SerdeError> {
        let array: [u8; 8] = bytes.try_into().map_err(|_| {
            SerdeError::Json(format!("a long is 8 bytes, this value has {}", bytes.len()))
        })?;
        Ok(Value::Json(i64::from_be_bytes(array).into()))
    }
    fn encode(&self, _: &str, _: bool, value: &Value) -> Result<Vec<u8>, SerdeError> {
        let n = match value {
            Value::Bytes(b) if b.len() == 8 => return Ok(b.to_vec()),
            other => match other.to_json() {
                serde_json::Value::Number(n) => n.as_i64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            },
        };
        n.map(|n| n.to_be_bytes().to_vec())
            .ok_or_else(|| SerdeError::Json(format!("not a 64-bit integer: {}", value.to_json())))
    }
}

/// The engine's encoding of any [`Value`] for its own topics (repartition topics): bytes,
/// strings and JSON come back as they went in; Avro values come back as their JSON mapping
/// (the repartition topic carries no schema).
#[derive(Debug, Clone, Copy, Default)]
pub struct InternalSerde;

impl SyncSerde for InternalSerde {
    fn format(&self) -> SerdeFormat {
        SerdeFormat::Internal
    }
    fn decode(&self, _: &str, _: bool, bytes: &[u8]) -> Result<Value, SerdeError> {
        crate::stateful::StoredValue::from_bytes(bytes)
            .map(Value::from)
            .map_err(SerdeError::Json)
    }
    fn encode(&self, _: &str, _: bool, value: &Value) -> Result<Vec<u8>, SerdeError> {
        crate::stateful::StoredValue::from(value)
            .to_bytes()
            .map_err(SerdeError::Json)
    }
}

/// JSON documents (`serde_json::Value`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSerde;

impl SyncSerde for JsonSerde {
    fn format(&self) -> SerdeFormat {
        SerdeFormat::Json
    }
    fn decode(&self, _: &str, _: bool, bytes: &[u8]) -> Result<Value, SerdeError> {
        serde_json::from_slice(bytes)
            .map(Value::Json)
            .map_err(|e| SerdeError::Json(e.to_string()))
    }
    fn encode(&self, _: &str, _: bool, value: &Value) -> Result<Vec<u8>, SerdeError> {
        serde_json::to_vec(&value.to_json()).map_err(|e| SerdeError::Json(e.to_string()))
    }
}

/// Avro in Confluent's wire format through a schema registry.
///
/// Decoding reads the schema id, fetches the writer schema (cached by the registry client) and,
/// when a reader schema was given, resolves the datum to it. Encoding needs a schema: it is
/// registered (or looked up) under the subject `{topic}-value` / `{topic}-key`
/// (TopicNameStrategy) and the returned id is written in the header.
///
/// # Example
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use topology::serdes::{AvroSerde, MemorySchemaRegistry, Serde};
/// use topology::Value;
/// let schema = apache_avro::Schema::parse_str(
///     r#"{"type":"record","name":"E","fields":[{"name":"op","type":"string"}]}"#).unwrap();
/// let serde = AvroSerde::new(Arc::new(MemorySchemaRegistry::default())).with_schema(schema);
/// let bytes = serde.serialize("cdc", false, &Value::Json(serde_json::json!({"op": "c"}))).await.unwrap();
/// assert_eq!(bytes[0], 0);
/// let back = serde.deserialize("cdc", false, &bytes).await.unwrap();
/// assert_eq!(back.field_str("op").as_deref(), Some("c"));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct AvroSerde {
    registry: Arc<dyn SchemaRegistry>,
    schema: Option<Arc<Schema>>,
    cache: Arc<AvroCache>,
    compact: bool,
}

/// What an [`AvroSerde`] (and its clones) keeps between records, so the steady state neither
/// talks to the registry nor canonicalises or resolves schemas: the schema id per subject it
/// encodes to, a reader per writer schema id and the writer of its own schema.
#[derive(Default)]
struct AvroCache {
    /// Schema id of the configured schema per topic, value side.
    value_ids: RwLock<HashMap<String, u32>>,
    /// Schema id of the configured schema per topic, key side.
    key_ids: RwLock<HashMap<String, u32>>,
    /// Readers by writer schema id (resolving to the configured schema, if any).
    readers: RwLock<HashMap<u32, Arc<Reader>>>,
    /// The writer of the configured schema.
    writer: OnceLock<Result<Writer, String>>,
}

/// The decoders of one writer schema: the compiled one (when there is no reader schema to
/// resolve to and the schema compiles), else and for anything it leaves, `apache_avro`'s.
struct Reader {
    fast: Option<fast::Codec>,
    generic: GenericDatumReader<'static>,
}

/// The encoders of the configured schema, as for [`Reader`].
struct Writer {
    fast: Option<fast::Codec>,
    generic: GenericDatumWriter<'static>,
}

impl std::fmt::Debug for AvroCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let readers = self.readers.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("AvroCache")
            .field("readers", &readers)
            .finish_non_exhaustive()
    }
}

impl AvroCache {
    fn ids(&self, is_key: bool) -> &RwLock<HashMap<String, u32>> {
        if is_key {
            &self.key_ids
        } else {
            &self.value_ids
        }
    }
}

/// A process-wide copy of `schema` that lives as long as the process, so readers and writers
/// (which borrow their schemas) can be cached. One copy per distinct schema (by its full JSON
/// form), so the memory is bounded by the schemas the process sees.
fn interned(schema: &Schema) -> Result<&'static Schema, String> {
    static INTERNED: OnceLock<Mutex<HashMap<String, &'static Schema>>> = OnceLock::new();
    let key = serde_json::to_string(schema).map_err(|e| e.to_string())?;
    let mut map = INTERNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(map
        .entry(key)
        .or_insert_with(|| Box::leak(Box::new(schema.clone()))))
}

fn avro_err(schema_id: Option<u32>) -> impl FnOnce(apache_avro::Error) -> SerdeError {
    move |e| SerdeError::Avro {
        schema_id,
        message: e.to_string(),
    }
}

impl AvroSerde {
    /// A serde that decodes with writer schemas only (and cannot encode until given a schema).
    pub fn new(registry: Arc<dyn SchemaRegistry>) -> Self {
        AvroSerde {
            registry,
            schema: None,
            cache: Arc::default(),
            compact: false,
        }
    }

    /// Decodes into [`Value::AvroCompact`] instead of [`Value::Avro`]: field names shared per
    /// schema, strings and bytes sliced from one copy of the datum, unions as their branch
    /// (see [`crate::avro`]). That is a few allocations per datum instead of one or more per
    /// field, which on the engine benchmark's envelope was most of the decoding and freeing
    /// cost. Writing is unchanged: the serde writes both forms either way.
    ///
    /// # Example
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use topology::serdes::{AvroSerde, MemorySchemaRegistry, Serde};
    /// use topology::avro::AvroValue;
    /// use topology::Value;
    /// let schema = apache_avro::Schema::parse_str(
    ///     r#"{"type":"record","name":"E","fields":[{"name":"op","type":"string"}]}"#).unwrap();
    /// let serde = AvroSerde::new(Arc::new(MemorySchemaRegistry::default()))
    ///     .with_schema(schema)
    ///     .compact();
    /// let bytes = serde.serialize("cdc", false, &Value::Json(serde_json::json!({"op": "c"}))).await.unwrap();
    /// let Value::AvroCompact(v) = serde.deserialize("cdc", false, &bytes).await.unwrap() else { panic!() };
    /// assert_eq!(v.get("op").and_then(AvroValue::as_str), Some("c"));
    /// # });
    /// ```
    pub fn compact(mut self) -> Self {
        self.compact = true;
        self
    }

    /// Sets the schema: the reader schema when decoding, the writer schema when encoding.
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.schema = Some(Arc::new(schema));
        self.cache = Arc::default();
        self
    }

    /// The configured schema, if any.
    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_deref()
    }

    /// The subject under TopicNameStrategy.
    pub fn subject(topic: &str, is_key: bool) -> String {
        format!("{topic}-{}", if is_key { "key" } else { "value" })
    }

    /// The reader for writer schema `id` (built once per id).
    async fn reader(&self, id: u32) -> Result<Arc<Reader>, SerdeError> {
        let cached = self
            .cache
            .readers
            .read()
            .ok()
            .and_then(|m| m.get(&id).cloned());
        if let Some(r) = cached {
            return Ok(r);
        }
        let writer = self.registry.schema_by_id(id).await?;
        let bad = |message: String| SerdeError::Avro {
            schema_id: Some(id),
            message,
        };
        let writer = interned(&writer).map_err(bad)?;
        let reader_schema = match self.schema.as_deref() {
            Some(s) => Some(interned(s).map_err(bad)?),
            None => None,
        };
        let generic = GenericDatumReader::builder(writer)
            .maybe_reader_schema(reader_schema)
            .build()
            .map_err(avro_err(Some(id)))?;
        let fast = match reader_schema {
            None => fast::Codec::compile(writer),
            Some(_) => None,
        };
        let reader = Arc::new(Reader { fast, generic });
        if let Ok(mut m) = self.cache.readers.write() {
            m.insert(id, reader.clone());
        }
        Ok(reader)
    }

    /// The id of the configured schema under the subject of `topic` (registered once).
    async fn schema_id(
        &self,
        topic: &str,
        is_key: bool,
        schema: &Schema,
    ) -> Result<u32, SerdeError> {
        let ids = self.cache.ids(is_key);
        if let Some(id) = ids.read().ok().and_then(|m| m.get(topic).copied()) {
            return Ok(id);
        }
        let id = self
            .registry
            .register(&Self::subject(topic, is_key), schema)
            .await?;
        if let Ok(mut m) = ids.write() {
            m.insert(topic.to_owned(), id);
        }
        Ok(id)
    }

    /// The writer of the configured schema (built once).
    fn writer(&self, schema: &Schema) -> Result<&Writer, SerdeError> {
        self.cache
            .writer
            .get_or_init(|| {
                let schema = interned(schema)?;
                let generic = GenericDatumWriter::builder(schema)
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Writer {
                    fast: fast::Codec::compile(schema),
                    generic,
                })
            })
            .as_ref()
            .map_err(|message| SerdeError::Avro {
                schema_id: None,
                message: message.clone(),
            })
    }
}

impl AvroSerde {
    /// The writer schema id of a Confluent wire-format payload.
    fn header(bytes: &[u8]) -> Result<u32, SerdeError> {
        if bytes.len() < 5 {
            if let Some(&b) = bytes.first().filter(|b| **b != 0) {
                return Err(SerdeError::WrongMagicByte { found: b });
            }
            return Err(SerdeError::TooShort { len: bytes.len() });
        }
        if bytes[0] != 0 {
            return Err(SerdeError::WrongMagicByte { found: bytes[0] });
        }
        Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
    }

    /// Decodes `bytes` when its writer schema's reader is already cached (`None` otherwise:
    /// the awaited path fetches it); `shared`, when given, holds the same bytes.
    fn decode_cached(
        &self,
        bytes: &[u8],
        shared: Option<&bytes::Bytes>,
    ) -> Option<Result<Value, SerdeError>> {
        let id = match Self::header(bytes) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        let readers = self.cache.readers.read().ok()?;
        let reader = readers.get(&id)?;
        Some(self.decode(reader, id, bytes, shared))
    }

    /// Decodes the datum after the header with `reader` (of writer schema `id`); `shared`,
    /// when given, holds the same bytes, for compact values to slice.
    fn decode(
        &self,
        reader: &Reader,
        id: u32,
        bytes: &[u8],
        shared: Option<&bytes::Bytes>,
    ) -> Result<Value, SerdeError> {
        let mut datum = &bytes[5..];
        if self.compact {
            // The value's strings and bytes slice the caller's buffer, or one copy of the datum.
            let owned = match shared {
                Some(b) => b.slice(5..),
                None => bytes::Bytes::copy_from_slice(datum),
            };
            if let Some(v) = reader.fast.as_ref().and_then(|c| c.decode_compact(&owned)) {
                return Ok(Value::AvroCompact(v));
            }
            return reader
                .generic
                .read_value(&mut datum)
                .map(|v| Value::AvroCompact(AvroValue::from_apache(&v)))
                .map_err(avro_err(Some(id)));
        }
        if let Some(v) = reader.fast.as_ref().and_then(|c| c.decode(datum)) {
            return Ok(Value::Avro(v));
        }
        reader
            .generic
            .read_value(&mut datum)
            .map(Value::Avro)
            .map_err(avro_err(Some(id)))
    }

    /// The header (id still zero) and datum of `value` in one buffer.
    fn encode(&self, value: &Value) -> Result<Vec<u8>, SerdeError> {
        let Some(schema) = self.schema.as_deref() else {
            return Err(SerdeError::Unsupported {
                serde: "avro",
                what: "a value without a configured writer schema".into(),
            });
        };
        let writer = self.writer(schema)?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&[0; 5]);
        // An Avro value shaped exactly like the schema is written in one pass by the
        // compiled codec; one otherwise valid for the schema by reference (the writer
        // validates it); anything else is converted and resolved to the schema first.
        let direct = match value {
            Value::Avro(a) => {
                writer.fast.as_ref().is_some_and(|c| c.encode(a, &mut out)) || {
                    out.truncate(5);
                    writer.generic.write_value_ref(&mut out, a).is_ok()
                }
            }
            Value::AvroCompact(a) => writer
                .fast
                .as_ref()
                .is_some_and(|c| c.encode_compact(a, &mut out)),
            _ => false,
        };
        if !direct {
            out.truncate(5);
            let avro = match value {
                Value::Avro(a) => a.clone(),
                Value::AvroCompact(a) => a.to_apache(),
                Value::Json(j) => {
                    apache_avro::types::Value::try_from(j.clone()).map_err(avro_err(None))?
                }
                Value::String(s) => apache_avro::types::Value::String(s.clone()),
                Value::Bytes(b) => apache_avro::types::Value::Bytes(b.to_vec()),
            };
            let resolved = avro.resolve(schema).map_err(avro_err(None))?;
            writer
                .generic
                .write_value_ref(&mut out, &resolved)
                .map_err(avro_err(None))?;
        }
        Ok(out)
    }

    fn cached_id(&self, topic: &str, is_key: bool) -> Option<u32> {
        self.cache
            .ids(is_key)
            .read()
            .ok()
            .and_then(|m| m.get(topic).copied())
    }
}

impl Serde for AvroSerde {
    fn format(&self) -> SerdeFormat {
        SerdeFormat::Avro
    }

    fn deserialize<'a>(
        &'a self,
        _topic: &'a str,
        _is_key: bool,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<Value, SerdeError>> {
        Box::pin(async move {
            let id = Self::header(bytes)?;
            let reader = self.reader(id).await?;
            self.decode(&reader, id, bytes, None)
        })
    }

    fn serialize<'a>(
        &'a self,
        topic: &'a str,
        is_key: bool,
        value: &'a Value,
    ) -> BoxFuture<'a, Result<Vec<u8>, SerdeError>> {
        Box::pin(async move {
            let mut out = self.encode(value)?;
            let Some(schema) = self.schema.as_deref() else {
                return Err(SerdeError::Unsupported {
                    serde: "avro",
                    what: "a value without a configured writer schema".into(),
                });
            };
            let id = self.schema_id(topic, is_key, schema).await?;
            out[1..5].copy_from_slice(&id.to_be_bytes());
            Ok(out)
        })
    }

    fn deserialize_now(
        &self,
        _topic: &str,
        _is_key: bool,
        bytes: &[u8],
    ) -> Option<Result<Value, SerdeError>> {
        self.decode_cached(bytes, None)
    }

    fn deserialize_shared_now(
        &self,
        _topic: &str,
        _is_key: bool,
        bytes: &bytes::Bytes,
    ) -> Option<Result<Value, SerdeError>> {
        self.decode_cached(bytes, Some(bytes))
    }

    fn serialize_now(
        &self,
        topic: &str,
        is_key: bool,
        value: &Value,
    ) -> Option<Result<Vec<u8>, SerdeError>> {
        let id = self.cached_id(topic, is_key)?;
        Some(self.encode(value).map(|mut out| {
            out[1..5].copy_from_slice(&id.to_be_bytes());
            out
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "E", "fields": [
        {"name": "op", "type": "string"},
        {"name": "n", "type": ["null", "long"]}]}"#;

    #[tokio::test]
    async fn now_paths_agree_with_the_awaited_ones() {
        let schema = Schema::parse_str(SCHEMA).expect("schema");
        let serde = AvroSerde::new(Arc::new(MemorySchemaRegistry::default())).with_schema(schema);
        let value = Value::Avro(apache_avro::types::Value::Record(vec![
            ("op".into(), apache_avro::types::Value::String("c".into())),
            (
                "n".into(),
                apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Long(7))),
            ),
        ]));
        // Nothing cached yet: the registry must be asked, so only the awaited path answers.
        assert!(serde.serialize_now("t", false, &value).is_none());
        let bytes = serde.serialize("t", false, &value).await.expect("encode");
        let now = serde.serialize_now("t", false, &value).expect("id cached");
        assert_eq!(now.expect("encode now"), bytes);
        assert!(serde.deserialize_now("t", false, &bytes).is_none());
        let back = serde.deserialize("t", false, &bytes).await.expect("decode");
        let now = serde
            .deserialize_now("t", false, &bytes)
            .expect("reader cached");
        assert_eq!(now.expect("decode now"), back);
        assert_eq!(back, value);
        // Shared bytes: the same value, in both forms (the compact one slicing the buffer).
        let shared = bytes::Bytes::from(bytes.clone());
        let got = serde
            .deserialize_shared_now("t", false, &shared)
            .expect("cached");
        assert_eq!(got.expect("decode shared"), back);
        let compact = serde.clone().compact();
        let sliced = compact
            .deserialize_shared_now("t", false, &shared)
            .expect("cached")
            .expect("decode shared");
        let copied = compact
            .deserialize_now("t", false, &bytes)
            .expect("cached")
            .expect("decode");
        assert!(matches!(sliced, Value::AvroCompact(_)));
        assert_eq!(sliced, copied);
        assert_eq!(sliced.to_json(), back.to_json());
        // Bad bytes fail the same way on both paths (without a registry call).
        for bad in [&b"\x01\0\0\0\x01x"[..], &b"\0\0"[..]] {
            let now = serde
                .deserialize_now("t", false, bad)
                .expect("answered now");
            let awaited = serde.deserialize("t", false, bad).await;
            assert_eq!(
                now.map_err(|e| e.to_string()),
                awaited.map_err(|e| e.to_string())
            );
        }
        for (s, v) in [
            (&StringSerde as &dyn Serde, Value::from("k-1")),
            (&JsonSerde, Value::Json(serde_json::json!({"op": "u"}))),
            (&BytesSerde, Value::from(vec![0u8, 1, 2])),
        ] {
            let bytes = s.serialize("t", true, &v).await.expect("encode");
            let now = s
                .serialize_now("t", true, &v)
                .expect("now")
                .expect("encode now");
            assert_eq!(now, bytes);
            let back = s.deserialize("t", true, &bytes).await.expect("decode");
            let now = s
                .deserialize_now("t", true, &bytes)
                .expect("now")
                .expect("decode now");
            assert_eq!(now, back);
        }
    }
}
