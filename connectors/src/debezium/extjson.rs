//! MongoDB extended JSON as Debezium writes it, and as this crate holds it.
//!
//! Events hold documents as *relaxed* extended JSON (`serde_json::Value`): ObjectIds as
//! `{"$oid": ".."}`, integers as plain numbers, dates as `{"$date": "<ISO-8601>"}`. Parsing is
//! done by the `bson` crate (re-exported by `mongodb`); this module only adds the two legacy
//! shapes the Java driver's `JsonMode.STRICT` writes and `bson` does not read
//! (`{"$binary": "<b64>", "$type": "00"}` and `{"$regex": "..", "$options": ".."}`).
//!
//! Writing goes the other way: [`to_debezium_document_string`] renders a document the way
//! Debezium's MongoDB connector renders `after`/`before` (`JsonMode.STRICT`, compact, `": "`
//! after names), and [`to_debezium_id_string`] renders a key id as Debezium does
//! (`JsonMode.RELAXED`).

use mongodb::bson::{Bson, Document};
use serde_json::{Map, Value};

/// Parses extended JSON text (canonical, relaxed or Debezium's legacy strict mode) holding a
/// document, into relaxed extended JSON.
pub(crate) fn parse_document_str(text: &str) -> Result<Value, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    document_to_relaxed(json)
}

/// Normalizes an extended JSON document already parsed as JSON into relaxed extended JSON.
pub(crate) fn document_to_relaxed(json: Value) -> Result<Value, String> {
    match json {
        Value::Object(map) => {
            let doc = to_document(map)?;
            Ok(Bson::Document(doc).into_relaxed_extjson())
        }
        other => Err(format!("expected a document, found {}", json_type(&other))),
    }
}

/// Parses extended JSON text holding any value (a key's `_id`) into relaxed extended JSON.
pub(crate) fn parse_value_str(text: &str) -> Result<Value, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(to_bson(json)?.into_relaxed_extjson())
}

/// Parses a relaxed (or canonical) extended JSON value into BSON.
pub(crate) fn to_bson(json: Value) -> Result<Bson, String> {
    Bson::try_from(normalize_legacy(json)).map_err(|e| e.to_string())
}

fn to_document(map: Map<String, Value>) -> Result<Document, String> {
    match to_bson(Value::Object(map))? {
        Bson::Document(doc) => Ok(doc),
        other => Err(format!(
            "expected a document, found the extended JSON {:?} value",
            other.element_type()
        )),
    }
}

/// Rewrites the legacy `$binary`/`$type` and `$regex`/`$options` shapes into extended JSON v2.
fn normalize_legacy(json: Value) -> Value {
    match json {
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_legacy).collect()),
        Value::Object(map) => {
            if map.len() == 2 {
                if let (Some(Value::String(b64)), Some(Value::String(t))) =
                    (map.get("$binary"), map.get("$type"))
                {
                    let sub_type = if t.len() == 1 {
                        format!("0{t}")
                    } else {
                        t.clone()
                    };
                    return serde_json::json!({"$binary": {"base64": b64, "subType": sub_type}});
                }
                if let (Some(Value::String(p)), Some(Value::String(o))) =
                    (map.get("$regex"), map.get("$options"))
                {
                    return serde_json::json!({"$regularExpression": {"pattern": p, "options": o}});
                }
            }
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, normalize_legacy(v)))
                    .collect(),
            )
        }
        other => other,
    }
}

/// Renders a relaxed extended JSON document as Debezium writes `after`/`before`.
///
/// Debezium uses the Java driver's `JsonMode.STRICT`: 64-bit integers as `{"$numberLong": ".."}`,
/// dates as `{"$date": <millis>}`, binaries as `{"$binary": "..", "$type": ".."}`.
pub(crate) fn to_debezium_document_string(relaxed: &Value) -> Result<String, String> {
    let bson = match relaxed {
        Value::Object(map) => Bson::Document(to_document(map.clone())?),
        other => return Err(format!("expected a document, found {}", json_type(other))),
    };
    let mut out = String::new();
    write_java_style(&to_strict(bson), &mut out);
    Ok(out)
}

/// Renders a relaxed extended JSON value as Debezium writes a key's `id` (`JsonMode.RELAXED`).
pub(crate) fn to_debezium_id_string(relaxed: &Value) -> Result<String, String> {
    let normalized = to_bson(relaxed.clone())?.into_relaxed_extjson();
    let mut out = String::new();
    write_java_style(&normalized, &mut out);
    Ok(out)
}

