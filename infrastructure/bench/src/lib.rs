//! Shared pieces of the engine benchmark (SPEC §8, issue 7): the Debezium-like envelope and
//! product schemas, the input generator, the envelope → product mapping, and settings.
//!
//! Binaries: `bench-harness` (creates topics, produces the input, runs one contender as a child
//! process and measures it from the outside), `engine-bench` (our topology on the engine's
//! `Runtime` over `KafkaTransport`) and `rdkafka-pipe` (the hand-written byte-copy ceiling).

use std::sync::Arc;

use apache_avro::types::Value as Avro;
use topology::avro::{AvroRecord, AvroValue, RecordShape};

/// The input envelope: Debezium MongoDB's `before`/`after`/`source`/`op`/`ts_ms` shape, with
/// `after` as a record (so every contender measures Avro work, not JSON-in-a-string parsing).
pub const ENVELOPE_SCHEMA: &str = include_str!("../schemas/envelope.avsc");
/// The output product.
pub const PRODUCT_SCHEMA: &str = include_str!("../schemas/product.avsc");

/// Every tenth input record is a delete (`op = "d"`, no `after`): the filter drops it.
pub fn is_delete(i: u64) -> bool {
    i % 10 == 9
}

/// How many outputs `n` inputs produce through the filter.
pub fn expected_outputs(n: u64) -> u64 {
    n - n / 10
}

/// The key of input record `i` (20,000 distinct products).
pub fn key_of(i: u64) -> String {
    format!("p-{:06}", i % 20_000)
}

/// Input record `i` as an Avro value of [`ENVELOPE_SCHEMA`] (about 300 bytes encoded).
pub fn envelope(i: u64) -> Avro {
    let key = key_of(i);
    let op = if is_delete(i) {
        "d"
    } else {
        ["c", "r", "u", "u", "u", "u", "u", "u", "u"][(i % 10) as usize]
    };
    let ts = 1_760_000_000_000i64 + i as i64;
    let after = if is_delete(i) {
        Avro::Union(0, Box::new(Avro::Null))
    } else {
        Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("_id".into(), Avro::String(key.clone())),
                ("sku".into(), Avro::String(format!("SKU-{:08}", i % 20_000))),
                (
                    "name".into(),
                    Avro::String(format!("Trail runner {}", i % 997)),
                ),
                (
                    "description".into(),
                    Avro::String(
                        "Lightweight trail running shoe with a grippy outsole and mesh upper"
                            .into(),
                    ),
                ),
                ("price_cents".into(), Avro::Long(4_999 + (i % 5_000) as i64)),
                ("currency".into(), Avro::String("EUR".into())),
                ("category".into(), Avro::String("shoes/running".into())),
                (
                    "image_urls".into(),
                    Avro::Array(vec![
                        Avro::String(format!("https://img.example.com/{key}/front.jpg")),
                        Avro::String(format!("https://img.example.com/{key}/side.jpg")),
                    ]),
                ),
                ("updated_at".into(), Avro::Long(ts)),
            ])),
        )
    };
    Avro::Record(vec![
        ("before".into(), Avro::Union(0, Box::new(Avro::Null))),
        ("after".into(), after),
        (
            "source".into(),
            Avro::Record(vec![
                ("version".into(), Avro::String("3.1.2.Final".into())),
                ("connector".into(), Avro::String("mongodb".into())),
                ("name".into(), Avro::String("catalog".into())),
                ("ts_ms".into(), Avro::Long(ts)),
                ("snapshot".into(), Avro::Union(0, Box::new(Avro::Null))),
                ("db".into(), Avro::String("shop".into())),
                ("rs".into(), Avro::String("rs0".into())),
                ("collection".into(), Avro::String("products".into())),
                ("ord".into(), Avro::Int((i % 1000) as i32)),
            ]),
        ),
        ("op".into(), Avro::String(op.into())),
        ("ts_ms".into(), Avro::Union(1, Box::new(Avro::Long(ts)))),
    ])
}

/// The `op` of a decoded envelope.
pub fn op_of(v: &Avro) -> Option<&str> {
    match v {
        Avro::Record(fields) => fields.iter().find_map(|(n, f)| match (n.as_str(), f) {
            ("op", Avro::String(s)) => Some(s.as_str()),
            _ => None,
        }),
        _ => None,
    }
}

fn unwrap_union(v: Avro) -> Avro {
    match v {
        Avro::Union(_, inner) => *inner,
        other => other,
    }
}

/// Maps a decoded envelope to a [`PRODUCT_SCHEMA`] value (fields moved, not copied). `None`
/// when the envelope has no `after` document.
pub fn to_product(envelope: Avro) -> Option<Avro> {
    let Avro::Record(fields) = envelope else {
        return None;
    };
    let mut after = None;
    let mut source_ts = None;
    for (name, value) in fields {
        match name.as_str() {
            "after" => after = Some(unwrap_union(value)),
            "source" => {
                if let Avro::Record(src) = value {
                    source_ts = src.into_iter().find(|(n, _)| n == "ts_ms").map(|(_, v)| v);
                }
            }
            _ => {}
        }
    }
    let Some(Avro::Record(doc)) = after else {
        return None;
    };
    let mut out = Vec::with_capacity(9);
    for (name, value) in doc {
        match name.as_str() {
            "_id" => out.push(("id".to_owned(), value)),
            "updated_at" => {}
            _ => out.push((name, value)),
        }
    }
    out.push((
        "source_ts_ms".to_owned(),
        source_ts.unwrap_or(Avro::Long(0)),
    ));
    Some(Avro::Record(out))
}

