//! What a node kind's `validate` is given: its place, the other nodes' names, the registry,
//! and helpers that check and resolve what several kinds share (upstream names, topics,
//! serdes), each reporting into the one list of problems.

use std::collections::HashMap;
use std::sync::Arc;

use marked_yaml::Node;

use super::spec::{OneOrMany, SchemaSpec, SerdeSpec, TopicSpec};
use super::{ConfigError, Registry, yaml};
use crate::serdes::{
    AvroSerde, BytesSerde, JsonSerde, SchemaRegistry, SerdeFormat, SerdeRef, StringSerde,
};

/// A topic a node reads or writes, with the value format it uses there: the whole-file check
/// compares sinks with the sources reading the same topic.
pub(super) struct TopicUse {
    pub node: usize,
    pub topic: String,
    pub format: SerdeFormat,
}

/// The checking context of node `index`.
pub(super) struct NodeContext<'a> {
    /// The node's index in `nodes`.
    pub index: usize,
    /// The registry the file is checked against.
    pub registry: &'a Registry,
    /// Every node and branch name, with the index of the node that defines it.
    pub names: &'a HashMap<String, usize>,
    /// The registry `avro` serdes use, when the caller or the file gave one.
    pub schema_registry: Option<&'a Arc<dyn SchemaRegistry>>,
    pub(super) tree: Option<&'a Node>,
    pub(super) errors: &'a mut Vec<ConfigError>,
    pub(super) reads: &'a mut Vec<TopicUse>,
    pub(super) writes: &'a mut Vec<TopicUse>,
}

impl NodeContext<'_> {
    /// Reports a problem with `field` of this node (`""`: the node itself), at its line.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let path = if field.is_empty() {
            format!("nodes[{}]", self.index)
        } else {
            format!("nodes[{}].{field}", self.index)
        };
        let line = self.tree.and_then(|t| yaml::line_at(t, &path));
        self.errors.push(ConfigError {
            path,
            line,
            message: message.into(),
        });
    }

    /// Checks the node's name is given; the whole-file check has seen to duplicates.
    pub fn named(&mut self, name: &str) -> bool {
        self.named_at("name", name)
    }

    /// Checks the name at `field` (a node's or a branch's) is given.
    pub fn named_at(&mut self, field: &str, name: &str) -> bool {
        if name.trim().is_empty() {
            self.error(field, "a name is required");
            return false;
        }
        true
    }

    /// The upstream nodes of a node of `kind`, each of which must exist.
    pub fn upstream(&mut self, kind: &str, from: Option<&OneOrMany>) -> Option<Vec<String>> {
        let Some(from) = from else {
            self.error("from", format!("a {kind} node needs `from`"));
            return None;
        };
        let from = from.to_vec();
        let mut ok = true;
        for f in &from {
            if !self.names.contains_key(f) {
                self.error("from", format!("unknown upstream node `{f}`"));
                ok = false;
            }
        }
        ok.then_some(from)
    }

    /// The topic's name: as written, or the one registered under its `ref`.
    pub fn topic(&mut self, field: &str, spec: &TopicSpec) -> Option<String> {
        let name = match spec {
            TopicSpec::Name(name) => name.clone(),
            TopicSpec::Ref(r) => match self.registry.topics.get(&r.name) {
                Some(name) => name.clone(),
                None => {
                    let known = Registry::known(&self.registry.topics);
                    self.error(
                        &format!("{field}.ref"),
                        format!("unknown topic `{}` (registered: {known})", r.name),
                    );
                    return None;
                }
            },
        };
        if name.trim().is_empty() {
            self.error(field, "empty topic name");
            return None;
        }
        if let Some(reason) = topic_name_problem(&name) {
            self.error(field, format!("invalid topic name `{name}`: {reason}"));
            return None;
        }
        Some(name)
    }

    /// Records that this node reads `topic` with values of `value`.
    pub fn reads(&mut self, topic: &str, value: Option<&SerdeSpec>) {
        if let Some(format) = SerdeSpec::format_or_bytes(value) {
            self.reads.push(TopicUse {
                node: self.index,
                topic: topic.to_owned(),
                format,
            });
        }
    }

    /// Records that this node writes `topic` with values of `value`.
    pub fn writes(&mut self, topic: &str, value: Option<&SerdeSpec>) {
        if let Some(format) = SerdeSpec::format_or_bytes(value) {
            self.writes.push(TopicUse {
                node: self.index,
                topic: topic.to_owned(),
                format,
            });
        }
    }

    /// The serde `field` (`key` or `value`) names; `bytes` when none is written. A sink
    /// (`writes`) needs an Avro schema to write with.
    pub fn serde(
        &mut self,
        field: &str,
        spec: Option<&SerdeSpec>,
        writes: bool,
    ) -> Option<SerdeRef> {
        let Some(spec) = spec else {
            return Some(Arc::new(BytesSerde));
        };
        match spec.format() {
            None => {
                self.error(
                    field,
                    format!(
                        "unknown serde `{}` (expected bytes, string, json, long or avro)",
                        spec.kind()
                    ),
                );
                None
            }
            Some(SerdeFormat::Bytes) => Some(Arc::new(BytesSerde)),
            Some(SerdeFormat::String) => Some(Arc::new(StringSerde)),
            Some(SerdeFormat::Json) => Some(Arc::new(JsonSerde)),
            Some(SerdeFormat::Long) => Some(Arc::new(crate::serdes::LongSerde)),
            // Not a name a file can use: `format` never returns it.
            Some(SerdeFormat::Internal) => Some(Arc::new(crate::serdes::InternalSerde)),
            Some(SerdeFormat::Avro) => {
                let registry = self.schema_registry.cloned();
                if registry.is_none() {
                    self.error(
                        field,
                        "avro needs `schema_registry_url` (or a registry set in code)",
                    );
                }
                let schema = match spec.schema() {
                    None => {
                        if writes {
                            self.error(field, "an avro sink needs a `schema` to write with");
                        }
                        None
                    }
                    Some(SchemaSpec::Inline(text)) => match apache_avro::Schema::parse_str(text) {
                        Ok(schema) => Some(schema),
                        Err(e) => {
                            self.error(
                                &format!("{field}.schema"),
                                format!("invalid Avro schema: {e}"),
                            );
                            return None;
                        }
                    },
                    Some(SchemaSpec::Ref(r)) => match self.registry.schemas.get(&r.name) {
                        Some(schema) => Some(schema.clone()),
                        None => {
                            let known = Registry::known(&self.registry.schemas);
                            self.error(
                                &format!("{field}.schema.ref"),
                                format!("unknown schema `{}` (registered: {known})", r.name),
                            );
                            return None;
                        }
                    },
                };
                let serde = AvroSerde::new(registry?);
                Some(Arc::new(match schema {
                    Some(schema) => serde.with_schema(schema),
                    None => serde,
                }))
            }
        }
    }
}

/// Why Kafka would refuse `name` as a topic, if it would. Checked here so a stale `${...}`
/// placeholder (files once had their topics substituted as text) is not taken for a name.
fn topic_name_problem(name: &str) -> Option<String> {
    if name.len() > 249 {
        Some("longer than 249 bytes".into())
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not topic names".into())
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        let hint = if name.contains("${") {
            "; a topic registered in code is written `{ref: name}`"
        } else {
            ""
        };
        Some(format!("only [A-Za-z0-9._-] allowed{hint}"))
    } else {
        None
    }
}