/// The Java driver's legacy `JsonMode.STRICT` shape of a BSON value, as JSON.
fn to_strict(bson: Bson) -> Value {
    match bson {
        Bson::Document(doc) => {
            Value::Object(doc.into_iter().map(|(k, v)| (k, to_strict(v))).collect())
        }
        Bson::Array(items) => Value::Array(items.into_iter().map(to_strict).collect()),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => serde_json::json!({"$numberLong": i.to_string()}),
        Bson::Double(f) => match serde_json::Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => Bson::Double(f).into_canonical_extjson(),
        },
        Bson::DateTime(dt) => serde_json::json!({"$date": dt.timestamp_millis()}),
        Bson::RegularExpression(re) => {
            serde_json::json!({"$regex": re.pattern, "$options": re.options})
        }
        Bson::Timestamp(ts) => {
            serde_json::json!({"$timestamp": {"t": ts.time, "i": ts.increment}})
        }
        Bson::JavaScriptCodeWithScope(code) => serde_json::json!({
            "$code": code.code,
            "$scope": to_strict(Bson::Document(code.scope)),
        }),
        Bson::Binary(bin) => {
            let canonical = Bson::Binary(bin).into_canonical_extjson();
            let body = canonical.get("$binary");
            serde_json::json!({
                "$binary": body.and_then(|b| b.get("base64")).cloned().unwrap_or(Value::Null),
                "$type": body.and_then(|b| b.get("subType")).cloned().unwrap_or(Value::Null),
            })
        }
        other => other.into_canonical_extjson(),
    }
}

/// Writes JSON as the Java driver's `JsonWriter` does with Debezium's settings (indent on, empty
/// indent and newline): `{"a": 1,"b": [1,2]}`.
fn write_java_style(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_java_style(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_java_style(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A short name of a JSON value's type, for error messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_document_is_read_as_relaxed() {
        let text = r#"{"_id": {"$oid": "67ab25755c0d5ac87eb8c632"},"n": {"$numberLong": "1736207571013"},"d": {"$date": 1739455297970},"b": {"$binary": "FA7YEzXgQXSX9OxmzllH2w==","$type": "04"},"r": {"$regex": "^a","$options": "i"}}"#;
        let relaxed = parse_document_str(text).expect("parses");
        assert_eq!(relaxed["_id"], json!({"$oid": "67ab25755c0d5ac87eb8c632"}));
        assert_eq!(relaxed["n"], json!(1736207571013_i64));
        assert_eq!(relaxed["d"], json!({"$date": "2025-02-13T14:01:37.97Z"}));
        assert_eq!(
            relaxed["b"],
            json!({"$binary": {"base64": "FA7YEzXgQXSX9OxmzllH2w==", "subType": "04"}})
        );
        assert_eq!(
            relaxed["r"],
            json!({"$regularExpression": {"pattern": "^a", "options": "i"}})
        );
    }

    #[test]
    fn debezium_rendering_matches_the_fixture_bytes() {
        let text = r#"{"_id": {"$oid": "67ab25755c0d5ac87eb8c632"},"created_at": {"$numberLong": "1736207571013"},"created_by": "peter","tags": ["pending"],"updated_at": {"$date": 1739455297970}}"#;
        let relaxed = parse_document_str(text).expect("parses");
        assert_eq!(
            to_debezium_document_string(&relaxed).expect("renders"),
            text
        );
        let id = parse_value_str(r#"{"$oid": "67ab25755c0d5ac87eb8c632"}"#).expect("parses");
        assert_eq!(
            to_debezium_id_string(&id).expect("renders"),
            r#"{"$oid": "67ab25755c0d5ac87eb8c632"}"#
        );
    }

    #[test]
    fn canonical_input_is_accepted() {
        let relaxed = parse_document_str(
            r#"{"a": {"$numberInt": "5"}, "d": {"$date": {"$numberLong": "0"}}}"#,
        )
        .expect("parses");
        assert_eq!(
            relaxed,
            json!({"a": 5, "d": {"$date": "1970-01-01T00:00:00Z"}})
        );
    }

    #[test]
    fn rejects_non_documents_and_bad_extjson() {
        assert!(parse_document_str("[1]").is_err());
        assert!(parse_document_str("{not json").is_err());
        assert!(parse_document_str(r#"{"_id": {"$oid": "xyz"}}"#).is_err());
    }
}