/// The `op` of an envelope decoded in compact form (`AvroSerde::compact`).
pub fn op_of_compact(v: &AvroValue) -> Option<&str> {
    v.get("op").and_then(AvroValue::as_str)
}

/// [`to_product`] for an envelope decoded in compact form: the product's fields are moved
/// out of `after` by name into a record of `product` (the shape of [`PRODUCT_SCHEMA`], built
/// once), so the serde writes it positionally. `None` when the envelope has no `after`
/// document or it lacks a product field.
pub fn to_product_compact(product: &Arc<RecordShape>, envelope: AvroValue) -> Option<AvroValue> {
    let mut envelope = envelope.into_record()?;
    let mut doc = envelope.take("after")?.into_record()?;
    let source_ts = envelope
        .get("source")
        .and_then(|s| s.get("ts_ms"))
        .and_then(AvroValue::as_long)
        .unwrap_or(0);
    // Sized up front: collecting through `Option` cannot know the length and grew the vector
    // by reallocation (measured: ~10% of the loop thread).
    let mut values = Vec::with_capacity(product.fields().len());
    for field in product.fields() {
        values.push(match field {
            "id" => doc.take("_id")?,
            "source_ts_ms" => AvroValue::Long(source_ts),
            other => doc.take(other)?,
        });
    }
    AvroRecord::new(product.clone(), values)
        .ok()
        .map(AvroValue::Record)
}

/// A setting from the environment, else from `infrastructure/.env`, else `default`.
pub fn setting(key: &str, default: &str) -> String {
    if let Ok(v) = std::env::var(key) {
        return v;
    }
    let env = concat!(env!("CARGO_MANIFEST_DIR"), "/../.env");
    std::fs::read_to_string(env)
        .ok()
        .and_then(|t| {
            t.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| default.to_owned())
}

/// Peak RSS (VmHWM) of process `pid` (`self` for this one) in KiB.
pub fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user, system) this process used so far, in seconds (`/proc/self/stat`, clock
/// ticks of 1/100 s).
pub fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|t| t / 100.0)
    };
    Some((tick(11)?, tick(12)?))
}

/// The librdkafka settings every Rust contender's producer uses (the engine's
/// `KafkaTransport` producer settings).
pub const PRODUCER_SETTINGS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
];

/// The consumer settings the engine's `KafkaTransport` uses (at-least-once mode).
pub const CONSUMER_SETTINGS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "false"),
    ("isolation.level", "read_uncommitted"),
    // KafkaTransport's fetch defaults (the client settings must match).
    ("fetch.wait.max.ms", "100"),
    ("fetch.queue.backoff.ms", "10"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_about_300_bytes_and_maps_to_a_product() {
        let env = apache_avro::Schema::parse_str(ENVELOPE_SCHEMA).expect("envelope schema");
        let prod = apache_avro::Schema::parse_str(PRODUCT_SCHEMA).expect("product schema");
        let v = envelope(3);
        let w = |s| {
            apache_avro::writer::datum::GenericDatumWriter::builder(s)
                .build()
                .expect("writer")
        };
        let bytes = w(&env).write_value_to_vec(v.clone()).expect("encode");
        assert!((250..=350).contains(&bytes.len()), "{} bytes", bytes.len());
        assert_eq!(op_of(&v), Some("u"));
        let p = to_product(v).expect("product");
        w(&prod).write_value_to_vec(p).expect("product encodes");
        assert_eq!(op_of(&envelope(9)), Some("d"));
        assert!(to_product(envelope(9)).is_none());
        assert_eq!(expected_outputs(200_000), 180_000);
        // The compact mapping writes the same bytes as the apache_avro one.
        let shape = RecordShape::of(&prod).expect("record schema");
        for i in [0, 3, 9, 12_345] {
            let compact = to_product_compact(&shape, AvroValue::from_apache(&envelope(i)));
            let apache = to_product(envelope(i));
            assert_eq!(compact.is_some(), apache.is_some(), "record {i}");
            if let (Some(c), Some(a)) = (compact, apache) {
                let a = a.resolve(&prod).expect("resolves");
                let c = c.to_apache().resolve(&prod).expect("resolves");
                assert_eq!(
                    w(&prod).write_value_to_vec(c).expect("encode"),
                    w(&prod).write_value_to_vec(a).expect("encode")
                );
            }
        }
        assert_eq!(
            op_of_compact(&AvroValue::from_apache(&envelope(9))),
            Some("d")
        );
        assert_eq!(expected_outputs(15), 14);
        assert_eq!(expected_outputs(19), 18);
    }
}
