//! Values several node kinds share: upstream names, topics (literal or by reference), serdes
//! and field predicates.

use std::sync::Arc;

use serde::Deserialize;

use crate::graph::Predicate;
use crate::serdes::SerdeFormat;

/// One or several names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The names, in order.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `{ref: name}`: a value registered in code under `name` (see [`Registry`](super::Registry)).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NameRef {
    /// The registered name.
    #[serde(rename = "ref")]
    pub name: String,
}

/// A topic as written: its name, or `{ref: name}` for one registered with
/// [`Registry::topic`](super::Registry::topic).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TopicSpec {
    /// The topic's own name.
    Name(String),
    /// A registered topic.
    Ref(NameRef),
}

/// An Avro schema as written: its JSON text, or `{ref: name}` for one registered with
/// [`Registry::avro_schema`](super::Registry::avro_schema).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SchemaSpec {
    /// The schema's JSON text.
    Inline(String),
    /// A registered schema.
    Ref(NameRef),
}

/// A serde as written in the file: a name, or a map with a type and an Avro schema.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SerdeSpec {
    /// `string`, `bytes`, `json` or `avro`.
    Name(String),
    /// `{type: avro, schema: '{...}'}` or `{type: avro, schema: {ref: name}}`.
    Full {
        /// Serde name.
        #[serde(rename = "type")]
        kind: String,
        /// The Avro schema to write with.
        #[serde(default)]
        schema: Option<SchemaSpec>,
    },
}

impl SerdeSpec {
    /// The serde's name as written.
    pub fn kind(&self) -> &str {
        match self {
            SerdeSpec::Name(n) => n,
            SerdeSpec::Full { kind, .. } => kind,
        }
    }
    /// The schema, when one is given.
    pub fn schema(&self) -> Option<&SchemaSpec> {
        match self {
            SerdeSpec::Name(_) => None,
            SerdeSpec::Full { schema, .. } => schema.as_ref(),
        }
    }
    /// The format it names, if it names one.
    pub fn format(&self) -> Option<SerdeFormat> {
        match self.kind() {
            "bytes" => Some(SerdeFormat::Bytes),
            "string" => Some(SerdeFormat::String),
            "json" => Some(SerdeFormat::Json),
            "avro" => Some(SerdeFormat::Avro),
            "long" => Some(SerdeFormat::Long),
            _ => None,
        }
    }
    /// The format of an optional serde: `bytes` when none is written.
    pub(super) fn format_or_bytes(spec: Option<&SerdeSpec>) -> Option<SerdeFormat> {
        spec.map_or(Some(SerdeFormat::Bytes), SerdeSpec::format)
    }
}

/// A predicate on a field of the record value.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldPredicate {
    /// Dotted path into the value (`op`, `after.mallId`).
    pub field: String,
    /// Equal to.
    #[serde(default)]
    pub eq: Option<String>,
    /// One of.
    #[serde(default, rename = "in")]
    pub in_: Option<Vec<String>>,
    /// None of.
    #[serde(default)]
    pub not_in: Option<Vec<String>>,
    /// Present (true) or absent (false).
    #[serde(default)]
    pub exists: Option<bool>,
}

impl FieldPredicate {
    /// What is wrong with it, if anything.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.field.trim().is_empty() {
            v.push("`field` must not be empty".to_owned());
        }
        let n = [
            self.eq.is_some(),
            self.in_.is_some(),
            self.not_in.is_some(),
            self.exists.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            v.push("give exactly one of `eq`, `in`, `not_in`, `exists`".to_owned());
        }
        v
    }

    /// The predicate as a function.
    pub fn to_predicate(&self) -> Predicate {
        let p = self.clone();
        Arc::new(move |r| {
            let got = r.value.as_ref().and_then(|v| v.field_str(&p.field));
            if let Some(e) = &p.exists {
                return got.is_some() == *e;
            }
            match got {
                None => p.not_in.is_some(),
                Some(g) => {
                    if let Some(eq) = &p.eq {
                        &g == eq
                    } else if let Some(list) = &p.in_ {
                        list.contains(&g)
                    } else if let Some(list) = &p.not_in {
                        !list.contains(&g)
                    } else {
                        false
                    }
                }
            }
        })
    }
}
